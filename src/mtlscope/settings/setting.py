"""Settings: a named group of tasks with a data layout and a default model (Mueller et al., TMLR 2025, §2.1).

Two layouts:
- ``multi-input``: every task has its own inputs (FashionMTL, CIFAR-100, digits-mtl); a training step
  draws B examples from each task.
- ``shared-input``: one set of inputs carries K labels (CelebA, Cityscapes, digits-attributes); a step
  draws B inputs with all their labels.

Epoch rule (Mueller et al. 2025, App. A): an epoch is one pass over the largest training set *of the whole setting* at B
examples per task per step, i.e. ``ceil(max_k N_k / B)`` steps. ``subset`` keeps that size, so the
single-task and multi-task runs of a setting have the same steps per epoch and their checkpoints align.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch

from mtlscope.data.fingerprint import combine
from mtlscope.settings.task import SPLITS, Split, Task

Layout = Literal["multi-input", "shared-input"]
LAYOUTS: tuple[str, ...] = ("multi-input", "shared-input")


@dataclass(frozen=True)
class Setting:
    """Tasks of one multi-task problem.

    Attributes:
        name: registry name (e.g. ``digits-mtl``).
        tasks: the tasks, in a fixed order (the order of heads, rows of Jacobians, ...).
        layout: ``multi-input`` or ``shared-input``.
        input_shape: shape of one input example (without the batch dimension).
        default_model: encoder and head specs (``{"encoder": {...}, "head": {...}}``) used when a run
            config does not name a model.
        epoch_examples: training-set size that defines an epoch (largest task of the full setting).
        description, reference: what it is and which paper it follows.
    """

    name: str
    tasks: tuple[Task, ...]
    layout: Layout
    input_shape: tuple[int, ...]
    default_model: Mapping[str, Mapping[str, Any]]
    epoch_examples: int = 0
    description: str = ""
    reference: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"setting {self.name!r}: layout must be one of {LAYOUTS}, got {self.layout!r}")
        if not self.tasks:
            raise ValueError(f"setting {self.name!r} has no tasks")
        names = [task.name for task in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"setting {self.name!r}: task names must be unique, got {names}")
        if self.layout == "shared-input":
            object.__setattr__(self, "tasks", self._unified_inputs())
        if self.epoch_examples <= 0:
            object.__setattr__(self, "epoch_examples", max(len(task.train) for task in self.tasks))

    @property
    def task_names(self) -> tuple[str, ...]:
        return tuple(task.name for task in self.tasks)

    def task(self, name: str) -> Task:
        for task in self.tasks:
            if task.name == name:
                return task
        raise KeyError(f"setting {self.name!r} has no task {name!r}; tasks: {', '.join(self.task_names)}")

    def subset(self, names: Sequence[str] | Iterable[str]) -> Setting:
        """The same setting restricted to ``names`` (in the given order), with the same epoch size."""
        wanted = list(names)
        if not wanted:
            raise ValueError(f"setting {self.name!r}: a task subset needs at least one task")
        unknown = [name for name in wanted if name not in self.task_names]
        if unknown:
            raise KeyError(f"setting {self.name!r} has no task {unknown[0]!r}; tasks: {', '.join(self.task_names)}")
        if len(set(wanted)) != len(wanted):
            raise ValueError(f"setting {self.name!r}: task subset repeats a task: {wanted}")
        return replace(self, tasks=tuple(self.task(name) for name in wanted))

    def to(self, device: torch.device | str) -> Setting:
        """The setting with all data on ``device`` (inputs shared between tasks stay shared)."""
        memo: dict[int, Any] = {}
        tasks = tuple(
            replace(task, **{name: task.split(name).to(device, memo) for name in SPLITS})  # type: ignore[arg-type]
            for task in self.tasks
        )
        return replace(self, tasks=tasks)

    def _unified_inputs(self) -> tuple[Task, ...]:
        """Shared-input tasks with one inputs object per split: a task whose inputs are the first task's (the same
        tensor, a view of the same memory, an equal tensor, or the same Dataset) gets the first task's object."""
        first = self.tasks[0]
        tasks = [first]
        for task in self.tasks[1:]:
            changes: dict[str, Any] = {}
            for split in SPLITS:
                mine, theirs = task.split(split), first.split(split)
                if not theirs.shares_inputs(mine):
                    raise ValueError(
                        f"setting {self.name!r} is shared-input but task {task.name!r} has other {split} inputs than "
                        f"task {first.name!r}; build shared-input settings with "
                        f"mtlscope.settings.from_arrays(..., layout='shared-input') (one input array per split)"
                    )
                if isinstance(mine, Split) and isinstance(theirs, Split) and mine.inputs is not theirs.inputs:
                    changes[split] = Split(theirs.inputs, mine.targets)
            tasks.append(replace(task, **changes) if changes else task)
        return tuple(tasks)

    def fingerprint(self) -> str:
        """sha256 of what the setting trains and scores on: layout, input shape, and every task's declaration,
        output size and data (each split's fingerprint; shared inputs are hashed once per split)."""
        cache: dict[int, str] = {}

        def split_digest(task: Task, name: str) -> str:
            data = task.split(name)
            if id(data) not in cache:
                cache[id(data)] = data.fingerprint()
            return cache[id(data)]

        return combine(
            {
                "layout": self.layout,
                "input_shape": list(self.input_shape),
                "tasks": [
                    {
                        "name": task.name,
                        "output_size": task.output_size,
                        "declaration": task.declaration(),
                        "data": {name: split_digest(task, name) for name in SPLITS},
                    }
                    for task in self.tasks
                ],
            }
        )

    def steps_per_epoch(self, batch_size: int) -> int:
        """Steps in one epoch at ``batch_size`` examples per task per step (see the module docstring)."""
        return max(1, math.ceil(self.epoch_examples / batch_size))

    def summary(self) -> str:
        """One line per task: name, loss, outputs, primary metric and split sizes."""
        lines = []
        for task in self.tasks:
            lines.append(
                f"{task.name}: {task.loss.name} loss, {task.output_size} outputs, primary {task.primary_metric}, "
                f"train/val/test {len(task.train)}/{len(task.val)}/{len(task.test)}"
            )
        return "\n".join(lines)
