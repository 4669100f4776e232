"""Readers of standard data-set file formats, never unpickling anything.

- ``read_idx(path)``: an IDX file (the format of MNIST and Fashion-MNIST, e.g. ``train-images-idx3-ubyte.gz``),
  gzip-compressed or raw, as a NumPy array.

The IDX format (LeCun et al., "The MNIST database"): a 4-byte magic number — two zero bytes, a dtype code
(0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64) and the number of dimensions
``d`` — then ``d`` big-endian uint32 sizes, then the values, big-endian, in C order, and nothing after them.

A file that is not exactly that raises ``IDXFormatError`` (a ``ValueError``) with one line naming the file and
what was expected: a wrong magic number, an unknown dtype code, zero dimensions, a header cut short, fewer
bytes of data than the sizes declare (a truncated file) or more (trailing bytes), a damaged gzip stream.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import zlib
from pathlib import Path

import numpy as np

#: IDX dtype codes -> NumPy dtypes (big-endian, as stored)
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
GZIP_MAGIC = b"\x1f\x8b"
#: deflate cannot compress better than 1032:1, so a gzip file of S bytes holds at most this many times S bytes
#: (a header declaring more is a truncated file or not this file; checked before allocating the array)
DEFLATE_MAX_RATIO = 1032
_CHUNK = 1 << 24


class IDXFormatError(ValueError):
    """An IDX file is not what its header says (or has no valid header); the message is one line."""


def _codes() -> str:
    return ", ".join(f"0x{code:02X} {dtype.name}" for code, dtype in IDX_DTYPES.items())


def _read_exactly(handle: io.BufferedIOBase, buffer: memoryview) -> int:
    """Fill ``buffer`` from ``handle``; the number of bytes read (less only at the end of the stream)."""
    filled = 0
    while filled < len(buffer):
        count = handle.readinto(buffer[filled : filled + _CHUNK])
        if not count:
            break
        filled += count
    return filled


def _describe(shape: tuple[int, ...], dtype: np.dtype) -> str:
    return f"{'x'.join(map(str, shape))} {dtype.name}"


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """The array stored in the IDX file ``path`` (gzip-compressed or raw: told by its first bytes, not its name).

    Returns a writable C-ordered array of the stored shape in native byte order (uint8 for image and label
    files). Raises ``IDXFormatError`` with one line naming the file for anything that is not a well-formed
    IDX file (see the module docstring); a file that cannot be opened raises it too.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as raw:
            compressed = raw.read(2) == GZIP_MAGIC
            raw.seek(0)
            if compressed:
                with gzip.GzipFile(fileobj=raw, mode="rb") as handle:
                    return _read(handle, path, size, compressed=True)
            return _read(raw, path, size, compressed=False)
    except IDXFormatError:
        raise
    except (EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise IDXFormatError(
            f"{path}: damaged gzip stream ({error}); expected a complete gzip-compressed IDX file"
        ) from None
    except OSError as error:
        raise IDXFormatError(f"{path}: cannot read the file ({error.strerror or error})") from None


def _read(handle: io.BufferedIOBase, path: Path, size: int, *, compressed: bool) -> np.ndarray:
    what = "gzip-compressed IDX file" if compressed else "IDX file"
    magic = handle.read(4)
    if len(magic) < 4 or magic[0] != 0 or magic[1] != 0:
        raise IDXFormatError(
            f"{path}: not an IDX file (magic number {magic.hex() or 'missing'}; expected two zero bytes, "
            "a dtype code and a dimension count)"
        )
    code, ndim = magic[2], magic[3]
    if code not in IDX_DTYPES:
        raise IDXFormatError(f"{path}: unknown IDX dtype code 0x{code:02X}; expected one of {_codes()}")
    if ndim == 0:
        raise IDXFormatError(f"{path}: the IDX header declares 0 dimensions; expected at least 1")
    sizes = handle.read(4 * ndim)
    if len(sizes) < 4 * ndim:
        raise IDXFormatError(
            f"{path}: truncated IDX header: {ndim} dimension sizes declared, {len(sizes) // 4} present"
        )
    shape = tuple(int(value) for value in np.frombuffer(sizes, dtype=">u4"))
    dtype = IDX_DTYPES[code]
    expected = math.prod(shape) * dtype.itemsize
    header = 4 + 4 * ndim
    if compressed:
        if header + expected > DEFLATE_MAX_RATIO * size:
            raise IDXFormatError(
                f"{path}: truncated {what}: the header declares {_describe(shape, dtype)} ({expected} bytes of data), "
                f"more than a {size}-byte gzip file can hold"
            )
    elif header + expected != size:
        raise _size_error(path, what, shape, dtype, expected, size - header)
    array = np.empty(shape, dtype=dtype)
    buffer = array.reshape(-1).view(np.uint8).data
    got = _read_exactly(handle, buffer)
    if got < expected:
        raise _size_error(path, what, shape, dtype, expected, got)
    extra = len(handle.read(1 << 16))
    if extra:
        raise IDXFormatError(
            f"{path}: {'at least ' if extra == 1 << 16 else ''}{extra} bytes after the declared "
            f"{_describe(shape, dtype)} data; expected the file to end there"
        )
    return array if dtype.isnative else array.astype(dtype.newbyteorder("="))


def _size_error(
    path: Path, what: str, shape: tuple[int, ...], dtype: np.dtype, expected: int, got: int
) -> IDXFormatError:
    if got < expected:
        return IDXFormatError(
            f"{path}: truncated {what}: the header declares {_describe(shape, dtype)} ({expected} bytes of data), "
            f"the file has {max(got, 0)}"
        )
    return IDXFormatError(
        f"{path}: {got - expected} bytes after the declared {_describe(shape, dtype)} data ({expected} bytes); "
        "expected the file to end there"
    )
