"""``mtlscope data download NAME``: fetch a dataset's official files, verified, atomically; extract archives safely.

Nothing in mtlscope downloads implicitly: only this explicit command (``download_dataset``) reaches the network.

- ``fetch(url, target, size=, md5=)`` streams ``url`` (http or https, ``urllib``) into a uniquely named temporary
  file next to ``target`` (``.<name>.<random>.part``) while computing its md5; checks the byte count against the
  server's ``Content-Length`` and the known ``size``, and the md5 against the known ``md5``; then fsyncs it and
  renames it onto ``target`` (and fsyncs the folder). On any failure (HTTP error, broken connection, truncated
  transfer, too many bytes, wrong checksum, Ctrl-C) the temporary file is removed: nothing partial is left, and a
  previous ``target`` is untouched.
- ``extract_archive(archive, into, format=)`` extracts a ``tar``, ``tar.gz`` or ``zip`` file safely: every
  member name must be a relative path that stays inside ``into`` (no absolute paths, no ``..``), only regular
  files and folders are admitted (a symlink, hard link, device or FIFO refuses the whole archive), at most
  ``max_members`` members of at most ``max_bytes`` bytes in all (declared sizes, and the bytes actually written,
  are counted). Members are written (mode 0644, never the archive's permissions or owners) into a temporary
  folder inside ``into``, synced, then renamed into place; a refused or damaged archive leaves nothing.
- ``download_dataset(name)`` holds a lock (``fcntl.flock`` on ``<data dir>/.mtlscope-download-<name>.lock``:
  two downloads of one dataset never write the same files at once), then for each file: skips it when present
  and verified (so re-running resumes), fetches files with a ``url``, and fetches and extracts each needed
  ``Archive`` (removed afterwards unless ``keep``), verifying the extracted files. One line per file.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import shutil
import stat
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from mtlscope.data.catalog import Archive, DataFile, DatasetInfo, data_directory, dataset_info
from mtlscope.data.check import MiB, check_file, format_line, key_width, verify

PARTIAL_SUFFIX = ".part"
CHUNK_BYTES = MiB
TIMEOUT_S = 60.0
#: The most a download of unknown size may bring.
MAX_DOWNLOAD_BYTES = 64 * 2**30
LOCK_PREFIX = ".mtlscope-download-"


class DownloadError(Exception):
    """A download or extraction failed; the message is one line naming the file or address. Nothing was kept."""


class ArchiveError(DownloadError):
    """An archive was refused (unsafe member, too large) or is damaged; nothing was extracted."""


def _version() -> str:
    import mtlscope

    return str(mtlscope.__version__)


def _fsync_directory(path: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems cannot open or sync a folder
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


@contextlib.contextmanager
def _temporary_file(target: Path) -> Iterator[tuple[IO[bytes], Path]]:
    """A new uniquely named file next to ``target``, removed unless it was renamed away in the block."""
    descriptor, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=PARTIAL_SUFFIX)
    temporary = Path(name)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            yield handle, temporary
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()


def fetch(
    url: str,
    target: str | os.PathLike[str],
    *,
    size: int | None = None,
    md5: str | None = None,
    progress: bool = True,
    timeout: float = TIMEOUT_S,
) -> Path:
    """Download ``url`` to ``target`` atomically, checking ``size`` and ``md5`` when given (module docstring);
    ``DownloadError`` (one line, nothing left) when anything goes wrong."""
    from mtlscope.progress import Progress

    target = Path(target)
    if not url.startswith(("http://", "https://")):
        raise DownloadError(f"{url}: only http:// and https:// addresses are downloaded")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DownloadError(f"{target.parent}: cannot create the folder ({error.strerror or error})") from None
    request = urllib.request.Request(url, headers={"User-Agent": f"mtlscope/{_version()}"})
    limit = size if size is not None else MAX_DOWNLOAD_BYTES
    with _temporary_file(target) as (handle, temporary):
        try:
            response = urllib.request.urlopen(request, timeout=timeout)  # the scheme is checked above
        except urllib.error.HTTPError as error:
            raise DownloadError(f"{url}: HTTP error {error.code} ({error.reason}); nothing downloaded") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
            reason = getattr(error, "reason", None) or error
            raise DownloadError(f"{url}: cannot connect ({reason}); nothing downloaded") from None
        digest = hashlib.md5(usedforsecurity=False)
        written = 0
        with response:
            header = response.headers.get("Content-Length")
            declared = int(header) if header is not None and header.strip().isdigit() else None
            if size is not None and declared is not None and declared != size:
                raise DownloadError(f"{url}: the server sends {declared} bytes, expected {size}; nothing kept")
            total = size if size is not None else declared
            shown = progress and total is not None
            with Progress(-(-(total or 0) // MiB), target.name, unit="MiB", enabled=shown) as bar:
                while chunk := _read(response, url, written):
                    written += len(chunk)
                    if written > limit:
                        raise DownloadError(f"{url}: more than the expected {limit} bytes; nothing kept")
                    digest.update(chunk)
                    _write(handle, chunk, target)
                    bar.advance_to(written // MiB)
                bar.advance_to(bar.total)
        expected = size if size is not None else declared
        if expected is not None and written != expected:
            raise DownloadError(f"{url}: truncated transfer ({written} of {expected} bytes); nothing kept")
        got = digest.hexdigest()
        if md5 is not None and got != md5:
            raise DownloadError(f"{url}: wrong checksum (md5 {got}, expected {md5}); nothing kept")
        try:
            handle.flush()
            os.fsync(handle.fileno())
            os.replace(temporary, target)
        except OSError as error:
            raise DownloadError(f"{target}: cannot write it ({error.strerror or error}); nothing kept") from None
    _fsync_directory(target.parent)
    return target


def _read(response: http.client.HTTPResponse, url: str, written: int) -> bytes:
    try:
        return response.read(CHUNK_BYTES)
    except (OSError, http.client.HTTPException) as error:
        reason = str(error) or type(error).__name__
        raise DownloadError(f"{url}: the transfer broke off after {written} bytes ({reason}); nothing kept") from None


def _write(handle: IO[bytes], chunk: bytes, target: Path) -> None:
    try:
        handle.write(chunk)
    except OSError as error:
        raise DownloadError(f"{target}: cannot write it ({error.strerror or error}); nothing kept") from None


# -- safe extraction ---------------------------------------------------------------------------------------


def _member_parts(archive: Path, name: str) -> tuple[str, ...]:
    """The path components of member ``name``: ``ArchiveError`` unless it stays below the extraction folder."""
    if "\\" in name or "\x00" in name or name.startswith("/"):
        raise ArchiveError(f"{archive}: member {name[:200]!r} is not a relative path; refusing the archive")
    parts = tuple(part for part in PurePosixPath(name).parts if part != ".")
    if ".." in parts:
        raise ArchiveError(f"{archive}: member {name[:200]!r} points outside the folder (..); refusing the archive")
    return parts


@dataclass
class _Budget:
    archive: Path
    max_bytes: int
    max_members: int
    bytes: int = 0
    members: int = 0

    def member(self) -> None:
        self.members += 1
        if self.members > self.max_members:
            raise ArchiveError(f"{self.archive}: more than {self.max_members} members; refusing the archive")

    def add(self, count: int) -> None:
        self.bytes += count
        if self.bytes > self.max_bytes:
            raise ArchiveError(f"{self.archive}: extracts to more than {self.max_bytes} bytes; refusing the archive")


def _write_member(source: IO[bytes], destination: Path, declared: int, budget: _Budget, name: str) -> None:
    if destination.exists():
        raise ArchiveError(f"{budget.archive}: member {name[:200]!r} appears twice; refusing the archive")
    destination.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with destination.open("wb") as handle:
        while chunk := source.read(CHUNK_BYTES):
            written += len(chunk)
            if written > declared:
                raise ArchiveError(f"{budget.archive}: member {name[:200]!r} is longer than declared")
            budget.add(len(chunk))
            handle.write(chunk)
    if written != declared:
        raise ArchiveError(f"{budget.archive}: member {name[:200]!r} is truncated ({written} of {declared} bytes)")
    os.chmod(destination, 0o644)


def _extract_tar(archive: Path, folder: Path, compressed: bool, budget: _Budget) -> None:
    with tarfile.open(archive, "r:gz" if compressed else "r:") as tar:
        for member in tar:
            budget.member()
            parts = _member_parts(archive, member.name)
            if member.isdir():
                folder.joinpath(*parts).mkdir(parents=True, exist_ok=True)
                continue
            if not member.isreg():
                kind = "symbolic link" if member.issym() else "hard link" if member.islnk() else "special file"
                raise ArchiveError(
                    f"{archive}: member {member.name[:200]!r} is a {kind}; only regular files and folders are "
                    "extracted; refusing the archive"
                )
            if not parts:
                raise ArchiveError(f"{archive}: a member has an empty name; refusing the archive")
            if budget.bytes + member.size > budget.max_bytes:
                raise ArchiveError(f"{archive}: extracts to more than {budget.max_bytes} bytes; refusing the archive")
            source = tar.extractfile(member)
            assert source is not None  # a regular file
            _write_member(source, folder.joinpath(*parts), member.size, budget, member.name)


def _extract_zip(archive: Path, folder: Path, budget: _Budget) -> None:
    with zipfile.ZipFile(archive) as bundle:
        infos = bundle.infolist()
        if len(infos) > budget.max_members:
            raise ArchiveError(f"{archive}: more than {budget.max_members} members; refusing the archive")
        if sum(info.file_size for info in infos) > budget.max_bytes:
            raise ArchiveError(f"{archive}: extracts to more than {budget.max_bytes} bytes; refusing the archive")
        for info in infos:
            budget.member()
            parts = _member_parts(archive, info.filename)
            mode = stat.S_IFMT(info.external_attr >> 16)  # 0: no file type recorded (a plain file)
            if info.is_dir():
                folder.joinpath(*parts).mkdir(parents=True, exist_ok=True)
                continue
            if mode and not stat.S_ISREG(mode):
                kind = "symbolic link" if stat.S_ISLNK(mode) else "special file"
                raise ArchiveError(
                    f"{archive}: member {info.filename[:200]!r} is a {kind}; only regular files and folders are "
                    "extracted; refusing the archive"
                )
            if not parts:
                raise ArchiveError(f"{archive}: a member has an empty name; refusing the archive")
            with bundle.open(info) as source:
                _write_member(source, folder.joinpath(*parts), info.file_size, budget, info.filename)


def extract_archive(
    archive: str | os.PathLike[str],
    into: str | os.PathLike[str],
    *,
    format: str,
    max_bytes: int = 64 * 2**30,
    max_members: int = 1_000_000,
) -> list[Path]:
    """Extract ``archive`` (``"tar"``, ``"tar.gz"`` or ``"zip"``) into the folder ``into`` safely (module
    docstring); the paths of the extracted files. ``ArchiveError`` (nothing extracted) for an unsafe or damaged
    archive. Files already at a member's path are replaced."""
    archive, into = Path(archive), Path(into)
    into.mkdir(parents=True, exist_ok=True)
    budget = _Budget(archive, max_bytes, max_members)
    staging = Path(tempfile.mkdtemp(dir=into, prefix=".extract-"))
    try:
        try:
            if format == "zip":
                _extract_zip(archive, staging, budget)
            elif format in ("tar", "tar.gz"):
                _extract_tar(archive, staging, format == "tar.gz", budget)
            else:
                raise ArchiveError(f"{archive}: unknown archive format {format!r}; expected tar, tar.gz or zip")
        except ArchiveError:
            raise
        except OSError as error:
            if error.errno is None:  # a damaged gzip stream (BadGzipFile)
                raise ArchiveError(f"{archive}: not a valid {format} archive ({error}); nothing extracted") from None
            raise ArchiveError(f"{archive}: cannot extract into {into} ({error.strerror or error})") from None
        except Exception as error:  # tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error: damaged data
            raise ArchiveError(f"{archive}: not a valid {format} archive ({error}); nothing extracted") from None
        os.sync()  # the extracted data are on disk before any of them is renamed into place
        extracted = []
        for directory, folders, files in os.walk(staging):
            folders.sort()
            relative = Path(directory).relative_to(staging)
            (into / relative).mkdir(parents=True, exist_ok=True)
            for name in sorted(files):
                destination = into / relative / name
                if destination.is_dir():
                    raise ArchiveError(f"{archive}: a member would replace the folder {destination}")
                os.replace(Path(directory) / name, destination)
                extracted.append(destination)
        _fsync_directory(into)
        return extracted
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# -- a whole dataset ---------------------------------------------------------------------------------------


def _remove_partials(folder: Path) -> None:
    """Temporary files of earlier downloads that were killed (called while holding the dataset's lock)."""
    if folder.is_dir():
        for leftover in folder.glob(f".*{PARTIAL_SUFFIX}"):
            with contextlib.suppress(OSError):
                leftover.unlink()


def _archive_ready(archive: Archive, path: Path) -> bool:
    return path.is_file() and verify(archive.key, path, size=archive.size, md5=archive.md5, progress=True).ok


def download_dataset(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    progress: bool = True,
    wait: bool = False,
    report: Callable[[str], None] = print,
) -> bool:
    """Fetch every file of dataset ``name`` that is not present and verified (module docstring); ``report`` gets
    one line per file. True when every file is then present and verified."""
    from mtlscope.runs.locking import hold

    info = dataset_info(name)
    root = data_directory(data_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DownloadError(f"{root}: cannot create the data directory ({error.strerror or error})") from None
    with hold(root / f"{LOCK_PREFIX}{name}.lock", Path(f"{root} (download of {name})"), wait=wait):
        return _download(info, root, progress, report)


def _download(info: DatasetInfo, root: Path, progress: bool, report: Callable[[str], None]) -> bool:
    width = key_width(info)

    def _line(status: str, key: str, path: Path, detail: str = "") -> str:
        return format_line(status, key, path, detail, width)

    good = True
    pending: dict[str, list[DataFile]] = {}
    for entry in info.files:
        state = check_file(info, entry, root, progress=progress)
        if state.ok:
            report(_line("present", entry.key, state.path, state.detail))
            continue
        target = root / entry.paths[0]
        if entry.url is not None:
            _remove_partials(target.parent)
            try:
                fetch(entry.url, target, size=entry.size, md5=entry.md5, progress=progress)
            except DownloadError as error:
                report(_line("failed", entry.key, target, str(error)))
                good = False
                continue
            replaced = f"; replaced a file with {state.status}" if state.status != "missing" else ""
            checked = "md5 ok" if entry.md5 else "no known checksum"
            report(_line("downloaded", entry.key, target, f"{target.stat().st_size} bytes, {checked}{replaced}"))
        elif entry.archive is not None:
            pending.setdefault(entry.archive, []).append(entry)
        else:
            report(_line("not available", entry.key, target, f"{state.status}; no download: get it from {info.source}"))
            good = False
    for key, entries in pending.items():
        archive = info.archive(key)
        path = root / archive.path
        try:
            if not _archive_ready(archive, path):
                _remove_partials(path.parent)
                fetch(archive.url, path, size=archive.size, md5=archive.md5, progress=progress)
            assert archive.format is not None  # told from the path when not given
            extract_archive(
                path,
                root / archive.into,
                format=archive.format,
                max_bytes=archive.max_bytes,
                max_members=archive.max_members,
            )
        except DownloadError as error:
            for entry in entries:
                report(_line("failed", entry.key, root / entry.paths[0], str(error)))
            good = False
            continue
        if not archive.keep:
            path.unlink(missing_ok=True)
        for entry in entries:
            state = check_file(info, entry, root, progress=progress)
            if state.ok:
                report(_line("extracted", entry.key, state.path, f"from {archive.path}; {state.detail}"))
            else:
                detail = f"{archive.path} did not give it: {state.status}"
                detail += f", {state.detail}" if state.detail else ""
                report(_line("failed", entry.key, state.path, detail))
                good = False
    return good
