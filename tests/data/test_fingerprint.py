"""Fingerprints of data (``mtlscope.data.fingerprint``): they change with the contents and only then."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from mtlscope.data.fingerprint import combine, file_digest, tensor_digest


def test_tensor_digest_covers_contents_dtype_and_shape() -> None:
    values = torch.arange(12, dtype=torch.float32)
    assert tensor_digest(values) == tensor_digest(values.clone())
    changed = values.clone()
    changed[5] = 5.5
    assert tensor_digest(changed) != tensor_digest(values)
    assert tensor_digest(values.reshape(3, 4)) != tensor_digest(values)
    assert tensor_digest(values.double()) != tensor_digest(values)
    assert tensor_digest(values.reshape(3, 4).t()) == tensor_digest(values.reshape(3, 4).t().contiguous())
    assert tensor_digest(torch.tensor([True, False])) != tensor_digest(torch.tensor([True, True]))
    assert tensor_digest(torch.ones(2, dtype=torch.bfloat16)) != tensor_digest(torch.ones(2, dtype=torch.float16))


def test_file_digest_is_the_sha256_of_the_bytes_and_sees_a_replaced_file(tmp_path: Path) -> None:
    import hashlib

    path = tmp_path / "images.bin"
    path.write_bytes(bytes(range(200)))
    assert file_digest(path) == hashlib.sha256(bytes(range(200))).hexdigest()
    stat = path.stat()
    # replaced by another file of the same size with the same times: a new inode, so a new digest
    other = tmp_path / "other.bin"
    other.write_bytes(bytes(reversed(range(200))))
    os.utime(other, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    keep = tmp_path / "keep.bin"
    os.link(path, keep)  # keeps the old inode alive, so the new file cannot reuse its number
    os.replace(other, path)
    assert path.stat().st_mtime_ns == stat.st_mtime_ns and path.stat().st_size == stat.st_size
    assert file_digest(path) == hashlib.sha256(bytes(reversed(range(200)))).hexdigest()


def test_combine_is_order_independent_and_sees_every_part() -> None:
    assert combine({"a": "1", "b": "2"}) == combine({"b": "2", "a": "1"})
    assert combine({"a": "1", "b": "2"}) != combine({"a": "1", "b": "3"})
    assert combine({"a": np.int64(1)}) == combine({"a": np.int64(1)})
