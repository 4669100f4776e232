"""Fingerprints of data: what a run id covers besides its config (a changed data set gives a new run id).

- ``tensor_digest``: sha256 of a tensor's dtype, shape and bytes (any device, any dtype);
- ``file_digest``: sha256 of a file's bytes, cached in the process by path, size and modification time;
- ``combine``: one digest of named parts (order-independent: the names are sorted).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

_CHUNK = 1 << 20
_FILES: dict[tuple[str, int, int, int, int], str] = {}


def tensor_digest(tensor: Tensor) -> str:
    """sha256 (hex) of ``tensor``'s dtype, shape and contents."""
    digest = hashlib.sha256(f"{tensor.dtype}|{tuple(tensor.shape)}|".encode())
    flat = tensor.detach().reshape(-1)
    if flat.device.type != "cpu":
        flat = flat.cpu()
    if flat.dtype == torch.bool:
        flat = flat.to(torch.uint8)
    digest.update(memoryview(flat.contiguous().view(torch.uint8).numpy()))  # type: ignore[arg-type]
    return digest.hexdigest()


def file_digest(path: str | os.PathLike[str]) -> str:
    """sha256 (hex) of the file's bytes; recomputed when its size, modification or change time or inode changes
    (a file replaced by another one, by a rename, has another inode even when size and times are restored)."""
    resolved = Path(path).resolve()
    stat = resolved.stat()
    key = (str(resolved), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)
    if key not in _FILES:
        digest = hashlib.sha256()
        with open(resolved, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
        _FILES[key] = digest.hexdigest()
    return _FILES[key]


def combine(parts: Mapping[str, object]) -> str:
    """sha256 (hex) of named parts (JSON-serializable values, typically digests)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
