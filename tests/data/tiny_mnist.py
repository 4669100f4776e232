"""Tiny MNIST-format datasets written in exactly the official formats, for the loaders' and settings' tests.

Every image carries its identity in its pixels: pixel [0, 0] and [0, 1] hold the image's index (little-endian,
two bytes), pixel [0, 2] a tag of the file (1 train, 2 test) and pixel [27, 27] ``25 * label``; the rest is
seeded noise. ``image_ids`` reads the identity back from normalized items.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
from PIL import Image

NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
TAGS = {"train": 1, "test": 2}


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def images_and_labels(count: int, tag: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
    labels = (np.arange(count) % 10).astype(np.uint8)
    rng.shuffle(labels)
    index = np.arange(count)
    images[:, 0, 0], images[:, 0, 1], images[:, 0, 2] = index % 256, index // 256, tag
    images[:, 27, 27] = labels * 25
    return images, labels


def write_idx_dataset(
    folder: Path, *, train: int = 60, test: int = 20, gz: bool = True, seed: int = 0
) -> dict[str, np.ndarray]:
    """The four IDX files of a tiny dataset in ``folder`` (gzipped or raw); returns the arrays written."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, count in (("train", train), ("test", test)):
        images, labels = images_and_labels(count, TAGS[split], seed + TAGS[split])
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    for key, name in NAMES.items():
        data = idx_bytes(arrays[key])
        (folder / (name + (".gz" if gz else ""))).write_bytes(gzip.compress(data) if gz else data)
    return arrays


def write_notmnist_folder(folder: Path, per_letter: int = 4, unreadable: int = 1, seed: int = 5) -> np.ndarray:
    """``folder/A..J/*.png`` (``per_letter`` readable 28x28 greyscale PNGs each) and ``unreadable`` damaged files in
    A; returns the readable images ``[10 * per_letter, 28, 28]`` in the order letters then file names."""
    rng = np.random.default_rng(seed)
    written = []
    for label, letter in enumerate("ABCDEFGHIJ"):
        (folder / letter).mkdir(parents=True, exist_ok=True)
        for number in range(per_letter):
            pixels = rng.integers(0, 256, (28, 28), dtype=np.uint8)
            index = label * per_letter + number
            pixels[0, 0], pixels[0, 1], pixels[0, 2], pixels[27, 27] = index % 256, index // 256, 3, label * 25
            Image.fromarray(pixels, mode="L").save(folder / letter / f"font{number:03d}.png")
            written.append(pixels)
    for number in range(unreadable):
        (folder / "A" / f"broken{number}.png").write_bytes(b"\x89PNG\r\n\x1a\n" if number % 2 else b"")
    return np.stack(written)


def image_ids(inputs: np.ndarray, mean: float, std: float) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, tags)`` of normalized ``[B, 1, 28, 28]`` inputs (module docstring)."""
    pixels = np.rint((np.asarray(inputs)[:, 0] * std + mean) * 255).astype(np.int64)
    return pixels[:, 0, 0] + 256 * pixels[:, 0, 1], pixels[:, 0, 2]
