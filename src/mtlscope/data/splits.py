"""The examples of one split of one task, whatever holds them: what the engine reads.

``SplitData`` is the interface the engine, the evaluation and the probes use instead of raw tensors:

- ``len(split)``: number of examples;
- ``read_group(members, index)``: the inputs at ``index`` once and every member task's targets at ``index``
  (members are tasks whose splits share this split's inputs: all tasks of a shared-input setting, or the task
  alone); no augmentation;
- ``group_batches(members, batch_size, limit)``: the first ``limit`` examples (all when None) in consecutive
  batches, in order, for evaluation; no augmentation;
- ``open_reader(members, stream, ...)``: the training batches of an index stream (a ``BatchReader``; the only
  place where a train-only augmentation applies);
- ``head(n)``: the first ``n`` examples as an in-memory ``Split`` (the probes' fixed subset);
- ``fingerprint()``, ``to(device)``, ``shares_inputs(other)``.

Two kinds: ``Split(inputs, targets)`` holds tensors (the fast path for data that fits in memory) and
``mtlscope.data.datasets.DatasetSplit`` reads a map-style ``torch.utils.data.Dataset`` through DataLoader
workers.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from mtlscope.data.fingerprint import combine, tensor_digest

Group = tuple[Tensor, dict[str, Tensor]]  # inputs, targets by task name


class IndexSource(Protocol):
    """An endless, deterministic stream of index batches with a restorable state (``engine.sampling``)."""

    def next(self) -> Tensor: ...

    def state_dict(self) -> dict[str, Tensor]: ...

    def load_state_dict(self, state: dict[str, Tensor]) -> None: ...


class BatchReader(ABC):
    """Training batches of one index stream: ``next()`` gives (inputs, targets by task) of the next step."""

    @abstractmethod
    def next(self) -> Group: ...

    @abstractmethod
    def state_dict(self) -> dict[str, Tensor]:
        """The state before the next batch ``next()`` returns (a checkpoint resumes exactly there)."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Tensor]) -> None: ...

    def close(self) -> None:  # noqa: B027 - most readers hold no workers: nothing to release
        """Release worker processes, if any (also done when the reader is garbage-collected)."""


#: ``augment_seed(step, position)``: the seed of the train-only transform of one example of one step.
AugmentSeed = Callable[[int, int], int]


class SplitData(ABC):
    """The examples of one split of one task (module docstring)."""

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def fingerprint(self) -> str:
        """sha256 of what this split holds (a changed example changes it)."""

    @abstractmethod
    def head(self, limit: int | None) -> Split:
        """The first ``limit`` examples (all when None) as tensors: a fixed, seed-free subset, never augmented."""

    @abstractmethod
    def to(self, device: torch.device | str, memo: dict[int, Any] | None = None) -> SplitData:
        """This split with its batches on ``device`` (``memo`` keeps objects shared between tasks shared)."""

    @abstractmethod
    def shares_inputs(self, other: SplitData) -> bool:
        """Whether ``other`` has exactly this split's inputs (the same data, in the same order)."""

    @abstractmethod
    def read_group(self, members: Mapping[str, SplitData], index: Tensor) -> Group:
        """Inputs at ``index`` (read once) and each member's targets at ``index``; no augmentation."""

    @abstractmethod
    def group_batches(self, members: Mapping[str, SplitData], batch_size: int, limit: int | None) -> Iterator[Group]:
        """The first ``limit`` examples (all when None) in consecutive batches of ``batch_size``, in order."""

    @abstractmethod
    def open_reader(
        self, members: Mapping[str, SplitData], stream: IndexSource, augment_seed: AugmentSeed
    ) -> BatchReader:
        """The training batches of ``stream`` (augmented when the split declares a train-only transform)."""

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input example (read from the first example)."""
        return tuple(self.head(1).inputs.shape[1:])


def _refuse_non_tensor(field: str, value: object) -> None:
    if isinstance(value, Tensor):
        return
    kind = "a numpy array" if isinstance(value, np.ndarray) else f"a {type(value).__name__}"
    raise ValueError(
        f"Split {field} must be a torch.Tensor, got {kind}; convert it with torch.as_tensor, or build the "
        f"setting with mtlscope.settings.from_arrays (which converts and checks numpy arrays)"
    )


@dataclass(frozen=True)
class Split(SplitData):
    """The examples of one split of one task, held as tensors (inputs first dimension = examples).

    Both must be tensors (a numpy array is refused with one line: convert it, or use
    ``mtlscope.settings.from_arrays``) with the same number of examples.
    """

    inputs: Tensor
    targets: Tensor

    def __post_init__(self) -> None:
        _refuse_non_tensor("inputs", self.inputs)
        _refuse_non_tensor("targets", self.targets)
        if self.inputs.dim() < 1 or self.targets.dim() < 1:
            raise ValueError(
                f"Split inputs and targets need a first (examples) dimension, got shapes "
                f"{tuple(self.inputs.shape)} and {tuple(self.targets.shape)}"
            )
        if self.inputs.shape[0] != self.targets.shape[0]:
            raise ValueError(f"split has {self.inputs.shape[0]} inputs but {self.targets.shape[0]} targets")

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    def fingerprint(self) -> str:
        """sha256 of the inputs and targets (``mtlscope.data.fingerprint``)."""
        return combine({"inputs": tensor_digest(self.inputs), "targets": tensor_digest(self.targets)})

    def head(self, limit: int | None) -> Split:
        """The first ``limit`` examples (all when ``limit`` is None): a fixed, seed-free subset."""
        if limit is None or limit >= len(self):
            return self
        return Split(self.inputs[:limit], self.targets[:limit])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.inputs.shape[1:])

    def to(self, device: torch.device | str, memo: dict[int, Any] | None = None) -> Split:
        memo = {} if memo is None else memo

        def move(tensor: Tensor) -> Tensor:
            if id(tensor) not in memo:
                memo[id(tensor)] = tensor.to(device)
            moved: Tensor = memo[id(tensor)]
            return moved

        return Split(move(self.inputs), move(self.targets))

    def shares_inputs(self, other: SplitData) -> bool:
        """True for the same tensor, a view of the same memory with the same layout, or an equal tensor."""
        if not isinstance(other, Split):
            return False
        a, b = self.inputs, other.inputs
        if a is b:
            return True
        if a.dtype != b.dtype or a.shape != b.shape or a.device != b.device:
            return False
        same_view = (
            a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
            and a.storage_offset() == b.storage_offset()
            and a.stride() == b.stride()
        )
        return same_view or bool(torch.equal(a, b))

    def read_group(self, members: Mapping[str, SplitData], index: Tensor) -> Group:
        index = index.to(self.inputs.device, non_blocking=True)  # no stream sync on a GPU
        return self.inputs[index], {name: _tensors(split).targets[index] for name, split in members.items()}

    def group_batches(self, members: Mapping[str, SplitData], batch_size: int, limit: int | None) -> Iterator[Group]:
        inputs = self.head(limit).inputs
        targets = {name: _tensors(split).head(limit).targets for name, split in members.items()}
        for start in range(0, len(inputs), batch_size):
            end = start + batch_size
            yield inputs[start:end], {name: values[start:end] for name, values in targets.items()}

    def open_reader(
        self, members: Mapping[str, SplitData], stream: IndexSource, augment_seed: AugmentSeed
    ) -> BatchReader:
        return TensorReader(self, dict(members), stream)


def _tensors(split: SplitData) -> Split:
    if not isinstance(split, Split):
        raise ValueError(f"tasks sharing in-memory inputs must all hold tensor Splits, got a {type(split).__name__}")
    return split


class TensorReader(BatchReader):
    """Training batches of in-memory tensors: the rows at each batch of stream indices (no copy of the data)."""

    def __init__(self, split: Split, members: dict[str, SplitData], stream: IndexSource) -> None:
        self.split, self.members, self.stream = split, members, stream

    def next(self) -> Group:
        return self.split.read_group(self.members, self.stream.next())

    def state_dict(self) -> dict[str, Tensor]:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.stream.load_state_dict(state)
