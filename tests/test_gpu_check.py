"""``benchmarks/gpu_check.py --quick`` runs on CPU: the ResNet run with every probe completes, the host round-trips
are counted (one per plain step), and the CPU-vs-CUDA comparison says it was skipped without CUDA."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"


def test_gpu_check_quick_runs_on_cpu(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--quick", "--steps", "1", "--methods", "umtg", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    (run,) = report["resnet"] if not torch.cuda.is_available() else report["resnet"][:1]
    assert run["status"] == "completed" and run["ms_per_step"] > 0 and run["peak_mib"] > 0
    assert set(run["probe_s"]) == set(module.PROBES)  # every probe ran
    assert report["host_round_trips"]["umtg"]["own"] == 1
    text = (tmp_path / "gpu_check.md").read_text()
    if not torch.cuda.is_available():
        assert "no CUDA device: the CPU-vs-CUDA trajectory comparison was skipped" in text
