from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from mtlscope.analysis.factors import (
    AGGREGATIONS,
    FACTOR_COLUMNS,
    FACTOR_TRANSFER_COLUMNS,
    METHOD_CHANGE_COLUMNS,
    aggregate,
    check_rule,
    factor_transfer_table,
    factor_values,
    method_changes,
)
from mtlscope.analysis.transfer import transfer_table
from mtlscope.runs.results import RunResults

RECORD_COLUMNS = ["run_id", "step", "epoch", "task", "split", "metric", "value"]
STEPS = 25


def build(runs: list[tuple[str, str, str, int, dict[str, dict[str, float]]]]) -> RunResults:
    """Runs ``(variant, tasks, method, seed, {task: {factor: value}})`` whose factors are constant over the
    trajectory (``generalization`` = the test metric at every checkpoint), so each single value is known."""
    rows, records = [], []
    for variant, tasks, method, seed, values in runs:
        run_id = f"{variant}-{seed}"
        rows.append(
            {
                "run_id": run_id,
                "status": "completed",
                "variant": variant,
                "tasks": tasks,
                "method": method,
                "seed": seed,
            }
        )
        for task, factors in values.items():
            for step in range(STEPS):
                records += [
                    (run_id, step, float(step), task, "train", "loss", 1.0 / (step + 1)),
                    (run_id, step, float(step), task, "val", "accuracy", step / STEPS),
                    (run_id, step, float(step), task, "test", "accuracy", factors["generalization"]),
                ]
                records += [
                    (run_id, step, float(step), task, "probe", name, value)
                    for name, value in factors.items()
                    if name != "generalization"
                ]
    return RunResults(pd.DataFrame(rows), pd.DataFrame(records, columns=RECORD_COLUMNS))


def test_rules_of_the_paper() -> None:
    assert AGGREGATIONS["generalization"] == ("best_val", 10)
    assert AGGREGATIONS["sharpness"] == ("last", 20) and AGGREGATIONS["grad_cov_trace"] == ("last", 20)
    assert AGGREGATIONS["fim_trace"] == ("largest", 20)
    assert AGGREGATIONS["grad_similarity"] == ("mean", None)


def test_aggregate_rules_on_crafted_series() -> None:
    values = pd.Series(np.arange(30, dtype=float))
    assert aggregate(values, ("last", 20)) == pytest.approx(np.mean(np.arange(10, 30)))
    sparse = pd.Series([v if v % 2 == 0 else np.nan for v in range(60)], dtype=float)  # measured every other
    assert aggregate(sparse, ("last", 20)) == pytest.approx(np.mean(np.arange(20, 60, 2)))
    shuffled = pd.Series(np.random.default_rng(0).permutation(30).astype(float))
    assert aggregate(shuffled, ("largest", 20)) == pytest.approx(np.mean(np.arange(10, 30)))
    assert aggregate(shuffled, ("smallest", 1)) == 0.0
    assert aggregate(shuffled, "mean") == pytest.approx(14.5)
    assert aggregate(pd.Series([1.0, 3.0]), ("last", 20)) == 2.0  # fewer than n: all of them
    assert math.isnan(aggregate(pd.Series([np.nan, np.nan]), ("largest", 20)))


def test_aggregate_best_val_takes_the_earlier_of_tied_checkpoints() -> None:
    frame = pd.DataFrame({"val": [0.5] * 12 + [0.1] * 3, "test": np.arange(15, dtype=float)})
    assert aggregate(frame, ("best_val", 10)) == pytest.approx(4.5)  # checkpoints 0-9 of the 12 tied best
    assert aggregate(frame, ("best_val", 3), metric="loss") == pytest.approx(13.0)  # lower is better: 12-14


def test_aggregate_errors() -> None:
    with pytest.raises(ValueError, match="rule: unknown rule kind 'median'"):
        aggregate(pd.Series([1.0]), ("median", 3))
    with pytest.raises(ValueError, match="rule: rule 'last' needs a positive integer count"):
        aggregate(pd.Series([1.0]), ("last", 0))
    with pytest.raises(ValueError, match="rule: rule 'mean' takes no count"):
        check_rule(("mean", 3))
    with pytest.raises(ValueError, match="values: rule 'best_val' needs a DataFrame"):
        aggregate(pd.Series([1.0]), ("best_val", 10))
    with pytest.raises(ValueError, match="values: rule 'last' needs a Series"):
        aggregate(pd.DataFrame({"val": [1.0], "test": [1.0]}), ("last", 10))


def _transfer_results() -> RunResults:
    runs = []
    for seed, (st, mt, pc) in enumerate(zip([0.80, 0.81, 0.82], [0.90, 0.91, 0.92], [0.92, 0.93, 0.94])):
        sharp_st, sharp_mt = 1.0 + 0.1 * seed, 1.05 + 0.1 * seed  # overlapping intervals: not significant
        runs.append(("a", "a", "umtg", seed, {"a": {"generalization": st, "sharpness": sharp_st}}))
        runs.append(("b", "b", "umtg", seed, {"b": {"generalization": 0.5, "sharpness": 2.0}}))
        both = {"a": {"generalization": mt, "sharpness": sharp_mt}, "b": {"generalization": 0.5, "sharpness": 2.0}}
        runs.append(("a+b", "a+b", "umtg", seed, both))
        runs.append(("a+b:pcgrad", "a+b", "pcgrad", seed, {**both, "a": {"generalization": pc, "sharpness": 3.0}}))
    return build(runs)


def test_factor_values_shape_and_rules() -> None:
    results = _transfer_results()
    frame = factor_values(results)
    assert list(frame.columns) == list(FACTOR_COLUMNS)
    assert len(frame) == 12 * 2 + 6 * 2  # 12 two-task and 6 one-task runs, each task x 2 recorded factors
    assert list(frame["factor"].unique()) == ["generalization", "sharpness"]  # only those recorded
    row = frame[(frame["run_id"] == "a+b:pcgrad-1") & (frame["task"] == "a")].set_index("factor")["value"]
    assert row["generalization"] == pytest.approx(0.93) and row["sharpness"] == 3.0
    assert set(frame.loc[frame["run_id"] == "a+b:pcgrad-1", "method"]) == {"pcgrad"}
    only = factor_values(results, ["sharpness"], rules={"sharpness": ("largest", 3)})
    assert list(only["factor"].unique()) == ["sharpness"] and len(only) == 18
    killed = RunResults(results.runs.assign(status=["killed"] + ["completed"] * 11), results.records)
    assert len(factor_values(killed)) == len(frame) - 2
    with pytest.raises(ValueError, match="factors: 'fim_trace' is not recorded; recorded probe values: sharpness"):
        factor_values(results, ["fim_trace"])
    with pytest.raises(ValueError, match=r"rules\['sharpness'\]: unknown rule kind 'median'"):
        factor_values(results, rules={"sharpness": ("median", 5)})


def test_factor_transfer_table_deltas_and_significance() -> None:
    table = factor_transfer_table(_transfer_results())
    assert list(table.columns) == list(FACTOR_TRANSFER_COLUMNS)
    rows = table.set_index(["task", "variant", "factor"])
    assert len(rows) == 8  # tasks a, b x variants a+b, a+b:pcgrad x 2 factors
    general = rows.loc[("a", "a+b", "generalization")]
    assert general["st_mean"] == pytest.approx(0.81) and general["mt_mean"] == pytest.approx(0.91)
    assert general["st_std"] == pytest.approx(0.01) and general["delta"] == pytest.approx(0.10)
    assert bool(general["significant"]) and general["reference"] == "single-task"
    sharp = rows.loc[("a", "a+b", "sharpness")]  # [1.1 +- 0.2] vs [1.15 +- 0.2] overlap
    assert sharp["delta"] == pytest.approx(0.05) and not bool(sharp["significant"])
    assert rows.loc[("b", "a+b", "sharpness"), "delta"] == 0.0
    # the generalization rows are transfer_table's
    transfer = transfer_table(_transfer_results()).set_index(["task", "variant"])
    for (task, variant, factor), row in rows.iterrows():
        if factor == "generalization":
            assert row["delta"] == pytest.approx(transfer.loc[(task, variant), "delta"])


def test_factor_transfer_table_against_a_variant() -> None:
    table = factor_transfer_table(_transfer_results(), ["generalization"], reference="a+b")
    rows = table.set_index(["task", "variant"])
    assert set(rows.index) == {("a", "a"), ("a", "a+b:pcgrad"), ("b", "b"), ("b", "a+b:pcgrad")}
    assert rows.loc[("a", "a"), "st_mean"] == pytest.approx(0.91)  # st_* hold the reference
    assert rows.loc[("a", "a"), "delta"] == pytest.approx(-0.10)
    assert bool(rows.loc[("a", "a"), "significant"])  # [0.79, 0.83] vs [0.89, 0.93]
    assert rows.loc[("a", "a+b:pcgrad"), "delta"] == pytest.approx(0.02)
    assert not bool(rows.loc[("a", "a+b:pcgrad"), "significant"])  # [0.89, 0.93] vs [0.91, 0.95] overlap
    assert set(table["reference"]) == {"a+b"}
    with pytest.raises(ValueError, match="reference: unknown variant 'c'"):
        factor_transfer_table(_transfer_results(), reference="c")


def test_method_changes_percentages() -> None:
    runs = []
    for seed in range(3):
        umtg = {"generalization": 0.80 + 0.02 * seed, "sharpness": 2.0, "grad_similarity": 0.0}
        pcgrad = {"generalization": 0.85 + 0.02 * seed, "sharpness": 1.0, "grad_similarity": 0.5}
        mgda = {"generalization": 0.40, "sharpness": 2.0 + seed, "grad_similarity": 0.0}
        other = {"generalization": 0.5, "sharpness": 1.0, "grad_similarity": 0.1}
        runs.append(("a+b", "a+b", "umtg", seed, {"a": umtg, "b": other}))
        runs.append(("a+b:pcgrad", "a+b", "pcgrad", seed, {"a": pcgrad, "b": other}))
        runs.append(("a+b:mgda", "a+b", "mgda", seed, {"a": mgda, "b": other}))
        runs.append(("a", "a", "umtg", seed, {"a": umtg}))  # no other method with tasks "a": no rows
    table = method_changes(build(runs))
    assert list(table.columns) == list(METHOD_CHANGE_COLUMNS)
    assert len(table) == 2 * 2 * 3  # tasks a, b x methods pcgrad, mgda x 3 factors
    assert set(table["tasks"]) == {"a+b"} and set(table["baseline"]) == {"umtg"}
    rows = table.set_index(["task", "method", "factor"])
    general = rows.loc[("a", "pcgrad", "generalization")]
    assert general["pct_change"] == pytest.approx(100 * 0.05 / 0.82)
    assert not bool(general["significant"])  # |0.05| < 2 * (0.02 + 0.02)
    sharp = rows.loc[("a", "pcgrad", "sharpness")]
    assert sharp["pct_change"] == pytest.approx(-50.0) and bool(sharp["significant"])
    assert rows.loc[("a", "mgda", "generalization"), "pct_change"] == pytest.approx(100 * (0.40 - 0.82) / 0.82)
    assert bool(rows.loc[("a", "mgda", "generalization"), "significant"])
    assert rows.loc[("a", "mgda", "sharpness"), "pct_change"] == pytest.approx(50.0)  # mean 3 vs 2
    assert math.isnan(rows.loc[("a", "pcgrad", "grad_similarity"), "pct_change"])  # baseline mean 0
    assert rows.loc[("b", "mgda", "grad_similarity"), "pct_change"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="baseline: no completed runs with method 'famo'"):
        method_changes(build(runs), baseline="famo")


def test_method_changes_keeps_variants_of_one_method_apart() -> None:
    runs = []
    for seed in range(3):
        umtg = {"generalization": 0.80 + 0.01 * seed, "sharpness": 2.0}
        mild = {"generalization": 0.90 + 0.01 * seed, "sharpness": 1.0}  # pcgrad, one option value
        strong = {"generalization": 0.60 + 0.01 * seed, "sharpness": 4.0}  # pcgrad, another
        runs.append(("MTL", "a+b", "umtg", seed, {"a": umtg}))
        runs.append(("PCGrad-mild", "a+b", "pcgrad", seed, {"a": mild}))
        runs.append(("PCGrad-strong", "a+b", "pcgrad", seed, {"a": strong}))
    table = method_changes(build(runs))
    general = table[table["factor"] == "generalization"].set_index("variant")
    assert set(general.index) == {"PCGrad-mild", "PCGrad-strong"}
    assert set(general["method"]) == {"pcgrad"}
    assert general.loc["PCGrad-mild", "mean"] == pytest.approx(0.91)  # not the mean of both variants (0.76)
    assert general.loc["PCGrad-strong", "mean"] == pytest.approx(0.61)
    sharp = table[table["factor"] == "sharpness"].set_index("variant")["pct_change"]
    assert sharp["PCGrad-mild"] == pytest.approx(-50.0) and sharp["PCGrad-strong"] == pytest.approx(100.0)
