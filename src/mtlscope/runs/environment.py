"""The software environment of a run: versions, platform, device and git commit (for reproducibility)."""

from __future__ import annotations

import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

PACKAGES: tuple[str, ...] = ("mtlscope", "torch", "numpy", "scipy", "pandas", "scikit-learn", "pydantic")


def git_commit(start: Path | None = None) -> str | None:
    """The commit of the git checkout containing ``start`` (the package by default), if any."""
    where = start or Path(__file__).resolve().parent
    try:
        result = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and commit else None


def describe_environment(device: torch.device, threads_from: str = "process") -> dict[str, Any]:
    """What ``environment.json`` records; ``torch_threads`` is the count the run computes with (read now) and
    ``torch_threads_from`` how it was chosen (``mtlscope.runs.threads``)."""
    versions: dict[str, str | None] = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": versions,
        "device": str(device),
        "cuda_device": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch_threads": torch.get_num_threads(),
        "torch_threads_from": threads_from,
        "git_commit": git_commit(),
    }
