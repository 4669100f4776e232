"""A run stopped at any point resumes from its last checkpoint and ends with identical records."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtlscope.runs import execute, load, validate_config
from mtlscope.runs.store import RECORDS_FILE, STATE_FILE

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


def test_resume_false_starts_over(tmp_path: Path) -> None:
    with pytest.raises(Stop):
        execute(validate_config(CONFIG), tmp_path, on_step=_stop_at(20))
    assert (next(tmp_path.iterdir()) / STATE_FILE).exists()
    outcome = execute(validate_config(CONFIG), tmp_path, resume=False)
    assert outcome.status == "completed"
    assert load(tmp_path).records["step"].min() == 0
