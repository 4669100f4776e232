"""DWA, Dynamic Weight Average: Liu, Johns, Davison, "End-to-End Multi-Task Learning with Attention",
CVPR 2019 (§3.3, eq. 7).

    w_k(t) = K exp(r_k(t-1) / T) / sum_j exp(r_j(t-1) / T),   r_k(t-1) = Lbar_k(t-1) / Lbar_k(t-2)

where t is the epoch, ``Lbar_k(e)`` is task k's average training loss over the steps of epoch e (the mean
of the step losses on the training batches, as in the paper's code), and T the temperature. ``w_k = 1`` for
the first two epochs (t = 0, 1 with 0-based epochs: no two completed epochs yet). The weights sum to K.

The method keeps, as state, the running sum and count of the step losses of the epoch in progress
(``StepInput.epoch``, the number of completed epochs) and the averages of the last two completed epochs.
When ``StepInput.epoch`` advances, the epoch in progress is closed. Epoch e uses the averages of epochs
e-1 and e-2; if either is missing (no step of that epoch was seen) the weights are 1. A zero average in
the denominator is floored at 1e-12.

Options:
    temperature: T (default 2.0, the paper's value). Large T -> weights near 1; small T -> the task whose
        loss decreased least gets almost all of the weight K.

Loss scale C: the model's loss weights are ``w_k / C``; since the weights sum to K, with all task
gradients equal the update is exactly the UMTG's, ``(K/C) g``, at every step.

Cost: losses only (no Jacobian); O(K) per step. Diagnostics: ``weight/<task>`` (``w_k``, before 1/C).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from mtlscope.methods.base import Combination, Method, StepInput, check_positive
from mtlscope.methods.registry import METHODS
from mtlscope.options import PositiveFloat

#: Floor of the older epoch average in the loss ratio.
MIN_AVERAGE_LOSS: float = 1e-12


def weights(last: Tensor, before_last: Tensor, temperature: float = 2.0) -> Tensor:
    """[K] DWA weights from the average task losses of the last two epochs (``last`` = epoch t-1)."""
    if last.dim() != 1 or last.shape != before_last.shape:
        raise ValueError(
            f"dwa: expected two [K] loss averages, got shapes {tuple(last.shape)} and {tuple(before_last.shape)}"
        )
    ratios = last / before_last.clamp_min(MIN_AVERAGE_LOSS)
    return last.numel() * torch.softmax(ratios / temperature, dim=0)


class DWA(Method):
    name = "dwa"

    def __init__(self, temperature: float = 2.0) -> None:
        self.temperature = check_positive("temperature", temperature, self.name)
        self.epoch: int | None = None
        self.loss_sum = torch.zeros(0)
        self.count = 0
        self.averages: dict[int, Tensor] = {}

    def setup(self, task_names: tuple[str, ...]) -> None:
        super().setup(task_names)
        self.epoch = None
        self.loss_sum = torch.zeros(self.num_tasks)
        self.count = 0
        self.averages = {}

    def _close_epoch(self, epoch: int) -> None:
        """Move the statistics of the epoch in progress to ``averages`` and start ``epoch``."""
        if self.epoch is not None and self.count > 0:
            self.averages[self.epoch] = self.loss_sum / self.count
            self.averages = {e: average for e, average in self.averages.items() if e >= self.epoch - 1}
        self.epoch = epoch
        self.loss_sum = torch.zeros_like(self.loss_sum)
        self.count = 0

    def current_weights(self, epoch: int, like: Tensor) -> Tensor:
        """[K] the weights for a step of ``epoch`` (1 until two consecutive completed epochs are known)."""
        last, before_last = self.averages.get(epoch - 1), self.averages.get(epoch - 2)
        if last is None or before_last is None:
            return torch.ones(self.num_tasks, dtype=like.dtype, device=like.device)
        return weights(last.to(like), before_last.to(like), self.temperature)

    def combine(self, step: StepInput) -> Combination:
        losses = step.losses.detach()
        if losses.shape != (self.num_tasks,):
            raise ValueError(f"dwa: expected {self.num_tasks} task losses, got shape {tuple(losses.shape)}")
        if self.epoch is None or step.epoch != self.epoch:
            if self.epoch is not None and step.epoch < self.epoch:
                raise ValueError(f"dwa: epoch went back from {self.epoch} to {step.epoch}")
            self._close_epoch(step.epoch)
        w = self.current_weights(step.epoch, losses)
        self.loss_sum = self.loss_sum.to(losses) + losses
        self.count += 1
        diagnostics = {f"weight/{task}": float(value) for task, value in zip(self.task_names, w.tolist())}
        return Combination(loss_weights=w / step.loss_scale, diagnostics=diagnostics)

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "loss_sum": self.loss_sum.clone(),
            "count": self.count,
            "averages": {e: average.clone() for e, average in self.averages.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        expected = {"epoch", "loss_sum", "count", "averages"}
        if set(state) != expected:
            raise ValueError(f"dwa: state keys {sorted(state)} do not match {sorted(expected)}")
        loss_sum = torch.as_tensor(state["loss_sum"]).clone()
        if loss_sum.shape != (self.num_tasks,):
            raise ValueError(f"dwa: state has {loss_sum.numel()} loss sums for {self.num_tasks} tasks")
        self.epoch = None if state["epoch"] is None else int(state["epoch"])
        self.loss_sum = loss_sum
        self.count = int(state["count"])
        self.averages = {int(e): torch.as_tensor(average).clone() for e, average in state["averages"].items()}


@METHODS.register("dwa", "dynamic weight average: softmax of the last two epochs' loss ratios (Liu et al. 2019)")
def build(*, temperature: PositiveFloat = 2.0) -> Method:
    return DWA(temperature=temperature)
