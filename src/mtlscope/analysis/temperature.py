"""Temperature studies: generalization against the optimization temperature ``T = lr / B`` for single- and
multi-task runs (Mueller, Dredze & Andrews, "The Importance of Temperature in Multi-Task Optimization",
OPT 2022, §3–4, Figs. 1–4).

The temperature of a run is its learning rate divided by its batch size (per task), ``runs["temperature"]``;
the loss scale C (``runs["loss_scale"]``, C in {1, sqrt(K), K}) divides the multi-task gradient, so with
SGD a run at (T, C) moves like one at (T / C, 1). Three views:

- ``temperature_table``: mean and standard deviation over seeds of each task's generalization (mean test
  metric of the 10 best validation checkpoints) per (variant, method, C, T), plus the average over tasks
  (Fig. 2 (a, b), App. C);
- ``best_temperatures``: each task's best temperature — different tasks of one objective may prefer
  different noise levels (Fig. 3);
- ``method_vs_baseline_by_temperature``: each SMTO minus the UMTG at the same temperature and C, with the
  2-std rule of ``mtlscope.analysis.transfer.significant`` (Fig. 2 (c), Fig. 4).

See docs/analysis/temperature.md.
"""

from __future__ import annotations

import math
from typing import Any, cast

import numpy as np
import pandas as pd

from mtlscope.analysis.trajectories import builtin_direction
from mtlscope.analysis.transfer import generalization_by_run, significant
from mtlscope.runs.results import RunResults

#: The task label of the rows averaged over a run's tasks.
MEAN_TASK = "mean"
#: The variant label of the rows averaging single-task runs over a multi-task run's tasks.
SINGLE_TASK_VARIANT = "single-task"
TEMPERATURE_COLUMNS: tuple[str, ...] = (
    "variant",
    "kind",
    "tasks",
    "method",
    "loss_scale",
    "temperature",
    "task",
    "metric",
    "mean",
    "std",
    "n",
)
BEST_COLUMNS: tuple[str, ...] = (
    "variant",
    "kind",
    "tasks",
    "method",
    "loss_scale",
    "task",
    "metric",
    "temperature",
    "mean",
    "std",
    "n",
)
BASELINE_COLUMNS: tuple[str, ...] = (
    "tasks",
    "task",
    "temperature",
    "loss_scale",
    "method",
    "variant",
    "baseline_variant",
    "mean",
    "std",
    "n",
    "baseline_mean",
    "baseline_std",
    "baseline_n",
    "difference",
    "significant",
)
_GROUP = ["variant", "kind", "tasks", "method", "loss_scale", "temperature"]


def _rounded(value: Any) -> float:
    """A temperature as a grouping key: 12 significant digits, so 0.002/64 and 0.001/32 are the same T."""
    number = float(value) if value is not None else math.nan
    return float(f"{number:.12g}") if math.isfinite(number) else math.nan


def _summary(values: pd.Series) -> dict[str, float | int]:
    finite = values.to_numpy(dtype=float)
    finite = finite[np.isfinite(finite)]
    n = len(finite)
    mean = float(finite.mean()) if n else math.nan
    std = float(finite.std(ddof=1)) if n > 1 else (0.0 if n == 1 else math.nan)
    return {"mean": mean, "std": std, "n": n}


def _one_metric(metrics: pd.Series) -> str:
    names = sorted(set(metrics.astype(str)))
    return names[0] if len(names) == 1 else "mixed"


def _per_run(results: RunResults, metric: str | None, top: int) -> pd.DataFrame:
    per_run = generalization_by_run(results, metric, top)
    runs = results.runs.set_index("run_id")
    per_run["method"] = per_run["run_id"].map(runs["method"]) if "method" in runs else None
    per_run["loss_scale"] = per_run["run_id"].map(runs["loss_scale"]).astype(float) if "loss_scale" in runs else 1.0
    if "temperature" in runs:
        temperature = runs["temperature"]
    else:
        temperature = runs["lr"].astype(float) / runs["batch_size"].astype(float)
    per_run["temperature"] = per_run["run_id"].map(temperature).map(_rounded)
    per_run["kind"] = np.where(per_run["tasks"].astype(str).str.contains("+", regex=False), "multi", "single")
    return per_run.dropna(subset=["temperature"])


def temperature_table(results: RunResults, metric: str | None = None, top: int = 10) -> pd.DataFrame:
    """Generalization by temperature: one row per (variant, method, loss_scale, temperature, task).

    Columns: ``variant, kind`` ("single"/"multi"), ``tasks, method, loss_scale, temperature, task, metric`` and
    ``mean, std, n`` over the group's runs (seeds) with a finite generalization (``std``: sample standard
    deviation, 0 for one run). ``metric`` defaults to each task's primary metric. Only completed runs with a
    temperature count; temperatures equal to 12 significant digits are one group.

    Rows with ``task == "mean"`` average over tasks:

    - for a multi-task variant, each run's tasks are averaged first (a run with a NaN task gives NaN), then
      the runs;
    - for single-task runs, one row per multi-task task set ``tasks`` (variant ``"single-task"``, kind
      "single") and per (method, loss_scale, temperature) where every one of those tasks has single-task runs:
      per seed the mean over the tasks' single-task runs of that seed (seeds that all tasks have), then the
      mean over seeds — the single-task curve of Fig. 2.
    """
    per_run = _per_run(results, metric, top)
    rows: list[dict[str, object]] = []
    for key, group in per_run.groupby([*_GROUP, "task"], sort=False, dropna=False):
        rows.append(
            {
                **dict(zip([*_GROUP, "task"], key)),
                "metric": _one_metric(group["metric"]),
                **_summary(group["generalization"]),
            }
        )
    multi = per_run[per_run["kind"] == "multi"]
    for key, group in multi.groupby(_GROUP, sort=False, dropna=False):
        by_run = group.groupby("run_id", sort=False)["generalization"].agg(lambda v: v.mean(skipna=False))
        rows.append(
            {**dict(zip(_GROUP, key)), "task": MEAN_TASK, "metric": _one_metric(group["metric"]), **_summary(by_run)}
        )
    rows += _single_task_means(per_run)
    table = pd.DataFrame(rows, columns=list(TEMPERATURE_COLUMNS))
    table["n"] = table["n"].astype(int)
    order = ["kind", "tasks", "variant", "method", "loss_scale", "task", "temperature"]
    return table.sort_values(order, kind="stable", na_position="last").reset_index(drop=True)


def _single_task_means(per_run: pd.DataFrame) -> list[dict[str, object]]:
    single = per_run[per_run["kind"] == "single"]
    task_sets = list(dict.fromkeys(per_run.loc[per_run["kind"] == "multi", "tasks"].astype(str)))
    if single.empty or not task_sets:
        return []
    # several single-task runs of one (task, seed) at one temperature (variants that differ otherwise): their mean
    by_seed = single.groupby(["method", "loss_scale", "temperature", "task", "seed"], dropna=False)[
        "generalization"
    ].mean()
    metrics = single.groupby("task")["metric"].agg(_one_metric)
    rows: list[dict[str, object]] = []
    for tasks in task_sets:
        names = tasks.split("+")
        for key, group in by_seed.groupby(level=[0, 1, 2], sort=False, dropna=False):
            method, loss_scale, temperature = cast(tuple[Any, Any, Any], key)
            wide = group.droplevel([0, 1, 2]).unstack("task")
            if not set(names) <= set(wide.columns):
                continue
            per_seed = wide[names].dropna(how="any").mean(axis=1)
            rows.append(
                {
                    "variant": SINGLE_TASK_VARIANT,
                    "kind": "single",
                    "tasks": tasks,
                    "method": method,
                    "loss_scale": loss_scale,
                    "temperature": temperature,
                    "task": MEAN_TASK,
                    "metric": _one_metric(metrics[names]),
                    **_summary(per_seed),
                }
            )
    return rows


def _check_table(table: pd.DataFrame, name: str = "table") -> None:
    missing = [column for column in TEMPERATURE_COLUMNS if column not in table.columns]
    if missing:
        raise ValueError(f"{name} must be a temperature_table; missing column {missing[0]!r}")


def best_temperatures(table: pd.DataFrame) -> pd.DataFrame:
    """Per (variant, kind, tasks, method, loss_scale, task): the temperature with the best mean generalization
    (highest, or lowest for a lower-is-better metric such as ``loss``), with its ``mean, std, n``.

    Ties go to the lower temperature; temperatures with a NaN mean are ignored, and a group with none left
    is left out.
    """
    _check_table(table)
    keys = ["variant", "kind", "tasks", "method", "loss_scale", "task"]
    rows = []
    valid = table[np.isfinite(table["mean"].astype(float))]
    for _, group in valid.groupby(keys, sort=False, dropna=False):
        ordered = group.sort_values("temperature", kind="stable")
        higher = builtin_direction(str(ordered["metric"].iloc[0]))
        values = ordered["mean"].astype(float).to_numpy()
        best = int(np.argmax(values) if higher else np.argmin(values))  # the first, i.e. lowest T, on ties
        rows.append(ordered.iloc[best][list(BEST_COLUMNS)].to_dict())
    return pd.DataFrame(rows, columns=list(BEST_COLUMNS))


def method_vs_baseline_by_temperature(table: pd.DataFrame, baseline: str = "umtg") -> pd.DataFrame:
    """Each multi-task method minus the ``baseline`` method on the same tasks, at the same temperature and
    loss scale: one row per (tasks, task, temperature, loss_scale, method variant, baseline variant).

    ``difference = mean - baseline_mean`` (positive: the method generalizes better for a higher-is-better
    metric); ``significant`` is the 2-std rule of ``transfer.significant``. Rows of ``task == "mean"`` compare
    the task averages. Temperatures where the baseline was not run are left out.
    """
    _check_table(table)
    multi = table[table["kind"] == "multi"]
    reference = multi[multi["method"] == baseline]
    if reference.empty:
        raise ValueError(f"baseline: no multi-task rows of method {baseline!r} in the table")
    keys = ["tasks", "task", "temperature", "loss_scale"]
    paired = multi[multi["method"] != baseline].merge(reference, on=keys, suffixes=("", "_baseline"))
    rows = []
    for row in paired.to_dict("records"):
        mean, std = float(row["mean"]), float(row["std"])
        base_mean, base_std = float(row["mean_baseline"]), float(row["std_baseline"])
        rows.append(
            {
                "tasks": row["tasks"],
                "task": row["task"],
                "temperature": row["temperature"],
                "loss_scale": row["loss_scale"],
                "method": row["method"],
                "variant": row["variant"],
                "baseline_variant": row["variant_baseline"],
                "mean": mean,
                "std": std,
                "n": row["n"],
                "baseline_mean": base_mean,
                "baseline_std": base_std,
                "baseline_n": row["n_baseline"],
                "difference": mean - base_mean,
                "significant": significant(mean, std, base_mean, base_std),
            }
        )
    result = pd.DataFrame(rows, columns=list(BASELINE_COLUMNS))
    return result.sort_values(["tasks", "task", "method", "loss_scale", "temperature"], kind="stable").reset_index(
        drop=True
    )
