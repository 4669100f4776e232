"""The papers' protocol: hyperparameter selection on validation per variant, then seeds with the chosen values."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from mtlscope.analysis.transfer import transfer_table
from mtlscope.cli import main
from mtlscope.runs import ConfigError, load
from mtlscope.runs.store import RECORDS_FILE
from mtlscope.sweeps import read_manifest
from mtlscope.sweeps.protocol import (
    load_final,
    load_protocol,
    run_protocol,
    score_selection,
    select_best,
    validation_score,
)

BASE = {
    "setting": {"name": "digits-mtl", "tasks": ["digits1"]},
    "model": {"encoder": {"name": "mlp", "hidden": [16, 8]}},
    "training": {"steps": 12, "eval_every": 4, "batch_size": 16},
}
PROTOCOL_FILE: dict[str, Any] = {
    "name": "tiny-protocol",
    "base": BASE,
    "zip": {"setting.tasks": [["digits1"], ["digits1", "digits2"]]},
    "protocol": {"select": {"optimizer.lr": [0.001, 0.01]}, "seeds": 2},
}


def write(tmp_path: Path, data: dict[str, Any], name: str = "protocol.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


# -- select_best and the score --------------------------------------------------------------------------------


def test_select_best_ties_diverged_and_variants_without_a_run() -> None:
    scores = pd.DataFrame(
        [
            ("A", 0.001, 0.8, "completed"),
            ("A", 0.01, 0.95, "diverged"),  # the highest score, but diverged: excluded
            ("A", 0.1, 0.8, "completed"),  # a tie with the first: the first in grid order wins
            ("B", 0.001, 0.9, "diverged"),
            ("B", 0.01, math.nan, "failed"),
            ("C", 0.001, math.nan, "completed"),  # no validation score: excluded
            ("C", 0.01, 0.5, "completed"),
        ],
        columns=["variant", "optimizer.lr", "score", "status"],
    )
    table = select_best(scores, ["optimizer.lr"])
    assert table["chosen"].tolist() == [True, False, False, False, False, False, True]
    assert table.drop(columns="chosen").equals(scores)  # the input, unchanged, in its order
    assert set(table.loc[table["chosen"], "variant"]) == {"A", "C"}  # B: every run excluded, nothing chosen
    with pytest.raises(ValueError, match=r"lack the columns training\.batch_size"):
        select_best(scores, ["training.batch_size"])


def test_validation_score_best_checkpoints_and_directions() -> None:
    rows = [("r", step, "a", "val", "accuracy", value) for step, value in enumerate([0.1, 0.5, 0.3, 0.2])]
    rows += [("r", step, "b", "val", "mae", value) for step, value in enumerate([4.0, 2.0, 3.0, 1.0])]
    records = pd.DataFrame(rows, columns=["run_id", "step", "task", "split", "metric", "value"])
    records["epoch"] = 0
    assert validation_score(records, "r", {"a": "accuracy"}) == pytest.approx(0.275)  # 4 checkpoints < 10
    assert validation_score(records, "r", {"a": "accuracy"}, "best_val") == pytest.approx(0.5)
    assert validation_score(records, "r", {"a": "accuracy"}, "last_val") == pytest.approx(0.2)
    assert validation_score(records, "r", {"a": "accuracy", "b": "mae"}, "best_val") == pytest.approx((0.5 - 1) / 2)
    assert math.isnan(validation_score(records, "r", {"c": "accuracy"}))


# -- the protocol mapping -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("protocol", "extra", "message"),
    [
        ([1], {}, "protocol: expected a mapping"),
        ({"select": {"optimizer.lr": [0.1]}, "sed": 1}, {}, "protocol.sed: unknown key"),
        ({}, {}, "protocol.select: expected a non-empty mapping"),
        ({"select": {"optimizer.lr": 0.1}}, {}, "protocol.select.optimizer.lr: expected a non-empty list"),
        ({"select": {"seed": [0, 1]}}, {}, "protocol.select.seed: the seeds are"),
        ({"select": {"setting.tasks": [["digits1"]]}}, {}, "protocol.select.setting.tasks: also set by zip"),
        ({"select": {"method": ["pcgrad"]}}, {"grid": {"method.name": ["umtg"]}}, "also set by grid.method.name"),
        ({"select": {"optimizer.lr": [0.1], "optimizer": [{}]}}, {}, "lr: overlaps protocol.select.optimizer"),
        ({"select": {"optimizer.lr": [0.1]}, "selection_seed": -1}, {}, "protocol.selection_seed: expected an int"),
        ({"select": {"optimizer.lr": [0.1]}, "seeds": [1, 1]}, {}, "protocol.seeds: expected a positive count"),
        ({"select": {"optimizer.lr": [0.1]}, "seeds": 2}, {"seeds": 3}, "protocol.seeds: the sweep file has seeds"),
        ({"select": {"optimizer.lr": [0.1]}, "metric": "test"}, {}, "protocol.metric: expected one of val"),
        ({"select": {"optimizer.lr": [0.1]}}, {"zip": {"training.steps": [12, 24]}}, "must train for equal steps"),
    ],
)
def test_bad_protocol_is_one_line_naming_the_key(
    tmp_path: Path, protocol: Any, extra: dict[str, Any], message: str
) -> None:
    path = write(tmp_path, {**PROTOCOL_FILE, **extra, "protocol": protocol})
    with pytest.raises(ConfigError, match=message) as error:
        load_protocol(path)
    assert str(error.value).startswith(str(path)) and "\n" not in str(error.value)


def test_cli_rejects_a_bad_protocol_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, {**PROTOCOL_FILE, "protocol": {"select": {"optimizer.lr": [0.1]}, "metric": 3}})
    assert main(["sweep", str(path), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert "protocol.metric: expected one of" in error and error.count("\n") == 1
    assert not (tmp_path / "out").exists()
    assert main(["sweep", str(path), "optimizer.lr=0.5", "--out", str(tmp_path / "out")]) == 2
    assert "protocol.select.optimizer.lr: also set by the override optimizer.lr=0.5" in capsys.readouterr().err


def test_variants_their_labels_and_the_selection_stage(tmp_path: Path) -> None:
    data = {**PROTOCOL_FILE, "zip": {}, "grid": {"training.loss_scale": [1, 2]}}  # two variants labelled digits1
    plan = load_protocol(write(tmp_path, data))
    assert len(plan.candidates) == 4 and len(plan.labels) == 2
    assert [c.point for c in plan.candidates] == [0, 1, 0, 1]  # variant by variant, points in grid order
    assert all(label.startswith("digits1@") for label in plan.labels.values())
    assert len(set(plan.labels.values())) == 2
    assert {c.config.seed for c in plan.candidates} == {0}
    assert [c.config.optimizer.lr for c in plan.candidates] == [0.001, 0.01, 0.001, 0.01]


# -- end to end -----------------------------------------------------------------------------------------------


def mean_val_accuracy(records: pd.DataFrame, run_id: str) -> float:
    """The selection score computed independently: the mean over tasks of the mean validation accuracy (every
    checkpoint counts: 12 steps, a checkpoint every 4, fewer than the 10 best)."""
    rows = records[(records["run_id"] == run_id) & (records["split"] == "val") & (records["metric"] == "accuracy")]
    return float(rows.groupby("task")["value"].mean().mean())


def test_protocol_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, PROTOCOL_FILE)
    out = tmp_path / "out"
    result = run_protocol(path, out, progress=False)

    selection = result.selection
    assert list(selection.columns[:5]) == ["variant", "optimizer.lr", "score", "status", "chosen"]
    assert selection["variant"].tolist() == ["digits1", "digits1", "digits1+digits2", "digits1+digits2"]
    assert (selection["status"] == "completed").all() and result.excluded.empty and result.unselected == []
    records = load(out).records
    chosen_lr = {}
    for variant, group in selection.groupby("variant"):
        scores = [mean_val_accuracy(records, run_id) for run_id in group["run_id"]]
        assert group["score"].tolist() == pytest.approx(scores)
        best = scores.index(max(scores))  # ties: the first
        assert group["chosen"].tolist() == [i == best for i in range(len(scores))]
        chosen_lr[variant] = group["optimizer.lr"].iloc[best]

    # the final stage: 2 seeds per variant with the chosen lr; seed 0 is the selection run, not run again
    finals = result.final_configs
    assert [(c.variant, c.seed) for c in finals] == [(v, s) for v in ("digits1", "digits1+digits2") for s in (0, 1)]
    assert all(c.optimizer.lr == chosen_lr[c.variant] for c in finals)
    assert result.final.counts["completed"] == 4 and result.final.skipped == 2
    seed0 = {c.run_id() for c in finals if c.seed == 0}
    assert seed0 == set(selection.loc[selection["chosen"], "run_id"])
    assert [o.skipped for o in result.final.outcomes] == [True, False, True, False]

    assert len(load(out).runs) == 6 and len(read_manifest(out)) == 6  # sweep-status sees both stages
    assert (out / "selection.csv").is_file() and (out / "selection.md").is_file()
    written = pd.read_csv(out / "selection.csv")
    assert written["chosen"].tolist() == selection["chosen"].tolist()
    final = load_final(out)  # the final runs alone, e.g. for the transfer table
    assert sorted(final.runs["run_id"]) == sorted(c.run_id() for c in finals)
    assert set(final.records["run_id"]) == set(final.runs["run_id"])
    assert transfer_table(final)[["task", "variant"]].values.tolist() == [["digits1", "digits1+digits2"]]

    # running the protocol again (through the CLI) does nothing new
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob(f"*/{RECORDS_FILE}")}
    before = (out / "selection.csv").read_text()
    assert main(["sweep", str(path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "selection 4 runs: 4 completed" in printed and "(4 already done)" in printed
    assert "final 4 runs: 4 completed" in printed and "| digits1+digits2 |" in printed
    assert {p: p.stat().st_mtime_ns for p in out.glob(f"*/{RECORDS_FILE}")} == mtimes
    assert (out / "selection.csv").read_text() == before

    assert main(["sweep", str(path), "--out", str(tmp_path / "dry"), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "4 selection runs of 2 variants" in printed and not (tmp_path / "dry").exists()
    assert all(run_id in printed for run_id in selection["run_id"])


def test_a_variant_whose_every_run_diverges_gets_no_final_runs(tmp_path: Path) -> None:
    data = {
        **PROTOCOL_FILE,
        "base": {**BASE, "optimizer": {"name": "sgd"}},
        "zip": {},
        "protocol": {"select": {"optimizer.lr": [1e30]}, "seeds": [0, 1]},
    }
    result = run_protocol(write(tmp_path, data), tmp_path / "out", progress=False)
    assert result.selection["status"].tolist() == ["diverged"] and not result.selection["chosen"].any()
    assert result.unselected == ["digits1"] and result.final_configs == () and result.final.outcomes == []
    assert result.excluded[["stage", "variant", "status"]].values.tolist() == [["selection", "digits1", "diverged"]]
    assert "non-finite" in result.excluded["message"].iloc[0]


def test_a_damaged_selection_run_is_excluded_with_the_file_named_and_repaired_by_a_rerun(tmp_path: Path) -> None:
    path = write(tmp_path, {**PROTOCOL_FILE, "zip": {}})  # digits1 at two learning rates
    out = tmp_path / "out"
    first = run_protocol(path, out, progress=False)
    damaged = str(first.selection["run_id"].iloc[0])
    file = out / damaged / RECORDS_FILE
    lines = file.read_text().splitlines(keepends=True)
    lines[1] = "0,0.0,digits1,val,accuracy,abc\n"
    file.write_text("".join(lines))
    # scored as it stands: excluded, with the file and line named (it was scored from NaN-coerced records)
    scores = score_selection(load_protocol(path), first.selection_result, out).set_index("run_id")
    assert math.isnan(scores.loc[damaged, "score"])
    assert scores.loc[damaged, "message"] == f"{file}, line 2: value: expected a number, got 'abc'"
    # running the protocol again repairs the damaged run (it is run again) and chooses as the first time
    again = run_protocol(path, out, progress=False)
    assert again.selection["chosen"].tolist() == first.selection["chosen"].tolist()
    assert again.selection["score"].tolist() == pytest.approx(first.selection["score"].tolist())
    assert "abc" not in file.read_text()
