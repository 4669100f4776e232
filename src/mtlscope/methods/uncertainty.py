"""Uncertainty weighting (UW): Kendall, Gal, Cipolla, "Multi-Task Learning Using Uncertainty to Weigh Losses
for Scene Geometry and Semantics", CVPR 2018.

Each task k has a learnable log-variance ``s_k = log sigma_k^2``; the multi-task objective is

    L(theta, s) = sum_k exp(-s_k) * L_k(theta) + s_k

(the common simplified form of the paper's eqs. 7 and 10, without the regression/classification factors
1/2; the Nash-MTL/FAMO benchmark code multiplies the whole objective by 1/2, which only rescales the step).
The model is trained on ``sum_k exp(-s_k) L_k``; the ``s_k`` are trained jointly on the same objective, whose
gradient is analytic: ``dL/ds_k = 1 - exp(-s_k) L_k`` (stationary at ``s_k = log L_k``, i.e. weight
``1/L_k``). The ``s_k`` have their own Adam optimizer (as the log-variances' own parameter group in the
benchmark code of Nash-MTL, Navon et al. 2022, and FAMO, Liu et al. 2023, ``--method-params-lr 0.025``).

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

``adam_step`` (an exact re-statement of ``torch.optim.Adam``'s update, L2 weight decay coupled as in torch)
is also used by the other stateful loss-weighting methods (``gradnorm``, ``famo``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from mtlscope.methods.base import Combination, Method, StepInput
from mtlscope.methods.registry import METHODS

ADAM_BETAS: tuple[float, float] = (0.9, 0.999)
ADAM_EPS: float = 1e-8


def adam_step(
    parameter: Tensor,
    gradient: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: int,
    *,
    lr: float,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = ADAM_BETAS,
    eps: float = ADAM_EPS,
) -> tuple[Tensor, Tensor, Tensor]:
    """One Adam update (``torch.optim.Adam`` semantics, coupled L2 ``weight_decay``), out of place.

    ``step`` is the number of updates already taken (0 for the first). Returns the new parameter and the
    new first and second moment estimates.
    """
    beta1, beta2 = betas
    if weight_decay != 0:
        gradient = gradient + weight_decay * parameter
    exp_avg = exp_avg * beta1 + (1 - beta1) * gradient
    exp_avg_sq = exp_avg_sq * beta2 + (1 - beta2) * gradient * gradient
    count = step + 1
    step_size = lr / (1 - beta1**count)
    denominator = exp_avg_sq.sqrt() / math.sqrt(1 - beta2**count) + eps
    return parameter - step_size * exp_avg / denominator, exp_avg, exp_avg_sq


def log_variance_gradient(log_variances: Tensor, losses: Tensor) -> Tensor:
    """[K] gradient of ``sum_k exp(-s_k) L_k + s_k`` with respect to the log-variances ``s``."""
    return 1 - torch.exp(-log_variances) * losses


def check_positive(name: str, value: float, method: str) -> float:
    """``value`` as a float, or a ValueError naming ``method.name`` when it is not a finite number > 0."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{method}: option {name} must be a number > 0, got {value!r}") from None
    if not (math.isfinite(number) and number > 0):
        raise ValueError(f"{method}: option {name} must be a finite number > 0, got {value!r}")
    return number


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
        self.log_variances = torch.zeros(0)
        self.exp_avg = torch.zeros(0)
        self.exp_avg_sq = torch.zeros(0)
        self.steps = 0

    def setup(self, task_names: tuple[str, ...]) -> None:
        super().setup(task_names)
        self.log_variances = torch.full((self.num_tasks,), self.init_log_variance)
        self.exp_avg = torch.zeros(self.num_tasks)
        self.exp_avg_sq = torch.zeros(self.num_tasks)
        self.steps = 0

    def _align(self, like: Tensor) -> None:
        """Keep the state in the dtype and on the device of the losses."""
        if self.log_variances.dtype != like.dtype or self.log_variances.device != like.device:
            self.log_variances = self.log_variances.to(like)
            self.exp_avg = self.exp_avg.to(like)
            self.exp_avg_sq = self.exp_avg_sq.to(like)

    def current_weights(self) -> Tensor:
        """[K] the task loss weights ``exp(-s_k)`` the method uses now (before 1/C)."""
        return torch.exp(-self.log_variances)

    def update(self, losses: Tensor) -> None:
        """One Adam step of the log-variances on the objective ``sum_k exp(-s_k) L_k + s_k`` at ``losses``."""
        if losses.shape != (self.num_tasks,):
            raise ValueError(f"uw: expected {self.num_tasks} task losses, got shape {tuple(losses.shape)}")
        losses = losses.detach()
        self._align(losses)
        gradient = log_variance_gradient(self.log_variances, losses)
        self.log_variances, self.exp_avg, self.exp_avg_sq = adam_step(
            self.log_variances, gradient, self.exp_avg, self.exp_avg_sq, self.steps, lr=self.lr
        )
        self.steps += 1

    def combine(self, step: StepInput) -> Combination:
        self._align(step.losses)
        weights = self.current_weights()
        self.update(step.losses)
        diagnostics = {f"weight/{task}": float(value) for task, value in zip(self.task_names, weights.tolist())}
        return Combination(loss_weights=weights / step.loss_scale, diagnostics=diagnostics)

    def state_dict(self) -> dict[str, Any]:
        return {
            "log_variances": self.log_variances.clone(),
            "exp_avg": self.exp_avg.clone(),
            "exp_avg_sq": self.exp_avg_sq.clone(),
            "steps": self.steps,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        expected = {"log_variances", "exp_avg", "exp_avg_sq", "steps"}
        if set(state) != expected:
            raise ValueError(f"uw: state keys {sorted(state)} do not match {sorted(expected)}")
        log_variances = torch.as_tensor(state["log_variances"]).clone()
        if log_variances.shape != (self.num_tasks,):
            raise ValueError(f"uw: state has {log_variances.numel()} log-variances for {self.num_tasks} tasks")
        self.log_variances = log_variances
        self.exp_avg = torch.as_tensor(state["exp_avg"]).clone().to(log_variances)
        self.exp_avg_sq = torch.as_tensor(state["exp_avg_sq"]).clone().to(log_variances)
        self.steps = int(state["steps"])


@METHODS.register("uw", "uncertainty weighting: learnable log-variances, weights exp(-s_k) (Kendall et al. 2018)")
def build(*, lr: float = 0.025, init_log_variance: float = 0.0) -> Method:
    return UncertaintyWeighting(lr=lr, init_log_variance=init_log_variance)
