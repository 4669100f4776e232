from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mtlscope.analysis.conflict import (
    CORRELATION_COLUMNS,
    Correlation,
    conflict_correlations,
    conflict_table,
    correlation,
)
from mtlscope.runs.results import RunResults

COLUMNS = ["run_id", "step", "epoch", "task", "split", "metric", "value"]
STEPS = 30


def _trajectory(run_id: str, task: str, test: float, probes: dict[str, np.ndarray]) -> list[tuple]:
    """Checkpoints 0..STEPS-1: val rises with the step, test is ``test`` at the 10 best (last 10) checkpoints;
    probe values are recorded where finite."""
    rows: list[tuple] = []
    for step in range(STEPS):
        rows += [
            (run_id, step, float(step), task, "train", "loss", 1.0 / (step + 1)),
            (run_id, step, float(step), task, "val", "accuracy", step / STEPS),
            (run_id, step, float(step), task, "test", "accuracy", test if step >= STEPS - 10 else 0.0),
        ]
        for name, values in probes.items():
            if np.isfinite(values[step]):
                rows.append((run_id, step, float(step), task, "probe", name, float(values[step])))
    return rows


def _results(points: list[dict]) -> RunResults:
    """``points``: dicts with run_id, tasks, seed, status and per-task (test, probes)."""
    runs, records = [], []
    for point in points:
        runs.append(
            {
                "run_id": point["run_id"],
                "status": point.get("status", "completed"),
                "variant": point["tasks"],
                "tasks": point["tasks"],
                "method": "umtg",
                "seed": point["seed"],
            }
        )
        for task, (test, probes) in point["trajectories"].items():
            records += _trajectory(point["run_id"], task, test, probes)
    return RunResults(runs=pd.DataFrame(runs), records=pd.DataFrame(records, columns=COLUMNS))


def _probes(offset: float) -> dict[str, np.ndarray]:
    steps = np.arange(STEPS, dtype=float)
    similarity = np.full(STEPS, np.nan)
    similarity[::5] = 0.1 * offset + steps[::5] / 100  # measured every 5 checkpoints
    fim = np.sin(steps) + offset  # the 20 largest are not the last 20
    return {
        "grad_similarity": similarity,
        "sharpness": steps * offset,
        "fim_trace": fim,
        "grad_cov_trace": steps + offset,
    }


def test_conflict_table_values() -> None:
    points = [
        {"run_id": "ab-0", "tasks": "a+b", "seed": 0, "trajectories": {"a": (0.7, _probes(1.0)), "b": (0.6, {})}},
        {"run_id": "abc-0", "tasks": "a+b+c", "seed": 0, "trajectories": {t: (0.8, _probes(2.0)) for t in "abc"}},
        {"run_id": "a-0", "tasks": "a", "seed": 0, "trajectories": {"a": (0.9, _probes(3.0))}},  # single-task
        {"run_id": "ac-0", "tasks": "a+c", "seed": 0, "status": "failed", "trajectories": {"a": (0.5, _probes(4.0))}},
    ]
    table = conflict_table(_results(points))
    assert list(table.columns) == [
        "run_id",
        "variant",
        "method",
        "tasks",
        "target",
        "auxiliary",
        "seed",
        "similarity",
        "generalization",
        "sharpness",
        "fim_trace",
        "grad_cov_trace",
    ]
    assert list(zip(table["run_id"], table["target"], table["auxiliary"])) == [
        ("ab-0", "a", "b"),
        ("ab-0", "b", "a"),
        ("abc-0", "a", "b+c"),
        ("abc-0", "b", "a+c"),
        ("abc-0", "c", "a+b"),
    ]
    row = table.iloc[0]
    expected = _probes(1.0)
    assert row["similarity"] == pytest.approx(np.nanmean(expected["grad_similarity"]))
    assert row["generalization"] == pytest.approx(0.7)
    assert row["sharpness"] == pytest.approx(np.mean(expected["sharpness"][-20:]))
    assert row["fim_trace"] == pytest.approx(np.mean(np.sort(expected["fim_trace"])[-20:]))
    assert row["fim_trace"] != pytest.approx(np.mean(expected["fim_trace"][-20:]))
    assert row["grad_cov_trace"] == pytest.approx(np.mean(expected["grad_cov_trace"][-20:]))
    other = table.iloc[1]  # task b measured no probes
    assert math.isnan(other["similarity"]) and math.isnan(other["sharpness"])
    assert other["generalization"] == pytest.approx(0.6)
    assert table.iloc[2]["similarity"] == pytest.approx(np.nanmean(_probes(2.0)["grad_similarity"]))


def test_conflict_table_rules_and_errors() -> None:
    points = [{"run_id": "ab-0", "tasks": "a+b", "seed": 0, "trajectories": {"a": (0.7, _probes(1.0))}}]
    results = _results(points)
    probes = _probes(1.0)
    table = conflict_table(
        results, factors=("sharpness", "fim_trace"), rules={"sharpness": "mean", "fim_trace": ("largest", 1)}
    )
    assert table.iloc[0]["sharpness"] == pytest.approx(probes["sharpness"].mean())
    assert table.iloc[0]["fim_trace"] == pytest.approx(probes["fim_trace"].max())
    assert "grad_cov_trace" not in table.columns
    last = conflict_table(results, factors=("grad_cov_trace",), rules={"grad_cov_trace": ("last", 3)})
    assert last.iloc[0]["grad_cov_trace"] == pytest.approx(probes["grad_cov_trace"][-3:].mean())
    with pytest.raises(ValueError, match="rules"):
        conflict_table(results, rules={"sharpness": "median"})
    with pytest.raises(ValueError, match="rules"):
        conflict_table(results, factors=("sharpness",), rules={"fim_trace": "mean"})
    with pytest.raises(ValueError, match="factors"):
        conflict_table(results, factors="sharpness")
    empty = conflict_table(RunResults(results.runs.assign(tasks="a"), results.records))
    assert empty.empty and "similarity" in empty.columns


def test_correlation_matches_scipy_and_polyfit() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=12)
    y = 0.5 * x + rng.normal(scale=0.3, size=12)
    result = correlation(x, y)
    expected = stats.pearsonr(x, y)
    slope, intercept = np.polyfit(x, y, 1)
    assert result.r == pytest.approx(expected[0]) and result.p == pytest.approx(expected[1])
    assert result.slope == pytest.approx(slope) and result.intercept == pytest.approx(intercept)
    assert result.n == 12 and result.reason == ""
    # NaNs are dropped pairwise
    xs, ys = np.append(x, [np.nan, 1.0]), np.append(y, [2.0, np.inf])
    assert correlation(list(xs), pd.Series(ys)) == result


def test_correlation_degenerate_cases() -> None:
    # fewer than 5 points: no r, no p-value, no line (3 points on a line would give r = -1.00, p = 0.0016)
    three = correlation([0.1, 0.2, 0.3, np.nan], [3.0, 2.0, 1.0, 5.0])
    assert three.n == 3 and math.isnan(three.r) and math.isnan(three.p)
    assert math.isnan(three.slope) and math.isnan(three.intercept)
    assert three.reason == "fewer than 5 points: no fit"
    four = correlation([0.0, 1.0, 2.0, 3.0], [1.0, 3.0, 5.0, 8.0])
    assert math.isnan(four.r) and math.isnan(four.p) and "fewer than 5 points" in four.reason
    five = correlation([0.0, 1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 5.0, 7.0, 9.5])
    assert math.isfinite(five.r) and math.isfinite(five.p) and five.slope == pytest.approx(2.1)
    flat = correlation([1.0, 2.0, 3.0, 4.0, 5.0], [4.0, 4.0, 4.0, 4.0, 4.0])
    assert math.isnan(flat.r) and flat.reason == "y is constant" and flat.slope == pytest.approx(0.0)
    vertical = correlation([1.0] * 5, [1.0, 2.0, 3.0, 4.0, 5.0])
    assert vertical.reason == "x is constant" and math.isnan(vertical.slope)
    none = correlation([], [])
    assert none.n == 0 and math.isnan(none.slope)
    with pytest.raises(ValueError, match="same length"):
        correlation([1.0, 2.0], [1.0])


def test_conflict_correlations() -> None:
    rng = np.random.default_rng(1)
    n = 10
    table = pd.DataFrame(
        {
            "run_id": [f"r{i}" for i in range(2 * n)],
            "variant": "v",
            "method": "umtg",
            "tasks": "x",
            "target": ["a"] * n + ["b"] * n,
            "auxiliary": [f"aux{i % 5}" for i in range(2 * n)],
            "seed": [i // 5 for i in range(2 * n)],
            "similarity": rng.uniform(size=2 * n),
            "generalization": rng.uniform(size=2 * n),
            "sharpness": rng.uniform(size=2 * n),
        }
    )
    result = conflict_correlations(table)
    assert list(result.columns) == list(CORRELATION_COLUMNS)
    assert list(zip(result["target"], result["quantity"])) == [
        ("a", "sharpness"),
        ("a", "generalization"),
        ("b", "sharpness"),
        ("b", "generalization"),
    ]
    a = table[table["target"] == "a"]
    expected = correlation(a["similarity"], a["sharpness"])
    assert Correlation(**result.iloc[0].drop(["target", "quantity"]).to_dict()) == expected
    only_b = conflict_correlations(table, target="b", quantities="generalization")
    assert len(only_b) == 1 and only_b.iloc[0]["r"] == pytest.approx(result.iloc[3]["r"])
    averaged = conflict_correlations(table, target="a", average_seeds=True)
    means = a.groupby("auxiliary")[["similarity", "sharpness"]].mean()
    assert averaged.iloc[0]["n"] == 5
    assert averaged.iloc[0]["r"] == pytest.approx(stats.pearsonr(means["similarity"], means["sharpness"])[0])
    with pytest.raises(ValueError, match="target"):
        conflict_correlations(table, target="zzz")
    with pytest.raises(ValueError, match="quantities"):
        conflict_correlations(table, quantities=["nope"])
    with pytest.raises(ValueError, match="table"):
        conflict_correlations(table.drop(columns="similarity"))
