"""Single values per trajectory and the main paper's factor tables (Mueller et al., TMLR 2025, §4).

A *factor* is a value of the optimization trajectory of one (run, task): a probe value recorded at checkpoints
(``sharpness``, ``fim_trace``, ``grad_cov_trace``, ``grad_similarity``, ...) or ``generalization`` (the
task's primary test metric). ``aggregate`` reduces a factor's checkpoint values to one number by a *rule*
``(kind, n)`` (footnote 6 and App. B.4 of the paper; ``AGGREGATIONS``):

- ``("best_val", n)``: mean of the factor at the ``n`` checkpoints with the best validation metric (ties: the
  earlier checkpoint first) — generalization = mean test metric of the 10 best validation checkpoints;
- ``("last", n)``: mean of the last ``n`` measured values — sharpness, gradient covariance (n = 20);
- ``("largest", n)`` / ``("smallest", n)``: mean of the ``n`` largest / smallest values — Fisher trace (its 20
  largest, "capturing the explosion"); minimum training loss (its smallest value);
- ``("mean", None)``: mean of all measured values — every other factor.

``factor_transfer_table`` is Table 1 (multi-task minus single-task delta of generalization and of each
factor, significant by the 2-std rule of ``transfer.significant``); ``method_changes`` is Figure 4 (the
percentage change of each factor and of generalization of every method over the uniform multi-task gradient).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from mtlscope.analysis.trajectories import checkpoint_table, generalization
from mtlscope.analysis.transfer import TRANSFER_COLUMNS, mean_std, primary_metric, significant
from mtlscope.runs.results import RunResults

Rule = tuple[str, int | None]

RULE_KINDS: tuple[str, ...] = ("best_val", "last", "largest", "smallest", "mean")
DEFAULT_RULE: Rule = ("mean", None)

AGGREGATIONS: Mapping[str, Rule] = {
    "generalization": ("best_val", 10),
    "sharpness": ("last", 20),
    "grad_cov_trace": ("last", 20),
    "fim_trace": ("largest", 20),
    "fim_trace_per_example": ("largest", 20),
    "grad_norm_sq": ("mean", None),
    "noise_scale": ("mean", None),
    "grad_similarity": ("mean", None),
    "min_train_loss": ("smallest", 1),
}
"""The default rule of each factor; a factor not listed uses ``DEFAULT_RULE`` (the mean of all its values)."""

FACTORS: tuple[str, ...] = tuple(AGGREGATIONS)
"""The factors ``factor_values`` reports by default (those of them with records), in this order."""

SINGLE_TASK = "single-task"

FACTOR_COLUMNS: tuple[str, ...] = ("run_id", "variant", "tasks", "method", "seed", "task", "factor", "value")
FACTOR_TRANSFER_COLUMNS: tuple[str, ...] = (*TRANSFER_COLUMNS[:2], "reference", "factor", *TRANSFER_COLUMNS[2:])
METHOD_CHANGE_COLUMNS: tuple[str, ...] = (
    "task",
    "tasks",
    "variant",
    "method",
    "baseline",
    "factor",
    "baseline_mean",
    "baseline_std",
    "mean",
    "std",
    "pct_change",
    "significant",
)


def check_rule(rule: Rule | str, name: str = "rule") -> Rule:
    """``rule`` as a validated ``(kind, n)`` pair (a bare kind means ``(kind, None)``); ``name`` labels errors."""
    if isinstance(rule, str):
        rule = (rule, None)
    try:
        kind, count = rule
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a (kind, n) pair, got {rule!r}") from None
    if kind not in RULE_KINDS:
        raise ValueError(f"{name}: unknown rule kind {kind!r}; kinds: {', '.join(RULE_KINDS)}")
    if kind == "mean":
        if count is not None:
            raise ValueError(f"{name}: rule 'mean' takes no count, got {count!r}")
        return (kind, None)
    if isinstance(count, bool) or not isinstance(count, int | np.integer) or count < 1:
        raise ValueError(f"{name}: rule {kind!r} needs a positive integer count, got {count!r}")
    return (kind, int(count))


def aggregate(values: pd.Series | pd.DataFrame, rule: Rule | str, metric: str = "accuracy") -> float:
    """One number from a factor's checkpoint values (in checkpoint order; NaN = not measured), by ``rule``.

    ``("best_val", n)`` takes a DataFrame with columns ``val`` and ``test`` (the factor) and returns the mean
    ``test`` of the ``n`` checkpoints with the best ``val`` (the direction of ``metric``; ``generalization``);
    the other kinds take a Series. NaN when nothing was measured.
    """
    kind, count = check_rule(rule)
    if kind == "best_val":
        if not isinstance(values, pd.DataFrame) or not {"val", "test"} <= set(values.columns):
            raise ValueError("values: rule 'best_val' needs a DataFrame with columns val and test")
        assert count is not None
        return generalization(values, metric, top=count)
    if isinstance(values, pd.DataFrame):
        raise ValueError(f"values: rule {kind!r} needs a Series of one factor's values")
    measured = pd.to_numeric(pd.Series(values), errors="coerce").dropna()
    if measured.empty:
        return float("nan")
    if kind == "last":
        measured = measured.iloc[-count:] if count else measured
    elif kind == "largest":
        measured = measured.nlargest(count or len(measured))
    elif kind == "smallest":
        measured = measured.nsmallest(count or len(measured))
    return float(measured.mean())


def factor_values(
    results: RunResults,
    factors: Sequence[str] | None = None,
    rules: Mapping[str, Rule | str] | None = None,
    metric: str | None = None,
) -> pd.DataFrame:
    """One row per (completed run, task, factor) with the factor's single value; columns ``FACTOR_COLUMNS``.

    ``factors`` defaults to ``generalization`` and every factor of ``FACTORS`` recorded in ``results``; any
    recorded probe value may be named. ``rules`` overrides ``AGGREGATIONS`` per factor. ``metric`` (the test and
    validation metric of ``generalization`` and of ``best_val`` rules) defaults to each task's primary metric
    (``accuracy`` for classification, else ``r2``). A factor a run did not measure has value NaN.
    """
    recorded = set(results.records.loc[results.records["split"] == "probe", "metric"].dropna().astype(str))
    if factors is None:
        names = [factor for factor in FACTORS if factor == "generalization" or factor in recorded]
    else:
        names = list(factors)
        for factor in names:
            if factor != "generalization" and factor not in recorded:
                known = ", ".join(sorted(recorded)) or "none"
                raise ValueError(f"factors: {factor!r} is not recorded; recorded probe values: {known}")
    chosen = {factor: check_rule(rule, f"rules[{factor!r}]") for factor, rule in (rules or {}).items()}
    rule_of = {factor: chosen.get(factor, AGGREGATIONS.get(factor, DEFAULT_RULE)) for factor in names}
    records = dict(tuple(results.records.groupby("run_id", sort=False)))
    empty = results.records.iloc[0:0]
    rows = []
    for run in results.runs[results.runs["status"] == "completed"].to_dict("records"):
        run_id = str(run["run_id"])
        own = records.get(run_id, empty)
        for task in str(run["tasks"]).split("+"):
            task_metric = metric or primary_metric(RunResults(results.runs, own), run_id, task)
            table = checkpoint_table(own, run_id, task, task_metric)
            for factor in names:
                rows.append(
                    {
                        "run_id": run["run_id"],
                        "variant": run.get("variant"),
                        "tasks": run["tasks"],
                        "method": run.get("method"),
                        "seed": run.get("seed"),
                        "task": task,
                        "factor": factor,
                        "value": _value(table, factor, rule_of[factor], task_metric),
                    }
                )
    return pd.DataFrame(rows, columns=list(FACTOR_COLUMNS))


def factor_transfer_table(
    results: RunResults,
    factors: Sequence[str] | None = None,
    reference: str = SINGLE_TASK,
    rules: Mapping[str, Rule | str] | None = None,
    metric: str | None = None,
) -> pd.DataFrame:
    """Table 1 of the main paper: one row per (task, variant, factor) with the delta of the variant over the
    reference; columns ``FACTOR_TRANSFER_COLUMNS``.

    ``st_mean``/``st_std`` are the mean and sample std over seeds of the **reference** runs, ``mt_mean``/
    ``mt_std`` those of the variant, ``delta = mt_mean - st_mean``, ``significant`` by the 2-std rule.
    ``reference="single-task"`` compares every multi-task variant with the runs whose tasks are exactly the task
    (as ``transfer_table``); the name of a variant compares every other variant training the task with it. Rows
    where either side has no value are left out.
    """
    variants = _completed(results, "variant")
    if reference != SINGLE_TASK and reference not in variants:
        known = ", ".join(sorted(variants)) or "none"
        raise ValueError(f"reference: unknown variant {reference!r}; use {SINGLE_TASK!r} or one of: {known}")
    values = factor_values(results, factors, rules, metric)
    rows = []
    for task, by_task in values.groupby("task", sort=False):
        is_reference = by_task["tasks"] == task if reference == SINGLE_TASK else by_task["variant"] == reference
        base, others = by_task[is_reference], by_task[~is_reference]
        for (variant, factor), group in others.groupby(["variant", "factor"], sort=False):
            row = _delta(base.loc[base["factor"] == factor, "value"], group["value"])
            if row is None:
                continue
            ref_mean, ref_std, mean, std = row
            rows.append(
                {
                    "task": task,
                    "variant": variant,
                    "reference": reference,
                    "factor": factor,
                    "st_mean": ref_mean,
                    "st_std": ref_std,
                    "mt_mean": mean,
                    "mt_std": std,
                    "delta": mean - ref_mean,
                    "significant": significant(ref_mean, ref_std, mean, std),
                }
            )
    return pd.DataFrame(rows, columns=list(FACTOR_TRANSFER_COLUMNS))


def method_changes(
    results: RunResults,
    baseline: str = "umtg",
    factors: Sequence[str] | None = None,
    rules: Mapping[str, Rule | str] | None = None,
    metric: str | None = None,
) -> pd.DataFrame:
    """Figure 4 of the main paper: for each task and task set, each variant's percentage change over the runs of
    the ``baseline`` method, ``100 * (mean - baseline_mean) / |baseline_mean|`` (means over seeds), of every
    factor and of generalization; columns ``METHOD_CHANGE_COLUMNS``, one row per (task, tasks, variant, factor).

    Rows are per variant, not per method: two variants of one method (e.g. ``it_mtl`` with two candidate sets,
    or ``pcgrad`` with two option values) get a row each; ``method`` names the variant's method. Runs are
    matched by ``tasks`` alone: filter ``results`` to one setting and one hyperparameter configuration first.
    ``significant`` applies the 2-std rule to the two sets of values; ``pct_change`` is NaN when the baseline
    mean is 0. Rows where either side has no value are left out.
    """
    methods = _completed(results, "method")
    if baseline not in methods:
        known = ", ".join(sorted(methods)) or "none"
        raise ValueError(f"baseline: no completed runs with method {baseline!r}; methods: {known}")
    values = factor_values(results, factors, rules, metric)
    rows = []
    for (tasks, task), group in values.groupby(["tasks", "task"], sort=False):
        is_baseline = group["method"] == baseline
        base, others = group[is_baseline], group[~is_baseline]
        for (variant, method, factor), changed in others.groupby(
            ["variant", "method", "factor"], sort=False, dropna=False
        ):
            row = _delta(base.loc[base["factor"] == factor, "value"], changed["value"])
            if row is None:
                continue
            base_mean, base_std, mean, std = row
            change = 100.0 * (mean - base_mean) / abs(base_mean) if base_mean != 0 else float("nan")
            rows.append(
                {
                    "task": task,
                    "tasks": tasks,
                    "variant": variant,
                    "method": method,
                    "baseline": baseline,
                    "factor": factor,
                    "baseline_mean": base_mean,
                    "baseline_std": base_std,
                    "mean": mean,
                    "std": std,
                    "pct_change": change,
                    "significant": significant(base_mean, base_std, mean, std),
                }
            )
    return pd.DataFrame(rows, columns=list(METHOD_CHANGE_COLUMNS))


def _completed(results: RunResults, column: str) -> set[str]:
    """The distinct values of a runs column over completed runs (none when the column is missing)."""
    if column not in results.runs.columns:
        return set()
    return set(results.runs.loc[results.runs["status"] == "completed", column].dropna().astype(str))


def _value(table: pd.DataFrame, factor: str, rule: Rule, metric: str) -> float:
    column = "test" if factor == "generalization" else factor
    if column not in table.columns:
        return float("nan")
    if rule[0] == "best_val":
        frame = pd.DataFrame({"val": table["val"], "test": table[column]})
        return aggregate(frame, rule, metric)
    return aggregate(table[column], rule, metric)


def _delta(reference: pd.Series, values: pd.Series) -> tuple[float, float, float, float] | None:
    """(reference mean, reference std, mean, std) over seeds, or None when either side has no value."""
    base: list[Any] = reference.dropna().tolist()
    other: list[Any] = values.dropna().tolist()
    if not base or not other:
        return None
    return (*mean_std(base), *mean_std(other))
