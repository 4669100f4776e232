"""UMTG: the uniform multi-task gradient (Mueller et al., TMLR 2025, eq. 2; SPEC §2).

``grad_MT = (1/C) * sum_k w_k * grad_theta L_k``, with task weights ``w_k = 1`` by default and C the loss
scale of the run (1 = sum, the papers' default; K = average; sqrt(K) keeps the noise of the sum equal to the
average task noise, Mueller et al., OPT 2022, eq. 2). Heads receive ``(w_k / C) * grad L_k``.
Implemented as loss weights ``w_k / C``: one backward pass of the weighted loss sum.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from mtlscope.methods.base import Combination, Method, StepInput
from mtlscope.methods.registry import METHODS


def weights(num_tasks: int, loss_scale: float = 1.0, task_weights: Sequence[float] | None = None) -> Tensor:
    """The UMTG's loss weights ``w_k / C`` as a float tensor of shape [num_tasks]."""
    w = torch.ones(num_tasks) if task_weights is None else torch.as_tensor(task_weights, dtype=torch.float32)
    if w.shape != (num_tasks,):
        raise ValueError(f"umtg: expected {num_tasks} task weights, got shape {tuple(w.shape)}")
    return w / loss_scale


def aggregate(jacobian: Tensor, loss_scale: float = 1.0, task_weights: Sequence[float] | None = None) -> Tensor:
    """The UMTG for a [K, P] Jacobian of task gradients: ``(1/C) sum_k w_k J_k``."""
    w = weights(jacobian.shape[0], loss_scale, task_weights).to(jacobian)
    return w @ jacobian


class UMTG(Method):
    name = "umtg"

    def __init__(self, task_names: tuple[str, ...], task_weights: Mapping[str, float] | None = None) -> None:
        super().__init__(task_names)
        given = dict(task_weights or {})
        unknown = [task for task in given if task not in task_names]
        if unknown:
            raise ValueError(
                f"method.weights names task {unknown[0]!r}, which is not in this run; tasks: {', '.join(task_names)}"
            )
        bad = [task for task, value in given.items() if not float(value) >= 0]
        if bad:
            raise ValueError(f"method.weights.{bad[0]} must be a number >= 0, got {given[bad[0]]!r}")
        self.task_weights = [float(given.get(task, 1.0)) for task in task_names]

    def combine(self, step: StepInput) -> Combination:
        w = weights(len(self.task_names), step.loss_scale, self.task_weights).to(step.losses)
        return Combination(loss_weights=w)


@METHODS.register("umtg", "uniform multi-task gradient (1/C) sum_k w_k grad L_k (Mueller et al. 2025, eq. 2)")
def build(task_names: tuple[str, ...], *, weights: Mapping[str, float] | None = None) -> Method:
    """``weights``: optional ``{task: w_k}`` (missing tasks get 1)."""
    return UMTG(task_names, weights)
