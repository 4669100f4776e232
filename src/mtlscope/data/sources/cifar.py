"""CIFAR-100, python version (Krizhevsky 2009): the catalog entry and the reader of ``cifar-100-python/``.

The official archive ``cifar-100-python.tar.gz`` (``ARCHIVE_URL``, md5 ``ARCHIVE_MD5``) extracts to
``cifar-100-python/`` with three Python-2 pickles (read with the restricted unpickler, ``encoding="bytes"``):

- ``train`` and ``test``: a dict with bytes keys: ``b"data"`` a uint8 array ``[N, 3072]`` (each row a 32x32
  RGB image, channel-major: 1024 red, then 1024 green, then 1024 blue values, each row-major), ``b"fine_labels"``
  and ``b"coarse_labels"`` lists of N ints (0..99 and 0..19), plus ``b"filenames"`` and ``b"batch_label"``
  (unused). N = 50,000 (train) and 10,000 (test); every fine class has 500 train and 100 test images.
- ``meta``: a dict with ``b"fine_label_names"`` (100 bytes strings) and ``b"coarse_label_names"`` (20).

``cifar100_arrays()`` decodes train and test once into the image cache (uint8 ``[60000, 3, 32, 32]``, the train
images first) and the labels into a second entry (uint8 ``[60000, 3]``: fine label, coarse label, 0 for train /
1 for test), both keyed by the files' checksums, and returns them memory-mapped with the class names.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mtlscope.data.catalog import Archive, DataFile, DatasetInfo, cache_directory, locate, register_dataset
from mtlscope.data.image_cache import cached_images
from mtlscope.data.unpickle import load_pickle
from mtlscope.progress import Progress

ARCHIVE_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
ARCHIVE_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
ARCHIVE_NAME = "cifar-100-python.tar.gz"
FOLDER = "cifar-100-python"
IMAGE_SHAPE = (3, 32, 32)
FINE_CLASSES, COARSE_CLASSES = 100, 20

CIFAR100 = register_dataset(
    DatasetInfo(
        name="cifar-100",
        description="CIFAR-100 (python version): 50,000 train and 10,000 test 32x32 RGB images, "
        "100 fine classes in 20 coarse classes of 5",
        source=f"https://www.cs.toronto.edu/~kriz/cifar.html ({ARCHIVE_URL}, md5 {ARCHIVE_MD5}, extracted)",
        reference="Krizhevsky. Learning Multiple Layers of Features from Tiny Images. Technical report, 2009",
        files=(
            DataFile("train", (f"{FOLDER}/train",), md5="16019d7e3df5f24257cddd939b257f8d", archive="release"),
            DataFile("test", (f"{FOLDER}/test",), md5="f0ef6b0ae62326f3e7ffdfab6717acfc", archive="release"),
            DataFile("meta", (f"{FOLDER}/meta",), md5="7973b15100ade9c7d40fb424638fde48", archive="release"),
        ),
        archives=(Archive("release", ARCHIVE_NAME, ARCHIVE_URL, md5=ARCHIVE_MD5),),
    )
)


@dataclass(frozen=True)
class Cifar100Arrays:
    """CIFAR-100 decoded: ``images`` uint8 ``[N, 3, 32, 32]`` (memory-mapped), ``fine``/``coarse`` int64 ``[N]``,
    ``is_test`` bool ``[N]``, the class names from ``meta`` (index = label)."""

    images: np.ndarray
    fine: np.ndarray
    coarse: np.ndarray
    is_test: np.ndarray
    fine_names: tuple[str, ...]
    coarse_names: tuple[str, ...]


def _field(record: object, key: str, where: str) -> object:
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a pickled dict (CIFAR python format), got {type(record).__name__}")
    for candidate in (key.encode(), key):
        if candidate in record:
            return record[candidate]
    raise ValueError(f"{where}: no {key!r} entry (CIFAR python format: b'data', b'fine_labels', ...)")


def _labels(value: object, count: int, classes: int, where: str) -> np.ndarray:
    array = np.asarray(value) if isinstance(value, list | tuple | np.ndarray) else None
    if array is None or array.ndim != 1 or (array.size and not np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"{where}: expected a list of {count} integer labels")
    if len(array) != count:
        raise ValueError(f"{where}: {len(array)} labels for {count} images")
    if array.size and (array.min() < 0 or array.max() >= classes):
        raise ValueError(f"{where}: labels must be in 0..{classes - 1}, found {array.min()}..{array.max()}")
    return array.astype(np.int64)


def read_cifar100_split(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(images uint8 [N, 3, 32, 32], fine int64 [N], coarse int64 [N])`` of a ``train`` or ``test`` file."""
    where = str(path)
    record = load_pickle(path, encoding="bytes")
    data = _field(record, "data", where)
    row = int(np.prod(IMAGE_SHAPE))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != row:
        shown = f"{data.dtype} {list(data.shape)}" if isinstance(data, np.ndarray) else type(data).__name__
        raise ValueError(f"{where}: b'data' must be a uint8 array [N, {row}] (32x32 RGB rows), got {shown}")
    if len(data) == 0:
        raise ValueError(f"{where}: b'data' holds no images")
    fine = _labels(_field(record, "fine_labels", where), len(data), FINE_CLASSES, f"{where}: b'fine_labels'")
    coarse = _labels(_field(record, "coarse_labels", where), len(data), COARSE_CLASSES, f"{where}: b'coarse_labels'")
    return data.reshape(-1, *IMAGE_SHAPE), fine, coarse


def read_cifar100_meta(path: str | os.PathLike[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(fine_names, coarse_names)`` of the ``meta`` file: 100 and 20 names, unique."""
    where = str(path)
    record = load_pickle(path, encoding="bytes")
    names = []
    for key, count in (("fine_label_names", FINE_CLASSES), ("coarse_label_names", COARSE_CLASSES)):
        value = _field(record, key, where)
        if not isinstance(value, list | tuple) or len(value) != count:
            raise ValueError(f"{where}: b'{key}' must be a list of {count} names")
        decoded = []
        for name in value:
            if isinstance(name, bytes):
                name = name.decode("latin1")
            if not isinstance(name, str) or not name:
                raise ValueError(f"{where}: b'{key}' must hold non-empty names, got {name!r}")
            decoded.append(name)
        if len(set(decoded)) != count:
            raise ValueError(f"{where}: b'{key}' repeats a name")
        names.append(tuple(decoded))
    return names[0], names[1]


def _decode(paths: Sequence[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Images ``[N, 3, 32, 32]`` and labels ``[N, 3]`` (fine, coarse, split) of train then test, checked."""
    images, labels = [], []
    with Progress(len(paths), "decoding cifar-100", unit="file") as bar:
        for split, path in enumerate(paths):
            pixels, fine, coarse = read_cifar100_split(path)
            images.append(pixels)
            labels.append(np.stack([fine, coarse, np.full_like(fine, split)], axis=1).astype(np.uint8))
            bar.advance()
    label_table = np.concatenate(labels)
    _check_hierarchy(label_table[:, 0], label_table[:, 1], f"{paths[0]} and {paths[1]}")
    return np.concatenate(images), label_table


def _check_hierarchy(fine: np.ndarray, coarse: np.ndarray, where: str) -> None:
    """Every fine class lies in exactly one coarse class (CIFAR-100's hierarchy)."""
    pairs = np.unique(np.stack([fine, coarse], axis=1), axis=0)
    classes, counts = np.unique(pairs[:, 0], return_counts=True)
    if (counts > 1).any():
        bad = int(classes[counts > 1][0])
        found = sorted(int(c) for c in pairs[pairs[:, 0] == bad, 1])
        raise ValueError(f"{where}: fine class {bad} appears under coarse classes {found}; expected exactly one")


def cifar100_arrays(
    data_dir: str | os.PathLike[str] | None = None, cache_dir: str | os.PathLike[str] | None = None
) -> Cifar100Arrays:
    """CIFAR-100 from ``cifar-100-python/`` in the data directory, decoded once into the image cache."""
    paths = locate("cifar-100", data_dir)
    sources = [paths["train"], paths["test"]]
    cache = cache_directory(cache_dir)
    decoded: list[tuple[np.ndarray, np.ndarray]] = []

    def parsed() -> tuple[np.ndarray, np.ndarray]:  # both cache entries of one miss parse the pickles once
        if not decoded:
            decoded.append(_decode(sources))
        return decoded[0]

    images = cached_images(sources, lambda _: parsed()[0], cache, decoder="cifar-100-images/1", name="cifar-100")
    labels = cached_images(sources, lambda _: parsed()[1], cache, decoder="cifar-100-labels/1", name="cifar-100-labels")
    decoded.clear()
    if images.shape[1:] != IMAGE_SHAPE or labels.shape != (len(images), 3):
        raise ValueError(f"image cache {cache}: cifar-100 entries of shapes {images.shape} and {labels.shape}")
    fine_names, coarse_names = read_cifar100_meta(paths["meta"])
    return Cifar100Arrays(
        images=images,
        fine=labels[:, 0].astype(np.int64),
        coarse=labels[:, 1].astype(np.int64),
        is_test=labels[:, 2] == 1,
        fine_names=fine_names,
        coarse_names=coarse_names,
    )
