"""mtlscope sweep / sweep-status through the CLI entry point."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

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
