"""Per-sample ``.npy`` folders: the preprocessed Cityscapes and NYUv2 of MTAN (Liu, Johns & Davison, CVPR 2019).

MTAN's releases (lorenmt/mtan, README "Image-to-Image Prediction"; the same files are read by LibMTL's and most
multi-task libraries' dense-prediction examples) store one NumPy file per sample and per quantity::

    <root>/train/image/0.npy   <root>/train/<field>/0.npy   ...   <root>/val/image/0.npy   ...

named ``0.npy``, ``1.npy``, ... ``{N-1}.npy`` in every folder of a split (the loaders of MTAN's
``create_dataset.py`` count the files of ``image/`` and read ``{index}.npy`` from each folder). An image is
``[H, W, 3]`` floats in [0, 1] (channels last); a label map ``[H, W]`` of class indices with -1 where a pixel
has no label (floats or integers holding whole numbers); a depth map ``[H, W, 1]`` with 0 where there is no
measurement; surface normals ``[H, W, 3]``; the instance proxy ``[H, W, 2]`` (``mtlscope.settings.dense``).

``read_header(path)`` reads a file's ``.npy`` header and checks the file's size against it (a truncated file, a
pickled object array or a file that is no ``.npy`` at all is one ``ValueError`` line naming the file);
``SampleFolders`` checks every file's header, shape and dtype when it is built (cheap: only headers are read)
and reads a sample's files when it is indexed, checking their values, so a damaged file is always one line
naming it. Nothing is decoded ahead: a sample is its files (about 0.5 MiB for Cityscapes at 128x256), read with
``np.load(allow_pickle=False)``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from mtlscope.data.catalog import DataFile, DatasetInfo, register_dataset
from mtlscope.data.fingerprint import combine, file_digest

#: What a field holds: an image (floats in [0, 1]), class labels (whole numbers, -1 = no label), or real values.
FieldKind = Literal["image", "labels", "values"]


@dataclass(frozen=True)
class Field:
    """One quantity of a sample: its folder, its per-sample shape after ``[H, W]`` (``()`` for a label map,
    ``(3,)`` for an image), what it holds and, for labels, the number of classes."""

    folder: str
    channels: tuple[int, ...]
    kind: FieldKind
    classes: int = 0


def read_header(path: Path) -> tuple[tuple[int, ...], np.dtype[Any]]:
    """The shape and dtype in the ``.npy`` header of ``path``; ``ValueError`` (one line naming the file) when it
    is not a readable ``.npy`` file, holds Python objects, or is shorter or longer than its header says."""
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
            elif version in ((2, 0), (3, 0)):
                shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
            else:
                raise ValueError(f"unknown .npy format version {version}")
            offset = handle.tell()
        size = os.stat(path).st_size
    except FileNotFoundError:
        raise ValueError(f"{path}: missing file") from None
    except OSError as error:
        raise ValueError(f"{path}: cannot read the file ({error.strerror or error})") from None
    except Exception as error:  # numpy raises ValueError, EOFError, SyntaxError... on a damaged header
        first = (str(error).splitlines() or [type(error).__name__])[0][:160]
        raise ValueError(f"{path}: not a readable .npy file ({first})") from None
    if dtype.hasobject:
        raise ValueError(f"{path}: holds Python objects (a pickled array); expected numbers")
    expected = offset + math.prod(shape) * dtype.itemsize
    if size != expected:
        state = "truncated" if size < expected else "longer than its header says"
        raise ValueError(f"{path}: {state} ({size} bytes, its header {list(shape)} {dtype} needs {expected})")
    return tuple(int(n) for n in shape), dtype


def sample_count(folder: Path, where: str) -> int:
    """The number of samples of a split: its ``image/`` folder must hold exactly ``0.npy`` ... ``{N-1}.npy``."""
    try:
        names = [entry.name for entry in os.scandir(folder) if entry.name.endswith(".npy")]
    except OSError as error:
        raise ValueError(f"{where}: cannot list {folder} ({error.strerror or error})") from None
    numbers = sorted(int(name[:-4]) for name in names if name[:-4].isdigit())
    if not numbers:
        raise ValueError(f"{where}: {folder} holds no sample files (expected 0.npy, 1.npy, ...)")
    if numbers != list(range(len(numbers))) or len(numbers) != len(names):
        odd = next((name for name in names if not name[:-4].isdigit()), None)
        gap = next((i for i, n in enumerate(numbers) if n != i), len(numbers))
        detail = f"an unexpected file {odd}" if odd is not None else f"{gap}.npy is missing"
        raise ValueError(f"{where}: {folder}: {detail}; expected the files 0.npy ... N-1.npy")
    return len(numbers)


class SampleFolders(Dataset):
    """The samples ``indices`` (file numbers) of one split folder: item ``i`` is ``(image [3, H, W] float32,
    {task: target})`` (module docstring). ``fields`` maps each task to its ``Field``; ``image`` is the image's.

    Targets: labels int64 ``[H, W]``; values float32 ``[C, H, W]`` (channels first). Every file's header is
    checked here against ``size`` (``(H, W)``); values are checked when a sample is read.
    """

    def __init__(
        self,
        root: Path,
        indices: Sequence[int],
        fields: Mapping[str, Field],
        *,
        size: tuple[int, int],
        name: str,
        image: Field = Field("image", (3,), "image"),
    ) -> None:
        self.root, self.indices, self.fields, self.size, self.name = root, [int(i) for i in indices], fields, size, name
        self.image = image
        for field in (image, *fields.values()):
            folder = root / field.folder
            if not folder.is_dir():
                raise ValueError(f"{name}: missing folder {folder}")
            expected = (*size, *field.channels)
            for index in self.indices:
                path = folder / f"{index}.npy"
                shape, dtype = read_header(path)
                if shape != expected:
                    raise ValueError(f"{path}: shape {list(shape)}, expected {list(expected)} ({field.folder})")
                kinds = "f" if field.kind != "labels" else "fiu"
                if dtype.kind not in kinds:
                    wanted = "floats" if kinds == "f" else "numbers"
                    raise ValueError(f"{path}: dtype {dtype}, expected {wanted} ({field.folder})")

    def __len__(self) -> int:
        return len(self.indices)

    def _read(self, field: Field, index: int) -> np.ndarray:
        path = self.root / field.folder / f"{index}.npy"
        try:
            array = np.load(path, allow_pickle=False)
        except Exception as error:  # changed since the header check
            first = (str(error).splitlines() or [type(error).__name__])[0][:160]
            raise ValueError(f"{path}: unreadable .npy file ({first})") from None
        expected = (*self.size, *field.channels)
        if array.shape != expected:
            raise ValueError(f"{path}: shape {list(array.shape)}, expected {list(expected)} ({field.folder})")
        if field.kind == "labels":
            values = array.astype(np.float64, copy=False)
            bad = ~np.isin(values, np.arange(-1, field.classes)) if values.size else np.zeros(0, dtype=bool)
            if bad.any():
                raise ValueError(
                    f"{path}: label {float(values[bad].flat[0]):g} is not a class index in "
                    f"0..{field.classes - 1} or -1 (no label)"
                )
            return array.astype(np.int64)
        if not np.isfinite(array).all():
            raise ValueError(f"{path}: holds NaN or infinite values ({field.folder})")
        if field.kind == "image" and array.size and (array.min() < 0 or array.max() > 1):
            raise ValueError(f"{path}: pixel values outside [0, 1] ({field.folder}: floats in [0, 1] expected)")
        return array.astype(np.float32)

    def __getitem__(self, position: int) -> tuple[Tensor, dict[str, Tensor]]:
        if not 0 <= position < len(self.indices):
            raise IndexError(f"{self.name}: sample {position} out of range for {len(self)} samples")
        index = self.indices[position]
        image = torch.from_numpy(self._read(self.image, index)).permute(2, 0, 1).contiguous()
        targets: dict[str, Tensor] = {}
        for task, field in self.fields.items():
            array = torch.from_numpy(self._read(field, index))
            targets[task] = array if field.kind == "labels" else array.permute(2, 0, 1).contiguous()
        return image, targets

    def fingerprint(self) -> str:
        """sha256 over the contents of every file the split reads (``file_digest``: cached in the process by path,
        size and times), the fields and the sample order."""
        files = {
            field.folder: [file_digest(self.root / field.folder / f"{index}.npy") for index in self.indices]
            for field in (self.image, *self.fields.values())
        }
        fields = {
            task: [field.folder, list(field.channels), field.kind, field.classes] for task, field in self.fields.items()
        }
        return combine({"files": files, "fields": fields, "indices": self.indices, "size": list(self.size)})


def held_out(count: int, val_size: int, seed: int, where: str) -> tuple[list[int], list[int]]:
    """``(train, val)`` sample numbers: ``val_size`` of ``0..count-1`` drawn without replacement by a generator
    seeded with ``seed`` (torch's CPU generator: the same seed gives the same split everywhere), both sorted."""
    if not 0 < val_size < count:
        raise ValueError(
            f"{where}: val_size {val_size} must be between 1 and {count - 1} (the training folder has {count} samples)"
        )
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(count, generator=generator)[:val_size]
    val = sorted(int(i) for i in chosen)
    taken = set(val)
    return [i for i in range(count) if i not in taken], val


# -- the catalog -------------------------------------------------------------------------------------------

CITYSCAPES_SOURCE = (
    "MTAN's preprocessed Cityscapes (lorenmt/mtan README, 'Image-to-Image Prediction': the 128x256 Cityscapes "
    "download on Dropbox, unzipped into cityscapes/; no direct download address, so `mtlscope data download` "
    "cannot fetch it; the raw data is at https://www.cityscapes-dataset.com)"
)
NYUV2_SOURCE = (
    "MTAN's preprocessed NYUv2 (lorenmt/mtan README, 'Image-to-Image Prediction': the 288x384 NYUv2 download on "
    "Dropbox, unzipped into nyuv2/; no direct download address, so `mtlscope data download` cannot fetch it)"
)
INSTANCE_SOURCE = (
    "your own preprocessing of Cityscapes' gtFine *_instanceIds.png into train/instance/ and val/instance/ next to "
    "MTAN's folders (one [H, W, 2] float file per sample: Sener & Koltun's offset of each pixel to its instance's "
    "centre of mass, 250 outside instances; see the cityscapes section of docs/settings.md)"
)


def _folders(root: str, split: str, names: Sequence[str]) -> tuple[DataFile, ...]:
    return tuple(DataFile(f"{split}_{name}", (f"{root}/{split}/{name}",)) for name in names)


CITYSCAPES = register_dataset(
    DatasetInfo(
        name="cityscapes",
        description="Cityscapes at 128x256 (MTAN's .npy files): 2,975 train and 500 val images, 7/19-class labels, "
        "disparity",
        source=CITYSCAPES_SOURCE,
        reference="Cordts et al. The Cityscapes Dataset for Semantic Urban Scene Understanding. CVPR 2016",
        files=tuple(
            entry
            for split in ("train", "val")
            for entry in _folders("cityscapes", split, ("image", "label_7", "label_19", "depth"))
        ),
    )
)
CITYSCAPES_INSTANCE = register_dataset(
    DatasetInfo(
        name="cityscapes-instance",
        description="optional: the instance-centre offsets of Sener & Koltun for the cityscapes setting",
        source=INSTANCE_SOURCE,
        reference="Sener & Koltun. Multi-Task Learning as Multi-Objective Optimization. NeurIPS 2018",
        files=_folders("cityscapes", "train", ("instance",)) + _folders("cityscapes", "val", ("instance",)),
    )
)
NYUV2 = register_dataset(
    DatasetInfo(
        name="nyuv2",
        description="NYUv2 at 288x384 (MTAN's .npy files): 795 train and 654 val images, 13-class labels, depth, "
        "surface normals",
        source=NYUV2_SOURCE,
        reference="Silberman et al. Indoor Segmentation and Support Inference from RGBD Images. ECCV 2012",
        files=tuple(
            entry
            for split in ("train", "val")
            for entry in _folders("nyuv2", split, ("image", "label", "depth", "normal"))
        ),
    )
)
