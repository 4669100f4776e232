"""GradDrop: gradient sign dropout (Chen, Ngiam, Huang, Luong, Kretzschmar, Chai, Anguelov. *Just Pick a
Sign: Optimizing Deep Multitask Models with Gradient Sign Dropout*, NeurIPS 2020, Algorithm 1).

Per coordinate p of the shared parameters, the positive sign purity of the task gradients is

    P_p = 1/2 (1 + sum_i g_ip / sum_i |g_ip|)                      (in [0, 1]; 1/2 where all g_ip = 0)

One uniform draw ``U_p ~ U[0, 1)`` per coordinate (from the run's generator) picks a sign: the positive
components survive where ``P_p > U_p``, the negative ones where ``P_p < U_p``. With the mask
``M_ip = [P_p > U_p][g_ip > 0] + [P_p < U_p][g_ip < 0]`` and the leak l_i::

    update = (1/C) sum_i (l_i + (1 - l_i) M_i) * g_i                  (elementwise)

With leak 0 every coordinate of the update keeps only gradient components of one sign; with leak 1 it is
the UMTG. In expectation over U, coordinate p is ``(1/C)(P_p S+_p + (1 - P_p) S-_p)`` for leak 0, where
S+ / S- are the sums of the positive / negative components (the paper's sign-consistency property).
The monotone transfer function f of the paper is the identity (its default).

Scope: the paper applies GradDrop to the gradients at a layer's activations (with a batch-sign
correction); here it acts on the task gradients of the shared parameters (the [K, P] Jacobian), as
TorchJD's ``GradDrop`` does. TorchJD draws U with ``torch.rand(P)`` from the global generator; with the
same seed and dtype both give the same update (checked in the tests).

Randomness: U is drawn with ``torch.rand(P, generator=generator)`` on the generator's device, in the
Jacobian's dtype. When the Jacobian lives on another device (a CPU generator, CUDA Jacobian), one 63-bit
seed is drawn from ``generator`` and U is drawn on the Jacobian's device from a generator seeded with it,
so no P-sized transfer is made and the run stays reproducible.

Options: ``leak`` (0.0): a number in [0, 1] for every task, or ``{task: l_i}`` (missing tasks get 0).

How C enters: the summed masked gradients are divided by C (the paper's sum for C = 1, the average for
C = K); heads receive ``grad L_k / C``. When all task gradients are equal, every P_p is 1 or 0, every
component survives (U < 1, and U = 0 has probability ~2^-24 or less per coordinate) and GradDrop equals the
UMTG ``(1/C) sum_k g_k`` at every C.

Needs: the [K, P] Jacobian. Cost per step: O(K P) elementwise work and P uniform draws; no CPU transfer.

Diagnostics: ``kept_frac`` (fraction of the non-zero gradient components that survived the mask).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from mtlscope.methods.base import Combination, Method, StepInput, check_jacobian, check_loss_scale
from mtlscope.methods.registry import METHODS
from mtlscope.options import UnitInterval

LeakOption = UnitInterval | Mapping[str, UnitInterval]


def _check_leak_value(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise ValueError(f"graddrop: {where} must be a number in [0, 1], got {value!r}")
    return float(value)


def _leaks(leak: float | Sequence[float] | Tensor, jacobian: Tensor) -> Tensor:
    num_tasks = jacobian.shape[0]
    if isinstance(leak, int | float) and not isinstance(leak, bool):
        values = [_check_leak_value(leak, "leak")] * num_tasks
    else:
        values = [_check_leak_value(float(v), "leak") for v in torch.as_tensor(leak).reshape(-1).tolist()]
        if len(values) != num_tasks:
            raise ValueError(f"graddrop: expected one leak per task ({num_tasks}), got {len(values)}")
    return torch.tensor(values, dtype=jacobian.dtype, device=jacobian.device)


def uniform_draws(size: int, generator: torch.Generator, like: Tensor) -> Tensor:
    """[size] uniform draws in ``like``'s dtype and on its device, all randomness from ``generator``."""
    if generator.device == like.device:
        return torch.rand(size, generator=generator, dtype=like.dtype, device=like.device)
    seed = int(torch.randint(0, 2**63 - 1, (1,), generator=generator, device=generator.device))
    local = torch.Generator(device=like.device).manual_seed(seed)
    return torch.rand(size, generator=local, dtype=like.dtype, device=like.device)


def masks(jacobian: Tensor, uniform: Tensor) -> Tensor:
    """The [K, P] boolean sign-dropout masks for a Jacobian and the [P] uniform draws U."""
    total = jacobian.sum(dim=0)
    absolute = jacobian.abs().sum(dim=0)
    ratio = torch.where(absolute > 0, total / torch.where(absolute > 0, absolute, 1.0), 0.0)
    purity = 0.5 * (1.0 + ratio)
    return ((purity > uniform) & (jacobian > 0)) | ((purity < uniform) & (jacobian < 0))


def aggregate(
    jacobian: Tensor,
    generator: torch.Generator,
    leak: float | Sequence[float] | Tensor = 0.0,
    loss_scale: float = 1.0,
) -> Tensor:
    """GradDrop's update [P] for a [K, P] Jacobian: ``(1/C) sum_i (l_i + (1 - l_i) M_i) * g_i``."""
    return _aggregate(jacobian, generator, leak, loss_scale)[0]


def _aggregate(
    jacobian: Tensor,
    generator: torch.Generator,
    leak: float | Sequence[float] | Tensor,
    loss_scale: float,
    kept_fraction: bool = False,
) -> tuple[Tensor, float]:
    """The update and (when asked) the fraction of nonzero task-gradient entries kept.

    Computed from column sums rather than the [K, P] mask: at coordinate p the mask keeps all positive
    entries (when purity > U) or all negative ones (purity < U), so ``sum_i (1 - l_i) M_ip g_ip`` is the sum
    of the positive (or negative) parts of ``(1 - l) * g`` — a few passes over the Jacobian instead of ten.
    """
    check_jacobian(jacobian)
    scale = check_loss_scale(loss_scale, "graddrop")
    leaks = _leaks(leak, jacobian)
    positive = jacobian.clamp(min=0).sum(dim=0)
    negative = jacobian.clamp(max=0).sum(dim=0)
    absolute = positive - negative
    ratio = torch.where(absolute > 0, (positive + negative) / torch.where(absolute > 0, absolute, 1.0), 0.0)
    uniform = uniform_draws(jacobian.shape[1], generator, jacobian)
    keep_positive, keep_negative = 0.5 * (1.0 + ratio) > uniform, 0.5 * (1.0 + ratio) < uniform
    if bool((leaks != 0).any()):
        weighted = (1.0 - leaks).unsqueeze(1) * jacobian
        positive, negative = weighted.clamp(min=0).sum(dim=0), weighted.clamp(max=0).sum(dim=0)
        base = leaks @ jacobian
    else:
        base = torch.zeros_like(positive)
    update = (base + torch.where(keep_positive, positive, 0.0) + torch.where(keep_negative, negative, 0.0)) / scale
    if not kept_fraction:
        return update, float("nan")
    kept = torch.where(keep_positive, (jacobian > 0).sum(dim=0), 0) + torch.where(
        keep_negative, (jacobian < 0).sum(dim=0), 0
    )
    return update, float(kept.sum()) / max(float((jacobian != 0).sum()), 1.0)


class GradDrop(Method):
    name = "graddrop"
    needs = frozenset({"jacobian"})

    def __init__(self, leak: LeakOption = 0.0) -> None:
        if isinstance(leak, Mapping):
            self.given: dict[str, float] | float = {
                str(task): _check_leak_value(value, f"leak.{task}") for task, value in leak.items()
            }
        else:
            self.given = _check_leak_value(leak, "leak")
        self.leaks: list[float] = []

    def setup(self, task_names: tuple[str, ...]) -> None:
        super().setup(task_names)
        if isinstance(self.given, dict):
            unknown = [task for task in self.given if task not in task_names]
            if unknown:
                raise ValueError(
                    f"method.leak names task {unknown[0]!r}, which is not in this run; tasks: {', '.join(task_names)}"
                )
            self.leaks = [self.given.get(task, 0.0) for task in task_names]
        else:
            self.leaks = [self.given] * len(task_names)

    def combine(self, step: StepInput) -> Combination:
        jacobian = step.jacobian
        if jacobian is None:
            raise ValueError("graddrop needs the Jacobian (StepInput.jacobian is None)")
        if jacobian.shape[0] != self.num_tasks:
            raise ValueError(f"graddrop: expected a Jacobian with {self.num_tasks} rows, got {jacobian.shape[0]}")
        update, kept = _aggregate(jacobian, step.generator, self.leaks, step.loss_scale, kept_fraction=step.diagnose)
        return Combination(shared_gradient=update, diagnostics={"kept_frac": kept} if step.diagnose else {})


@METHODS.register("graddrop", "GradDrop: per-coordinate gradient sign dropout by sign purity (Chen et al. 2020)")
def build(*, leak: LeakOption = 0.0) -> Method:
    return GradDrop(leak)
