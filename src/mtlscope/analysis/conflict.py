"""Conflict studies: how much a target task's gradient agrees with the multi-task gradient, against the
factors of its trajectory and against its generalization (Mueller, Dredze & Andrews, TMLR 2025, §5,
Figs. 5–6).

For a target task trained with different auxiliary task sets, each multi-task run gives one point per task:

- ``similarity``: the mean over the trajectory's measured checkpoints of the ``grad_similarity`` probe
  (cosine of the task gradient with the UMTG, the paper's eq. 6) — low similarity means much conflict;
- ``generalization``: the mean test metric of the 10 best validation checkpoints
  (``mtlscope.analysis.transfer.generalization_by_run``);
- one value per factor probe, aggregated over the trajectory by a rule (Mueller et al. 2025, §3–5): ``sharpness`` and
  ``grad_cov_trace`` the mean of the last 20 measured checkpoints, ``fim_trace`` the mean of its 20 largest.

``conflict_table`` builds those points, ``correlation`` is Pearson's r with its p-value and the
least-squares line, ``conflict_correlations`` correlates similarity with every factor and with
generalization per target task (the boxes of Figs. 5 and 6). See docs/analysis/conflict.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import stats

from mtlscope.analysis.factors import AGGREGATIONS, DEFAULT_RULE, Rule, aggregate, check_rule
from mtlscope.analysis.transfer import generalization_by_run
from mtlscope.runs.results import RunResults

#: Probes the main paper studies against conflict (Fig. 5).
DEFAULT_FACTORS: tuple[str, ...] = ("sharpness", "fim_trace", "grad_cov_trace")
#: The probe whose mean over training is the amount of (non-)conflict.
SIMILARITY_PROBE = "grad_similarity"
#: Columns of ``conflict_table`` that identify a point (the rest are quantities).
CONFLICT_ID_COLUMNS: tuple[str, ...] = ("run_id", "variant", "method", "tasks", "target", "auxiliary", "seed")
CORRELATION_COLUMNS: tuple[str, ...] = ("target", "quantity", "r", "p", "n", "slope", "intercept", "reason")
#: The fewest finite pairs for a correlation, its p-value and a fitted line: with 3 or 4 points r is mostly
#: noise (3 points give |r| near 1 and p < 0.01 by chance far too often to be read as evidence).
MIN_POINTS = 5


@dataclass(frozen=True)
class Correlation:
    """Pearson correlation of y with x and the least-squares line ``y ~ slope * x + intercept``.

    ``n`` counts the pairs where both values are finite. With fewer than ``MIN_POINTS`` (5) pairs nothing is
    computed: r, p, slope and intercept are NaN and ``reason`` is ``"fewer than 5 points: no fit"``.
    With a constant x or y, r and p are NaN and ``reason`` says which (empty when r is defined); the line then
    needs a non-constant x.
    """

    r: float
    p: float
    n: int
    slope: float
    intercept: float
    reason: str = ""


def correlation(
    x: Sequence[float] | np.ndarray | pd.Series, y: Sequence[float] | np.ndarray | pd.Series
) -> Correlation:
    """Pearson r and two-sided p (``scipy.stats.pearsonr``) and the least-squares line (``numpy.polyfit``) of
    ``y`` against ``x``; pairs with a NaN or infinite value on either side are dropped."""
    xs = np.asarray(x, dtype=float).ravel()
    ys = np.asarray(y, dtype=float).ravel()
    if xs.shape != ys.shape:
        raise ValueError(f"x and y must have the same length, got {len(xs)} and {len(ys)}")
    keep = np.isfinite(xs) & np.isfinite(ys)
    xs, ys = xs[keep], ys[keep]
    n = len(xs)
    nan = math.nan
    x_constant = n > 0 and bool(np.all(xs == xs[0]))
    y_constant = n > 0 and bool(np.all(ys == ys[0]))
    if n < MIN_POINTS:
        return Correlation(nan, nan, n, nan, nan, f"fewer than {MIN_POINTS} points: no fit")
    slope = intercept = nan
    if not x_constant:
        slope, intercept = (float(v) for v in np.polyfit(xs, ys, 1))
    if x_constant or y_constant:
        return Correlation(nan, nan, n, slope, intercept, f"{'x' if x_constant else 'y'} is constant")
    result = stats.pearsonr(xs, ys)
    return Correlation(float(result[0]), float(result[1]), n, slope, intercept)


def _check_rules(factors: Sequence[str], rules: Mapping[str, Rule | str] | None) -> dict[str, Rule]:
    chosen: dict[str, Rule] = {factor: AGGREGATIONS.get(factor, DEFAULT_RULE) for factor in factors}
    for factor, rule in (rules or {}).items():
        if factor not in chosen:
            raise ValueError(f"rules: {factor!r} is not one of the factors ({', '.join(factors) or 'none'})")
        chosen[factor] = check_rule(rule, f"rules.{factor}")
        if chosen[factor][0] == "best_val":
            raise ValueError(f"rules.{factor}: 'best_val' applies to test metrics, not to probe values")
    return chosen


def conflict_table(
    results: RunResults,
    factors: Sequence[str] = DEFAULT_FACTORS,
    rules: Mapping[str, Rule | str] | None = None,
    metric: str | None = None,
    top: int = 10,
) -> pd.DataFrame:
    """One row per (completed multi-task run, task of the run as target).

    Columns: ``run_id, variant, method, tasks, target, auxiliary`` (the run's other tasks joined by '+'),
    ``seed``, ``similarity`` (mean ``grad_similarity`` of the target over its measured checkpoints),
    ``generalization`` (mean test ``metric`` of the ``top`` best validation checkpoints; ``metric`` defaults
    to the task's primary metric) and one column per factor, aggregated by ``rules`` (default:
    ``mtlscope.analysis.factors.AGGREGATIONS``; ``(kind, n)`` pairs or a bare kind, see ``check_rule``). A
    probe never measured gives NaN. Single-task runs are skipped.
    """
    if isinstance(factors, str):
        raise ValueError(f"factors must be a sequence of probe metric names, got the string {factors!r}")
    factors = tuple(factors)
    if SIMILARITY_PROBE in factors or "generalization" in factors:
        raise ValueError(f"factors: {SIMILARITY_PROBE!r} and 'generalization' are columns already")
    chosen_rules = _check_rules(factors, rules)
    columns = [*CONFLICT_ID_COLUMNS, "similarity", "generalization", *factors]
    runs = results.runs
    multi = runs[(runs["status"] == "completed") & (runs["tasks"].astype(str).str.count(r"\+") >= 1)]
    if multi.empty:
        return pd.DataFrame(columns=columns)
    general = generalization_by_run(RunResults(runs=multi, records=results.records), metric, top)
    records = results.records
    probes = records[
        records["run_id"].isin(set(multi["run_id"]))
        & (records["split"] == "probe")
        & records["metric"].isin({SIMILARITY_PROBE, *factors})
    ]
    # one value per (run, task, probe, step): the last recorded, as in checkpoint_table
    probes = probes.sort_values("step", kind="stable").drop_duplicates(
        ["run_id", "task", "metric", "step"], keep="last"
    )
    series = {key: group["value"].to_numpy(dtype=float) for key, group in probes.groupby(["run_id", "task", "metric"])}
    methods = dict(zip(multi["run_id"], multi["method"])) if "method" in multi else {}

    def measured(run_id: str, task: str, probe: str) -> np.ndarray:
        values = series.get((run_id, task, probe), np.empty(0))
        return values[np.isfinite(values)]

    rows = []
    for point in general.itertuples(index=False):
        run_id, target = str(point.run_id), str(point.task)
        tasks = str(point.tasks).split("+")
        similarity = measured(run_id, target, SIMILARITY_PROBE)
        row = {
            "run_id": run_id,
            "variant": point.variant,
            "method": methods.get(run_id),
            "tasks": point.tasks,
            "target": target,
            "auxiliary": "+".join(task for task in tasks if task != target),
            "seed": point.seed,
            "similarity": float(similarity.mean()) if len(similarity) else math.nan,
            "generalization": point.generalization,
        }
        for factor in factors:
            row[factor] = aggregate(pd.Series(measured(run_id, target, factor)), chosen_rules[factor])
        rows.append(row)
    return pd.DataFrame(rows, columns=columns)


def conflict_correlations(
    table: pd.DataFrame,
    target: str | Sequence[str] | None = None,
    quantities: Sequence[str] | None = None,
    average_seeds: bool = False,
) -> pd.DataFrame:
    """Per (target task, quantity): the ``correlation`` of ``similarity`` (x) with the quantity (y).

    ``table`` is a ``conflict_table``. ``target``: one task, several, or None for every target (in order of
    appearance). ``quantities`` default to the factor columns (every column that is neither an id column nor
    ``similarity``), then ``generalization``. With ``average_seeds``, rows are first averaged
    over seeds per (target, auxiliary set), so each auxiliary set is one point. Mix no methods: filter the
    table to one method (e.g. ``umtg``, as in the paper) first.
    """
    missing = [column for column in ("target", "similarity") if column not in table.columns]
    if missing:
        raise ValueError(f"table must be a conflict_table; missing column {missing[0]!r}")
    if quantities is None:
        others = [c for c in table.columns if c not in (*CONFLICT_ID_COLUMNS, "similarity", "generalization")]
        quantities = [*others, *(["generalization"] if "generalization" in table.columns else [])]
    elif isinstance(quantities, str):
        quantities = [quantities]
    unknown = [q for q in quantities if q not in table.columns]
    if unknown:
        raise ValueError(f"quantities: {unknown[0]!r} is not a column of the table")
    present = list(dict.fromkeys(table["target"].astype(str)))
    if target is None:
        targets = present
    else:
        targets = [target] if isinstance(target, str) else list(target)
        absent = [t for t in targets if t not in present]
        if absent:
            raise ValueError(f"target: {absent[0]!r} is not a target in the table ({', '.join(present) or 'none'})")
    if average_seeds:
        if "auxiliary" not in table.columns:
            raise ValueError("table must have an 'auxiliary' column to average seeds")
        table = table.groupby(["target", "auxiliary"], sort=False)[["similarity", *quantities]].mean().reset_index()
    rows = []
    for name in targets:
        points = table[table["target"].astype(str) == name]
        for quantity in quantities:
            result = correlation(points["similarity"], points[quantity])
            rows.append({"target": name, "quantity": quantity, **asdict(result)})
    return pd.DataFrame(rows, columns=list(CORRELATION_COLUMNS))
