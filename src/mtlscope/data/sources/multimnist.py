"""MultiMNIST, MultiFashion and Multi-(Fashion+MNIST) as released by Lin et al. (2019, Pareto Multi-Task Learning,
github.com/Xi-L/ParetoMTL): the catalog entries and the reader of their pickles.

Each dataset is one pickle file (``multi_mnist.pickle``, ``multi_fashion.pickle``,
``multi_fashion_and_mnist.pickle``; from the Google Drive folder the ParetoMTL repository links to, no published
checksums) holding the tuple ``(trainX, trainLabel, testX, testLabel)`` of numpy arrays: 120,000 training and
20,000 test images of 36x36 pixels, each two items (an upper-left and a lower-right one, overlapping) with labels
``[N, 2]`` = (left, right), classes 0..9. ParetoMTL's code reads them with ``trainX.reshape(120000, 1, 36, 36)``
and uses the values as given (no scaling, no normalization); the images may be stored as ``[N, 36, 36]``,
``[N, 1, 36, 36]`` or ``[N, 1296]``.

The cache holds uint8 pixels, so the images are converted to 0..255 (``pixels_as_uint8``): a uint8 or integer
array 0..255 as is; floats that are integers 0..255 exactly; floats in [0, 1] times 255 — exact when every value
is a multiple of 1/255, otherwise rounded to the nearest multiple (a change of at most 1/510 ≈ 0.002 per pixel,
said in one log line with the largest change). Anything else (negative, above 255, non-finite) is an error.
``multimnist_arrays(name)`` returns the images uint8 ``[140000, 36, 36]`` (train first, memory-mapped from the
cache) and the labels, both cached by the file's checksum.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mtlscope.data.catalog import DataFile, DatasetInfo, cache_directory, locate, register_dataset
from mtlscope.data.image_cache import cached_images
from mtlscope.data.unpickle import load_pickle
from mtlscope.progress import Progress

logger = logging.getLogger(__name__)

SIDE = 36
SOURCE = (
    "Lin et al. 2019 (Pareto Multi-Task Learning): the Google Drive folder linked from "
    "https://github.com/Xi-L/ParetoMTL/tree/master/multiMNIST/data "
    "(https://drive.google.com/open?id=1VnmCmBAVh8f_BKJg1KYx-E137gBLXbGG)"
)
REFERENCE = "Lin, Zhen, Li, Zhang, Kwong. Pareto Multi-Task Learning. NeurIPS 2019"
#: catalog name -> (file name, what the two items are)
FILES = {
    "multi-mnist": ("multi_mnist.pickle", "two overlapping MNIST digits"),
    "multi-fashion": ("multi_fashion.pickle", "two overlapping Fashion-MNIST items"),
    "multi-fashion-mnist": ("multi_fashion_and_mnist.pickle", "a Fashion-MNIST item and an MNIST digit, overlapping"),
}

for _name, (_file, _what) in FILES.items():
    register_dataset(
        DatasetInfo(
            name=_name,
            description=f"Lin et al.'s {_file}: 120,000 train and 20,000 test 36x36 images of {_what}; "
            "labels (left, right)",
            source=SOURCE,
            reference=REFERENCE,
            files=(DataFile("data", (_file, f"multimnist/{_file}")),),
        )
    )


@dataclass(frozen=True)
class MultiMnistArrays:
    """A decoded Pareto-MTL pickle: ``images`` uint8 ``[N, 36, 36]`` (train then test, memory-mapped),
    ``left``/``right`` int64 ``[N]``, ``is_test`` bool ``[N]``."""

    images: np.ndarray
    left: np.ndarray
    right: np.ndarray
    is_test: np.ndarray


def pixels_as_uint8(images: np.ndarray, where: str) -> np.ndarray:
    """``images`` as uint8 0..255 by the rules of the module docstring."""
    if images.dtype == np.uint8:
        return images
    if images.size == 0:
        raise ValueError(f"{where}: no pixels")
    if np.issubdtype(images.dtype, np.integer) or images.dtype == np.bool_:
        smallest, largest_value = int(images.min()), int(images.max())
        if smallest < 0 or largest_value > 255:
            raise ValueError(f"{where}: integer pixels must be in 0..255, found {smallest}..{largest_value}")
        return images.astype(np.uint8)
    if not np.issubdtype(images.dtype, np.floating):
        raise ValueError(f"{where}: pixels must be numbers, got dtype {images.dtype}")
    finite = np.isfinite(images)
    if not finite.all():
        raise ValueError(f"{where}: {int((~finite).sum())} pixels are not finite numbers")
    low, high = float(images.min()), float(images.max())
    if low < 0 or high > 255:
        raise ValueError(f"{where}: pixels must be in [0, 1] or 0..255, found {low:g}..{high:g}")
    out = np.empty(images.shape, dtype=np.uint8)
    scale: float = 255.0 if high <= 1 else 1.0
    flat_in, flat_out = images.reshape(-1), out.reshape(-1)
    largest = 0.0
    for start in range(0, flat_in.size, 1 << 22):  # chunks: never a float64 copy of the whole set
        chunk = flat_in[start : start + (1 << 22)].astype(np.float64) * scale
        rounded = np.rint(chunk)
        largest = max(largest, float(np.abs(chunk - rounded).max()))
        flat_out[start : start + chunk.size] = rounded.astype(np.uint8)
    if largest > 1e-3:
        if scale == 1.0:
            raise ValueError(f"{where}: float pixels above 1 must be whole numbers 0..255, found fractions")
        logger.info(
            "%s: float pixels in [0, 1] are not multiples of 1/255; rounded to the nearest (largest change %.4f "
            "of the [0, 1] range)",
            where,
            largest / 255,
        )
    return out


def _images(value: object, where: str) -> np.ndarray:
    if not isinstance(value, np.ndarray) or value.ndim < 2 or len(value) == 0:
        shown = f"shape {list(value.shape)}" if isinstance(value, np.ndarray) else type(value).__name__
        raise ValueError(f"{where}: expected a non-empty image array [N, 36, 36], got {shown}")
    if value.shape[1:] not in ((SIDE, SIDE), (1, SIDE, SIDE), (SIDE * SIDE,)):
        raise ValueError(
            f"{where}: expected images [N, 36, 36] (or [N, 1, 36, 36], [N, 1296]), got shape {list(value.shape)}"
        )
    return pixels_as_uint8(value.reshape(len(value), SIDE, SIDE), where)


def _labels(value: object, count: int, where: str) -> np.ndarray:
    if not isinstance(value, np.ndarray) or value.shape != (count, 2):
        shown = f"shape {list(value.shape)}" if isinstance(value, np.ndarray) else type(value).__name__
        raise ValueError(f"{where}: expected labels [{count}, 2] (left, right), got {shown}")
    if not (np.issubdtype(value.dtype, np.integer) or np.issubdtype(value.dtype, np.floating)):
        raise ValueError(f"{where}: labels must be integers 0..9, got dtype {value.dtype}")
    if not np.isfinite(value).all() or (value != np.round(value)).any() or value.min() < 0 or value.max() > 9:
        raise ValueError(f"{where}: labels must be integers 0..9, found {value.min()}..{value.max()}")
    return value.astype(np.int64)


def read_multimnist(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(train_images uint8 [N, 36, 36], train_labels int64 [N, 2], test_images, test_labels)`` of a file."""
    where = str(path)
    content = load_pickle(path, encoding="latin1")
    if not isinstance(content, tuple | list) or len(content) != 4:
        shown = f"{len(content)} items" if isinstance(content, tuple | list) else type(content).__name__
        raise ValueError(f"{where}: expected a pickled tuple (trainX, trainLabel, testX, testLabel), got {shown}")
    train_x = _images(content[0], f"{where}: trainX")
    train_y = _labels(content[1], len(train_x), f"{where}: trainLabel")
    test_x = _images(content[2], f"{where}: testX")
    test_y = _labels(content[3], len(test_x), f"{where}: testLabel")
    return train_x, train_y, test_x, test_y


def _decode(path: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    with Progress(1, f"decoding {name}", unit="file") as bar:
        train_x, train_y, test_x, test_y = read_multimnist(path)
        bar.advance()
    split = np.concatenate([np.zeros(len(train_y), np.int64), np.ones(len(test_y), np.int64)])
    labels = np.concatenate([np.concatenate([train_y, test_y]), split[:, None]], axis=1).astype(np.uint8)
    return np.concatenate([train_x, test_x]), labels


def multimnist_arrays(
    name: str, data_dir: str | os.PathLike[str] | None = None, cache_dir: str | os.PathLike[str] | None = None
) -> MultiMnistArrays:
    """Dataset ``name`` (a key of ``FILES``) from the data directory, decoded once into the image cache."""
    if name not in FILES:
        raise ValueError(f"unknown Pareto-MTL dataset {name!r}; expected one of {', '.join(FILES)}")
    path = locate(name, data_dir)["data"]
    cache = cache_directory(cache_dir)
    decoded: list[tuple[np.ndarray, np.ndarray]] = []

    def parsed(_: Sequence[Path]) -> tuple[np.ndarray, np.ndarray]:  # one parse fills both entries of a miss
        if not decoded:
            decoded.append(_decode(path, name))
        return decoded[0]

    images = cached_images([path], lambda s: parsed(s)[0], cache, decoder="pareto-mtl-images/1", name=name)
    labels = cached_images([path], lambda s: parsed(s)[1], cache, decoder="pareto-mtl-labels/1", name=f"{name}-labels")
    decoded.clear()
    if images.shape[1:] != (SIDE, SIDE) or labels.shape != (len(images), 3):
        raise ValueError(f"image cache {cache}: {name} entries of shapes {images.shape} and {labels.shape}")
    return MultiMnistArrays(
        images=images,
        left=labels[:, 0].astype(np.int64),
        right=labels[:, 1].astype(np.int64),
        is_test=labels[:, 2] == 1,
    )
