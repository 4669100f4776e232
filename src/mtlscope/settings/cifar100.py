"""``cifar100-mtl``: CIFAR-100's 20 coarse classes as 20 five-way tasks (Mueller et al., OPT 2022, App. A.2;
Mueller et al., TMLR 2025, App. A).

Each coarse class is a task (its name: the coarse class name of ``meta``, with every character other than a
letter, digit or ``_`` replaced by ``_``: ``aquatic_mammals``, ``fish``, ..., ``large_man_made_outdoor_things``,
``non_insect_invertebrates``, ..., ``vehicles_2``; in the order of the coarse labels 0..19) whose classes are its
5 fine classes, labelled 0..4 in increasing fine-label order (``fish``: aquarium_fish, flatfish, ray, shark,
trout = fine labels 1, 32, 67, 73, 91 -> 0..4). Multi-input layout: every image belongs to one task.

Splits per task (App. A.2): the task's 2,500 training images less ``val_size`` (500) drawn at random for
validation (per task, from ``split_seed``) -> 2,000 train; its 500 test images (the official test set) -> test.
Pixels are normalized per channel with CIFAR-100's training-set mean (0.5071, 0.4865, 0.4409) and standard
deviation (0.2673, 0.2564, 0.2762). No augmentation (the papers describe none). Default model: the CIFAR
ResNet-18 (3x3 stem, no max-pool) with a linear head per task.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import torch

from mtlscope.data.image_cache import CachedImageDataset
from mtlscope.data.sources.cifar import cifar100_arrays
from mtlscope.data.subsets import subset_split
from mtlscope.losses import cross_entropy
from mtlscope.metrics import accuracy, macro_f1
from mtlscope.options import NonNegativeInt, PositiveInt
from mtlscope.settings.constructors import TaskSpec, from_datasets
from mtlscope.settings.registry import register
from mtlscope.settings.setting import Setting

MEAN = (0.5071, 0.4865, 0.4409)
STD = (0.2673, 0.2564, 0.2762)
REFERENCE = (
    "Mueller, Dredze, Andrews. The Importance of Temperature in Multi-Task Optimization. OPT 2022 (App. A.2); "
    "Krizhevsky. Learning Multiple Layers of Features from Tiny Images. 2009"
)
DEFAULT_MODEL: dict[str, dict[str, Any]] = {"encoder": {"name": "resnet"}, "head": {"name": "linear"}}


def task_name(coarse_name: str) -> str:
    """The task name of a coarse class: ``large_man-made_outdoor_things`` -> ``large_man_made_outdoor_things``."""
    return re.sub(r"[^A-Za-z0-9_]", "_", coarse_name)


def within_task_labels(fine: np.ndarray, coarse: np.ndarray) -> tuple[np.ndarray, dict[int, list[int]]]:
    """Each image's fine label renumbered 0..k-1 within its coarse class (increasing fine-label order), and the
    fine labels of every coarse class in that order."""
    members: dict[int, list[int]] = {}
    for fine_label, coarse_label in sorted(set(zip(fine.tolist(), coarse.tolist()))):
        members.setdefault(coarse_label, []).append(fine_label)
    position = np.zeros(int(fine.max()) + 1, dtype=np.int64)
    for labels in members.values():
        position[labels] = np.arange(len(labels))
    return position[fine], members


@register("cifar100-mtl", "CIFAR-100: 20 coarse classes as 20 five-way tasks of their fine classes (real data)")
def cifar100_mtl(
    *,
    val_size: PositiveInt = 500,
    split_seed: NonNegativeInt = 0,
    num_workers: NonNegativeInt = 0,
    data_dir: str | None = None,
) -> Setting:
    data = cifar100_arrays(data_dir)
    targets, members = within_task_labels(data.fine, data.coarse)
    dataset = CachedImageDataset(data.images, torch.from_numpy(targets), mean=MEAN, std=STD, layout="NCHW")
    where = "setting 'cifar100-mtl'"
    names = [task_name(name) for name in data.coarse_names]
    if len(set(names)) != len(names):
        raise ValueError(f"{where}: coarse class names {list(data.coarse_names)} give repeated task names {names}")
    rng = np.random.default_rng(split_seed)
    specs, splits = [], {}
    for coarse_label, name in enumerate(names):
        fine_labels = members.get(coarse_label, [])
        in_task = data.coarse == coarse_label
        train_pool = np.flatnonzero(in_task & ~data.is_test)
        test = np.flatnonzero(in_task & data.is_test)
        if len(fine_labels) < 2 or len(test) == 0:
            raise ValueError(
                f"{where}: task {name!r} (coarse class {coarse_label}) has {len(fine_labels)} fine classes and "
                f"{len(test)} test images; expected several of each"
            )
        if val_size >= len(train_pool):
            raise ValueError(
                f"{where}: option val_size must be < {len(train_pool)} (task {name!r}'s training images), "
                f"got {val_size}"
            )
        chosen = rng.permutation(len(train_pool))
        val, train = np.sort(train_pool[chosen[:val_size]]), np.sort(train_pool[chosen[val_size:]])
        shown = ", ".join(f"{data.fine_names[f]} ({f})" for f in fine_labels)
        specs.append(
            TaskSpec(
                name,
                len(fine_labels),
                loss=cross_entropy(),
                metrics=(accuracy(), macro_f1()),
                description=f"coarse class {coarse_label} ({data.coarse_names[coarse_label]}): "
                f"{shown} as 0..{len(fine_labels) - 1}",
            )
        )
        splits[name] = {
            split: subset_split(dataset, index, num_workers=num_workers)
            for split, index in (("train", train), ("val", val), ("test", test))
        }
    return from_datasets(
        "cifar100-mtl",
        specs,
        splits,
        layout="multi-input",
        default_model=DEFAULT_MODEL,
        description=__doc__.strip().splitlines()[0] if __doc__ else "",
        reference=REFERENCE,
        options={"val_size": val_size, "split_seed": split_seed, "num_workers": num_workers, "data_dir": data_dir},
    )
