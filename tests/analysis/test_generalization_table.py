from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mtlscope.analysis.transfer import GENERALIZATION_COLUMNS, generalization_table
from mtlscope.report.figures import learning_curve_table
from mtlscope.runs.results import RunResults

COLUMNS = ["run_id", "step", "epoch", "task", "split", "metric", "value"]


def _results(values: dict[tuple[str, str], list[float]]) -> RunResults:
    """Runs per (variant, method) with one generalization value per seed: test = value at every checkpoint."""
    runs, records = [], []
    for (variant, method), per_seed in values.items():
        for seed, value in enumerate(per_seed):
            run_id = f"{variant}-{method}-{seed}"
            runs.append(
                {
                    "run_id": run_id,
                    "status": "completed",
                    "variant": variant,
                    "method": method,
                    "tasks": "a+b",
                    "seed": seed,
                }
            )
            for step in range(4):
                for task, offset in (("a", 0.0), ("b", 0.1)):
                    records += [
                        (run_id, step, float(step), task, "val", "accuracy", step / 4),
                        (run_id, step, float(step), task, "test", "accuracy", value + offset),
                        (run_id, step, float(step), task, "train", "loss", (1 + seed) / (step + 1)),
                    ]
    return RunResults(runs=pd.DataFrame(runs), records=pd.DataFrame(records, columns=COLUMNS))


def test_generalization_table_mean_std_and_standard_error() -> None:
    results = _results({("MTL", "umtg"): [0.5, 0.6, 0.7], ("IT-MTL", "it_mtl"): [0.8, 0.8]})
    table = generalization_table(results, by=("variant", "method"))
    assert list(table.columns) == ["variant", "method", *GENERALIZATION_COLUMNS]
    assert list(zip(table["variant"], table["task"])) == [("MTL", "a"), ("MTL", "b"), ("IT-MTL", "a"), ("IT-MTL", "b")]
    mtl_a = table.iloc[0]
    assert mtl_a["mean"] == pytest.approx(0.6)
    assert mtl_a["std"] == pytest.approx(0.1)
    assert mtl_a["sem"] == pytest.approx(0.1 / np.sqrt(3))
    assert mtl_a["n"] == 3 and mtl_a["method"] == "umtg"
    assert table.iloc[1]["mean"] == pytest.approx(0.7)  # task b is offset by 0.1
    assert table.iloc[2]["std"] == pytest.approx(0.0) and table.iloc[2]["sem"] == pytest.approx(0.0)


def test_generalization_table_one_run_has_no_spread_and_bad_column_is_named() -> None:
    table = generalization_table(_results({("MTL", "umtg"): [0.5]}))
    assert table["n"].tolist() == [1, 1] and table["std"].isna().all() and table["sem"].isna().all()
    with pytest.raises(ValueError, match="'lr' is not a column"):
        generalization_table(_results({("MTL", "umtg"): [0.5]}), by=("lr",))


def test_learning_curve_table_averages_tasks_then_seeds() -> None:
    results = _results({("C=1", "umtg"): [0.5, 0.7]})
    table = learning_curve_table(results)
    loss = table[table["panel"] == "train_loss"].set_index("epoch")
    # per run: both tasks have loss (1 + seed) / (step + 1); seeds 0 and 1 -> 1/(s+1) and 2/(s+1)
    for step in range(4):
        assert loss.loc[float(step), "mean"] == pytest.approx(1.5 / (step + 1))
        assert loss.loc[float(step), "std"] == pytest.approx(np.std([1, 2], ddof=1) / (step + 1))
        assert loss.loc[float(step), "seeds"] == 2
    val = table[table["panel"] == "val"].set_index("epoch")
    assert val.loc[2.0, "mean"] == pytest.approx(0.5)
    one_task = learning_curve_table(results, task="b")
    assert len(one_task) == len(table)
    with pytest.raises(ValueError, match="no completed runs training c"):
        learning_curve_table(results, task="c")
