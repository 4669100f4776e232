"""``multi-mnist``, ``multi-fashion``, ``multi-fashion-mnist``: Lin et al. (2019)'s two-item image sets
(Fifty et al., Measuring and Harnessing Transference in Multi-Task Learning, §5.2 and App. D.4).

Each 36x36 image holds two overlapping items (digits or Fashion-MNIST articles): the shared-input tasks ``left``
(the upper-left item) and ``right`` (the lower-right item), 10 classes each. Splits (App. D.4): 1/6 of the
file's 120,000 training images drawn at random (from ``split_seed``) for validation -> 100,000 train / 20,000
validation; the file's 20,000 test images -> test. Pixels are scaled to [0, 1] and not normalized further, as in
Lin et al.'s code. Default model: Lin et al.'s multi-task LeNet (convolutions of 10 and 20 channels, 5x5
kernels, a shared layer of 50 units) with a linear head per task.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mtlscope.data.image_cache import CachedImageDataset
from mtlscope.data.sources.multimnist import multimnist_arrays
from mtlscope.data.subsets import subset_split
from mtlscope.losses import cross_entropy
from mtlscope.metrics import accuracy, macro_f1
from mtlscope.options import NonNegativeInt
from mtlscope.settings.constructors import TaskSpec, from_datasets
from mtlscope.settings.registry import register
from mtlscope.settings.setting import Setting

REFERENCE = (
    "Lin, Zhen, Li, Zhang, Kwong. Pareto Multi-Task Learning. NeurIPS 2019 (the data); Fifty, Amid, Zhao, Yu, "
    "Anil, Finn. Measuring and Harnessing Transference in Multi-Task Learning (App. D.4: the splits)"
)
DEFAULT_MODEL: dict[str, dict[str, Any]] = {
    "encoder": {"name": "lenet", "channels": [10, 20], "kernel_size": 5, "hidden": [50]},
    "head": {"name": "linear"},
}
#: the fraction of the training file held out for validation (App. D.4: 100k/20k/20k)
VALIDATION_FRACTION = 6


def two_item_setting(name: str, *, split_seed: int, num_workers: int, data_dir: str | None = None) -> Setting:
    """Setting ``name`` (``multi-mnist``, ``multi-fashion`` or ``multi-fashion-mnist``) from its pickle in
    ``data_dir`` (default: the data directory, ``mtlscope.data.catalog.data_directory``)."""
    data = multimnist_arrays(name, data_dir)
    targets = {"left": torch.from_numpy(data.left), "right": torch.from_numpy(data.right)}
    dataset = CachedImageDataset(data.images, targets, mean=0.0, std=1.0, layout="NHW")
    pool = np.flatnonzero(~data.is_test)
    test = np.flatnonzero(data.is_test)
    val_size = len(pool) // VALIDATION_FRACTION
    if val_size < 1 or len(test) == 0:
        raise ValueError(
            f"setting {name!r}: {len(pool)} training and {len(test)} test images; expected at least "
            f"{VALIDATION_FRACTION} training images (1/{VALIDATION_FRACTION} go to validation) and one test image"
        )
    chosen = np.random.default_rng(split_seed).permutation(len(pool))
    val, train = np.sort(pool[chosen[:val_size]]), np.sort(pool[chosen[val_size:]])
    what = {"left": "the upper-left item", "right": "the lower-right item"}
    tasks = [
        TaskSpec(task, 10, loss=cross_entropy(), metrics=(accuracy(), macro_f1()), description=f"class of {item}")
        for task, item in what.items()
    ]
    splits = {
        split: subset_split(dataset, index, num_workers=num_workers)
        for split, index in (("train", train), ("val", val), ("test", test))
    }
    return from_datasets(
        name,
        tasks,
        splits,
        layout="shared-input",
        default_model=DEFAULT_MODEL,
        description=__doc__.strip().splitlines()[0] if __doc__ else "",
        reference=REFERENCE,
        options={"split_seed": split_seed, "num_workers": num_workers, "data_dir": data_dir},
    )


@register("multi-mnist", "MultiMNIST (Lin et al. 2019): left and right digit of 36x36 images (real data)")
def multi_mnist(
    *, split_seed: NonNegativeInt = 0, num_workers: NonNegativeInt = 0, data_dir: str | None = None
) -> Setting:
    return two_item_setting("multi-mnist", split_seed=split_seed, num_workers=num_workers, data_dir=data_dir)


@register("multi-fashion", "MultiFashion (Lin et al. 2019): left and right Fashion-MNIST item (real data)")
def multi_fashion(
    *, split_seed: NonNegativeInt = 0, num_workers: NonNegativeInt = 0, data_dir: str | None = None
) -> Setting:
    return two_item_setting("multi-fashion", split_seed=split_seed, num_workers=num_workers, data_dir=data_dir)


@register("multi-fashion-mnist", "Multi-(Fashion+MNIST) (Lin et al. 2019): a Fashion item and a digit (real data)")
def multi_fashion_mnist(
    *, split_seed: NonNegativeInt = 0, num_workers: NonNegativeInt = 0, data_dir: str | None = None
) -> Setting:
    return two_item_setting("multi-fashion-mnist", split_seed=split_seed, num_workers=num_workers, data_dir=data_dir)
