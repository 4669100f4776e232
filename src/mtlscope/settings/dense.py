"""Dense-prediction settings on MTAN's preprocessed files: ``cityscapes`` and ``nyuv2`` (shared-input).

Both read the per-sample ``.npy`` folders of MTAN's releases (``mtlscope.data.sources.mtan``) from
``<data dir>/cityscapes/`` and ``<data dir>/nyuv2/``. Every task predicts a map at the input's resolution; the
task names are the same in both settings:

- ``semantic_segmentation``: one class per pixel, -1 = no label; ``cross_entropy(ignore_index=-1)``; metrics
  ``miou`` (primary) and ``pixel_accuracy`` (both ignoring -1). Cityscapes: 7 classes (``label_7/``, Sener &
  Koltun's and the papers' setup) or 19 (``classes=19``: ``label_19/``); NYUv2: 13 classes (``label/``).
- ``depth``: one value per pixel (Cityscapes: disparity; NYUv2: depth), 0 = no measurement; ``l1(invalid=0)``;
  metrics ``depth_abs_error`` (primary) and ``depth_rel_error``, over the measured pixels.
- ``instance_segmentation`` (Cityscapes, when ``instance/`` folders exist; ``instance=True`` requires them):
  the proxy task of Sener & Koltun (2018): each pixel of an instance regresses its offset ``(dy, dx)``, in
  pixels, to its instance's centre of mass; 250 outside every instance; ``l1(invalid=250)``; metric
  ``instance_offset_error``.
- ``normal`` (NYUv2): the unit surface normal of each pixel, ``[3, H, W]``, zero where unknown; ``cosine``;
  metrics ``normal_mean_angle`` (primary), ``normal_median_angle``, ``normal_within_11.25``, ``_22.5``, ``_30``.

Splits (Mueller et al. 2025, App. A; 2022, App. A.4): the official validation set (``val/``) is the test split;
the validation split is ``val_size`` images held out from ``train/`` by a generator seeded with ``split_seed``
(``validation="held_out"``, the default), or the official validation set itself (``validation="official"``:
train on every training image and score the official validation set as both val and test, what the temperature
paper reports). ``train_size`` keeps the first that many training images after the hold-out (CPU-sized runs).

Images are ``[3, H, W]`` floats in [0, 1], no normalization (MTAN's loaders do none). ``image_size`` is the
expected ``[H, W]`` (128x256 and 288x384, MTAN's sizes; other sizes for your own preprocessing or tests).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from mtlscope.data.catalog import locate
from mtlscope.data.sources import mtan
from mtlscope.data.sources.mtan import Field, SampleFolders, held_out, sample_count
from mtlscope.options import PositiveInt
from mtlscope.settings.constructors import TaskSpec, from_datasets
from mtlscope.settings.registry import register
from mtlscope.settings.setting import Setting

#: The default model of both settings: the CPU-sized SegNet-style encoder-decoder with a conv head per task.
DEFAULT_MODEL = {"encoder": {"name": "segnet"}, "head": {"name": "conv"}}
SEMANTIC, DEPTH, INSTANCE, NORMAL = "semantic_segmentation", "depth", "instance_segmentation", "normal"
#: Sener & Koltun's value of the instance offsets outside every instance.
INSTANCE_INVALID = 250.0
CITYSCAPES_REFERENCE = (
    "Cordts et al. The Cityscapes Dataset, CVPR 2016; preprocessing of Liu et al. (MTAN), CVPR 2019; Sener & Koltun, "
    "Multi-Task Learning as Multi-Objective Optimization, NeurIPS 2018; Mueller et al., TMLR 2025 (App. A) and OPT "
    "2022 (App. A.4)"
)
NYUV2_REFERENCE = (
    "Silberman et al. Indoor Segmentation and Support Inference from RGBD Images, ECCV 2012; preprocessing of Liu "
    "et al. (MTAN), CVPR 2019"
)
Validation = Literal["held_out", "official"]


def segmentation_spec(classes: int, what: str) -> TaskSpec:
    return TaskSpec(
        SEMANTIC,
        classes,
        loss={"name": "cross_entropy", "ignore_index": -1},
        metrics=[{"name": "miou", "ignore_index": -1}, {"name": "pixel_accuracy", "ignore_index": -1}],
        primary_metric="miou",
        description=f"{classes}-class semantic segmentation of {what} (-1 = no label)",
    )


def depth_spec(what: str) -> TaskSpec:
    return TaskSpec(
        DEPTH,
        1,
        loss={"name": "l1", "invalid": 0.0},
        metrics=["depth_abs_error", "depth_rel_error"],
        primary_metric="depth_abs_error",
        description=f"per-pixel {what} (0 = no measurement)",
    )


INSTANCE_SPEC = TaskSpec(
    INSTANCE,
    2,
    loss={"name": "l1", "invalid": INSTANCE_INVALID},
    metrics=[{"name": "instance_offset_error", "invalid": INSTANCE_INVALID}],
    description="offset (dy, dx) of each instance pixel to its instance's centre of mass (Sener & Koltun 2018)",
)
#: The surface-normal metrics (MTAN's): mean and median angle error, share of pixels within 11.25, 22.5, 30 degrees.
NORMAL_METRICS: tuple[str | dict[str, Any], ...] = (
    "normal_mean_angle",
    "normal_median_angle",
    {"name": "normal_within", "degrees": 11.25},
    {"name": "normal_within", "degrees": 22.5},
    {"name": "normal_within", "degrees": 30.0},
)
NORMAL_SPEC = TaskSpec(
    NORMAL,
    3,
    loss="cosine",
    metrics=list(NORMAL_METRICS),
    description="unit surface normal of each pixel (zero = unknown)",
)


def dense_setting(
    name: str,
    root: Path,
    fields: dict[str, Field],
    specs: list[TaskSpec],
    *,
    image_size: tuple[int, int],
    validation: Validation,
    val_size: int,
    split_seed: int,
    train_size: int | None,
    description: str,
    reference: str,
    options: dict[str, object],
) -> Setting:
    """A shared-input setting over ``root/train`` and ``root/val`` (module docstring for the splits)."""
    size = (int(image_size[0]), int(image_size[1]))
    if validation not in ("held_out", "official"):
        raise ValueError(f"{name} option validation: expected 'held_out' or 'official', got {validation!r}")
    train_count = sample_count(root / "train" / "image", f"{name} train")
    test_count = sample_count(root / "val" / "image", f"{name} val")
    if validation == "held_out":
        train, val = held_out(train_count, val_size, split_seed, f"{name} option val_size")
    else:
        train, val = list(range(train_count)), list(range(test_count))
    if train_size is not None:
        train = train[:train_size]

    def folders(split: str, indices: list[int]) -> SampleFolders:
        return SampleFolders(root / split, indices, fields, size=size, name=f"{name} {split}")

    official_val = folders("val", list(range(test_count)))
    data = {
        "train": folders("train", train),
        "val": official_val if validation == "official" else folders("train", val),
        "test": official_val,
    }
    return from_datasets(
        name,
        specs,
        data,
        layout="shared-input",
        default_model=DEFAULT_MODEL,
        description=description,
        reference=reference,
        options=options,
    )


def _image_size(value: list[int] | tuple[int, ...], name: str) -> tuple[int, int]:
    if len(value) != 2 or any(int(v) < 1 for v in value):
        raise ValueError(f"{name} option image_size: expected [height, width] of positive integers, got {list(value)}")
    return int(value[0]), int(value[1])


@register("cityscapes", "Cityscapes 128x256 (MTAN's files): semantic segmentation, depth, optional instance offsets")
def cityscapes(
    *,
    classes: Literal[7, 19] = 7,
    instance: bool | None = None,
    validation: Validation = "held_out",
    val_size: PositiveInt = 500,
    split_seed: int = 0,
    train_size: PositiveInt | None = None,
    image_size: list[PositiveInt] = [128, 256],  # noqa: B006 (validated options, never mutated)
    data_dir: str | None = None,
) -> Setting:
    needed = tuple(
        f"{split}_{folder}" for split in ("train", "val") for folder in ("image", f"label_{classes}", "depth")
    )
    paths = locate("cityscapes", data_dir, keys=needed)  # the other label set need not be there
    root = paths["train_image"].parent.parent
    fields = {SEMANTIC: Field(f"label_{classes}", (), "labels", classes), DEPTH: Field("depth", (1,), "values")}
    specs = [segmentation_spec(classes, "street scenes"), depth_spec("disparity")]
    has_instance = all((root / split / "instance").is_dir() for split in ("train", "val"))
    if instance is True and not has_instance:
        locate("cityscapes-instance", data_dir)  # the catalog's one line naming the missing folder
    if instance is True or (instance is None and has_instance):
        fields[INSTANCE] = Field("instance", (2,), "values")
        specs.append(INSTANCE_SPEC)
    return dense_setting(
        "cityscapes",
        root,
        fields,
        specs,
        image_size=_image_size(image_size, "cityscapes"),
        validation=validation,
        val_size=val_size,
        split_seed=split_seed,
        train_size=train_size,
        description=f"Cityscapes {image_size[0]}x{image_size[1]}: {len(specs)} dense tasks ({classes} classes)",
        reference=CITYSCAPES_REFERENCE,
        options={
            "classes": classes,
            "instance": instance,
            "validation": validation,
            "val_size": val_size,
            "split_seed": split_seed,
            "train_size": train_size,
            "image_size": list(image_size),
            "data_dir": data_dir,
        },
    )


@register("nyuv2", "NYUv2 288x384 (MTAN's files): 13-class semantic segmentation, depth, surface normals")
def nyuv2(
    *,
    validation: Validation = "held_out",
    val_size: PositiveInt = 95,
    split_seed: int = 0,
    train_size: PositiveInt | None = None,
    image_size: list[PositiveInt] = [288, 384],  # noqa: B006 (validated options, never mutated)
    data_dir: str | None = None,
) -> Setting:
    paths = locate("nyuv2", data_dir)
    root = paths["train_image"].parent.parent
    fields = {
        SEMANTIC: Field("label", (), "labels", 13),
        DEPTH: Field("depth", (1,), "values"),
        NORMAL: Field("normal", (3,), "values"),
    }
    specs = [segmentation_spec(13, "indoor scenes"), depth_spec("depth"), NORMAL_SPEC]
    return dense_setting(
        "nyuv2",
        root,
        fields,
        specs,
        image_size=_image_size(image_size, "nyuv2"),
        validation=validation,
        val_size=val_size,
        split_seed=split_seed,
        train_size=train_size,
        description=f"NYUv2 {image_size[0]}x{image_size[1]}: semantic segmentation, depth, surface normals",
        reference=NYUV2_REFERENCE,
        options={
            "validation": validation,
            "val_size": val_size,
            "split_seed": split_seed,
            "train_size": train_size,
            "image_size": list(image_size),
            "data_dir": data_dir,
        },
    )


__all__ = ["DEFAULT_MODEL", "cityscapes", "mtan", "nyuv2"]
