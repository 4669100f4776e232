"""MNIST and Fashion-MNIST: their catalog entries and the reader of their IDX files.

Both datasets are four IDX files (``mtlscope.data.formats.read_idx``): ``train-images-idx3-ubyte`` (60,000
images of 28x28 uint8 pixels), ``train-labels-idx1-ubyte`` (60,000 uint8 labels 0-9) and the ``t10k-`` pair
(10,000 each), gzip-compressed as published or raw. They are looked for in the data directory in the official
flat layout (``fashion-mnist/train-images-idx3-ubyte.gz``, ``mnist/...``) and in torchvision's layout
(``FashionMNIST/raw/...``, ``MNIST/raw/...``), each gzipped or not; the sizes and md5 checksums in the catalog are
those of the official ``.gz`` files.

``idx_split(dataset, split)`` returns an ``ImagePool``: the images, decoded once into the image cache
(``cached_images``; a progress line while it decodes) and memory-mapped, and the labels, after checking that the
files are what the dataset should be: uint8 images ``[N, 28, 28]``, uint8 labels ``[N]`` in ``0..9``, as many
labels as images. Anything else is a ``ValueError`` of one line naming the file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from mtlscope.data.catalog import DataFile, DatasetInfo, cache_directory, locate, register_dataset
from mtlscope.data.fingerprint import combine, tensor_digest
from mtlscope.data.formats import read_idx
from mtlscope.data.image_cache import cached_images, entry_key
from mtlscope.progress import Progress

#: the IDX files of an MNIST-format dataset: key -> official file name
IDX_FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IMAGE_SIZE = 28
#: number of classes of every MNIST-format dataset here (digits 0-9, clothing classes, letters A-J)
NUM_CLASSES = 10

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
# Pixel mean and standard deviation of the official 60,000 training images, scaled to [0, 1].
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081

FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"  # torchvision's mirror of yann.lecun.com/exdb/mnist


def idx_candidates(folders: Sequence[str], filename: str) -> tuple[str, ...]:
    """Paths of an IDX file under each of ``folders``, gzipped then raw, in that order."""
    return tuple(f"{folder}/{filename}{suffix}" for folder in folders for suffix in (".gz", ""))


def _idx_dataset(
    name: str,
    description: str,
    source: str,
    reference: str,
    folders: Sequence[str],
    url: str | None,
    facts: dict[str, tuple[int, str]] | None,
) -> DatasetInfo:
    files = []
    for key, filename in IDX_FILES.items():
        size, md5 = facts[key] if facts else (None, None)
        files.append(
            DataFile(
                key,
                idx_candidates(folders, filename),
                size=size,
                md5=md5,
                url=f"{url}{filename}.gz" if url else None,
            )
        )
    return register_dataset(DatasetInfo(name, description, source, reference, tuple(files)))


FASHION_MNIST = _idx_dataset(
    "fashion-mnist",
    "Fashion-MNIST: 70,000 28x28 greyscale images of 10 clothing classes (60,000 train, 10,000 test), IDX files",
    "https://github.com/zalandoresearch/fashion-mnist (" + FASHION_MNIST_URL + ")",
    "Xiao, Rasul, Vollgraf. Fashion-MNIST: a novel image dataset for benchmarking machine learning algorithms, 2017",
    ("fashion-mnist", "FashionMNIST/raw"),
    FASHION_MNIST_URL,
    {
        "train_images": (26421880, "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
        "train_labels": (29515, "25c81989df183df01b3e8a0aad5dffbe"),
        "test_images": (4422102, "bef4ecab320f06d8554ea6380940ec79"),
        "test_labels": (5148, "bb300cfdad3c16e7a12a480ee83cd310"),
    },
)
MNIST = _idx_dataset(
    "mnist",
    "MNIST: 70,000 28x28 greyscale images of handwritten digits 0-9 (60,000 train, 10,000 test), IDX files",
    "http://yann.lecun.com/exdb/mnist/ (mirror " + MNIST_URL + ")",
    "LeCun, Bottou, Bengio, Haffner. Gradient-based learning applied to document recognition, 1998",
    ("mnist", "MNIST/raw"),
    MNIST_URL,
    {
        "train_images": (9912422, "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
        "train_labels": (28881, "d53e105ee54ea40749a09fcbcd1e9432"),
        "test_images": (1648877, "9fb629c4189551a2d022fa330f9573f3"),
        "test_labels": (4542, "ec29112dd5afa0611ce80d1b7f02629c"),
    },
)


class ImagePool:
    """Labelled 28x28 uint8 images a setting draws its splits from.

    ``rows`` is uint8 ``[N, 28, 28]`` (an IDX cache entry) or ``[N, 785]`` (784 pixels then the label, the notMNIST
    folder cache); ``labels`` int64 ``[N]``; ``key`` the identity of the data (cache key and labels), which the
    datasets made from it use as their fingerprint. ``images(index)`` copies only the indexed rows.
    """

    def __init__(self, rows: np.ndarray, labels: np.ndarray, key: str, origin: str) -> None:
        self.rows, self.labels, self.key, self.origin = rows, labels, key, origin

    def __len__(self) -> int:
        return len(self.labels)

    def images(self, index: np.ndarray) -> np.ndarray:
        """uint8 ``[len(index), 28, 28]``, a copy of the indexed rows (the memory map's other pages are not read)."""
        rows = self.rows[np.asarray(index, dtype=np.int64)]
        return np.ascontiguousarray(rows[:, : IMAGE_SIZE * IMAGE_SIZE]).reshape(-1, IMAGE_SIZE, IMAGE_SIZE)


def pool_key(images: np.ndarray, labels: np.ndarray) -> str:
    """The identity of a pool: its cache entry's key (else the images' digest) and its labels' digest."""
    images_key = entry_key(images) or tensor_digest(torch.from_numpy(np.ascontiguousarray(images)))
    return combine({"images": images_key, "labels": tensor_digest(torch.from_numpy(labels))})


def check_idx_images(images: np.ndarray, path: Path) -> np.ndarray:
    """``images`` if it is uint8 ``[N, 28, 28]`` with N >= 1; else a one-line ``ValueError`` naming ``path``."""
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE) or not len(images):
        raise ValueError(
            f"{path}: holds {images.dtype} {list(images.shape)}; expected uint8 images [N, {IMAGE_SIZE}, {IMAGE_SIZE}]"
        )
    return images


def read_idx_labels(path: Path, count: int, classes: int = NUM_CLASSES) -> np.ndarray:
    """The labels of IDX file ``path`` as int64 ``[count]``, checked: uint8, 1-D, ``count`` of them, in range."""
    labels = read_idx(path)
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise ValueError(f"{path}: holds {labels.dtype} {list(labels.shape)}; expected uint8 labels [N]")
    if len(labels) != count:
        raise ValueError(f"{path}: {len(labels)} labels for {count} images; expected one label per image")
    if len(labels) and int(labels.max()) >= classes:
        raise ValueError(f"{path}: label {int(labels.max())} out of range; expected 0..{classes - 1}")
    return labels.astype(np.int64)


def _decode_idx_images(paths: Sequence[Path]) -> np.ndarray:
    with Progress(1, f"decoding {paths[0].name}", unit="file") as bar:
        images = check_idx_images(read_idx(paths[0]), paths[0])
        bar.advance()
    return images


def idx_images(path: Path, name: str, cache_dir: str | os.PathLike[str] | None = None) -> np.ndarray:
    """The uint8 images ``[N, 28, 28]`` of IDX file ``path``, decoded once into the image cache (memory-mapped)."""
    images = cached_images([path], _decode_idx_images, cache_directory(cache_dir), decoder="idx-images-28/1", name=name)
    return check_idx_images(images, path)


def idx_split(
    dataset: str,
    split: str,
    data_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> ImagePool:
    """The images (uint8 ``[N, 28, 28]``, memory-mapped) and labels (int64 ``[N]``) of the ``"train"`` or
    ``"test"`` files of the
    MNIST-format catalog dataset ``dataset`` (``mnist``, ``fashion-mnist``, ``notmnist-idx``).

    Raises ``MissingDataError`` (one line) for a missing file, ``ValueError`` (one line naming the file) for a
    truncated or malformed one.
    """
    if split not in ("train", "test"):
        raise ValueError(f"{dataset}: split must be 'train' or 'test', got {split!r}")
    paths = locate(dataset, data_dir, keys=(f"{split}_images", f"{split}_labels"))
    images = idx_images(paths[f"{split}_images"], f"{dataset}-{split}", cache_dir)
    labels = read_idx_labels(paths[f"{split}_labels"], len(images))
    return ImagePool(images, labels, pool_key(images, labels), f"{dataset} {split} files")
