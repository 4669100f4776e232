"""Taskonomy PNG files in the layout of Standley et al.'s task-grouping code (ICML 2020, tstandley/taskgrouping).

Their ``taskonomy_loader.py`` reads one folder per domain, each holding one folder per building::

    <root>/rgb/<building>/point_0_view_0_domain_rgb.png
    <root>/segment_semantic/<building>/point_0_view_0_domain_segment_semantic.png
    <root>/depth_zbuffer/<building>/...   <root>/normal/<building>/...   <root>/keypoints2d/<building>/...
    <root>/edge_texture/<building>/...

The samples are the ``.png`` files of ``rgb/<building>/``; a sample's label of domain ``d`` is the same relative
path with ``rgb`` replaced by ``d`` (their ``file_name.replace('rgb', d)``, applied below the root here), so
both Taskonomy's ``..._domain_rgb.png`` names and the README's ``point_x_view_x.png`` work. The buildings of
each split are listed one per line in ``train_models.txt`` and ``val_models.txt`` (their repository's files).

What a file holds and how it becomes a target (their loader's constants; ``TaskonomySamples``):

- ``rgb``: 8-bit RGB; the input, ``x / 255`` in [0, 1] (``ToTensor``; no mean/std normalization);
- ``segment_semantic``: 8-bit grayscale, class ``0..17`` per pixel, 0 = unlabelled (their loss ignores it);
- ``depth_zbuffer``: 16-bit grayscale ``z``; valid where ``z < 2**13`` (the mask), target ``(z - 1500) / 1000``
  (``DEPTH_INVALID`` where masked);
- ``normal``: 8-bit RGB; target ``(x / 255 - 0.5) * 2`` in [-1, 1], zero where the depth mask is false (their
  normal loss is masked by the depth mask; a zero vector cannot come from 8-bit values, so zero marks it);
- ``keypoints2d``: 16-bit grayscale; target ``(k - 50) / 100``, no mask;
- ``edge_texture``: 16-bit grayscale; target ``(e - 718) / 1070``, no mask.

Every image is resized to the setting's ``size`` with PIL's bilinear filter (their ``Image.BILINEAR``), the
16-bit ones on their raw values before the mask and the normalization (as theirs); segmentation labels with the
nearest neighbour (their bilinear resize would mix class indices at boundaries: the one deviation). Every file
of every sample must exist when the split is built (one folder listing per building and domain); each file is
decoded and checked when its sample is read (mode, bit depth, size, values): a damaged file is one
``ValueError`` line naming it and what was expected.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from mtlscope.data.catalog import DataFile, DatasetInfo, register_dataset
from mtlscope.data.fingerprint import combine

#: The input domain and the five label domains of the transference paper's experiment (Standley's ``sdnkt``).
RGB = "rgb"
SEGMENTATION, DEPTH, NORMAL, KEYPOINTS, EDGES = (
    "segment_semantic",
    "depth_zbuffer",
    "normal",
    "keypoints2d",
    "edge_texture",
)
DOMAINS = (SEGMENTATION, DEPTH, NORMAL, KEYPOINTS, EDGES)
#: Output channels of their decoders (``xception_taskonomy_new.py``): 18 segmentation classes, 0 unlabelled.
SEGMENTATION_CLASSES = 18
#: Depth values at or above this (Taskonomy's far / missing values) are masked out (their ``yim < 2**13``).
DEPTH_LIMIT = 2**13
#: The normalization ``(value - offset) / scale`` of each 16-bit domain (their loader's constants).
OFFSET_SCALE = {DEPTH: (1500.0, 1000.0), KEYPOINTS: (50.0, 100.0), EDGES: (718.0, 1070.0)}
#: The depth target where the depth mask is false; the normalized depth is at least -1.5, so it cannot occur.
DEPTH_INVALID = -1000.0
#: PIL modes of a 16-bit grayscale PNG.
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I")
#: What each domain's files must be: PIL modes and their description.
EXPECTED = {
    RGB: (("RGB",), "an 8-bit RGB PNG"),
    NORMAL: (("RGB",), "an 8-bit RGB PNG"),
    SEGMENTATION: (("L",), "an 8-bit grayscale PNG"),
    DEPTH: (SIXTEEN_BIT_MODES, "a 16-bit grayscale PNG"),
    KEYPOINTS: (SIXTEEN_BIT_MODES, "a 16-bit grayscale PNG"),
    EDGES: (SIXTEEN_BIT_MODES, "a 16-bit grayscale PNG"),
}
BUILDING_LISTS = {"train": "train_models.txt", "val": "val_models.txt"}


def label_name(name: str, domain: str) -> str:
    """The file name of domain ``domain`` for the rgb file ``name`` (their ``replace('rgb', domain)``)."""
    return name.replace(RGB, domain)


def read_buildings(path: Path, where: str) -> list[str]:
    """The building names of a list file (one per line, blank lines skipped); one line naming it when it is
    unreadable, empty, names a building twice or holds a name that is no plain folder name."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{where}: cannot read {path} ({getattr(error, 'strerror', None) or error})") from None
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise ValueError(f"{where}: {path} lists no building (expected one building name per line)")
    for name in names:
        if "/" in name or "\\" in name or name in (".", ".."):
            raise ValueError(f"{where}: {path}: {name!r} is not a building name (expected a folder name)")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"{where}: {path} lists the building {name!r} twice")
        seen.add(name)
    return names


def _listing(folder: Path, where: str) -> set[str]:
    try:
        return {entry.name for entry in os.scandir(folder) if entry.is_file()}
    except FileNotFoundError:
        raise ValueError(f"{where}: missing folder {folder}") from None
    except OSError as error:
        raise ValueError(f"{where}: cannot list {folder} ({error.strerror or error})") from None


def building_samples(root: Path, building: str, where: str) -> list[str]:
    """The rgb file names of ``building`` (``.png``), sorted (their loader sorts a building's paths when it takes
    a range of them); one line when the building's rgb folder is missing or holds no image."""
    names = sorted(name for name in _listing(root / RGB / building, where) if name.endswith(".png"))
    if not names:
        raise ValueError(f"{where}: {root / RGB / building} holds no .png image")
    return names


def check_labels(root: Path, building: str, names: Sequence[str], where: str) -> None:
    """Every label file of ``names`` exists (one listing per domain folder of the building)."""
    for domain in DOMAINS:
        present = _listing(root / domain / building, where)
        for name in names:
            expected = label_name(name, domain)
            if expected not in present:
                raise ValueError(
                    f"{where}: missing file {root / domain / building / expected} (the {domain} of "
                    f"{RGB}/{building}/{name})"
                )


def _open(path: Path, domain: str) -> Image.Image:
    modes, what = EXPECTED[domain]
    try:
        with Image.open(path) as handle:
            found, image_mode = handle.format, handle.mode
            handle.load()
            image = handle.copy()
    except FileNotFoundError:
        raise ValueError(f"{path}: missing file (expected {what})") from None
    except Exception as error:  # PIL raises UnidentifiedImageError, OSError, SyntaxError... on damaged files
        first = (str(error).splitlines() or [type(error).__name__])[0][:160]
        raise ValueError(f"{path}: not a readable PNG image ({first}); expected {what}") from None
    if found != "PNG":
        raise ValueError(f"{path}: a {found} image; expected {what}")
    if image_mode not in modes:
        raise ValueError(f"{path}: image mode {image_mode}; expected {what} ({domain})")
    return image


def _resize(array: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """``array`` ([H, W] or [H, W, C]) resized to ``size`` = (height, width) with PIL, channel by channel in
    float32 ('F' images) so 8- and 16-bit values resize alike."""
    if array.shape[:2] == size:
        return array.astype(np.float32)
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    target = (size[1], size[0])  # PIL sizes are (width, height)
    planes = array[..., None] if array.ndim == 2 else array
    out = [
        np.asarray(Image.fromarray(planes[..., c].astype(np.float32), mode="F").resize(target, resample))
        for c in range(planes.shape[-1])
    ]
    stacked = np.stack(out, axis=-1)
    return stacked[..., 0] if array.ndim == 2 else stacked


@dataclass(frozen=True)
class Sample:
    """One sample: its building and rgb file name."""

    building: str
    name: str


class TaskonomySamples(Dataset):
    """The ``samples`` of one split: item ``i`` is ``(image [3, H, W] float32 in [0, 1], {domain: target})``
    (module docstring for the targets): ``segment_semantic`` int64 ``[H, W]`` in ``0..17``; ``depth_zbuffer``,
    ``keypoints2d``, ``edge_texture`` float32 ``[1, H, W]``; ``normal`` float32 ``[3, H, W]``. ``size`` is
    ``(H, W)``; every file of every sample is checked to exist here."""

    def __init__(self, root: Path, samples: Sequence[Sample], *, size: tuple[int, int], name: str) -> None:
        self.root, self.samples, self.size, self.name = root, list(samples), size, name
        by_building: dict[str, list[str]] = {}
        for sample in self.samples:
            by_building.setdefault(sample.building, []).append(sample.name)
        for building, names in by_building.items():
            check_labels(root, building, names, name)

    def __len__(self) -> int:
        return len(self.samples)

    def path(self, sample: Sample, domain: str) -> Path:
        return self.root / domain / sample.building / label_name(sample.name, domain)

    def _read(self, sample: Sample, domain: str, native: tuple[int, int] | None) -> np.ndarray:
        path = self.path(sample, domain)
        image = _open(path, domain)
        array = np.asarray(image)
        if domain not in (RGB, NORMAL, SEGMENTATION):
            array = array.astype(np.int64)
            if array.size and (array.min() < 0 or array.max() > 65535):
                raise ValueError(f"{path}: values outside 0..65535; expected a 16-bit grayscale PNG ({domain})")
        shape = (int(array.shape[0]), int(array.shape[1]))
        if native is not None and shape != native:
            raise ValueError(
                f"{path}: {shape[0]}x{shape[1]} pixels; expected {native[0]}x{native[1]} as its rgb image ({domain})"
            )
        if domain == SEGMENTATION and array.size and int(array.max()) >= SEGMENTATION_CLASSES:
            raise ValueError(
                f"{path}: label {int(array.max())} is not a class in 0..{SEGMENTATION_CLASSES - 1} ({domain})"
            )
        return array

    def __getitem__(self, position: int) -> tuple[Tensor, dict[str, Tensor]]:
        if not 0 <= position < len(self.samples):
            raise IndexError(f"{self.name}: sample {position} out of range for {len(self)} samples")
        sample = self.samples[position]
        rgb = self._read(sample, RGB, None)
        native = (int(rgb.shape[0]), int(rgb.shape[1]))
        image = _resize(rgb, self.size) / 255.0
        raw = {domain: self._read(sample, domain, native) for domain in DOMAINS}
        depth = _resize(raw[DEPTH], self.size)
        mask = depth < DEPTH_LIMIT
        targets: dict[str, Tensor] = {}
        labels = _resize(raw[SEGMENTATION], self.size, nearest=True)
        targets[SEGMENTATION] = torch.from_numpy(labels.round().astype(np.int64))
        offset, scale = OFFSET_SCALE[DEPTH]
        depth_target = np.where(mask, (depth - offset) / scale, DEPTH_INVALID).astype(np.float32)
        targets[DEPTH] = torch.from_numpy(depth_target)[None]
        normal = (_resize(raw[NORMAL], self.size) / 255.0 - 0.5) * 2.0
        normal = np.where(mask[..., None], normal, 0.0).astype(np.float32)
        targets[NORMAL] = torch.from_numpy(normal).permute(2, 0, 1).contiguous()
        for domain in (KEYPOINTS, EDGES):
            offset, scale = OFFSET_SCALE[domain]
            values = ((_resize(raw[domain], self.size) - offset) / scale).astype(np.float32)
            targets[domain] = torch.from_numpy(values)[None]
        inputs = torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1).contiguous()
        return inputs, targets

    def fingerprint(self) -> str:
        """sha256 over every file's relative path, size and modification time (``stat`` only: Taskonomy is
        hundreds of gigabytes, so contents are not hashed), the sample order and the size."""
        files = []
        for sample in self.samples:
            for domain in (RGB, *DOMAINS):
                path = self.path(sample, domain)
                try:
                    info = path.stat()
                except OSError as error:
                    raise ValueError(f"{path}: cannot read the file ({error.strerror or error})") from None
                files.append([str(path.relative_to(self.root)), info.st_size, info.st_mtime_ns])
        return combine({"files": files, "size": list(self.size)})


# -- the catalog -------------------------------------------------------------------------------------------

SOURCE = (
    "the Taskonomy dataset (Zamir et al. 2018; https://github.com/StanfordVL/taskonomy/tree/master/data: the "
    "rgb, segment_semantic, depth_zbuffer, normal, keypoints2d and edge_texture archives of each building, "
    "unpacked as taskonomy/<domain>/<building>/*.png) and the building lists train_models.txt and val_models.txt "
    "of Standley et al.'s code (https://github.com/tstandley/taskgrouping), copied into taskonomy/"
)

TASKONOMY = register_dataset(
    DatasetInfo(
        name="taskonomy",
        description="Taskonomy PNGs in Standley et al.'s layout (<domain>/<building>/): rgb and 5 label domains, "
        "with their train/val building lists",
        source=SOURCE,
        reference="Zamir et al. Taskonomy: Disentangling Task Transfer Learning. CVPR 2018; Standley et al. Which "
        "Tasks Should Be Learned Together in Multi-task Learning? ICML 2020",
        files=(
            DataFile("train_buildings", ("taskonomy/train_models.txt",)),
            DataFile("val_buildings", ("taskonomy/val_models.txt",)),
            *(DataFile(domain, (f"taskonomy/{domain}",)) for domain in (RGB, *DOMAINS)),
        ),
    )
)
