"""One training step: task losses, what the method needs, the method's combination, the update.

The step computes the task losses, then only what the method declared in ``needs`` (see
``mtlscope.methods.base``), calls ``method.combine`` and applies the ``Combination`` through
``mtlscope.engine.backward.MultiTaskBackward`` (the piece a hand-written training loop uses, so the two fill
``.grad`` identically):

- ``loss_weights`` without a Jacobian: one backward of ``sum_k w_k L_k`` (the cheapest step);
- ``loss_weights`` with a Jacobian already computed: shared gradient ``w @ J``, heads ``w_k grad L_k``;
- ``shared_gradient``: written as the shared gradient; heads receive ``grad L_k / C``.

Then the optimizer steps and, for ``"post_step_losses"``, the method sees the losses on the same batch.

On the Gramian path (``gradient_path``, resolved by ``mtlscope.engine.gramian.resolve_gradient_path``) a
method with ``accepts_gramian`` gets the K x K Gramian of the task gradients, accumulated module by module in
a batched pass through the encoder from the task gradients at the representation (the Jacobian is never
formed), and returns loss weights: the update is one backward of ``sum_k w_k L_k`` (heads: the method's
``head_weights``). This path always uses one graph of the whole batch (no ``per_task`` graphs).

Diagnostics (every ``diagnostics_every`` steps, off by default) record the pairwise cosines of the task
gradients on the shared parameters, the number of conflicting pairs (cosine < 0), the norm of the combined
shared gradient, the norm of the actual parameter change, the loss weights when the method returns them,
and the method's own diagnostics. When the method did not need the Jacobian, it is computed for the
diagnostics from the same graph without touching the training computation, so a run with diagnostics has
exactly the records of the run without them, plus the diagnostics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from mtlscope.engine.backward import MultiTaskBackward, TaskGradients
from mtlscope.engine.gradients import (
    Forward,
    encoder_jacobian,
    forward,
    last_shared_parameters,
    per_task_gradients,
    representation_gradients,
    resolve_mode,
    task_losses,
)
from mtlscope.engine.gramian import DEFAULT_JACOBIAN_BUDGET_MB, couples_examples, resolve_gradient_path
from mtlscope.engine.lookahead import ModelLookahead, flatten
from mtlscope.engine.sampling import Batch
from mtlscope.methods.base import Combination, Method
from mtlscope.models.multitask import MultiTaskModel
from mtlscope.settings.setting import Setting


@dataclass(frozen=True)
class StepResult:
    """Detached task losses of the step ([K]), whether they were all finite (checked once: one device sync
    per step), and the step's diagnostics (empty when not recorded)."""

    losses: Tensor
    finite: bool = True
    diagnostics: dict[str, float] = field(default_factory=dict)


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
        *,
        steps_per_epoch: int = 1,
        jacobian_mode: str = "auto",
        jacobian_chunk: int | None = None,
        diagnostics_every: int | None = None,
        gradient_path: str = "auto",
        jacobian_budget_mb: float = DEFAULT_JACOBIAN_BUDGET_MB,
    ) -> None:
        self.model = model
        self.setting = setting
        self.method = method
        self.optimizer = optimizer
        self.loss_scale = loss_scale
        self.generator = generator
        self.steps_per_epoch = steps_per_epoch
        self.mode = resolve_mode(jacobian_mode, setting)
        self.chunk = jacobian_chunk
        self.diagnostics_every = diagnostics_every
        self.shared = list(model.shared_parameters())
        needs = method.needs
        self.gradient_path = resolve_gradient_path(
            gradient_path,
            method,
            len(setting.task_names),
            sum(p.numel() for p in self.shared),
            self.shared[0].element_size() if self.shared else 4,
            jacobian_budget_mb,
            jacobian_mode,
            # per-task graphs (multi-input) and one graph differ under BatchNorm: auto keeps the per-task update
            per_task_differs=self.mode == "per_task" and couples_examples(model.encoder),
        )
        self.last_shared = last_shared_parameters(model) if "last_shared_jacobian" in needs else None
        # the combination and its gradients: the same public piece as a hand-written loop's
        self.engine = MultiTaskBackward(
            method,
            model.encoder if self.gradient_path == "gramian" else self.shared,  # the Gramian path hooks the module
            [list(model.task_parameters(task)) for task in setting.task_names],
            task_names=setting.task_names,
            loss_scale=loss_scale,
            optimizer=optimizer,
            last_shared=self.last_shared,
            steps_per_epoch=steps_per_epoch,
            generator=generator,
            # on one graph: batched vector-Jacobian products unless the loop was asked for
            jacobian_mode="loop" if self.mode == "loop" else "batched",
            jacobian_chunk=jacobian_chunk,
            gradient_path=self.gradient_path,
        )
        self.engine.record_forward(False)  # only this step's forward is tapped (not the probes' or evaluations')
        # per-task graphs (multi-input) give the Jacobian and the last layer's gradients at the arithmetic floor
        self.per_task = (
            self.mode == "per_task"
            and not self.engine.gramian_path
            and bool({"jacobian", "gramian", "last_shared_jacobian"} & needs)
            and "representation" not in needs
        )

    def __call__(self, batch: Batch, step: int) -> StepResult:
        self.optimizer.zero_grad(set_to_none=True)
        needs = self.method.needs
        diagnose = self.diagnostics_every is not None and step % self.diagnostics_every == 0
        graph: Forward | None = None
        self.engine.reset_forward()  # forwards since the last step (probes) are not this step's
        if self.per_task:
            computed = per_task_gradients(self.model, self.setting, batch, self.last_shared)
            losses = computed.losses
            gradients = TaskGradients(
                losses,
                jacobian=computed.jacobian,
                last_shared_jacobian=computed.last_shared_jacobian,
                head_grads=computed.head_grads,
            )
        else:
            self.engine.record_forward(True)
            try:
                graph = forward(self.model, self.setting, batch)
            finally:
                self.engine.record_forward(False)
            losses = graph.losses.detach()
        if not bool(torch.isfinite(losses).all()):
            return StepResult(losses, finite=False)
        at_representation: Tensor | None = None
        if graph is not None:
            # each head reads its own view of the representation: one backward gives every task's gradient there
            if self.engine.uses_gradients or diagnose:
                at_representation = representation_gradients(graph)
            gradients = self.engine.gradients(graph.losses, graph.representation, at_representation)
        diagnostic_jacobian = gradients.jacobian
        if (
            diagnose
            and diagnostic_jacobian is None
            and gradients.gramian is None
            and graph is not None
            and at_representation is not None
        ):
            diagnostic_jacobian = encoder_jacobian(
                graph.representation, at_representation, self.shared, self.engine.mode, self.chunk
            )
        combination = self.engine.combine(
            gradients,
            step=step,
            epoch=step // self.steps_per_epoch,
            diagnose=diagnose,
            lookahead=ModelLookahead(self.model, self.setting, batch, self.optimizer) if "lookahead" in needs else None,
        )
        before = flatten([p.detach() for p in self.shared]).clone() if diagnose else None
        shared_gradient = self.engine.apply(
            combination, graph.losses if graph is not None else None, gradients.jacobian, gradients.head_grads
        )
        self.optimizer.step()
        if "post_step_losses" in needs:
            with torch.no_grad():
                self.engine.after_step(task_losses(self.model, self.setting, batch)[0].detach())
        if not diagnose:
            return StepResult(losses)
        assert before is not None
        return StepResult(
            losses,
            diagnostics=self._diagnostics(diagnostic_jacobian, gradients.gramian, combination, shared_gradient, before),
        )

    def _diagnostics(
        self,
        jacobian: Tensor | None,
        gramian: Tensor | None,
        combination: Combination,
        shared_gradient: Tensor | None,
        before: Tensor,
    ) -> dict[str, float]:
        values: dict[str, float] = {}
        names = self.setting.task_names
        if jacobian is not None or gramian is not None:
            if jacobian is not None:
                norms = jacobian.norm(dim=1)
                gram = jacobian @ jacobian.T
            else:
                assert gramian is not None
                gram = gramian
                norms = gram.diagonal().clamp_min(0).sqrt()
            conflicts = 0
            for i in range(len(names)):
                for j in range(i + 1, len(names)):
                    denominator = float(norms[i] * norms[j])
                    cosine = float(gram[i, j]) / denominator if denominator > 0 else math.nan
                    values[f"cosine/{names[i]}|{names[j]}"] = cosine
                    conflicts += int(cosine < 0)
            values["conflicting_pairs"] = float(conflicts)
            if shared_gradient is None and combination.loss_weights is not None:
                if jacobian is not None:
                    shared_gradient = combination.loss_weights.to(jacobian) @ jacobian
                else:
                    weights = combination.loss_weights.to(gram)
                    values["shared_grad_norm"] = float((weights @ gram @ weights).clamp_min(0).sqrt())
        if shared_gradient is not None:
            values["shared_grad_norm"] = float(shared_gradient.norm())
        values["update_norm"] = float((flatten([p.detach() for p in self.shared]) - before).norm())
        if combination.loss_weights is not None:
            for name, weight in zip(names, combination.loss_weights.tolist()):
                values.setdefault(f"weight/{name}", float(weight))
        values.update({key: float(value) for key, value in combination.diagnostics.items()})
        return values
