"""MGDA and MGDA-UB: the min-norm point of the convex hull of the task gradients.

References: Désidéri, *Multiple-gradient descent algorithm (MGDA) for multiobjective optimization*, Comptes
Rendus Mathématique, 2012; Sener & Koltun, *Multi-Task Learning as Multi-Objective Optimization*, NeurIPS
2018 (Algorithm 2 and §3.3, "MGDA-UB").

**Formula.** With task gradients ``g_k`` on the shared parameters (optionally normalized, ``ĝ_k = g_k / n_k``),
MGDA solves ``min_{α ∈ Δ_K} |Σ_k α_k ĝ_k|²`` over the simplex ``Δ_K``. Its solution ``d̂ = Σ_k α_k ĝ_k``
satisfies the KKT conditions ``ĝ_i · d̂ ≥ |d̂|²`` for every task, with equality where ``α_i > 0``; so ``d̂`` is
a common descent direction, or zero at a Pareto-stationary point. As in Sener & Koltun's code, the weights
computed from the normalized gradients are applied to the *unnormalized* gradients: the update direction is
``Σ_k α_k g_k`` (with ``normalization="none"`` this is ``d̂`` itself).

**Options.**

- ``normalization`` (default ``"none"``, the paper's method; Sener & Koltun call the normalizations
  "optional and not included in the paper"): the ``n_k`` of their ``gradient_normalizers`` — ``"none"``
  (1), ``"l2"`` (``|g_k|``), ``"loss"`` (``L_k``), ``"loss+"`` (``L_k |g_k|``; their CelebA sample config).
  A zero normalizer is replaced by 1 (the gradient is then zero or the task has zero loss); the loss-based
  normalizations need non-negative losses.
- ``solver`` (default ``"exact"``): how the min-norm problem is solved. ``"exact"`` solves it to machine
  precision with ``scipy.optimize.nnls`` (the min-norm point is the least-distance problem
  ``min |x| s.t. g_i · x ≥ 1``, which Lawson & Hanson reduce to one non-negative least-squares problem on the
  K x K Gramian; ``α = u / Σu``). ``"frank_wolfe"`` is the routine of Sener & Koltun
  (``find_min_norm_element_FW``): start from the best pair (exact closed form for two vectors), then
  Frank-Wolfe steps with exact line search, at most 250 iterations, stop when the L1 change of ``α`` is
  below 1e-5. For K = 2 both are the exact closed form. The default departs from Sener & Koltun's Frank-Wolfe
  routine on purpose: with 250 iterations Frank-Wolfe leaves KKT residuals of a few percent of ``max|g|²``
  at K = 10, so the invariant ``g_i . d >= |d|^2`` would hold only loosely; the exact solver is also cheaper. (Our
  closed form for two vectors clips ``γ`` to [0, 1]; Sener & Koltun's code returns 0.999 / 0.001 at the
  ends.) If NNLS fails to converge (it has not been seen to), Frank-Wolfe is used for that step.

**How C enters.** ``α`` sums to 1, so ``Σ_k α_k g_k`` equals the common gradient ``g`` when all task gradients
are equal — the UMTG at C = K. The method multiplies it by ``K / C``: the shared gradient is
``(K / C) Σ_k α_k g_k``, which **equals the UMTG ``(1/C) Σ_k g_k`` at every C when all task gradients are
equal** (with any normalization). At C = K this is exactly Sener & Koltun's convex combination. Heads
receive ``grad L_k / C`` (Sener & Koltun back-propagate ``Σ α_k L_k`` into the heads too).
MGDA-UB returns the loss weights ``(K / C) α`` (one backward through the whole model), so its heads receive
``(K / C) α_k grad L_k``, as in Sener & Koltun.

**Cost.** ``mgda`` needs the [K, P] Jacobian on the shared parameters (K per-task gradients, docs/methods.md), the
K x K Gramian (K²P multiply-adds) and one K x K transfer to the CPU, where the min-norm problem is solved in
float64 (well under a millisecond for K ≤ 20, a few ms for K = 40); then one [K] x [K, P] product.
``mgda_ub`` (registered in this module) needs only the [K, R] gradients at the encoder output
("representation"), R = batch x features, and one ordinary backward of the weighted loss: MGDA's upper
bound of Sener & Koltun. In the multi-input layout each
task's loss depends only on its own rows of the representation, so these gradients are orthogonal and the
MGDA-UB weights are ``α_k ∝ 1 / |ĝ_k|²``.

**Diagnostics.** ``weight/<task>``: the coefficient ``(K / C) α_k`` of ``g_k`` in the shared update (MGDA-UB:
the loss weight); ``min_norm``: ``|d̂|``, the norm of the min-norm point of the (normalized) gradients (0 at a
Pareto-stationary point).
"""

from __future__ import annotations

from typing import Literal, cast

import numpy as np
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
from mtlscope.methods.registry import METHODS

Normalization = Literal["none", "l2", "loss", "loss+"]
Solver = Literal["exact", "frank_wolfe"]

NORMALIZATIONS: tuple[str, ...] = ("none", "l2", "loss", "loss+")
SOLVERS: tuple[str, ...] = ("exact", "frank_wolfe")

#: Sener & Koltun's MinNormSolver constants.
FW_MAX_ITER = 250
FW_STOP_CRIT = 1e-5


def _check_options(normalization: str, solver: str) -> None:
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"method.normalization must be one of {', '.join(NORMALIZATIONS)}; got {normalization!r}")
    if solver not in SOLVERS:
        raise ValueError(f"method.solver must be one of {', '.join(SOLVERS)}; got {solver!r}")


def _pair(v1v1: float, v1v2: float, v2v2: float) -> tuple[float, float]:
    """Exact ``argmin_{γ ∈ [0, 1]} |γ x1 + (1 - γ) x2|²`` and its value, from the three inner products."""
    if v1v2 >= v1v1:
        return 1.0, v1v1
    if v1v2 >= v2v2:
        return 0.0, v2v2
    gamma = (v2v2 - v1v2) / (v1v1 + v2v2 - 2.0 * v1v2)
    return gamma, v2v2 + gamma * (v1v2 - v2v2)


def frank_wolfe(gramian: np.ndarray, max_iter: int = FW_MAX_ITER, stop_crit: float = FW_STOP_CRIT) -> np.ndarray:
    """Sener & Koltun's min-norm routine (``find_min_norm_element_FW``) on a K x K Gramian (float64).

    Starts from the best pair of vectors (exact closed form), then Frank-Wolfe steps towards the vertex with
    the smallest ``(G α)_t`` with exact line search, until the L1 change of ``α`` is below ``stop_crit``."""
    num_tasks = gramian.shape[0]
    if num_tasks == 1:
        return np.ones(1)
    best: tuple[float, int, int, float] | None = None
    for i in range(num_tasks):
        for j in range(i + 1, num_tasks):
            gamma, cost = _pair(gramian[i, i], gramian[i, j], gramian[j, j])
            if best is None or cost < best[0]:
                best = (cost, i, j, gamma)
    assert best is not None
    alpha = np.zeros(num_tasks)
    alpha[best[1]] = best[3]
    alpha[best[2]] += 1.0 - best[3]
    if num_tasks < 3:
        return alpha
    for _ in range(max_iter):
        g_alpha = gramian @ alpha
        t = int(np.argmin(g_alpha))
        step, _ = _pair(float(alpha @ g_alpha), float(g_alpha[t]), float(gramian[t, t]))
        new = step * alpha
        new[t] += 1.0 - step
        if np.abs(new - alpha).sum() < stop_crit:
            return alpha
        alpha = new
    return alpha


def exact_min_norm(gramian: np.ndarray) -> np.ndarray:
    """The exact min-norm weights on a K x K Gramian (float64) by one non-negative least-squares problem.

    The min-norm point ``d`` of the hull is ``x / |x|²`` for the least-distance solution
    ``x = argmin |x| s.t. g_i · x ≥ 1``; Lawson & Hanson (*Solving Least Squares Problems*, ch. 23) solve it
    by ``u = argmin_{u ≥ 0} |E u - e_{K+1}|`` with ``E = [Lᵀ; 1ᵀ]``, ``L Lᵀ = G``, and ``α = u / Σu`` — also when
    the problem is infeasible (``0`` in the hull), where ``Lᵀ u = 0`` and ``Σu = 1``."""
    num_tasks = gramian.shape[0]
    eigenvalues, eigenvectors = np.linalg.eigh(gramian)
    factor = eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))
    system = np.vstack([factor.T, np.ones((1, num_tasks))])
    target = np.zeros(num_tasks + 1)
    target[-1] = 1.0
    from scipy.optimize import nnls  # here: a sweep worker that never runs MGDA does not import it

    u, _ = nnls(system, target, maxiter=50 * num_tasks)
    total = u.sum()
    if not total > 0:
        raise RuntimeError("nnls returned no positive weight")
    return cast(np.ndarray, u / total)


def min_norm_weights(gramian: Tensor, solver: Solver = "exact") -> Tensor:
    """The weights ``α ∈ Δ_K`` of the min-norm point of the hull of vectors with Gramian ``gramian`` [K, K].

    Solved in float64 on the CPU; returned in the Gramian's dtype and device. An all-zero Gramian gives
    uniform weights (every point of the hull is 0)."""
    _check_options("none", solver)
    if gramian.dim() != 2 or gramian.shape[0] != gramian.shape[1] or gramian.shape[0] < 1:
        raise ValueError(f"expected a [K, K] gramian, got shape {tuple(gramian.shape)}")
    num_tasks = gramian.shape[0]
    matrix = gramian.detach().to("cpu", torch.float64).numpy()
    matrix = 0.5 * (matrix + matrix.T)
    scale = float(np.trace(matrix)) / num_tasks
    if not scale > 0:
        alpha = np.full(num_tasks, 1.0 / num_tasks)
    else:
        matrix = matrix / scale  # the weights do not depend on the scale; this keeps the numbers near 1
        if solver == "frank_wolfe" or num_tasks <= 2:
            alpha = frank_wolfe(matrix)
        else:
            try:
                alpha = exact_min_norm(matrix)
            except RuntimeError:
                alpha = frank_wolfe(matrix)
    return torch.as_tensor(alpha, dtype=torch.float64).to(device=gramian.device, dtype=gramian.dtype)


def normalizers(gramian: Tensor, losses: Tensor | None, normalization: Normalization) -> Tensor:
    """The [K] gradient normalizers ``n_k`` of Sener & Koltun (zeros replaced by 1), in float64."""
    _check_options(normalization, "exact")
    norms = gramian.detach().diagonal().to(torch.float64).clamp_min(0).sqrt()
    if normalization == "none":
        values = torch.ones_like(norms)
    elif normalization == "l2":
        values = norms
    else:
        if losses is None:
            raise ValueError(f"normalization {normalization!r} needs the task losses")
        loss = losses.detach().to(device=norms.device, dtype=torch.float64).reshape(-1)
        if loss.shape != norms.shape:
            raise ValueError(f"expected {norms.shape[0]} losses, got shape {tuple(losses.shape)}")
        if bool((loss < 0).any()):
            raise ValueError(f"normalization {normalization!r} needs non-negative task losses, got {loss.tolist()}")
        values = loss if normalization == "loss" else loss * norms
    return torch.where(values > 0, values, torch.ones_like(values))


def weights_from_gramian(
    gramian: Tensor,
    losses: Tensor | None = None,
    normalization: Normalization = "none",
    solver: Solver = "exact",
) -> Tensor:
    """MGDA's weights ``α`` [K] from the Gramian ``J Jᵀ`` of the task gradients (see ``weights``)."""
    _check_options(normalization, solver)
    scale = normalizers(gramian, losses, normalization)
    normalized = gramian.detach().to(torch.float64) / (scale[:, None] * scale[None, :])
    return min_norm_weights(normalized, solver).to(gramian.dtype)


def weights(
    jacobian: Tensor,
    losses: Tensor | None = None,
    normalization: Normalization = "none",
    solver: Solver = "exact",
) -> Tensor:
    """MGDA's weights ``α`` [K] for a [K, P] Jacobian: ``α ≥ 0``, ``Σα = 1``, and with ``ĝ_k = g_k / n_k``,
    ``ĝ_i · d̂ ≥ |d̂|²`` for every i (equality where ``α_i > 0``), ``d̂ = Σ_k α_k ĝ_k``.

    ``losses`` [K] are needed for ``normalization`` ``"loss"`` and ``"loss+"``."""
    _check_options(normalization, solver)
    jacobian = check_jacobian(jacobian).detach()
    return weights_from_gramian(jacobian @ jacobian.T, losses, normalization, solver)


def aggregate(
    jacobian: Tensor,
    losses: Tensor | None = None,
    normalization: Normalization = "none",
    solver: Solver = "exact",
) -> Tensor:
    """``Σ_k α_k g_k`` [P] — the min-norm point for ``normalization="none"``; at the scale of the mean gradient
    (the method returns ``K / C`` times this)."""
    jacobian = check_jacobian(jacobian).detach()
    return weights(jacobian, losses, normalization, solver) @ jacobian


def _min_norm(gramian: Tensor, alpha: Tensor, losses: Tensor | None, normalization: Normalization) -> float:
    scale = normalizers(gramian, losses, normalization)
    a = alpha.detach().to(torch.float64).cpu() / scale.cpu()
    value = float(a @ gramian.detach().to(torch.float64).cpu() @ a)
    return max(value, 0.0) ** 0.5


def _diagnostics(task_names: tuple[str, ...], coefficients: Tensor, min_norm: float) -> dict[str, float]:
    values = coefficients.detach().cpu().tolist()
    out = {f"weight/{task}": float(value) for task, value in zip(task_names, values)}
    out["min_norm"] = min_norm
    return out


class MGDA(Method):
    name = "mgda"
    needs = frozenset({"jacobian"})
    accepts_gramian = True

    def __init__(self, normalization: Normalization = "none", solver: Solver = "exact") -> None:
        _check_options(normalization, solver)
        self.normalization: Normalization = normalization
        self.solver: Solver = solver

    def combine(self, step: StepInput) -> Combination:
        gramian = gramian_of(step, "mgda")
        alpha = weights_from_gramian(gramian, step.losses, self.normalization, self.solver)
        coefficients = alpha * (gramian.shape[0] / step.loss_scale)
        diagnostics = _diagnostics(
            step.task_names, coefficients, _min_norm(gramian, alpha, step.losses, self.normalization)
        )
        return gradient_combination(step, coefficients, diagnostics, "mgda")


class MGDAUB(Method):
    name = "mgda_ub"
    needs = frozenset({"representation"})

    def __init__(self, normalization: Normalization = "none", solver: Solver = "exact") -> None:
        _check_options(normalization, solver)
        self.normalization: Normalization = normalization
        self.solver: Solver = solver

    def combine(self, step: StepInput) -> Combination:
        if step.representation_jacobian is None:
            raise ValueError(
                "mgda_ub needs the task-loss gradients at the shared representation (needs 'representation')"
            )
        representation = check_jacobian(step.representation_jacobian.reshape(len(step.task_names), -1)).detach()
        gramian = representation @ representation.T
        alpha = weights_from_gramian(gramian, step.losses, self.normalization, self.solver)
        loss_weights = (alpha * (representation.shape[0] / step.loss_scale)).to(step.losses)
        return Combination(
            loss_weights=loss_weights,
            diagnostics=_diagnostics(
                step.task_names, loss_weights, _min_norm(gramian, alpha, step.losses, self.normalization)
            ),
        )


@METHODS.register(
    "mgda",
    "MGDA: min-norm point of the convex hull of the task gradients, times K/C (Désidéri 2012; Sener & Koltun 2018)",
)
def build(*, normalization: Normalization = "none", solver: Solver = "exact") -> Method:
    _check_options(normalization, solver)
    return MGDA(normalization, solver)


@METHODS.register(
    "mgda_ub",
    "MGDA-UB: MGDA weights from the gradients at the shared representation, as loss weights (Sener & Koltun 2018)",
)
def build_ub(*, normalization: Normalization = "none", solver: Solver = "exact") -> Method:
    _check_options(normalization, solver)
    return MGDAUB(normalization, solver)
