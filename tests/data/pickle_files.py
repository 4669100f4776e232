"""Tiny datasets in exactly the pickle formats of CIFAR-100 (Python-2 pickles with bytes keys) and of Lin et al.'s
MultiMNIST files, for the tests of the readers and the settings.

Each image carries its identity in its pixels, so a test can check what it reads: CIFAR image ``i`` of a file has
pixel (channel 0, 0, 0) = its fine label, (1, 0, 0) = ``i // 256`` and (2, 0, 0) = ``i % 256``; MultiMNIST image
``i`` has pixel (0, 0) = ``i % 256`` and (0, 1) = ``i // 256`` of the file's split, and (0, 2) = 1 in the test set.
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np

#: the official coarse class names of CIFAR-100 (two of them have hyphens, renamed in task names)
COARSE_NAMES = [
    "aquatic_mammals",
    "fish",
    "flowers",
    "food_containers",
    "fruit_and_vegetables",
    "household_electrical_devices",
    "household_furniture",
    "insects",
    "large_carnivores",
    "large_man-made_outdoor_things",
    "large_natural_outdoor_scenes",
    "large_omnivores_and_herbivores",
    "medium_mammals",
    "non-insect_invertebrates",
    "people",
    "reptiles",
    "small_mammals",
    "trees",
    "vehicles_1",
    "vehicles_2",
]
TASK_NAMES = [name.replace("-", "_") for name in COARSE_NAMES]
#: the coarse class of each of the 100 fine classes: 5 per coarse class, in a shuffled (fixed) order
COARSE_OF_FINE = np.random.default_rng(7).permutation(np.repeat(np.arange(20), 5))


class Python2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes what Python 2's cPickle writes at protocol 2: ``str`` and ``bytes`` as Python-2 strings
    (SHORT_BINSTRING / BINSTRING) and numpy's globals under their Python-2 module ``numpy.core.multiarray``."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def save_py2_str(self, obj: str | bytes) -> None:
        data = obj if isinstance(obj, bytes) else obj.encode("latin1")
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str

    def save_global(self, obj: Any, name: str | None = None) -> None:
        module = getattr(obj, "__module__", "")
        module = "numpy.core.multiarray" if module == "numpy._core.multiarray" else module
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
        self.memoize(obj)

    dispatch[type] = save_global


def dump_python2(value: object, path: Path) -> None:
    with open(path, "wb") as handle:
        Python2Pickler(handle, protocol=2).dump(value)


def cifar_split(per_fine: int, offset: int = 0) -> dict[bytes, Any]:
    """The dict of a CIFAR-100 ``train``/``test`` file: ``per_fine`` images of each fine class, shuffled."""
    fine = np.random.default_rng(offset).permutation(np.repeat(np.arange(100), per_fine))
    count = len(fine)
    images = np.random.default_rng(offset + 1).integers(0, 256, size=(count, 3, 32, 32), dtype=np.uint8)
    images[:, 0, 0, 0] = fine
    images[:, 1, 0, 0] = np.arange(count) // 256
    images[:, 2, 0, 0] = np.arange(count) % 256
    return {
        b"batch_label": b"training batch 1 of 1",
        b"filenames": [f"img_{i}.png".encode() for i in range(count)],
        b"fine_labels": fine.tolist(),
        b"coarse_labels": COARSE_OF_FINE[fine].tolist(),
        b"data": images.reshape(count, 3072),
    }


def cifar_meta() -> dict[bytes, Any]:
    return {
        b"fine_label_names": [f"fine_{i:02d}".encode() for i in range(100)],
        b"coarse_label_names": [name.encode() for name in COARSE_NAMES],
    }


def write_cifar100(root: Path, train_per_fine: int = 6, test_per_fine: int = 2) -> Path:
    """``root/cifar-100-python/{train,test,meta}`` as Python-2 pickles; returns the folder."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    dump_python2(cifar_split(train_per_fine, 0), folder / "train")
    dump_python2(cifar_split(test_per_fine, 10), folder / "test")
    dump_python2(cifar_meta(), folder / "meta")
    return folder


def multimnist_content(train: int = 24, test: int = 6, scale: str = "unit") -> tuple[np.ndarray, ...]:
    """``(trainX, trainLabel, testX, testLabel)``: float64 images [N, 36, 36] (pixels in [0, 1] as multiples of
    1/255 for ``scale="unit"``, whole numbers 0..255 for ``"byte"``), labels int64 [N, 2]."""
    arrays: list[np.ndarray] = []
    for split, count in enumerate((train, test)):
        rng = np.random.default_rng(20 + split)
        pixels = rng.integers(0, 256, size=(count, 36, 36)).astype(np.float64)
        pixels[:, 0, 0] = np.arange(count) % 256
        pixels[:, 0, 1] = np.arange(count) // 256
        pixels[:, 0, 2] = split
        labels = rng.integers(0, 10, size=(count, 2)).astype(np.int64)
        arrays += [pixels / 255 if scale == "unit" else pixels, labels]
    return tuple(arrays)


def write_multimnist(root: Path, name: str = "multi_mnist.pickle", **kwargs: Any) -> Path:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        pickle.dump(multimnist_content(**kwargs), handle, protocol=pickle.HIGHEST_PROTOCOL)
    return path
