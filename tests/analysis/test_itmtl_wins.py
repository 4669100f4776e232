from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from mtlscope.analysis.itmtl import WINS_COLUMNS, candidate_wins, resolve_labels
from mtlscope.runs.results import RunResults, load

COLUMNS = ["run_id", "step", "epoch", "task", "split", "metric", "value"]


def _results(chosen: dict[str, list[int]], configs: dict[str, dict], scores: int = 0) -> RunResults:
    """IT-MTL runs with ``chosen_candidate`` step records at steps 0, 1, ... (plus an umtg run that is ignored)."""
    runs, records = [], []
    for seed, (run_id, indices) in enumerate(chosen.items()):
        runs.append({"run_id": run_id, "status": "completed", "method": "it_mtl", "tasks": "a+b", "seed": seed})
        runs[-1]["config"] = configs.get(run_id, {})
        for step, index in enumerate(indices):
            records.append((run_id, step, 0.0, "*", "step", "chosen_candidate", float(index)))
            records.append((run_id, step, 0.0, "*", "step", "chosen_score", 0.1))
            records += [(run_id, step, 0.0, "*", "step", f"score_{i}", 0.0) for i in range(scores)]
            records.append((run_id, step, 0.0, "a|b", "step", "cosine", 0.5))
    runs.append({"run_id": "plain", "status": "completed", "method": "umtg", "tasks": "a+b", "seed": 0, "config": {}})
    records.append(("plain", 0, 0.0, "*", "step", "chosen_candidate", 1.0))
    return RunResults(runs=pd.DataFrame(runs), records=pd.DataFrame(records, columns=COLUMNS))


SINGLES_UMTG = {"method": {"name": "it_mtl", "candidates": ["singles", "umtg"]}}


def test_candidate_wins_fractions_and_labels() -> None:
    results = _results({"r0": [0, 2, 2, 1, 2, 2, 0, 2], "r1": [1, 1]}, {"r0": SINGLES_UMTG})
    wins = candidate_wins(results)
    assert list(wins.columns) == list(WINS_COLUMNS)
    r0 = wins[wins["run_id"] == "r0"]
    assert list(r0["label"]) == ["a", "b", "umtg"]
    assert list(r0["wins"]) == [2, 1, 5] and set(r0["steps"]) == {8}
    assert list(r0["fraction"]) == pytest.approx([2 / 8, 1 / 8, 5 / 8])
    assert r0["window_start"].isna().all() and set(r0["seed"]) == {0}
    r1 = wins[wins["run_id"] == "r1"]  # no config: labels fall back, candidates up to the largest index seen
    assert list(r1["label"]) == ["candidate 0", "candidate 1"] and list(r1["fraction"]) == [0.0, 1.0]
    assert "plain" not in set(wins["run_id"])


def test_candidate_wins_windows() -> None:
    results = _results({"r0": [0, 2, 2, 1, 2, 2, 0, 2]}, {"r0": SINGLES_UMTG})
    wins = candidate_wins(results, window=3)
    assert sorted(set(wins["window_start"])) == [0, 3, 6]
    first = wins[wins["window_start"] == 0]
    assert list(first["wins"]) == [1, 0, 2] and set(first["steps"]) == {3}
    last = wins[wins["window_start"] == 6]
    assert list(last["wins"]) == [1, 0, 1] and list(last["fraction"]) == [0.5, 0.0, 0.5]
    assert wins.groupby("candidate")["wins"].sum().tolist() == [2, 1, 5]
    with pytest.raises(ValueError, match="window"):
        candidate_wins(results, window=0)


def test_candidate_wins_label_overrides_and_score_count() -> None:
    results = _results({"r0": [0, 0], "r1": [1, 0]}, {}, scores=3)
    wins = candidate_wins(results, labels={"r0": ["left", "right", "both"]})
    assert list(wins.loc[wins["run_id"] == "r0", "label"]) == ["left", "right", "both"]
    # three score_<i> metrics recorded: three candidates, though candidate 2 never won
    assert list(wins.loc[wins["run_id"] == "r1", "label"]) == ["candidate 0", "candidate 1", "candidate 2"]
    every = candidate_wins(results, labels=["x", "y", "z", "w"])
    assert list(every.loc[every["run_id"] == "r1", "label"]) == ["x", "y", "z", "w"]


def test_resolve_labels() -> None:
    assert resolve_labels(SINGLES_UMTG, ["a", "b"]) == ("a", "b", "umtg")
    pairs = {"method": {"name": "it_mtl", "candidates": ["pairs", "pcgrad", ["a", "c"]]}}
    assert resolve_labels(pairs, ["a", "b", "c"]) == ("a+b", "a+c", "b+c", "pcgrad")
    assert resolve_labels({"method": {"name": "it_mtl"}}, ["a", "b"]) == ("a", "b", "umtg")  # the defaults
    assert resolve_labels({"method": {"name": "it_mtl", "candidates": ["nope"]}}, ["a", "b"]) is None
    assert resolve_labels({"method": {"name": "umtg"}}, ["a", "b"]) is None
    assert resolve_labels(None, ["a"]) is None


def test_candidate_wins_of_a_real_run(tmp_path: Path) -> None:
    from mtlscope.runs import execute, validate_config

    config = {
        "setting": {"name": "digits-mtl", "tasks": ["digits1", "digits2"]},
        "model": {"encoder": {"name": "mlp", "hidden": [8]}},
        "method": {"name": "it_mtl", "candidates": ["singles", "umtg"], "approximation": "first_order"},
        "training": {"steps": 6, "eval_every": 6, "batch_size": 8, "diagnostics_every": 1, "save_state": False},
    }
    outcome = execute(validate_config(config), tmp_path)
    assert outcome.status == "completed", outcome.message
    wins = candidate_wins(load(tmp_path), window=3)
    assert list(wins["label"].iloc[:3]) == ["digits1", "digits2", "umtg"]
    assert list(wins["window_start"].unique()) == [0, 3]
    assert wins.groupby("window_start")["fraction"].sum().tolist() == pytest.approx([1.0, 1.0])
    assert not math.isnan(wins["fraction"].iloc[0])
