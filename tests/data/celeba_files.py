"""A tiny CelebA in exactly the official layout, for the tests (JPEGs written with PIL, the two text files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mtlscope.data.sources.celeba import ATTRIBUTES

#: split code of each image, in file order: 6 train, 3 val, 3 test, interleaved as nothing guarantees order
PARTITION = [0, 0, 1, 0, 2, 0, 1, 0, 2, 0, 1, 2]


def file_name(index: int) -> str:
    return f"{index + 1:06d}.jpg"


def labels_of(count: int, seed: int = 0) -> np.ndarray:
    """±1 labels [count, 40]; every attribute has both values among the images."""
    values = np.random.default_rng(seed).choice([-1, 1], size=(count, len(ATTRIBUTES)))
    values[0], values[1] = 1, -1
    return values


def write_celeba(root: Path, *, count: int = len(PARTITION), size: tuple[int, int] = (178, 218), seed: int = 0) -> dict:
    """Write ``img_align_celeba/`` (``count`` JPEGs of ``size`` (width, height)), ``list_attr_celeba.txt`` and
    ``list_eval_partition.txt`` under ``root``; return ``{"labels": ±1 [count, 40], "pixels": [count, H, W, 3]}``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = root / "img_align_celeba"
    images.mkdir(parents=True, exist_ok=True)
    width, height = size
    pixels = np.empty((count, height, width, 3), dtype=np.uint8)
    for index in range(count):
        # smooth content (JPEG keeps it nearly exactly): a per-image colour gradient
        y, x = np.mgrid[0:height, 0:width]
        base = rng.integers(0, 160, size=3)
        image = np.stack([(base[c] + (x * (c + 1) + y * (3 - c)) * 60 // (width + height)) for c in range(3)], -1)
        pixels[index] = image.astype(np.uint8)
        Image.fromarray(pixels[index]).save(images / file_name(index), format="JPEG", quality=95)
    labels = labels_of(count, seed)
    rows = [f"{count}", " ".join(ATTRIBUTES) + " "]
    rows += [file_name(i) + " " + " ".join(f"{v:2d}" for v in labels[i]) for i in range(count)]
    (root / "list_attr_celeba.txt").write_text("\n".join(rows) + "\n")
    partition = PARTITION[:count] if count <= len(PARTITION) else [0] * count
    (root / "list_eval_partition.txt").write_text("".join(f"{file_name(i)} {partition[i]}\n" for i in range(count)))
    return {"labels": labels, "pixels": pixels, "partition": partition}
