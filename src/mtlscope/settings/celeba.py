"""``celeba``: CelebA's 40 binary face attributes as 40 tasks on the same 64x64 images (shared-input layout).

The setting of Mueller et al. (TMLR 2025, §2.2 and App. A; 2022, App. A.1) and of Fifty et al.'s task-grouping
experiments (2020, §5.1.1 and App. D.1): the aligned CelebA images resized to 64x64 RGB
(``mtlscope.data.sources.celeba`` for the preprocessing), the official partition (162,770 / 19,867 / 19,962
images for train / val / test), one binary classification task per attribute, a ResNet-18 encoder with one linear
head per task.

Task names are the attribute names of ``list_attr_celeba.txt`` lower-cased, ``5_o_Clock_Shadow`` spelled
``five_o_clock_shadow``. ``attributes`` picks the tasks: ``"all"`` (the 40, in the file's order), ``"grouping"``
(the 9 attributes of the task-grouping experiments: Fifty et al. do not list theirs, "available upon request";
these are the ones of the same authors' TAG code, google-research/tag ``celeba/CelebA.ipynb``), or a list of task
names. Each task's head has 2 outputs trained with softmax cross-entropy (``loss="cross_entropy"``, as the TAG
code's ``Dense(2)`` with ``softmax_cross_entropy_with_logits``), or 1 output with the sigmoid binary
cross-entropy (``loss="binary_cross_entropy"``); labels are 0 (the file's -1) and 1. Metrics: accuracy
(primary), balanced accuracy and the F1 of the positive class (Mueller et al. 2022 report F1 for CelebA's
imbalanced attributes).

The images are decoded once per split into the image cache (``cache_directory()``), with a progress bar, and
read from its memory map; pixel values are scaled to [0, 1] (``x / 255``, as the TAG code's
``convert_image_dtype``), no mean subtraction. ``train_size``, ``val_size``, ``test_size`` keep at most that many
images of each split, the first in the partition file's order (CPU-sized subsets; the defaults are the full
official splits, and each subset is a cache entry of its own).
"""

from __future__ import annotations

from typing import Literal, Union

import numpy as np
import torch

from mtlscope.data.catalog import cache_directory, locate
from mtlscope.data.image_cache import CachedImageDataset
from mtlscope.data.sources import celeba as source
from mtlscope.metrics import resolve_metric
from mtlscope.options import PositiveInt
from mtlscope.settings.constructors import TaskSpec, from_datasets
from mtlscope.settings.registry import register
from mtlscope.settings.setting import Setting


def task_name(attribute: str) -> str:
    """The task name of a ``list_attr_celeba.txt`` attribute: lower-cased, ``5_o_Clock_Shadow`` ->
    ``five_o_clock_shadow`` (a name that does not start with a digit)."""
    name = attribute.lower()
    return "five" + name[1:] if name.startswith("5_") else name


#: The 40 task names, in the order of ``list_attr_celeba.txt``.
TASKS: tuple[str, ...] = tuple(task_name(attribute) for attribute in source.ATTRIBUTES)
#: Named task subsets of ``attributes``.
SUBSETS: dict[str, tuple[str, ...]] = {
    "all": TASKS,
    # the 9 attributes of the TAG CelebA code (Fifty et al.), in its order
    "grouping": (
        "five_o_clock_shadow",
        "black_hair",
        "blond_hair",
        "brown_hair",
        "goatee",
        "mustache",
        "no_beard",
        "rosy_cheeks",
        "wearing_hat",
    ),
}
DEFAULT_MODEL = {"encoder": {"name": "resnet", "stem": "maxpool"}, "head": {"name": "linear"}}
REFERENCE = (
    "Liu et al. Deep Learning Face Attributes in the Wild. ICCV 2015; Fifty et al. Measuring and Harnessing "
    "Transference in Multi-Task Learning, 2020 (App. D.1); Mueller et al. Can Optimization Trajectories Explain "
    "Multi-Task Transfer? TMLR 2025 (App. A)"
)


def chosen_tasks(attributes: str | list[str]) -> tuple[str, ...]:
    """The task names ``attributes`` names (a subset name or a list of task names); ``ValueError`` (one line)
    for an unknown name, a repeated one or an empty list."""
    if isinstance(attributes, str):
        if attributes not in SUBSETS:
            raise ValueError(
                f"celeba option attributes: unknown subset {attributes!r}; expected one of "
                f"{', '.join(repr(name) for name in SUBSETS)} or a list of attribute task names"
            )
        return SUBSETS[attributes]
    if not attributes:
        raise ValueError("celeba option attributes: an empty list; name at least one attribute")
    for name in attributes:
        if name not in TASKS:
            raise ValueError(f"celeba option attributes: unknown attribute {name!r}; the 40 are {', '.join(TASKS)}")
    if len(set(attributes)) != len(attributes):
        repeated = next(name for name in attributes if attributes.count(name) > 1)
        raise ValueError(f"celeba option attributes: {repeated!r} is listed twice")
    return tuple(attributes)


@register("celeba", "CelebA: 40 binary face-attribute tasks on 64x64 images, official partition (real data)")
def celeba(
    *,
    attributes: Union[Literal["all", "grouping"], list[str]] = "all",  # noqa: UP007 (a runtime annotation)
    train_size: PositiveInt = source.OFFICIAL_SIZES["train"],
    val_size: PositiveInt = source.OFFICIAL_SIZES["val"],
    test_size: PositiveInt = source.OFFICIAL_SIZES["test"],
    loss: Literal["cross_entropy", "binary_cross_entropy"] = "cross_entropy",
    data_dir: str | None = None,
) -> Setting:
    tasks = chosen_tasks(attributes)
    paths = locate("celeba", data_dir)
    annotations = source.read_annotations(paths["attributes"], paths["partition"])
    limits = {"train": train_size, "val": val_size, "test": test_size}
    columns = [TASKS.index(name) for name in tasks]
    data = {}
    for split, limit in limits.items():
        files = annotations.files[split][:limit]
        if not files:
            raise ValueError(f"celeba: split {split} has no images in {paths['partition']}")
        images = source.cached_split_images(paths["images"], files, split, cache_directory())
        labels = annotations.labels[split][: len(files)]
        targets = {
            name: torch.from_numpy(np.ascontiguousarray(labels[:, column]).astype(np.int64))
            for name, column in zip(tasks, columns)
        }
        if loss == "binary_cross_entropy":
            targets = {name: values.to(torch.float32) for name, values in targets.items()}
        data[split] = CachedImageDataset(images, targets, mean=0.0, std=1.0, layout="NCHW")
    outputs = 2 if loss == "cross_entropy" else 1
    metrics = [resolve_metric(name) for name in ("accuracy", "balanced_accuracy", "f1")]
    specs = [
        TaskSpec(
            name,
            outputs,
            loss=loss,
            metrics=metrics,
            primary_metric="accuracy",
            description=f"CelebA attribute {source.ATTRIBUTES[TASKS.index(name)]} (1 = present)",
        )
        for name in tasks
    ]
    return from_datasets(
        "celeba",
        specs,
        data,
        layout="shared-input",
        default_model=DEFAULT_MODEL,
        description=f"CelebA 64x64: {len(tasks)} binary attribute tasks, official partition",
        reference=REFERENCE,
        options={
            "attributes": attributes if isinstance(attributes, str) else list(attributes),
            "train_size": train_size,
            "val_size": val_size,
            "test_size": test_size,
            "loss": loss,
            "data_dir": data_dir,
        },
    )
