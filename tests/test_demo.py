"""End-to-end: the demo at reduced size, through the CLI entry point."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from mtlscope.cli import main
from mtlscope.runs import load


def test_demo_writes_runs_figure_and_transfer_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--seeds", "2", "--epochs", "3"]) == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert "demo finished in" in printed and "transfer.csv" in printed
    progress = captured.err.splitlines()  # stderr is not a terminal here: plain progress lines, no bar
    assert progress and all(line.startswith("demo: ") for line in progress) and "\r" not in captured.err
    assert progress[-1].startswith("demo: ") and "finished in" in progress[-1]
    results = load(out / "runs")
    assert len(results.runs) == 6 and (results.runs["status"] == "completed").all()
    assert set(results.runs["variant"]) == {"digits1", "digits1+digits2", "digits1+noisy-digits"}
    table = pd.read_csv(out / "transfer.csv")
    assert list(table.columns) == [
        "task",
        "variant",
        "st_mean",
        "st_std",
        "mt_mean",
        "mt_std",
        "delta",
        "significant",
    ]
    assert set(table["variant"]) == {"digits1+digits2", "digits1+noisy-digits"}
    assert (table["task"] == "digits1").all()
    assert (table["delta"] - (table["mt_mean"] - table["st_mean"])).abs().max() < 1e-12
    assert "| task | variant |" in (out / "transfer.md").read_text()
    with Image.open(out / "generalization_vs_loss.png") as image:
        assert image.size[0] > 300 and image.size[1] > 200
    assert (out / "generalization_vs_loss.svg").read_text().lstrip().startswith("<?xml")
    report = (out / "report.html").read_text()
    assert "mtlscope demo" in report and report.count("data:image/png;base64,") >= 2
    with Image.open(out / "factors_vs_loss.png") as image:
        assert image.size[0] > 600 and image.size[1] > 400
    probes = results.records[results.records["split"] == "probe"]
    for metric in ("sharpness", "fim_trace", "grad_cov_trace", "min_train_loss"):
        assert set(probes[probes["metric"] == metric]["run_id"]) == set(results.runs["run_id"])
    multi = results.runs[results.runs["num_tasks"] == 2]["run_id"]
    assert set(probes[probes["metric"] == "grad_similarity"]["run_id"]) == set(multi)
    assert set(probes[probes["metric"].str.startswith("affinity_overall/")]["run_id"]) == set(results.runs["run_id"])
    assert main(["demo", "--out", str(out), "--seeds", "2", "--epochs", "3", "--quiet"]) == 0  # runs skipped
    quiet = capsys.readouterr()
    assert quiet.err == "" and "demo finished in" in quiet.out


def test_demo_rejects_one_seed(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["demo", "--out", str(tmp_path / "d"), "--seeds", "1"]) == 2
    assert "--seeds" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
