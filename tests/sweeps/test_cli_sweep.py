"""mtlscope sweep / sweep-status through the CLI entry point."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import mtlscope
from mtlscope.cli import main
from mtlscope.runs import load

SWEEP = {
    "name": "tiny",
    "base": {
        "setting": {"name": "digits-mtl", "tasks": ["digits1"]},
        "model": {"encoder": {"name": "mlp", "hidden": [16, 8]}},
        "training": {"steps": 6, "eval_every": 3, "batch_size": 16},
    },
    "zip": {"setting.tasks": [["digits1"], ["digits1", "digits2"]]},
    "seeds": 2,
}


def test_sweep_runs_reports_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = tmp_path / "sweep.yaml"
    file.write_text(yaml.safe_dump(SWEEP))
    out = tmp_path / "out"
    assert main(["sweep", str(file), "--out", str(out), "--dry-run"]) == 0
    assert "tiny: 4 runs" in capsys.readouterr().out and not out.exists()
    assert main(["sweep-status", str(out)]) == 2  # nothing there yet
    assert "no such sweep directory" in capsys.readouterr().err
    assert main(["sweep", str(file), "--out", str(out), "--workers", "2"]) == 0
    assert "4 completed" in capsys.readouterr().out
    assert len(load(out).runs) == 4
    assert main(["sweep-status", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "4" in printed and "remaining" in printed
    assert main(["sweep", str(file), "--out", str(out)]) == 0  # again: everything skipped
    assert "(4 already done)" in capsys.readouterr().out


def test_bad_sweep_file_is_one_line_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = tmp_path / "sweep.yaml"
    file.write_text(yaml.safe_dump({**SWEEP, "grid": {"optimizer.lr": []}}))
    assert main(["sweep", str(file), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert "grid.optimizer.lr: expected a non-empty list" in error and error.count("\n") == 1
    assert not (tmp_path / "out").exists()
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(SWEEP))
    assert main(["sweep", str(good), "--out", str(tmp_path / "out"), "--address", "127.0.0.1:1"]) == 2
    assert "--address: only with --executor ray" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_sweep_status_accepts_a_reproduce_output_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``reproduce`` keeps its sweep (and the protocol's manifest) in DIR/runs; sweep-status DIR finds it there."""
    base = {**SWEEP["base"], "setting": {"name": "digits-mtl", "tasks": ["digits1"], "options": {"digits1_size": 60}}}
    sweep = {"base": base, "zip": SWEEP["zip"], "protocol": {"select": {"optimizer.lr": [0.001, 0.01]}, "seeds": 2}}
    preset = {
        "name": "tiny",
        "title": "tiny",
        "paper": "none",
        "reproduces": ["nothing"],
        "description": "A protocol sweep.",
        "sweep": sweep,
        "outputs": [{"kind": "transfer_table"}],
    }
    file = tmp_path / "tiny.yaml"
    file.write_text(yaml.safe_dump(preset))
    out = tmp_path / "out"
    assert main(["reproduce", str(file), "--out", str(out), "--quiet"]) == 0
    assert capsys.readouterr().err == ""  # --quiet: no progress lines
    assert main(["analyze", str(out)]) == 0
    capsys.readouterr()
    assert main(["sweep-status", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"{out / 'runs'}: 6 runs: 6 done, 0 running") and "finished" in printed
    assert main(["sweep-status", str(out / "runs")]) == 0
    assert capsys.readouterr().out == printed


@pytest.mark.slow
def test_ctrl_c_stops_a_sweep_with_workers_in_one_line_and_the_same_command_resumes(tmp_path: Path) -> None:
    """SIGINT to the whole process group (what Ctrl-C in a terminal does): no traceback from the driver or its
    workers, one line, exit 130; running the same command again finishes the sweep."""
    data = {**SWEEP, "base": {**SWEEP["base"], "training": {"steps": 200, "eval_every": 50, "batch_size": 16}}}
    file = tmp_path / "sweep.yaml"
    file.write_text(yaml.safe_dump(data))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "mtlscope.cli", "sweep", str(file), "--out", str(out), "--workers", "2"]
    environment = dict(os.environ, PYTHONPATH=str(Path(mtlscope.__file__).parents[1]))
    process = subprocess.Popen(
        command,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        # as from a terminal: a test run started in the background (`make test &`, nohup) ignores SIGINT, and an
        # ignored signal stays ignored in the processes it starts
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 600  # a loaded machine can take minutes to start the driver and its workers
    while not any(out.glob("*/records.csv")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert process.poll() is None and any(out.glob("*/records.csv")), "the sweep should be running when interrupted"
    os.killpg(process.pid, signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert err.splitlines()[-1] == "interrupted; run the same command to resume" and "Traceback" not in err, err
    finished = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0 and "4 completed" in finished.stdout, finished.stderr
