"""A run stopped at any point resumes from its last checkpoint and ends with identical records."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from mtlscope.methods.registry import METHODS
from mtlscope.runs import RunDirectory, execute, load, validate_config
from mtlscope.runs.store import (
    CONFIG_FILE,
    ENVIRONMENT_FILE,
    RECORDS_FILE,
    STATE_FILE,
    STATUS_FILE,
    read_state,
    read_status,
)

CONFIG = {
    "setting": {"name": "digits-mtl", "tasks": ["digits1", "digits2"]},
    "model": {"encoder": {"name": "mlp", "hidden": [32, 8], "dropout": 0.2}},
    "training": {"epochs": 4, "batch_size": 64, "diagnostics_every": 5},
    "probes": {"min_train_loss": {}, "affinity": {"every_steps": 4}, "grad_similarity": {"batches": 2, "every": 2}},
}


class Stop(BaseException):
    """Stands in for a kill: not an Exception, so the run is not marked failed."""


def _stop_at(step: int):
    def on_step(current: int) -> None:
        if current == step:
            raise Stop

    return on_step


@pytest.mark.parametrize("stop_at", [5, 14, 27])
def test_resumed_run_equals_uninterrupted_run(tmp_path: Path, stop_at: int) -> None:
    reference = execute(validate_config(CONFIG), tmp_path / "reference")
    with pytest.raises(Stop):
        execute(validate_config(CONFIG), tmp_path / "resumed", on_step=_stop_at(stop_at))
    interrupted = load(tmp_path / "resumed")
    assert list(interrupted.runs["status"]) == ["running"]
    resumed = execute(validate_config(CONFIG), tmp_path / "resumed")
    assert resumed.status == "completed" and not resumed.skipped
    assert (resumed.path / RECORDS_FILE).read_text() == (reference.path / RECORDS_FILE).read_text()
    assert not (resumed.path / STATE_FILE).exists()


def test_a_resumed_run_warns_once_about_a_thinned_probe(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # sharpness at its defaults costs more than the budget on the embedded digits: the plan keeps step 0 and the
    # last checkpoint, and says so once per training (a resumed run also builds a trainer to check its state)
    config = {**CONFIG, "probes": {"sharpness": {"subset": 256, "iterations": 2}}}
    with caplog.at_level("WARNING", logger="mtlscope.engine.probe_budget"):
        with pytest.raises(Stop):
            execute(validate_config(config), tmp_path / "run", on_step=_stop_at(14))
        assert len(caplog.records) == 1 and "probe sharpness" in caplog.records[0].getMessage()
        caplog.clear()
        resumed = execute(validate_config(config), tmp_path / "run")
    assert resumed.status == "completed" and not resumed.skipped
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["probe sharpness"]


SCHEDULES = {
    "exponential with warm-up": {"name": "exponential", "gamma": 0.7, "warmup_steps": 6},
    "cosine": {"name": "cosine", "min_lr": 0.001},
}


@pytest.mark.parametrize(
    ("schedule", "stop_at"), [("exponential with warm-up", 5), ("exponential with warm-up", 20), ("cosine", 45)]
)
def test_resumed_run_with_lr_schedule_equals_uninterrupted_run(tmp_path: Path, schedule: str, stop_at: int) -> None:
    """The affinity probe and the momentum buffers see the scheduled lr; a resumed run continues it exactly (14
    steps per epoch: stopped in the warm-up, after it, and in the last epoch)."""
    config = {**CONFIG, "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "schedule": SCHEDULES[schedule]}}
    reference = execute(validate_config(config), tmp_path / "reference")
    with pytest.raises(Stop):
        execute(validate_config(config), tmp_path / "resumed", on_step=_stop_at(stop_at))
    resumed = execute(validate_config(config), tmp_path / "resumed")
    assert resumed.status == "completed" and not resumed.skipped
    assert (resumed.path / RECORDS_FILE).read_text() == (reference.path / RECORDS_FILE).read_text()
    records = load(tmp_path / "reference").records
    lrs = records[(records["split"] == "optim") & (records["metric"] == "lr")].groupby("step")["value"].first()
    assert list(lrs.index) == [0, 14, 28, 42, 56]
    assert lrs.nunique() == len(lrs)  # the schedule acted between every two checkpoints


def test_resume_false_starts_over(tmp_path: Path) -> None:
    with pytest.raises(Stop):
        execute(validate_config(CONFIG), tmp_path, on_step=_stop_at(20))
    assert (next(tmp_path.iterdir()) / STATE_FILE).exists()
    outcome = execute(validate_config(CONFIG), tmp_path, resume=False)
    assert outcome.status == "completed"
    assert load(tmp_path).records["step"].min() == 0


# -- a damaged unfinished run restarts cleanly, never stuck (store.read_state, RunDirectory.reopen) -------------

SMALL = {
    "setting": {"name": "digits-mtl", "tasks": ["digits1", "digits2"]},
    "model": {"encoder": {"name": "mlp", "hidden": [16, 8]}},
    "training": {"steps": 15, "eval_every": 5, "diagnostics_every": 1},
}


@pytest.fixture(scope="module")
def small_reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    outcome = execute(validate_config(SMALL), tmp_path_factory.mktemp("small"))
    assert outcome.status == "completed"
    return outcome.path


def _killed(out: Path, at: int = 7) -> Path:
    with pytest.raises(Stop):
        execute(validate_config(SMALL), out, on_step=_stop_at(at))
    (path,) = list(out.iterdir())
    return path


def _keyless(path: Path) -> None:
    torch.save({"trainer": {"step": 5}, "records_rows": 0}, path / STATE_FILE)


def _foreign(path: Path) -> None:
    """A whole state of another model (other layer sizes): every key there, no tensor fitting."""
    other = {**SMALL, "model": {"encoder": {"name": "mlp", "hidden": [8]}}}
    with pytest.raises(Stop):
        execute(validate_config(other), path.parent / "other", on_step=_stop_at(7))
    (other_path,) = list((path.parent / "other").iterdir())
    shutil.copy(other_path / STATE_FILE, path / STATE_FILE)


DAMAGES = {
    "empty": lambda path: (path / STATE_FILE).write_bytes(b""),
    "garbage": lambda path: (path / STATE_FILE).write_bytes(b"\x00garbage\xff" * 50),
    "not a mapping": lambda path: torch.save([1, 2, 3], path / STATE_FILE),
    "keyless": _keyless,
    "foreign": _foreign,
    "records deleted": lambda path: (path / RECORDS_FILE).unlink(),
    "records truncated": lambda path: (path / RECORDS_FILE).write_text(
        "".join((path / RECORDS_FILE).read_text().splitlines(keepends=True)[:30])
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
@pytest.mark.parametrize("status", ["running", "failed"])
def test_damaged_state_restarts_the_run_cleanly(
    tmp_path: Path, small_reference: Path, damage: str, status: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = _killed(tmp_path / "out")
    if status == "failed":
        stored = read_status(path)
        (path / STATUS_FILE).write_text(json.dumps({**stored, "status": "failed", "message": "on purpose"}))
    DAMAGES[damage](path)
    with caplog.at_level(logging.WARNING):
        outcome = execute(validate_config(SMALL), tmp_path / "out")
    assert outcome.status == "completed" and not outcome.skipped
    lines = [
        record.getMessage() for record in caplog.records if "restarting the run from step 0" in record.getMessage()
    ]
    assert len(lines) == 1 and "\n" not in lines[0] and str(path) in lines[0]
    assert (path / RECORDS_FILE).read_text() == (small_reference / RECORDS_FILE).read_text()
    assert not (path / STATE_FILE).exists()


def test_deleted_config_and_environment_are_rewritten_on_resume(tmp_path: Path, small_reference: Path) -> None:
    path = _killed(tmp_path / "out")
    (path / CONFIG_FILE).unlink()
    (path / ENVIRONMENT_FILE).unlink()
    steps: list[int] = []
    assert execute(validate_config(SMALL), tmp_path / "out", on_step=steps.append).status == "completed"
    assert steps[0] == 6  # resumed, not restarted
    assert (path / CONFIG_FILE).read_text() == (small_reference / CONFIG_FILE).read_text()
    assert (path / ENVIRONMENT_FILE).exists()
    assert (path / RECORDS_FILE).read_text() == (small_reference / RECORDS_FILE).read_text()


def test_killed_between_records_and_state_resumes_without_duplicate_rows(
    tmp_path: Path, small_reference: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed after the step-10 records were written but before the step-10 state replaced the step-5 one: the
    resumed run keeps exactly the rows written before the step-5 state (the per-step diagnostics of step 5 were
    written at step 10 and are written again by the resumed run)."""
    saves: list[int] = []
    save = RunDirectory.save_state

    def save_then_die(self: RunDirectory, state: dict[str, Any]) -> None:
        saves.append(state["step"])
        if state["step"] == 10:
            raise Stop
        save(self, state)

    monkeypatch.setattr(RunDirectory, "save_state", save_then_die)
    with pytest.raises(Stop):
        execute(validate_config(SMALL), tmp_path)
    monkeypatch.setattr(RunDirectory, "save_state", save)
    assert saves == [0, 5, 10]
    outcome = execute(validate_config(SMALL), tmp_path)
    assert outcome.status == "completed"
    assert (outcome.path / RECORDS_FILE).read_text() == (small_reference / RECORDS_FILE).read_text()


def test_diverged_run_keeps_no_state(tmp_path: Path) -> None:
    config = validate_config(
        {
            "setting": {"name": "synthetic"},
            "optimizer": {"name": "sgd", "lr": 3.0},
            "training": {"steps": 200, "eval_every": 2},
        }
    )
    outcome = execute(config, tmp_path)
    assert outcome.status == "diverged"
    assert load(tmp_path).records["step"].max() >= 2  # it got past a checkpoint that saved a state
    assert not (outcome.path / STATE_FILE).exists()
    assert execute(config, tmp_path).skipped


def test_every_method_and_probe_state_is_safe_to_load(tmp_path: Path) -> None:
    """Every method's and probe's saved state holds only what torch.load(weights_only=True) accepts, so resuming
    never falls back to step 0 for lack of an allow-listed type."""
    probes = {"min_train_loss": {}, "affinity": {"every_steps": 2}, "grad_similarity": {"batches": 1, "every": 1}}
    for name in METHODS.available():
        config = {
            **SMALL,
            "model": {"encoder": {"name": "mlp", "hidden": [8]}},
            "method": {"name": name},
            "optimizer": {"name": "adam", "lr": 1e-3},
            "training": {"steps": 4, "eval_every": 2, "batch_size": 8, "diagnostics_every": 1},
            "probes": probes,
        }
        with pytest.raises(Stop):
            execute(validate_config(config), tmp_path / name, on_step=_stop_at(3))
        (path,) = list((tmp_path / name).iterdir())
        state = read_state(path)
        assert state is not None and state.step == 2, name
