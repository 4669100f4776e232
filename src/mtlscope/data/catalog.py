"""The catalog of real datasets: which files each needs, where they are looked for, where they come from.

A dataset (``DatasetInfo``) lists its files (``DataFile``): for each, the paths it may have relative to the data
directory (the official flat layout first, then others such as torchvision's ``FashionMNIST/raw/``), and what is
known about it: its size and md5 checksum and its official download address. ``locate(name)`` finds every file
of a dataset, or raises ``MissingDataError``: one line naming the expected path and where the data comes from.
Nothing is ever downloaded implicitly: ``mtlscope data download NAME`` (``mtlscope.data.download``) fetches the
files that have a ``url``, and the members of the dataset's ``Archive`` entries (a ``.tar.gz`` or ``.zip`` that
must be extracted: a ``DataFile`` names the archive that provides it with ``archive=``). ``mtlscope data check
NAME`` (``mtlscope.data.check``) verifies sizes and checksums.

The data directory is, in this order: the ``data_dir`` given to the call, the ``data_dir`` of the run config
being built (``use_data_directory``, set by ``mtlscope.runs.config.resolve``; ``--data-dir`` of ``mtlscope
run``/``sweep``/``reproduce`` sets it for every run), the environment variable ``MTLSCOPE_DATA`` (``--data-dir``
sets it too, so sweep workers see it), ``~/.mtlscope/data``. Decoded images are cached in ``cache_directory()``:
``$MTLSCOPE_CACHE``, else ``~/.cache/mtlscope``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal

#: The environment variable naming the data directory.
DATA_ENV = "MTLSCOPE_DATA"
DEFAULT_DATA_DIR = Path("~/.mtlscope/data")
#: The environment variable naming the cache directory (decoded uint8 image arrays, ``mtlscope.data.image_cache``).
CACHE_ENV = "MTLSCOPE_CACHE"
DEFAULT_CACHE_DIR = Path("~/.cache/mtlscope")
#: Archive formats ``mtlscope data download`` extracts (``mtlscope.data.download.extract_archive``).
ARCHIVE_FORMATS = ("tar", "tar.gz", "zip")
ArchiveFormat = Literal["tar", "tar.gz", "zip"]
#: Default limits of an archive's extraction: total bytes of its members and number of members.
MAX_EXTRACTED_BYTES = 64 * 2**30
MAX_MEMBERS = 1_000_000


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
    #: The key of the dataset's ``Archive`` whose extraction gives this file (or folder) at ``paths[0]``; None
    #: when the file is fetched on its own (``url``) or cannot be downloaded.
    archive: str | None = None

    def __post_init__(self) -> None:
        if not self.paths:
            raise ValueError(f"data file {self.key!r} needs at least one path")
        for path in self.paths:
            check_relative_path(path, f"data file {self.key!r}")
        _check_facts(f"data file {self.key!r}", self.size, self.md5, self.url)
        if self.url is not None and self.archive is not None:
            raise ValueError(f"data file {self.key!r}: give either url (fetched itself) or archive, not both")


@dataclass(frozen=True)
class Archive:
    """An archive of the official release that ``mtlscope data download`` fetches and extracts.

    ``path`` is where the archive is saved, relative to the data directory; its members are extracted into
    ``into`` (relative to the data directory; ``""``: the data directory itself), so a member
    ``cifar-100-python/train`` lands at ``<data dir>/<into>/cifar-100-python/train``: the ``paths[0]`` of the
    ``DataFile`` that names this archive. ``format`` is ``"tar"``, ``"tar.gz"`` or ``"zip"`` (default: told by
    ``path``'s suffix). Extraction admits only regular files and folders whose names stay inside ``into``,
    at most ``max_members`` members of at most ``max_bytes`` bytes in all; the archive is removed after a
    successful extraction unless ``keep``.
    """

    key: str
    path: str
    url: str
    size: int | None = None
    md5: str | None = None
    format: ArchiveFormat | None = None
    into: str = ""
    keep: bool = False
    max_bytes: int = MAX_EXTRACTED_BYTES
    max_members: int = MAX_MEMBERS

    def __post_init__(self) -> None:
        where = f"archive {self.key!r}"
        check_relative_path(self.path, where)
        if self.into:
            check_relative_path(self.into, f"{where}: into")
        _check_facts(where, self.size, self.md5, self.url)
        if self.format is None:
            told = next((f for f in ("tar.gz", "tar", "zip") if self.path.endswith(f".{f}")), None)
            if self.path.endswith(".tgz"):
                told = "tar.gz"
            if told is None:
                raise ValueError(f"{where}: cannot tell the format of {self.path!r}; give format= {ARCHIVE_FORMATS}")
            object.__setattr__(self, "format", told)
        elif self.format not in ARCHIVE_FORMATS:
            raise ValueError(f"{where}: format must be one of {ARCHIVE_FORMATS}, got {self.format!r}")
        if self.max_bytes < 1 or self.max_members < 1:
            raise ValueError(f"{where}: max_bytes and max_members must be positive")


def check_relative_path(path: str, where: str) -> None:
    """``ValueError`` unless ``path`` is a relative POSIX path that stays below its base (no ``..``)."""
    parts = PurePosixPath(path).parts
    if not path or path.startswith("/") or "\\" in path or ".." in parts or not parts:
        raise ValueError(f"{where}: {path!r} must be a relative path below the data directory (no '..')")


def _check_facts(where: str, size: int | None, md5: str | None, url: str | None) -> None:
    if size is not None and (not isinstance(size, int) or size < 0):
        raise ValueError(f"{where}: size must be a number of bytes >= 0, got {size!r}")
    if md5 is not None and (len(md5) != 32 or any(c not in "0123456789abcdef" for c in md5)):
        raise ValueError(f"{where}: md5 must be 32 lowercase hex digits, got {md5!r}")
    if url is not None and not url.startswith(("https://", "http://")):
        raise ValueError(f"{where}: url must be an http:// or https:// address, got {url!r}")


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset of the catalog: its name, what it is, where it comes from, its files."""

    name: str
    description: str
    source: str
    reference: str
    files: tuple[DataFile, ...]
    #: Archives of the official release whose extraction gives some of ``files`` (``DataFile.archive``).
    archives: tuple[Archive, ...] = field(default=())

    def __post_init__(self) -> None:
        keys = [entry.key for entry in self.files]
        if len(set(keys)) != len(keys):
            raise ValueError(f"dataset {self.name!r}: two data files share a key ({', '.join(keys)})")
        archives = {archive.key for archive in self.archives}
        if len(archives) != len(self.archives):
            raise ValueError(f"dataset {self.name!r}: two archives share a key")
        for entry in self.files:
            if entry.archive is not None and entry.archive not in archives:
                raise ValueError(
                    f"dataset {self.name!r}: data file {entry.key!r} names archive {entry.archive!r}, which is not "
                    f"among its archives ({', '.join(sorted(archives)) or 'none'})"
                )

    @property
    def downloadable(self) -> bool:
        """Whether ``mtlscope data download`` can fetch every file (each has a ``url`` or an ``archive``)."""
        return all(entry.url is not None or entry.archive is not None for entry in self.files)

    def archive(self, key: str) -> Archive:
        for archive in self.archives:
            if archive.key == key:
                return archive
        raise KeyError(f"dataset {self.name!r} has no archive {key!r}")

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


#: The ``data_dir`` of the run config whose setting is being built (``use_data_directory``).
_CONFIGURED: ContextVar[str | None] = ContextVar("mtlscope_data_dir", default=None)


@contextlib.contextmanager
def use_data_directory(data_dir: str | os.PathLike[str] | None) -> Iterator[None]:
    """Within this block ``data_directory()`` is ``data_dir`` (unless a call passes its own); ``None`` changes
    nothing. What building a run config's setting does with its ``data_dir`` key."""
    token = _CONFIGURED.set(os.fspath(data_dir)) if data_dir is not None else None
    try:
        yield
    finally:
        if token is not None:
            _CONFIGURED.reset(token)


def data_directory_origin(data_dir: str | os.PathLike[str] | None = None) -> tuple[Path, str]:
    """The data directory and where it was chosen: ``"given"``, ``"config data_dir"``, ``"$MTLSCOPE_DATA"`` or
    ``"default"`` (resolution order in the module docstring)."""
    if data_dir is not None:
        return Path(data_dir).expanduser(), "given"
    configured = _CONFIGURED.get()
    if configured is not None:
        return Path(configured).expanduser(), "config data_dir"
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser(), f"${DATA_ENV}"
    return DEFAULT_DATA_DIR.expanduser(), "default"


def data_directory(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The data directory: ``data_dir`` if given, else the ``data_dir`` of the run config being built
    (``use_data_directory``), else ``$MTLSCOPE_DATA``, else ``~/.mtlscope/data``."""
    return data_directory_origin(data_dir)[0]


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
            download = f" or run `mtlscope data download {name}`" if entry.url or entry.archive else ""
            raise MissingDataError(
                f"{name}: missing {root / entry.paths[0]}{others}; get it from {info.source}{download}, "
                f"or point --data-dir / {DATA_ENV} to the folder that holds it"
            )
        found[entry.key] = path
    return found
