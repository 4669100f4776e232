"""Log-spaced checkpoints (``training.eval_every: log``): the exact steps, the probes' schedule on them, and a run
that records at exactly those steps."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from mtlscope.engine.trainer import Schedule, log_spaced_steps
from mtlscope.runs import ConfigError
from mtlscope.runs.config import validate_config
from mtlscope.runs.launch import execute


@pytest.mark.parametrize(
    ("steps", "per_decade", "expected"),
    [
        (100, 5, (0, 1, 2, 3, 4, 6, 10, 16, 25, 40, 63, 100)),
        (
            1000,
            10,
            (
                0,
                1,
                2,
                3,
                4,
                5,
                6,
                8,
                10,
                13,
                16,
                20,
                25,
                32,
                40,
                50,
                63,
                79,
                100,
                126,
                158,
                200,
                251,
                316,
                398,
                501,
                631,
                794,
                1000,
            ),
        ),
        (49, 10, (0, 1, 2, 3, 4, 5, 6, 8, 10, 13, 16, 20, 25, 32, 40, 49)),  # the last step is always one
        (30, 1, (0, 1, 10, 30)),
        (1, 10, (0, 1)),
        (7, 3, (0, 1, 2, 5, 7)),
    ],
)
def test_log_spaced_steps_are_exact(steps: int, per_decade: int, expected: tuple[int, ...]) -> None:
    assert log_spaced_steps(steps, per_decade) == expected
    schedule = Schedule(steps, 10, checkpoints_per_decade=per_decade)
    assert schedule.checkpoint_steps() == expected
    assert [step for step in range(steps + 1) if schedule.is_checkpoint(step)] == list(expected)
    assert [schedule.checkpoint_index(step) for step in expected] == list(range(len(expected)))


def test_log_spacing_is_about_per_decade_checkpoints_per_decade() -> None:
    steps = log_spaced_steps(10**6, 10)
    for decade in range(1, 6):  # (10^d, 10^(d+1)]: exactly 10 once past the first decade's rounding
        assert sum(10**decade < step <= 10 ** (decade + 1) for step in steps) == 10


def test_interval_schedule_unchanged_and_exactly_one_rule() -> None:
    schedule = Schedule(10, 4, 3)
    assert schedule.checkpoint_steps() == (0, 3, 6, 9, 10)
    assert [schedule.checkpoint_index(step) for step in (0, 3, 6, 9, 10)] == [0, 1, 2, 3, 3]
    with pytest.raises(ValueError, match="exactly one of eval_every and checkpoints_per_decade"):
        Schedule(10, 4)
    with pytest.raises(ValueError, match="exactly one"):
        Schedule(10, 4, 2, checkpoints_per_decade=10)
    with pytest.raises(ValueError, match=">= 1"):
        Schedule(10, 4, checkpoints_per_decade=0)


BASE = {
    "setting": {"name": "digits-mtl", "tasks": ["digits1", "digits2"]},
    "model": {"encoder": {"name": "mlp", "hidden": [16]}},
    "training": {"steps": 40, "batch_size": 16, "eval_every": "log", "checkpoints_per_decade": 5},
}


def test_config_eval_every_log_defaults_and_run_ids() -> None:
    plain = validate_config({"setting": {"name": "digits-mtl"}})
    assert "checkpoints_per_decade" not in plain.to_dict()["training"]
    assert plain.run_id() == "digits-mtl-s0-cf18101267"  # configs without the option keep their run ids
    log = validate_config({"setting": {"name": "digits-mtl"}, "training": {"eval_every": "log"}})
    assert log.training.checkpoints_per_decade == 10
    ten = validate_config(
        {"setting": {"name": "digits-mtl"}, "training": {"eval_every": "log", "checkpoints_per_decade": 10}}
    )
    assert ten.run_id() == log.run_id() != plain.run_id()
    five = validate_config(BASE)
    assert five.run_id() != log.run_id()
    assert validate_config(five.to_dict()).training.checkpoints_per_decade == 5
    with pytest.raises(ConfigError, match="checkpoints_per_decade applies to eval_every: log only"):
        validate_config({"setting": {"name": "digits-mtl"}, "training": {"checkpoints_per_decade": 5}})
    with pytest.raises(ConfigError, match=r"training\.eval_every"):
        validate_config({"setting": {"name": "digits-mtl"}, "training": {"eval_every": "logarithmic"}})


def test_a_run_with_eval_every_log_records_at_the_log_spaced_steps(tmp_path: Path) -> None:
    config = {**BASE, "probes": {"min_train_loss": {"every": 2}}}
    outcome = execute(config, tmp_path)
    assert outcome.status == "completed"
    records = pd.read_csv(outcome.path / "records.csv")
    expected = [0, 1, 2, 3, 4, 6, 10, 16, 25, 40]
    assert sorted(records.loc[records["split"] == "train", "step"].unique()) == expected
    probed = sorted(records.loc[records["split"] == "probe", "step"].unique())
    assert probed == [0, 2, 4, 10, 25, 40]  # every 2nd checkpoint (indices 0, 2, 4, 6, 8) and the last


class Stop(BaseException):
    """Stands in for a kill: not an Exception, so the run is not marked failed."""


@pytest.mark.parametrize("stop_at", [3, 12, 33])
def test_a_log_scheduled_run_resumes_exactly(tmp_path: Path, stop_at: int) -> None:
    """Stopped between log-spaced checkpoints (after 2, between 10 and 16, between 25 and 40), a run resumes from
    its last checkpoint and ends with the records of an uninterrupted run."""
    config = {**BASE, "probes": {"min_train_loss": {}, "grad_similarity": {"batches": 2, "every": 3}}}
    reference = execute(config, tmp_path / "reference")

    def on_step(current: int) -> None:
        if current == stop_at:
            raise Stop

    with pytest.raises(Stop):
        execute(config, tmp_path / "resumed", on_step=on_step)
    resumed = execute(config, tmp_path / "resumed")
    assert resumed.status == "completed" and not resumed.skipped
    assert (resumed.path / "records.csv").read_text() == (reference.path / "records.csv").read_text()
