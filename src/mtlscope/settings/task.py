"""Tasks: one prediction problem with its data splits, loss and metrics (Mueller et al., TMLR 2025, §2.1).

A task is classification (cross-entropy loss; metrics ``loss``, ``accuracy``, ``macro_f1``; primary
``accuracy``) or regression (mean squared error; metrics ``loss``, ``mae``, ``r2``; primary ``r2``).
Every metric has a direction (higher or lower is better) so analyses never guess.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

TaskKind = Literal["classification", "regression"]
SPLITS: tuple[str, ...] = ("train", "val", "test")

#: Direction of every metric mtlscope computes: True when higher is better.
HIGHER_IS_BETTER: Mapping[str, bool] = {
    "loss": False,
    "accuracy": True,
    "macro_f1": True,
    "mae": False,
    "r2": True,
}


@dataclass(frozen=True)
class Split:
    """The examples of one split of one task, held as tensors (inputs first dimension = examples)."""

    inputs: Tensor
    targets: Tensor

    def __post_init__(self) -> None:
        if self.inputs.shape[0] != self.targets.shape[0]:
            raise ValueError(f"split has {self.inputs.shape[0]} inputs but {self.targets.shape[0]} targets")

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    def head(self, limit: int | None) -> Split:
        """The first ``limit`` examples (all when ``limit`` is None): a fixed, seed-free subset."""
        if limit is None or limit >= len(self):
            return self
        return Split(self.inputs[:limit], self.targets[:limit])


@dataclass(frozen=True)
class Task:
    """One task: name, kind, output size of its head, and its train/val/test splits."""

    name: str
    kind: TaskKind
    output_size: int
    train: Split
    val: Split
    test: Split
    description: str = ""
    primary_metric: str = field(default="")

    def __post_init__(self) -> None:
        if not self.primary_metric:
            object.__setattr__(self, "primary_metric", default_primary_metric(self.kind))
        if self.primary_metric not in metric_names(self.kind):
            raise ValueError(
                f"task {self.name!r}: primary_metric {self.primary_metric!r} is not one of "
                f"{', '.join(metric_names(self.kind))}"
            )

    @property
    def higher_is_better(self) -> bool:
        """Direction of the primary metric."""
        return HIGHER_IS_BETTER[self.primary_metric]

    def split(self, name: str) -> Split:
        if name not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {name!r}")
        split: Split = getattr(self, name)
        return split

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """Mean loss over the examples (cross-entropy or mean squared error)."""
        return task_loss(self.kind, outputs, targets)

    def metrics(self, outputs: Tensor, targets: Tensor) -> dict[str, float]:
        """All metrics of this task on the given outputs (``loss`` included)."""
        return task_metrics(self.kind, self.output_size, outputs, targets)


def default_primary_metric(kind: TaskKind) -> str:
    return "accuracy" if kind == "classification" else "r2"


def metric_names(kind: TaskKind) -> tuple[str, ...]:
    return ("loss", "accuracy", "macro_f1") if kind == "classification" else ("loss", "mae", "r2")


def task_loss(kind: TaskKind, outputs: Tensor, targets: Tensor) -> Tensor:
    if kind == "classification":
        return F.cross_entropy(outputs, targets)
    return F.mse_loss(outputs.reshape(targets.shape), targets)


def task_metrics(kind: TaskKind, output_size: int, outputs: Tensor, targets: Tensor) -> dict[str, float]:
    loss = float(task_loss(kind, outputs, targets))
    if kind == "classification":
        predicted = outputs.argmax(dim=1)
        confusion = torch.bincount(targets * output_size + predicted, minlength=output_size * output_size).reshape(
            output_size, output_size
        )
        true_positive = confusion.diagonal().to(torch.float64)
        support = confusion.sum(dim=1).to(torch.float64)
        predicted_count = confusion.sum(dim=0).to(torch.float64)
        denominator = support + predicted_count
        present = support > 0
        f1 = torch.where(denominator > 0, 2 * true_positive / denominator.clamp(min=1), 0.0)
        return {
            "loss": loss,
            "accuracy": float((predicted == targets).to(torch.float64).mean()),
            "macro_f1": float(f1[present].mean()) if bool(present.any()) else 0.0,
        }
    flat_out = outputs.reshape(targets.shape).to(torch.float64)
    flat_target = targets.to(torch.float64)
    residual = flat_out - flat_target
    total = ((flat_target - flat_target.mean()) ** 2).sum()
    r2 = 1.0 - float((residual**2).sum() / total) if float(total) > 0 else 0.0
    return {"loss": loss, "mae": float(residual.abs().mean()), "r2": r2}
