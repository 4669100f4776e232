"""Splits that are index subsets of one image dataset, fingerprinted without reading the images.

``subset_split(dataset, indices)`` is a ``DatasetSplit`` over ``torch.utils.data.Subset(dataset, indices)``
(batches are read through the dataset's ``__getitems__`` in one gather) whose fingerprint is the dataset's own
``fingerprint()`` (for a ``CachedImageDataset``: the cache key of the source files, the normalization and the
targets) combined with the sha256 of the indices: building a setting never hashes the images again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from mtlscope.data.datasets import DatasetSplit, Transform
from mtlscope.data.fingerprint import combine, tensor_digest


def subset_split(
    dataset: Dataset[Any],
    indices: Sequence[int] | np.ndarray,
    *,
    train_transform: Transform | None = None,
    num_workers: int = 0,
) -> DatasetSplit:
    """The examples ``indices`` of ``dataset`` (which must have ``fingerprint()``) as a ``DatasetSplit``."""
    index = np.asarray(indices, dtype=np.int64)
    if index.ndim != 1:
        raise ValueError(f"subset_split indices: expected a 1-D sequence of integers, got shape {index.shape}")
    fingerprint = getattr(dataset, "fingerprint", None)
    if not callable(fingerprint):
        raise ValueError(f"subset_split: {type(dataset).__name__} has no fingerprint() method")
    digest = combine({"dataset": str(fingerprint()), "indices": tensor_digest(torch.from_numpy(index))})
    return DatasetSplit(
        Subset(dataset, index.tolist()),
        train_transform=train_transform,
        num_workers=num_workers,
        fingerprint=digest,
    )
