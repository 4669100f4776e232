"""Progress on stderr: a bar on a terminal, plain periodic lines in a log or pipe, nothing with ``--quiet``."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import mtlscope
from mtlscope.progress import Progress, format_duration

#: What a tqdm bar leaves in a log: carriage returns, block characters, the ``|`` frame and its rate.
BAR_MARKS = ("\r", "█", "▏", "▌", "|", "it/s", "step/s", "run/s", "s/step", "s/run")


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_every_tenth_and_at_the_end_with_an_eta() -> None:
    stream, clock = io.StringIO(), _Clock()
    with Progress(40, "sweep", unit="run", stream=stream, clock=clock) as progress:
        for done in range(1, 41):
            clock.now += 3.0
            progress.note(f"{done // 10} failed")
            progress.advance()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 10  # one per tenth (4 runs), the last one being the end
    assert lines[2] == "sweep: 12/40 runs (1 failed), ETA 1 min 24 s"  # 3 s per run, 28 runs left
    assert lines[-1] == "sweep: 40/40 runs (4 failed), finished in 2 min 00 s"
    assert not any(mark in stream.getvalue() for mark in BAR_MARKS)


def test_plain_lines_at_most_every_30_s_between_tenths_and_untimed_items_leave_the_eta() -> None:
    stream, clock = io.StringIO(), _Clock()
    progress = Progress(1000, "digits1", stream=stream, clock=clock)
    progress.advance(50, timed=False)  # e.g. runs done before: no time spent
    assert stream.getvalue() == ""
    clock.now = 31.0
    progress.advance(10)
    assert stream.getvalue() == "digits1: 60/1000 steps, ETA 48 min 34 s\n"  # 3.1 s per timed step, 940 left
    clock.now = 40.0
    progress.advance(10)  # neither 30 s later nor a new tenth: no line
    assert stream.getvalue().count("\n") == 1
    progress.advance_to(100)  # a tenth
    assert stream.getvalue().splitlines()[-1] == "digits1: 100/1000 steps, ETA 12 min 00 s"
    progress.advance(5)
    progress.close()  # the last count, once
    progress.close()
    assert stream.getvalue().splitlines()[2:] == ["digits1: 105/1000 steps, ETA 10 min 51 s"]


def test_a_terminal_gets_a_bar_and_disabled_progress_prints_nothing() -> None:
    terminal = _Terminal()
    with Progress(5, "sweep", unit="run", stream=terminal) as progress:
        progress.advance(5)
    assert "\r" in terminal.getvalue() and "5/5" in terminal.getvalue()
    quiet = _Terminal()
    with Progress(5, "sweep", unit="run", stream=quiet, enabled=False) as progress:
        progress.advance(5)
    assert quiet.getvalue() == ""


def test_format_duration() -> None:
    assert [format_duration(s) for s in (4.4, 200, 7500)] == ["4 s", "3 min 20 s", "2 h 05 min"]


def _cli(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The CLI in a subprocess with stderr piped (not a terminal), on this checkout's sources."""
    environment = dict(os.environ, PYTHONPATH=str(Path(mtlscope.__file__).parents[1]))
    return subprocess.run(
        [sys.executable, "-m", "mtlscope.cli", *argv],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text("setting: {name: synthetic}\ntraining: {steps: 40, eval_every: 20, batch_size: 32}\n")
    return path


def test_run_in_a_log_writes_plain_progress_lines(config: Path, tmp_path: Path) -> None:
    ran = _cli("run", str(config), "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert not any(mark in ran.stderr for mark in BAR_MARKS), ran.stderr
    lines = ran.stderr.splitlines()
    assert lines and all(line.startswith("synthetic: ") for line in lines)
    assert lines[-1].startswith("synthetic: 40/40 steps, finished in")
    assert ran.stdout.strip().endswith(": completed")


def test_quiet_prints_only_the_result_lines(config: Path, tmp_path: Path) -> None:
    ran = _cli("run", str(config), "--out", str(tmp_path / "out"), "--quiet", cwd=tmp_path)
    assert ran.returncode == 0 and ran.stderr == ""
    assert ran.stdout.count("\n") == 1 and ran.stdout.strip().endswith(": completed")
    sweep = tmp_path / "sweep.yaml"
    base = yaml.safe_load(config.read_text())
    sweep.write_text(yaml.safe_dump({"name": "tiny", "base": base, "seeds": 2}))
    ran = _cli("sweep", str(sweep), "--out", str(tmp_path / "sweep-out"), "--quiet", cwd=tmp_path)
    assert ran.returncode == 0 and ran.stderr == ""
    assert ran.stdout.splitlines()[-1].startswith("sweep tiny: 2 completed")
    ran = _cli("sweep", str(sweep), "--out", str(tmp_path / "sweep-2"), cwd=tmp_path)  # not quiet: plain lines
    assert ran.returncode == 0 and not any(mark in ran.stderr for mark in BAR_MARKS), ran.stderr
    assert ran.stderr.splitlines()[-1].startswith("sweep: 2/2 runs (2 completed), finished in")
