"""Thread control of sweeps: each of W local workers computes with max(1, cores // W) torch threads by default,
``threads_per_worker`` / ``--threads`` overrides it, and every run records its count in ``environment.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from mtlscope.cli import main
from mtlscope.runs import validate_config
from mtlscope.sweeps import run_sweep

BASE = {
    "setting": {"name": "digits-mtl", "tasks": ["digits1"]},
    "model": {"encoder": {"name": "mlp", "hidden": [8]}},
    "training": {"steps": 2, "eval_every": 2, "batch_size": 16},
}


def configs() -> list[Any]:
    return [validate_config({**BASE, "seed": seed}) for seed in (0, 1)]


def threads_of(out: Path) -> list[tuple[int, str]]:
    found = []
    for run in sorted(path for path in out.iterdir() if (path / "environment.json").exists()):
        environment = json.loads((run / "environment.json").read_text())
        found.append((environment["torch_threads"], environment["torch_threads_from"]))
    return found


def test_two_workers_get_half_the_cores_each(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 6 cores seen by the driver (not this machine's count): 3 threads per worker, set in the spawned workers
    monkeypatch.setattr("mtlscope.runs.threads.os.sched_getaffinity", lambda pid: set(range(6)))
    result = run_sweep(configs(), tmp_path, workers=2, progress=False)
    assert result.counts["completed"] == 2
    assert threads_of(tmp_path) == [(3, "sweep default")] * 2


def test_threads_per_worker_and_one_worker(tmp_path: Path) -> None:
    run_sweep(configs(), tmp_path / "pool", workers=2, progress=False, threads_per_worker=2)
    assert threads_of(tmp_path / "pool") == [(2, "option")] * 2
    import torch

    process = torch.get_num_threads()
    run_sweep(configs(), tmp_path / "here", workers=1, progress=False)  # in this process: its count
    assert threads_of(tmp_path / "here") == [(process, "process")] * 2
    run_sweep(configs(), tmp_path / "given", workers=1, progress=False, threads_per_worker=process + 1)
    assert threads_of(tmp_path / "given") == [(process + 1, "option")] * 2
    assert torch.get_num_threads() == process


@pytest.mark.parametrize("value", [0, -1, 2.5, "3"])
def test_bad_threads_per_worker(tmp_path: Path, value: object) -> None:
    with pytest.raises(ValueError, match=r"^threads_per_worker: expected a positive integer"):
        run_sweep(configs(), tmp_path / "out", threads_per_worker=value, progress=False)  # type: ignore[arg-type]
    assert not (tmp_path / "out").exists()


def test_cli_threads_reach_the_workers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"name": "threads", "base": BASE, "seeds": 2}))
    out = tmp_path / "out"
    assert main(["sweep", str(sweep), "--out", str(out), "--workers", "2", "--threads", "2", "--quiet"]) == 0
    assert threads_of(out) == [(2, "option")] * 2
    capsys.readouterr()
    assert main(["sweep", str(sweep), "--out", str(tmp_path / "bad"), "--threads", "0", "--quiet"]) == 2
    assert capsys.readouterr().err.strip() == "error: --threads: expected a positive integer (torch threads), got '0'"
    assert not (tmp_path / "bad").exists()


def test_cli_reproduce_passes_threads_to_its_sweep(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: dict[str, Any] = {}

    def reproduce(preset: Any, out: Any, **options: Any) -> Any:
        seen.update(options)
        raise SystemExit(0)

    monkeypatch.setattr("mtlscope.reproduce.runner.reproduce", reproduce)
    with pytest.raises(SystemExit):
        main(["reproduce", "temperature-fig1-mini", "--out", str(tmp_path / "r"), "--threads", "3", "--quiet"])
    assert seen["threads_per_worker"] == 3
    capsys.readouterr()
    assert main(["reproduce", "temperature-fig1-mini", "--out", str(tmp_path / "r"), "--threads", "x"]) == 2
    assert "error: --threads: expected a positive integer" in capsys.readouterr().err
