"""What of a dataset is in the data directory, and whether it is the official data: ``mtlscope data`` and
``mtlscope data check NAME``.

``check_dataset(name)`` looks for every ``DataFile`` of the dataset (``mtlscope.data.catalog``) where ``locate``
does and verifies what it finds: a file's size and md5 checksum when the catalog knows them (the checksum read
in a stream, with progress for large files), a folder (e.g. of images, no single checksum) for being a non-empty
folder. Each file gives one ``FileCheck``: ``ok``, ``missing``, ``wrong size``, ``wrong checksum``, ``empty
folder``, ``not a file`` or ``unreadable``, and ``FileCheck.line()`` says it in one line.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from mtlscope.data.catalog import DataFile, DatasetInfo, data_directory, dataset_info, find_file

MiB = 2**20
#: Files at least this large show progress while their checksum is computed.
PROGRESS_BYTES = 32 * MiB
CHUNK_BYTES = MiB
#: The width of the status column of ``FileCheck.line``.
STATUS_WIDTH = 14


@dataclass(frozen=True)
class FileCheck:
    """The state of one file of a dataset: ``status`` (``ok`` or what is wrong), the path found (or, when
    missing, the expected one) and details (sizes, checksums, the other places looked at)."""

    key: str
    status: str
    path: Path
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def line(self, key_width: int = 0) -> str:
        """``ok             train_images  /data/train-images-idx3-ubyte.gz (26421880 bytes, md5 ok)`` (the key
        padded to ``key_width``)."""
        return format_line(self.status, self.key, self.path, self.detail, key_width)


def format_line(status: str, key: str, path: Path, detail: str = "", key_width: int = 0) -> str:
    """One line about one file: status, key, path, (details)."""
    return f"{status:<{STATUS_WIDTH}} {key:<{key_width}}  {path}" + (f" ({detail})" if detail else "")


def key_width(info: DatasetInfo) -> int:
    """The width of the key column for ``info``'s files."""
    return max(len(entry.key) for entry in info.files)


def file_md5(path: Path, *, progress: bool = False) -> str:
    """The md5 hex digest of the file ``path``, read in 1 MiB chunks (progress on stderr for large files)."""
    from mtlscope.progress import Progress

    size = path.stat().st_size
    digest = hashlib.md5(usedforsecurity=False)
    total = -(-size // MiB)
    with Progress(total, f"md5 {path.name}", unit="MiB", enabled=progress and size >= PROGRESS_BYTES) as bar:
        done = 0
        with path.open("rb") as handle:
            while chunk := handle.read(CHUNK_BYTES):
                digest.update(chunk)
                done += len(chunk)
                bar.advance_to(done // MiB)
        bar.advance_to(total)
    return digest.hexdigest()


def verify(
    key: str, path: Path, *, size: int | None, md5: str | None, progress: bool = False, checksum: bool = True
) -> FileCheck:
    """Check the existing ``path`` against the known ``size`` and ``md5`` (either may be None); a folder is
    ``ok`` when it has at least one entry. ``checksum=False`` checks the size only."""
    try:
        if path.is_dir():
            if size is not None or md5 is not None:
                return FileCheck(key, "not a file", path, "a folder; expected the official file")
            with os.scandir(path) as entries:
                count = sum(1 for _ in entries)
            return FileCheck(key, "ok" if count else "empty folder", path, f"folder, {count} entries")
        found = path.stat().st_size
        if size is not None and found != size:
            return FileCheck(key, "wrong size", path, f"{found} bytes, expected {size}")
        if md5 is None or not checksum:
            known = "size ok" if size is not None else "no known size or checksum"
            return FileCheck(key, "ok", path, f"{found} bytes, {known}")
        got = file_md5(path, progress=progress)
    except OSError as error:
        return FileCheck(key, "unreadable", path, error.strerror or str(error))
    if got != md5:
        return FileCheck(key, "wrong checksum", path, f"md5 {got}, expected {md5}")
    return FileCheck(key, "ok", path, f"{found} bytes, md5 ok")


def check_file(
    info: DatasetInfo, entry: DataFile, root: Path, *, progress: bool = False, checksum: bool = True
) -> FileCheck:
    """Find ``entry`` under ``root`` (its ``paths`` in order, as ``locate`` does) and verify it."""
    path = find_file(info, entry, root)
    if path is None:
        others = f"also looked for {', '.join(str(root / p) for p in entry.paths[1:])}" if len(entry.paths) > 1 else ""
        return FileCheck(entry.key, "missing", root / entry.paths[0], others)
    return verify(entry.key, path, size=entry.size, md5=entry.md5, progress=progress, checksum=checksum)


def check_dataset(
    name: str, data_dir: str | os.PathLike[str] | None = None, *, progress: bool = False, checksum: bool = True
) -> list[FileCheck]:
    """One ``FileCheck`` per file of dataset ``name`` in the data directory (``checksum=False``: no md5, only
    existence and sizes: what ``mtlscope data`` shows)."""
    info = dataset_info(name)
    root = data_directory(data_dir)
    return [check_file(info, entry, root, progress=progress, checksum=checksum) for entry in info.files]
