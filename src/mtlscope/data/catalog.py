"""The catalog of real datasets: which files each needs, where they are looked for, where they come from.

A dataset (``DatasetInfo``) lists its files (``DataFile``): for each, the paths it may have relative to the data
directory (the official flat layout first, then others such as torchvision's ``FashionMNIST/raw/``), and what is
known about it: its size and md5 checksum and its official download address. ``locate(name)`` finds every file
of a dataset, or raises ``MissingDataError``: one line naming the expected path and where the data comes from.
Nothing is ever downloaded implicitly.

The data directory is, in this order: the ``data_dir`` given to the call, the environment variable
``MTLSCOPE_DATA`` (what ``--data-dir`` sets, so sweep workers see it too), ``~/.mtlscope/data``. Decoded images
are cached in ``cache_directory()``: ``$MTLSCOPE_CACHE``, else ``~/.cache/mtlscope``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

#: The environment variable naming the data directory.
DATA_ENV = "MTLSCOPE_DATA"
DEFAULT_DATA_DIR = Path("~/.mtlscope/data")
#: The environment variable naming the cache directory (decoded uint8 image arrays, ``mtlscope.data.image_cache``).
CACHE_ENV = "MTLSCOPE_CACHE"
DEFAULT_CACHE_DIR = Path("~/.cache/mtlscope")


class MissingDataError(FileNotFoundError):
    """A file of a dataset is not in the data directory; the message is one line naming the expected path."""


@dataclass(frozen=True)
class DataFile:
    """One file of a dataset.

    ``key`` names it for the loader (``train_images``); ``paths`` are where it may be, relative to the data
    directory, the first one being the documented layout; ``size`` (bytes), ``md5`` and ``url`` are known facts
    about the official file (None when there is no single official file, e.g. a folder of images).
    """

    key: str
    paths: tuple[str, ...]
    size: int | None = None
    md5: str | None = None
    url: str | None = None

    def __post_init__(self) -> None:
        if not self.paths:
            raise ValueError(f"data file {self.key!r} needs at least one path")


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset of the catalog: its name, what it is, where it comes from, its files."""

    name: str
    description: str
    source: str
    reference: str
    files: tuple[DataFile, ...]

    def file(self, key: str) -> DataFile:
        for entry in self.files:
            if entry.key == key:
                return entry
        raise KeyError(f"dataset {self.name!r} has no file {key!r}; files: {', '.join(f.key for f in self.files)}")


DATASETS: dict[str, DatasetInfo] = {}


def register_dataset(info: DatasetInfo) -> DatasetInfo:
    """Add ``info`` to the catalog (the same name again replaces it: a reloaded module)."""
    DATASETS[info.name] = info
    return info


def dataset_info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; available: {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


def data_directory(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The data directory: ``data_dir`` if given, else ``$MTLSCOPE_DATA``, else ``~/.mtlscope/data``."""
    chosen = data_dir if data_dir is not None else os.environ.get(DATA_ENV) or DEFAULT_DATA_DIR
    return Path(chosen).expanduser()


def cache_directory(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where decoded datasets are cached: ``cache_dir`` if given, else ``$MTLSCOPE_CACHE``, else
    ``~/.cache/mtlscope`` (never the data directory, which may be read-only)."""
    chosen = cache_dir if cache_dir is not None else os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR
    return Path(chosen).expanduser()


def find_file(info: DatasetInfo, entry: DataFile, root: Path) -> Path | None:
    """The first of ``entry.paths`` that exists under ``root`` (None when none does)."""
    for relative in entry.paths:
        candidate = root / relative
        if candidate.exists():
            return candidate
    return None


def locate(
    name: str, data_dir: str | os.PathLike[str] | None = None, keys: tuple[str, ...] | None = None
) -> dict[str, Path]:
    """Paths of the files of dataset ``name`` (only ``keys`` when given) in the data directory.

    Raises ``MissingDataError`` for the first missing file, naming its expected path, the other places it was looked
    for, and where the dataset comes from.
    """
    info = dataset_info(name)
    root = data_directory(data_dir)
    found: dict[str, Path] = {}
    for entry in info.files:
        if keys is not None and entry.key not in keys:
            continue
        path = find_file(info, entry, root)
        if path is None:
            others = f" (or {', '.join(entry.paths[1:])})" if len(entry.paths) > 1 else ""
            download = f" or run `mtlscope data download {name}`" if entry.url else ""
            raise MissingDataError(
                f"{name}: missing {root / entry.paths[0]}{others}; get it from {info.source}{download}, "
                f"or point --data-dir / {DATA_ENV} to the folder that holds it"
            )
        found[entry.key] = path
    return found
