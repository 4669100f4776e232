"""Tasks: one prediction problem with its data splits, its loss and its metrics (Mueller et al., TMLR 2025, §2.1).

A task carries its loss and its metrics as components (``mtlscope.losses``, ``mtlscope.metrics``): registered
names, ``{"name": ..., **options}`` mappings, instances, or plain functions (``losses.from_function``,
``metrics.from_function``). Every metric has a direction (higher or lower is better), so analyses never guess;
the task's loss is always recorded as the metric ``loss`` (lower is better), first. The primary metric (default:
the first declared metric) is what model selection and generalization use.

Example::

    Task("digit", 10, train, val, test, loss="cross_entropy", metrics=["accuracy", "macro_f1"])
    Task("depth", 1, train, val, test, loss={"name": "l1", "invalid": 0.0},
         metrics=["depth_abs_error", "depth_rel_error"])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from mtlscope.data.splits import Split, SplitData
from mtlscope.losses import Loss, resolve_loss
from mtlscope.metrics import Accumulator, LossMetric, Metric, MetricLike, resolve_metric

SPLITS: tuple[str, ...] = ("train", "val", "test")

__all__ = ["SPLITS", "Split", "SplitData", "Task"]


@dataclass(frozen=True)
class Task:
    """One task: name, output size of its head, train/val/test splits, loss and metrics (module docstring).

    ``loss`` and ``metrics`` are resolved to components at construction (``ValueError`` naming the task for an
    unknown name, a bad option or a repeated metric name); ``metrics`` maps each metric's record name to it.
    """

    name: str
    output_size: int
    train: SplitData
    val: SplitData
    test: SplitData
    loss: Loss = field(kw_only=True)
    metrics: Mapping[str, Metric] | Sequence[MetricLike] = field(kw_only=True, default=())
    primary_metric: str = field(kw_only=True, default="")
    description: str = field(kw_only=True, default="")

    def __post_init__(self) -> None:
        for name in SPLITS:
            if not isinstance(getattr(self, name), SplitData):
                kind = type(getattr(self, name)).__name__
                raise ValueError(f"task {self.name!r}: {name} must be a Split or a DatasetSplit, got {kind}")
        try:
            loss = resolve_loss(self.loss)
        except (KeyError, ValueError) as error:
            raise ValueError(f"task {self.name!r}: loss: {_message(error)}") from None
        object.__setattr__(self, "loss", loss)
        resolved: dict[str, Metric] = {}
        specs = self.metrics.values() if isinstance(self.metrics, Mapping) else self.metrics
        for spec in specs:
            try:
                metric = resolve_metric(spec)
            except (KeyError, ValueError) as error:
                raise ValueError(f"task {self.name!r}: metrics: {_message(error)}") from None
            if metric.name == LossMetric.name or metric.name in resolved:
                raise ValueError(f"task {self.name!r}: metrics: the name {metric.name!r} is used twice (or is 'loss')")
            resolved[metric.name] = metric
        object.__setattr__(self, "metrics", resolved)
        if not self.primary_metric:
            object.__setattr__(self, "primary_metric", next(iter(resolved), LossMetric.name))
        if self.primary_metric not in self.metric_names:
            raise ValueError(
                f"task {self.name!r}: primary_metric {self.primary_metric!r} is not one of "
                f"{', '.join(self.metric_names)}"
            )

    @property
    def metric_components(self) -> Mapping[str, Metric]:
        """The declared metrics by record name (``loss`` not included)."""
        resolved: Mapping[str, Metric] = self.metrics  # type: ignore[assignment]  # resolved in __post_init__
        return resolved

    @property
    def metric_names(self) -> tuple[str, ...]:
        """The record names of this task's metrics, ``loss`` first."""
        return (LossMetric.name, *self.metric_components)

    def directions(self) -> dict[str, bool]:
        """Every metric's direction (True when higher is better), ``loss`` included."""
        return {
            LossMetric.name: False,
            **{name: metric.higher_is_better for name, metric in self.metric_components.items()},
        }

    @property
    def higher_is_better(self) -> bool:
        """Direction of the primary metric."""
        return self.directions()[self.primary_metric]

    def declaration(self) -> dict[str, Any]:
        """What the task declares, as plain data for a run's summary: loss (name, Fisher labels), metric directions
        and the primary metric."""
        return {
            "loss": self.loss.name,
            "fisher": self.loss.fisher,
            "primary_metric": self.primary_metric,
            "higher_is_better": self.directions(),
        }

    def split(self, name: str) -> SplitData:
        if name not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {name!r}")
        split: SplitData = getattr(self, name)
        return split

    def accumulators(self) -> dict[str, Accumulator]:
        """Fresh accumulators of all metrics (``loss`` first), to feed one set batch by batch."""
        everything: dict[str, Metric] = {LossMetric.name: LossMetric(self.loss), **self.metric_components}
        return {name: Accumulator(metric) for name, metric in everything.items()}

    def scores(self, outputs: Tensor, targets: Tensor) -> dict[str, float]:
        """All metrics of this task on the given outputs (``loss`` first)."""
        accumulators = self.accumulators()
        for accumulator in accumulators.values():
            accumulator.update(outputs, targets)
        return {name: accumulator.compute() for name, accumulator in accumulators.items()}


def _message(error: Exception) -> str:
    return str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
