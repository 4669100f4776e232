"""UMTG: the uniform multi-task gradient (Mueller et al., TMLR 2025, eq. 2).

``grad_MT = (1/C) * sum_k w_k * grad_theta L_k``, with task weights ``w_k = 1`` by default and C the loss
scale of the run (1 = sum, the papers' default; K = average; sqrt(K) keeps the noise of the sum equal to the
average task noise, Mueller et al., OPT 2022, eq. 2). Heads receive ``(w_k / C) * grad L_k``.
Implemented as loss weights ``w_k / C``: one backward pass of the weighted loss sum.

Options: ``weights`` — ``{task: w_k}`` (missing tasks get 1).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from mtlscope.methods.base import Combination, Method, StepInput, check_jacobian
from mtlscope.methods.registry import METHODS
from mtlscope.options import NonNegativeFloat


def weights(jacobian: Tensor, loss_scale: float = 1.0, task_weights: Sequence[float] | None = None) -> Tensor:
    """The UMTG's weights ``w_k / C`` for a [K, P] Jacobian (they do not depend on its values)."""
    num_tasks = check_jacobian(jacobian).shape[0]
    w = torch.ones(num_tasks) if task_weights is None else torch.as_tensor(task_weights, dtype=torch.float32)
    if w.shape != (num_tasks,):
        raise ValueError(f"umtg: expected {num_tasks} task weights, got shape {tuple(w.shape)}")
    return w.to(jacobian) / loss_scale


def aggregate(jacobian: Tensor, loss_scale: float = 1.0, task_weights: Sequence[float] | None = None) -> Tensor:
    """The UMTG for a [K, P] Jacobian of task gradients: ``(1/C) sum_k w_k J_k``."""
    return weights(jacobian, loss_scale, task_weights) @ jacobian


class UMTG(Method):
    name = "umtg"

    def __init__(self, weights: Mapping[str, float] | None = None) -> None:
        self.given = dict(weights or {})
        self.task_weights: list[float] = []
        self._cached: tuple[tuple[torch.dtype, torch.device, float], Tensor] | None = None

    def setup(self, task_names: tuple[str, ...]) -> None:
        super().setup(task_names)
        unknown = [task for task in self.given if task not in task_names]
        if unknown:
            raise ValueError(
                f"method.weights names task {unknown[0]!r}, which is not in this run; tasks: {', '.join(task_names)}"
            )
        bad = [task for task, value in self.given.items() if not float(value) >= 0]
        if bad:
            raise ValueError(f"method.weights.{bad[0]} must be a number >= 0, got {self.given[bad[0]]!r}")
        self.task_weights = [float(self.given.get(task, 1.0)) for task in task_names]
        self._cached = None

    def combine(self, step: StepInput) -> Combination:
        key = (step.losses.dtype, step.losses.device, step.loss_scale)
        if self._cached is None or self._cached[0] != key:  # built once per run, not every step
            w = torch.as_tensor(self.task_weights, dtype=step.losses.dtype, device=step.losses.device)
            self._cached = (key, w / step.loss_scale)
        return Combination(loss_weights=self._cached[1])


@METHODS.register("umtg", "uniform multi-task gradient (1/C) sum_k w_k grad L_k (Mueller et al. 2025, eq. 2)")
def build(*, weights: Mapping[str, NonNegativeFloat] | None = None) -> Method:
    return UMTG(weights)
