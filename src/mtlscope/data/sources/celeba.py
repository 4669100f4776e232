"""CelebA (Liu et al., ICCV 2015): the aligned face images, their 40 binary attributes, the official partition.

Files, in the data directory (the layout of the CelebA site's downloads; torchvision's ``celeba/`` folder is
found too):

- ``img_align_celeba/``: 202,599 JPEGs ``000001.jpg`` ... ``202599.jpg`` (178x218 pixels, RGB);
- ``list_attr_celeba.txt``: line 1 the number of images, line 2 the 40 attribute names, then one line per image,
  ``filename v1 ... v40`` with values ``1`` (has the attribute) or ``-1``, whitespace separated;
- ``list_eval_partition.txt``: ``filename split`` per line, split ``0`` train (162,770), ``1`` validation (19,867),
  ``2`` test (19,962).

``read_annotations(attributes_path, partition_path)`` reads and checks both text files strictly: every problem is
one ``ValueError`` line naming the file, the line and what was expected. ``decode_images(paths, out)`` decodes
JPEGs into ``out`` (uint8 ``[N, 3, 64, 64]``), ``CHUNK`` images at a time, the way the papers' code prepares them
(below); ``cached_split_images`` stores a split's images once in the image cache (``mtlscope.data.image_cache``)
with a progress bar.

Preprocessing: the whole aligned image is resized to 64x64, without cropping (the aspect ratio is not kept), by
bilinear interpolation with half-pixel centres and no antialiasing: what ``tf.image.resize(image, [64, 64])`` does
in the authors' code of Fifty et al.'s CelebA experiments (google-research/tag, ``celeba/CelebA.ipynb``), computed
here by ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False, antialias=False)`` and rounded
to uint8 (the TAG code keeps floats: a difference of at most 0.5/255). Mueller et al. (2022, App. A.1; 2025, App.
A) resize to 64x64 as well and say no more. There is no official download address (the files are on Google
Drive), so ``mtlscope data download`` cannot fetch CelebA: download them from the CelebA site.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mtlscope.data.catalog import DataFile, DatasetInfo, register_dataset
from mtlscope.data.image_cache import cached_images
from mtlscope.progress import Progress

#: The 40 attributes of ``list_attr_celeba.txt``, in the file's order.
ATTRIBUTES: tuple[str, ...] = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips",
    "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin",
    "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open",
    "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline",
    "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat",
    "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)  # fmt: skip
SPLIT_CODES: dict[str, str] = {"0": "train", "1": "val", "2": "test"}
#: Images per split of the official partition (the papers' sizes).
OFFICIAL_SIZES: dict[str, int] = {"train": 162_770, "val": 19_867, "test": 19_962}
IMAGE_SIZE = 64
#: Identity of ``decode_images`` in the cache key: change it whenever its output for the same files changes.
DECODER = "celeba-resize64-bilinear-halfpixel/1"
#: Images decoded, resized and written at a time (64 178x218 RGB images: 7 MiB as uint8, 30 MiB as float32).
CHUNK = 64

SOURCE = (
    "the CelebA site, https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html (Google Drive: Img/img_align_celeba.zip "
    "unzipped, Anno/list_attr_celeba.txt, Eval/list_eval_partition.txt; no direct download address, so "
    "`mtlscope data download` cannot fetch it)"
)

INFO = register_dataset(
    DatasetInfo(
        name="celeba",
        description="CelebA aligned faces: 202,599 JPEGs with 40 binary attributes and the official partition",
        source=SOURCE,
        reference="Liu, Luo, Wang & Tang. Deep Learning Face Attributes in the Wild. ICCV 2015",
        files=(
            DataFile("images", ("img_align_celeba", "celeba/img_align_celeba")),
            DataFile(
                "attributes",
                ("list_attr_celeba.txt", "Anno/list_attr_celeba.txt", "celeba/list_attr_celeba.txt"),
                md5="75e246fa4810816ffd6ee81facbd244c",
            ),
            DataFile(
                "partition",
                ("list_eval_partition.txt", "Eval/list_eval_partition.txt", "celeba/list_eval_partition.txt"),
                md5="d32c9cbf5e040fd4025c592c306e6668",
            ),
        ),
    )
)


@dataclass(frozen=True)
class Annotations:
    """The two text files, read: image file names per split (in file order) and their labels.

    ``labels[split]`` is uint8 ``[N, 40]``, 1 where the image has the attribute and 0 where the file says -1,
    in the order of ``ATTRIBUTES``.
    """

    files: dict[str, list[str]]
    labels: dict[str, np.ndarray]


def _lines(path: Path) -> list[str]:
    try:
        text = path.read_bytes().decode("ascii")
    except UnicodeDecodeError as error:
        line = path.read_bytes()[: error.start].count(b"\n") + 1
        raise ValueError(f"{path} line {line}: not ASCII text (byte 0x{error.object[error.start]:02x})") from None
    except OSError as error:
        raise ValueError(f"{path}: cannot read the file ({error.strerror or error})") from None
    lines = text.splitlines()
    while lines and not lines[-1].strip():  # the official files end with a newline
        lines.pop()
    return lines


def _read_attributes(path: Path) -> tuple[list[str], np.ndarray, dict[str, int]]:
    """(file names, labels uint8 [N, 40], file name -> line number) of ``list_attr_celeba.txt``."""
    lines = _lines(path)
    if not lines:
        raise ValueError(
            f"{path}: empty file; expected the number of images on line 1, the 40 attribute names on line 2"
        )
    header = lines[0].split()
    if len(header) != 1 or not header[0].isdigit() or int(header[0]) < 1:
        raise ValueError(f"{path} line 1: expected the number of images (a positive integer), got {lines[0][:80]!r}")
    count = int(header[0])
    if len(lines) < 2:
        raise ValueError(f"{path}: no line 2; expected the 40 attribute names there")
    names = lines[1].split()
    if tuple(names) != ATTRIBUTES:
        if len(names) != len(ATTRIBUTES):
            raise ValueError(f"{path} line 2: expected the 40 CelebA attribute names, got {len(names)} names")
        position = next(i for i, (a, b) in enumerate(zip(names, ATTRIBUTES)) if a != b)
        raise ValueError(
            f"{path} line 2: attribute {position + 1} is {names[position]!r}; expected {ATTRIBUTES[position]!r} "
            "(the 40 CelebA attribute names in the official order)"
        )
    rows = lines[2:]
    if len(rows) != count:
        raise ValueError(f"{path}: line 1 declares {count} images, the file lists {len(rows)}")
    files: list[str] = []
    labels = np.empty((count, len(ATTRIBUTES)), dtype=np.uint8)
    seen: dict[str, int] = {}
    for index, row in enumerate(rows):
        number = index + 3
        fields = row.split()
        if len(fields) != len(ATTRIBUTES) + 1:
            raise ValueError(
                f"{path} line {number}: expected a file name and 40 values, got {max(len(fields) - 1, 0)} values"
            )
        name = fields[0]
        if name in seen:
            raise ValueError(f"{path} line {number}: {name} is listed again (first on line {seen[name]})")
        seen[name] = number
        for column, value in enumerate(fields[1:]):
            if value == "1":
                labels[index, column] = 1
            elif value == "-1":
                labels[index, column] = 0
            else:
                raise ValueError(
                    f"{path} line {number}: value {value[:20]!r} of {ATTRIBUTES[column]}; expected 1 or -1"
                )
        files.append(name)
    return files, labels, seen


def read_annotations(attributes_path: str | os.PathLike[str], partition_path: str | os.PathLike[str]) -> Annotations:
    """Read and check ``list_attr_celeba.txt`` and ``list_eval_partition.txt`` (module docstring); every image of
    one file must be in the other. Raises ``ValueError``: one line naming the file, the line, what was expected."""
    attributes, partition = Path(attributes_path), Path(partition_path)
    files, labels, row_of = _read_attributes(attributes)
    chosen: dict[str, list[int]] = {split: [] for split in SPLIT_CODES.values()}
    listed: dict[str, int] = {}
    for index, line in enumerate(_lines(partition)):
        number = index + 1
        fields = line.split()
        if len(fields) != 2:
            raise ValueError(f"{partition} line {number}: expected 'filename split', got {len(fields)} fields")
        name, code = fields
        if code not in SPLIT_CODES:
            raise ValueError(
                f"{partition} line {number}: split {code[:20]!r} of {name}; expected 0 (train), 1 (val) or 2 (test)"
            )
        if name in listed:
            raise ValueError(f"{partition} line {number}: {name} is listed again (first on line {listed[name]})")
        listed[name] = number
        if name not in row_of:
            raise ValueError(f"{partition} line {number}: {name} is not in {attributes.name} ({attributes})")
        chosen[SPLIT_CODES[code]].append(row_of[name] - 3)
    if len(listed) != len(files):
        missing = next(name for name in files if name not in listed)
        raise ValueError(
            f"{attributes} line {row_of[missing]}: {missing} is not in {partition.name} ({partition}); "
            "every image needs a split"
        )
    return Annotations(
        files={split: [files[i] for i in rows] for split, rows in chosen.items()},
        labels={split: labels[np.asarray(rows, dtype=np.int64)] for split, rows in chosen.items()},
    )


def _decode_one(path: Path) -> np.ndarray:
    """uint8 ``[H, W, 3]`` of one JPEG (``ValueError``, one line, when it cannot be read)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            if image.format != "JPEG":
                raise ValueError(f"{path}: not a JPEG image ({image.format or 'unknown format'})")
            return np.array(image.convert("RGB"), dtype=np.uint8)  # a writable copy
    except FileNotFoundError:
        raise ValueError(f"{path}: missing image file (listed in the annotations)") from None
    except ValueError:
        raise
    except Exception as error:  # PIL raises OSError, SyntaxError, DecompressionBombError... on a damaged file
        first = (str(error).splitlines() or [type(error).__name__])[0][:200]
        raise ValueError(f"{path}: unreadable JPEG ({first})") from None


def resize(images: torch.Tensor, size: int = IMAGE_SIZE) -> torch.Tensor:
    """uint8 ``[B, 3, size, size]`` from uint8 ``[B, 3, H, W]``: bilinear, half-pixel centres, no antialiasing
    (``tf.image.resize``'s default), rounded to the nearest integer."""
    resized = F.interpolate(
        images.to(torch.float32), size=(size, size), mode="bilinear", align_corners=False, antialias=False
    )
    return resized.round_().clamp_(0, 255).to(torch.uint8)


def decode_images(
    paths: Sequence[Path], out: np.ndarray, *, progress: Progress | None = None, workers: int | None = None
) -> None:
    """Decode ``paths`` (JPEGs) into ``out``, uint8 ``[N, 3, 64, 64]``, ``CHUNK`` images at a time (module
    docstring for the preprocessing). JPEG decoding runs on ``workers`` threads (default: up to 4)."""
    if len(out) != len(paths):
        raise ValueError(f"decode_images: {len(paths)} paths but an output array of {len(out)} images")
    threads = workers or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for start in range(0, len(paths), CHUNK):
            batch = list(pool.map(_decode_one, paths[start : start + CHUNK]))
            shapes = {image.shape for image in batch}
            if len(shapes) == 1:
                stacked = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2)
                out[start : start + len(batch)] = resize(stacked).numpy()
            else:  # images of several sizes: one at a time
                for offset, image in enumerate(batch):
                    out[start + offset] = resize(torch.from_numpy(image).permute(2, 0, 1)[None])[0].numpy()
            if progress is not None:
                progress.advance(len(batch))


def cached_split_images(
    image_dir: Path, files: Sequence[str], split: str, cache_dir: Path, *, show_progress: bool = True
) -> np.memmap:
    """The 64x64 images of ``files`` (one split, in order), uint8 ``[N, 3, 64, 64]``, memory-mapped from the image
    cache; decoded on the first call (a progress bar on stderr), read from the cache afterwards.

    A missing image is one ``ValueError`` line naming it (checked before anything is read)."""
    paths = [image_dir / name for name in files]
    for path in paths:
        if not path.is_file():
            raise ValueError(f"celeba: missing image {path} (listed in list_eval_partition.txt, split {split})")

    def decode(sources: Sequence[Path], out: np.ndarray) -> None:
        with Progress(len(sources), f"celeba {split} images", unit="image", enabled=show_progress) as progress:
            decode_images(sources, out, progress=progress)

    return cached_images(
        paths,
        decode,
        cache_dir,
        decoder=DECODER,
        name=f"celeba-{split}",
        shape=(len(paths), 3, IMAGE_SIZE, IMAGE_SIZE),
    )
