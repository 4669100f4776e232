"""notMNIST (Bulatov 2011): letters A-J in many fonts, 28x28 greyscale; its catalog entries and readers.

The release is two folders of PNG files, one sub-folder per letter: ``notMNIST_small/A/*.png`` ...
``notMNIST_small/J/*.png`` (about 18,700 images) and ``notMNIST_large/`` (about 530,000), unpacked from
``notMNIST_small.tar.gz`` / ``notMNIST_large.tar.gz``. Some of its files cannot be decoded (empty or damaged
PNGs): they are skipped, and how many is said once, in one log line, when the folder is decoded. Also read: an
MNIST-format conversion, the four IDX files ``notmnist/train-images-idx3-ubyte.gz`` etc. (gzipped or raw).

Three catalog entries, one per form: ``notmnist-idx``, ``notmnist-large``, ``notmnist-small``.
``notmnist_pools(source)`` reads the first form found in that order (``source="auto"``) or the one named, and
returns ``(train_pool, test_pool)``: for the IDX form the train and t10k files, for a folder one pool of all its
readable images and ``None`` (the setting draws its test set from the same pool). Labels: A=0, ..., J=9.

A folder is decoded once (PIL, a progress bar) into the image cache as uint8 ``[N, 785]``: each row the 784
pixels of an image, then its label; the cache key covers every PNG file's bytes. A folder without the ten letter
folders, with another letter folder, without any readable image, or with a readable image that is not 28x28
is a one-line ``ValueError`` naming it.
"""

from __future__ import annotations

import logging
import os
import string
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from mtlscope.data.catalog import (
    DATA_ENV,
    DataFile,
    DatasetInfo,
    MissingDataError,
    cache_directory,
    data_directory,
    dataset_info,
    find_file,
    register_dataset,
)
from mtlscope.data.image_cache import cached_images
from mtlscope.data.sources.mnist import IDX_FILES, IMAGE_SIZE, ImagePool, idx_candidates, idx_split, pool_key
from mtlscope.progress import Progress

logger = logging.getLogger(__name__)

LETTERS = tuple("ABCDEFGHIJ")
SOURCE = "http://yaroslavvb.blogspot.com/2011/09/notmnist-dataset.html (notMNIST_small.tar.gz, notMNIST_large.tar.gz)"
REFERENCE = "Bulatov. notMNIST dataset, 2011"
PIXELS = IMAGE_SIZE * IMAGE_SIZE
#: the forms of notMNIST, in the order ``source="auto"`` tries them
SOURCES: tuple[str, ...] = ("idx", "large", "small")
NotMNISTSource = Literal["auto", "idx", "large", "small"]

NOTMNIST_IDX = register_dataset(
    DatasetInfo(
        "notmnist-idx",
        "notMNIST letters A-J converted to MNIST's IDX format (train and t10k files, labels 0-9 for A-J)",
        SOURCE + "; converted to IDX files, e.g. by github.com/davidflanagan/notMNIST-to-MNIST",
        REFERENCE,
        tuple(DataFile(key, idx_candidates(("notmnist", "notMNIST"), name)) for key, name in IDX_FILES.items()),
    )
)
NOTMNIST_FOLDERS = {
    form: register_dataset(
        DatasetInfo(
            f"notmnist-{form}",
            f"notMNIST letters A-J as PNG files, one folder per letter (notMNIST_{form}/A/*.png ...)",
            SOURCE + f", unpacked: notMNIST_{form}.tar.gz",
            REFERENCE,
            (DataFile("folder", (f"notMNIST_{form}", f"notmnist/notMNIST_{form}")),),
        )
    )
    for form in ("large", "small")
}


def letter_files(folder: Path) -> list[tuple[Path, int]]:
    """Every ``.png`` of ``folder``'s letter folders with its label (A=0 ... J=9), in a fixed order."""
    present = {entry.name for entry in folder.iterdir() if entry.is_dir()}
    missing = [letter for letter in LETTERS if letter not in present]
    if missing:
        raise ValueError(
            f"{folder}: no letter folder {', '.join(missing)}; expected one folder of PNG files per letter A-J"
        )
    others = sorted(name for name in present if len(name) == 1 and name in string.ascii_uppercase[len(LETTERS) :])
    if others:
        raise ValueError(f"{folder}: unexpected letter folder {others[0]}; notMNIST has the letters A-J")
    files = []
    for label, letter in enumerate(LETTERS):
        files += [(path, label) for path in sorted((folder / letter).glob("*.png")) if path.is_file()]
    if not files:
        raise ValueError(f"{folder}: no .png files in its letter folders A-J")
    return files


def decode_png(path: Path) -> np.ndarray | None:
    """The 28x28 uint8 greyscale image in ``path``; None when PIL cannot decode it (the release's damaged files);
    a ``ValueError`` when it decodes to another size."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            pixels = np.asarray(image.convert("L"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return None
    if pixels.shape != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(
            f"{path}: a {pixels.shape[1]}x{pixels.shape[0]} image; expected {IMAGE_SIZE}x{IMAGE_SIZE} (notMNIST)"
        )
    return pixels


def decode_folder(folder: Path, files: Sequence[tuple[Path, int]]) -> np.ndarray:
    """uint8 ``[N, 785]`` (pixels then label) of the readable files; one log line for the skipped ones."""
    rows = np.empty((len(files), PIXELS + 1), dtype=np.uint8)
    skipped: list[Path] = []
    count = 0
    with Progress(len(files), f"decoding {folder.name}", unit="image") as bar:
        for path, label in files:
            pixels = decode_png(path)
            if pixels is None:
                skipped.append(path)
            else:
                rows[count, :PIXELS] = pixels.reshape(-1)
                rows[count, PIXELS] = label
                count += 1
            bar.advance()
    if skipped:
        logger.warning(
            "%s: skipped %d unreadable file(s) of %d (e.g. %s)",
            folder,
            len(skipped),
            len(files),
            skipped[0].relative_to(folder),
        )
    if not count:
        raise ValueError(f"{folder}: none of its {len(files)} .png files could be decoded")
    return rows[:count].copy()


def folder_pool(folder: Path, cache_dir: str | os.PathLike[str] | None = None) -> ImagePool:
    """The readable images of a ``notMNIST_small``/``notMNIST_large`` folder, decoded once into the image cache."""
    files = letter_files(folder)
    rows = cached_images(
        [path for path, _ in files],
        lambda _paths: decode_folder(folder, files),
        cache_directory(cache_dir),
        decoder="notmnist-png-rows/1",
        name=f"notmnist-{folder.name}",
    )
    if rows.ndim != 2 or rows.shape[1] != PIXELS + 1:
        raise ValueError(f"image cache of {folder}: holds {list(rows.shape)}; expected [N, {PIXELS + 1}]")
    labels = np.asarray(rows[:, PIXELS], dtype=np.int64)
    return ImagePool(rows, labels, pool_key(rows, labels), str(folder))


def find_notmnist(source: NotMNISTSource = "auto", data_dir: str | os.PathLike[str] | None = None) -> str:
    """The form of notMNIST to read: ``source`` if its files are there, else (``"auto"``) the first found of
    ``idx``, ``large``, ``small``. Raises ``MissingDataError`` (one line) naming where each form was looked for."""
    if source != "auto" and source not in SOURCES:
        raise ValueError(f"notmnist source {source!r}: expected one of auto, {', '.join(SOURCES)}")
    root = data_directory(data_dir)
    forms = SOURCES if source == "auto" else (source,)
    for form in forms:
        info = dataset_info(f"notmnist-{form}")
        if all(find_file(info, entry, root) is not None for entry in info.files):
            return form
    expected = {
        "idx": str(root / NOTMNIST_IDX.files[0].paths[0]) + " (and the other three IDX files)",
        "large": str(root / "notMNIST_large") + "/A..J/*.png",
        "small": str(root / "notMNIST_small") + "/A..J/*.png",
    }
    raise MissingDataError(
        f"notmnist: missing {' or '.join(expected[form] for form in forms)}; get it from {SOURCE}, "
        f"or point --data-dir / {DATA_ENV} to the folder that holds it"
    )


def notmnist_pools(
    source: NotMNISTSource = "auto",
    data_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> tuple[ImagePool, ImagePool | None]:
    """``(train_pool, test_pool)`` of notMNIST (module docstring): the IDX train and t10k files, or a folder's
    images and None."""
    form = find_notmnist(source, data_dir)
    if form == "idx":
        return idx_split("notmnist-idx", "train", data_dir, cache_dir), idx_split(
            "notmnist-idx", "test", data_dir, cache_dir
        )
    info = NOTMNIST_FOLDERS[form]
    folder = find_file(info, info.files[0], data_directory(data_dir))
    assert folder is not None  # found by find_notmnist
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a folder; expected notMNIST_{form}/ with one folder of PNG files per letter")
    return folder_pool(folder, cache_dir), None
