"""``mnists``: MNISTS, three MNIST-like tasks (Hsieh & Chen 2018), as in Mueller et al., "The Importance of
Temperature in Multi-Task Optimization" (OPT 2022), App. A.3.

- ``mnist``: handwritten digits 0-9 (LeCun et al. 1998);
- ``fashion``: Fashion-MNIST's 10 clothing classes (Xiao et al. 2017);
- ``notmnist``: notMNIST's letters A-J (Bulatov 2011).

Sizes (App. A.3: "each consisting of 50,000 28x28 greyscale training images, and 10,000 validation and test
images"): ``train_size`` (50,000) and ``val_size`` (10,000) drawn disjointly from each dataset's official
training images with ``split_seed``, ``test_size`` (10,000) from its official test images (all of them at the
default). notMNIST from a folder (``notMNIST_large``: the paper's 70,000 letters need it) draws all three from its
one pool; from the IDX conversion like the others. The paper calls notMNIST a 26-class task (a-z); the released
notMNIST has the ten letters A-J, so the task has 10 classes here.

The notmnist task is deferred (``mtlscope.settings.mnist_family``): ``mnist`` and ``fashion`` run without notMNIST
on disk. Images 1x28x28, each dataset normalized by its training pixel mean and std (MNIST 0.1307/0.3081,
Fashion-MNIST 0.2860/0.3530, notMNIST measured on its training letters). Multi-input layout. Default model: the
paper's LeNet (``multilenet`` encoder: 2 shared convolutions and a shared fully connected layer; ``multilenet``
heads: two fully connected layers; dropout 0.5).
"""

from __future__ import annotations

import numpy as np

from mtlscope.data.sources.mnist import FASHION_MNIST_MEAN, FASHION_MNIST_STD, MNIST_MEAN, MNIST_STD, idx_split
from mtlscope.data.sources.notmnist import NotMNISTSource
from mtlscope.options import NonNegativeInt, PositiveInt
from mtlscope.settings.constructors import from_datasets
from mtlscope.settings.mnist_family import classification, draw, image_dataset, notmnist_task, with_tasks
from mtlscope.settings.registry import register
from mtlscope.settings.setting import Setting

REFERENCE = "Mueller, Dredze, Andrews. The Importance of Temperature in Multi-Task Optimization. OPT 2022"
DEFAULT_MODEL = {"encoder": {"name": "multilenet"}, "head": {"name": "multilenet"}}


@register("mnists", "MNISTS: mnist + fashion + notmnist, three 10-class 28x28 tasks (real MNIST-like data)")
def mnists(
    *,
    train_size: PositiveInt = 50_000,
    val_size: PositiveInt = 10_000,
    test_size: PositiveInt = 10_000,
    split_seed: NonNegativeInt = 0,
    notmnist_source: NotMNISTSource = "auto",
    data_dir: str | None = None,
) -> Setting:
    data = {}
    for offset, (task, dataset, mean, std) in enumerate(
        (("mnist", "mnist", MNIST_MEAN, MNIST_STD), ("fashion", "fashion-mnist", FASHION_MNIST_MEAN, FASHION_MNIST_STD))
    ):
        train_pool, test_pool = idx_split(dataset, "train", data_dir), idx_split(dataset, "test", data_dir)
        rng = np.random.default_rng([split_seed, offset])
        where = f"setting 'mnists', task {task!r}"
        train, val = draw(
            len(train_pool), [("train", train_size), ("val", val_size)], rng, f"{where}: {train_pool.origin}"
        )
        (test,) = draw(len(test_pool), [("test", test_size)], rng, f"{where}: {test_pool.origin}")
        data[task] = {
            "train": image_dataset(train_pool, train, mean, std),
            "val": image_dataset(train_pool, val, mean, std),
            "test": image_dataset(test_pool, test, mean, std),
        }
    tasks = [
        classification("mnist", "MNIST handwritten digits 0-9"),
        classification("fashion", "Fashion-MNIST clothing classes"),
    ]
    setting = from_datasets(
        "mnists",
        tasks,
        data,
        layout="multi-input",
        default_model=DEFAULT_MODEL,
        description="MNISTS: MNIST, Fashion-MNIST and notMNIST as three tasks",
        reference=REFERENCE,
        options={
            "train_size": train_size,
            "val_size": val_size,
            "test_size": test_size,
            "split_seed": split_seed,
            "notmnist_source": notmnist_source,
            "data_dir": data_dir,
        },
    )
    sizes = {"train": train_size, "val": val_size, "test": test_size}
    notmnist = notmnist_task("mnists", sizes, [split_seed, 2], source=notmnist_source, data_dir=data_dir)
    return with_tasks(setting, [notmnist])
