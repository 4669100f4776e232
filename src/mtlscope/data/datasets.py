"""Splits read from a map-style ``torch.utils.data.Dataset``, through DataLoader worker processes.

For data that does not fit in memory or needs augmentation; in-memory tensors (``Split``) stay the fast path.

``DatasetSplit(dataset, *, target=None, train_transform=None, num_workers=0, fingerprint=None)``:

- ``dataset[i]`` is ``(input, target)``: the input a tensor or array of the setting's ``input_shape``, the target
  a class index (int), a number, or a tensor/array. In a shared-input setting one dataset carries every task's
  target: ``(input, {task: target, ...})``, and each task's split names its key with ``target=``
  (``from_datasets`` does this). A dataset with a batched ``__getitems__(indices) -> list of items`` is read
  through it.
- Training batches are read by ``num_workers`` worker processes (0: in the main process) that stay alive for
  the whole run; the index streams are deterministic, so the next steps' batches are read ahead while the
  current step trains. ``pin_memory`` is on only for a CUDA device.
- ``train_transform(input, generator) -> input`` augments training examples only (evaluation and the probes'
  subset never are). ``generator`` is a ``torch.Generator`` seeded from (run seed, task, step, position in the
  batch), so the augmentation does not depend on ``num_workers`` or on which worker reads the example, and the
  same seed gives the same trajectory. Draw every random number from it (``torch.rand(..., generator=g)``); a
  numpy-based transform can seed ``np.random.default_rng(int(torch.randint(2**62, (1,), generator=g)))``.
- ``fingerprint``: the split's digest for run ids. By default ``dataset.fingerprint()`` when the dataset has
  one; otherwise every example is read once and hashed (cached per dataset object in the process; this costs a
  full pass over the data), and ``fingerprint="..."`` (e.g. a version string of the data) skips that pass.

Inputs become float32 and targets ``target_dtype`` (int64 class indices for a categorical loss, float32
otherwise; the setting constructors choose it from the task's loss).
"""

from __future__ import annotations

import contextlib
import hashlib
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from mtlscope.data.fingerprint import combine, tensor_digest
from mtlscope.data.splits import AugmentSeed, BatchReader, Group, IndexSource, Split, SplitData

#: ``transform(input, generator) -> input``: a train-only augmentation of one example (module docstring).
Transform = Callable[[Tensor, torch.Generator], Tensor]

_DIGESTS: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def as_tensor(value: object, dtype: torch.dtype) -> Tensor:
    """``value`` (tensor, numpy array or number) as a tensor of ``dtype``."""
    if isinstance(value, Tensor):
        return value.to(dtype)
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value)).to(dtype)
    return torch.as_tensor(value, dtype=dtype)


class _Examples:
    """Reads and converts examples of a dataset for a group of tasks (picklable: it goes to the workers)."""

    def __init__(
        self,
        dataset: Dataset[Any],
        targets: Mapping[str, tuple[str | None, torch.dtype]],
        transform: Transform | None,
    ) -> None:
        self.dataset, self.targets, self.transform = dataset, dict(targets), transform

    def items(self, indices: Sequence[int]) -> list[Any]:
        getitems = getattr(self.dataset, "__getitems__", None)
        if getitems is not None:
            return list(getitems(list(indices)))
        return [self.dataset[i] for i in indices]

    def read(self, indices: Sequence[int], seeds: Sequence[int] | None = None) -> Group:
        items = self.items(indices)
        inputs = []
        for position, item in enumerate(items):
            value = as_tensor(item[0], torch.float32)
            if self.transform is not None and seeds is not None:
                value = self.transform(value, torch.Generator().manual_seed(seeds[position]))
            inputs.append(value)
        targets = {
            name: torch.stack([as_tensor(item[1] if key is None else item[1][key], dtype) for item in items])
            for name, (key, dtype) in self.targets.items()
        }
        return torch.stack(inputs), targets

    # the DataLoader's fetcher calls ``__getitems__`` with each batch of keys: (index, augmentation seed or -1)
    def __getitems__(self, keys: list[tuple[int, int]]) -> Group:
        seeds = [seed for _, seed in keys]
        return self.read([index for index, _ in keys], None if seeds and seeds[0] < 0 else seeds)

    def __getitem__(self, key: tuple[int, int]) -> Group:  # pragma: no cover - DataLoader uses __getitems__
        return self.__getitems__([key])

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]


def _collated(batch: Any) -> Any:
    """``collate_fn`` of batches ``_Examples.__getitems__`` already stacked (module-level: workers pickle it)."""
    return batch


class DatasetSplit(SplitData):
    """One split of one task read from a map-style ``Dataset`` (module docstring)."""

    def __init__(
        self,
        dataset: Dataset[Any],
        *,
        target: str | None = None,
        train_transform: Transform | None = None,
        num_workers: int = 0,
        fingerprint: str | None = None,
        target_dtype: torch.dtype | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        if not isinstance(dataset, Dataset) and not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
            raise ValueError(f"DatasetSplit needs a map-style Dataset (__getitem__ and __len__), got {type(dataset)}")
        if isinstance(dataset, torch.utils.data.IterableDataset):
            raise ValueError("DatasetSplit needs a map-style Dataset; an IterableDataset has no indices to sample")
        if not isinstance(num_workers, int) or isinstance(num_workers, bool) or num_workers < 0:
            raise ValueError(f"DatasetSplit num_workers must be an integer >= 0, got {num_workers!r}")
        if train_transform is not None and not callable(train_transform):
            raise ValueError(
                f"DatasetSplit train_transform must be callable (input, generator), got {train_transform!r}"
            )
        if fingerprint is not None and (not isinstance(fingerprint, str) or not fingerprint):
            raise ValueError(f"DatasetSplit fingerprint must be a non-empty string, got {fingerprint!r}")
        self.dataset = dataset
        self.target = target
        self.train_transform = train_transform
        self.num_workers = num_workers
        self.given_fingerprint = fingerprint
        self.target_dtype = target_dtype
        self.device = torch.device(device)
        self._heads: dict[int | None, Split] = {}

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return (
            f"DatasetSplit({type(self.dataset).__name__}, {len(self)} examples, target={self.target!r}, "
            f"num_workers={self.num_workers})"
        )

    def _dtype(self) -> torch.dtype:
        if self.target_dtype is not None:
            return self.target_dtype
        first = self.dataset[0][1]
        value = first if self.target is None else first[self.target]
        kind = as_tensor(value, torch.float64) if not isinstance(value, Tensor) else value
        if isinstance(value, int | np.integer) or (
            isinstance(value, Tensor | np.ndarray) and not kind.is_floating_point()
        ):
            return torch.int64
        return torch.float32

    def _examples(self, members: Mapping[str, SplitData], transform: Transform | None) -> _Examples:
        targets = {}
        for name, split in members.items():
            if not isinstance(split, DatasetSplit) or split.dataset is not self.dataset:
                raise ValueError(f"task {name!r} does not read the same Dataset as the tasks it shares inputs with")
            targets[name] = (split.target, split._dtype())
        return _Examples(self.dataset, targets, transform)

    def _own(self) -> dict[str, SplitData]:
        return {"": self}

    def fingerprint(self) -> str:
        if self.given_fingerprint is not None:
            data = self.given_fingerprint
        elif callable(getattr(self.dataset, "fingerprint", None)):
            data = str(self.dataset.fingerprint())  # type: ignore[attr-defined]
        else:
            data = dataset_digest(self.dataset)
        transform = self.train_transform
        named = (
            None
            if transform is None
            else f"{getattr(transform, '__module__', '')}.{getattr(transform, '__qualname__', repr(transform))}"
        )
        return combine({"dataset": data, "target": self.target, "train_transform": named})

    def head(self, limit: int | None) -> Split:
        size = len(self) if limit is None else min(limit, len(self))
        if size not in self._heads:
            inputs, targets = self.read_group(self._own(), torch.arange(size))
            self._heads[size] = Split(inputs, targets[""])
        return self._heads[size]

    def to(self, device: torch.device | str, memo: dict[int, Any] | None = None) -> DatasetSplit:
        moved = DatasetSplit(
            self.dataset,
            target=self.target,
            train_transform=self.train_transform,
            num_workers=self.num_workers,
            fingerprint=self.given_fingerprint,
            target_dtype=self.target_dtype,
            device=device,
        )
        return moved

    def shares_inputs(self, other: SplitData) -> bool:
        return (
            isinstance(other, DatasetSplit)
            and other.dataset is self.dataset
            and other.train_transform is self.train_transform
        )

    def _to_device(self, group: Group) -> Group:
        if self.device.type == "cpu":
            return group
        inputs, targets = group
        return inputs.to(self.device, non_blocking=True), {
            k: v.to(self.device, non_blocking=True) for k, v in targets.items()
        }

    def read_group(self, members: Mapping[str, SplitData], index: Tensor) -> Group:
        examples = self._examples(members, None)
        return self._to_device(examples.read([int(i) for i in index.tolist()]))

    def group_batches(self, members: Mapping[str, SplitData], batch_size: int, limit: int | None) -> Iterator[Group]:
        size = len(self) if limit is None else min(limit, len(self))
        keys = [[(i, -1) for i in range(start, min(start + batch_size, size))] for start in range(0, size, batch_size)]
        loader = self._loader(self._examples(members, None), keys, persistent=False)
        for group in loader:
            yield self._to_device(group)

    def open_reader(
        self, members: Mapping[str, SplitData], stream: IndexSource, augment_seed: AugmentSeed
    ) -> BatchReader:
        return DatasetReader(self, self._examples(members, self.train_transform), stream, augment_seed)

    def _loader(self, examples: _Examples, batches: Any, *, persistent: bool) -> DataLoader[Any]:
        workers = self.num_workers
        return DataLoader(
            examples,  # type: ignore[arg-type]
            batch_sampler=batches,
            num_workers=workers,
            collate_fn=_collated,
            pin_memory=self.device.type == "cuda",
            persistent_workers=persistent and workers > 0,
            prefetch_factor=2 if workers > 0 else None,
        )


class _Keys:
    """The batch sampler of a training DataLoader: each step's (index, augmentation seed) pairs, drawn from the
    index stream in the main process; remembers the stream's state before every batch drawn but not yet used."""

    def __init__(self, stream: IndexSource, augment_seed: AugmentSeed, augment: bool, step: int) -> None:
        self.stream, self.augment_seed, self.augment, self.step = stream, augment_seed, augment, step
        self.pending: deque[dict[str, Tensor]] = deque()

    def state(self) -> dict[str, Tensor]:
        return {**self.stream.state_dict(), "batches": torch.tensor(self.step)}

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        while True:
            self.pending.append(self.state())
            index = self.stream.next().tolist()
            step = self.step
            self.step += 1
            yield [
                (int(i), self.augment_seed(step, position) if self.augment else -1) for position, i in enumerate(index)
            ]


class DatasetReader(BatchReader):
    """Training batches of a ``DatasetSplit``: a DataLoader over the stream's batches, workers kept alive and the
    next batches read ahead (``prefetch_factor`` 2 per worker)."""

    def __init__(
        self, split: DatasetSplit, examples: _Examples, stream: IndexSource, augment_seed: AugmentSeed
    ) -> None:
        self.split, self.examples, self.stream, self.augment_seed = split, examples, stream, augment_seed
        self.keys = _Keys(stream, augment_seed, examples.transform is not None, 0)
        self._iterator: Iterator[Group] | None = None

    def next(self) -> Group:
        if self._iterator is None:
            loader = self.split._loader(self.examples, self.keys, persistent=True)
            self._iterator = iter(loader)
        group = next(self._iterator)
        self.keys.pending.popleft()
        return self.split._to_device(group)

    def state_dict(self) -> dict[str, Tensor]:
        return self.keys.pending[0] if self.keys.pending else self.keys.state()

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.close()
        self.stream.load_state_dict({k: v for k, v in state.items() if k != "batches"})
        self.keys = _Keys(
            self.stream, self.augment_seed, self.examples.transform is not None, int(state.get("batches", 0))
        )

    def close(self) -> None:
        iterator, self._iterator = self._iterator, None
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


def dataset_digest(dataset: Dataset[Any]) -> str:
    """sha256 of every example of ``dataset`` (inputs and targets as tensors, in order), cached per dataset
    object in the process. Reads the whole dataset once: give ``DatasetSplit(fingerprint=...)`` or a dataset
    ``fingerprint()`` method to skip it."""
    try:
        return _DIGESTS[dataset]
    except (KeyError, TypeError):
        pass
    digest = hashlib.sha256(f"{len(dataset)}|".encode())  # type: ignore[arg-type]
    for index in range(len(dataset)):  # type: ignore[arg-type]
        item = dataset[index]
        digest.update(_item_digest(item).encode())
    value = digest.hexdigest()
    with contextlib.suppress(TypeError):  # not weakly referenceable: computed again next time
        _DIGESTS[dataset] = value
    return value


def _item_digest(value: object) -> str:
    if isinstance(value, Mapping):
        return combine({str(key): _item_digest(part) for key, part in value.items()})
    if isinstance(value, tuple | list):
        return combine({str(i): _item_digest(part) for i, part in enumerate(value)})
    if isinstance(value, Tensor | np.ndarray):
        return tensor_digest(torch.as_tensor(value))
    return combine({"value": repr(value), "type": type(value).__name__})
