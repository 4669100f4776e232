"""Tiny Cityscapes and NYUv2 in MTAN's per-sample .npy layout, written by the tests (small images)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: The tiny image size (divisible by 4: two SegNet poolings; by 8: DeepLabV3 at output stride 8).
SIZE = (8, 16)


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array)


def _labels(rng: np.random.Generator, classes: int, size: tuple[int, int]) -> np.ndarray:
    labels = rng.integers(-1, classes, size=size).astype(np.float32)  # MTAN stores labels as floats
    labels[0, 0] = classes - 1  # every class range reached at least once
    return labels


def instance_offsets(instances: np.ndarray) -> np.ndarray:
    """Sener & Koltun's proxy: ``[H, W, 2]`` offsets ``(dy, dx)`` of each pixel to its instance's centre of mass,
    250 outside instances (``instances`` holds instance ids, 0 = none)."""
    out = np.full((*instances.shape, 2), 250.0, dtype=np.float32)
    ys, xs = np.meshgrid(np.arange(instances.shape[0]), np.arange(instances.shape[1]), indexing="ij")
    for identity in np.unique(instances):
        if identity == 0:
            continue
        mask = instances == identity
        out[mask, 0] = ys[mask] - ys[mask].mean()
        out[mask, 1] = xs[mask] - xs[mask].mean()
    return out


def write_cityscapes(root: Path, train: int = 6, val: int = 3, *, instance: bool = False, seed: int = 0) -> Path:
    """``root/cityscapes/{train,val}/{image,label_7,label_19,depth[,instance]}/{i}.npy``; returns the folder."""
    rng = np.random.default_rng(seed)
    base = root / "cityscapes"
    for split, count in (("train", train), ("val", val)):
        for i in range(count):
            _save(base / split / "image" / f"{i}.npy", rng.random((*SIZE, 3)).astype(np.float32))
            _save(base / split / "label_7" / f"{i}.npy", _labels(rng, 7, SIZE))
            _save(base / split / "label_19" / f"{i}.npy", _labels(rng, 19, SIZE))
            depth = rng.random((*SIZE, 1)).astype(np.float32) + 0.1
            depth[rng.random(SIZE) < 0.3] = 0.0  # no measurement
            _save(base / split / "depth" / f"{i}.npy", depth)
            if instance:
                instances = np.zeros(SIZE, dtype=np.int64)
                instances[1:4, 2:7], instances[5:8, 9:15] = 1, 2
                _save(base / split / "instance" / f"{i}.npy", instance_offsets(instances))
    return base


def write_nyuv2(root: Path, train: int = 6, val: int = 3, *, seed: int = 0) -> Path:
    """``root/nyuv2/{train,val}/{image,label,depth,normal}/{i}.npy``; returns the folder."""
    rng = np.random.default_rng(seed)
    base = root / "nyuv2"
    for split, count in (("train", train), ("val", val)):
        for i in range(count):
            _save(base / split / "image" / f"{i}.npy", rng.random((*SIZE, 3)).astype(np.float32))
            _save(base / split / "label" / f"{i}.npy", _labels(rng, 13, SIZE))
            depth = rng.random((*SIZE, 1)).astype(np.float32) + 0.5
            depth[rng.random(SIZE) < 0.2] = 0.0
            _save(base / split / "depth" / f"{i}.npy", depth)
            normal = rng.normal(size=(*SIZE, 3)).astype(np.float32)
            normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
            normal[0, :] = 0.0  # unknown
            _save(base / split / "normal" / f"{i}.npy", normal)
    return base
