"""Training batches: B examples per task per step (Mueller et al., TMLR 2025, §2.2).

Each task (multi-input layout) or the shared inputs (shared-input layout) has its own index stream:
passes over the training set in a fresh random order, batches continuing across pass boundaries, so
every example is seen once per pass. A stream's generator depends only on the run seed and the task name
(or ``"shared-input"``), so a task sees the same sequence of batches in its single-task run and in every
multi-task run of the same seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mtlscope.data.splits import AugmentSeed, BatchReader, Group, SplitData
from mtlscope.models.multitask import derived_seed
from mtlscope.settings.setting import Setting


class IndexStream:
    """Endless batches of ``batch_size`` indices of ``range(size)``, reshuffled at every pass."""

    def __init__(self, size: int, batch_size: int, seed: int) -> None:
        if size < 1:
            raise ValueError("cannot sample from an empty training set")
        self.size = size
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self._order = torch.empty(0, dtype=torch.long)

    def next(self) -> Tensor:
        while self._order.numel() < self.batch_size:
            self._order = torch.cat([self._order, torch.randperm(self.size, generator=self.generator)])
        batch, self._order = self._order[: self.batch_size], self._order[self.batch_size :]
        return batch

    def state_dict(self) -> dict[str, Tensor]:
        return {"generator": self.generator.get_state(), "order": self._order.clone()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.generator.set_state(state["generator"])
        self._order = state["order"].clone()


@dataclass(frozen=True)
class Batch:
    """One step's examples.

    ``inputs`` go through the encoder once; task k's head sees the rows ``rows[k]`` of the representation
    (all rows in the shared-input layout) and is scored against ``targets[k]``.
    """

    inputs: Tensor
    targets: dict[str, Tensor]
    rows: dict[str, slice]


class BatchSampler:
    """Builds each step's ``Batch`` for a setting (either layout, any split kind) on the setting's device.

    One reader per index stream (``SplitData.open_reader``): in-memory splits index their tensors; Dataset splits
    read through DataLoader workers, ahead of the step, with their train-only augmentation seeded from
    (run seed, stream, step, position in the batch).
    """

    def __init__(self, setting: Setting, batch_size: int, seed: int) -> None:
        self.setting = setting
        self.batch_size = batch_size
        self.readers: dict[str, BatchReader] = {}
        for name, members in stream_groups(setting).items():
            first = next(iter(members.values()))
            stream = IndexStream(len(first), batch_size, derived_seed(seed, "data", name))
            self.readers[name] = first.open_reader(members, stream, _augment_seed(seed, name))

    def next(self) -> Batch:
        return _batch(self.setting, {name: reader.next() for name, reader in self.readers.items()})

    def state_dict(self) -> dict[str, dict[str, Tensor]]:
        return {name: reader.state_dict() for name, reader in self.readers.items()}

    def load_state_dict(self, state: dict[str, dict[str, Tensor]]) -> None:
        for name, reader in self.readers.items():
            reader.load_state_dict(state[name])

    def close(self) -> None:
        """Stop the readers' worker processes (Dataset splits); also done when the sampler is garbage-collected."""
        for reader in self.readers.values():
            reader.close()


def _augment_seed(seed: int, stream: str) -> AugmentSeed:
    def augment_seed(step: int, position: int) -> int:
        return derived_seed(seed, "augment", stream, str(step), str(position))

    return augment_seed


def stream_groups(setting: Setting) -> dict[str, dict[str, SplitData]]:
    """The training splits read together: all tasks under ``"shared-input"`` (shared-input layout), or each task
    under its own name (multi-input)."""
    if setting.layout == "shared-input":
        return {"shared-input": {task.name: task.train for task in setting.tasks}}
    return {task.name: {task.name: task.train} for task in setting.tasks}


def _batch(setting: Setting, groups: dict[str, Group]) -> Batch:
    if setting.layout == "shared-input":
        inputs, targets = groups["shared-input"]
        every = slice(0, len(inputs))
        return Batch(inputs=inputs, targets=targets, rows={task.name: every for task in setting.tasks})
    parts, targets, rows, start = [], {}, {}, 0
    for task in setting.tasks:
        inputs, target = groups[task.name]
        parts.append(inputs)
        targets[task.name] = target[task.name]
        rows[task.name] = slice(start, start + len(inputs))
        start += len(inputs)
    return Batch(inputs=torch.cat(parts), targets=targets, rows=rows)


def make_batch(setting: Setting, indices: dict[str, Tensor]) -> Batch:
    """The ``Batch`` of the training examples at ``indices``: one index tensor per task (multi-input), or one
    under the key ``"shared-input"`` for the shared-input layout. Never augmented."""
    groups = {}
    for name, members in stream_groups(setting).items():
        first = next(iter(members.values()))
        groups[name] = first.read_group(members, indices[name])
    return _batch(setting, groups)


def random_batch(setting: Setting, batch_size: int, generator: torch.Generator) -> Batch:
    """A batch of ``batch_size`` training examples per task drawn without replacement from ``generator``
    (independent of the training streams; the probes' batches)."""

    def draw(size: int) -> Tensor:
        return torch.randperm(size, generator=generator)[: min(batch_size, size)]

    if setting.layout == "shared-input":
        return make_batch(setting, {"shared-input": draw(len(setting.tasks[0].train))})
    return make_batch(setting, {task.name: draw(len(task.train)) for task in setting.tasks})
