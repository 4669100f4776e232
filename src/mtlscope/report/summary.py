"""The key tables of a results directory, each with a one-sentence reading (``mtlscope analyze``).

``key_tables(results)`` returns, always in this order, one ``KeyTable(title, table, reading)`` per analysis:

1. ``Transfer`` — ``transfer_table``: multi- minus single-task generalization per task and variant;
2. ``Factor transfer`` — ``factor_transfer_table``: the same deltas for every recorded probe factor;
3. ``Method changes`` — ``method_changes``: each variant's % change over the ``umtg`` runs, per task and
   factor (variants that share a method, e.g. two ``it_mtl`` candidate sets, are kept apart);
4. ``Best temperatures`` — ``best_temperatures``: each task's best ``T = lr / B``, for the variants run at
   several temperatures;
5. ``Task affinity and grouping`` — ``affinity_matrix`` (``affinity_overall``, mean over the runs of one
   variant, preferably ``umtg``) of the largest task set with affinity records, and ``group_tasks`` with at
   most ``GROUPING_SPLITS`` encoders;
6. ``IT-MTL candidate wins`` — ``candidate_wins`` summed over runs per variant, task set and candidate.

When the results cannot support an analysis (no single-task runs, no probes, one method, one temperature, no
affinity records, no ``it_mtl`` runs, or the analysis raised ``ValueError``), its entry has an empty table and
a reading that says what to run instead; ``key_tables`` never raises for missing inputs.

Comparisons 1–3 and 5 need runs that differ only in what is compared: when the completed runs have several
temperatures, they use the runs at the temperature with the most runs (ties: the lowest), and the reading
says so. Readings name the numbers of the table: deltas of generalization with 3 decimals and a sign
(``signed``), whether they are significant (the 2-std rule of ``mtlscope.analysis.transfer.significant``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any, NamedTuple, cast

import pandas as pd

from mtlscope.analysis.affinity import affinity_matrix
from mtlscope.analysis.factors import FACTOR_TRANSFER_COLUMNS, METHOD_CHANGE_COLUMNS, factor_transfer_table
from mtlscope.analysis.factors import method_changes as _method_changes
from mtlscope.analysis.grouping import group_tasks
from mtlscope.analysis.itmtl import candidate_wins
from mtlscope.analysis.temperature import BEST_COLUMNS, MEAN_TASK, best_temperatures, temperature_table
from mtlscope.analysis.transfer import TRANSFER_COLUMNS, transfer_table
from mtlscope.runs.results import RunResults

#: The most encoders ``group_tasks`` may use in the grouping entry.
GROUPING_SPLITS = 2
#: The baseline method of the method-changes entry.
BASELINE_METHOD = "umtg"
#: How many rows a reading names at most (the largest effects first); the rest are counted.
READING_ROWS = 4
WINS_SUMMARY_COLUMNS: tuple[str, ...] = ("variant", "tasks", "candidate", "label", "wins", "steps", "fraction", "runs")

TRANSFER = "Transfer"
FACTOR_TRANSFER = "Factor transfer"
METHOD_CHANGES = "Method changes"
BEST_TEMPERATURES = "Best temperatures"
AFFINITY = "Task affinity and grouping"
ITMTL_WINS = "IT-MTL candidate wins"


class KeyTable(NamedTuple):
    title: str
    table: pd.DataFrame
    reading: str


def table_name(title: str) -> str:
    """A file stem for a key table: ``"IT-MTL candidate wins"`` -> ``"it_mtl_candidate_wins"``."""
    return re.sub(r"[^a-z0-9]+", "_", title.lower()).strip("_")


def signed(value: float) -> str:
    """A number with its sign: 3 decimals from 0.01 to 1000 in magnitude (``+0.058``), else 3 significant
    digits (``-0.000767``, ``+1.23e+04``); ``nan`` for NaN."""
    if not math.isfinite(value):
        return "nan"
    if value == 0 or 0.01 <= abs(value) < 1000:
        return f"{value:+.3f}"
    return f"{value:+.3g}"


def _significance(flag: object) -> str:
    return "significant" if bool(flag) else "not significant"


def describe_effect(source: str, target: str, delta: float, flag: object) -> str:
    """``"digits1+digits2 helps digits1 by +0.058 (significant)"``: "helps"/"hurts" for a significant positive/
    negative ``delta`` (generalization: accuracy or r2, higher is better), "changes" for a non-significant one."""
    verb = "changes" if not flag else ("helps" if delta > 0 else "hurts")
    return f"{source} {verb} {target} by {signed(delta)} ({_significance(flag)})"


def _listed(parts: list[str], total: int) -> str:
    more = total - len(parts)
    return "; ".join(parts) + (f"; and {more} more (see the table)" if more > 0 else "")


def _largest(table: pd.DataFrame, column: str) -> pd.DataFrame:
    """The ``READING_ROWS`` rows with the largest ``|column|`` (NaN last)."""
    order = table[column].astype(float).abs().sort_values(ascending=False, na_position="last", kind="stable")
    return table.loc[order.index[:READING_ROWS]]


def _at(note: str) -> str:
    return f", {note}" if note else ""


def _where(row: pd.Series) -> str:
    task, variant = str(row["task"]), str(row["variant"])
    return f"{task} alone" if task == variant else f"{task} in {variant}"


def _variant_of(row: pd.Series) -> str:
    """A variant's name, with its method where the name does not say it (``"IT-PCGrad (it_mtl)"``)."""
    variant, method = str(row["variant"]), str(row["method"])
    return variant if method in variant else f"{variant} ({method})"


def _completed(results: RunResults) -> pd.DataFrame:
    return results.runs[results.runs["status"] == "completed"]


def _temperatures(runs: pd.DataFrame) -> pd.Series:
    values = pd.to_numeric(runs["temperature"], errors="coerce").astype(float)
    return values.map(lambda t: float(f"{t:.12g}") if math.isfinite(t) else math.nan)


def _subset(results: RunResults, runs: pd.DataFrame) -> RunResults:
    return RunResults(runs=runs, records=results.records[results.records["run_id"].isin(set(runs["run_id"]))])


def one_temperature(results: RunResults) -> tuple[RunResults, str]:
    """``results`` restricted to the completed runs at the temperature with the most completed runs (ties: the
    lowest) when there are several, with a note for readings (``"at T = 0.000188 (most runs of 3 temperatures)"``);
    else ``results`` unchanged and an empty note."""
    completed = _completed(results)
    temperatures = _temperatures(completed)
    counts = temperatures.dropna().value_counts()
    if len(counts) <= 1:
        return results, ""
    chosen = min(float(t) for t in counts.index[counts == counts.max()])
    note = f"at T = {chosen:.3g} (most runs of {len(counts)} temperatures)"
    return _subset(results, completed[temperatures == chosen]), note


def _transfer(results: RunResults) -> KeyTable:
    empty = pd.DataFrame(columns=list(TRANSFER_COLUMNS))
    runs = _completed(results)
    single, multi = runs[runs["num_tasks"] == 1], runs[runs["num_tasks"] > 1]
    if single.empty or multi.empty:
        missing = "single-task" if single.empty else "multi-task"
        return KeyTable(
            TRANSFER,
            empty,
            f"No completed {missing} runs: run each task alone (setting.tasks=[<task>]) and with the other tasks, "
            "same settings and seeds, to measure transfer.",
        )
    comparable, note = one_temperature(results)
    table = transfer_table(comparable)
    if table.empty:
        return KeyTable(
            TRANSFER,
            empty,
            f"No task has both single- and multi-task runs{_at(note)}: run each task of the multi-task variants alone "
            "(setting.tasks=[<task>]) with the same settings.",
        )
    parts = [
        describe_effect(str(row["variant"]), str(row["task"]), float(row["delta"]), row["significant"])
        for _, row in _largest(table, "delta").iterrows()
    ]
    return KeyTable(TRANSFER, table, f"Against single-task training{_at(note)}: {_listed(parts, len(table))}.")


def _factor_transfer(results: RunResults) -> KeyTable:
    empty = pd.DataFrame(columns=list(FACTOR_TRANSFER_COLUMNS))
    if not (results.records["split"] == "probe").any():
        return KeyTable(
            FACTOR_TRANSFER,
            empty,
            "No probes were recorded: run with probes (e.g. probes: {sharpness: {}, fim_trace: {}, "
            "grad_cov_trace: {}, min_train_loss: {}}) to compare trajectory factors.",
        )
    comparable, note = one_temperature(results)
    table = factor_transfer_table(comparable)
    factors = table[table["factor"] != "generalization"]
    if factors.empty:
        return KeyTable(
            FACTOR_TRANSFER,
            table,
            f"No probe factor was measured in both single- and multi-task runs of a task{_at(note)}: run the "
            "single-task runs with the same probes.",
        )
    significant = factors[factors["significant"].astype(bool)]
    if significant.empty:
        top = _largest(factors, "delta").iloc[0]
        reading = (
            f"No factor changes significantly from single- to multi-task training ({len(factors)} comparisons"
            f"{_at(note)}); the largest change is {top['factor']} of {top['task']} in "
            f"{top['variant']}, {signed(float(top['delta']))}."
        )
    else:
        parts = [
            f"{row['factor']} of {row['task']} changes by {signed(float(row['delta']))} in {row['variant']}"
            for _, row in _largest(significant, "delta").iterrows()
        ]
        reading = (
            f"{len(significant)} of {len(factors)} factor changes from single- to multi-task training are "
            f"significant{_at(note)}: {_listed(parts, len(significant))}."
        )
    return KeyTable(FACTOR_TRANSFER, table, reading)


def _methods(results: RunResults) -> KeyTable:
    empty = pd.DataFrame(columns=list(METHOD_CHANGE_COLUMNS))
    runs = _completed(results)
    methods = sorted(set(runs.loc[runs["num_tasks"] > 1, "method"].dropna().astype(str)))
    if len(methods) < 2:
        return KeyTable(
            METHOD_CHANGES,
            empty,
            f"Only {' '.join(methods) or 'no'} multi-task method: run the same tasks with another method "
            "(method.name=pcgrad, mgda, ...) and with umtg to compare methods.",
        )
    if BASELINE_METHOD not in methods:
        return KeyTable(
            METHOD_CHANGES,
            empty,
            f"No {BASELINE_METHOD} runs to compare {', '.join(methods)} with: run the same tasks with "
            f"method.name={BASELINE_METHOD}.",
        )
    comparable, note = one_temperature(results)
    table = _method_changes(comparable, baseline=BASELINE_METHOD)
    general = table[table["factor"] == "generalization"]
    if general.empty:
        return KeyTable(
            METHOD_CHANGES,
            table,
            f"No method shares a task set with {BASELINE_METHOD}{_at(note)}: run them on the same tasks.",
        )
    parts = [
        f"{_variant_of(row)} changes {row['task']}'s generalization by {float(row['pct_change']):+.1f}% "
        f"in {row['tasks']} ({_significance(row['significant'])})"
        for _, row in _largest(general, "pct_change").iterrows()
    ]
    return KeyTable(METHOD_CHANGES, table, f"Against {BASELINE_METHOD}{_at(note)}: {_listed(parts, len(general))}.")


def _temperature(results: RunResults) -> KeyTable:
    empty = pd.DataFrame(columns=list(BEST_COLUMNS))
    temperatures = _temperatures(_completed(results)).dropna().unique()
    if len(temperatures) < 2:
        return KeyTable(
            BEST_TEMPERATURES,
            empty,
            "All completed runs have one temperature T = lr / batch_size: run a sweep of optimizer.lr or "
            "training.batch_size to find each task's best temperature.",
        )
    table = temperature_table(results)
    keys = ["variant", "kind", "tasks", "method", "loss_scale", "task"]
    tried = table.groupby(keys, dropna=False)["temperature"].transform("nunique")
    best = best_temperatures(table[tried > 1])
    if best.empty:
        return KeyTable(
            BEST_TEMPERATURES,
            empty,
            f"The runs have {len(temperatures)} temperatures but no variant was run at more than one: run one "
            "variant at several values of optimizer.lr or training.batch_size.",
        )
    grouped = table[tried > 1].groupby(keys, dropna=False, sort=False)["temperature"].nunique()
    counts = {tuple(map(str, cast(tuple[Any, ...], key))): int(count) for key, count in grouped.items()}
    rows = best[best["task"] != MEAN_TASK]
    parts = []
    for _, row in rows.head(READING_ROWS).iterrows():
        count = counts[tuple(str(row[k]) for k in keys)]
        parts.append(
            f"{_where(row)} is best at T = {float(row['temperature']):.3g} "
            f"({row['metric']} {float(row['mean']):.3f} ± {float(row['std']):.3f}, of {count} temperatures)"
        )
    return KeyTable(BEST_TEMPERATURES, best, f"{_listed(parts, len(rows))}.")


def one_variant(runs: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """The runs of one variant among ``runs`` (all on one task set): the baseline method's when it ran, else any
    method's, and of those the first variant with the most runs. Variants are never averaged together; returns
    ``(its runs, how many other variants were left out)``."""
    baseline = runs[runs["method"] == BASELINE_METHOD]
    preferred = baseline if not baseline.empty else runs
    counts = preferred["variant"].astype(str).value_counts(sort=False)
    variant = str(counts.idxmax())
    return runs[runs["variant"].astype(str) == variant], int(runs["variant"].astype(str).nunique()) - 1


def affinity_runs(results: RunResults) -> tuple[pd.DataFrame, int]:
    """The completed multi-task runs with affinity records, one variant per task set (``one_variant``), and how
    many variants were left out — what the affinity heatmap averages (task sets combined, variants never)."""
    records = results.records
    measured = records[(records["split"] == "probe") & records["metric"].astype(str).str.startswith("affinity_")]
    runs = _completed(results)
    runs = runs[runs["run_id"].isin(set(measured["run_id"])) & (runs["num_tasks"] > 1)]
    if runs.empty:
        return runs, 0
    chosen = [one_variant(group) for _, group in runs.groupby("tasks", sort=True)]
    return pd.concat([c for c, _ in chosen]), sum(left for _, left in chosen)


def _affinity(results: RunResults) -> KeyTable:
    missing = (
        "No affinity records: run multi-task variants with the affinity probe (probes: {affinity: {}}) to see "
        "which tasks help each other and how to group them."
    )
    comparable, note = one_temperature(results)
    records = comparable.records
    rows = records[(records["split"] == "probe") & records["metric"].astype(str).str.startswith("affinity_overall/")]
    runs = _completed(comparable)
    runs = runs[runs["run_id"].isin(set(rows["run_id"])) & (runs["num_tasks"] > 1)]
    if runs.empty:
        return KeyTable(AFFINITY, pd.DataFrame(columns=["source"]), missing)
    largest = runs[runs["num_tasks"] == runs["num_tasks"].max()]
    tasks = str(largest["tasks"].iloc[0])
    chosen = largest[largest["tasks"] == tasks]
    others = runs["tasks"].nunique() - 1
    also = f"; also recorded for {others} other task set{'s' if others > 1 else ''}" if others else ""
    chosen, left_out = one_variant(chosen)  # variants are never averaged
    variant = str(chosen["variant"].iloc[0])
    if left_out:
        also += f"; {left_out} other variant{'s' if left_out > 1 else ''} on these tasks"
    matrix = affinity_matrix(rows[rows["run_id"].isin(set(chosen["run_id"]))])
    table = matrix.reset_index()
    table.columns.name = None
    names = list(matrix.index)
    pairs = [(s, t, float(matrix.loc[s, t])) for s in names for t in names if s != t and pd.notna(matrix.loc[s, t])]
    name = tasks if variant == tasks else f"{variant} on {tasks}"
    where = f"In {name} ({len(chosen)} runs{_at(note)}{also})"
    if not pairs:
        return KeyTable(AFFINITY, table, f"{where}, no cross-task affinity was measured.")
    source, target, value = max(pairs, key=lambda p: p[2])
    reading = (
        f"{where}, the largest cross-task affinity is {source} -> {target} "
        f"({signed(value)}; {target} onto itself {signed(float(matrix.loc[target, target]))})"
    )
    try:
        grouping = group_tasks(matrix, GROUPING_SPLITS)
    except ValueError as error:
        return KeyTable(AFFINITY, table, f"{reading}; no grouping: {error}.")
    groups = " ".join("{" + ", ".join(group) + "}" for group in grouping.groups)
    reading += f"; with at most {GROUPING_SPLITS} encoders the best grouping is {groups} (score {grouping.score:.3g})."
    return KeyTable(AFFINITY, table, reading)


def _itmtl(results: RunResults) -> KeyTable:
    empty = pd.DataFrame(columns=list(WINS_SUMMARY_COLUMNS))
    runs = results.runs[results.runs["method"] == "it_mtl"]
    if runs.empty:
        return KeyTable(
            ITMTL_WINS,
            empty,
            "No it_mtl runs: run method.name=it_mtl with training.diagnostics_every=1 to see which candidate "
            "gradient IT-MTL chooses.",
        )
    wins = candidate_wins(results)
    if wins.empty:
        return KeyTable(
            ITMTL_WINS,
            empty,
            "The it_mtl runs recorded no candidate choices: run them with training.diagnostics_every=1.",
        )
    by_run = runs.set_index("run_id")
    wins["variant"] = wins["run_id"].map(by_run["variant"]).astype(str)
    wins["tasks"] = wins["run_id"].map(by_run["tasks"])
    table = (
        wins.groupby(["variant", "tasks", "candidate", "label"], sort=False)
        .agg(wins=("wins", "sum"), steps=("steps", "sum"), runs=("run_id", "nunique"))
        .reset_index()
    )
    table["fraction"] = table["wins"] / table["steps"]
    table = table[list(WINS_SUMMARY_COLUMNS)]
    parts = []
    for (variant, tasks), group in table.groupby(["variant", "tasks"], sort=False):
        ordered = group.sort_values("fraction", ascending=False, kind="stable")
        top = ordered.iloc[0]
        others = ", ".join(f"{row['label']} {100 * row['fraction']:.1f}%" for _, row in ordered.iloc[1:].iterrows())
        parts.append(
            f"{variant} on {tasks} chose {top['label']} at {100 * top['fraction']:.1f}% of steps "
            f"({top['wins']} of {top['steps']} over {top['runs']} runs)" + (f", then {others}" if others else "")
        )
    reading = _listed(parts[:READING_ROWS], len(parts))
    return KeyTable(ITMTL_WINS, table, reading[0].upper() + reading[1:] + ".")


_BUILDERS: tuple[tuple[str, Callable[[RunResults], KeyTable]], ...] = (
    (TRANSFER, _transfer),
    (FACTOR_TRANSFER, _factor_transfer),
    (METHOD_CHANGES, _methods),
    (BEST_TEMPERATURES, _temperature),
    (AFFINITY, _affinity),
    (ITMTL_WINS, _itmtl),
)


def key_tables(results: RunResults) -> list[KeyTable]:
    """The key tables of ``results`` with their readings (module docstring), one entry per analysis, in order;
    an analysis the results cannot support gives an empty table and a reading that says what to run."""
    entries = []
    for title, build in _BUILDERS:
        try:
            entries.append(build(results))
        except ValueError as error:
            entries.append(KeyTable(title, pd.DataFrame(), f"Not available: {error}."))
    return entries
