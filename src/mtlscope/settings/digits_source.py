"""scikit-learn's bundled handwritten digits (UCI optdigits test set, 1797 images of 8x8 pixels).

This is real data shipped inside scikit-learn, so it is available offline; it is mtlscope's embedded
data. Pixel intensities 0..16 are scaled to [0, 1].
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch import Tensor


@lru_cache(maxsize=1)
def _load() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (np.asarray(bunch.images, dtype=np.float32) / 16.0)[:, None, :, :]
    labels = np.asarray(bunch.target, dtype=np.int64)
    return images, labels


def digit_images() -> tuple[Tensor, Tensor]:
    """All 1797 images as a float32 tensor ``[N, 1, 8, 8]`` in [0, 1] and their digit labels ``[N]``."""
    images, labels = _load()
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.copy())


def split_indices(total: int, sizes: list[int], seed: int) -> list[np.ndarray]:
    """Consecutive disjoint index blocks of ``sizes`` from one seeded permutation of ``range(total)``."""
    if sum(sizes) > total:
        raise ValueError(f"split sizes {sizes} need {sum(sizes)} examples but only {total} exist")
    order = np.random.default_rng(seed).permutation(total)
    blocks, start = [], 0
    for size in sizes:
        blocks.append(order[start : start + size])
        start += size
    return blocks
