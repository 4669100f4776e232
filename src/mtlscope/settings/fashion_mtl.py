"""``fashion-mtl``: FashionMTL, the synthetic multi-task setting of Mueller et al. (TMLR 2025, §2.2 and App. A).

Fashion-MNIST (Xiao et al. 2017) split in two tasks, plus a noise task and an auxiliary task:

- the official 60,000 training images are shuffled with ``split_seed`` and cut into ``fashion1`` training
  (``train_size``, 25,000), ``fashion2`` training (25,000), ``fashion1`` validation (``val_size``, 5,000) and
  ``fashion2`` validation (5,000) — disjoint, all 60,000 images used at the paper's sizes; the official 10,000
  test images are shuffled and cut into ``fashion1`` and ``fashion2`` test (``test_size``, 5,000 each). The paper
  gives the sizes ("two splits of 25,000 samples each", "for each task we have 5,000 validation and test
  samples"), not where validation and test come from: this is the construction that uses the official
  partition and exactly all of its images.
- ``noisy-fashion``: fashion2's images (train, validation and test) with fashion2's labels randomly permuted
  across the images of each split (§2.2 "randomly permute the labels of the Fashion2 data", App. A "random
  labels ... noise that must be memorized"): same class counts, no information about the image. The
  permutations come from ``split_seed + 1``; the notmnist draws from ``[split_seed, 2]``.
- ``notmnist``: ``notmnist_train_size`` (25,000) notMNIST letters A-J, with ``val_size``/``test_size`` validation
  and test letters (App. A: "the intermediate task configuration"). Deferred: its files are located and decoded
  only when a run uses the task (``mtlscope.settings.mnist_family``), so the other tasks run without notMNIST.

Images 1x28x28, normalized with Fashion-MNIST's training pixel mean 0.2860 and std 0.3530 (notMNIST: its
training letters' own). Multi-input layout. Default model: ``lenet5`` encoder (the main paper's "simple lenet
CNN whose penultimate representation is passed to task-specific linear classification layers") and linear heads.
"""

from __future__ import annotations

import numpy as np

from mtlscope.data.image_cache import CachedImageDataset
from mtlscope.data.sources.mnist import FASHION_MNIST_MEAN, FASHION_MNIST_STD, ImagePool, idx_split
from mtlscope.data.sources.notmnist import NotMNISTSource
from mtlscope.options import NonNegativeInt, PositiveInt
from mtlscope.settings.constructors import from_datasets
from mtlscope.settings.mnist_family import (
    classification,
    draw,
    image_dataset,
    notmnist_task,
    permuted,
    relabelled,
    with_tasks,
)
from mtlscope.settings.registry import register
from mtlscope.settings.setting import Setting

REFERENCE = "Mueller, Dredze, Andrews. Can Optimization Trajectories Explain Multi-Task Transfer? TMLR 2025"
DEFAULT_MODEL = {"encoder": {"name": "lenet5"}, "head": {"name": "linear"}}


@register("fashion-mtl", "FashionMTL: fashion1 + fashion2 + noisy-fashion + notmnist (real Fashion-MNIST)")
def fashion_mtl(
    *,
    train_size: PositiveInt = 25_000,
    val_size: PositiveInt = 5_000,
    test_size: PositiveInt = 5_000,
    notmnist_train_size: PositiveInt = 25_000,
    split_seed: NonNegativeInt = 0,
    notmnist_source: NotMNISTSource = "auto",
    data_dir: str | None = None,
) -> Setting:
    train_pool = idx_split("fashion-mnist", "train", data_dir)
    test_pool = idx_split("fashion-mnist", "test", data_dir)
    rng = np.random.default_rng(split_seed)
    train1, train2, val1, val2 = draw(
        len(train_pool),
        [
            ("fashion1 train", train_size),
            ("fashion2 train", train_size),
            ("fashion1 val", val_size),
            ("fashion2 val", val_size),
        ],
        rng,
        f"setting 'fashion-mtl': {train_pool.origin}",
    )
    test1, test2 = draw(
        len(test_pool),
        [("fashion1 test", test_size), ("fashion2 test", test_size)],
        rng,
        f"setting 'fashion-mtl': {test_pool.origin}",
    )

    def dataset(pool: ImagePool, index: np.ndarray) -> CachedImageDataset:
        return image_dataset(pool, index, FASHION_MNIST_MEAN, FASHION_MNIST_STD)

    noise = np.random.default_rng(split_seed + 1)
    fashion2 = {
        "train": dataset(train_pool, train2),
        "val": dataset(train_pool, val2),
        "test": dataset(test_pool, test2),
    }
    noisy = {
        split: relabelled(fashion2[split], permuted(np.asarray(fashion2[split].targets), noise))
        for split in ("train", "val", "test")
    }
    data = {
        "fashion1": {
            "train": dataset(train_pool, train1),
            "val": dataset(train_pool, val1),
            "test": dataset(test_pool, test1),
        },
        "fashion2": fashion2,
        "noisy-fashion": noisy,
    }
    tasks = [
        classification("fashion1", "Fashion-MNIST, first half of the training images (the target task)"),
        classification("fashion2", "Fashion-MNIST, second half (more in-distribution data: positive transfer)"),
        classification("noisy-fashion", "fashion2's images with labels permuted across images (noise to memorize)"),
    ]
    options = {
        "train_size": train_size,
        "val_size": val_size,
        "test_size": test_size,
        "notmnist_train_size": notmnist_train_size,
        "split_seed": split_seed,
        "notmnist_source": notmnist_source,
        "data_dir": data_dir,
    }
    setting = from_datasets(
        "fashion-mtl",
        tasks,
        data,
        layout="multi-input",
        default_model=DEFAULT_MODEL,
        description=__doc__.strip().splitlines()[0] if __doc__ else "",
        reference=REFERENCE,
        options=options,
    )
    sizes = {"train": notmnist_train_size, "val": val_size, "test": test_size}
    return with_tasks(
        setting, [notmnist_task("fashion-mtl", sizes, [split_seed, 2], source=notmnist_source, data_dir=data_dir)]
    )
