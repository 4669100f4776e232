"""Locks per results directory and per run: a second writer gets one line naming the holder, or waits; a killed
holder never leaves a stale lock."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from mtlscope.cli import main
from mtlscope.runs import execute, resolve, validate_config
from mtlscope.runs.locking import DIRECTORY_LOCK_FILE, InUseError, hold_directory, hold_run
from mtlscope.runs.store import STATUS_FILE, read_status
from mtlscope.sweeps import run_sweep

CONFIG = {
    "setting": {"name": "digits-mtl", "tasks": ["digits1", "digits2"]},
    "model": {"encoder": {"name": "mlp", "hidden": [16, 8]}},
    "training": {"steps": 10, "eval_every": 5},
}
HOLDER = """
import sys, time
from mtlscope.runs.locking import hold_directory, hold_run
hold = hold_run if sys.argv[1] == "run" else hold_directory
with hold(sys.argv[2]):
    print("held", flush=True)
    time.sleep(float(sys.argv[3]))
"""


@pytest.fixture
def holder() -> Iterator[object]:
    """Start a process holding a lock (``start(kind, path, seconds)``); killed with SIGKILL at the end."""
    processes: list[subprocess.Popen[str]] = []

    def start(kind: str, path: Path, seconds: float = 60.0) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, "-c", HOLDER, kind, str(path), str(seconds)], stdout=subprocess.PIPE, text=True
        )
        processes.append(process)
        assert process.stdout is not None and process.stdout.readline().strip() == "held"
        return process

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait()


def in_use_line(path: Path, pid: int) -> str:
    return f"{path} is in use by mtlscope pid {pid} on {socket.gethostname()}; wait for it or pass --wait"


def error_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    """The lines of stderr that are not a progress bar's."""
    return [
        line
        for line in capsys.readouterr().err.replace("\r", "\n").splitlines()
        if line and "it/s" not in line and "step/s" not in line and "run/s" not in line
    ]


def run_path(out: Path) -> Path:
    return out / resolve(validate_config(CONFIG)).run_id()


def test_a_held_run_is_not_touched_and_a_killed_holder_leaves_no_lock(
    tmp_path: Path, holder: object, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    path = run_path(out)
    process = holder("run", path)  # type: ignore[operator]
    with pytest.raises(InUseError) as error:
        execute(validate_config(CONFIG), out)
    assert str(error.value) == in_use_line(path, process.pid)
    assert [p.name for p in path.iterdir()] == [".lock"]  # nothing written into the held run
    file = tmp_path / "config.yaml"
    file.write_text(yaml.safe_dump(CONFIG))
    assert main(["run", str(file), "--out", str(out)]) == 2
    assert error_lines(capsys) == [f"error: {in_use_line(path, process.pid)}"]
    # a sweep does not touch it either: reported failed in its result, nothing written on disk
    result = run_sweep([validate_config(CONFIG)], out, progress=False)
    assert result.outcomes[0].status == "failed" and f"pid {process.pid}" in result.outcomes[0].message
    assert [p.name for p in path.iterdir()] == [".lock"]
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert execute(validate_config(CONFIG), out).status == "completed"


def test_wait_runs_after_the_holder(
    tmp_path: Path, holder: object, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out"
    process = holder("run", run_path(out), 2.5)  # type: ignore[operator]
    file = tmp_path / "config.yaml"
    file.write_text(yaml.safe_dump(CONFIG))
    started = time.monotonic()
    assert main(["run", str(file), "--out", str(out), "--wait"]) == 0
    assert time.monotonic() - started >= 1.5 and process.wait(timeout=30) == 0  # it ran once the holder was done
    assert "completed" in capsys.readouterr().out
    assert f"in use by mtlscope pid {process.pid}" in caplog.text and "waiting for it" in caplog.text


def test_a_second_sweep_driver_is_refused_before_writing(
    tmp_path: Path, holder: object, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    process = holder("directory", out)  # type: ignore[operator]
    with pytest.raises(InUseError, match=re.escape(in_use_line(out, process.pid))):
        run_sweep([validate_config(CONFIG)], out, progress=False)
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"name": "s", "base": CONFIG, "seeds": 1}))
    assert main(["sweep", str(sweep), "--out", str(out)]) == 2
    assert error_lines(capsys) == [f"error: {in_use_line(out, process.pid)}"]
    assert main(["reproduce", "main-table1-mini", "--out", str(out)]) == 2
    assert f"pid {process.pid}" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [DIRECTORY_LOCK_FILE]  # no manifest, no run


def test_locks_are_reentrant_for_their_thread_only(tmp_path: Path) -> None:
    errors: list[BaseException] = []

    def other() -> None:
        try:
            with hold_directory(tmp_path):
                pass
        except InUseError as error:
            errors.append(error)

    with hold_directory(tmp_path), hold_directory(tmp_path), hold_run(tmp_path / "run"):
        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
    assert len(errors) == 1 and f"pid {os.getpid()}" in str(errors[0])
    with hold_directory(tmp_path):  # released again
        pass


def test_wait_on_a_held_directory(tmp_path: Path, holder: object) -> None:
    out = tmp_path / "out"
    process = holder("directory", out, 1.5)  # type: ignore[operator]
    started = time.monotonic()
    result = run_sweep([validate_config(CONFIG)], out, progress=False, wait=True)
    assert time.monotonic() - started >= 1.0 and process.wait(timeout=30) == 0
    assert result.counts["completed"] == 1
    assert read_status(run_path(out))["status"] == "completed" and (run_path(out) / STATUS_FILE).exists()


def test_out_that_is_a_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "file"
    out.write_text("not a directory")
    file = tmp_path / "config.yaml"
    file.write_text(yaml.safe_dump(CONFIG))
    assert main(["run", str(file), "--out", str(out)]) == 2
    expected = [f"error: {out}: --out exists and is not a directory; expected a directory"]
    assert error_lines(capsys) == expected
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"name": "s", "base": CONFIG, "seeds": 1}))
    assert main(["sweep", str(sweep), "--out", str(out)]) == 2
    assert error_lines(capsys) == expected
    assert out.read_text() == "not a directory"
