"""User modules written to a temporary directory that is put on the import path (as a user's project is)."""

from __future__ import annotations

import importlib
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

CNN = """
from torch import nn


def make_cnn(input_shape, *, channels: int = 4):
    return nn.Sequential(
        nn.Conv2d(input_shape[0], channels, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten()
    )
"""

TOY = """
import torch

from mtlscope.settings import Setting, Split, Task, register


def make_toy(*, sign: float = 1.0) -> Setting:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(48, 3, generator=generator)
    y = x.sum(1, keepdim=True)
    parts = [(x[:32], y[:32]), (x[32:40], y[32:40]), (x[40:], y[40:])]
    tasks = tuple(
        Task(name, 1, *(Split(i, t * k) for i, t in parts), loss="mse", metrics=["rmse"])
        for k, name in ((sign, "a"), (-1.0, "b"))
    )
    model = {"encoder": {"name": "mlp", "hidden": [8]}, "head": {"name": "linear"}}
    return Setting("toy", tasks, "shared-input", (3,), model)


@register("toy", "two tiny regression tasks")
def toy() -> Setting:
    return make_toy()
"""


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str, str], Path]]:
    """``write(module name, source)``: a module file in ``tmp_path`` (the current directory, on ``sys.path``).
    Modules written here are forgotten (and their registrations undone) afterwards."""
    from mtlscope.models.encoders import ENCODERS
    from mtlscope.models.heads import HEADS
    from mtlscope.settings.registry import SETTINGS

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    registries = [SETTINGS, ENCODERS, HEADS]
    before = [dict(registry._entries) for registry in registries]
    written: list[str] = []

    def write(name: str, source: str) -> Path:
        path = tmp_path / f"{name}.py"
        path.write_text(textwrap.dedent(source))
        sys.modules.pop(name, None)
        importlib.invalidate_caches()
        written.append(name)
        return path

    yield write
    for name in written:
        sys.modules.pop(name, None)
    for registry, entries in zip(registries, before):
        registry._entries = entries
