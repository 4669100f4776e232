"""Aligned-MTL: align the task gradients into an orthogonal, equal-norm system, then sum.

Reference: Senushkin, Patakin, Kuznetsov & Konushin, *Independent Component Alignment for Multi-Task
Learning*, CVPR 2023 (Algorithm 1; official code github.com/SamsungLabs/MTL, ``code/optim/aligned``).

**Formula.** With the Gramian ``M = J Jᵀ = V Λ Vᵀ`` (keeping the R eigenvalues above
``λ_max · K · eps``, eps of the Jacobian's dtype, as in the official code), the balance matrix is
``B = sqrt(σ) V_R Λ_R^{-1/2} V_Rᵀ`` [K, K]. The aligned task gradients ``Ĵ = B J`` are orthogonal with equal
squared norms ``σ`` on the span of the gradients (``B M B = σ V_R V_Rᵀ``): the condition number of the
aligned system is 1. The update is their weighted sum ``wᵀ B J``, i.e. the task gradients weighted by
``α = B w``. ``σ`` is set by option ``scale_mode``: ``"min"`` (default, the paper's and official choice) —
the smallest kept eigenvalue; ``"median"`` — their median (``torch.median``, the lower middle value);
``"rmse"`` — their mean. With no non-zero gradient (R = 0), ``B`` is the identity (as in TorchJD).

**How C enters.** The official code sums the aligned gradients (``w = 1``); TorchJD's ``AlignedMTL`` averages
them (``w = 1/K``). The pure functions here use the average (they agree with TorchJD); the method returns
the shared gradient ``(K / C) · (1/K) 1ᵀ B J = (1/C) 1ᵀ B J``: the official sum for C = 1, the average for
C = K — a sum-type aggregator divided by C. When all task gradients are equal, ``B = 11ᵀ / K`` and the method
**equals the UMTG** ``(1/C) Σ_k g_k`` at every C. Heads receive ``grad L_k / C`` (the official code leaves the
decoders' gradients unscaled by default).

**Cost.** The [K, P] Jacobian on the shared parameters (K per-task gradients, docs/methods.md), the K x K Gramian
(K²P multiply-adds), a K x K symmetric eigendecomposition (on the Jacobian's device, in float64 except on
MPS), then one [K] x [K, P] product. (The paper's cheaper Aligned-MTL-UB variant, at the shared
representation, is not implemented.)

**Diagnostics.** ``weight/<task>``: the coefficient ``α_k`` of ``g_k`` in the shared update (1/C included);
``rank``: R.
"""

from __future__ import annotations

from typing import Literal

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

ScaleMode = Literal["min", "median", "rmse"]
SCALE_MODES: tuple[str, ...] = ("min", "median", "rmse")


def _check_scale_mode(scale_mode: str) -> None:
    if scale_mode not in SCALE_MODES:
        raise ValueError(f"method.scale_mode must be one of {', '.join(SCALE_MODES)}; got {scale_mode!r}")


def _solve_dtype(tensor: Tensor) -> torch.dtype:
    """float64 for the small K x K algebra, except where the device has none (MPS)."""
    return torch.float32 if tensor.device.type == "mps" else torch.float64


def balance_matrix(gramian: Tensor, scale_mode: ScaleMode = "min", eps: float | None = None) -> tuple[Tensor, int]:
    """``(B, R)``: the [K, K] balance matrix ``sqrt(σ) V_R Λ_R^{-1/2} V_Rᵀ`` of a Gramian and the kept rank R.

    ``eps`` (default: machine epsilon of the Gramian's dtype) sets the rank tolerance ``λ_max · K · eps``."""
    _check_scale_mode(scale_mode)
    if gramian.dim() != 2 or gramian.shape[0] != gramian.shape[1] or gramian.shape[0] < 1:
        raise ValueError(f"expected a [K, K] gramian, got shape {tuple(gramian.shape)}")
    num_tasks = gramian.shape[0]
    if eps is None:
        eps = torch.finfo(gramian.dtype).eps
    matrix = gramian.detach().to(_solve_dtype(gramian))
    matrix = 0.5 * (matrix + matrix.T)
    eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
    tolerance = eigenvalues.max().clamp_min(0) * num_tasks * eps  # never keep a negative (noise) eigenvalue
    keep = eigenvalues > tolerance
    rank = int(keep.sum())
    if rank == 0:
        return torch.eye(num_tasks, dtype=gramian.dtype, device=gramian.device), 0
    kept_values, kept_vectors = eigenvalues[keep], eigenvectors[:, keep]
    if scale_mode == "min":
        sigma = kept_values.min()
    elif scale_mode == "median":
        sigma = kept_values.median()
    else:
        sigma = kept_values.mean()
    balance = sigma.sqrt() * (kept_vectors / kept_values.sqrt()) @ kept_vectors.T
    return balance.to(gramian.dtype), rank


def weights_from_gramian(gramian: Tensor, scale_mode: ScaleMode = "min") -> Tensor:
    """Aligned-MTL's coefficients [K], ``B 1 / K``, from the Gramian ``J Jᵀ``."""
    balance, _ = balance_matrix(gramian, scale_mode)
    return balance.sum(dim=1) / gramian.shape[0]


def weights(jacobian: Tensor, scale_mode: ScaleMode = "min") -> Tensor:
    """Aligned-MTL's coefficients [K] for a [K, P] Jacobian (average of the aligned gradients, as TorchJD)."""
    jacobian = check_jacobian(jacobian).detach()
    return weights_from_gramian(jacobian @ jacobian.T, scale_mode)


def aggregate(jacobian: Tensor, scale_mode: ScaleMode = "min") -> Tensor:
    """The average of the aligned task gradients, ``(1/K) 1ᵀ B J`` [P] (the method returns ``K / C`` times it)."""
    jacobian = check_jacobian(jacobian).detach()
    return weights(jacobian, scale_mode) @ jacobian


class AlignedMTL(Method):
    name = "aligned_mtl"
    needs = frozenset({"jacobian"})
    accepts_gramian = True

    def __init__(self, scale_mode: ScaleMode = "min") -> None:
        _check_scale_mode(scale_mode)
        self.scale_mode: ScaleMode = scale_mode

    def combine(self, step: StepInput) -> Combination:
        balance, rank = balance_matrix(gramian_of(step, "aligned_mtl"), self.scale_mode)
        coefficients = balance.sum(dim=1) / step.loss_scale
        diagnostics = {f"weight/{task}": float(v) for task, v in zip(step.task_names, coefficients.cpu().tolist())}
        diagnostics["rank"] = float(rank)
        return gradient_combination(step, coefficients, diagnostics, "aligned_mtl")


@METHODS.register(
    "aligned_mtl",
    "Aligned-MTL: sum of the task gradients aligned to an orthogonal equal-norm system, / C (Senushkin et al. 2023)",
)
def build(*, scale_mode: ScaleMode = "min") -> Method:
    _check_scale_mode(scale_mode)
    return AlignedMTL(scale_mode)
