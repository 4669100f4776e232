"""``sweep_status``: per-run status, counts, foreign runs and the ETA, read from the run directories."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtlscope.runs import RunConfig, RunDirectory, resolve, validate_config
from mtlscope.sweeps import format_status, run_sweep, sweep_status
from mtlscope.sweeps.status import format_duration


def config(seed: int) -> RunConfig:
    return validate_config(
        {
            "seed": seed,
            "setting": {"name": "digits-mtl", "tasks": ["digits1", "digits2"]},
            "model": {"encoder": {"name": "mlp", "hidden": [16, 8]}},
            "training": {"steps": 10, "eval_every": 5},
        }
    )


CONFIGS = [config(seed) for seed in range(7)]


def make_run(out: Path, config: RunConfig, status: str | None, **summary: object) -> None:
    """A hand-made run directory: ``None`` = created but never given a status (its creation was interrupted)."""
    path = out / resolve(config).run_id()
    if status is None:
        path.mkdir(parents=True)
        return
    directory = RunDirectory.create(path, resolve(config).to_dict(), {})
    if status != "running":
        directory.finish(status, {"status": status, **summary}, message=f"{status} on purpose")  # type: ignore[arg-type]


def test_counts_foreign_runs_and_eta(tmp_path: Path) -> None:
    make_run(tmp_path, CONFIGS[0], "completed", wall_time_s=10.0)
    make_run(tmp_path, CONFIGS[1], "completed", wall_time_s=20.0)
    make_run(tmp_path, CONFIGS[2], "running")
    make_run(tmp_path, CONFIGS[3], "failed")
    make_run(tmp_path, CONFIGS[4], "diverged")
    make_run(tmp_path, CONFIGS[5], None)  # -> remaining; CONFIGS[6] has no directory at all -> remaining
    make_run(tmp_path, config(99), "completed", wall_time_s=1000.0)  # not one of the sweep's runs
    (tmp_path / "sweep.json").write_text("{}")

    status = sweep_status([*CONFIGS, CONFIGS[0]], tmp_path, workers=2)
    assert status.total == 7
    assert list(status.runs.values()) == [
        "completed",
        "completed",
        "running",
        "failed",
        "diverged",
        "remaining",
        "remaining",
    ]
    assert status.counts == {"done": 2, "running": 1, "failed": 1, "diverged": 1, "damaged": 0, "remaining": 2}
    assert status.foreign == 1
    assert status.mean_wall_time_s == pytest.approx(15.0)
    assert status.eta_s == pytest.approx(15.0 * 3 / 2)
    assert not status.finished
    failed_id = resolve(CONFIGS[3]).run_id()
    assert status.messages[failed_id] == "failed on purpose"

    text = format_status(status)
    assert "7 runs: 2 done, 1 running, 1 failed, 1 diverged, 2 remaining" in text
    assert "1 other run in the directory not counted" in text
    assert "ETA 22 s with 2 workers" in text
    assert f"failed {failed_id}: failed on purpose" in text
    assert len(text.splitlines()) == 3


def test_eta_unknown_until_a_run_completes(tmp_path: Path) -> None:
    make_run(tmp_path, CONFIGS[0], "running")
    status = sweep_status(CONFIGS[:3], tmp_path / "missing")
    assert status.counts["remaining"] == 3 and status.eta_s is None and status.foreign == 0
    status = sweep_status(CONFIGS[:3], tmp_path)
    assert status.counts == {"done": 0, "running": 1, "failed": 0, "diverged": 0, "damaged": 0, "remaining": 2}
    assert status.eta_s is None
    assert "ETA unknown" in format_status(status)
    with pytest.raises(ValueError, match="workers"):
        sweep_status(CONFIGS, tmp_path, workers=0)


def test_status_of_a_real_partial_sweep(tmp_path: Path) -> None:
    run_sweep(CONFIGS[:2], tmp_path, progress=False, threads_per_worker=1)
    status = sweep_status(CONFIGS[1:4], tmp_path)  # CONFIGS[0] ran but is not part of this sweep
    assert status.counts == {"done": 1, "running": 0, "failed": 0, "diverged": 0, "damaged": 0, "remaining": 2}
    assert status.foreign == 1
    assert status.eta_s is not None and status.eta_s == pytest.approx(2 * (status.mean_wall_time_s or 0))
    assert status.eta_s > 0
    run_sweep(CONFIGS[1:4], tmp_path, progress=False, threads_per_worker=1)
    status = sweep_status(CONFIGS[1:4], tmp_path, workers=4)
    assert status.finished and status.counts["done"] == 3 and status.eta_s == 0.0
    assert "finished" in format_status(status)


def test_format_duration() -> None:
    assert format_duration(4.4) == "4 s"
    assert format_duration(200) == "3 min 20 s"
    assert format_duration(7500) == "2 h 05 min"
