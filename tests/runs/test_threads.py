"""Thread control of a single run: ``execute(threads=N)`` and ``mtlscope run --threads N`` set the run's torch
threads, record them in ``environment.json`` and leave the run id and the process's count alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from mtlscope.cli import main
from mtlscope.runs import execute, read_records, validate_config
from mtlscope.runs.threads import available_cores, check_threads, sweep_default

CONFIG = {
    "setting": {"name": "digits-mtl", "tasks": ["digits1", "digits2"]},
    "model": {"encoder": {"name": "mlp", "hidden": [16, 8]}},
    "training": {"steps": 4, "eval_every": 2, "batch_size": 16},
}


def environment(path: Path) -> dict:
    data: dict = json.loads((path / "environment.json").read_text())
    return data


def test_a_run_computes_with_the_given_threads_and_records_them(tmp_path: Path) -> None:
    seen: list[int] = []
    before = torch.get_num_threads()
    config = validate_config(CONFIG)
    given = before + 1  # differs from the process's count, so the record cannot come from it
    outcome = execute(config, tmp_path / "a", threads=given, on_step=lambda step: seen.append(torch.get_num_threads()))
    assert outcome.status == "completed"
    assert seen == [given] * 4  # every training step ran with it
    assert torch.get_num_threads() == before  # restored afterwards
    recorded = environment(outcome.path)
    assert (recorded["torch_threads"], recorded["torch_threads_from"]) == (given, "option")
    plain = execute(config, tmp_path / "b")  # no option: the process's count, and the same run id and records
    assert plain.run_id == outcome.run_id
    assert (environment(plain.path)["torch_threads"], environment(plain.path)["torch_threads_from"]) == (
        before,
        "process",
    )
    assert read_records(plain.path).equals(read_records(outcome.path))


@pytest.mark.parametrize("value", [0, -2, 1.5, "2", True])
def test_bad_thread_counts_are_one_line_errors_and_write_nothing(tmp_path: Path, value: object) -> None:
    with pytest.raises(ValueError, match=r"^threads: expected a positive integer") as error:
        execute(validate_config(CONFIG), tmp_path, threads=value)  # type: ignore[arg-type]
    assert "\n" not in str(error.value)
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_check_threads_and_the_sweep_default(monkeypatch: pytest.MonkeyPatch) -> None:
    assert check_threads(3) == 3
    with pytest.raises(ValueError, match=r"^threads_per_worker: expected"):
        check_threads(0, "threads_per_worker")
    monkeypatch.setattr("mtlscope.runs.threads.os.sched_getaffinity", lambda pid: {0, 1, 2, 3, 4})
    assert available_cores() == 5
    assert [sweep_default(workers) for workers in (1, 2, 3, 5, 8)] == [5, 2, 1, 1, 1]


def test_cli_run_threads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--threads", "3", "--quiet"]) == 0
    (run,) = (tmp_path / "out").iterdir()
    assert (environment(run)["torch_threads"], environment(run)["torch_threads_from"]) == (3, "option")
    for bad in ("0", "-1", "1.5", "two"):
        capsys.readouterr()
        assert main(["run", str(path), "--out", str(tmp_path / "bad"), f"--threads={bad}", "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.strip() == f"error: --threads: expected a positive integer (torch threads), got {bad!r}"
    assert not (tmp_path / "bad").exists()
