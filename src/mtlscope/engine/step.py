"""One training step: task losses, what the method needs, the method's combination, the update.

This is the per-task gradient engine of SPEC §5. It computes the task losses with one encoder pass over
the step's batch (both layouts), then only what the method declared in ``needs``:
``"jacobian"`` -> the [K, P] gradients of the task losses on the shared parameters (one vector-Jacobian
product per task over the same graph). It applies the method's ``Combination`` (see
``mtlscope.methods.base``) and takes the optimizer step. It knows nothing about individual methods.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from mtlscope.engine.sampling import Batch
from mtlscope.methods.base import Combination, Method, StepInput
from mtlscope.models.multitask import MultiTaskModel
from mtlscope.settings.setting import Setting


@dataclass(frozen=True)
class StepResult:
    """Detached task losses of the step ([K]) and the method's diagnostics."""

    losses: Tensor
    diagnostics: dict[str, float] = field(default_factory=dict)

    @property
    def finite(self) -> bool:
        return bool(torch.isfinite(self.losses).all())


def task_losses(model: MultiTaskModel, setting: Setting, batch: Batch) -> Tensor:
    """The [K] task losses on ``batch`` (graph attached), one encoder pass for all tasks."""
    representation = model.encoder(batch.inputs)
    return torch.stack(
        [
            task.loss(model.heads[task.name](representation[batch.rows[task.name]]), batch.targets[task.name])
            for task in setting.tasks
        ]
    )


def shared_jacobian(losses: Tensor, shared: list[torch.nn.Parameter]) -> Tensor:
    """[K, P] gradients of each loss on ``shared`` (flattened in parameter order); graph kept."""
    rows = []
    for loss in losses:
        grads = torch.autograd.grad(loss, shared, retain_graph=True, allow_unused=True)
        rows.append(
            torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, shared)])
        )
    return torch.stack(rows)


class TrainingStep:
    """Callable applying one step of ``method`` to ``model`` with ``optimizer``."""

    def __init__(
        self,
        model: MultiTaskModel,
        setting: Setting,
        method: Method,
        optimizer: torch.optim.Optimizer,
        loss_scale: float,
        generator: torch.Generator,
    ) -> None:
        self.model = model
        self.setting = setting
        self.method = method
        self.optimizer = optimizer
        self.loss_scale = loss_scale
        self.generator = generator
        self.shared = list(model.shared_parameters())
        self.heads = [p for task in setting.task_names for p in model.task_parameters(task)]

    def __call__(self, batch: Batch, step: int) -> StepResult:
        self.optimizer.zero_grad(set_to_none=True)
        losses = task_losses(self.model, self.setting, batch)
        detached = losses.detach()
        if not bool(torch.isfinite(detached).all()):
            return StepResult(detached)
        jacobian = shared_jacobian(losses, self.shared) if "jacobian" in self.method.needs else None
        combination = self.method.combine(
            StepInput(
                losses=detached,
                task_names=self.setting.task_names,
                loss_scale=self.loss_scale,
                step=step,
                generator=self.generator,
                jacobian=jacobian,
            )
        )
        self._apply(losses, combination)
        self.optimizer.step()
        return StepResult(detached, dict(combination.diagnostics))

    def _apply(self, losses: Tensor, combination: Combination) -> None:
        if combination.loss_weights is not None:
            (combination.loss_weights.to(losses) * losses).sum().backward()
            return
        assert combination.shared_gradient is not None
        (losses.sum() / self.loss_scale).backward(inputs=self.heads)
        offset = 0
        for parameter in self.shared:
            size = parameter.numel()
            parameter.grad = combination.shared_gradient[offset : offset + size].view_as(parameter).clone()
            offset += size
        if offset != combination.shared_gradient.numel():
            raise ValueError(
                f"method {self.method.name!r} returned a shared gradient of {combination.shared_gradient.numel()} "
                f"entries for {offset} shared parameters"
            )
