from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from mtlscope.runs import execute, load, validate_config
from mtlscope.runs.store import RECORDS_FILE, STATUS_FILE, SUMMARY_FILE, damage

QUICK = {
    "setting": {"name": "digits-mtl", "tasks": ["digits1", "noisy-digits"]},
    "model": {"encoder": {"name": "mlp", "hidden": [32]}},
    "training": {"epochs": 2, "batch_size": 64},
    "probes": ["min_train_loss"],
}


def test_run_directory_contents_and_load(tmp_path: Path) -> None:
    outcome = execute(validate_config(QUICK), tmp_path)
    assert outcome.status == "completed"
    files = {p.name for p in outcome.path.iterdir()}
    assert {"config.yaml", "environment.json", RECORDS_FILE, STATUS_FILE, SUMMARY_FILE} <= files
    environment = json.loads((outcome.path / "environment.json").read_text())
    assert environment["packages"]["torch"].startswith("2.")
    summary = json.loads((outcome.path / SUMMARY_FILE).read_text())
    assert summary["final"]["digits1"]["test"]["accuracy"] > 0
    results = load(tmp_path)
    assert list(results.runs["status"]) == ["completed"]
    row = results.runs.iloc[0]
    assert row["variant"] == "digits1+noisy-digits" and row["num_tasks"] == 2
    assert row["temperature"] == row["lr"] / row["batch_size"]
    assert list(results.records.columns) == ["run_id", "step", "epoch", "task", "split", "metric", "value"]
    assert set(results.records["split"]) == {"train", "val", "test", "optim", "probe"}
    merged = results.merged()
    assert (merged["variant"] == "digits1+noisy-digits").all()
    # the same config maps to the same run: it is skipped, then forced
    again = execute(validate_config(QUICK), tmp_path)
    assert again.skipped and again.path == outcome.path
    assert not execute(validate_config(QUICK), tmp_path, force=True).skipped


def test_identical_records_from_identical_configs(tmp_path: Path) -> None:
    a = execute(validate_config(QUICK), tmp_path / "a")
    b = execute(validate_config(QUICK), tmp_path / "b")
    assert (a.path / RECORDS_FILE).read_text() == (b.path / RECORDS_FILE).read_text()


def test_diverged_run_is_recorded_not_raised(tmp_path: Path) -> None:
    config = validate_config(
        {
            "setting": {"name": "synthetic"},
            "optimizer": {"name": "sgd", "lr": 1e8},
            "training": {"steps": 100, "eval_every": 10},
        }
    )
    outcome = execute(config, tmp_path)
    assert outcome.status == "diverged"
    results = load(tmp_path)
    assert results.runs.iloc[0]["status"] == "diverged"
    assert len(results.records) > 0


def test_torn_last_line_is_dropped(tmp_path: Path) -> None:
    outcome = execute(validate_config(QUICK), tmp_path)
    records = outcome.path / RECORDS_FILE
    complete = load(tmp_path).records
    status = json.loads((outcome.path / STATUS_FILE).read_text())
    (outcome.path / STATUS_FILE).write_text(json.dumps({**status, "status": "running"}))  # killed mid-write
    with open(records, "a") as handle:
        handle.write("99,3.0,digits1,tr")
    assert len(load(tmp_path).records) == len(complete)


def test_killed_run_leaves_a_readable_partial_trajectory(tmp_path: Path) -> None:
    config = tmp_path / "long.yaml"
    config.write_text(
        "setting: {name: digits-mtl, tasks: [digits1, digits2]}\n"
        "model: {encoder: {name: mlp, hidden: [32]}}\n"
        "training: {steps: 100000, eval_every: 5, batch_size: 16}\n"
    )
    out = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "-m", "mtlscope.cli", "run", str(config), "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        records = None
        while time.monotonic() < deadline:
            found = list(out.glob(f"*/{RECORDS_FILE}")) if out.exists() else []
            if found and found[0].read_text().count("\n") > 200:
                records = found[0]
                break
            time.sleep(0.05)
        assert records is not None, "the run never wrote records"
        time.sleep(0.137)  # land somewhere in the middle of the work
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    results = load(out)
    assert list(results.runs["status"]) == ["running"]
    steps = sorted(results.records["step"].unique())
    assert steps[:3] == [0, 5, 10]
    # every checkpoint but possibly the last torn one is whole: 2 tasks x (3 splits x 3 metrics + 3 optim)
    per_step = results.records.groupby("step").size()
    assert (per_step.iloc[:-1] == 24).all()
    assert pd.api.types.is_float_dtype(results.records["value"])


def test_damage_of_runs_stored_without_a_records_digest(tmp_path: Path) -> None:
    """Runs written before summaries recorded their records: truncation and duplicated rows still show."""
    outcome = execute(validate_config(QUICK), tmp_path)
    summary = json.loads((outcome.path / SUMMARY_FILE).read_text())
    del summary["records"]
    (outcome.path / SUMMARY_FILE).write_text(json.dumps(summary))
    assert damage(outcome.path) is None
    records = outcome.path / RECORDS_FILE
    whole = records.read_text()
    lines = whole.splitlines(keepends=True)
    records.write_text("".join(lines[:-40]))
    assert re.fullmatch(r"records\.csv truncated: last step \d+ of \d+", str(damage(outcome.path)))
    records.write_text(whole + "".join(lines[1:11]))
    assert damage(outcome.path) == "records.csv has 10 duplicated rows"
    records.write_text(whole[:-5])
    assert damage(outcome.path) == "records.csv ends in an incomplete line"
    records.unlink()
    assert damage(outcome.path) == "records.csv missing"
