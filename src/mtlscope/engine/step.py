"""One training step: task losses, what the method needs, the method's combination, the update.

The step computes the task losses, then only what the method declared in ``needs`` (see
``mtlscope.methods.base``), calls ``method.combine`` and applies the ``Combination``:

- ``loss_weights`` without a Jacobian: one backward of ``sum_k w_k L_k`` (the cheapest step);
- ``loss_weights`` with a Jacobian already computed: shared gradient ``w @ J``, heads ``w_k grad L_k``;
- ``shared_gradient``: written as the shared gradient; heads receive ``grad L_k / C``.

Then the optimizer steps and, for ``"post_step_losses"``, the method sees the losses on the same batch.

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

from mtlscope.engine.gradients import (
    encoder_jacobian,
    forward,
    last_shared_parameters,
    per_task_gradients,
    representation_gradients,
    resolve_mode,
    task_losses,
)
from mtlscope.engine.lookahead import ModelLookahead, flatten, unflatten
from mtlscope.engine.sampling import Batch
from mtlscope.methods.base import NEEDS, Combination, Method, StepInput
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
    ) -> None:
        unknown = set(method.needs) - NEEDS
        if unknown:
            raise ValueError(f"method {method.name!r} needs {sorted(unknown)}, which the engine does not provide")
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
        self.heads = [list(model.task_parameters(task)) for task in setting.task_names]
        self.last_shared = last_shared_parameters(model) if "last_shared_jacobian" in method.needs else None
        needs = method.needs
        # per-task graphs (multi-input) give the Jacobian and the last layer's gradients at the arithmetic floor
        self.per_task = (
            self.mode == "per_task"
            and bool({"jacobian", "last_shared_jacobian"} & needs)
            and "representation" not in needs
        )

    def __call__(self, batch: Batch, step: int) -> StepResult:
        self.optimizer.zero_grad(set_to_none=True)
        needs = self.method.needs
        diagnose = self.diagnostics_every is not None and step % self.diagnostics_every == 0
        jacobian = representation_jacobian = last_jacobian = None
        graph_losses: Tensor | None = None
        head_grads: list[list[Tensor]] | None = None
        if self.per_task:
            computed = per_task_gradients(self.model, self.setting, batch, self.last_shared)
            losses, jacobian, head_grads = computed.losses, computed.jacobian, computed.head_grads
            last_jacobian = computed.last_shared_jacobian
        else:
            graph = forward(self.model, self.setting, batch)
            graph_losses = graph.losses
            losses = graph_losses.detach()
        if not bool(torch.isfinite(losses).all()):
            return StepResult(losses, finite=False)
        # on one graph: batched vector-Jacobian products unless the loop was asked for
        joint_mode = "loop" if self.mode == "loop" else "batched"
        at_representation: Tensor | None = None
        if graph_losses is not None:
            if {"jacobian", "representation"} & needs or diagnose or self.last_shared is not None:
                at_representation = representation_gradients(graph)
            if "representation" in needs:
                assert at_representation is not None
                representation_jacobian = at_representation.flatten(1)
            if "jacobian" in needs:
                assert at_representation is not None
                jacobian = encoder_jacobian(
                    graph.representation, at_representation, self.shared, joint_mode, self.chunk
                )
            if self.last_shared is not None:
                assert at_representation is not None  # the last layer's gradients: a VJP through that layer only
                last_jacobian = encoder_jacobian(
                    graph.representation, at_representation, self.last_shared, joint_mode, self.chunk
                )
        diagnostic_jacobian = jacobian
        if diagnose and diagnostic_jacobian is None and at_representation is not None:
            diagnostic_jacobian = encoder_jacobian(
                graph.representation, at_representation, self.shared, joint_mode, self.chunk
            )
        combination = self.method.combine(
            StepInput(
                losses=losses,
                task_names=self.setting.task_names,
                loss_scale=self.loss_scale,
                step=step,
                epoch=step // self.steps_per_epoch,
                diagnose=diagnose,
                generator=self.generator,
                jacobian=jacobian,
                representation_jacobian=representation_jacobian,
                last_shared_jacobian=last_jacobian,
                lookahead=ModelLookahead(self.model, self.setting, batch, self.optimizer)
                if "lookahead" in needs
                else None,
            )
        )
        before = flatten([p.detach() for p in self.shared]).clone() if diagnose else None
        shared_gradient = self._apply(graph_losses, jacobian, head_grads, combination)
        self.optimizer.step()
        if "post_step_losses" in needs:
            with torch.no_grad():
                self.method.after_step(task_losses(self.model, self.setting, batch)[0].detach())
        if not diagnose:
            return StepResult(losses)
        assert before is not None
        return StepResult(
            losses, diagnostics=self._diagnostics(diagnostic_jacobian, combination, shared_gradient, before)
        )

    def _apply(
        self,
        graph_losses: Tensor | None,
        jacobian: Tensor | None,
        head_grads: list[list[Tensor]] | None,
        combination: Combination,
    ) -> Tensor | None:
        """Write the gradients; return the combined shared gradient when it was formed explicitly."""
        weights = combination.loss_weights
        if weights is not None and jacobian is None:
            assert graph_losses is not None
            (weights.to(graph_losses) * graph_losses).sum().backward()
            return None
        if weights is not None:
            assert jacobian is not None
            shared_gradient = weights.to(jacobian) @ jacobian
            head_scale = weights.to(jacobian)
        else:
            assert combination.shared_gradient is not None
            shared_gradient = combination.shared_gradient
            head_scale = torch.full((len(self.heads),), 1.0 / self.loss_scale, dtype=shared_gradient.dtype)
        if head_grads is not None:
            for scale, params, grads in zip(head_scale, self.heads, head_grads):
                for p, g in zip(params, grads):
                    p.grad = (scale * g).to(p)
        else:
            assert graph_losses is not None
            every_head = [p for params in self.heads for p in params]
            (head_scale.to(graph_losses) * graph_losses).sum().backward(inputs=every_head)
        if shared_gradient.numel() != sum(p.numel() for p in self.shared):
            raise ValueError(
                f"method {self.method.name!r} returned a shared gradient of {shared_gradient.numel()} entries for "
                f"{sum(p.numel() for p in self.shared)} shared parameters"
            )
        for p, g in zip(self.shared, unflatten(shared_gradient, self.shared)):
            p.grad = g.detach().to(p).clone()
        return shared_gradient

    def _diagnostics(
        self, jacobian: Tensor | None, combination: Combination, shared_gradient: Tensor | None, before: Tensor
    ) -> dict[str, float]:
        values: dict[str, float] = {}
        names = self.setting.task_names
        if jacobian is not None:
            norms = jacobian.norm(dim=1)
            gram = jacobian @ jacobian.T
            conflicts = 0
            for i in range(len(names)):
                for j in range(i + 1, len(names)):
                    denominator = float(norms[i] * norms[j])
                    cosine = float(gram[i, j]) / denominator if denominator > 0 else math.nan
                    values[f"cosine/{names[i]}|{names[j]}"] = cosine
                    conflicts += int(cosine < 0)
            values["conflicting_pairs"] = float(conflicts)
            if shared_gradient is None and combination.loss_weights is not None:
                shared_gradient = combination.loss_weights.to(jacobian) @ jacobian
        if shared_gradient is not None:
            values["shared_grad_norm"] = float(shared_gradient.norm())
        values["update_norm"] = float((flatten([p.detach() for p in self.shared]) - before).norm())
        if combination.loss_weights is not None:
            for name, weight in zip(names, combination.loss_weights.tolist()):
                values.setdefault(f"weight/{name}", float(weight))
        values.update({key: float(value) for key, value in combination.diagnostics.items()})
        return values
