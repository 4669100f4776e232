"""``mtlscope analyze``: the key tables of a results directory on the terminal and, with --out, as files."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from mtlscope.analysis import transfer_table
from mtlscope.cli import main
from mtlscope.report.summary import describe_effect
from mtlscope.runs import execute, load, validate_config


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding ``runs/``: digits1 alone and digits1+digits2, 2 seeds each, 20 steps."""
    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("analyze")
    for tasks in (["digits1"], ["digits1", "digits2"]):
        for seed in (0, 1):
            config = {
                "setting": {"name": "digits-mtl", "tasks": tasks},
                "model": {"encoder": {"name": "mlp", "hidden": [32, 8]}},
                "training": {"steps": 20, "eval_every": 5, "batch_size": 16},
                "probes": {"min_train_loss": {}},
                "seed": seed,
            }
            assert execute(validate_config(config), base / "runs").status == "completed"
    return base


def test_analyze_prints_the_transfer_table_with_its_reading(base: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", str(base)]) == 0  # a directory containing runs/
    printed = capsys.readouterr().out
    table = transfer_table(load(base / "runs"))
    assert len(table) == 1
    row = table.iloc[0]
    assert "## Transfer" in printed and "| task | variant | st_mean |" in printed
    assert describe_effect("digits1+digits2", "digits1", float(row["delta"]), row["significant"]) in printed
    assert f"| digits1 | digits1+digits2 | {row['st_mean']:.4f} |" in printed
    for title in ("Factor transfer", "Method changes", "Best temperatures", "IT-MTL candidate wins"):
        assert f"## {title}" in printed
    assert "method.name=it_mtl" in printed  # what to run for a missing analysis
    assert "wrote" not in printed
    assert main(["analyze", str(base / "runs")]) == 0  # the results directory itself
    assert capsys.readouterr().out == printed


def test_analyze_formats(base: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", str(base), "--format", "latex"]) == 0
    printed = capsys.readouterr().out
    assert r"\toprule" in printed and r"\caption{Transfer}" in printed and "% Transfer: Against" in printed
    assert main(["analyze", str(base), "--format", "csv"]) == 0
    printed = capsys.readouterr().out
    assert "task,variant,st_mean,st_std,mt_mean,mt_std,delta,significant" in printed


def test_analyze_out_writes_each_table(base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "tables"
    assert main(["analyze", str(base / "runs"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    names = sorted(path.name for path in out.iterdir())
    assert names == [f"{stem}.{ext}" for stem in ("factor_transfer", "transfer") for ext in ("csv", "md", "tex")]
    for name in names:
        assert f"wrote {out / name}" in printed
    pd.testing.assert_frame_equal(pd.read_csv(out / "transfer.csv"), transfer_table(load(base / "runs")))
    assert (out / "transfer.md").read_text().startswith("Transfer. Against single-task training: digits1+digits2")
    assert r"\bottomrule" in (out / "transfer.tex").read_text()


def test_analyze_bad_directory_exits_2_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing, out = tmp_path / "missing", tmp_path / "out"
    assert main(["analyze", str(missing), "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert str(missing) in captured.err and len(captured.err.strip().splitlines()) == 1
    assert captured.out == "" and not out.exists()

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["analyze", str(empty), "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert str(empty) in captured.err and "no runs" in captured.err
    assert captured.out == "" and not out.exists()


def test_analyze_out_must_be_a_directory(base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = tmp_path / "file.txt"
    file.write_text("x")
    assert main(["analyze", str(base), "--out", str(file)]) == 2
    captured = capsys.readouterr()
    assert str(file) in captured.err and captured.out == ""
    assert file.read_text() == "x"
