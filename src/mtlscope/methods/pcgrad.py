"""PCGrad: gradient surgery (Yu, Kumar, Gupta, Levine, Hausman, Finn. *Gradient Surgery for Multi-Task
Learning*, NeurIPS 2020, Algorithm 1).

For each task i, start from ``g_i^PC = g_i`` and visit the other tasks j in a random order; whenever the
current ``g_i^PC`` conflicts with the ORIGINAL ``g_j`` (``g_i^PC . g_j < 0``), project it onto the normal
plane of ``g_j``::

    g_i^PC <- g_i^PC - (g_i^PC . g_j / |g_j|^2) g_j

The update is ``(1/C) sum_i g_i^PC``: the paper's sum for C = 1 (the default), the average for C = K.
Heads receive their own task gradient divided by C, as for the UMTG (the engine does that).

Every projection adds a multiple of an original task gradient, so the output is a linear combination
``sum_k w_k g_k`` of the task gradients; ``weights`` returns those coefficients (1/C included), tracked
through the projections with the K x K Gramian ``G = J J^T`` (``g_i^PC . g_j = (c_i G)_j`` where
``g_i^PC = sum_k c_ik g_k``). ``aggregate`` is ``weights @ J``.

Randomness: for each task i a permutation of all K tasks is drawn with ``torch.randperm(K, generator=...)``
and i itself is skipped (the paper's "g_j in B \\ g_i in random order"; the same draws as TorchJD's PCGrad
with the global generator, so both agree for equal seeds). With ``generator=None`` the other tasks are
visited in index order (deterministic; pass a generator for the paper's random order). For K = 2 the
order does not matter.

Invariants: for K = 2 the output has a non-negative inner product with both task gradients, and with no
conflict (all ``g_i . g_j >= 0``) it is the UMTG ``(1/C) sum_k g_k``. When all task gradients are equal
there is no conflict, so PCGrad equals the UMTG at every C.

Options: none. Needs: the [K, P] Jacobian. Cost per step: the Gramian (K^2 P multiply-adds, the same as
the pairwise inner products of the original) plus O(K^3) scalar work on the CPU (one K x K transfer) and
one [K] x [K, P] product.

Diagnostics: ``weight/<task>`` (the coefficients w_k, 1/C included), ``conflict_frac`` (fraction of task
pairs with ``g_i . g_j < 0``) and ``projections`` (number of projections made).
"""

from __future__ import annotations

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


def coefficients_from_gramian(gramian: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, int]:
    """PCGrad's coefficients for a [K, K] Gramian ``G = J J^T``, without the 1/C factor.

    Returns ``(w, projections)``: w is a float64 CPU tensor [K] with ``sum_i g_i^PC = sum_k w_k g_k``, and
    ``projections`` counts the projections made. The random visiting order is drawn from ``generator``
    (index order when None).
    """
    if gramian.dim() != 2 or gramian.shape[0] != gramian.shape[1]:
        raise ValueError(f"pcgrad: expected a [K, K] Gramian, got shape {tuple(gramian.shape)}")
    num_tasks = gramian.shape[0]
    gram = gramian.detach().to(device="cpu", dtype=torch.float64)
    total = torch.zeros(num_tasks, dtype=torch.float64)
    projections = 0
    for i in range(num_tasks):
        if generator is None:
            order = list(range(num_tasks))
        else:
            order = torch.randperm(num_tasks, generator=generator, device=generator.device).tolist()
        current = torch.zeros(num_tasks, dtype=torch.float64)
        current[i] = 1.0
        for j in order:
            if j == i:
                continue
            inner = float(gram[j] @ current)  # g_i^PC . g_j (original g_j)
            if inner < 0.0:
                current[j] -= inner / float(gram[j, j])  # gram[j, j] > 0 since the inner product is non-zero
                projections += 1
        total += current
    return total, projections


def weights(jacobian: Tensor, generator: torch.Generator | None = None, loss_scale: float = 1.0) -> Tensor:
    """PCGrad's coefficients w [K] (1/C included) with ``aggregate(J) == w @ J``, in the Jacobian's dtype."""
    check_jacobian(jacobian)
    scale = check_loss_scale(loss_scale, "pcgrad")
    coefficients, _ = coefficients_from_gramian(jacobian @ jacobian.T, generator)
    return (coefficients / scale).to(dtype=jacobian.dtype, device=jacobian.device)


def aggregate(jacobian: Tensor, generator: torch.Generator | None = None, loss_scale: float = 1.0) -> Tensor:
    """PCGrad's update [P] for a [K, P] Jacobian: ``(1/C) sum_i g_i^PC``."""
    return weights(jacobian, generator, loss_scale) @ jacobian


class PCGrad(Method):
    name = "pcgrad"
    needs = frozenset({"jacobian"})
    accepts_gramian = True

    def combine(self, step: StepInput) -> Combination:
        scale = check_loss_scale(step.loss_scale, "pcgrad")
        gram_cpu = gramian_of(step, "pcgrad").to(device="cpu", dtype=torch.float64)  # one K x K transfer
        coefficients, projections = coefficients_from_gramian(gram_cpu, step.generator)
        w = coefficients / scale
        num_tasks = gram_cpu.shape[0]
        pairs = num_tasks * (num_tasks - 1) // 2
        conflicts = int((torch.triu(gram_cpu, diagonal=1) < 0).sum())
        diagnostics = {f"weight/{task}": float(value) for task, value in zip(step.task_names, w.tolist(), strict=True)}
        diagnostics["conflict_frac"] = conflicts / pairs if pairs else 0.0
        diagnostics["projections"] = float(projections)
        return gradient_combination(step, w, diagnostics, "pcgrad")


@METHODS.register("pcgrad", "PCGrad gradient surgery: project conflicting task gradients (Yu et al. 2020)")
def build() -> Method:
    return PCGrad()
