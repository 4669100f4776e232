"""The ``taskonomy`` setting: five dense tasks of Taskonomy as Standley et al. (ICML 2020) train them together.

Files: Standley et al.'s layout (``mtlscope.data.sources.taskonomy``): ``<data dir>/taskonomy/<domain>/<building>/``
PNGs and the building lists ``train_models.txt``, ``val_models.txt``. Tasks (named as the domains, their letters
``s d n k t`` in the transference paper's Table 7), with the losses of their ``taskonomy_losses.py`` (the plain
ones, not the ``--rotate_loss`` variants), summed over the tasks in their training (``loss_scale: 1``):

- ``segment_semantic`` (s): 18 classes, ``cross_entropy(ignore_index=0)``; metrics ``miou`` and
  ``pixel_accuracy`` over the labelled pixels (class 0 left out);
- ``depth_zbuffer`` (d): ``l1(invalid=DEPTH_INVALID, mean_over="all")``, their ``(l1 * mask).mean()`` with the
  depth mask ``z < 2**13``; metric ``depth_abs_error`` over the masked-in pixels (normalized units);
- ``normal`` (n): ``l1(invalid=0, mean_over="all")`` on the three channels, masked by the depth mask; metrics
  ``normal_mean_angle``, ``normal_median_angle``, ``normal_within_11.25`` / ``22.5`` / ``30``;
- ``keypoints2d`` (k) and ``edge_texture`` (t): plain ``l1`` (no mask); metric ``mae``.

Each task's loss is recorded as its metric ``loss``; the sum of the five test losses is the "total test loss" of
Standley et al. and of the transference paper's Figure 4 (right) and Table 7.

Splits (their ``train_taskonomy.py``): train = every image of the buildings of ``train_models.txt`` (at most
``train_per_building`` per building, the first in name order: their ``--model-limit``); val = the first
``eval_per_building`` (1000) images of each building of ``val_models.txt``, in name order; test = the next
``eval_per_building`` of the same buildings (their ``-t`` evaluation reads images 1000 to 2000; their code has no
test building list). ``train_size`` / ``val_size`` / ``test_size`` then keep that many samples of a split drawn
without replacement by a generator seeded with ``subsample_seed`` (CPU-sized runs; the same seed gives the same
samples). ``image_size`` is the ``[height, width]`` every image is resized to (their ``--image-size``: 256, from
Taskonomy's 512x512).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch

from mtlscope.data.catalog import locate
from mtlscope.data.sources import taskonomy as source
from mtlscope.data.sources.taskonomy import (
    BUILDING_LISTS,
    DEPTH,
    DEPTH_INVALID,
    EDGES,
    KEYPOINTS,
    NORMAL,
    SEGMENTATION,
    SEGMENTATION_CLASSES,
    Sample,
    TaskonomySamples,
    building_samples,
    read_buildings,
)
from mtlscope.options import PositiveInt
from mtlscope.settings.constructors import TaskSpec, from_datasets
from mtlscope.settings.dense import NORMAL_METRICS
from mtlscope.settings.registry import register
from mtlscope.settings.setting import Setting

#: The default model: the network of Standley et al.'s ``xception_taskonomy_new.py`` at a CPU-sized width.
DEFAULT_MODEL: dict[str, dict[str, Any]] = {
    "encoder": {"name": "xception_taskonomy", "channels": [8, 16, 16, 32], "middle": 32, "representation": 32},
    "head": {"name": "taskonomy_decoder", "channels": [16, 16, 8, 8]},
}
REFERENCE = (
    "Zamir et al. Taskonomy: Disentangling Task Transfer Learning, CVPR 2018; Standley et al. Which Tasks Should Be "
    "Learned Together in Multi-task Learning?, ICML 2020 (github.com/tstandley/taskgrouping); Fifty et al. "
    "Measuring and Harnessing Transference in Multi-Task Learning, 2020 (§5.1.2, App. D.2)"
)
MissingBuildings = Literal["error", "skip"]

SPECS = [
    TaskSpec(
        SEGMENTATION,
        SEGMENTATION_CLASSES,
        loss={"name": "cross_entropy", "ignore_index": 0},
        metrics=[{"name": "miou", "ignore_index": 0}, {"name": "pixel_accuracy", "ignore_index": 0}],
        primary_metric="miou",
        description="18-class semantic segmentation (class 0 = unlabelled, ignored)",
    ),
    TaskSpec(
        DEPTH,
        1,
        loss={"name": "l1", "invalid": DEPTH_INVALID, "mean_over": "all"},
        metrics=[{"name": "depth_abs_error", "invalid": DEPTH_INVALID}],
        primary_metric="depth_abs_error",
        description="z-buffer depth (z - 1500) / 1000, masked where z >= 2**13",
    ),
    TaskSpec(
        NORMAL,
        3,
        loss={"name": "l1", "invalid": 0.0, "mean_over": "all"},
        metrics=list(NORMAL_METRICS),
        primary_metric="normal_mean_angle",
        description="surface normals in [-1, 1], masked by the depth mask (zero = masked)",
    ),
    TaskSpec(
        KEYPOINTS,
        1,
        loss="l1",
        metrics=["mae"],
        primary_metric="mae",
        description="2D keypoint heat map (k - 50) / 100",
    ),
    TaskSpec(
        EDGES,
        1,
        loss="l1",
        metrics=["mae"],
        primary_metric="mae",
        description="texture edges (e - 718) / 1070",
    ),
]


def split_samples(
    root: Path,
    train_buildings: list[str],
    val_buildings: list[str],
    *,
    eval_per_building: int,
    train_per_building: int | None,
    missing_buildings: MissingBuildings,
) -> tuple[dict[str, list[Sample]], list[str]]:
    """``({"train": ..., "val": ..., "test": ...}, skipped buildings)`` (module docstring for the rule)."""
    both = sorted(set(train_buildings) & set(val_buildings))
    if both:
        raise ValueError(
            f"taskonomy: the building {both[0]!r} is in both {BUILDING_LISTS['train']} and {BUILDING_LISTS['val']}"
        )
    skipped: list[str] = []

    def names(building: str) -> list[str]:
        if missing_buildings == "skip" and not (root / "rgb" / building).is_dir():
            skipped.append(building)
            return []
        return building_samples(root, building, "taskonomy")

    splits: dict[str, list[Sample]] = {"train": [], "val": [], "test": []}
    for building in train_buildings:
        found = names(building)
        kept = found if train_per_building is None else found[:train_per_building]
        splits["train"] += [Sample(building, name) for name in kept]
    for building in val_buildings:
        found = names(building)
        splits["val"] += [Sample(building, name) for name in found[:eval_per_building]]
        splits["test"] += [Sample(building, name) for name in found[eval_per_building : 2 * eval_per_building]]
    for split, samples in splits.items():
        if not samples:
            detail = (
                f"the validation buildings have at most eval_per_building={eval_per_building} images each (test "
                "takes the next ones); lower eval_per_building"
                if split == "test"
                else f"its buildings ({BUILDING_LISTS['train' if split == 'train' else 'val']}) hold no image"
            )
            raise ValueError(f"taskonomy: the {split} split is empty: {detail}")
    return splits, skipped


def subsample(samples: list[Sample], size: int | None, seed: int, option: str) -> list[Sample]:
    """``size`` of ``samples`` drawn without replacement by a generator seeded with ``seed``, in their order."""
    if size is None:
        return samples
    if size > len(samples):
        raise ValueError(f"taskonomy option {option}: {size} is more than the split's {len(samples)} samples")
    chosen = torch.randperm(len(samples), generator=torch.Generator().manual_seed(seed))[:size]
    return [samples[i] for i in sorted(int(i) for i in chosen)]


@register("taskonomy", "Taskonomy in Standley et al.'s layout: segmentation, depth, normals, keypoints, edges")
def taskonomy(
    *,
    image_size: list[PositiveInt] = [256, 256],  # noqa: B006 (validated options, never mutated)
    eval_per_building: PositiveInt = 1000,
    train_per_building: PositiveInt | None = None,
    train_size: PositiveInt | None = None,
    val_size: PositiveInt | None = None,
    test_size: PositiveInt | None = None,
    subsample_seed: int = 0,
    missing_buildings: MissingBuildings = "error",
    data_dir: str | None = None,
) -> Setting:
    if len(image_size) != 2:
        raise ValueError(f"taskonomy option image_size: expected [height, width], got {list(image_size)}")
    size = (int(image_size[0]), int(image_size[1]))
    paths = locate("taskonomy", data_dir)
    root = paths["rgb"].parent
    train_buildings = read_buildings(paths["train_buildings"], "taskonomy")
    val_buildings = read_buildings(paths["val_buildings"], "taskonomy")
    samples, skipped = split_samples(
        root,
        train_buildings,
        val_buildings,
        eval_per_building=eval_per_building,
        train_per_building=train_per_building,
        missing_buildings=missing_buildings,
    )
    sizes = {"train": train_size, "val": val_size, "test": test_size}
    data = {
        split: TaskonomySamples(
            root,
            subsample(chosen, sizes[split], subsample_seed, f"{split}_size"),
            size=size,
            name=f"taskonomy {split}",
        )
        for split, chosen in samples.items()
    }
    counts = ", ".join(f"{len(dataset)} {split}" for split, dataset in data.items())
    skipped_note = f"; {len(skipped)} listed buildings skipped (no rgb folder)" if skipped else ""
    return from_datasets(
        "taskonomy",
        SPECS,
        data,
        layout="shared-input",
        default_model=DEFAULT_MODEL,
        description=f"Taskonomy {size[0]}x{size[1]}: 5 dense tasks (s, d, n, k, t); {counts} images{skipped_note}",
        reference=REFERENCE,
        options={
            "image_size": list(image_size),
            "eval_per_building": eval_per_building,
            "train_per_building": train_per_building,
            "train_size": train_size,
            "val_size": val_size,
            "test_size": test_size,
            "subsample_seed": subsample_seed,
            "missing_buildings": missing_buildings,
            "data_dir": data_dir,
        },
    )


__all__ = ["DEFAULT_MODEL", "SPECS", "source", "split_samples", "subsample", "taskonomy"]
