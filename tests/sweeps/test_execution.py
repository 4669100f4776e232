"""Sweeps: results independent of the number of workers, resumable after a killed driver or worker."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from mtlscope.runs import ConfigError, RunConfig, load, read_records, validate_config
from mtlscope.runs.locking import DIRECTORY_LOCK_FILE, RUN_LOCK_FILE
from mtlscope.runs.store import RECORDS_FILE, STATE_FILE, STATUS_FILE, read_status
from mtlscope.sweeps import SweepResult, run_sweep
from mtlscope.sweeps.execution import FAULT_ENV, WORKER_DIED

TASK_SETS = (["digits1", "digits2"], ["digits1", "noisy-digits"])
HAS_PROC = Path("/proc/self/stat").exists()


def config(seed: int, tasks: list[str], steps: int = 10, **extra: Any) -> RunConfig:
    return validate_config(
        {
            "seed": seed,
            "setting": {"name": "digits-mtl", "tasks": tasks},
            "model": {"encoder": {"name": "mlp", "hidden": [16, 8]}},
            "training": {"steps": steps, "eval_every": 5},
            **extra,
        }
    )


CONFIGS = [config(seed, tasks) for tasks in TASK_SETS for seed in (0, 1)]
LONG = [config(seed, tasks, steps=400) for tasks in TASK_SETS for seed in (0, 1)]
DIVERGING = config(0, ["digits1", "digits2"], optimizer={"name": "sgd", "lr": 1e10})


def sweep(configs: list[RunConfig], out: Path, workers: int = 1) -> SweepResult:
    return run_sweep(configs, out, workers=workers, progress=False, threads_per_worker=1)


def records(out: Path, run_ids: list[str]) -> pd.DataFrame:
    frame = load(out).records
    frame = frame[frame["run_id"].isin(run_ids)]
    return frame.sort_values(["run_id", "step", "task", "split", "metric"]).reset_index(drop=True)


def assert_same_runs(out: Path, reference: Path, run_ids: list[str]) -> None:
    """Identical records (as tables and as files), every run completed, no leftover state, no duplicate rows."""
    pd.testing.assert_frame_equal(records(out, run_ids), records(reference, run_ids))
    for run_id in run_ids:
        assert read_status(out / run_id)["status"] == "completed"
        assert not (out / run_id / STATE_FILE).exists()
        assert (out / run_id / RECORDS_FILE).read_text() == (reference / run_id / RECORDS_FILE).read_text()
        frame = read_records(out / run_id)
        assert not frame.duplicated(["step", "task", "split", "metric"]).any()


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    out = tmp_path_factory.mktemp("reference")
    result = sweep(CONFIGS, out)
    return out, [outcome.run_id for outcome in result.outcomes]


@pytest.fixture(scope="module")
def long_reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    out = tmp_path_factory.mktemp("long-reference")
    result = sweep(LONG, out)
    assert result.counts["completed"] == len(LONG)
    return out, [outcome.run_id for outcome in result.outcomes]


def workers_of(pid: int) -> list[int]:
    """The pool worker processes (children running multiprocessing's spawn_main) of process ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z" and "spawn_main" in cmdline:
            found.append(int(entry.name))
    return sorted(found)


def wait_unlocked(out: Path, timeout: float) -> bool:
    """Whether every run lock under ``out`` is free (nobody runs anything there) within ``timeout`` seconds."""
    import fcntl

    deadline = time.monotonic() + timeout
    while True:
        held = False
        for lock in out.glob(f"*/{RUN_LOCK_FILE}"):
            with open(lock, "a") as handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    held = True
                else:
                    fcntl.flock(handle, fcntl.LOCK_UN)
        if not held:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_sequential_equals_two_workers(tmp_path: Path, reference: tuple[Path, list[str]]) -> None:
    reference_out, run_ids = reference
    result = sweep([*CONFIGS, CONFIGS[0]], tmp_path, workers=2)
    assert result.duplicates == 1 and result.skipped == 0 and result.retried == 0
    assert [outcome.run_id for outcome in result.outcomes] == run_ids
    assert result.counts == {"completed": 4, "diverged": 0, "failed": 0}
    assert_same_runs(tmp_path, reference_out, run_ids)


def test_rerun_skips_completed_runs(tmp_path: Path, reference: tuple[Path, list[str]]) -> None:
    out = tmp_path / "out"
    shutil.copytree(reference[0], out)
    before = files(out)
    result = sweep(CONFIGS, out, workers=2)
    assert result.skipped == 4 and all(outcome.skipped for outcome in result.outcomes)
    assert result.counts["completed"] == 4
    assert files(out) == before


def files(out: Path) -> dict[Path, bytes]:
    """Every file under ``out`` but the lock files (which name their latest holder) and their contents."""
    locks = (DIRECTORY_LOCK_FILE, RUN_LOCK_FILE)
    return {path: path.read_bytes() for path in out.rglob("*") if path.is_file() and path.name not in locks}


def test_bad_config_raises_before_anything_is_written(tmp_path: Path) -> None:
    bad = config(0, ["digits1", "no-such-task"])
    with pytest.raises(ConfigError, match="sweep config 2") as error:
        sweep([CONFIGS[0], bad], tmp_path / "out")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="workers"):
        run_sweep(CONFIGS, tmp_path / "out", workers=0)


def test_failing_runs_are_recorded_and_the_sweep_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reference: tuple[Path, list[str]]
) -> None:
    reference_out, run_ids = reference
    raising, escaping, crashing = run_ids[1], run_ids[2], run_ids[3]
    # raises inside training (execute records it), raises outside execute, the worker process dies at step 7
    monkeypatch.setenv(FAULT_ENV, f"raise:{raising}@3,raise:{escaping},exit:{crashing}@7")
    configs = [CONFIGS[0], DIVERGING, *CONFIGS[1:]]
    result = sweep(configs, tmp_path, workers=2)
    statuses = {outcome.run_id: outcome.status for outcome in result.outcomes}
    assert statuses[run_ids[0]] == "completed"
    assert [outcome.status for outcome in result.outcomes][1] == "diverged"
    assert statuses[raising] == statuses[escaping] == statuses[crashing] == "failed"
    assert result.counts == {"completed": 1, "diverged": 1, "failed": 3}
    assert result.retried >= 1
    messages = {outcome.run_id: outcome.message for outcome in result.outcomes}
    assert "test fault" in messages[raising] and "test fault" in messages[escaping]
    assert messages[raising].startswith("RuntimeError: test fault")  # the run's own error, as execute recorded it
    assert messages[crashing] == WORKER_DIED
    # on disk: execute marked the raising run failed, the driver the run whose worker died (its state is kept)
    assert read_status(tmp_path / raising)["status"] == "failed"
    assert read_status(tmp_path / crashing)["status"] == "failed"
    assert read_status(tmp_path / crashing)["message"] == WORKER_DIED
    assert (tmp_path / crashing / STATE_FILE).exists()
    assert not (tmp_path / escaping).exists()
    # the same sweep again, without the faults: failed runs are redone (resumed), finished ones skipped
    monkeypatch.delenv(FAULT_ENV)
    again = sweep(configs, tmp_path)
    assert again.counts == {"completed": 4, "diverged": 1, "failed": 0} and again.skipped == 2
    assert_same_runs(tmp_path, reference_out, run_ids)


def test_an_exception_escaping_execute_in_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reference: tuple[Path, list[str]]
) -> None:
    first = reference[1][0]
    monkeypatch.setenv(FAULT_ENV, f"raise:{first},exit:{first}")  # exit is ignored in-process
    result = sweep(CONFIGS[:2], tmp_path)
    assert [outcome.status for outcome in result.outcomes] == ["failed", "completed"]
    assert result.outcomes[0].message.startswith("RuntimeError: test fault")


def _write_driver(tmp_path: Path, configs: list[RunConfig]) -> list[str]:
    (tmp_path / "configs.json").write_text(json.dumps([c.to_dict() for c in configs]))
    (tmp_path / "driver.py").write_text(
        "import json\n"
        "import sys\n\n"
        "from mtlscope.runs import validate_config\n"
        "from mtlscope.sweeps import run_sweep\n\n"
        "if __name__ == '__main__':\n"
        "    configs = [validate_config(data) for data in json.loads(open(sys.argv[1]).read())]\n"
        "    run_sweep(configs, sys.argv[2], workers=int(sys.argv[3]), progress=False, threads_per_worker=1)\n"
    )
    return [sys.executable, str(tmp_path / "driver.py"), str(tmp_path / "configs.json")]


@pytest.mark.slow
@pytest.mark.skipif(not HAS_PROC, reason="finds the pool workers through /proc")
def test_killed_driver_resumes_to_the_uninterrupted_result(
    tmp_path: Path, long_reference: tuple[Path, list[str]]
) -> None:
    reference_out, run_ids = long_reference
    out = tmp_path / "out"
    command = _write_driver(tmp_path, LONG)
    process = subprocess.Popen([*command, str(out), "2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rng = random.Random(7)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            statuses = [read_status(path.parent)["status"] for path in out.glob(f"*/{STATUS_FILE}")]
            if "completed" in statuses:
                break
            time.sleep(0.02)
        assert process.poll() is None, "the sweep ended before it could be killed"
        time.sleep(rng.uniform(0.0, 0.3))  # somewhere in the middle of the next runs
        orphans = workers_of(process.pid)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert orphans, "the driver had no pool workers"
    # the workers notice that the driver is gone and stop, rather than write on into the runs
    deadline = time.monotonic() + 15
    while any(alive(pid) for pid in orphans) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(pid) for pid in orphans)
    # a worker forked just before the kill (not yet visible as spawn_main) also stops; its run lock goes with it
    assert wait_unlocked(out, 15), "a run lock is still held 15 s after the driver was killed"
    interrupted = load(out).runs
    assert 1 <= (interrupted["status"] == "completed").sum() < len(LONG)
    result = sweep(LONG, out)
    assert result.counts["completed"] == len(LONG) and result.skipped >= 1, [o.message for o in result.outcomes]
    assert_same_runs(out, reference_out, run_ids)


@pytest.mark.slow
@pytest.mark.skipif(not HAS_PROC, reason="finds the pool workers through /proc")
def test_killed_worker_is_retried_and_the_sweep_completes(
    tmp_path: Path, long_reference: tuple[Path, list[str]]
) -> None:
    reference_out, run_ids = long_reference
    out = tmp_path / "out"
    results: list[SweepResult] = []
    thread = threading.Thread(target=lambda: results.append(sweep(LONG, out, workers=2)))
    thread.start()
    rng = random.Random(3)
    killed = None
    try:
        deadline = time.monotonic() + 120
        while killed is None and time.monotonic() < deadline and thread.is_alive():
            mid_run = [path for path in out.glob(f"*/{STATE_FILE}")] if out.exists() else []
            workers = workers_of(os.getpid())
            if mid_run and len(workers) == 2:
                time.sleep(rng.uniform(0.0, 0.1))
                killed = rng.choice(workers)
                os.kill(killed, signal.SIGKILL)
            time.sleep(0.01)
    finally:
        thread.join(timeout=180)
    assert killed is not None, "no worker was killed"
    assert not thread.is_alive()
    (result,) = results
    assert result.retried >= 1
    assert result.counts == {"completed": len(LONG), "diverged": 0, "failed": 0}
    assert_same_runs(out, reference_out, run_ids)
