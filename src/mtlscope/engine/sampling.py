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
    """Builds each step's ``Batch`` for a setting (either layout) on ``device``."""

    def __init__(self, setting: Setting, batch_size: int, seed: int) -> None:
        self.setting = setting
        self.batch_size = batch_size
        if setting.layout == "shared-input":
            size = len(setting.tasks[0].train)
            self.streams = {"shared-input": IndexStream(size, batch_size, derived_seed(seed, "data", "shared-input"))}
        else:
            self.streams = {
                task.name: IndexStream(len(task.train), batch_size, derived_seed(seed, "data", task.name))
                for task in setting.tasks
            }

    def next(self) -> Batch:
        if self.setting.layout == "shared-input":
            return make_batch(self.setting, {"shared-input": self.streams["shared-input"].next()})
        return make_batch(self.setting, {task.name: self.streams[task.name].next() for task in self.setting.tasks})

    def state_dict(self) -> dict[str, dict[str, Tensor]]:
        return {name: stream.state_dict() for name, stream in self.streams.items()}

    def load_state_dict(self, state: dict[str, dict[str, Tensor]]) -> None:
        for name, stream in self.streams.items():
            stream.load_state_dict(state[name])


def make_batch(setting: Setting, indices: dict[str, Tensor]) -> Batch:
    """The ``Batch`` of the training examples at ``indices``: one index tensor per task (multi-input), or one
    under the key ``"shared-input"`` for the shared-input layout."""
    if setting.layout == "shared-input":
        first = setting.tasks[0].train
        index = indices["shared-input"].to(first.inputs.device)
        every = slice(0, len(index))
        return Batch(
            inputs=first.inputs[index],
            targets={task.name: task.train.targets[index] for task in setting.tasks},
            rows={task.name: every for task in setting.tasks},
        )
    inputs, targets, rows, start = [], {}, {}, 0
    for task in setting.tasks:
        index = indices[task.name].to(task.train.inputs.device)
        inputs.append(task.train.inputs[index])
        targets[task.name] = task.train.targets[index]
        rows[task.name] = slice(start, start + len(index))
        start += len(index)
    return Batch(inputs=torch.cat(inputs), targets=targets, rows=rows)


def random_batch(setting: Setting, batch_size: int, generator: torch.Generator) -> Batch:
    """A batch of ``batch_size`` training examples per task drawn without replacement from ``generator``
    (independent of the training streams; the probes' batches)."""

    def draw(size: int) -> Tensor:
        return torch.randperm(size, generator=generator)[: min(batch_size, size)]

    if setting.layout == "shared-input":
        return make_batch(setting, {"shared-input": draw(len(setting.tasks[0].train))})
    return make_batch(setting, {task.name: draw(len(task.train)) for task in setting.tasks})
