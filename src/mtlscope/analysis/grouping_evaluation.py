"""Evaluating trained task groupings: Fifty et al. 2020, Fig. 4 (and Tables 6-7's last column).

Question answered: once the groups a grouping chose for each split budget have been trained (one multi-task run
per group, several seeds), how good is each budget's grouping? Each task is *served* by one group that contains
it (its prediction comes from that group's network); the budget's value is the sum (``aggregate="sum"``: the
total test loss of Fig. 4 right and Table 7) or the mean (``"mean"``: the average accuracy of Table 6, the
average error of Fig. 4 left) over the tasks of the served groups' test values.

Definitions:

- A (run, task) value: the task's ``metric`` at the ``top`` checkpoints of the run with the best validation
  ``metric`` (``top=1``: the best validation checkpoint, as Fifty et al. App. D.1 "load the parameters from the
  best validation checkpoint, and evaluate on the test set"), both the validation and the test value (means over
  those checkpoints). Only completed runs count.
- A (group, task) value: the mean over seeds of the (run, task) values of the group's runs. A group is a task
  set: runs match it whatever the order of their tasks.
- Serving (a task in several groups of one budget): ``serve="validation"`` (default) picks the group with the
  best mean *validation* value of the task (lowest for a lower-is-better metric such as the loss), the rule the
  paper states for its human-expert groups ("we chose to serve the task with [the best] validation loss during
  co-training", Table 7) and the only one available for groups chosen without scores; ties go to the first
  group in the grouping's order. ``serve="grouping"`` takes the group the network selection assigned
  (``Grouping.served_by``: the highest affinity onto the task; the bold groups of Tables 6-7 for the
  transference rows). A task in one group is served by it.
- Seeds: the budget's value is computed per seed over the seeds that every serving group has (the runs of a
  stage share their seeds), then averaged: ``value`` (mean), ``std`` (sample standard deviation, 0 for one
  seed) and ``seeds`` (their number).
- Baselines: ``single-task`` (every task served by its own single-task run) and ``all tasks`` (one network for
  all tasks) are rows too when their runs are in the results, at ``splits`` = the number of tasks and 1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from mtlscope.analysis.trajectories import checkpoint_table
from mtlscope.analysis.transfer import metric_direction
from mtlscope.runs.results import RunResults

AGGREGATES: tuple[str, ...] = ("sum", "mean")
SERVE_RULES: tuple[str, ...] = ("validation", "grouping")
SINGLE_TASK = "single-task"
ALL_TASKS = "all tasks"
VALUE_COLUMNS: tuple[str, ...] = ("run_id", "group", "seed", "task", "val", "test")


@dataclass(frozen=True)
class BudgetGrouping:
    """The groups chosen for one split budget; ``served_by`` (task -> group) where the selection assigned them."""

    splits: int
    groups: tuple[tuple[str, ...], ...]
    served_by: dict[str, tuple[str, ...]] = field(default_factory=dict)


def group_label(group: Sequence[str]) -> str:
    """``{a, b}``: how a group is written in tables."""
    return "{" + ", ".join(group) + "}"


def group_key(group: Sequence[str]) -> str:
    """A group's task set as one string (its tasks sorted, joined by ``+``): runs match whatever their task order."""
    return "+".join(sorted(group))


def budget_groupings(entries: Sequence[Mapping[str, object]]) -> list[BudgetGrouping]:
    """``BudgetGrouping``s from plain mappings ``{splits, groups, served_by?}`` (a grouping file, a preset option);
    ``ValueError`` naming the entry and field for anything malformed."""
    if isinstance(entries, (str, bytes)) or not isinstance(entries, Sequence) or not entries:
        raise ValueError("groupings: expected a non-empty list of {splits, groups, served_by} mappings")
    budgets: list[BudgetGrouping] = []
    for index, entry in enumerate(entries):
        where = f"groupings[{index}]"
        if not isinstance(entry, Mapping):
            raise ValueError(f"{where}: expected a mapping with splits and groups")
        unknown = [key for key in entry if key not in ("splits", "groups", "served_by", "score")]
        if unknown:
            raise ValueError(f"{where}.{unknown[0]}: unknown key; expected splits, groups, served_by")
        splits = entry.get("splits")
        if isinstance(splits, bool) or not isinstance(splits, int) or splits < 1:
            raise ValueError(f"{where}.splits: expected an integer >= 1, got {splits!r}")
        if splits in {budget.splits for budget in budgets}:
            raise ValueError(f"{where}.splits: budget {splits} is given twice")
        raw_groups = entry.get("groups")
        if not isinstance(raw_groups, Sequence) or isinstance(raw_groups, str) or not raw_groups:
            raise ValueError(f"{where}.groups: expected a non-empty list of task lists")
        groups = tuple(_group(group, f"{where}.groups[{i}]") for i, group in enumerate(raw_groups))
        if len(groups) > splits:
            raise ValueError(f"{where}.groups: {len(groups)} groups for a budget of {splits} splits")
        served_raw = entry.get("served_by") or {}
        if not isinstance(served_raw, Mapping):
            raise ValueError(f"{where}.served_by: expected a mapping of task to group")
        served = {str(task): _group(group, f"{where}.served_by.{task}") for task, group in served_raw.items()}
        for task, group in served.items():
            if task not in group or frozenset(group) not in {frozenset(g) for g in groups}:
                raise ValueError(f"{where}.served_by.{task}: {group_label(group)} is not a group of it containing it")
        budgets.append(BudgetGrouping(splits, groups, served))
    return budgets


def _group(value: object, where: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence) or not value:
        raise ValueError(f"{where}: expected a non-empty list of task names")
    if not all(isinstance(task, str) and task for task in value) or len(set(value)) != len(value):
        raise ValueError(f"{where}: expected distinct task names, got {list(value)!r}")
    return tuple(str(task) for task in value)


def run_task_values(results: RunResults, metric: str = "loss", top: int = 1) -> pd.DataFrame:
    """One row per (completed run, task): ``run_id``, ``group`` (the run's task set, ``group_key``), ``seed``,
    ``task``, ``val`` and ``test`` (module docstring); a task without validation and test records is left out."""
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ValueError(f"top: expected an integer >= 1, got {top!r}")
    rows = []
    completed = results.runs[results.runs["status"] == "completed"]
    for run in completed.itertuples():
        run_id = str(run.run_id)
        tasks = str(run.tasks).split("+")
        for task in tasks:
            table = checkpoint_table(results.records, run_id, task, metric).dropna(subset=["val", "test"])
            if table.empty:
                continue
            higher = metric_direction(results, run_id, task, metric)
            best = table.sort_values("val", ascending=not higher, kind="stable").head(top)
            rows.append(
                {
                    "run_id": run_id,
                    "group": group_key(tasks),
                    "seed": run.seed,
                    "task": task,
                    "val": float(best["val"].mean()),
                    "test": float(best["test"].mean()),
                }
            )
    return pd.DataFrame(rows, columns=list(VALUE_COLUMNS))


def evaluate_groupings(
    values: pd.DataFrame,
    groupings: Sequence[BudgetGrouping],
    *,
    higher_is_better: bool,
    aggregate: str = "sum",
    serve: str = "validation",
    label: str = "grouping",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(table, served)`` from ``run_task_values`` rows (module docstring).

    ``table``: one row per budget (``grouping`` = ``label``) and per baseline found (``single-task``, ``all
    tasks``): ``grouping, splits, groups, value, std, seeds``. ``served``: one row per (budget or baseline, task):
    ``grouping, splits, task, served_by, val, test`` (means over the budget's seeds). ``higher_is_better`` is the
    metric's direction (serving on validation). ``ValueError`` when a group has no runs, a task no serving
    group, a (group, seed) several runs, or the serving groups no seed in common.
    """
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate: expected one of {', '.join(AGGREGATES)}, got {aggregate!r}")
    if serve not in SERVE_RULES:
        raise ValueError(f"serve: expected one of {', '.join(SERVE_RULES)}, got {serve!r}")
    if not groupings:
        raise ValueError("no groupings to evaluate")
    repeated = values[values.duplicated(["group", "seed", "task"], keep=False)]
    if not repeated.empty:
        first = repeated.iloc[0]
        raise ValueError(
            f"group {group_label(str(first['group']).split('+'))} has several runs with seed {first['seed']} "
            f"({', '.join(sorted(set(repeated[repeated['group'] == first['group']]['run_id'])))}); keep one per seed "
            "(an output's where, or the protocol's final runs)"
        )
    tasks = list(dict.fromkeys(task for budget in groupings for group in budget.groups for task in group))
    rows: list[dict[str, object]] = []
    served_rows: list[dict[str, object]] = []
    for budget in groupings:
        assignment = _serve(values, budget, tasks, higher_is_better, serve)
        _add(rows, served_rows, values, label, budget.splits, budget.groups, assignment, aggregate)
    singles = [(task,) for task in tasks]
    present = set(values["group"])
    if all(group_key(group) in present for group in singles):
        _add(rows, served_rows, values, SINGLE_TASK, len(tasks), tuple(singles), dict(zip(tasks, singles)), aggregate)
    if group_key(tasks) in present:
        everything = tuple(tasks)
        _add(rows, served_rows, values, ALL_TASKS, 1, (everything,), dict.fromkeys(tasks, everything), aggregate)
    table = pd.DataFrame(rows, columns=["grouping", "splits", "groups", "value", "std", "seeds"])
    served = pd.DataFrame(served_rows, columns=["grouping", "splits", "task", "served_by", "val", "test"])
    return table, served


def _serve(
    values: pd.DataFrame, budget: BudgetGrouping, tasks: Sequence[str], higher: bool, serve: str
) -> dict[str, tuple[str, ...]]:
    """The group serving each task in ``budget``."""
    assignment: dict[str, tuple[str, ...]] = {}
    for task in tasks:
        candidates = [group for group in budget.groups if task in group]
        if not candidates:
            raise ValueError(f"{budget.splits}-split grouping: no group contains task {task!r}")
        if serve == "grouping" and len(candidates) > 1:
            if task not in budget.served_by:
                raise ValueError(
                    f"{budget.splits}-split grouping: task {task!r} is in several groups and the grouping does not "
                    "say which serves it (served_by); use serve: validation"
                )
            assignment[task] = budget.served_by[task]
            continue
        best: tuple[str, ...] | None = None
        best_val = math.nan
        for group in candidates:
            rows = values[(values["group"] == group_key(group)) & (values["task"] == task)]
            if rows.empty:
                raise ValueError(f"group {group_label(group)}: no completed run with validation and test {task!r}")
            val = float(rows["val"].mean())
            if best is None or (val > best_val if higher else val < best_val):
                best, best_val = group, val
        assert best is not None
        assignment[task] = best
    return assignment


def _add(
    rows: list[dict[str, object]],
    served_rows: list[dict[str, object]],
    values: pd.DataFrame,
    label: str,
    splits: int,
    groups: tuple[tuple[str, ...], ...],
    assignment: Mapping[str, tuple[str, ...]],
    aggregate: str,
) -> None:
    tests: dict[str, dict[object, float]] = {}
    vals: dict[str, dict[object, float]] = {}
    seeds: set[object] | None = None
    for task, group in assignment.items():
        rows_of = values[(values["group"] == group_key(group)) & (values["task"] == task)]
        if rows_of.empty:
            raise ValueError(f"group {group_label(group)}: no completed run with validation and test {task!r}")
        tests[task] = {seed: float(test) for seed, test in zip(rows_of["seed"], rows_of["test"], strict=True)}
        vals[task] = {seed: float(val) for seed, val in zip(rows_of["seed"], rows_of["val"], strict=True)}
        seeds = set(tests[task]) if seeds is None else seeds & set(tests[task])
    common = sorted(seeds or set(), key=str)
    if not common:
        raise ValueError(f"{label} ({splits} splits): the serving groups have no seed in common")
    totals = []
    for seed in common:
        values_of_seed = [tests[task][seed] for task in assignment]
        total = sum(values_of_seed)
        totals.append(total if aggregate == "sum" else total / len(values_of_seed))
    array = np.array(totals, dtype=float)
    rows.append(
        {
            "grouping": label,
            "splits": splits,
            "groups": " ".join(group_label(group) for group in groups),
            "value": float(array.mean()),
            "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0,
            "seeds": len(array),
        }
    )
    for task, group in assignment.items():
        served_rows.append(
            {
                "grouping": label,
                "splits": splits,
                "task": task,
                "served_by": group_label(group),
                "val": float(np.mean([vals[task][seed] for seed in common])),
                "test": float(np.mean([tests[task][seed] for seed in common])),
            }
        )


def reference_rows(reference: Mapping[str, Mapping[int, float]], splits: Sequence[int]) -> pd.DataFrame:
    """Reference numbers (e.g. a paper's, per label and budget) as table rows for the budgets in ``splits``
    (``grouping, splits, value``), in the reference's order."""
    rows = [
        {"grouping": str(label), "splits": int(count), "value": float(value)}
        for label, by_budget in reference.items()
        for count, value in by_budget.items()
        if int(count) in set(splits)
    ]
    return pd.DataFrame(rows, columns=["grouping", "splits", "value"])
