"""Large image sets decoded once into a cached uint8 array on disk, memory-mapped, and normalized on the fly.

- ``cached_images(sources, decode, cache_dir, *, decoder, name)``: the uint8 array ``decode(sources)``
  returns, stored once in ``cache_dir`` and opened read-only memory-mapped (``np.load(..., mmap_mode="r")``);
  ``decode`` runs only when the cache has no valid entry for the sources' bytes and the decoder's identity.
  With ``shape=(N, ...)``, ``decode(sources, out)`` instead writes into ``out``, a writable memory map of the
  entry's file: a set larger than memory is decoded in chunks, never held whole.
- ``CachedImageDataset(images, targets, *, mean, std, layout)``: a map-style ``torch.utils.data.Dataset``
  over a uint8 image array (a cache's memory map or any array) whose items are float32 ``[C, H, W]`` images
  normalized as ``(x / 255 - mean) / std`` per channel when they are read, one item or one batch at a time.
  The whole set is never converted to float32: memory holds the uint8 pages the batches touch.

Cache entry ``<name>-<key[:16]>``: ``.npy`` (the array, NumPy's format, no pickle) and ``.json`` (its header:
key, shape, dtype, data offset and size, sha256 of the whole data and of a sample), written by
one process at a time under ``fcntl.flock`` on ``.lock``; each file is written to a uniquely named temporary
file, fsynced and renamed into place, the header last, so an entry is complete or absent. See ``docs/data.md``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import socket
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Union

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from mtlscope.data.fingerprint import combine, file_digest, tensor_digest

logger = logging.getLogger(__name__)

FORMAT = 1  # of the cache entry; part of the key, so a changed format never reads an old entry
#: bytes at each end of the data whose sha256 is checked on every open (the whole data only with check="full")
SAMPLE_BYTES = 1 << 20
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
Layout = Literal["NCHW", "NHWC", "NHW"]
LAYOUTS: tuple[str, ...] = ("NCHW", "NHWC", "NHW")
Targets = Union[Tensor, np.ndarray, Mapping[str, Union[Tensor, np.ndarray]]]  # noqa: UP007 (a runtime alias on 3.10)
Decode = Callable[[Sequence[Path]], np.ndarray]
#: A decoder that writes into a preallocated uint8 array of the entry's shape (``cached_images(..., shape=...)``).
DecodeInto = Callable[[Sequence[Path], np.ndarray], None]


class CacheDamaged(Exception):
    """A cache entry is not what its header says (internal: reported in one log line and rebuilt)."""


def cache_key(sources: Sequence[str | os.PathLike[str]], decoder: str) -> str:
    """The key of a cache entry: sha256 over the sources' contents (in order) and the decoder's identity."""
    digests = []
    for source in sources:
        try:
            digests.append(file_digest(source))
        except OSError as error:
            raise ValueError(f"image source {source}: cannot read the file ({error.strerror or error})") from None
    return combine({"format": FORMAT, "decoder": decoder, "sources": digests})


def _sample_digest(data: memoryview) -> str:
    digest = hashlib.sha256(str(len(data)).encode())
    digest.update(data[:SAMPLE_BYTES])
    digest.update(data[max(len(data) - SAMPLE_BYTES, SAMPLE_BYTES) :])
    return digest.hexdigest()


def _bytes_of(array: np.ndarray) -> memoryview:
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8).data


def _full_digest(data: memoryview) -> str:
    digest = hashlib.sha256()
    for start in range(0, len(data), 1 << 24):
        digest.update(data[start : start + (1 << 24)])
    return digest.hexdigest()


def _open_entry(array_path: Path, header_path: Path, key: str, check: str) -> np.memmap:
    """The entry's array, memory-mapped read-only, after checking it against its header (``CacheDamaged`` if not)."""
    try:
        header = json.loads(header_path.read_text()[:100_000])
    except FileNotFoundError:
        raise CacheDamaged("its header file is missing (an interrupted write)") from None
    except (OSError, ValueError) as error:
        raise CacheDamaged(f"its header file is unreadable: {error}") from None
    if not isinstance(header, dict) or header.get("key") != key or header.get("format") != FORMAT:
        raise CacheDamaged("its header does not carry this entry's key")
    try:
        array = np.load(array_path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise CacheDamaged("its array file is missing") from None
    except (OSError, ValueError, EOFError) as error:  # a bad .npy header or a file shorter than its shape
        raise CacheDamaged(
            f"its array file is unreadable: {(str(error).splitlines() or [type(error).__name__])[0][:200]}"
        ) from None
    if not isinstance(array, np.memmap):
        raise CacheDamaged("its array file is not a memory-mappable array")
    size = array_path.stat().st_size
    offset, nbytes = header.get("offset"), header.get("nbytes")
    if not isinstance(offset, int) or not isinstance(nbytes, int):
        raise CacheDamaged("its header has no data offset and size")
    expected_size = offset + nbytes
    if list(array.shape) != header.get("shape") or str(array.dtype) != header.get("dtype") or array.dtype != np.uint8:
        raise CacheDamaged(
            f"its array is {array.dtype} {list(array.shape)}, "
            f"its header says {header.get('dtype')} {header.get('shape')}"
        )
    if size != expected_size or array.offset != offset:
        raise CacheDamaged(f"its array file has {size} bytes, its header says {expected_size}")
    data = array.reshape(-1).data
    if _sample_digest(data) != header.get("sample_sha256"):
        raise CacheDamaged("its data differ from the checksum in its header")
    if check == "full" and _full_digest(data) != header.get("sha256"):
        raise CacheDamaged("its data differ from the checksum in its header")
    return array


def _write_atomically(path: Path, write: Callable[[Any], None]) -> None:
    """Write ``path`` through a uniquely named temporary file in its directory: fsynced, then renamed."""
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _fsync_directory(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened for fsync
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _checked_output(array: object, decoder: str) -> np.ndarray:
    if not isinstance(array, np.ndarray):
        raise ValueError(
            f"image decoder {decoder!r} returned {type(array).__name__}; expected a uint8 numpy array [N, ...]"
        )
    if array.dtype != np.uint8:
        raise ValueError(
            f"image decoder {decoder!r} returned a {array.dtype} array; expected uint8 [N, ...] "
            "(pixel values 0..255, normalized later)"
        )
    if array.ndim < 1 or array.size == 0:
        raise ValueError(
            f"image decoder {decoder!r} returned an empty array of shape {array.shape}; expected [N, ...], N > 0"
        )
    return array


def _fill(array_path: Path, header_path: Path, key: str, array: np.ndarray, decoder: str) -> None:
    array = np.ascontiguousarray(array)
    data = _bytes_of(array)
    offset: list[int] = []

    def write_array(handle: Any) -> None:
        np.lib.format.write_array(handle, array, allow_pickle=False)
        offset.append(handle.tell() - array.nbytes)

    header_path.unlink(missing_ok=True)  # the entry is invalid from here until its new header is in place
    _write_atomically(array_path, write_array)
    header = {
        "format": FORMAT,
        "key": key,
        "decoder": decoder,
        "shape": list(array.shape),
        "dtype": str(array.dtype),
        "offset": offset[0],
        "nbytes": int(array.nbytes),
        "sample_sha256": _sample_digest(data),
        "sha256": _full_digest(data),
    }
    _write_atomically(header_path, lambda handle: handle.write((json.dumps(header, indent=1) + "\n").encode()))
    _fsync_directory(array_path.parent)


def _checked_shape(name: str, shape: Sequence[int]) -> tuple[int, ...]:
    values = tuple(shape) if isinstance(shape, (tuple, list)) else ()
    if not values or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in values):
        raise ValueError(f"image cache {name!r}: shape {shape!r}: expected positive integers (N, ...), N > 0")
    return tuple(int(v) for v in values)


def _fill_in_place(
    array_path: Path,
    header_path: Path,
    key: str,
    shape: tuple[int, ...],
    decode: DecodeInto,
    paths: Sequence[Path],
    decoder: str,
) -> None:
    """Fill an entry by ``decode(paths, out)`` into a memory map of a temporary ``.npy``, then rename it into place
    and write the header (as ``_fill``); nothing half-written stays when ``decode`` or a write fails."""
    header_path.unlink(missing_ok=True)
    descriptor, name = tempfile.mkstemp(dir=array_path.parent, prefix=f".{array_path.name}.", suffix=".tmp")
    os.close(descriptor)
    temporary = Path(name)
    try:
        try:
            out = np.lib.format.open_memmap(temporary, mode="w+", dtype=np.uint8, shape=shape)
        except OSError as error:
            raise ValueError(f"image cache {array_path}: cannot write it ({error.strerror or error})") from None
        result: object = decode(paths, out)  # type: ignore[func-returns-value]
        if result is not None:
            raise ValueError(
                f"image decoder {decoder!r} returned {type(result).__name__}; with shape= it must write into the "
                "array it is given and return None"
            )
        out.flush()
        offset = int(out.offset)
        data = out.reshape(-1).data
        sample, full = _sample_digest(data), _full_digest(data)
        del data, out
        try:
            with open(temporary, "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(temporary, array_path)
        except OSError as error:
            raise ValueError(f"image cache {array_path}: cannot write it ({error.strerror or error})") from None
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    header = {
        "format": FORMAT,
        "key": key,
        "decoder": decoder,
        "shape": list(shape),
        "dtype": "uint8",
        "offset": offset,
        "nbytes": int(np.prod(shape)),
        "sample_sha256": sample,
        "sha256": full,
    }
    try:
        _write_atomically(header_path, lambda handle: handle.write((json.dumps(header, indent=1) + "\n").encode()))
    except OSError as error:
        header_path.unlink(missing_ok=True)
        raise ValueError(f"image cache {header_path}: cannot write it ({error.strerror or error})") from None
    _fsync_directory(array_path.parent)


@contextlib.contextmanager
def _hold(lock: Path, what: Path) -> Iterator[None]:
    """Hold ``flock`` on ``lock`` for the block, waiting for another holder (one log line says who)."""
    try:
        descriptor = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise ValueError(
            f"image cache directory {lock.parent}: cannot write in it ({error.strerror or error})"
        ) from None
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 200, 0).decode(errors="replace").strip() or "another process"
            logger.info("image cache %s is being written by %s; waiting for it", what, holder[:200])
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        try:
            yield
        finally:
            fcntl.flock(descriptor, fcntl.LOCK_UN)
    finally:
        os.close(descriptor)


def _remove_stale_temporaries(directory: Path, stem: str) -> None:
    """Temporary files of this entry left by a writer that was killed (we hold the entry's lock: none is live)."""
    for leftover in directory.glob(f".{stem}.*.tmp"):
        with contextlib.suppress(OSError):
            leftover.unlink()


def cached_images(
    sources: Sequence[str | os.PathLike[str]],
    decode: Decode | DecodeInto,
    cache_dir: str | os.PathLike[str],
    *,
    decoder: str,
    name: str = "images",
    check: Literal["quick", "full"] = "quick",
    shape: Sequence[int] | None = None,
) -> np.memmap:
    """The uint8 image array decoded from ``sources``, cached in ``cache_dir`` and memory-mapped read-only.

    Args:
        sources: the source files, in the order ``decode`` expects them.
        decode: ``decode([Path, ...]) -> np.ndarray``, uint8 ``[N, ...]``; called only on a cache miss.
        cache_dir: directory of the cache (created if missing); entries of different keys live side by side.
        decoder: the decoder's identity and version, e.g. ``"fashion-mnist-images/1"``; part of the key: change
            it whenever ``decode``'s output for the same files changes.
        name: file-name prefix of the entry (letters, digits, ``._-``).
        check: ``"quick"`` (default) checks on every open the header, the file size and the sha256 of the data's
            first and last MiB; ``"full"`` also the sha256 of all the data (reads the whole array once).
        shape: when given, the entry's shape ``(N, ...)``, known before decoding: ``decode(sources, out)`` then
            fills ``out``, a writable uint8 memory map of that shape in the entry's temporary file (zeros where
            it writes nothing), and returns None; memory holds only what it decodes at a time.

    The key is ``sha256`` over the sources' bytes and ``decoder``; the entry is ``<name>-<key[:16]>.npy`` with
    its header ``.json``. Two processes asking at once: one decodes and writes while holding the entry's
    ``flock`` lock, the other waits (one log line) and then reads. A damaged entry (truncated, header
    mismatch, wrong key, failed checksum) is reported in one warning line and rebuilt.

    Raises ``ValueError`` with one line for a source that cannot be read, a bad ``name``, ``check`` or
    ``shape``, or a ``decode`` output that is not a non-empty uint8 array.
    """
    if not NAME.fullmatch(name):
        raise ValueError(f"cache name {name!r}: expected letters, digits, '.', '_' or '-' (at most 100 characters)")
    if check not in ("quick", "full"):
        raise ValueError(f"cache check {check!r}: expected 'quick' or 'full'")
    if isinstance(sources, (str, bytes, os.PathLike)):
        raise ValueError(f"image cache {name!r}: sources must be a list of file paths, got the single path {sources!r}")
    if not sources:
        raise ValueError(f"image cache {name!r}: no source files given")
    if not isinstance(decoder, str) or not decoder.strip():
        raise ValueError(f"image cache {name!r}: decoder must name the decoder and its version, e.g. 'idx-images/1'")
    if shape is not None:
        shape = _checked_shape(name, shape)
    paths = [Path(source) for source in sources]
    key = cache_key(paths, decoder)
    directory = Path(cache_dir)
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"image cache directory {directory}: exists and is not a directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"image cache directory {directory}: cannot create it ({error.strerror or error})") from None
    stem = f"{name}-{key[:16]}"
    array_path, header_path = directory / f"{stem}.npy", directory / f"{stem}.json"
    with _hold(directory / f"{stem}.lock", array_path):
        if array_path.exists() or header_path.exists():
            try:
                return _open_entry(array_path, header_path, key, check)
            except CacheDamaged as damage:
                logger.warning("image cache %s is damaged (%s); rebuilding it", array_path, damage)
        _remove_stale_temporaries(directory, stem)
        if shape is not None:
            _fill_in_place(array_path, header_path, key, shape, decode, paths, decoder)  # type: ignore[arg-type]
            return _open_entry(array_path, header_path, key, check)
        array = _checked_output(decode(paths), decoder)  # type: ignore[call-arg]
        try:
            _fill(array_path, header_path, key, array, decoder)
        except OSError as error:  # a full disk, a quota, a read-only filesystem: nothing half-written stays
            header_path.unlink(missing_ok=True)
            raise ValueError(f"image cache {array_path}: cannot write it ({error.strerror or error})") from None
        del array
        return _open_entry(array_path, header_path, key, check)


def entry_key(images: np.ndarray) -> str | None:
    """The cache key of ``images`` when it is a whole cache entry's memory map as ``cached_images`` returns it,
    read from the entry's header; else None."""
    filename = getattr(images, "filename", None)
    if not isinstance(images, np.memmap) or filename is None:
        return None
    path = Path(filename)
    try:
        header = json.loads(path.with_suffix(".json").read_text()[:100_000])
    except (OSError, ValueError):
        return None
    if not isinstance(header, dict) or header.get("shape") != list(images.shape) or not images.flags.c_contiguous:
        return None
    key = header.get("key")
    return key if isinstance(key, str) and path.stem.endswith(key[:16]) else None


class CachedImageDataset(Dataset):
    """Normalized float32 images from a uint8 array (typically a ``cached_images`` memory map) and their targets.

    Args:
        images: uint8 array, ``[N, C, H, W]`` (``layout="NCHW"``), ``[N, H, W, C]`` (``"NHWC"``) or ``[N, H, W]``
            (``"NHW"``, one channel). Held as given — a memory map stays a memory map.
        targets: a tensor (or array) ``[N]`` / ``[N, ...]``: items are ``(image, target)``; or a mapping task ->
            tensor ``[N, ...]`` (one input, several labels: the shared-input layout): items are
            ``(image, {task: target})``.
        mean, std: per-channel mean and standard deviation of the pixel values scaled to [0, 1] (one number or
            C numbers); an item is ``(x / 255 - mean) / std``.
        layout: how ``images`` is laid out (see above); items are always ``[C, H, W]``.
        key: identity of the images for ``fingerprint()``; by default the cache key of a ``cached_images``
            entry, else the sha256 of the images' bytes (computed once, when first asked).

    ``__getitems__(indices)`` (what ``DataLoader`` calls for a batch) and ``batch(indices)`` read the indexed
    rows in one gather and normalize them together. A ``DataLoader`` worker receives the memory map's file
    name, not its data, and maps it again.
    """

    def __init__(
        self,
        images: np.ndarray,
        targets: Targets,
        *,
        mean: float | Sequence[float],
        std: float | Sequence[float],
        layout: Layout = "NCHW",
        key: str | None = None,
    ) -> None:
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
            kind = images.dtype if isinstance(images, np.ndarray) else type(images).__name__
            raise ValueError(f"CachedImageDataset images: expected a uint8 numpy array, got {kind}")
        if layout not in LAYOUTS:
            raise ValueError(f"CachedImageDataset layout {layout!r}: expected one of {LAYOUTS}")
        dims = 3 if layout == "NHW" else 4
        if images.ndim != dims:
            raise ValueError(
                f"CachedImageDataset images: layout {layout} expects {dims} dimensions, got shape {tuple(images.shape)}"
            )
        self.images = images
        self.layout: Layout = layout
        channels = 1 if layout == "NHW" else images.shape[1 if layout == "NCHW" else 3]
        self.mean = _per_channel("mean", mean, channels)
        self.std = _per_channel("std", std, channels)
        if any(value <= 0 for value in self.std):
            raise ValueError(f"CachedImageDataset std {list(self.std)}: expected positive numbers")
        # (x / 255 - mean) / std = x * scale + shift, per channel, computed in float32
        self._scale = torch.tensor([1 / (255 * s) for s in self.std], dtype=torch.float32).view(1, -1, 1, 1)
        self._shift = torch.tensor([-m / s for m, s in zip(self.mean, self.std)], dtype=torch.float32).view(1, -1, 1, 1)
        self.targets = _targets(targets, len(images))
        self._key = key

    # -- shape -----------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one item."""
        shape = self.images.shape
        if self.layout == "NCHW":
            return (shape[1], shape[2], shape[3])
        if self.layout == "NHWC":
            return (shape[3], shape[1], shape[2])
        return (1, shape[1], shape[2])

    # -- reading ---------------------------------------------------------------------------------------------
    def _normalized(self, rows: np.ndarray) -> Tensor:
        """float32 ``[B, C, H, W]`` from uint8 rows in the dataset's layout."""
        batch = torch.from_numpy(rows if rows.flags.writeable else rows.copy())  # a copy of a few rows at most
        if self.layout == "NHWC":
            batch = batch.permute(0, 3, 1, 2)
        elif self.layout == "NHW":
            batch = batch.unsqueeze(1)
        out = batch.to(torch.float32, memory_format=torch.contiguous_format)
        return out.mul_(self._scale).add_(self._shift)

    def _indices(self, indices: Sequence[int] | np.ndarray | Tensor) -> np.ndarray:
        index = np.asarray(indices.cpu().numpy() if isinstance(indices, Tensor) else indices)
        if index.ndim != 1 or (index.size and not np.issubdtype(index.dtype, np.integer)):
            raise IndexError(
                f"CachedImageDataset: expected a 1-D sequence of integer indices, got {index.dtype} {index.shape}"
            )
        index = index.astype(np.int64, copy=False)
        if index.size and (index.min() < -len(self) or index.max() >= len(self)):
            raise IndexError(f"CachedImageDataset: index out of range for {len(self)} images")
        return index

    def _targets_at(self, index: np.ndarray | int) -> Tensor | dict[str, Tensor]:
        position = torch.as_tensor(index)
        if isinstance(self.targets, dict):
            return {task: values[position] for task, values in self.targets.items()}
        return self.targets[position]

    def batch(self, indices: Sequence[int] | np.ndarray | Tensor) -> tuple[Tensor, Tensor | dict[str, Tensor]]:
        """``(inputs float32 [B, C, H, W], targets [B, ...] or {task: [B, ...]})`` of the indexed examples."""
        index = self._indices(indices)
        rows = self.images[index]  # one gather: reads only these rows of a memory map
        return self._normalized(np.ascontiguousarray(rows)), self._targets_at(index)

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[Tensor, Any]]:
        """The items at ``indices`` as a list (the ``DataLoader`` batch contract), read and normalized together."""
        inputs, targets = self.batch(indices)
        if isinstance(targets, dict):
            return [(inputs[i], {task: values[i] for task, values in targets.items()}) for i in range(len(inputs))]
        return [(inputs[i], targets[i]) for i in range(len(inputs))]

    def __getitem__(self, index: int) -> tuple[Tensor, Any]:
        if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"CachedImageDataset index: expected an integer, got {type(index).__name__}")
        if not -len(self) <= index < len(self):
            raise IndexError(f"CachedImageDataset index {index} out of range for {len(self)} images")
        row = self.images[int(index) : int(index) + 1 or None]
        return self._normalized(row)[0], self._targets_at(int(index))

    # -- identity --------------------------------------------------------------------------------------------
    def images_key(self) -> str:
        """Identity of the images: the given key, the cache entry's key, or the sha256 of their dtype, shape, bytes."""
        if self._key is None:
            self._key = entry_key(self.images)
        if self._key is None:
            digest = hashlib.sha256(f"{self.images.dtype}|{tuple(self.images.shape)}|".encode())
            rows = max(1, (1 << 24) // max(1, self.images[0].nbytes))  # 16 MiB at a time
            for start in range(0, len(self), rows):
                digest.update(_bytes_of(self.images[start : start + rows]))
            self._key = digest.hexdigest()
        return self._key

    def fingerprint(self) -> str:
        """sha256 (hex) of the images' identity, the layout, the normalization and the targets."""
        targets: object
        if isinstance(self.targets, dict):
            targets = {task: tensor_digest(values) for task, values in self.targets.items()}
        else:
            targets = tensor_digest(self.targets)
        return combine(
            {
                "images": self.images_key(),
                "layout": self.layout,
                "mean": list(self.mean),
                "std": list(self.std),
                "targets": targets,
            }
        )

    # -- pickling (DataLoader workers started by spawn/forkserver) ---------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if entry_key(self.images) is not None:
            state["images"] = ("memmap", str(self.images.filename), tuple(self.images.shape))  # type: ignore[attr-defined]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        images = state["images"]
        if isinstance(images, tuple) and images[:1] == ("memmap",):
            _, filename, shape = images
            mapped = np.load(filename, mmap_mode="r", allow_pickle=False)
            if tuple(mapped.shape) != tuple(shape):
                raise ValueError(f"image cache {filename}: changed since the dataset was built (shape {mapped.shape})")
            state["images"] = mapped
        self.__dict__.update(state)


def _per_channel(what: str, value: float | Sequence[float], channels: int) -> tuple[float, ...]:
    values = [value] * channels if isinstance(value, (int, float)) else list(value)
    if len(values) != channels or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in values
    ):
        raise ValueError(
            f"CachedImageDataset {what} {value!r}: expected one finite number or {channels} (one per channel)"
        )
    return tuple(float(v) for v in values)


def _as_tensor(what: str, values: Tensor | np.ndarray, count: int) -> Tensor:
    if isinstance(values, np.ndarray):
        values = torch.from_numpy(np.ascontiguousarray(values))
    if not isinstance(values, Tensor):
        raise ValueError(f"CachedImageDataset {what}: expected a tensor or array, got {type(values).__name__}")
    if values.ndim < 1 or values.shape[0] != count:
        raise ValueError(
            f"CachedImageDataset {what}: expected {count} rows (one per image), got shape {tuple(values.shape)}"
        )
    return values.detach().cpu()


def _targets(targets: Targets, count: int) -> Tensor | dict[str, Tensor]:
    if isinstance(targets, Mapping):
        if not targets:
            raise ValueError("CachedImageDataset targets: an empty mapping; expected task -> tensor [N, ...]")
        return {str(task): _as_tensor(f"targets of task {task!r}", values, count) for task, values in targets.items()}
    return _as_tensor("targets", targets, count)
