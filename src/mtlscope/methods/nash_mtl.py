"""Nash-MTL: multi-task learning as a bargaining game (Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik,
Fetaya. *Multi-Task Learning as a Bargaining Game*, ICML 2022, Algorithm 1).

The update is the Nash bargaining solution ``d = sum_k alpha_k g_k`` with ``alpha > 0`` solving

    (G^T G) alpha = 1 / alpha        (elementwise; G^T G = J J^T is the K x K Gramian of the task gradients)

i.e. every task gets the same "utility" ``alpha_k * g_k . d = 1``. Then ``|d|^2 = alpha^T J J^T alpha = K``:
the direction is scale-free and has norm sqrt(K) before clipping.

Solver. The original code (github.com/AvivNavon/nash-mtl) approximates the solution with a sequence of
convex problems (CCP, ``optim_niter`` ECOS solves through cvxpy). Here the same fixed point is found as the
unique minimizer of the strictly convex ``f(b) = 1/2 b^T M b - sum_k log b_k`` over ``b > 0`` (its gradient
``M b - 1/b`` vanishes exactly at the Nash solution), with ``scipy.optimize.minimize`` (L-BFGS-B, bounds
``> 0``), on the Gramian normalized as in the original, ``M = J J^T / |J J^T|_F``, and then
``alpha = b / sqrt(|J J^T|_F)``; the variables are scaled by ``1/|g_k|`` (diagonal preconditioning, which
keeps the iteration count near 10-20 up to K = 20 even when the task gradient norms differ by orders of
magnitude). Both give the solution of the unnormalized equation (checked against values of the original
CCP in the tests). The solver stops when every utility ``alpha_k (J J^T alpha)_k`` is within 1e-10 of 1
or after ``optim_niter`` L-BFGS-B iterations (in the original: at most ``optim_niter`` CCP iterations);
it starts from the previous solution (warm start kept in the state; ``b = 1`` at the first update). An
iterate is accepted when every utility is positive (so d has a positive inner product with every task
gradient), converged or not — the original also uses its last CCP iterate; otherwise (no solution exists,
e.g. two exactly opposite gradients or a zero gradient) the previous weights are kept, as the original
does when its solver fails (at the first update: ``alpha = 1 / sqrt(|J J^T|_F)``). The original's CCP
also fails where its start alpha = 1 gives some task a zero utility (e.g. g1 = [1, 0], g2 = [-1, 1]),
and then returns alpha = 1; this solver finds the solution there.

Options (defaults of the original code):

- ``update_weights_every`` (1): solve for alpha every this many calls; in between, reuse the last alpha
  (the original does the same; here the engine still computes the Jacobian every step, which the clipping
  below also uses).
- ``optim_niter`` (20): maximum solver iterations per update (see above).
- ``max_norm`` (1.0): clip the shared update to this l2 norm, ``d <- d * min(1, max_norm / (|d| + 1e-6))``
  (``torch.nn.utils.clip_grad_norm_`` on the shared parameters in the original); 0 disables clipping. Since
  ``|d| = sqrt(K)``, with the default every update of K >= 2 tasks has norm 1 (the original's behaviour too).

How C enters: the clipped update is divided by C, so the shared/head ratio is that of the UMTG: the shared
gradient is ``clip(sum_k alpha_k g_k) / C`` and heads receive ``grad L_k / C`` (as with every method). The original
back-propagates ``sum_k alpha_k L_k`` through the whole model, so its heads get ``alpha_k grad L_k``
(unclipped); here heads get their own gradient, as for every shared-gradient method in mtlscope.
When all task gradients equal g, alpha_k = 1 / (sqrt(K) |g|) and the update is
``min(sqrt(K), max_norm) g / (|g| C)`` (approximately, for the 1e-6 of the clipping): the UMTG direction
``K g / C`` scaled by ``min(sqrt(K), max_norm) / (K |g|)``.

Needs: the [K, P] Jacobian. Cost per step: the Gramian (K^2 P), one K x K transfer to the CPU and an
L-BFGS-B solve on K variables (each iteration O(K^2)), one [K] x [K, P] product and one norm.

Diagnostics: ``weight/<task>`` (the effective weights ``alpha_k * clip / C``), ``norm`` (|d| before
clipping), ``clip`` (the clipping factor); on steps that solve (not on steps that reuse alpha) also
``residual`` (max_k |alpha_k (J J^T alpha)_k - 1| of the weights in use), ``solver_iters`` and
``accepted`` (1 when the solve was accepted, 0 when the previous weights were kept).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from mtlscope.methods.base import (
    Combination,
    Method,
    StepInput,
    check_jacobian,
    check_loss_scale,
    gradient_combination,
    gramian_of,
)
from mtlscope.methods.registry import METHODS
from mtlscope.options import NonNegativeFloat, PositiveInt

if TYPE_CHECKING:
    from scipy.optimize import OptimizeResult

#: The solver stops once every utility alpha_k (J J^T alpha)_k is within this of 1.
_TOLERANCE = 1e-10


@dataclass(frozen=True)
class NashSolution:
    """The outcome of one weight update.

    Attributes:
        alpha: [K] float64 CPU weights for the unnormalized Gramian (``J J^T alpha = 1/alpha``), or the
            fallback (``beta_init / sqrt(|J J^T|_F)``) when not accepted.
        beta: [K] the solution for the normalized Gramian (the next warm start); ``beta_init`` when not
            accepted.
        accepted: whether every task utility of the solver's iterate is positive.
        residual: max_k |alpha_k (J J^T alpha)_k - 1| of the returned alpha (inf when the Gramian is zero).
        iterations: solver iterations.
    """

    alpha: Tensor
    beta: Tensor
    accepted: bool
    residual: float
    iterations: int


def _check_options(max_norm: float, optim_niter: int, update_weights_every: int = 1) -> None:
    if isinstance(optim_niter, bool) or not isinstance(optim_niter, int) or optim_niter < 1:
        raise ValueError(f"nash_mtl: optim_niter must be an integer >= 1, got {optim_niter!r}")
    if isinstance(update_weights_every, bool) or not isinstance(update_weights_every, int) or update_weights_every < 1:
        raise ValueError(f"nash_mtl: update_weights_every must be an integer >= 1, got {update_weights_every!r}")
    if isinstance(max_norm, bool) or not isinstance(max_norm, int | float) or not max_norm >= 0:
        raise ValueError(f"nash_mtl: max_norm must be a number >= 0 (0 disables clipping), got {max_norm!r}")


def solve(gramian: Tensor, beta_init: Tensor | None = None, optim_niter: int = 20) -> NashSolution:
    """Solve ``J J^T alpha = 1 / alpha`` for a [K, K] Gramian, warm-started at ``beta_init`` (normalized
    units, default ones). See the module docstring for the acceptance rule and the fallback."""
    _check_options(1.0, optim_niter)
    if gramian.dim() != 2 or gramian.shape[0] != gramian.shape[1]:
        raise ValueError(f"nash_mtl: expected a [K, K] Gramian, got shape {tuple(gramian.shape)}")
    num_tasks = gramian.shape[0]
    gram = gramian.detach().to(device="cpu", dtype=torch.float64).numpy()
    gram = 0.5 * (gram + gram.T)
    start = np.ones(num_tasks) if beta_init is None else beta_init.detach().to("cpu", torch.float64).numpy().copy()
    if start.shape != (num_tasks,) or not (np.isfinite(start).all() and (start > 0).all()):
        raise ValueError(f"nash_mtl: the warm start must be {num_tasks} positive numbers, got {start.tolist()}")
    scale = float(np.linalg.norm(gram))
    if not (math.isfinite(scale) and scale > 0):
        fallback = torch.from_numpy(start) if scale == 0 else torch.full((num_tasks,), math.nan, dtype=torch.float64)
        return NashSolution(fallback, torch.from_numpy(start), False, math.inf, 0)
    normalized = gram / scale
    diagonal = np.diag(normalized)
    beta, accepted, iterations = start, False, 0
    if (diagonal > 0).all():  # otherwise a task gradient is zero and no direction improves every task
        # diagonal preconditioning: b = s * x with s_k = 1 / |g_k| (normalized units), so the scaled Gramian
        # has a unit diagonal and x = 1 solves the orthogonal case
        unit = 1.0 / np.sqrt(diagonal)
        scaled = normalized * unit[:, None] * unit[None, :]

        def objective(x: np.ndarray) -> tuple[float, np.ndarray]:
            mx = scaled @ x
            return float(0.5 * x @ mx - np.log(x).sum()), mx - 1.0 / x

        def converged(intermediate_result: OptimizeResult) -> None:
            x = intermediate_result.x
            if np.abs(x * (scaled @ x) - 1.0).max() <= _TOLERANCE:  # the utilities b_k (M b)_k are all 1
                raise StopIteration

        from scipy.optimize import minimize  # here: a sweep worker that never runs Nash-MTL does not import it

        result = minimize(
            objective,
            np.clip(start / unit, 1e-12, None),
            jac=True,
            method="L-BFGS-B",
            bounds=[(1e-12, None)] * num_tasks,
            callback=converged,
            options={"maxiter": optim_niter, "gtol": 0.0, "ftol": 0.0},
        )
        iterations = int(result.nit)
        candidate = np.asarray(result.x, dtype=np.float64) * unit
        if np.isfinite(candidate).all() and (candidate * (normalized @ candidate) > 0).all():
            beta, accepted = candidate, True
    weights = beta / math.sqrt(scale)
    residual = float(np.abs(weights * (gram @ weights) - 1.0).max())
    return NashSolution(torch.from_numpy(weights), torch.from_numpy(beta.copy()), accepted, residual, iterations)


def clip_factor(direction: Tensor, max_norm: float) -> Tensor:
    """``min(1, max_norm / (|d| + 1e-6))`` as ``torch.nn.utils.clip_grad_norm_``; 1 when max_norm is 0."""
    return norm_clip_factor(torch.linalg.vector_norm(direction), max_norm)


def norm_clip_factor(norm: Tensor, max_norm: float) -> Tensor:
    """``clip_factor`` from the norm ``|d|`` (a 0-dim tensor)."""
    if max_norm == 0:
        return torch.ones((), dtype=norm.dtype, device=norm.device)
    return torch.clamp(max_norm / (norm + 1e-6), max=1.0)


def weights(
    jacobian: Tensor,
    loss_scale: float = 1.0,
    max_norm: float = 1.0,
    optim_niter: int = 20,
    beta_init: Tensor | None = None,
) -> Tensor:
    """Nash-MTL's effective weights [K] (clipping and 1/C included) for a [K, P] Jacobian, from a cold start
    (or ``beta_init``): ``weights @ J == aggregate(J)``."""
    check_jacobian(jacobian)
    _check_options(max_norm, optim_niter)
    scale = check_loss_scale(loss_scale, "nash_mtl")
    solution = solve(jacobian @ jacobian.T, beta_init, optim_niter)
    alpha = solution.alpha.to(dtype=jacobian.dtype, device=jacobian.device)
    return alpha * clip_factor(alpha @ jacobian, max_norm) / scale


def aggregate(
    jacobian: Tensor,
    loss_scale: float = 1.0,
    max_norm: float = 1.0,
    optim_niter: int = 20,
    beta_init: Tensor | None = None,
) -> Tensor:
    """Nash-MTL's shared update [P] for a [K, P] Jacobian: ``clip(sum_k alpha_k g_k) / C``."""
    return weights(jacobian, loss_scale, max_norm, optim_niter, beta_init) @ jacobian


class NashMTL(Method):
    name = "nash_mtl"
    needs = frozenset({"jacobian"})
    accepts_gramian = True

    def __init__(self, update_weights_every: int = 1, optim_niter: int = 20, max_norm: float = 1.0) -> None:
        _check_options(max_norm, optim_niter, update_weights_every)
        self.update_weights_every = update_weights_every
        self.optim_niter = optim_niter
        self.max_norm = float(max_norm)
        self.calls = 0
        self.alpha: Tensor | None = None
        self.beta: Tensor | None = None

    def setup(self, task_names: tuple[str, ...]) -> None:
        super().setup(task_names)
        self.calls = 0
        self.alpha = None  # float64 CPU, unnormalized units: the weights in use
        self.beta = None  # float64 CPU, normalized units: the warm start

    def combine(self, step: StepInput) -> Combination:
        gramian = gramian_of(step, "nash_mtl")
        if gramian.shape[0] != self.num_tasks:
            raise ValueError(f"nash_mtl: expected the gradients of {self.num_tasks} tasks, got {gramian.shape[0]}")
        scale = check_loss_scale(step.loss_scale, "nash_mtl")
        diagnostics: dict[str, float] = {}
        if self.calls % self.update_weights_every == 0 or self.alpha is None:
            gram = gramian.to(device="cpu", dtype=torch.float64)  # one K x K transfer
            solution = solve(gram, self.beta, self.optim_niter)
            if solution.accepted or self.alpha is None:
                self.alpha = solution.alpha
            self.beta = solution.beta
            alpha = self.alpha
            diagnostics["residual"] = float((alpha * (gram @ alpha) - 1.0).abs().max())
            diagnostics["solver_iters"] = float(solution.iterations)
            diagnostics["accepted"] = float(solution.accepted)
        self.calls += 1
        if step.jacobian is not None:
            jacobian = step.jacobian.detach()
            alpha = self.alpha.to(dtype=jacobian.dtype, device=jacobian.device)
            direction = alpha @ jacobian
            norm = torch.linalg.vector_norm(direction)
        else:  # |d|² = αᵀ G α
            alpha = self.alpha.to(dtype=gramian.dtype, device=gramian.device)
            norm = (alpha @ gramian @ alpha).clamp_min(0).sqrt()
        factor = norm_clip_factor(norm, self.max_norm)
        effective = alpha * factor / scale
        diagnostics["norm"] = float(norm)
        diagnostics["clip"] = float(factor)
        for task, value in zip(self.task_names, effective.tolist(), strict=True):
            diagnostics[f"weight/{task}"] = float(value)
        if step.jacobian is not None:
            return Combination(shared_gradient=direction * (factor / scale), diagnostics=diagnostics)
        return gradient_combination(step, effective, diagnostics, "nash_mtl")

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"calls": self.calls}
        if self.alpha is not None:
            state["alpha"] = self.alpha.clone()
        if self.beta is not None:
            state["beta"] = self.beta.clone()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        unknown = set(state) - {"calls", "alpha", "beta"}
        if unknown:
            raise ValueError(f"nash_mtl: unexpected state keys {sorted(unknown)}")
        self.calls = int(state.get("calls", 0))
        loaded: dict[str, Tensor | None] = {}
        for key in ("alpha", "beta"):
            value = state.get(key)
            if value is not None:
                value = torch.as_tensor(value, dtype=torch.float64).clone()
                if value.shape != (self.num_tasks,):
                    raise ValueError(
                        f"nash_mtl: state {key!r} has shape {tuple(value.shape)}, expected ({self.num_tasks},)"
                    )
            loaded[key] = value
        self.alpha, self.beta = loaded["alpha"], loaded["beta"]


@METHODS.register("nash_mtl", "Nash-MTL: Nash bargaining solution J J^T alpha = 1/alpha (Navon et al. 2022)")
def build(
    *, update_weights_every: PositiveInt = 1, optim_niter: PositiveInt = 20, max_norm: NonNegativeFloat = 1.0
) -> Method:
    return NashMTL(update_weights_every, optim_niter, max_norm)
