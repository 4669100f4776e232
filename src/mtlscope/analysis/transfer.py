"""Transfer tables: multi-task minus single-task generalization per task, with significance (Mueller et al. 2025, §3–5).

``Delta E_k = mean_seeds E_k(MT) - mean_seeds E_k(ST)`` where E_k is the generalization of a trajectory
(``mtlscope.analysis.trajectories.generalization``). A delta is *significant* when the intervals
``mean +- 2 std`` (sample standard deviation over seeds) of the two variants do not overlap — the rule of
Table 1 in Mueller et al. (TMLR 2025).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from mtlscope.analysis.trajectories import builtin_direction, checkpoint_table, generalization
from mtlscope.runs.results import RunResults

TRANSFER_COLUMNS: tuple[str, ...] = (
    "task",
    "variant",
    "st_mean",
    "st_std",
    "mt_mean",
    "mt_std",
    "delta",
    "significant",
)


def significant(a_mean: float, a_std: float, b_mean: float, b_std: float, width: float = 2.0) -> bool:
    """True when ``[mean - width*std, mean + width*std]`` of a and b do not overlap."""
    return bool(abs(a_mean - b_mean) > width * (a_std + b_std))


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value) over seeds."""
    array = np.asarray(values, dtype=float)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


def generalization_by_run(results: RunResults, metric: str | None = None, top: int = 10) -> pd.DataFrame:
    """One row per (run, task): variant, seed, task, metric, generalization.

    ``metric`` defaults to each task's declared primary metric (``primary_metric``); the best checkpoints
    follow the metric's declared direction (``metric_direction``). Only completed runs count.
    """
    rows = []
    completed = results.runs[results.runs["status"] == "completed"]
    for run in completed.itertuples():
        for task in str(run.tasks).split("+"):
            run_id = str(run.run_id)
            task_metric = metric or primary_metric(results, run_id, task)
            higher = metric_direction(results, run_id, task, task_metric)
            table = checkpoint_table(results.records, run_id, task, task_metric)
            rows.append(
                {
                    "run_id": run.run_id,
                    "variant": run.variant,
                    "tasks": run.tasks,
                    "seed": run.seed,
                    "task": task,
                    "metric": task_metric,
                    "generalization": generalization(table, task_metric, top, higher_is_better=higher),
                }
            )
    return pd.DataFrame(rows, columns=["run_id", "variant", "tasks", "seed", "task", "metric", "generalization"])


def declaration(results: RunResults, run_id: str | None, task: str) -> Mapping[str, Any] | None:
    """What ``task`` declared (primary metric, metric directions, loss) in run ``run_id``'s summary, else in any
    run's (None when no run declares it: runs stored before tasks declared their metrics, or still running)."""
    if "task_declarations" not in results.runs.columns:
        return None
    runs = results.runs
    ordered = [runs[runs["run_id"] == run_id], runs] if run_id is not None else [runs]
    for rows in ordered:
        for declared in rows["task_declarations"]:
            if isinstance(declared, Mapping) and isinstance(declared.get(task), Mapping):
                found: Mapping[str, Any] = declared[task]
                return found
    return None


def primary_metric(results: RunResults, run_id: str | None, task: str) -> str:
    """The task's declared primary metric (in run ``run_id``, or in any run when None; ``declaration``).

    Runs without a declaration (stored before tasks declared their metrics) had the built-in tasks only, whose
    primary metric was ``accuracy`` when recorded, else ``r2``."""
    declared = declaration(results, run_id, task)
    if declared is not None:
        return str(declared["primary_metric"])
    rows = results.records["task"] == task
    if run_id is not None:
        rows &= results.records["run_id"] == run_id
    recorded = set(results.records.loc[rows, "metric"])
    return "accuracy" if "accuracy" in recorded else "r2"


def metric_direction(results: RunResults, run_id: str | None, task: str, metric: str) -> bool:
    """True when higher ``metric`` is better for ``task``: as the task declared it, else the built-in metric's
    direction (``mtlscope.metrics.higher_is_better``; ``ValueError`` for a metric that is neither)."""
    declared = declaration(results, run_id, task)
    if declared is not None and metric in declared["higher_is_better"]:
        return bool(declared["higher_is_better"][metric])
    return builtin_direction(metric)


def transfer_table(results: RunResults, metric: str | None = None, top: int = 10) -> pd.DataFrame:
    """One row per (task, multi-task variant) whose task also has single-task runs.

    The single-task reference of task k is the variant whose tasks are exactly ``[k]``.
    """
    per_run = generalization_by_run(results, metric, top)
    rows = []
    single = per_run[per_run["tasks"] == per_run["task"]]
    multi = per_run[per_run["tasks"] != per_run["task"]]
    for (task, variant), group in multi.groupby(["task", "variant"], sort=False):
        reference = single[single["task"] == task]["generalization"].dropna().tolist()
        values = group["generalization"].dropna().tolist()
        if not reference or not values:
            continue
        st_mean, st_std = mean_std(reference)
        mt_mean, mt_std = mean_std(values)
        rows.append(
            {
                "task": task,
                "variant": variant,
                "st_mean": st_mean,
                "st_std": st_std,
                "mt_mean": mt_mean,
                "mt_std": mt_std,
                "delta": mt_mean - st_mean,
                "significant": significant(st_mean, st_std, mt_mean, mt_std),
            }
        )
    return pd.DataFrame(rows, columns=list(TRANSFER_COLUMNS))


GENERALIZATION_COLUMNS: tuple[str, ...] = ("task", "metric", "mean", "std", "sem", "n")


def generalization_table(
    results: RunResults, by: tuple[str, ...] = ("variant",), metric: str | None = None, top: int = 10
) -> pd.DataFrame:
    """Generalization per group of runs and task, as the IT-MTL tables report it (Fifty et al. 2020, Tables 2
    and 5: mean test accuracy with its standard error over runs).

    One row per (``by`` columns of ``results.runs``, task) over the completed runs; columns ``*by`` then
    ``GENERALIZATION_COLUMNS``: ``mean``, ``std`` (sample standard deviation over seeds, NaN for one run),
    ``sem = std / sqrt(n)`` and ``n`` of the runs' generalization (``generalization_by_run``), in order of
    first appearance.
    """
    by = tuple(by)
    missing = [column for column in by if column not in results.runs.columns]
    if missing:
        raise ValueError(f"by: {missing[0]!r} is not a column of the runs table")
    per_run = generalization_by_run(results, metric, top)
    columns = [*by, *GENERALIZATION_COLUMNS]
    if per_run.empty:
        return pd.DataFrame(columns=columns)
    extra = [column for column in by if column not in per_run.columns]
    if extra:
        per_run = per_run.join(results.runs.set_index("run_id")[extra], on="run_id")
    rows = []
    for key, group in per_run.groupby([*by, "task"], sort=False, dropna=False):
        values = group["generalization"].dropna().to_numpy(dtype=float)
        n = len(values)
        std = float(np.std(values, ddof=1)) if n > 1 else float("nan")
        rows.append(
            {
                **dict(zip([*by, "task"], key)),
                "metric": group["metric"].iloc[0],
                "mean": float(values.mean()) if n else float("nan"),
                "std": std,
                "sem": std / np.sqrt(n) if n > 1 else float("nan"),
                "n": n,
            }
        )
    return pd.DataFrame(rows, columns=columns)
