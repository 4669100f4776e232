"""read_idx: IDX files written here byte by byte (raw and gzip), every malformed case, and the official files."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from mtlscope.data.formats import IDXFormatError, read_idx

FASHION_MNIST = Path(os.environ.get("MTLSCOPE_FASHION_MNIST_DIR", "/work/shared/data/fashion-mnist"))


def idx_bytes(values: list[int] | bytes, shape: tuple[int, ...], code: int = 0x08, fmt: str = "B") -> bytes:
    """An IDX file by hand: magic (0, 0, code, ndim), big-endian uint32 sizes, big-endian values."""
    header = bytes([0, 0, code, len(shape)]) + b"".join(struct.pack(">I", size) for size in shape)
    body = values if isinstance(values, bytes) else struct.pack(f">{len(values)}{fmt}", *values)
    return header + body


def write(path: Path, data: bytes, *, compress: bool = False) -> Path:
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


@pytest.mark.parametrize("compress", [False, True])
def test_reads_images_and_labels(tmp_path: Path, compress: bool) -> None:
    pixels = list(range(2 * 3 * 4))
    images = read_idx(write(tmp_path / "images-idx3-ubyte", idx_bytes(pixels, (2, 3, 4)), compress=compress))
    assert images.dtype == np.uint8 and images.shape == (2, 3, 4)
    assert images[1, 2, 3] == 23 and images[0, 1, 0] == 4  # C order: index (i, j, k) = 12 i + 4 j + k
    assert images.flags.writeable and images.flags.c_contiguous
    labels = read_idx(write(tmp_path / "labels-idx1-ubyte", idx_bytes([9, 0, 3], (3,)), compress=compress))
    assert labels.tolist() == [9, 0, 3]


@pytest.mark.parametrize(
    ("code", "fmt", "values", "dtype"),
    [
        (0x09, "b", [-128, 127, -1], np.int8),
        (0x0B, "h", [-30000, 2, 300], np.int16),
        (0x0C, "i", [-(2**31), 2**31 - 1, 65536], np.int32),
        (0x0D, "f", [1.5, -2.25, 3.0e10], np.float32),
        (0x0E, "d", [1e-300, -0.1, 7.0], np.float64),
    ],
)
def test_reads_every_dtype_big_endian_into_native_order(
    tmp_path: Path, code: int, fmt: str, values: list, dtype: type
) -> None:
    array = read_idx(write(tmp_path / "a.idx", idx_bytes(values, (3,), code=code, fmt=fmt)))
    assert array.dtype == np.dtype(dtype) and array.dtype.isnative
    np.testing.assert_array_equal(array, np.array(values, dtype=dtype))


def test_gzip_is_told_by_content_not_name(tmp_path: Path) -> None:
    data = idx_bytes([1, 2], (2,))
    assert read_idx(write(tmp_path / "raw.gz", data)).tolist() == [1, 2]  # raw under a .gz name
    assert read_idx(write(tmp_path / "compressed", data, compress=True)).tolist() == [1, 2]


def one_line(error: pytest.ExceptionInfo, path: Path, *fragments: str) -> None:
    message = str(error.value)
    assert "\n" not in message and message.startswith(str(path)), message
    for fragment in fragments:
        assert fragment in message, message


GOOD = idx_bytes(list(range(24)), (2, 3, 4))
BAD = [
    ("empty", b"", ["not an IDX file", "magic number missing"]),
    ("wrong-magic", b"\x01\x00" + GOOD[2:], ["not an IDX file", "0100"]),
    ("unknown-dtype", GOOD[:2] + b"\x07" + GOOD[3:], ["unknown IDX dtype code 0x07", "0x08 uint8"]),
    ("zero-dims", b"\x00\x00\x08\x00", ["declares 0 dimensions"]),
    ("short-header", GOOD[:10], ["truncated IDX header: 3 dimension sizes declared, 1 present"]),
    ("truncated", GOOD[:-5], ["truncated", "2x3x4 uint8 (24 bytes of data)", "has 19"]),
    ("oversized", GOOD + b"\x00\x00", ["2 bytes after the declared 2x3x4 uint8 data"]),
    ("huge-claim", b"\x00\x00\x08\x03" + struct.pack(">III", 60000, 60000, 60000) + bytes(10), ["truncated"]),
]


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize(("case", "data", "fragments"), BAD, ids=[case for case, _, _ in BAD])
def test_malformed_files_raise_one_line(
    tmp_path: Path, case: str, data: bytes, fragments: list[str], compress: bool
) -> None:
    path = write(tmp_path / case, data, compress=compress)
    with pytest.raises(IDXFormatError) as error:
        read_idx(path)
    one_line(error, path, *fragments)
    assert isinstance(error.value, ValueError)


def test_damaged_gzip_streams(tmp_path: Path) -> None:
    compressed = gzip.compress(idx_bytes(list(range(200)) * 5, (1000,)))
    cut = write(tmp_path / "cut.gz", compressed[: len(compressed) // 2])
    with pytest.raises(IDXFormatError) as error:
        read_idx(cut)
    one_line(error, cut, "gzip")
    flipped = bytearray(compressed)
    flipped[-6] ^= 0xFF  # the CRC of the data
    bad_crc = write(tmp_path / "crc.gz", bytes(flipped))
    with pytest.raises(IDXFormatError) as error:
        read_idx(bad_crc)
    one_line(error, bad_crc, "damaged gzip stream")


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(IDXFormatError) as error:
        read_idx(tmp_path / "nope")
    one_line(error, tmp_path / "nope", "cannot read the file", "No such file")
    with pytest.raises(IDXFormatError) as error:
        read_idx(tmp_path)
    one_line(error, tmp_path, "cannot read the file")


@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="the official Fashion-MNIST files are not on this machine")
def test_official_fashion_mnist_files() -> None:
    for prefix, count in (("train", 60000), ("t10k", 10000)):
        images = read_idx(FASHION_MNIST / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(FASHION_MNIST / f"{prefix}-labels-idx1-ubyte.gz")
        assert images.shape == (count, 28, 28) and images.dtype == np.uint8
        assert labels.shape == (count,) and labels.dtype == np.uint8
        assert labels.min() == 0 and labels.max() == 9
        assert np.bincount(labels).tolist() == [count // 10] * 10  # Fashion-MNIST is balanced
        assert images.max() == 255 and images.min() == 0
