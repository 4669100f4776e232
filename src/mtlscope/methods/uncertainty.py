"""Uncertainty weighting (UW): Kendall, Gal, Cipolla, "Multi-Task Learning Using Uncertainty to Weigh Losses
for Scene Geometry and Semantics", CVPR 2018.

Each task k has a learnable log-variance ``s_k = log sigma_k^2``; the multi-task objective is

    L(theta, s) = sum_k exp(-s_k) * L_k(theta) + s_k

(the common simplified form of the paper's eqs. 7 and 10, without the regression/classification factors
1/2; the Nash-MTL/FAMO benchmark code multiplies the whole objective by 1/2, which only rescales the step).
The model is trained on ``sum_k exp(-s_k) L_k``; the ``s_k`` are trained jointly on the same objective, whose
gradient is analytic: ``dL/ds_k = 1 - exp(-s_k) L_k`` (stationary at ``s_k = log L_k``, i.e. weight
``1/L_k``). The ``s_k`` have their own Adam optimizer (as the log-variances' own parameter group in the
benchmark code of Nash-MTL, Navon et al. 2022, and FAMO, Liu et al. 2023, ``--method-params-lr 0.025``): a
``LearnedVector`` (``mtlscope.methods.learned``: float64, CPU, ``torch.optim.Adam``) stepped with that gradient.

One step: the weights ``w_k = exp(-s_k)`` used for the model are the current ones (before the ``s`` update,
as in joint back-propagation through ``theta`` and ``s``); then one Adam step on ``s`` with the step's
detached losses.

Options:
    lr: learning rate of the log-variances' Adam optimizer (default 0.025; betas (0.9, 0.999), eps 1e-8).
    init_log_variance: initial ``s_k`` for every task (default 0.0: weights 1, i.e. the UMTG at step 0).

Loss scale C: the model's loss weights are ``exp(-s_k) / C``. The ``s`` update uses the objective above
without 1/C (Adam is invariant to that factor up to its eps). With all task gradients equal to g the update
is ``(sum_k w_k / C) g``: the UMTG direction, scaled by ``mean_k w_k`` relative to the UMTG (exactly the
UMTG at step 0 with the default init).

Cost: losses only (no Jacobian); O(K) per step. Diagnostics: ``weight/<task>`` = ``exp(-s_k)`` (before 1/C).

Public API used by IT-MTL: ``current_weights()`` (the weights ``exp(-s_k)`` before 1/C, in the dtype and on the
device of the losses the method was last given; the default dtype, CPU, before any) and ``update(losses)`` (one
Adam step).
State: ``{"log_variances": the LearnedVector's state}`` (float64 values and Adam moments: exact resume).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from mtlscope.methods.base import Combination, Method, StepInput, check_positive
from mtlscope.methods.learned import LearnedVector
from mtlscope.methods.registry import METHODS
from mtlscope.options import FiniteFloat, PositiveFloat


def log_variance_gradient(log_variances: Tensor, losses: Tensor) -> Tensor:
    """[K] gradient of ``sum_k exp(-s_k) L_k + s_k`` with respect to the log-variances ``s``."""
    return 1 - torch.exp(-log_variances) * losses


class UncertaintyWeighting(Method):
    """Kendall et al.'s learnable log-variances; ``current_weights``/``update`` are public (IT-MTL uses them)."""

    name = "uw"

    def __init__(self, lr: float = 0.025, init_log_variance: float = 0.0) -> None:
        self.lr = check_positive("lr", lr, self.name)
        try:
            self.init_log_variance = float(init_log_variance)
        except (TypeError, ValueError):
            raise ValueError(f"uw: option init_log_variance must be a number, got {init_log_variance!r}") from None
        if not math.isfinite(self.init_log_variance):
            raise ValueError(f"uw: option init_log_variance must be finite, got {init_log_variance!r}")
        self.log_variances = self._initial_log_variances(0)

    def _initial_log_variances(self, num_tasks: int) -> LearnedVector:
        return LearnedVector(torch.full((num_tasks,), self.init_log_variance, dtype=torch.float64), lr=self.lr)

    def setup(self, task_names: tuple[str, ...]) -> None:
        super().setup(task_names)
        self.log_variances = self._initial_log_variances(self.num_tasks)

    def _check(self, losses: Tensor) -> Tensor:
        if losses.shape != (self.num_tasks,):
            raise ValueError(f"uw: expected {self.num_tasks} task losses, got shape {tuple(losses.shape)}")
        return losses.detach()

    def current_weights(self) -> Tensor:
        """[K] the task loss weights ``exp(-s_k)`` the method uses now (before 1/C), exact: float64 on the CPU
        (callers convert them to the dtype and device they work in)."""
        return torch.exp(-self.log_variances.value)

    def update(self, losses: Tensor) -> None:
        """One Adam step of the log-variances on the objective ``sum_k exp(-s_k) L_k + s_k`` at ``losses``."""
        losses = self._check(losses).to(device="cpu", dtype=torch.float64)
        self.log_variances.step(log_variance_gradient(self.log_variances.value, losses))

    def combine(self, step: StepInput) -> Combination:
        self._check(step.losses)
        weights = self.current_weights().to(step.losses)
        self.update(step.losses)
        diagnostics = {f"weight/{task}": float(value) for task, value in zip(self.task_names, weights.tolist())}
        return Combination(loss_weights=weights / step.loss_scale, diagnostics=diagnostics)

    def state_dict(self) -> dict[str, Any]:
        return {"log_variances": self.log_variances.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if set(state) != {"log_variances"}:
            raise ValueError(f"uw: state keys {sorted(state)} do not match ['log_variances']")
        self.log_variances.load_state_dict(state["log_variances"])


@METHODS.register("uw", "uncertainty weighting: learnable log-variances, weights exp(-s_k) (Kendall et al. 2018)")
def build(*, lr: PositiveFloat = 0.025, init_log_variance: FiniteFloat = 0.0) -> Method:
    return UncertaintyWeighting(lr=lr, init_log_variance=init_log_variance)
