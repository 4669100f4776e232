"""The outputs a paper preset asks for: one figure or table of the papers, from the preset's runs.

Each output kind is a registered builder ``builder(results, directory, name, *, option=default, ...)`` that
writes its files under ``directory`` (figures as ``figures/<name>.png`` + ``.svg``, tables as
``tables/<name>.csv`` + ``.md`` + ``.tex``) and returns a ``Produced``: a title, the written files and the
table (for the preset's summary). Option names are checked like every registry's (a typo is a one-line error
listing the options). A builder raises ``ValueError`` when the runs cannot support it; ``reproduce`` records
that and goes on with the other outputs.

Kinds (paper figure or table → analysis function; docs/experiments.md):

- ``generalization_vs_loss`` (main paper Figs. 1–2), ``factors_vs_loss`` (Fig. 3), ``learning_curves``
  (temperature paper Fig. 1): figures of ``mtlscope.report.figures``;
- ``transfer_table`` and ``factor_transfer_table`` (main paper Table 1), ``phase_table`` (the generalization
  gap at comparable loss, §3);
- the figures of Figs. 1 and 3 and ``phase_table`` note every phase with too few checkpoints to compare
  (``mtlscope.analysis.phases.phase_notes``): the notes appear in the summary and the report;
- ``method_changes`` + ``smto_quadrants`` (main paper Fig. 4);
- ``conflict_table`` (+ correlations) and ``similarity_scatter`` (main paper Figs. 5–6);
- ``temperature_table``, ``best_temperatures``, ``method_vs_baseline_by_temperature`` and
  ``temperature_curves`` (temperature paper Figs. 2–4);
- ``affinity_matrix`` (+ heatmap) and ``task_grouping`` (Fifty et al., Fig. 4 and Table 6);
  ``grouping_evaluation`` (Fig. 4's bars: the trained groups of every split budget, each task served by one
  group, with the single-task and all-task baselines and reference rows; in a derived stage of a preset,
  ``mtlscope.reproduce.stages``);
- ``generalization_table`` (Fifty et al., Tables 2 and 5) and ``candidate_wins`` (which IT-MTL candidate won).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import pandas as pd
from pydantic import Field

from mtlscope.registry import Registry
from mtlscope.runs.results import RunResults

if TYPE_CHECKING:
    from mtlscope.analysis.grouping import Grouping


@dataclass(frozen=True)
class Produced:
    """What one output wrote: a title, its files and the table behind it (None for figures without one)."""

    title: str
    files: list[Path]
    table: pd.DataFrame | None = None
    notes: list[str] = field(default_factory=list)


OUTPUTS: Registry[Produced] = Registry("output")


def _figure_path(directory: Path, name: str) -> Path:
    path = directory / "figures" / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _table(directory: Path, name: str, table: pd.DataFrame, title: str) -> list[Path]:
    from mtlscope.report.tables import write_table

    if table.empty:
        raise ValueError(f"{title}: the table is empty (the runs do not support it)")
    path = directory / "tables" / f"{name}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_table(table, path, title=title)


def _tabled(directory: Path, name: str, table: pd.DataFrame, title: str) -> Produced:
    """A table output: written as CSV, Markdown and LaTeX, and kept for the summary."""
    return Produced(title, _table(directory, name, table, title), table)


def _metric(results: RunResults, task: str, metric: str | None) -> str:
    from mtlscope.analysis.transfer import primary_metric

    return metric or primary_metric(results, None, task)


# -- main paper: trajectories (Figs. 1-3, Table 1) ------------------------------------------------------------


@OUTPUTS.register("generalization_vs_loss", "main paper Figs. 1-2: a task's test metric vs its training loss")
def generalization_vs_loss(
    results: RunResults,
    directory: Path,
    name: str,
    *,
    task: str,
    metric: str | None = None,
    variants: Sequence[str] | None = None,
) -> Produced:
    from mtlscope.analysis.phases import phase_notes
    from mtlscope.report.figures import generalization_vs_loss as draw

    files = draw(results, task, _figure_path(directory, name), _metric(results, task, metric), variants)
    return Produced(f"Generalization vs training loss of {task}", files, notes=phase_notes(results, task, "test"))


@OUTPUTS.register("factors_vs_loss", "main paper Fig. 3: a task's trajectory probes vs its training loss")
def factors_vs_loss(
    results: RunResults,
    directory: Path,
    name: str,
    *,
    task: str,
    factors: Sequence[str] | None = None,
    variants: Sequence[str] | None = None,
) -> Produced:
    from mtlscope.analysis.phases import phase_notes
    from mtlscope.report.figures import FACTOR_LABELS
    from mtlscope.report.figures import factors_vs_loss as draw

    files = draw(results, task, _figure_path(directory, name), factors, variants)
    notes = [f"{factor}: {note}" for factor in factors or FACTOR_LABELS for note in phase_notes(results, task, factor)]
    return Produced(f"Trajectory factors vs training loss of {task}", files, notes=notes)


@OUTPUTS.register("learning_curves", "temperature paper Fig. 1: training loss and validation metric by epoch")
def learning_curves(
    results: RunResults, directory: Path, name: str, *, task: str | None = None, variants: Sequence[str] | None = None
) -> Produced:
    from mtlscope.report.figures import learning_curve_table
    from mtlscope.report.figures import learning_curves as draw

    files = draw(results, _figure_path(directory, name), task, variants)
    table = learning_curve_table(results, task, variants)
    last = table.sort_values("epoch").groupby(["variant", "panel"], sort=False).tail(1)
    order = list(dict.fromkeys(table["variant"]))
    final = last.pivot_table(index="variant", columns="panel", values="mean").reindex(order).reset_index()
    final.columns.name = None
    final = final.rename(columns={"train_loss": "final_train_loss", "val": "final_val"})
    files += _table(directory, name, final, f"Learning curves ({task or 'mean over tasks'}): values at the last epoch")
    return Produced(f"Learning curves ({task or 'mean over tasks'}); the table: values at the last epoch", files, final)


@OUTPUTS.register("transfer_table", "main paper Table 1 (generalization): MT minus ST per task and variant")
def transfer_table(
    results: RunResults, directory: Path, name: str, *, metric: str | None = None, top: int = 10
) -> Produced:
    from mtlscope.analysis.transfer import transfer_table as build

    table = build(results, metric, top)
    title = (
        f"Transfer: generalization = mean test metric of the {top} best validation checkpoints, mean and std over "
        "seeds; significant = the mean ± 2 std intervals do not overlap"
    )
    return _tabled(directory, name, table, title)


@OUTPUTS.register("factor_transfer_table", "main paper Table 1: the change of every factor from ST to MT")
def factor_transfer_table(
    results: RunResults,
    directory: Path,
    name: str,
    *,
    factors: Sequence[str] | None = None,
    reference: str = "single-task",
) -> Produced:
    from mtlscope.analysis.factors import factor_transfer_table as build

    table = build(results, factors, reference)
    title = f"Factor transfer (Table 1): each factor's delta over the {reference} runs, 2-std significance"
    return _tabled(directory, name, table, title)


@OUTPUTS.register("phase_table", "main paper §3: a probe or metric compared with ST at comparable training loss")
def phase_table(
    results: RunResults,
    directory: Path,
    name: str,
    *,
    task: str,
    column: str = "test",
    phase: str = "early",
    reference_variant: str | None = None,
) -> Produced:
    from mtlscope.analysis.phases import SparsePhaseWarning, phase_notes
    from mtlscope.analysis.phases import phase_table as build

    if phase not in ("early", "end"):
        raise ValueError(f"phase: expected 'early' or 'end', got {phase!r}")
    with warnings.catch_warnings():  # said once in the output's notes, and per row in the note column
        warnings.simplefilter("ignore", SparsePhaseWarning)
        table = build(results, task, column, phase, reference_variant)
    title = f"{task}: {column} in the {phase} phase, each run vs its same-seed reference at comparable loss"
    produced = _tabled(directory, name, table, title)
    return replace(produced, notes=phase_notes(results, task, column, (phase,), reference_variant))


# -- main paper: SMTOs (Fig. 4) -------------------------------------------------------------------------------


@OUTPUTS.register("method_changes", "main paper Fig. 4 (table): each method's % change over a baseline method")
def method_changes(
    results: RunResults, directory: Path, name: str, *, baseline: str = "umtg", factors: Sequence[str] | None = None
) -> Produced:
    from mtlscope.analysis.factors import method_changes as build

    table = build(results, baseline, factors)
    title = f"Method changes: % change over {baseline} of generalization and of each factor (means over seeds)"
    return _tabled(directory, name, table, title)


@OUTPUTS.register("smto_quadrants", "main paper Fig. 4: % change of a factor vs of generalization, per method")
def smto_quadrants(
    results: RunResults,
    directory: Path,
    name: str,
    *,
    factors: Sequence[str] = ("sharpness", "fim_trace", "grad_cov_trace", "min_train_loss"),
    baseline: str = "umtg",
    significant_on: str = "both",
) -> Produced:
    from mtlscope.analysis.factors import method_changes as build
    from mtlscope.report.plots import smto_quadrants as draw

    changes = build(results, baseline)
    present = set(changes["factor"]) if not changes.empty else set()
    files: list[Path] = []
    notes = []
    for factor in factors:
        if factor not in present:
            notes.append(f"{factor}: no values in both the baseline and another method's runs")
            continue
        files += draw(changes, factor, _figure_path(directory, f"{name}-{factor}"), significant_on=significant_on)
    if not files:
        raise ValueError(f"no factor of {', '.join(factors)} was measured in the method runs")
    return Produced(f"SMTO quadrants vs {baseline}: {', '.join(factors)}", files, notes=notes)


# -- main paper: gradient conflict (Figs. 5-6) ----------------------------------------------------------------


def _conflict(results: RunResults, target: str | Sequence[str] | None, designated_only: bool) -> pd.DataFrame:
    """``conflict_table`` rows of the ``target`` tasks (None: all); with ``designated_only`` only the rows
    whose target is the run's first task — the target of an ``auxiliary_sets`` sweep, which lists it first —
    so that each target's points are its own auxiliary sets, not runs where it was another target's auxiliary."""
    from mtlscope.analysis.conflict import conflict_table

    table = conflict_table(results)
    if target is not None:
        targets = [target] if isinstance(target, str) else list(target)
        table = table[table["target"].isin(targets)]
    if designated_only:
        table = table[table["tasks"].astype(str).str.split("+").str[0] == table["target"]]
    if table.empty:
        raise ValueError("no multi-task runs with these targets (conflict_table is empty)")
    return table


@OUTPUTS.register("conflict_table", "main paper Figs. 5-6 (tables): similarity vs factors, Pearson r and p")
def conflict_table(
    results: RunResults,
    directory: Path,
    name: str,
    *,
    target: str | Sequence[str] | None = None,
    designated_only: bool = False,
    average_seeds: bool = False,
) -> Produced:
    from mtlscope.analysis.conflict import conflict_correlations

    table = _conflict(results, target, designated_only)
    files = _table(directory, name, table, "Conflict: one row per (multi-task run, target task)")
    correlations = conflict_correlations(table, average_seeds=average_seeds)
    title = "Correlation of the mean gradient similarity to the UMTG with each factor and with generalization"
    files += _table(directory, f"{name}-correlations", correlations, title)
    return Produced(title, files, correlations)


@OUTPUTS.register("similarity_scatter", "main paper Figs. 5-6: a factor or generalization vs gradient similarity")
def similarity_scatter(
    results: RunResults,
    directory: Path,
    name: str,
    *,
    quantities: Sequence[str] = ("fim_trace", "sharpness", "grad_cov_trace", "generalization"),
    target: str | Sequence[str] | None = None,
    designated_only: bool = False,
) -> Produced:
    from mtlscope.report.plots import similarity_scatter as draw

    table = _conflict(results, target, designated_only)
    files: list[Path] = []
    for quantity in quantities:
        files += draw(table, quantity, _figure_path(directory, f"{name}-{quantity}"))
    return Produced(f"Gradient similarity vs {', '.join(quantities)}", files)


# -- temperature paper (Figs. 1-4) ----------------------------------------------------------------------------


@OUTPUTS.register("temperature_table", "temperature paper Figs. 2-4 (table): generalization per temperature")
def temperature_table(results: RunResults, directory: Path, name: str, *, metric: str | None = None) -> Produced:
    from mtlscope.analysis.temperature import temperature_table as build

    table = build(results, metric)
    title = "Generalization by temperature T = lr / B: mean and std over seeds, per variant and task (and the mean)"
    return _tabled(directory, name, table, title)


@OUTPUTS.register("best_temperatures", "temperature paper Fig. 3: each task's best temperature per variant")
def best_temperatures(results: RunResults, directory: Path, name: str, *, metric: str | None = None) -> Produced:
    from mtlscope.analysis.temperature import best_temperatures as best
    from mtlscope.analysis.temperature import temperature_table as build

    table = best(build(results, metric))
    title = "Best temperature of each task (and of the task mean) per variant"
    return _tabled(directory, name, table, title)


@OUTPUTS.register("method_vs_baseline_by_temperature", "temperature paper Figs. 2c and 4: SMTOs minus UMTG per T")
def method_vs_baseline_by_temperature(
    results: RunResults, directory: Path, name: str, *, baseline: str = "umtg", metric: str | None = None
) -> Produced:
    from mtlscope.analysis.temperature import method_vs_baseline_by_temperature as compare
    from mtlscope.analysis.temperature import temperature_table as build

    table = compare(build(results, metric), baseline)
    title = f"Each method minus {baseline} at the same temperature and loss scale (2-std significance)"
    return _tabled(directory, name, table, title)


@OUTPUTS.register("temperature_curves", "temperature paper Figs. 2-4: generalization vs temperature")
def temperature_curves(
    results: RunResults, directory: Path, name: str, *, task: str = "mean", metric: str | None = None
) -> Produced:
    from mtlscope.analysis.temperature import temperature_table as build
    from mtlscope.report.plots import temperature_curves as draw

    files = draw(build(results, metric), _figure_path(directory, name), task)
    return Produced(f"Generalization vs temperature ({task})", files)


# -- transference (Fifty et al. 2020) -------------------------------------------------------------------------


def _affinity(results: RunResults, kind: str) -> pd.DataFrame:
    from mtlscope.analysis.affinity import affinity_matrix

    runs = results.runs[(results.runs["status"] == "completed") & (results.runs["num_tasks"] > 1)]
    records = results.records[results.records["run_id"].isin(set(runs["run_id"]))]
    return affinity_matrix(records, kind=kind)


def _window_start(wins: pd.DataFrame) -> list[str]:
    return ["window_start"] if wins["window_start"].notna().any() else []


@OUTPUTS.register("affinity_matrix", "Fifty et al. §3: the inter-task affinity matrix (mean over training, runs)")
def affinity_matrix(
    results: RunResults,
    directory: Path,
    name: str,
    *,
    affinity: str = "affinity_overall",
    normalize: bool = False,
) -> Produced:
    from mtlscope.analysis.grouping import nonpositive_self_affinities, normalize_by_self_affinity
    from mtlscope.report.plots import NOT_MEASURED_LABEL, affinity_heatmap

    matrix = _affinity(results, affinity)
    label, notes, nan_label = "raw", [], NOT_MEASURED_LABEL
    if normalize:
        blank = nonpositive_self_affinities(matrix)
        matrix = normalize_by_self_affinity(matrix, nonpositive="blank")
        label = "normalized by the target's self-affinity"
        if blank:
            values = ", ".join(f"{task} {value:.3g}" for task, value in blank.items())
            notes.append(
                f"target columns left blank (NaN): their self-affinity is <= 0, no scale to normalize by ({values}); "
                "see the raw matrix"
            )
            nan_label = "grey: not measured, or the target's self-affinity is <= 0 (not normalized)"
    files = affinity_heatmap(
        matrix, _figure_path(directory, name), title=f"Inter-task affinity ({affinity}, {label})", nan_label=nan_label
    )
    table = matrix.reset_index()
    table.columns.name = None
    title = f"Inter-task affinity A[source, target] ({affinity}, {label}), mean over training and runs"
    files += _table(directory, name, table, title)
    return Produced(title, files, table, notes)


def task_groupings(
    results: RunResults, splits: Sequence[int], affinity: str = "affinity_overall", singleton: str | float = 0.0
) -> tuple[pd.DataFrame, dict[int, Grouping]]:
    """The affinity matrix of the multi-task runs of ``results`` (NaN as 0) and ``group_tasks``' best grouping
    for each split budget: what ``task_grouping`` shows and what a derived stage trains
    (``mtlscope.reproduce.stages``)."""
    from mtlscope.analysis.grouping import group_tasks

    matrix = _affinity(results, affinity).fillna(0.0)
    return matrix, {int(count): group_tasks(matrix, int(count), singleton=singleton) for count in splits}


@OUTPUTS.register("task_grouping", "Fifty et al. §5.1, Fig. 4 and Table 6: the best task grouping per split count")
def task_grouping(
    results: RunResults,
    directory: Path,
    name: str,
    *,
    splits: Sequence[int] = (2, 3),
    affinity: str = "affinity_overall",
    singleton: str | float = 0.0,
) -> Produced:
    from mtlscope.report.plots import grouping_diagram

    _, groupings = task_groupings(results, splits, affinity, singleton)
    rows = []
    files: list[Path] = []
    for count, grouping in groupings.items():
        files += grouping_diagram(grouping, _figure_path(directory, f"{name}-{count}"))
        rows.append(
            {
                "splits": count,
                "groups": " ".join("{" + ", ".join(group) + "}" for group in grouping.groups),
                "score": grouping.score,
            }
        )
    table = pd.DataFrame(rows)
    title = "Best grouping of the tasks into at most `splits` groups by total inter-task affinity"
    files += _table(directory, name, table, title)
    return Produced(title, files, table)


@OUTPUTS.register(
    "grouping_evaluation", "Fifty et al. Fig. 4, Tables 6-7: each budget's trained groups, each task served by one"
)
def grouping_evaluation(
    results: RunResults,
    directory: Path,
    name: str,
    *,
    groupings: list[dict[str, Any]] | None = None,
    metric: str = "loss",
    aggregate: Literal["sum", "mean"] = "sum",
    serve: Literal["validation", "grouping"] = "validation",
    top: Annotated[int, Field(ge=1)] = 1,
    label: str = "transference",
    reference: dict[str, dict[int, float]] | None = None,
) -> Produced:
    """``groupings``: ``[{splits, groups, served_by}]``; in a derived stage, the stage's grouping fills it."""
    from mtlscope.analysis.grouping_evaluation import (
        budget_groupings,
        evaluate_groupings,
        reference_rows,
        run_task_values,
    )
    from mtlscope.analysis.transfer import metric_direction
    from mtlscope.report.plots import grouping_bars

    if groupings is None:
        raise ValueError("groupings: no groups to evaluate (give them, or use the output in a stage with from:)")
    budgets = budget_groupings(groupings)
    values = run_task_values(results, metric, top)
    if values.empty:
        raise ValueError(f"no completed run has validation and test {metric!r} records")
    first = values.iloc[0]
    higher = metric_direction(results, str(first["run_id"]), str(first["task"]), metric)
    table, served = evaluate_groupings(
        values, budgets, higher_is_better=higher, aggregate=aggregate, serve=serve, label=label
    )
    table.insert(1, "source", "measured")
    if reference:
        references = reference_rows(reference, [budget.splits for budget in budgets])
        references.insert(1, "source", "reference")
        table = pd.concat([table, references], ignore_index=True)
    measure = f"{'total' if aggregate == 'sum' else 'mean'} test {metric} over the tasks"
    checkpoints = "the best validation checkpoint" if top == 1 else f"the {top} best validation checkpoints"
    title = (
        f"Trained groupings per split budget: {measure} ({checkpoints} of each run, mean ± std over seeds), each task "
        f"served by {'its best group on validation' if serve == 'validation' else 'the group the selection assigned'}"
    )
    files = grouping_bars(table, _figure_path(directory, name), measure, title=f"{label}: {measure}")
    files += _table(directory, name, table, title)
    served_title = f"Which group serves each task, per split budget: validation and test {metric} (means over seeds)"
    files += _table(directory, f"{name}-served", served, served_title)
    return Produced(title, files, table)


@OUTPUTS.register("generalization_table", "Fifty et al. Tables 2 and 5: test metric per method, with standard error")
def generalization_table(
    results: RunResults,
    directory: Path,
    name: str,
    *,
    by: Sequence[str] = ("variant",),
    metric: str | None = None,
    top: int = 10,
) -> Produced:
    from mtlscope.analysis.transfer import generalization_table as build

    table = build(results, tuple(by), metric, top)
    title = (
        f"Generalization per {', '.join(by)} and task: mean, std and standard error over seeds of the mean test "
        f"metric of the {top} best validation checkpoints"
    )
    return _tabled(directory, name, table, title)


@OUTPUTS.register("candidate_wins", "Fifty et al. §4: how often IT-MTL chose each candidate gradient")
def candidate_wins(results: RunResults, directory: Path, name: str, *, window: int | None = None) -> Produced:
    from mtlscope.analysis.itmtl import candidate_wins as build

    wins = build(results, window=window)
    if wins.empty:
        raise ValueError("no it_mtl candidate choices recorded (run method.name=it_mtl with diagnostics)")
    wins.insert(0, "variant", wins["run_id"].map(results.runs.set_index("run_id")["variant"]).astype(str))
    keys = ["variant", *_window_start(wins), "candidate", "label"]  # variants of it_mtl are kept apart
    table = wins.groupby(keys, sort=False, dropna=False).agg(wins=("wins", "sum"), steps=("steps", "sum"))
    table = table.reset_index()
    table["fraction"] = table["wins"] / table["steps"]
    title = "IT-MTL candidate wins summed over each variant's runs: fraction of steps each candidate was chosen"
    return _tabled(directory, name, table, title)


def build_output(kind: str, results: RunResults, directory: Path, name: str, options: dict[str, Any]) -> Produced:
    """Run the registered output ``kind`` (``ValueError`` when the runs cannot support it)."""
    return OUTPUTS.build(kind, results, directory, name, **options)
