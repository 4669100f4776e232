"""``benchmarks/methods_step.py``: the quick run times every variant (hand-written, Jacobian and Gramian paths,
TorchJD autojac and autogram) and writes its tables; the peak-memory measurement sees what a step allocates."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pandas as pd
import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "methods_step.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("methods_step", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["methods_step"] = module
    spec.loader.exec_module(module)
    return module


def test_quick_run_times_every_variant(tmp_path: Path) -> None:
    bench = _load()
    options = ["--quick", "--ks", "3", "--methods", "mgda,umtg", "--steps", "2", "--warmup", "1", "--threads", "1"]
    assert bench.main([*options, "--out", str(tmp_path)]) == 0
    frame = pd.read_csv(tmp_path / "methods_step.csv")
    assert sorted(set(zip(frame["layout"], frame["method"]))) == [
        ("multi-input", "mgda"),
        ("multi-input", "umtg"),
        ("shared-input", "mgda"),
        ("shared-input", "umtg"),
    ]
    mgda = frame[frame["method"] == "mgda"]
    for column in ("hand_ms", "mtlscope_ms", "gramian_ms", "torchjd_ms", "autogram_ms"):
        assert (mgda[column] > 0).all(), column
    assert frame.loc[frame["method"] == "umtg", "gramian_ms"].isna().all()  # UMTG computes no task gradients
    assert "| mlp |" in (tmp_path / "methods_step.md").read_text()


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_step_memory_sees_what_a_step_allocates() -> None:
    bench = _load()
    parameter = torch.nn.Parameter(torch.zeros(1000))
    optimizer = torch.optim.Adam([parameter])
    optimizer.step()  # no gradient: no state
    held = []

    def step() -> None:
        held.append(torch.ones(10_000_000))  # 38.1 MiB alive at the peak, freed after
        held.pop()

    result = bench.step_memory(step, optimizer, warmup=1)
    assert 36 < result["step_mib"] < 48
    assert result["peak_mib"] == pytest.approx(result["step_mib"] + 1000 * 4 / 2**20)


def test_memory_subprocess_measures_one_variant() -> None:
    bench = _load()
    config = {"method": "umtg", "K": 2, "model": "mlp", "layout": "shared-input", "batch_size": 8, "threads": 1}
    result = bench.measure_memory({**config, "warmup": 1}, "hand", timeout=300)
    assert result is not None
    parameters = 64 * 256 + 256 + 256 * 256 + 256 + 2 * (256 * 10 + 10)
    assert result["peak_mib"] >= result["step_mib"] + 3 * parameters * 4 / 2**20 - 1e-9  # parameters, Adam's moments
