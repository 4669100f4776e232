"""IMTL: impartial multi-task learning — IMTL-G (gradient balance), IMTL-L (loss balance) and both.

Reference: Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang, *Towards Impartial Multi-task Learning*, ICLR 2021
(§3.1 IMTL-L, §3.2 IMTL-G, Algorithm 1 "IMTL" = both).

**IMTL-G** (``imtl_g``) finds the combination ``g = Σ_k α_k g_k`` with ``Σ_k α_k = 1`` whose projections on all
unit task gradients ``u_k = g_k / |g_k|`` are equal: ``g · u_1 = ... = g · u_K``. The paper's closed form is
``α_{2:K} = g_1 Uᵀ (D Uᵀ)⁻¹``, ``α_1 = 1 - Σ α_{2:K}`` with ``D = [g_1 - g_k]``, ``U = [u_1 - u_k]``. We compute the
same weights from the Gramian ``G = J Jᵀ``: ``α ∝ G⁺ n`` with ``n_k = |g_k|``, normalized to sum to 1 (equal to
the closed form when the gradients are linearly independent — a test checks it — and, through the
pseudo-inverse, defined for linearly dependent gradients too, as TorchJD's ``IMTLG``). When ``Σ G⁺ n`` is
zero (e.g. all gradients zero) the weights are zero, as in TorchJD. Caveat of the paper's normalization
(kept): when ``Σ G⁺ n < 0`` — possible only when the gradients nearly span their space, K close to P — the
combination has a *negative* projection on every task gradient. The paper computes IMTL-G on the gradients
at the shared representation for speed; here it uses the gradients on the shared parameters (as the
reference implementations LibMTL, with ``rep_grad=False``, and Senushkin et al.'s code do). Heads receive
their own gradients, as in the paper.

**IMTL-L** (``imtl_l``) learns one log-scale ``s_k`` per task (init 0) and trains on the scaled losses
``e^{s_k} L_k - s_k``: the loss weights are ``e^{s_k}``, and ``s`` descends ``∂/∂s_k (e^{s_k} L_k - s_k) =
e^{s_k} L_k - 1`` (its fixed point makes every scaled loss equal to 1). The paper trains ``s`` jointly with the
network's optimizer; the method cannot reach the run's optimizer, so it keeps its own (``s`` is a
``LearnedVector``: float64, CPU, stepped by ``torch.optim``): options ``optimizer`` (``"adam"``, default,
``torch.optim.Adam`` with PyTorch's default betas (0.9, 0.999) and eps 1e-8; or ``"sgd"``,
``torch.optim.SGD``) and ``lr`` (default 1e-3). The weights used at a step are those before the step's update
of ``s`` (a joint gradient step). The gradient of ``s`` does not include 1/C (with Adam this makes no
difference; with SGD ``lr`` keeps its meaning at every C).

**IMTL** (``imtl``, the paper's hybrid) applies IMTL-G to the gradients of the scaled losses, ``e^{s_k} g_k``,
and learns ``s`` as IMTL-L does. (IMTL-G's direction does not change when the rows are rescaled; the scales
change its length.) The paper's heads receive ``e^{s_k} grad L_k``; the contract's ``shared_gradient`` gives
heads ``grad L_k / C`` — a documented departure (it would need per-head weights in ``Combination``).

**How C enters.** IMTL-G's ``α`` sums to 1: ``Σ α_k g_k`` equals the common gradient when all task gradients
are equal (the UMTG at C = K). ``imtl_g`` and ``imtl`` return the shared gradient ``(K / C) Σ_k α_k g_k``
(``imtl``: ``(K / C) Σ_k α_k e^{s_k} g_k``), which equals the UMTG at every C when all task gradients are
equal (``imtl``: at initialization, ``s = 0``, and whenever the gradients are equal the direction is the
UMTG's). ``imtl_l`` returns the loss weights ``e^{s_k} / C`` — the UMTG at its initialization ``s = 0``.
Heads receive ``grad L_k / C`` (``imtl_g``, ``imtl``) or ``(e^{s_k} / C) grad L_k`` (``imtl_l``).

**Cost.** ``imtl_g`` and ``imtl`` need the [K, P] Jacobian (K per-task gradients, docs/methods.md), the K x K Gramian
and its pseudo-inverse (O(K²P + K³), on the Jacobian's device) and one [K] x [K, P] product. ``imtl_l`` needs
only the losses: one backward of the weighted loss, plus O(K) work.

**Diagnostics.** ``weight/<task>``: the coefficient of ``g_k`` in the shared update (``imtl_l``: the loss
weight); ``log_scale/<task>``: ``s_k`` (``imtl_l``, ``imtl``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import Tensor

from mtlscope.methods.base import (
    Combination,
    Method,
    StepInput,
    check_jacobian,
    gradient_combination,
    gramian_of,
)
from mtlscope.methods.learned import OPTIMIZERS, LearnedVector
from mtlscope.methods.registry import METHODS
from mtlscope.options import PositiveFloat

ScaleOptimizer = Literal["adam", "sgd"]
SCALE_OPTIMIZERS: tuple[str, ...] = OPTIMIZERS


def _solve_dtype(tensor: Tensor) -> torch.dtype:
    """float64 for the small K x K algebra, except where the device has none (MPS)."""
    return torch.float32 if tensor.device.type == "mps" else torch.float64


def weights_from_gramian(gramian: Tensor) -> Tensor:
    """IMTL-G's weights [K] from the Gramian ``J Jᵀ``: ``α = G⁺ n / Σ G⁺ n``, ``n_k = sqrt(G_kk)``."""
    if gramian.dim() != 2 or gramian.shape[0] != gramian.shape[1] or gramian.shape[0] < 1:
        raise ValueError(f"expected a [K, K] gramian, got shape {tuple(gramian.shape)}")
    matrix = gramian.detach().to(_solve_dtype(gramian))
    matrix = 0.5 * (matrix + matrix.T)
    norms = matrix.diagonal().clamp_min(0).sqrt()
    v = torch.linalg.pinv(matrix, hermitian=True) @ norms
    total = v.sum()
    tiny = torch.finfo(v.dtype).eps * v.abs().sum()
    alpha = torch.where(total.abs() > tiny, v / total, torch.zeros_like(v))
    return alpha.to(gramian.dtype)


def weights(jacobian: Tensor) -> Tensor:
    """IMTL-G's weights ``α`` [K] for a [K, P] Jacobian: ``Σα = 1`` and ``(Σ_k α_k g_k) · u_i`` equal for all i."""
    jacobian = check_jacobian(jacobian).detach()
    return weights_from_gramian(jacobian @ jacobian.T)


def aggregate(jacobian: Tensor) -> Tensor:
    """IMTL-G's combination ``Σ_k α_k g_k`` [P], at the scale of the mean gradient (the methods return
    ``K / C`` times it)."""
    jacobian = check_jacobian(jacobian).detach()
    return weights(jacobian) @ jacobian


def _check_scale_options(lr: float, optimizer: str) -> None:
    if optimizer not in SCALE_OPTIMIZERS:
        raise ValueError(f"method.optimizer must be one of {', '.join(SCALE_OPTIMIZERS)}; got {optimizer!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"method.lr must be a number > 0, got {lr!r}")


def _diagnostics(task_names: tuple[str, ...], coefficients: Tensor, log_scales: Tensor | None) -> dict[str, float]:
    out = {f"weight/{task}": float(v) for task, v in zip(task_names, coefficients.detach().cpu().tolist())}
    if log_scales is not None:
        out.update({f"log_scale/{task}": float(v) for task, v in zip(task_names, log_scales.tolist())})
    return out


def log_scale_gradient(log_scales: Tensor, losses: Tensor) -> Tensor:
    """[K] ``e^{s_k} L_k - 1``: the gradient of IMTL-L's scaled losses ``Σ_k (e^{s_k} L_k - s_k)`` in ``s``."""
    return log_scales.exp() * losses - 1.0


class IMTLG(Method):
    name = "imtl_g"
    needs = frozenset({"jacobian"})
    accepts_gramian = True

    def combine(self, step: StepInput) -> Combination:
        gramian = gramian_of(step, "imtl_g")
        coefficients = weights_from_gramian(gramian) * (gramian.shape[0] / step.loss_scale)
        return gradient_combination(step, coefficients, _diagnostics(step.task_names, coefficients, None), "imtl_g")


class IMTLL(Method):
    name = "imtl_l"

    def __init__(self, lr: float = 1e-3, optimizer: ScaleOptimizer = "adam") -> None:
        _check_scale_options(lr, optimizer)
        self.lr = float(lr)
        self.optimizer: ScaleOptimizer = optimizer
        self.log_scales = self._initial_log_scales(0)

    def _initial_log_scales(self, num_tasks: int) -> LearnedVector:
        return LearnedVector(torch.zeros(num_tasks), lr=self.lr, optimizer=self.optimizer)

    def setup(self, task_names: tuple[str, ...]) -> None:
        super().setup(task_names)
        self.log_scales = self._initial_log_scales(self.num_tasks)

    def _update(self, losses: Tensor) -> None:
        """One optimizer step of ``s`` on ``Σ_k (e^{s_k} L_k - s_k)`` at ``losses`` (the step's losses)."""
        loss = losses.detach().to("cpu", torch.float64).reshape(-1)
        if loss.shape != self.log_scales.shape:
            raise ValueError(f"expected {self.log_scales.shape[0]} losses, got shape {tuple(losses.shape)}")
        self.log_scales.step(log_scale_gradient(self.log_scales.value, loss))

    def combine(self, step: StepInput) -> Combination:
        log_scales = self.log_scales.value
        loss_weights = log_scales.exp().to(step.losses) / step.loss_scale
        self._update(step.losses)
        return Combination(
            loss_weights=loss_weights, diagnostics=_diagnostics(step.task_names, loss_weights, log_scales)
        )

    def state_dict(self) -> dict[str, Any]:
        return {"log_scales": self.log_scales.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        expected = {"log_scales"}
        if set(state) != expected:
            raise ValueError(f"method {self.name!r} expects state keys {sorted(expected)}, got {sorted(state)}")
        self.log_scales.load_state_dict(state["log_scales"])


class IMTL(IMTLL):
    name = "imtl"
    needs = frozenset({"jacobian"})
    accepts_gramian = True

    def combine(self, step: StepInput) -> Combination:
        # IMTL-G on the scaled gradients e^{s_k} g_k: their Gramian is diag(e^s) G diag(e^s)
        log_scales = self.log_scales.value
        if step.jacobian is not None:
            jacobian = check_jacobian(step.jacobian).detach()
            scales = log_scales.exp().to(jacobian)
            alpha = weights(scales[:, None] * jacobian)
        else:
            gramian = gramian_of(step, "imtl")
            scales = log_scales.exp().to(gramian)
            alpha = weights_from_gramian(scales[:, None] * gramian * scales[None, :])
        coefficients = alpha * scales * (len(step.task_names) / step.loss_scale)
        self._update(step.losses)
        return gradient_combination(step, coefficients, _diagnostics(step.task_names, coefficients, log_scales), "imtl")


@METHODS.register(
    "imtl_g", "IMTL-G: equal projections on all unit task gradients, weights sum to 1, times K/C (Liu et al. 2021)"
)
def build_g() -> Method:
    return IMTLG()


@METHODS.register("imtl_l", "IMTL-L: learned loss scales e^s on the losses e^s L - s (Liu et al. 2021)")
def build_l(*, lr: PositiveFloat = 1e-3, optimizer: ScaleOptimizer = "adam") -> Method:
    _check_scale_options(lr, optimizer)
    return IMTLL(lr, optimizer)


@METHODS.register("imtl", "IMTL: IMTL-G on the gradients of the IMTL-L scaled losses (Liu et al. 2021)")
def build(*, lr: PositiveFloat = 1e-3, optimizer: ScaleOptimizer = "adam") -> Method:
    _check_scale_options(lr, optimizer)
    return IMTL(lr, optimizer)
