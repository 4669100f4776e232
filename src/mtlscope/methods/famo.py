"""FAMO, Fast Adaptive Multitask Optimization: Liu, Liu, Jin, Stone, Liu, "FAMO: Fast Adaptive Multitask
Optimization", NeurIPS 2023 (official code: github.com/Cranial-XIX/FAMO, ``famo.py``).

FAMO decreases all task losses at an approximately equal *relative* rate with O(1) space and time per step:
it keeps task logits ``xi`` (initially 0), ``z = softmax(xi)``, and trains the model on the log-losses,

    sum_k (z_k / c) log D_k,   D_k = L_k - m_k + 1e-8,   c = sum_j z_j / D_j     (c held constant)

i.e. the task loss weights ``lambda_k = z_k / (c D_k)``, which sum to 1 (``m_k``: ``min_losses``). After the
optimizer step the engine passes the losses on the same batch (``after_step``), and the logits (a
``LearnedVector``: float64, CPU) take one step of their own ``torch.optim.Adam`` (L2 weight decay ``gamma``,
coupled) on

    grad_xi = J_softmax(xi)^T delta = z * (delta - <z, delta>),   delta_k = log D_k(before) - log D_k(after)

exactly as the official ``FAMO.update``. Departures: ``D_k`` uses ``max(L_k - m_k, 0)`` (the official code
gives NaN when a loss falls below its ``m_k``; identical otherwise); the official code also clips the shared
gradient norm at ``max_norm = 1`` in its training loop, which is a training choice, not part of the
weighting, and is not done here (loss weights are back-propagated by the engine).

Options:
    lr: learning rate of the logits' Adam optimizer (default 0.025, official ``w_lr``; betas (0.9, 0.999)).
    gamma: weight decay of the logits (default 0.01, the official default; the paper tunes it per benchmark,
        e.g. 1e-5 in the official ``methods/weight_methods.py``).
    min_losses: ``{task: m_k}``, lower bounds of the task losses (default 0 for every task).

Loss scale C: FAMO's weights ``lambda`` sum to 1 (the average's scale); the model's loss weights are
``K lambda_k / C``, which sum to K/C like the UMTG's: with C = K this is exactly the official FAMO, and with
all task gradients equal the update is exactly the UMTG's, ``(K/C) g``, at every step.

Cost: needs ``"post_step_losses"``, one extra forward pass of the batch after the step (no Jacobian);
O(K) per step. Diagnostics: ``weight/<task>`` (``K lambda_k``, before 1/C) and ``logit/<task>``.
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
from mtlscope.options import FiniteFloat, NonNegativeFloat, PositiveFloat

#: Added to the loss gaps before taking logs (official value).
EPS: float = 1e-8


def loss_gaps(losses: Tensor, min_losses: Tensor) -> Tensor:
    """[K] ``D_k = max(L_k - m_k, 0) + 1e-8``."""
    return (losses - min_losses).clamp_min(0) + EPS


def weights(logits: Tensor, losses: Tensor, min_losses: Tensor | None = None) -> Tensor:
    """[K] FAMO's loss weights ``lambda_k = z_k / (c D_k)``, ``z = softmax(logits)``; they sum to 1."""
    if logits.dim() != 1 or logits.shape != losses.shape:
        raise ValueError(f"famo: expected [K] logits and losses, got {tuple(logits.shape)} and {tuple(losses.shape)}")
    gaps = loss_gaps(losses, torch.zeros_like(losses) if min_losses is None else min_losses)
    scaled = torch.softmax(logits, dim=0) / gaps
    return scaled / scaled.sum()


def logit_gradient(logits: Tensor, losses_before: Tensor, losses_after: Tensor, min_losses: Tensor) -> Tensor:
    """[K] the official update direction ``J_softmax^T delta``, ``delta = log D(before) - log D(after)``."""
    delta = loss_gaps(losses_before, min_losses).log() - loss_gaps(losses_after, min_losses).log()
    z = torch.softmax(logits, dim=0)
    return z * (delta - (z * delta).sum())


class FAMO(Method):
    name = "famo"
    needs = frozenset({"post_step_losses"})

    def __init__(self, lr: float = 0.025, gamma: float = 0.01, min_losses: Mapping[str, float] | None = None) -> None:
        self.lr = check_positive("lr", lr, self.name)
        try:
            self.gamma = float(gamma)
        except (TypeError, ValueError):
            raise ValueError(f"famo: option gamma must be a number >= 0, got {gamma!r}") from None
        if not (math.isfinite(self.gamma) and self.gamma >= 0):
            raise ValueError(f"famo: option gamma must be a finite number >= 0, got {gamma!r}")
        self.given_min_losses = dict(min_losses or {})
        for task, value in self.given_min_losses.items():
            try:
                ok = math.isfinite(float(value))
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise ValueError(f"famo: option min_losses.{task} must be a finite number, got {value!r}")
        self.min_losses = torch.zeros(0, dtype=torch.float64)
        self.logits = self._initial_logits(0)
        #: The step's losses (float64, CPU) between ``combine`` and ``after_step``.
        self.losses_before: Tensor | None = None

    def _initial_logits(self, num_tasks: int) -> LearnedVector:
        return LearnedVector(torch.zeros(num_tasks), lr=self.lr, weight_decay=self.gamma)

    def setup(self, task_names: tuple[str, ...]) -> None:
        super().setup(task_names)
        unknown = [task for task in self.given_min_losses if task not in task_names]
        if unknown:
            raise ValueError(
                f"famo: option min_losses names task {unknown[0]!r}, which is not in this run; "
                f"tasks: {', '.join(task_names)}"
            )
        self.min_losses = torch.tensor(
            [float(self.given_min_losses.get(task, 0.0)) for task in task_names], dtype=torch.float64
        )
        self.logits = self._initial_logits(self.num_tasks)
        self.losses_before = None

    def _check(self, losses: Tensor) -> Tensor:
        """``losses`` detached, as float64 on the CPU (where the logits are)."""
        if losses.shape != (self.num_tasks,):
            raise ValueError(f"famo: expected {self.num_tasks} task losses, got shape {tuple(losses.shape)}")
        return losses.detach().to(device="cpu", dtype=torch.float64)

    def combine(self, step: StepInput) -> Combination:
        losses = self._check(step.losses)
        logits = self.logits.value
        famo_weights = self.num_tasks * weights(logits, losses, self.min_losses)
        self.losses_before = losses.clone()
        diagnostics = {f"weight/{task}": float(value) for task, value in zip(self.task_names, famo_weights.tolist())}
        diagnostics.update({f"logit/{task}": float(value) for task, value in zip(self.task_names, logits.tolist())})
        return Combination(loss_weights=famo_weights.to(step.losses) / step.loss_scale, diagnostics=diagnostics)

    def after_step(self, losses_after: Tensor) -> None:
        """One Adam step of the logits from the change of the log loss gaps over the optimizer step."""
        if self.losses_before is None:
            raise ValueError("famo: after_step was called without a preceding combine")
        losses_after = self._check(losses_after)
        self.logits.step(logit_gradient(self.logits.value, self.losses_before, losses_after, self.min_losses))
        self.losses_before = None

    def state_dict(self) -> dict[str, Any]:
        return {
            "logits": self.logits.state_dict(),
            "losses_before": None if self.losses_before is None else self.losses_before.clone(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        expected = {"logits", "losses_before"}
        if set(state) != expected:
            raise ValueError(f"famo: state keys {sorted(state)} do not match {sorted(expected)}")
        before = state["losses_before"]
        if before is not None:
            before = torch.as_tensor(before).detach().to(device="cpu", dtype=torch.float64).clone()
            if before.shape != (self.num_tasks,):
                raise ValueError(f"famo: state has {before.numel()} losses before the step for {self.num_tasks} tasks")
        self.logits.load_state_dict(state["logits"])
        self.losses_before = before


@METHODS.register("famo", "FAMO: task logits adapted to equalize log-loss decrease rates (Liu et al. 2023)")
def build(
    *,
    lr: PositiveFloat = 0.025,
    gamma: NonNegativeFloat = 0.01,
    min_losses: Mapping[str, FiniteFloat] | None = None,
) -> Method:
    return FAMO(lr=lr, gamma=gamma, min_losses=min_losses)
