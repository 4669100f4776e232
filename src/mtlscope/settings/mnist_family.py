"""Splits and tasks of the 28x28 greyscale settings (``fashion-mtl``, ``mnists``), shared by both.

- ``draw(size, counts, rng, where)``: disjoint index sets of the given sizes, a seeded random draw.
- ``image_dataset(pool, index, labels, mean, std)``: a ``CachedImageDataset`` of the indexed images of an
  ``ImagePool`` (a uint8 copy of those rows only), normalized as ``(x / 255 - mean) / std``, whose fingerprint is
  the pool's identity and the indices (no pass over the pixels).
- notMNIST tasks are *deferred*: ``notmnist_task`` declares the task with its split sizes, and its files are
  located and decoded only when the task's data is first read (its fingerprint, a batch). A setting that lists a
  notmnist task can therefore be built, and any subset of its other tasks run, without notMNIST on disk; a run
  that includes the notmnist task gets the one-line missing-data error when it resolves its data.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from mtlscope.data.catalog import MissingDataError, data_directory
from mtlscope.data.datasets import DatasetSplit
from mtlscope.data.fingerprint import combine, tensor_digest
from mtlscope.data.image_cache import CachedImageDataset
from mtlscope.data.sources.mnist import IMAGE_SIZE, ImagePool
from mtlscope.data.sources.notmnist import NotMNISTSource, notmnist_pools
from mtlscope.losses import cross_entropy
from mtlscope.metrics import accuracy, macro_f1
from mtlscope.settings.constructors import TaskSpec
from mtlscope.settings.setting import Setting
from mtlscope.settings.task import SPLITS, Task

#: Every task: cross-entropy loss, accuracy (primary) and macro-F1.
CLASSIFICATION_METRICS = (accuracy(), macro_f1())
INPUT_SHAPE = (1, IMAGE_SIZE, IMAGE_SIZE)


def classification(name: str, description: str) -> TaskSpec:
    """A 10-class task with the family's loss and metrics."""
    return TaskSpec(name, 10, loss=cross_entropy(), metrics=CLASSIFICATION_METRICS, description=description)


def draw(size: int, counts: Sequence[tuple[str, int]], rng: np.random.Generator, where: str) -> list[np.ndarray]:
    """Disjoint random index sets of ``size`` items, one per ``(what, count)``, in a random order each (the first
    ones of a split are a random sample: the probes use them). One ``ValueError`` line when they do not fit."""
    needed = sum(count for _, count in counts)
    if needed > size:
        parts = " + ".join(f"{what} {count}" for what, count in counts)
        raise ValueError(f"{where}: has {size} images, the splits need {needed} ({parts}); lower the split sizes")
    order = rng.permutation(size)
    result, start = [], 0
    for _, count in counts:
        result.append(order[start : start + count])
        start += count
    return result


def image_dataset(
    pool: ImagePool, index: np.ndarray, mean: float, std: float, labels: np.ndarray | None = None
) -> CachedImageDataset:
    """The indexed images of ``pool`` with ``labels`` (default: the pool's labels at ``index``)."""
    targets = pool.labels[index] if labels is None else labels
    key = combine({"pool": pool.key, "index": tensor_digest(torch.from_numpy(np.asarray(index, dtype=np.int64)))})
    return CachedImageDataset(pool.images(index), torch.from_numpy(targets), mean=mean, std=std, layout="NHW", key=key)


def relabelled(dataset: CachedImageDataset, labels: np.ndarray) -> CachedImageDataset:
    """The same images (the same array, not a copy) with other labels."""
    return CachedImageDataset(
        dataset.images,
        torch.from_numpy(labels),
        mean=list(dataset.mean),
        std=list(dataset.std),
        layout=dataset.layout,
        key=dataset.images_key(),
    )


def permuted(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``labels`` shuffled across examples (same class counts, no information about the images left)."""
    return labels[rng.permutation(len(labels))]


class DeferredImageDataset(Dataset):
    """A dataset of declared length and example shape whose data is built on first use (``build()`` returns a
    ``CachedImageDataset``): reading an item, a batch or the fingerprint builds it; ``len`` and ``input_shape``
    do not. Pickling (DataLoader workers) builds it and sends the built dataset."""

    def __init__(self, build: Callable[[], CachedImageDataset], length: int, where: str) -> None:
        self._build, self.length, self.where = build, length, where
        self._built: CachedImageDataset | None = None

    @property
    def built(self) -> CachedImageDataset:
        if self._built is None:
            dataset = self._build()
            if len(dataset) != self.length:  # a bug, not bad input: the split sizes are drawn exactly
                raise RuntimeError(f"{self.where}: built {len(dataset)} examples, declared {self.length}")
            self._built = dataset
        return self._built

    def __len__(self) -> int:
        return self.length

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return INPUT_SHAPE

    def __getitem__(self, index: int) -> tuple[Tensor, Any]:
        return self.built[index]

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[Tensor, Any]]:
        return self.built.__getitems__(indices)

    def batch(self, indices: Sequence[int]) -> tuple[Tensor, Any]:
        return self.built.batch(indices)

    def fingerprint(self) -> str:
        return self.built.fingerprint()

    def __getstate__(self) -> dict[str, Any]:
        return {"length": self.length, "where": self.where, "built": self.built}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.length, self.where, self._built = state["length"], state["where"], state["built"]
        self._build = lambda: state["built"]


def notmnist_task(
    setting: str,
    sizes: dict[str, int],
    seed: int | Sequence[int],
    *,
    source: NotMNISTSource,
    data_dir: str | os.PathLike[str] | None,
    task: str = "notmnist",
) -> Task:
    """The deferred notMNIST task of ``setting`` (module docstring): ``sizes`` per split, drawn with
    ``seed`` (``numpy.random.default_rng(seed)``). From a folder, test, validation and training images are drawn
    from its one pool; from the
    IDX conversion, training and validation from its train files and test from its t10k files. Normalized by
    the training images' pixel mean and standard deviation."""
    where = f"setting {setting!r}, task {task!r}"
    # the data directory as it is now, while the setting is built (a run config's data_dir applies only then)
    data_dir = data_directory(data_dir)
    lock = threading.Lock()
    built: dict[str, CachedImageDataset] = {}

    def build_all() -> dict[str, CachedImageDataset]:
        with lock:
            if not built:
                try:
                    train_pool, test_pool = notmnist_pools(source, data_dir)
                except MissingDataError as error:
                    raise MissingDataError(f"{where}: {error}") from None
                rng = np.random.default_rng(seed)
                if test_pool is None:
                    test, val, train = draw(
                        len(train_pool),
                        [("test", sizes["test"]), ("val", sizes["val"]), ("train", sizes["train"])],
                        rng,
                        f"{where}: {train_pool.origin}",
                    )
                else:
                    train, val = draw(
                        len(train_pool),
                        [("train", sizes["train"]), ("val", sizes["val"])],
                        rng,
                        f"{where}: {train_pool.origin}",
                    )
                    (test,) = draw(len(test_pool), [("test", sizes["test"])], rng, f"{where}: {test_pool.origin}")
                pixels = train_pool.images(train).astype(np.float64) / 255.0
                mean, std = float(pixels.mean()), float(pixels.std()) or 1.0
                for split, index in (("train", train), ("val", val), ("test", test)):
                    pool = train_pool if test_pool is None or split != "test" else test_pool
                    built[split] = image_dataset(pool, index, round(mean, 4), round(std, 4))
            return built

    spec = classification(task, "notMNIST letters A-J (auxiliary task with another input distribution)")

    def builder(split: str) -> Callable[[], CachedImageDataset]:
        return lambda: build_all()[split]

    splits = {
        split: DatasetSplit(
            DeferredImageDataset(builder(split), sizes[split], f"{where}, split {split!r}"), target_dtype=torch.int64
        )
        for split in SPLITS
    }
    return spec.task(splits)


def with_tasks(setting: Setting, tasks: Sequence[Task]) -> Setting:
    """``setting`` with ``tasks`` appended (their inputs are 1x28x28 like the setting's; its epoch size recomputed)."""
    if setting.input_shape != INPUT_SHAPE:
        raise ValueError(f"setting {setting.name!r}: inputs {setting.input_shape}, expected {INPUT_SHAPE}")
    return replace(setting, tasks=setting.tasks + tuple(tasks), epoch_examples=0)
