"""CAGrad: conflict-averse gradient descent.

Reference: Liu, Liu, Jin, Stone & Liu, *Conflict-Averse Gradient Descent for Multi-task Learning*, NeurIPS
2021 (Algorithm 1; official code github.com/Cranial-XIX/CAGrad, ``nyuv2/utils.py``).

**Formula.** With the average gradient ``g_0 = (1/K) Σ_k g_k``, CAGrad looks for the update in the ball
``|d - g_0| ≤ c |g_0|`` that maximizes the worst task's decrease ``min_i g_i · d``. Its dual is solved over the
simplex: ``w* = argmin_{w ∈ Δ_K} g_w · g_0 + c |g_0| |g_w|`` with ``g_w = Σ_k w_k g_k``, and
``d = g_0 + (c |g_0| / |g_w*|) g_w*`` — a weighting of the task gradients with coefficients
``1/K + λ w*_k``, ``λ = c |g_0| / |g_w*|``. The inner problem (K variables) is solved with
``scipy.optimize.minimize`` (SLSQP, bounds [0, 1], ``Σw = 1``, analytic gradient), as in the official code,
on the Gramian divided by its mean diagonal (the minimizer does not depend on the scale), with
``|g_w| = sqrt(wᵀGw + 1e-10)`` in the objective and ``ftol = 1e-12`` (the official code adds 1e-8 under the
square root of the raw Gramian and keeps SLSQP's default tolerance). When ``|g_w*|`` vanishes (0 in the
hull: a Pareto-stationary point) ``λ = 0``, i.e. ``d = g_0`` (the official code divides by ``|g_w| + 1e-8``,
which also gives ``g_0`` when ``g_w* = 0``; TorchJD returns 0).

**Options.** ``c`` (default 0.5, the paper's choice for its vision benchmarks; ``c ≥ 0``; c = 0 is the UMTG).
``rescale`` (default 1, the official code's default): ``0`` — ``d``; ``1`` — ``d / (1 + c²)``; ``2`` —
``d / (1 + c)``.

**How C enters.** The official code multiplies ``d`` by K "to match the sum loss"; with the loss scale C the
shared gradient is ``(K / C) d / rescale`` — CAGrad applied to the UMTG ``(1/C) Σ_k g_k`` in place of ``g_0``
(the construction is positively homogeneous). When all task gradients are equal ``d = (1 + c) g``, so the
method equals the UMTG times ``(1 + c)`` (rescale 0), ``(1 + c) / (1 + c²)`` (rescale 1: 1.2 at c = 0.5), or
exactly (rescale 2), at every C. Heads receive ``grad L_k / C``, as in the official code (heads keep their
summed gradient).

**Cost.** The [K, P] Jacobian on the shared parameters (K per-task gradients, docs/methods.md), the K x K Gramian
(K²P multiply-adds), one K x K transfer to the CPU and an SLSQP solve of K variables (about a millisecond for
K = 10, ~5 ms for K = 40), then one [K] x [K, P] product.

**Diagnostics.** ``weight/<task>``: the coefficient of ``g_k`` in the shared update; ``lambda``: ``λ``.

TorchJD's ``CAGrad(c)`` solves the same dual with cvxpy (Clarabel) and returns ``d`` (rescale 0) at the
scale of the mean; the tests compare with it when cvxpy is installed.
"""

from __future__ import annotations

import math
from typing import Annotated

import numpy as np
import torch
from pydantic import Field
from torch import Tensor

from mtlscope.methods.base import (
    Combination,
    Method,
    StepInput,
    check_jacobian,
    gradient_combination,
    gramian_of,
)
from mtlscope.methods.registry import METHODS
from mtlscope.options import NonNegativeFloat

RESCALES: tuple[int, ...] = (0, 1, 2)
#: Added under the square root of |g_w|² (on the Gramian scaled to a unit mean diagonal).
NORM_EPS = 1e-10
#: |g_w*| below this (relative to the root-mean-square task-gradient norm) counts as zero.
ZERO_NORM = 1e-9


def _check_options(c: float, rescale: int) -> None:
    if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c) or c < 0:
        raise ValueError(f"method.c must be a number >= 0, got {c!r}")
    if isinstance(rescale, bool) or rescale not in RESCALES:
        raise ValueError(
            f"method.rescale must be one of 0 (none), 1 (divide by 1 + c^2), 2 (divide by 1 + c); got {rescale!r}"
        )


def rescale_factor(c: float, rescale: int) -> float:
    """The divisor of ``d`` for option ``rescale``: 1, ``1 + c²`` or ``1 + c``."""
    _check_options(c, rescale)
    return (1.0, 1.0 + c * c, 1.0 + c)[rescale]


def dual_weights(gramian: np.ndarray, c: float) -> tuple[np.ndarray, float]:
    """``(w*, λ)`` for a K x K Gramian (float64): the minimizer over the simplex of
    ``wᵀ G 1/K + c |g_0| sqrt(wᵀ G w)`` and ``λ = c |g_0| / |g_w*|`` (0 when ``|g_w*|`` or ``c |g_0|`` vanish)."""
    num_tasks = gramian.shape[0]
    start = np.full(num_tasks, 1.0 / num_tasks)
    scale = float(np.trace(gramian)) / num_tasks
    if not scale > 0:
        return start, 0.0
    matrix = 0.5 * (gramian + gramian.T) / scale
    b = matrix.mean(axis=1)
    radius = c * math.sqrt(max(float(b.mean()), 0.0))
    if radius == 0.0:
        return start, 0.0

    def objective(w: np.ndarray) -> float:
        return float(w @ b + radius * math.sqrt(max(float(w @ matrix @ w), 0.0) + NORM_EPS))

    def gradient(w: np.ndarray) -> np.ndarray:
        mw = matrix @ w
        return b + radius * mw / math.sqrt(max(float(w @ mw), 0.0) + NORM_EPS)

    from scipy.optimize import minimize  # here: a sweep worker that never runs CAGrad does not import it

    result = minimize(
        objective,
        start,
        jac=gradient,
        method="SLSQP",
        bounds=[(0.0, 1.0)] * num_tasks,
        constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones_like(w)}],
        options={"ftol": 1e-12, "maxiter": 500},
    )
    w = np.clip(result.x, 0.0, None)
    w = w / w.sum() if w.sum() > 0 else start
    gw_norm = math.sqrt(max(float(w @ matrix @ w), 0.0))
    return w, (radius / gw_norm if gw_norm > ZERO_NORM else 0.0)


def weights_from_gramian(gramian: Tensor, c: float = 0.5, rescale: int = 1) -> Tensor:
    """CAGrad's coefficients [K] (``(1/K + λ w*_k) / rescale``) from the Gramian ``J Jᵀ``."""
    divisor = rescale_factor(c, rescale)
    if gramian.dim() != 2 or gramian.shape[0] != gramian.shape[1] or gramian.shape[0] < 1:
        raise ValueError(f"expected a [K, K] gramian, got shape {tuple(gramian.shape)}")
    w, lam = dual_weights(gramian.detach().to("cpu", torch.float64).numpy(), float(c))
    coefficients = (1.0 / gramian.shape[0] + lam * w) / divisor
    return torch.as_tensor(coefficients, dtype=torch.float64).to(device=gramian.device, dtype=gramian.dtype)


def weights(jacobian: Tensor, c: float = 0.5, rescale: int = 1) -> Tensor:
    """CAGrad's coefficients [K] for a [K, P] Jacobian: ``aggregate = weights @ jacobian``."""
    jacobian = check_jacobian(jacobian).detach()
    return weights_from_gramian(jacobian @ jacobian.T, c, rescale)


def aggregate(jacobian: Tensor, c: float = 0.5, rescale: int = 1) -> Tensor:
    """CAGrad's update ``d / rescale`` [P] at the scale of the mean gradient (the method returns ``K / C``
    times it)."""
    jacobian = check_jacobian(jacobian).detach()
    return weights(jacobian, c, rescale) @ jacobian


class CAGrad(Method):
    name = "cagrad"
    needs = frozenset({"jacobian"})
    accepts_gramian = True

    def __init__(self, c: float = 0.5, rescale: int = 1) -> None:
        _check_options(c, rescale)
        self.c = float(c)
        self.rescale = int(rescale)

    def combine(self, step: StepInput) -> Combination:
        gramian = gramian_of(step, "cagrad")
        num_tasks = gramian.shape[0]
        w, lam = dual_weights(gramian.to("cpu", torch.float64).numpy(), self.c)
        mean_scale = (1.0 / num_tasks + lam * w) / rescale_factor(self.c, self.rescale)
        coefficients = torch.as_tensor(mean_scale * (num_tasks / step.loss_scale), dtype=torch.float64)
        coefficients = coefficients.to(device=gramian.device, dtype=gramian.dtype)
        diagnostics = {f"weight/{task}": float(v) for task, v in zip(step.task_names, coefficients.cpu().tolist())}
        diagnostics["lambda"] = float(lam)
        return gradient_combination(step, coefficients, diagnostics, "cagrad")


@METHODS.register(
    "cagrad", "CAGrad: best worst-task decrease in a ball of radius c|g_0| around the UMTG (Liu et al. 2021)"
)
def build(*, c: NonNegativeFloat = 0.5, rescale: Annotated[int, Field(ge=0, le=2)] = 1) -> Method:
    _check_options(c, rescale)
    return CAGrad(c, rescale)
