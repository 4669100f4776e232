"""GradVac: Gradient Vaccine (Wang, Tsvetkov, Firat, Cao. *Gradient Vaccine: Investigating and Improving
Multi-task Optimization in Massively Multilingual Models*, ICLR 2021, Algorithm 1).

PCGrad with adaptive targets: for each task i, start from ``g_i^PC = g_i`` and visit the other tasks j in a
random order. With ``phi_ij = cos(g_i^PC, g_j)`` (against the ORIGINAL g_j) and an exponential moving
average target ``phi^_ij`` (initialized to 0), when ``phi_ij < phi^_ij``::

    g_i^PC <- g_i^PC + |g_i^PC| (phi^_ij sqrt(1 - phi_ij^2) - phi_ij sqrt(1 - phi^_ij^2))
                        / (|g_j| sqrt(1 - phi^_ij^2)) g_j

which raises the cosine to the target; then, whether or not a correction was made,
``phi^_ij <- (1 - beta) phi^_ij + beta phi_ij``. The update is ``(1/C) sum_i g_i^PC``. With all targets 0
the first step is PCGrad (the correction with target 0 is PCGrad's projection).

As in the reference implementations, ``eps`` (1e-8) is added to the denominators of phi and of the
correction, and the gradients are not split into parameter groups (the paper's "whole model"
granularity; per-layer targets are not implemented). The EMA is updated at every visit (Algorithm 1 of
the paper), as in TorchJD and in LibMTL since its fix of 15 February 2024 (earlier LibMTL versions updated it
only after a correction): for the same visiting order and beta, this implementation computes LibMTL's
update and targets (whole-model granularity, its default). LibMTL defaults to beta = 0.5 and draws the order
with Python's ``random.shuffle``; beta defaults here to the paper's 1e-2. TorchJD's ``GradVac`` (beta
default 0.5) draws the same visiting orders (``randperm(K - 1)`` over the other tasks) from the global
generator, and agrees with this implementation for equal seeds and beta.

The output is a linear combination of the task gradients; everything is computed from the K x K Gramian by
tracking the coefficients ``g_i^PC = sum_k c_ik g_k`` (``|g_i^PC|^2 = c_i G c_i``, ``g_i^PC . g_j =
(c_i G)_j``), so ``weights`` returns them (1/C included) and ``aggregate`` is ``weights @ J``.

Options: ``beta`` (0.01, in [0, 1]): the EMA rate of the targets; ``eps`` (1e-8, >= 0).

How C enters: the summed corrected gradients are divided by C (summed for C = 1, averaged for C = K); heads
receive ``grad L_k / C``. When all task gradients are equal, phi_ij = |g|^2 / (|g|^2 + eps) ~ 1 is never
below a target (an average of past phi's), no correction is made and GradVac equals the UMTG
``(1/C) sum_k g_k`` at every C (up to O(eps / |g|^2) corrections when |g| varies across steps).

State: the K x K targets (float64), in ``state_dict`` as ``{"targets": tensor}``; ``setup`` resets them to 0.

Needs: the [K, P] Jacobian. Cost per step: the Gramian (K^2 P), O(K^3) scalar work on the CPU after one
K x K transfer, one [K] x [K, P] product.

Diagnostics: ``weight/<task>``, ``corrections`` (number of corrections made), ``target_mean`` (mean
off-diagonal target after the update).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

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
from mtlscope.options import NonNegativeFloat, UnitInterval


def _check_options(beta: float, eps: float) -> None:
    if isinstance(beta, bool) or not isinstance(beta, int | float) or not 0.0 <= beta <= 1.0:
        raise ValueError(f"gradvac: beta must be a number in [0, 1], got {beta!r}")
    if isinstance(eps, bool) or not isinstance(eps, int | float) or not eps >= 0.0:
        raise ValueError(f"gradvac: eps must be a number >= 0, got {eps!r}")


def _check_targets(targets: Tensor | None, num_tasks: int) -> Tensor:
    if targets is None:
        return torch.zeros(num_tasks, num_tasks, dtype=torch.float64)
    targets = torch.as_tensor(targets).detach().to(device="cpu", dtype=torch.float64)
    if targets.shape != (num_tasks, num_tasks):
        raise ValueError(f"gradvac: expected [{num_tasks}, {num_tasks}] targets, got shape {tuple(targets.shape)}")
    return targets


def coefficients_from_gramian(
    gramian: Tensor,
    targets: Tensor | None = None,
    generator: torch.Generator | None = None,
    beta: float = 0.01,
    eps: float = 1e-8,
) -> tuple[Tensor, Tensor, int]:
    """One GradVac step on a [K, K] Gramian, without the 1/C factor.

    Returns ``(w, new_targets, corrections)``: w [K] (float64, CPU) with ``sum_i g_i^PC = sum_k w_k g_k``,
    the updated [K, K] targets (``targets`` itself is not modified; None means all zeros) and the number of
    corrections. The visiting order of the other tasks is ``randperm(K - 1, generator)`` per task (index
    order when ``generator`` is None).
    """
    _check_options(beta, eps)
    if gramian.dim() != 2 or gramian.shape[0] != gramian.shape[1]:
        raise ValueError(f"gradvac: expected a [K, K] Gramian, got shape {tuple(gramian.shape)}")
    num_tasks = gramian.shape[0]
    gram = gramian.detach().to(device="cpu", dtype=torch.float64)
    new_targets = _check_targets(targets, num_tasks).clone()
    norms = gram.diagonal().clamp(min=0.0).sqrt().tolist()
    rows = gram.tolist()
    total = [0.0] * num_tasks
    corrections = 0
    for i in range(num_tasks):
        coefficients = [0.0] * num_tasks
        coefficients[i] = 1.0
        dots = list(rows[i])  # dots[j] = g_i^PC . g_j
        others = [j for j in range(num_tasks) if j != i]
        if generator is not None:
            permutation = torch.randperm(len(others), generator=generator, device=generator.device).tolist()
            others = [others[index] for index in permutation]
        for j in others:
            norm_i = math.sqrt(max(sum(c * d for c, d in zip(coefficients, dots, strict=True)), 0.0))
            scale = norm_i * norms[j] + eps
            phi = dots[j] / scale if scale > 0 else 0.0  # (eps = 0 and a zero gradient: no direction)
            target = float(new_targets[i, j])
            if phi < target:
                root_phi = math.sqrt(max(1.0 - phi * phi, 0.0))
                root_target = math.sqrt(max(1.0 - target * target, 0.0))
                denominator = norms[j] * root_target + eps
                if denominator > 0:  # (eps = 0: no finite correction reaches a target of +-1 or uses g_j = 0)
                    w = norm_i * (target * root_phi - phi * root_target) / denominator
                    coefficients[j] += w
                    dots = [d + w * g for d, g in zip(dots, rows[j], strict=True)]
                    corrections += 1
            new_targets[i, j] = (1.0 - beta) * target + beta * phi
        total = [t + c for t, c in zip(total, coefficients, strict=True)]
    return torch.tensor(total, dtype=torch.float64), new_targets, corrections


def weights(
    jacobian: Tensor,
    targets: Tensor | None = None,
    generator: torch.Generator | None = None,
    beta: float = 0.01,
    loss_scale: float = 1.0,
    eps: float = 1e-8,
) -> tuple[Tensor, Tensor]:
    """GradVac's coefficients [K] (1/C included, in the Jacobian's dtype) and the updated [K, K] targets."""
    check_jacobian(jacobian)
    scale = check_loss_scale(loss_scale, "gradvac")
    coefficients, new_targets, _ = coefficients_from_gramian(jacobian @ jacobian.T, targets, generator, beta, eps)
    return (coefficients / scale).to(dtype=jacobian.dtype, device=jacobian.device), new_targets


def aggregate(
    jacobian: Tensor,
    targets: Tensor | None = None,
    generator: torch.Generator | None = None,
    beta: float = 0.01,
    loss_scale: float = 1.0,
    eps: float = 1e-8,
) -> tuple[Tensor, Tensor]:
    """GradVac's update [P] ``(1/C) sum_i g_i^PC`` for a [K, P] Jacobian, and the updated [K, K] targets."""
    w, new_targets = weights(jacobian, targets, generator, beta, loss_scale, eps)
    return w @ jacobian, new_targets


class GradVac(Method):
    name = "gradvac"
    needs = frozenset({"jacobian"})
    accepts_gramian = True

    def __init__(self, beta: float = 0.01, eps: float = 1e-8) -> None:
        _check_options(beta, eps)
        self.beta = float(beta)
        self.eps = float(eps)
        self.targets = torch.zeros(0, 0, dtype=torch.float64)

    def setup(self, task_names: tuple[str, ...]) -> None:
        super().setup(task_names)
        self.targets = torch.zeros(self.num_tasks, self.num_tasks, dtype=torch.float64)

    def combine(self, step: StepInput) -> Combination:
        gram = gramian_of(step, "gradvac")
        if gram.shape[0] != self.num_tasks:
            raise ValueError(f"gradvac: expected the gradients of {self.num_tasks} tasks, got {gram.shape[0]}")
        scale = check_loss_scale(step.loss_scale, "gradvac")
        gram = gram.to(device="cpu", dtype=torch.float64)  # one K x K transfer
        coefficients, self.targets, corrections = coefficients_from_gramian(
            gram, self.targets, step.generator, self.beta, self.eps
        )
        w = coefficients / scale
        diagnostics = {f"weight/{task}": float(value) for task, value in zip(self.task_names, w.tolist(), strict=True)}
        diagnostics["corrections"] = float(corrections)
        if self.num_tasks > 1:
            off_diagonal = ~torch.eye(self.num_tasks, dtype=torch.bool)
            diagnostics["target_mean"] = float(self.targets[off_diagonal].mean())
        return gradient_combination(step, w, diagnostics, "gradvac")

    def state_dict(self) -> dict[str, Any]:
        return {"targets": self.targets.clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        unknown = set(state) - {"targets"}
        if unknown or "targets" not in state:
            raise ValueError(f"gradvac: expected state keys ['targets'], got {sorted(state)}")
        self.targets = _check_targets(state["targets"], self.num_tasks).clone()


@METHODS.register("gradvac", "Gradient Vaccine: align task gradients to EMA cosine targets (Wang et al. 2021)")
def build(*, beta: UnitInterval = 0.01, eps: NonNegativeFloat = 1e-8) -> Method:
    return GradVac(beta, eps)
