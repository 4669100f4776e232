"""Two drivers on one output directory, damaged runs, --force and --restart-failed.

The scenario of the audit: the same ``mtlscope sweep ... --out out --workers 2`` started twice at once used to
leave truncated and duplicated runs marked completed. Now the second driver is refused with one line naming the
first one's PID (or, with ``--wait``, runs after it), and every run ends exactly as in a single clean sweep; a
completed run damaged afterwards is reported by ``sweep-status`` and repaired by the next sweep.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mtlscope.cli import main
from mtlscope.runs import read_records
from mtlscope.runs.locking import DIRECTORY_LOCK_FILE
from mtlscope.runs.store import RECORDS_FILE, STATE_FILE, damage, read_status
from mtlscope.sweeps import format_status, run_sweep, sweep_status
from mtlscope.sweeps.execution import FAULT_ENV
from mtlscope.sweeps.spec import load_sweep

SWEEP = {
    "name": "two",
    "base": {
        "setting": {"name": "digits-mtl", "tasks": ["digits1", "digits2"]},
        "model": {"encoder": {"name": "mlp", "hidden": [16, 8]}},
        "training": {"steps": 60, "eval_every": 5, "batch_size": 16, "diagnostics_every": 5},
    },
    "zip": {"setting.tasks": [["digits1", "digits2"], ["digits1", "noisy-digits"]]},
    "seeds": 2,
}


def sweep_file(tmp_path: Path) -> Path:
    file = tmp_path / "sweep.yaml"
    file.write_text(yaml.safe_dump(SWEEP))
    return file


def driver(file: Path, out: Path, *extra: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "mtlscope.cli", "sweep", str(file), "--out", str(out), "--workers", "2"]
    return subprocess.Popen([*command, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=600)
    return process.returncode, out, err


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One clean sweep, by the same command (so with the same threads per worker)."""
    base = tmp_path_factory.mktemp("clean")
    code, _, err = finish(driver(sweep_file(base), base / "out"))
    assert code == 0, err
    return base / "out"


def assert_like_clean(out: Path, clean: Path) -> None:
    run_ids = [config.run_id() for config in load_sweep(sweep_file(out.parent)).configs]
    assert len(run_ids) == 4
    for run_id in run_ids:
        assert read_status(out / run_id)["status"] == "completed"
        assert damage(out / run_id) is None
        assert not (out / run_id / STATE_FILE).exists()
        assert (out / run_id / RECORDS_FILE).read_text() == (clean / run_id / RECORDS_FILE).read_text()
        assert not read_records(out / run_id).duplicated(["step", "task", "split", "metric"]).any()
    assert not list(out.rglob("*.tmp"))


def wait_for_lock(out: Path, pid: int) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        lock = out / DIRECTORY_LOCK_FILE
        if lock.exists() and f'"pid": {pid}' in lock.read_text():
            return
        time.sleep(0.02)
    raise AssertionError("the first driver never took the lock")


@pytest.mark.slow
def test_second_driver_is_refused_with_the_holders_pid(tmp_path: Path, clean: Path) -> None:
    file, out = sweep_file(tmp_path), tmp_path / "out"
    first = driver(file, out)
    wait_for_lock(out, first.pid)
    second = driver(file, out)
    code, _, err = finish(second)
    assert first.poll() is None, "the first driver ended before the second started: no overlap tested"
    assert code == 2
    assert re.fullmatch(
        rf"error: {re.escape(str(out))} is in use by mtlscope pid {first.pid} on \S+; wait for it or "
        r"pass --wait\n",
        err,
    )
    code, printed, err = finish(first)
    assert code == 0, err
    assert "4 completed" in printed
    assert_like_clean(out, clean)


@pytest.mark.slow
def test_two_drivers_with_wait_run_one_after_the_other(tmp_path: Path, clean: Path) -> None:
    file, out = sweep_file(tmp_path), tmp_path / "out"
    drivers = [driver(file, out, "--wait"), driver(file, out, "--wait")]  # started at once
    results = [finish(process) for process in drivers]
    assert [code for code, _, _ in results] == [0, 0], results
    printed = [text for _, text, _ in results]
    assert sum("(4 already done)" in text for text in printed) == 1  # the one that waited found everything done
    assert sum("waiting for it" in err for _, _, err in results) == 1
    assert_like_clean(out, clean)


# -- damaged runs, --force, --restart-failed (in-process, small runs) ------------------------------------------

SMALL = {**SWEEP, "base": {**SWEEP["base"], "training": {"steps": 10, "eval_every": 5, "diagnostics_every": 5}}}


@pytest.fixture(scope="module")
def small_reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("small")
    file = base / "sweep.yaml"
    file.write_text(yaml.safe_dump(SMALL))
    out = base / "out"
    result = run_sweep(load_sweep(file).configs, out, progress=False, threads_per_worker=1)
    assert result.counts["completed"] == 4
    return out


def small(tmp_path: Path, reference: Path) -> tuple[list[str], Path, Path]:
    file = tmp_path / "sweep.yaml"
    file.write_text(yaml.safe_dump(SMALL))
    out = tmp_path / "out"
    assert main(["sweep", str(file), "--out", str(out)]) == 0
    run_ids = [config.run_id() for config in load_sweep(file).configs]
    for run_id in run_ids:
        assert (out / run_id / RECORDS_FILE).read_text() == (reference / run_id / RECORDS_FILE).read_text()
    return run_ids, file, out


def test_damaged_runs_are_reported_and_repaired(
    tmp_path: Path, small_reference: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    run_ids, file, out = small(tmp_path, small_reference)
    truncated, duplicated, changed, unsummarized = run_ids
    lines = (out / truncated / RECORDS_FILE).read_text().splitlines(keepends=True)
    (out / truncated / RECORDS_FILE).write_text("".join(lines[:-7]))
    lines = (out / duplicated / RECORDS_FILE).read_text().splitlines(keepends=True)
    (out / duplicated / RECORDS_FILE).write_text("".join([*lines, *lines[1:21]]))
    text = (out / changed / RECORDS_FILE).read_text()
    (out / changed / RECORDS_FILE).write_text(text.replace(",loss,", ",loss,9", 1))
    (out / unsummarized / "summary.json").unlink()
    reasons = {run_id: damage(out / run_id) for run_id in run_ids}
    assert re.fullmatch(r"records\.csv truncated: \d+ of \d+ rows \(last step \d+ of 10\)", str(reasons[truncated]))
    assert re.fullmatch(r"records\.csv has \d+ rows, \d+ expected, 20 of them duplicated", str(reasons[duplicated]))
    assert "records.csv changed after the run finished" in str(reasons[changed])
    assert reasons[unsummarized] == "summary.json missing"

    capsys.readouterr()
    assert main(["sweep-status", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "4 runs: 0 done, 0 running, 0 failed, 0 diverged, 4 damaged, 0 remaining" in printed
    assert f"  damaged {truncated}: {reasons[truncated]}" in printed
    status = sweep_status(load_sweep(file).configs, out)
    assert status.counts["damaged"] == 4 and not status.finished

    with caplog.at_level(logging.WARNING):
        assert main(["sweep", str(file), "--out", str(out)]) == 0
    assert "(0 already done)" in capsys.readouterr().out
    repaired = [
        record.getMessage() for record in caplog.records if "running it again from step 0" in record.getMessage()
    ]
    assert len(repaired) == 4
    for run_id in run_ids:
        assert damage(out / run_id) is None
        assert (out / run_id / RECORDS_FILE).read_text() == (small_reference / run_id / RECORDS_FILE).read_text()
    assert "4 done" in format_status(sweep_status(load_sweep(file).configs, out))


def test_force_reruns_the_named_runs(tmp_path: Path, small_reference: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_ids, file, out = small(tmp_path, small_reference)
    capsys.readouterr()
    assert main(["sweep", str(file), "--out", str(out), "--force", run_ids[1], "--force", run_ids[3]]) == 0
    assert "(2 already done)" in capsys.readouterr().out
    for run_id in run_ids:
        assert (out / run_id / RECORDS_FILE).read_text() == (small_reference / run_id / RECORDS_FILE).read_text()
    assert main(["sweep", str(file), "--out", str(out), "--force", "no-such-run"]) == 2
    err = capsys.readouterr().err
    assert err == "error: --force: no-such-run is not a run of this sweep (--dry-run lists the run ids)\n"


@pytest.mark.parametrize("restart", [False, True])
def test_restart_failed_starts_failed_runs_over(
    tmp_path: Path, small_reference: Path, monkeypatch: pytest.MonkeyPatch, restart: bool
) -> None:
    file = tmp_path / "sweep.yaml"
    file.write_text(yaml.safe_dump(SMALL))
    configs = load_sweep(file).configs
    out = tmp_path / "out"
    failing = configs[0].run_id()
    monkeypatch.setenv(FAULT_ENV, f"raise:{failing}@7")  # fails after the step-5 checkpoint saved its state
    first = run_sweep(configs, out, progress=False, threads_per_worker=1)
    assert first.counts["failed"] == 1 and (out / failing / STATE_FILE).exists()
    monkeypatch.delenv(FAULT_ENV)
    (out / failing / "note.txt").write_text("a fresh run directory has no such file")
    again = run_sweep(configs, out, progress=False, threads_per_worker=1, restart_failed=restart)
    assert again.counts["completed"] == 4 and again.skipped == 3
    assert (out / failing / "note.txt").exists() is not restart  # resumed in place, or started over
    assert (out / failing / RECORDS_FILE).read_text() == (small_reference / failing / RECORDS_FILE).read_text()
