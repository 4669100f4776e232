"""Evaluating trained groupings (Fifty et al. Fig. 4): which group serves a task, the per-budget totals against
hand-computed values, the baselines, and the errors."""

from __future__ import annotations

import pandas as pd
import pytest

from mtlscope.analysis.grouping_evaluation import (
    BudgetGrouping,
    budget_groupings,
    evaluate_groupings,
    reference_rows,
    run_task_values,
)
from mtlscope.runs.results import RunResults

# (group, seed, task) -> (val, test): tasks a, b, c; b is in both groups of the 2-split grouping
VALUES = {
    ("a+b", 0, "a"): (0.50, 0.55),
    ("a+b", 0, "b"): (0.40, 0.42),
    ("a+b", 1, "a"): (0.52, 0.57),
    ("a+b", 1, "b"): (0.44, 0.46),
    ("b+c", 0, "b"): (0.30, 0.35),
    ("b+c", 0, "c"): (0.70, 0.71),
    ("b+c", 1, "b"): (0.32, 0.33),
    ("b+c", 1, "c"): (0.72, 0.75),
    ("a", 0, "a"): (0.45, 0.47),
    ("a", 1, "a"): (0.47, 0.49),
    ("b", 0, "b"): (0.35, 0.36),
    ("b", 1, "b"): (0.37, 0.38),
    ("c", 0, "c"): (0.60, 0.62),
    ("c", 1, "c"): (0.64, 0.66),
}


def _values(entries: dict[tuple[str, int, str], tuple[float, float]] = VALUES) -> pd.DataFrame:
    rows = [
        {"run_id": f"{group}-s{seed}", "group": group, "seed": seed, "task": task, "val": val, "test": test}
        for (group, seed, task), (val, test) in entries.items()
    ]
    return pd.DataFrame(rows)


TWO = BudgetGrouping(2, (("a", "b"), ("b", "c")), {"a": ("a", "b"), "b": ("a", "b"), "c": ("b", "c")})


def test_a_task_in_several_groups_is_served_by_its_best_validation_group_and_totals_match_hand_values() -> None:
    table, served = evaluate_groupings(_values(), [TWO], higher_is_better=False)
    measured = table[table["grouping"] == "grouping"].iloc[0]
    # b: mean validation loss 0.42 in {a, b}, 0.31 in {b, c} -> served by {b, c}
    assert served.set_index(["grouping", "task"]).loc[("grouping", "b"), "served_by"] == "{b, c}"
    seed0 = 0.55 + 0.35 + 0.71  # a from {a, b}, b and c from {b, c}
    seed1 = 0.57 + 0.33 + 0.75
    assert measured["value"] == pytest.approx((seed0 + seed1) / 2)
    assert measured["std"] == pytest.approx(pd.Series([seed0, seed1]).std(ddof=1))
    assert measured["seeds"] == 2 and measured["splits"] == 2 and measured["groups"] == "{a, b} {b, c}"
    b_row = served[(served["grouping"] == "grouping") & (served["task"] == "b")].iloc[0]
    assert (b_row["val"], b_row["test"]) == (pytest.approx(0.31), pytest.approx(0.34))
    # the baselines, found in the runs: every task alone (3 splits) and all tasks together (absent here)
    single = table[table["grouping"] == "single-task"].iloc[0]
    assert single["splits"] == 3 and single["value"] == pytest.approx((0.47 + 0.36 + 0.62 + 0.49 + 0.38 + 0.66) / 2)
    assert "all tasks" not in set(table["grouping"])


def test_the_grouping_rule_the_mean_aggregate_and_a_higher_is_better_metric() -> None:
    table, served = evaluate_groupings(_values(), [TWO], higher_is_better=False, serve="grouping", aggregate="mean")
    measured = table.iloc[0]
    # b served by {a, b}, as the selection assigned it, whatever its validation loss
    assert served.set_index("task").loc["b", "served_by"].iloc[0] == "{a, b}"
    seed0, seed1 = (0.55 + 0.42 + 0.71) / 3, (0.57 + 0.46 + 0.75) / 3
    assert measured["value"] == pytest.approx((seed0 + seed1) / 2)
    # read as accuracies (higher is better), b's best validation group is {a, b}
    _, served = evaluate_groupings(_values(), [TWO], higher_is_better=True)
    assert served.set_index("task").loc["b", "served_by"].iloc[0] == "{a, b}"


def test_ties_go_to_the_first_group_and_all_tasks_is_a_baseline() -> None:
    entries = {key: value for key, value in VALUES.items() if key[0] != "b+c"}
    entries |= {
        ("b+c", seed, task): VALUES[("a+b", seed, "b")] if task == "b" else (0.7, 0.7)
        for seed in (0, 1)
        for task in "bc"
    }
    entries |= {("a+b+c", seed, task): (0.9, 1.0 + seed) for seed in (0, 1) for task in "abc"}
    table, served = evaluate_groupings(_values(entries), [TWO], higher_is_better=False)
    assert served.set_index("task").loc["b", "served_by"].iloc[0] == "{a, b}"  # equal validation: the first group
    everything = table[table["grouping"] == "all tasks"].iloc[0]
    assert everything["splits"] == 1 and everything["value"] == pytest.approx((3.0 + 6.0) / 2)


def test_seeds_not_shared_by_the_serving_groups_are_left_out() -> None:
    entries = dict(VALUES) | {("b+c", 2, "b"): (0.1, 5.0), ("b+c", 2, "c"): (0.1, 5.0)}
    table, _ = evaluate_groupings(_values(entries), [TWO], higher_is_better=False)
    assert table.iloc[0]["seeds"] == 2  # seed 2 has no {a, b} run: not in the total


def test_groupings_that_the_runs_cannot_evaluate_are_one_line_errors() -> None:
    without = _values({key: value for key, value in VALUES.items() if key[0] != "b+c"})
    with pytest.raises(ValueError, match=r"group \{b, c\}: no completed run with validation and test 'b'"):
        evaluate_groupings(without, [TWO], higher_is_better=False)
    uncovered = [TWO, BudgetGrouping(3, (("a",), ("b",)))]  # c is a task of the 2-split grouping, of no group here
    with pytest.raises(ValueError, match="3-split grouping: no group contains task 'c'"):
        evaluate_groupings(_values(), uncovered, higher_is_better=False)
    unassigned = BudgetGrouping(2, TWO.groups)
    with pytest.raises(ValueError, match="task 'b' is in several groups and the grouping does not say"):
        evaluate_groupings(_values(), [unassigned], higher_is_better=False, serve="grouping")
    with pytest.raises(ValueError, match="serve: expected one of validation, grouping"):
        evaluate_groupings(_values(), [TWO], higher_is_better=False, serve="test")


def test_two_runs_of_one_group_and_seed_are_refused() -> None:
    values = pd.concat([_values(), _values({("a+b", 0, "a"): (0.1, 0.1)}).assign(run_id="other")])
    with pytest.raises(ValueError, match=r"group \{a, b\} has several runs with seed 0 \(a\+b-s0, other\)"):
        evaluate_groupings(values, [TWO], higher_is_better=False)


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([], "expected a non-empty list"),
        ([{"splits": 0, "groups": [["a"]]}], r"groupings\[0\]\.splits: expected an integer >= 1"),
        ([{"splits": 1, "groups": [["a"], ["b"]]}], "2 groups for a budget of 1 splits"),
        ([{"splits": 2, "groups": [["a", "a"]]}], "expected distinct task names"),
        ([{"splits": 2, "groups": [["a"]]}, {"splits": 2, "groups": [["a"]]}], "budget 2 is given twice"),
        ([{"splits": 2, "groups": [["a"]], "served_by": {"a": ["b"]}}], r"served_by\.a: \{b\} is not"),
        ([{"splits": 2, "groups": [["a"]], "colour": 1}], r"groupings\[0\]\.colour: unknown key"),
    ],
)
def test_malformed_groupings_name_the_entry_and_field(entries: list[dict[str, object]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        budget_groupings(entries)


def test_run_task_values_take_the_test_value_at_the_best_validation_checkpoint() -> None:
    runs = pd.DataFrame(
        [
            {"run_id": "r", "status": "completed", "tasks": "a+b", "seed": 3, "task_declarations": {}},
            {"run_id": "x", "status": "failed", "tasks": "a", "seed": 0, "task_declarations": {}},
        ]
    )
    rows = []
    for step, (val_a, test_a) in enumerate([(0.9, 0.8), (0.4, 0.45), (0.6, 0.1)]):
        for task, val, test in (("a", val_a, test_a), ("b", 1.0 - step * 0.1, 2.0 + step)):
            rows += [
                {
                    "run_id": "r",
                    "step": step,
                    "epoch": step,
                    "task": task,
                    "split": "val",
                    "metric": "loss",
                    "value": val,
                },
                {
                    "run_id": "r",
                    "step": step,
                    "epoch": step,
                    "task": task,
                    "split": "test",
                    "metric": "loss",
                    "value": test,
                },
            ]
    rows.append({"run_id": "x", "step": 0, "epoch": 0, "task": "a", "split": "val", "metric": "loss", "value": 0.0})
    values = run_task_values(RunResults(runs, pd.DataFrame(rows)), "loss").set_index("task")
    assert list(values["run_id"]) == ["r", "r"]  # the failed run does not count
    assert values.loc["a", "val"] == 0.4 and values.loc["a", "test"] == 0.45  # lowest validation loss: step 1
    assert values.loc["b", "test"] == 4.0 and values.loc["a", "group"] == "a+b" and values.loc["a", "seed"] == 3
    two = run_task_values(RunResults(runs, pd.DataFrame(rows)), "loss", top=2).set_index("task")
    assert two.loc["a", "test"] == pytest.approx((0.45 + 0.1) / 2)


def test_reference_rows_keep_the_budgets_evaluated() -> None:
    rows = reference_rows({"HOA": {2: 0.54, 3: 0.49, 4: 0.48}, "Human": {2: 0.55}}, [2, 3])
    assert rows.to_dict("records") == [
        {"grouping": "HOA", "splits": 2, "value": 0.54},
        {"grouping": "HOA", "splits": 3, "value": 0.49},
        {"grouping": "Human", "splits": 2, "value": 0.55},
    ]
