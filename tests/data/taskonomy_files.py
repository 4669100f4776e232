"""Tiny Taskonomy in Standley et al.'s layout (``<domain>/<building>/*.png`` + building lists), written by tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

#: The native size of the tiny images (Taskonomy's are 512x512).
NATIVE = (16, 16)
TRAIN_BUILDINGS = ("allensville", "beechwood", "coffeen")
VAL_BUILDINGS = ("wainscott", "hobson")
DOMAINS = ("segment_semantic", "depth_zbuffer", "normal", "keypoints2d", "edge_texture")


def file_name(point: int, domain: str) -> str:
    return f"point_{point}_view_0_domain_{domain}.png"


def sample_arrays(rng: np.random.Generator, size: tuple[int, int] = NATIVE) -> dict[str, np.ndarray]:
    """One sample's files as arrays: rgb uint8 [H, W, 3]; segmentation uint8 0..17; depth uint16 with some values
    at or above 2**13 (masked; 65535 as Taskonomy's missing depth); normals uint8 [H, W, 3]; keypoints and edges
    uint16."""
    depth = rng.integers(0, 2**13, size=size).astype(np.uint16)
    depth[rng.random(size) < 0.25] = 65535
    depth[0, 0], depth[0, 1] = 8191, 8192  # just valid, just masked
    segmentation = rng.integers(0, 18, size=size).astype(np.uint8)
    segmentation[0, 0] = 17
    return {
        "rgb": rng.integers(0, 256, size=(*size, 3)).astype(np.uint8),
        "segment_semantic": segmentation,
        "depth_zbuffer": depth,
        "normal": rng.integers(0, 256, size=(*size, 3)).astype(np.uint8),
        "keypoints2d": rng.integers(0, 400, size=size).astype(np.uint16),
        "edge_texture": rng.integers(0, 5000, size=size).astype(np.uint16),
    }


def write_taskonomy(
    root: Path,
    *,
    per_building: int = 4,
    train: tuple[str, ...] = TRAIN_BUILDINGS,
    val: tuple[str, ...] = VAL_BUILDINGS,
    seed: int = 0,
) -> tuple[Path, dict[tuple[str, str], np.ndarray]]:
    """``root/taskonomy/{rgb,<domain>}/<building>/point_<i>_view_0_domain_<domain>.png`` and the lists
    ``train_models.txt``, ``val_models.txt``; returns the folder and every written array by
    ``(domain, relative path)``."""
    rng = np.random.default_rng(seed)
    base = root / "taskonomy"
    written: dict[tuple[str, str], np.ndarray] = {}
    for building in (*train, *val):
        for point in range(per_building):
            for domain, array in sample_arrays(rng).items():
                relative = f"{building}/{file_name(point, domain)}"
                path = base / domain / relative
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(path)
                written[(domain, f"{building}/{file_name(point, 'rgb')}")] = array
    (base / "train_models.txt").write_text("\n".join(train) + "\n")
    (base / "val_models.txt").write_text("\n".join(val) + "\n")
    return base, written
