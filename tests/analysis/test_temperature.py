from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from mtlscope.analysis.temperature import (
    BASELINE_COLUMNS,
    TEMPERATURE_COLUMNS,
    best_temperatures,
    method_vs_baseline_by_temperature,
    temperature_table,
)
from mtlscope.analysis.transfer import significant
from mtlscope.runs.results import RunResults

COLUMNS = ["run_id", "step", "epoch", "task", "split", "metric", "value"]


def _records(run_id: str, task: str, value: float) -> list[tuple]:
    """Generalization (mean test of the 10 best val checkpoints) equals ``value``; NaN records nothing."""
    if math.isnan(value):
        return [(run_id, 0, 0.0, task, "train", "loss", 1.0)]
    rows = []
    for step in range(12):
        rows += [
            (run_id, step, float(step), task, "val", "accuracy", step / 12),
            (run_id, step, float(step), task, "test", "accuracy", value if step >= 2 else 0.0),
        ]
    return rows


def _results(runs: list[dict]) -> RunResults:
    """``runs``: dicts with tasks, method, loss_scale, lr, batch_size, seed and ``values`` {task: generalization}."""
    rows, records = [], []
    for number, run in enumerate(runs):
        run_id = f"run{number}"
        method = run.get("method", "umtg")
        rows.append(
            {
                "run_id": run_id,
                "status": "completed",
                "variant": run["tasks"] if method == "umtg" else f"{run['tasks']}:{method}",
                "tasks": run["tasks"],
                "method": method,
                "lr": run["lr"],
                "batch_size": run.get("batch_size", 32),
                "temperature": run["lr"] / run.get("batch_size", 32),
                "loss_scale": run.get("loss_scale", 1.0),
                "seed": run["seed"],
            }
        )
        for task, value in run["values"].items():
            records += _records(run_id, task, value)
    return RunResults(runs=pd.DataFrame(rows), records=pd.DataFrame(records, columns=COLUMNS))


LOW, HIGH = 0.001, 0.004  # learning rates; batch size 32
ST = {  # task -> lr -> generalization per seed
    "a": {LOW: [0.80, 0.82, 0.84], HIGH: [0.70, 0.70, 0.70]},
    "b": {LOW: [0.50, 0.52, 0.54], HIGH: [0.60, 0.62, 0.64]},
}
MT = {  # (method, lr) -> per seed {task: generalization}
    ("umtg", LOW): [{"a": 0.70, "b": 0.40}, {"a": 0.72, "b": 0.44}, {"a": 0.74, "b": 0.48}],
    ("umtg", HIGH): [{"a": 0.80, "b": 0.60}, {"a": 0.80, "b": 0.61}, {"a": 0.80, "b": 0.62}],
    ("pcgrad", LOW): [{"a": 0.80, "b": 0.50}, {"a": 0.81, "b": 0.51}, {"a": 0.82, "b": 0.52}],
    ("pcgrad", HIGH): [{"a": 0.80, "b": 0.61}, {"a": 0.81, "b": 0.60}, {"a": 0.79, "b": 0.62}],
}


def _study() -> RunResults:
    runs = []
    for task, by_lr in ST.items():
        for lr, values in by_lr.items():
            runs += [{"tasks": task, "lr": lr, "seed": seed, "values": {task: v}} for seed, v in enumerate(values)]
    for (method, lr), per_seed in MT.items():
        runs += [
            {"tasks": "a+b", "method": method, "lr": lr, "seed": seed, "values": values}
            for seed, values in enumerate(per_seed)
        ]
    return _results(runs)


def _row(table: pd.DataFrame, **where: object) -> pd.Series:
    selected = table
    for column, value in where.items():
        selected = (
            selected[np.isclose(selected[column], value)]
            if isinstance(value, float)
            else selected[selected[column] == value]
        )
    assert len(selected) == 1, selected
    return selected.iloc[0]


def test_temperature_table_means_stds_and_task_average() -> None:
    table = temperature_table(_study())
    assert list(table.columns) == list(TEMPERATURE_COLUMNS)
    low, high = LOW / 32, HIGH / 32
    st = _row(table, variant="a", temperature=low, task="a")
    assert (st["kind"], st["n"], st["metric"]) == ("single", 3, "accuracy")
    assert st["mean"] == pytest.approx(0.82) and st["std"] == pytest.approx(np.std(ST["a"][LOW], ddof=1))
    mt = _row(table, variant="a+b", temperature=low, task="b")
    assert mt["kind"] == "multi" and mt["mean"] == pytest.approx(0.44) and mt["std"] == pytest.approx(0.04)
    # the multi-task average: each run's tasks first, then the seeds
    per_run = [(v["a"] + v["b"]) / 2 for v in MT[("umtg", LOW)]]
    mean = _row(table, variant="a+b", temperature=low, task="mean")
    assert mean["mean"] == pytest.approx(np.mean(per_run)) and mean["std"] == pytest.approx(np.std(per_run, ddof=1))
    assert mean["n"] == 3
    # the single-task average over the multi-task run's tasks, paired by seed
    single = _row(table, variant="single-task", temperature=high, task="mean")
    per_seed = [(x + y) / 2 for x, y in zip(ST["a"][HIGH], ST["b"][HIGH])]
    assert single["tasks"] == "a+b" and single["kind"] == "single" and single["n"] == 3
    assert single["mean"] == pytest.approx(np.mean(per_seed))
    assert single["std"] == pytest.approx(np.std(per_seed, ddof=1))
    # no per-variant "mean" rows for single-task variants; one task row per (variant, T)
    assert not ((table["kind"] == "single") & (table["variant"] != "single-task") & (table["task"] == "mean")).any()
    assert len(table) == 2 * 2 + 2 * 2 * 3 + 2  # ST task rows + MT (2 tasks + mean) + ST averages


def test_temperature_table_groups_equal_temperatures_and_nan_tasks() -> None:
    runs = [
        {"tasks": "a+b", "lr": 0.001, "batch_size": 32, "seed": 0, "values": {"a": 0.6, "b": 0.4}},
        {"tasks": "a+b", "lr": 0.002, "batch_size": 64, "seed": 1, "values": {"a": 0.8, "b": float("nan")}},
        {"tasks": "a+b", "lr": 0.001, "batch_size": 32, "seed": 2, "loss_scale": 2.0, "values": {"a": 0.5, "b": 0.5}},
    ]
    table = temperature_table(_results(runs))
    a = _row(table, task="a", loss_scale=1.0)
    assert a["n"] == 2 and a["mean"] == pytest.approx(0.7)  # 0.001/32 and 0.002/64 are one temperature
    b = _row(table, task="b", loss_scale=1.0)
    assert b["n"] == 1 and b["mean"] == pytest.approx(0.4) and b["std"] == 0.0
    mean = _row(table, task="mean", loss_scale=1.0)
    assert mean["n"] == 1 and mean["mean"] == pytest.approx(0.5)  # the run with a NaN task has no average
    assert _row(table, task="mean", loss_scale=2.0)["mean"] == pytest.approx(0.5)


def test_best_temperatures_and_ties() -> None:
    best = best_temperatures(temperature_table(_study()))
    assert _row(best, variant="a", task="a")["temperature"] == pytest.approx(LOW / 32)
    assert _row(best, variant="b", task="b")["temperature"] == pytest.approx(HIGH / 32)
    row = _row(best, variant="a+b", task="mean")
    assert row["temperature"] == pytest.approx(HIGH / 32) and row["mean"] == pytest.approx(0.705)
    base = {"variant": "v", "kind": "multi", "tasks": "a+b", "method": "umtg", "loss_scale": 1.0, "std": 0.0, "n": 1}
    tied = pd.DataFrame(
        [
            {**base, "temperature": 3e-4, "task": "a", "metric": "accuracy", "mean": 0.9},
            {**base, "temperature": 1e-4, "task": "a", "metric": "accuracy", "mean": 0.9},
            {**base, "temperature": 2e-4, "task": "a", "metric": "accuracy", "mean": 0.8},
            {**base, "temperature": 5e-4, "task": "a", "metric": "accuracy", "mean": float("nan")},
            {**base, "temperature": 1e-4, "task": "l", "metric": "loss", "mean": 0.3},
            {**base, "temperature": 2e-4, "task": "l", "metric": "loss", "mean": 0.2},
            {**base, "temperature": 3e-4, "task": "l", "metric": "loss", "mean": 0.2},
            {**base, "temperature": 1e-4, "task": "z", "metric": "accuracy", "mean": float("nan")},
        ]
    )
    best = best_temperatures(tied)
    assert list(best["task"]) == ["a", "l"]  # task z has no finite mean
    assert list(best["temperature"]) == [1e-4, 2e-4]  # ties: the lower temperature; loss: lower is better
    with pytest.raises(ValueError, match="table"):
        best_temperatures(tied.drop(columns="kind"))


def test_method_vs_baseline_by_temperature() -> None:
    table = temperature_table(_study())
    result = method_vs_baseline_by_temperature(table)
    assert list(result.columns) == list(BASELINE_COLUMNS)
    assert set(result["method"]) == {"pcgrad"} and len(result) == 2 * 3  # 2 temperatures x (a, b, mean)
    low = _row(result, task="a", temperature=LOW / 32)
    assert low["difference"] == pytest.approx(0.81 - 0.72)
    assert low["baseline_variant"] == "a+b" and low["variant"] == "a+b:pcgrad"
    assert bool(low["significant"]) == significant(0.81, 0.01, 0.72, 0.02) and bool(low["significant"])
    high = _row(result, task="a", temperature=HIGH / 32)
    assert high["difference"] == pytest.approx(0.0) and not bool(high["significant"])
    mean = _row(result, task="mean", temperature=LOW / 32)
    assert mean["difference"] == pytest.approx(np.mean([0.65, 0.66, 0.67]) - np.mean([0.55, 0.58, 0.61]))
    reverse = method_vs_baseline_by_temperature(table, baseline="pcgrad")
    assert _row(reverse, task="a", temperature=LOW / 32)["difference"] == pytest.approx(0.72 - 0.81)
    with pytest.raises(ValueError, match="baseline"):
        method_vs_baseline_by_temperature(table, baseline="mgda")
