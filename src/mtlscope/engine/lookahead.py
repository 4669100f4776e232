"""Optimizer lookahead: the update an optimizer *would* make, without touching its state (Fifty et al. 2020, eq. 1).

``optimizer_update(optimizer, parameters, gradients)`` returns, for each parameter, the change
``p_new - p`` that ``optimizer.step()`` would apply if the parameters had these gradients, simulated
exactly from the optimizer's current state (momentum buffers, Adam moments, step counts, bias correction,
weight decay, AMSGrad, Nesterov) and each parameter's param-group hyperparameters, the learning rate included:
in a run with a learning-rate schedule the trainer sets each step's learning rate before the step, so a simulation
made for step ``s`` (IT-MTL, the affinity probe) uses step ``s``'s learning rate. The optimizer, its
state and the parameters are left as they were. Supported: ``torch.optim.SGD`` (with or without momentum,
dampening, Nesterov), ``Adam`` and ``AdamW``. IT-MTL and the inter-task affinity probe use it to evaluate
"what if we stepped along this gradient".

``ModelLookahead`` adds the second half: task losses on a batch after a simulated shared-parameter
update, with the heads unchanged. It evaluates through ``torch.func.functional_call`` on copies of the
buffers (the encoder's and the heads'), under a forked RNG, so neither BatchNorm statistics nor the training
random stream move. It runs the model in the mode the caller left it in: in a training step (IT-MTL) that is
train mode, BatchNorm on the batch's statistics and dropout on (its masks drawn from the forked stream), as in
Fifty et al.'s code, whose lookahead runs inside the training step; the affinity probe chooses its own mode
(``mtlscope.probes.affinity``, option ``batchnorm``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

from mtlscope.engine.sampling import Batch
from mtlscope.models.multitask import MultiTaskModel
from mtlscope.settings.setting import Setting


def _group_of(optimizer: torch.optim.Optimizer) -> dict[int, dict]:
    return {id(p): group for group in optimizer.param_groups for p in group["params"]}


def _step_count(state: dict) -> float:
    step = state.get("step", 0)
    return float(step.item() if isinstance(step, Tensor) else step)


def _sgd_update(p: Tensor, g: Tensor, state: dict, group: dict) -> Tensor:
    if group.get("maximize", False):
        g = -g
    if group["weight_decay"] != 0:
        g = g + group["weight_decay"] * p
    momentum = group["momentum"]
    if momentum != 0:
        buffer = state.get("momentum_buffer")
        buffer = g.clone() if buffer is None else momentum * buffer + (1 - group["dampening"]) * g
        g = g + momentum * buffer if group["nesterov"] else buffer
    return -group["lr"] * g


def _adam_update(p: Tensor, g: Tensor, state: dict, group: dict, decoupled: bool) -> Tensor:
    if group.get("maximize", False):
        g = -g
    lr, (beta1, beta2), eps, weight_decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
    lr = float(lr)
    delta = torch.zeros_like(p)
    if weight_decay != 0:
        if decoupled:
            delta = delta - lr * weight_decay * p
        else:
            g = g + weight_decay * p
    step = _step_count(state) + 1
    exp_avg = state.get("exp_avg", torch.zeros_like(p))
    exp_avg_sq = state.get("exp_avg_sq", torch.zeros_like(p))
    exp_avg = beta1 * exp_avg + (1 - beta1) * g
    exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * g * g
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    second = exp_avg_sq
    if group.get("amsgrad", False):
        second = torch.maximum(state.get("max_exp_avg_sq", torch.zeros_like(p)), exp_avg_sq)
    denominator = second.sqrt() / (bias_correction2**0.5) + eps
    return delta - (lr / bias_correction1) * exp_avg / denominator


def optimizer_update(
    optimizer: torch.optim.Optimizer, parameters: Sequence[Tensor], gradients: Sequence[Tensor]
) -> list[Tensor]:
    """The change ``optimizer.step()`` would make to each of ``parameters`` given ``gradients``."""
    groups = _group_of(optimizer)
    updates = []
    with torch.no_grad():
        for p, g in zip(parameters, gradients, strict=True):
            if id(p) not in groups:
                raise ValueError("a parameter passed to optimizer_update is not optimized by this optimizer")
            group, state = groups[id(p)], optimizer.state.get(p, {})
            g = g.to(p)
            if isinstance(optimizer, torch.optim.AdamW):
                updates.append(_adam_update(p, g, state, group, decoupled=True))
            elif isinstance(optimizer, torch.optim.Adam):
                updates.append(_adam_update(p, g, state, group, decoupled=bool(group.get("decoupled_weight_decay"))))
            elif isinstance(optimizer, torch.optim.SGD):
                updates.append(_sgd_update(p, g, state, group))
            else:
                raise TypeError(f"optimizer lookahead supports SGD, Adam and AdamW, not {type(optimizer).__name__}")
    return updates


def flatten(tensors: Sequence[Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(vector: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    pieces, offset = [], 0
    for reference in like:
        size = reference.numel()
        pieces.append(vector[offset : offset + size].view_as(reference))
        offset += size
    if offset != vector.numel():
        raise ValueError(f"vector has {vector.numel()} entries, the parameters {offset}")
    return pieces


class ModelLookahead:
    """``Lookahead`` (see ``mtlscope.methods.base``) for one step's batch of a ``MultiTaskModel``."""

    def __init__(self, model: MultiTaskModel, setting: Setting, batch: Batch, optimizer: torch.optim.Optimizer) -> None:
        self.model = model
        self.setting = setting
        self.batch = batch
        self.optimizer = optimizer
        self.names = [name for name, _ in model.encoder.named_parameters()]
        self.shared = [p for _, p in model.encoder.named_parameters()]

    def update(self, shared_gradient: Tensor) -> Tensor:
        """[P] change of the shared parameters the optimizer would make from ``shared_gradient``."""
        return flatten(optimizer_update(self.optimizer, self.shared, unflatten(shared_gradient, self.shared)))

    @torch.no_grad()
    def losses(self, delta: Tensor, head_deltas: Mapping[str, Sequence[Tensor]] | None = None) -> Tensor:
        """[K] task losses on the batch with shared parameters + ``delta``; the heads unchanged, or moved by
        ``head_deltas[task]`` (one tensor per parameter of that head, in ``parameters()`` order)."""
        moved = {name: p + d for name, p, d in zip(self.names, self.shared, unflatten(delta, self.shared), strict=True)}
        buffers = {name: b.clone() for name, b in self.model.encoder.named_buffers()}
        with torch.random.fork_rng(devices=_devices(self.shared)):
            representation = functional_call(self.model.encoder, {**moved, **buffers}, (self.batch.inputs,))
            losses = []
            for task in self.setting.tasks:
                head = self.model.heads[task.name]
                inputs = representation[self.batch.rows[task.name]]
                buffers = {name: b.clone() for name, b in head.named_buffers()}  # a head's BatchNorm stays put too
                if head_deltas is not None and task.name in head_deltas:
                    named = list(head.named_parameters())
                    state = {name: p + d for (name, p), d in zip(named, head_deltas[task.name], strict=True)}
                    outputs = functional_call(head, {**state, **buffers}, (inputs,))
                elif buffers:
                    outputs = functional_call(head, {**dict(head.named_parameters()), **buffers}, (inputs,))
                else:
                    outputs = head(inputs)
                losses.append(task.loss(outputs, self.batch.targets[task.name]))
            return torch.stack(losses)


def _devices(parameters: Sequence[nn.Parameter | Tensor]) -> list[int]:
    return sorted({p.device.index or 0 for p in parameters if p.device.type == "cuda"})
