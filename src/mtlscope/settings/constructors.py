"""Settings from your data: ``from_arrays`` (numpy arrays or tensors in memory) and ``from_datasets`` (map-style
``torch.utils.data.Dataset``s read through DataLoader workers). The built-in settings are built with them.

Tasks are declared with ``TaskSpec(name, output_size, loss=..., metrics=..., primary_metric=..., description=...)``
(the loss and metrics as in ``Task``); their order is the order of the heads. The data has the same structure in
both constructors, for both layouts:

- ``layout="multi-input"``: ``{task: {"train": X_y, "val": X_y, "test": X_y}}``; every task has its own
  examples. ``X_y`` is ``(inputs, targets)`` for ``from_arrays`` and a Dataset of ``(input, target)`` items for
  ``from_datasets``.
- ``layout="shared-input"``: ``{"train": X_Y, "val": X_Y, "test": X_Y}``; one set of inputs per split carries
  every task's targets. ``X_Y`` is ``(inputs, {task: targets})`` for ``from_arrays`` and a Dataset of
  ``(input, {task: target})`` items for ``from_datasets``.

Arrays are converted by one rule (``mtlscope.data.arrays``: inputs float32, class targets of a categorical loss
int64, other targets float32) and checked at construction; every error is one line naming the task and split.
``input_shape`` is read from the data (every split must agree). ``default_model`` defaults to an MLP [64, 64]
encoder with linear heads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from mtlscope.data.arrays import as_inputs, as_targets, categorical
from mtlscope.data.datasets import DatasetSplit, Transform, as_tensor
from mtlscope.data.splits import Split, SplitData
from mtlscope.losses import Loss, LossLike, resolve_loss
from mtlscope.metrics import MetricLike
from mtlscope.settings.setting import LAYOUTS, Setting
from mtlscope.settings.task import SPLITS, Task

DEFAULT_MODEL: dict[str, dict[str, Any]] = {"encoder": {"name": "mlp", "hidden": [64, 64]}, "head": {"name": "linear"}}


@dataclass(frozen=True)
class TaskSpec:
    """What a task is, without its data: name, number of outputs of its head, loss and metrics (see ``Task``)."""

    name: str
    output_size: int
    loss: LossLike = field(kw_only=True)
    metrics: Sequence[MetricLike] = field(kw_only=True, default=())
    primary_metric: str = field(kw_only=True, default="")
    description: str = field(kw_only=True, default="")

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"TaskSpec name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.output_size, int) or isinstance(self.output_size, bool) or self.output_size < 1:
            raise ValueError(f"task {self.name!r}: output_size must be an integer >= 1, got {self.output_size!r}")
        try:
            object.__setattr__(self, "loss", resolve_loss(self.loss))
        except (KeyError, ValueError) as error:
            raise ValueError(f"task {self.name!r}: loss: {error.args[0] if error.args else error}") from None

    @property
    def resolved_loss(self) -> Loss:
        loss: Loss = self.loss  # type: ignore[assignment]  # resolved in __post_init__
        return loss

    def task(self, splits: Mapping[str, SplitData]) -> Task:
        return Task(
            self.name,
            self.output_size,
            splits["train"],
            splits["val"],
            splits["test"],
            loss=self.resolved_loss,
            metrics=self.metrics,
            primary_metric=self.primary_metric,
            description=self.description,
        )


def from_arrays(
    name: str,
    tasks: Sequence[TaskSpec],
    data: Mapping[str, Any],
    *,
    layout: str = "multi-input",
    default_model: Mapping[str, Mapping[str, Any]] | None = None,
    description: str = "",
    reference: str = "",
    options: Mapping[str, Any] | None = None,
) -> Setting:
    """A setting from numpy arrays or tensors held in memory (module docstring for ``data``)."""
    specs = _specs(name, tasks)
    _check_layout(name, layout)
    converted: dict[int, Tensor] = {}  # the same array given twice becomes one tensor

    def inputs_of(value: object, where: str) -> Tensor:
        if id(value) not in converted:
            converted[id(value)] = as_inputs(value, where)
        return converted[id(value)]

    splits: dict[str, dict[str, SplitData]] = {spec.name: {} for spec in specs}
    if layout == "multi-input":
        for spec, per_split in _per_task(name, specs, data):
            for split in SPLITS:
                where = f"setting {name!r}: task {spec.name!r}, split {split!r}"
                inputs, targets = _pair(per_split[split], where, "(inputs, targets)")
                x = inputs_of(inputs, where)
                splits[spec.name][split] = _split(x, targets, where, spec)
    else:
        for split, value in _per_split(name, data).items():
            where = f"setting {name!r}: split {split!r}"
            inputs, targets = _pair(value, where, "(inputs, {task: targets})")
            x = inputs_of(inputs, where)
            by_task = _by_task(targets, specs, where)
            for spec in specs:
                task_where = f"setting {name!r}: task {spec.name!r}, split {split!r}"
                splits[spec.name][split] = _split(x, by_task[spec.name], task_where, spec)
    return _setting(name, specs, splits, layout, default_model, description, reference, options)


def from_datasets(
    name: str,
    tasks: Sequence[TaskSpec],
    data: Mapping[str, Any],
    *,
    layout: str = "multi-input",
    train_transform: Transform | None = None,
    num_workers: int = 0,
    default_model: Mapping[str, Mapping[str, Any]] | None = None,
    description: str = "",
    reference: str = "",
    options: Mapping[str, Any] | None = None,
) -> Setting:
    """A setting from map-style Datasets (module docstring for ``data``; ``DatasetSplit`` for how they are read).

    ``train_transform(input, generator) -> input`` augments the training splits only; ``num_workers`` worker
    processes read every split. A ``DatasetSplit`` may be given instead of a Dataset to set these (and its
    ``fingerprint``) per split. The first example of every split is read and checked here.
    """
    specs = _specs(name, tasks)
    _check_layout(name, layout)
    splits: dict[str, dict[str, SplitData]] = {spec.name: {} for spec in specs}

    def wrap(value: object, split: str, where: str, target: str | None, spec: TaskSpec) -> DatasetSplit:
        dtype = torch.int64 if categorical(spec.resolved_loss) else torch.float32
        if isinstance(value, DatasetSplit):
            return DatasetSplit(
                value.dataset,
                target=target,
                train_transform=value.train_transform,
                num_workers=value.num_workers,
                fingerprint=value.given_fingerprint,
                target_dtype=dtype,
            )
        if isinstance(value, torch.utils.data.IterableDataset) or not (
            isinstance(value, Dataset) or (hasattr(value, "__getitem__") and hasattr(value, "__len__"))
        ):
            raise ValueError(
                f"{where}: expected a map-style Dataset (__getitem__ and __len__), got {type(value).__name__}"
            )
        return DatasetSplit(
            value,  # type: ignore[arg-type]
            target=target,
            train_transform=train_transform if split == "train" else None,
            num_workers=num_workers,
            target_dtype=dtype,
        )

    if layout == "multi-input":
        for spec, per_split in _per_task(name, specs, data):
            for split in SPLITS:
                where = f"setting {name!r}: task {spec.name!r}, split {split!r}"
                splits[spec.name][split] = wrap(per_split[split], split, where, None, spec)
    else:
        for split, value in _per_split(name, data).items():
            where = f"setting {name!r}: split {split!r}"
            views = {spec.name: wrap(value, split, where, spec.name, spec) for spec in specs}
            for spec in specs:
                splits[spec.name][split] = views[spec.name]
    for spec in specs:
        for split in SPLITS:
            _check_first_example(
                splits[spec.name][split], f"setting {name!r}: task {spec.name!r}, split {split!r}", spec
            )
    return _setting(name, specs, splits, layout, default_model, description, reference, options)


def _check_first_example(split: SplitData, where: str, spec: TaskSpec) -> None:
    assert isinstance(split, DatasetSplit)
    if len(split) == 0:
        raise ValueError(f"{where}: the split is empty (0 examples)")
    try:
        item = split.dataset[0]
    except Exception as error:
        raise ValueError(f"{where}: reading example 0 failed: {type(error).__name__}: {error}") from None
    shape = "(input, {task: target})" if split.target is not None else "(input, target)"
    if not isinstance(item, tuple | list) or len(item) != 2:
        raise ValueError(f"{where}: example 0 must be a pair {shape}, got {type(item).__name__}")
    target = item[1]
    if split.target is not None:
        if not isinstance(target, Mapping) or split.target not in target:
            raise ValueError(f"{where}: example 0 must be {shape} with a target for task {split.target!r}")
        target = target[split.target]
    as_inputs(as_tensor(item[0], torch.float32).unsqueeze(0), f"{where}: example 0")
    as_targets(
        _tensor_of(target).unsqueeze(0), f"{where}: example 0", loss=spec.resolved_loss, output_size=spec.output_size
    )


def _tensor_of(value: object) -> Tensor:
    if isinstance(value, Tensor):
        return value
    return torch.as_tensor(value)


def _specs(name: str, tasks: Sequence[TaskSpec]) -> list[TaskSpec]:
    specs = list(tasks)
    if not specs:
        raise ValueError(f"setting {name!r}: tasks must list at least one TaskSpec")
    for spec in specs:
        if not isinstance(spec, TaskSpec):
            raise ValueError(f"setting {name!r}: tasks must be TaskSpec objects, got {type(spec).__name__}")
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"setting {name!r}: task names must be unique, got {names}")
    return specs


def _check_layout(name: str, layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"setting {name!r}: layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")


def _splits_of(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: expected a mapping of splits (train, val, test), got {type(value).__name__}")
    for split in value:
        if split not in SPLITS:
            raise ValueError(f"{where}: unknown split {split!r} (splits are {', '.join(SPLITS)})")
    for split in SPLITS:
        if split not in value:
            raise ValueError(f"{where}: missing split {split!r} (every task needs {', '.join(SPLITS)})")
    return value


def _per_task(name: str, specs: list[TaskSpec], data: Mapping[str, Any]) -> list[tuple[TaskSpec, Mapping[str, Any]]]:
    if not isinstance(data, Mapping):
        raise ValueError(f"setting {name!r}: data must map each task to its splits, got {type(data).__name__}")
    names = [spec.name for spec in specs]
    for key in data:
        if key not in names:
            hint = " (a split name: is this shared-input data? pass layout='shared-input')" if key in SPLITS else ""
            raise ValueError(f"setting {name!r}: data has task {key!r}, which is not in tasks {names}{hint}")
    result = []
    for spec in specs:
        if spec.name not in data:
            raise ValueError(f"setting {name!r}: data has no splits for task {spec.name!r}")
        result.append((spec, _splits_of(data[spec.name], f"setting {name!r}: task {spec.name!r}")))
    return result


def _per_split(name: str, data: Mapping[str, Any]) -> Mapping[str, Any]:
    return _splits_of(data, f"setting {name!r} (shared-input: data maps each split to its examples)")


def _pair(value: object, where: str, expected: str) -> tuple[Any, Any]:
    if not isinstance(value, tuple | list) or len(value) != 2:
        raise ValueError(f"{where}: expected {expected}, got {type(value).__name__}")
    return value[0], value[1]


def _by_task(targets: object, specs: list[TaskSpec], where: str) -> Mapping[str, Any]:
    names = [spec.name for spec in specs]
    if not isinstance(targets, Mapping):
        raise ValueError(
            f"{where}: shared-input targets must map each task to its targets, got {type(targets).__name__}"
        )
    for key in targets:
        if key not in names:
            raise ValueError(f"{where}: targets for task {key!r}, which is not in tasks {names}")
    for task in names:
        if task not in targets:
            raise ValueError(f"{where}: no targets for task {task!r}")
    return targets


def _split(inputs: Tensor, targets: object, where: str, spec: TaskSpec) -> Split:
    y = as_targets(targets, where, loss=spec.resolved_loss, output_size=spec.output_size)
    if len(y) != len(inputs):
        raise ValueError(f"{where}: {len(inputs)} inputs but {len(y)} targets")
    return Split(inputs, y)


def _setting(
    name: str,
    specs: list[TaskSpec],
    splits: dict[str, dict[str, SplitData]],
    layout: str,
    default_model: Mapping[str, Mapping[str, Any]] | None,
    description: str,
    reference: str,
    options: Mapping[str, Any] | None,
) -> Setting:
    first = specs[0]
    reference_where = f"task {first.name!r}, split 'train'"
    input_shape = splits[first.name]["train"].input_shape
    for spec in specs:
        for split in SPLITS:
            shape = splits[spec.name][split].input_shape
            if shape != input_shape:
                raise ValueError(
                    f"setting {name!r}: task {spec.name!r}, split {split!r}: inputs have example shape {shape}, "
                    f"expected {input_shape} (the shape of {reference_where})"
                )
    return Setting(
        name=name,
        tasks=tuple(spec.task(splits[spec.name]) for spec in specs),
        layout="shared-input" if layout == "shared-input" else "multi-input",
        input_shape=input_shape,
        default_model=dict(default_model) if default_model is not None else DEFAULT_MODEL,
        description=description,
        reference=reference,
        options=dict(options or {}),
    )
