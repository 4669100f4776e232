"""FAMO, Fast Adaptive Multitask Optimization: Liu, Liu, Jin, Stone, Liu, "FAMO: Fast Adaptive Multitask
Optimization", NeurIPS 2023 (official code: github.com/Cranial-XIX/FAMO, ``famo.py``).

FAMO decreases all task losses at an approximately equal *relative* rate with O(1) space and time per step:
it keeps task logits ``xi`` (initially 0), ``z = softmax(xi)``, and trains the model on the log-losses,

    sum_k (z_k / c) log D_k,   D_k = L_k - m_k + 1e-8,   c = sum_j z_j / D_j     (c held constant)

i.e. the task loss weights ``lambda_k = z_k / (c D_k)``, which sum to 1 (``m_k``: ``min_losses``). After the
optimizer step the engine passes the losses on the same batch (``after_step``), and the logits take one Adam
step (L2 weight decay ``gamma``, coupled as in ``torch.optim.Adam``) on

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

from mtlscope.methods.base import Combination, Method, StepInput
from mtlscope.methods.registry import METHODS
from mtlscope.methods.uncertainty import adam_step, check_positive

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
        self.min_losses = torch.zeros(0)
        self.logits = torch.zeros(0)
        self.exp_avg = torch.zeros(0)
        self.exp_avg_sq = torch.zeros(0)
        self.steps = 0
        self.losses_before: Tensor | None = None

    def setup(self, task_names: tuple[str, ...]) -> None:
        super().setup(task_names)
        unknown = [task for task in self.given_min_losses if task not in task_names]
        if unknown:
            raise ValueError(
                f"famo: option min_losses names task {unknown[0]!r}, which is not in this run; "
                f"tasks: {', '.join(task_names)}"
            )
        self.min_losses = torch.tensor([float(self.given_min_losses.get(task, 0.0)) for task in task_names])
        self.logits = torch.zeros(self.num_tasks)
        self.exp_avg = torch.zeros(self.num_tasks)
        self.exp_avg_sq = torch.zeros(self.num_tasks)
        self.steps = 0
        self.losses_before = None

    def _align(self, like: Tensor) -> None:
        if self.logits.dtype != like.dtype or self.logits.device != like.device:
            self.logits = self.logits.to(like)
            self.exp_avg = self.exp_avg.to(like)
            self.exp_avg_sq = self.exp_avg_sq.to(like)
        self.min_losses = self.min_losses.to(like)

    def _check(self, losses: Tensor) -> Tensor:
        if losses.shape != (self.num_tasks,):
            raise ValueError(f"famo: expected {self.num_tasks} task losses, got shape {tuple(losses.shape)}")
        return losses.detach()

    def combine(self, step: StepInput) -> Combination:
        losses = self._check(step.losses)
        self._align(losses)
        famo_weights = self.num_tasks * weights(self.logits, losses, self.min_losses)
        self.losses_before = losses.clone()
        diagnostics = {f"weight/{task}": float(value) for task, value in zip(self.task_names, famo_weights.tolist())}
        diagnostics.update(
            {f"logit/{task}": float(value) for task, value in zip(self.task_names, self.logits.tolist())}
        )
        return Combination(loss_weights=famo_weights / step.loss_scale, diagnostics=diagnostics)

    def after_step(self, losses_after: Tensor) -> None:
        """One Adam step of the logits from the change of the log loss gaps over the optimizer step."""
        if self.losses_before is None:
            raise ValueError("famo: after_step was called without a preceding combine")
        losses_after = self._check(losses_after).to(self.losses_before)
        gradient = logit_gradient(self.logits, self.losses_before, losses_after, self.min_losses)
        self.logits, self.exp_avg, self.exp_avg_sq = adam_step(
            self.logits, gradient, self.exp_avg, self.exp_avg_sq, self.steps, lr=self.lr, weight_decay=self.gamma
        )
        self.steps += 1
        self.losses_before = None

    def state_dict(self) -> dict[str, Any]:
        return {
            "logits": self.logits.clone(),
            "exp_avg": self.exp_avg.clone(),
            "exp_avg_sq": self.exp_avg_sq.clone(),
            "steps": self.steps,
            "losses_before": None if self.losses_before is None else self.losses_before.clone(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        expected = {"logits", "exp_avg", "exp_avg_sq", "steps", "losses_before"}
        if set(state) != expected:
            raise ValueError(f"famo: state keys {sorted(state)} do not match {sorted(expected)}")
        logits = torch.as_tensor(state["logits"]).clone()
        if logits.shape != (self.num_tasks,):
            raise ValueError(f"famo: state has {logits.numel()} logits for {self.num_tasks} tasks")
        self.logits = logits
        self.exp_avg = torch.as_tensor(state["exp_avg"]).clone().to(logits)
        self.exp_avg_sq = torch.as_tensor(state["exp_avg_sq"]).clone().to(logits)
        self.steps = int(state["steps"])
        before = state["losses_before"]
        self.losses_before = None if before is None else torch.as_tensor(before).clone().to(logits)
        self.min_losses = self.min_losses.to(logits)


@METHODS.register("famo", "FAMO: task logits adapted to equalize log-loss decrease rates (Liu et al. 2023)")
def build(*, lr: float = 0.025, gamma: float = 0.01, min_losses: Mapping[str, float] | None = None) -> Method:
    return FAMO(lr=lr, gamma=gamma, min_losses=min_losses)
