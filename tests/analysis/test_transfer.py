from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mtlscope.analysis.binning import assign_bins, bin_centers, geometric_edges
from mtlscope.analysis.trajectories import generalization
from mtlscope.analysis.transfer import significant, transfer_table
from mtlscope.runs.results import RunResults


def test_significance_rule_on_crafted_intervals() -> None:
    assert significant(0.80, 0.01, 0.85, 0.01)  # [0.78, 0.82] vs [0.83, 0.87]
    assert not significant(0.80, 0.01, 0.83, 0.01)  # [0.78, 0.82] vs [0.81, 0.85] overlap
    assert not significant(0.80, 0.02, 0.879, 0.02)
    assert significant(0.80, 0.0, 0.8001, 0.0)
    assert significant(0.9, 0.01, 0.7, 0.05)  # symmetric in direction


def test_generalization_is_mean_test_of_best_validation_checkpoints() -> None:
    table = pd.DataFrame({"val": np.arange(15, dtype=float), "test": np.arange(15, dtype=float) * 10})
    assert generalization(table, "accuracy", top=10) == pytest.approx(np.mean(np.arange(5, 15) * 10))
    assert generalization(table, "loss", top=3) == pytest.approx(10.0)  # lower is better: vals 0, 1, 2


def _synthetic_results(st: list[float], mt: list[float]) -> RunResults:
    runs, records = [], []
    for variant, tasks, values in (("a", "a", st), ("a+b", "a+b", mt)):
        for seed, value in enumerate(values):
            run_id = f"{variant}-{seed}"
            runs.append({"run_id": run_id, "status": "completed", "variant": variant, "tasks": tasks, "seed": seed})
            for step in range(12):
                for task in tasks.split("+"):
                    # val rises with step, test is constant = value for the 10 best checkpoints
                    test = value if step >= 2 else 0.0
                    records += [
                        (run_id, step, float(step), task, "val", "accuracy", step / 12),
                        (run_id, step, float(step), task, "test", "accuracy", test),
                        (run_id, step, float(step), task, "train", "loss", 1.0 / (step + 1)),
                    ]
    columns = ["run_id", "step", "epoch", "task", "split", "metric", "value"]
    return RunResults(runs=pd.DataFrame(runs), records=pd.DataFrame(records, columns=columns))


def test_transfer_table_values() -> None:
    st, mt = [0.80, 0.81, 0.82], [0.90, 0.91, 0.92]
    table = transfer_table(_synthetic_results(st, mt))
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
    assert len(table) == 1  # only task a has a single-task reference
    row = table.iloc[0]
    assert (row["task"], row["variant"]) == ("a", "a+b")
    assert row["st_mean"] == pytest.approx(0.81) and row["mt_mean"] == pytest.approx(0.91)
    assert row["st_std"] == pytest.approx(np.std(st, ddof=1))
    assert row["delta"] == pytest.approx(0.10)
    assert bool(row["significant"])
    close = transfer_table(_synthetic_results(st, [0.81, 0.83, 0.85])).iloc[0]
    assert not bool(close["significant"])


def test_geometric_bins() -> None:
    edges = geometric_edges(10.0, 0.001, 20)
    assert len(edges) == 21 and edges[0] == pytest.approx(10.0) and edges[-1] == pytest.approx(0.001)
    assert np.allclose(edges[:-1] / edges[1:], edges[0] / edges[1])
    bins = assign_bins(np.array([10.0, 9.0, 0.001, 0.0011, 20.0, 0.0001, np.nan]), edges)
    assert list(bins) == [1, 1, 20, 20, 0, 0, 0]
    middle = np.sqrt(edges[4] * edges[5])
    assert assign_bins(np.array([middle]), edges)[0] == 5
    assert np.allclose(bin_centers(edges)[4], middle)
    with pytest.raises(ValueError, match="high > low"):
        geometric_edges(1.0, 1.0)


def _declared_results(declared: bool) -> RunResults:
    """One run of task ``depth`` whose primary metric ``rel_err`` is lower-is-better and not built in."""
    records = []
    for step in range(6):
        records += [
            ("r", step, float(step), "depth", "val", "rel_err", float(step)),  # best (lowest) at step 0
            ("r", step, float(step), "depth", "test", "rel_err", 10.0 * step),
            ("r", step, float(step), "depth", "val", "accuracy", float(step)),
        ]
    declaration = {
        "depth": {
            "loss": "l1",
            "fisher": "empirical",
            "primary_metric": "rel_err",
            "higher_is_better": {"loss": False, "accuracy": True, "rel_err": False},
        }
    }
    runs = {"run_id": "r", "status": "completed", "variant": "depth", "tasks": "depth", "seed": 0}
    if declared:
        runs["task_declarations"] = declaration  # type: ignore[assignment]
    columns = ["run_id", "step", "epoch", "task", "split", "metric", "value"]
    return RunResults(runs=pd.DataFrame([runs]), records=pd.DataFrame(records, columns=columns))


def test_primary_metric_and_direction_are_the_declared_ones() -> None:
    from mtlscope.analysis.transfer import generalization_by_run, metric_direction, primary_metric

    results = _declared_results(declared=True)
    assert primary_metric(results, "r", "depth") == primary_metric(results, None, "depth") == "rel_err"
    assert metric_direction(results, "r", "depth", "rel_err") is False
    row = generalization_by_run(results, top=2).iloc[0]
    assert (row["metric"], row["generalization"]) == ("rel_err", 5.0)  # test at the two lowest val: 0 and 10
    legacy = _declared_results(declared=False)  # stored before tasks declared their metrics
    assert primary_metric(legacy, "r", "depth") == "accuracy"
    with pytest.raises(ValueError, match="'rel_err' is not built in"):
        metric_direction(legacy, "r", "depth", "rel_err")
