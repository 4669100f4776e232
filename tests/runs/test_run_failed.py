"""A run whose training raises is never silent: ``execute`` raises ``RunFailed`` (the cause chained, the run
directory kept and marked failed) unless the caller asks for the outcome; the CLI, sweeps and the demo record the
failure and go on."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import pytest

import mtlscope
from mtlscope.cli import main
from mtlscope.engine.trainer import Trainer
from mtlscope.runs import RunFailed, execute, validate_config
from mtlscope.runs.store import STATE_FILE, SUMMARY_FILE, read_status

CONFIG = {
    "setting": {"name": "digits-mtl", "tasks": ["digits1", "digits2"]},
    "model": {"encoder": {"name": "mlp", "hidden": [16, 8]}},
    "training": {"steps": 10, "eval_every": 5},
}


class Boom(RuntimeError):
    pass


def raise_at(step: int) -> Any:
    def on_step(current: int) -> None:
        if current == step:
            raise Boom("boom\nsecond line")

    return on_step


def test_execute_raises_run_failed_with_the_cause_and_keeps_the_directory(tmp_path: Path) -> None:
    with pytest.raises(RunFailed) as raised:
        execute(validate_config(CONFIG), tmp_path, on_step=raise_at(7))
    error = raised.value
    assert isinstance(error.__cause__, Boom) and str(error.__cause__) == "boom\nsecond line"
    assert mtlscope.RunFailed is RunFailed
    path = error.outcome.path
    assert error.outcome.status == "failed" and error.outcome.message == "Boom: boom\nsecond line"
    assert str(error) == f"{path}: run failed (Boom: boom)"  # one line
    assert read_status(path)["status"] == "failed"
    summary = json.loads((path / SUMMARY_FILE).read_text())
    assert summary["status"] == "failed" and "raise Boom" in summary["traceback"]
    assert (path / STATE_FILE).exists()  # kept: the same call again resumes from the step-5 checkpoint
    steps: list[int] = []
    again = execute(validate_config(CONFIG), tmp_path, on_step=steps.append)
    assert again.status == "completed" and again.path == path and steps[0] == 6
    assert pickle.loads(pickle.dumps(error)).outcome == error.outcome  # travels between processes


def test_on_failure_return_gives_the_failed_outcome(tmp_path: Path) -> None:
    outcome = execute(validate_config(CONFIG), tmp_path, on_step=raise_at(3), on_failure="return")
    assert outcome.status == "failed" and outcome.message.startswith("Boom: boom")
    assert read_status(outcome.path)["status"] == "failed"


def test_on_failure_is_checked_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="on_failure: expected 'raise' or 'return', got 'ignore'"):
        execute(validate_config(CONFIG), tmp_path / "out", on_failure="ignore")  # type: ignore[arg-type]
    assert not (tmp_path / "out").exists()


def test_a_diverged_run_is_returned_not_raised(tmp_path: Path) -> None:
    config = {"setting": {"name": "synthetic"}, "optimizer": {"name": "sgd", "lr": 1e8}, "training": {"steps": 30}}
    assert execute(validate_config(config), tmp_path).status == "diverged"


def _failing_run(monkeypatch: pytest.MonkeyPatch, failing_seed: int) -> None:
    """Training raises for the runs of ``failing_seed``."""
    run = Trainer.run

    def maybe_raise(self: Trainer) -> Any:
        if self.seed == failing_seed:
            raise Boom("training broke")
        return run(self)

    monkeypatch.setattr(Trainer, "run", maybe_raise)


def test_the_run_command_prints_one_line_and_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _failing_run(monkeypatch, 0)
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps(CONFIG))
    assert main(["run", str(config), "--out", str(tmp_path / "out"), "--quiet"]) == 1
    captured = capsys.readouterr()
    (line,) = captured.out.splitlines()
    assert line.endswith(": failed (Boom: training broke)") and captured.err == ""


def test_the_demo_records_a_failed_run_and_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from mtlscope.demo import run_demo

    _failing_run(monkeypatch, 1)
    output = run_demo(tmp_path, seeds=2, epochs=1, overrides=["probes={}"], progress=False)
    statuses = sorted(outcome.status for outcome in output.outcomes)
    assert statuses == ["completed"] * 3 + ["failed"] * 3
    assert all(outcome.message == "Boom: training broke" for outcome in output.outcomes if outcome.status == "failed")
