"""Data plumbing for settings.

- ``mtlscope.data.splits``: ``SplitData``, what the engine reads, and ``Split``, tensors in memory (the fast path);
- ``mtlscope.data.datasets``: ``DatasetSplit``, a map-style ``torch.utils.data.Dataset`` read through DataLoader
  workers, with a seeded train-only ``Transform``;
- ``mtlscope.data.arrays``: the conversion and checks of user arrays (``from_arrays``);
- ``mtlscope.data.fingerprint``: fingerprints of what a run trains on;
- ``mtlscope.data.formats``: readers of standard data files (IDX);
- ``mtlscope.data.image_cache``: large image sets decoded once into a memory-mapped uint8 cache keyed by the
  source files' checksums, and ``CachedImageDataset``, normalized on the fly.

The setting constructors ``from_arrays``, ``from_datasets`` and ``TaskSpec`` are in ``mtlscope.settings``.
"""

from mtlscope.data.datasets import DatasetSplit, Transform
from mtlscope.data.splits import Split, SplitData

__all__ = ["DatasetSplit", "Split", "SplitData", "Transform"]
