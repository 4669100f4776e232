from __future__ import annotations

from pathlib import Path

import pytest

from mtlscope.cli import main


def test_run_runs_and_settings_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("setting: {name: synthetic}\ntraining: {epochs: 2}\n")
    assert main(["run", str(config), "training.batch_size=64", "--out", str(tmp_path / "out")]) == 0
    assert "completed" in capsys.readouterr().out
    assert main(["run", str(config), "training.batch_size=64", "--out", str(tmp_path / "out")]) == 0
    assert "already completed" in capsys.readouterr().out
    assert main(["runs", str(tmp_path / "out")]) == 0
    listing = capsys.readouterr().out
    assert "task0+task1" in listing and "1 runs: 1 completed" in listing
    assert main(["settings"]) == 0
    listing = capsys.readouterr().out
    for name in ("digits-mtl", "digits-attributes", "synthetic", "noisy-digits", "loop"):
        assert name in listing


def test_missing_paths_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(tmp_path / "none.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    assert main(["runs", str(tmp_path / "none")]) == 2
    assert "no such results directory" in capsys.readouterr().err
