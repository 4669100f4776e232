"""Figures (matplotlib, headless Agg backend).

``generalization_vs_loss``: the main paper's Figure 1 — a task's test metric against its full training
loss, one curve per variant. Checkpoints of every seed are placed in common geometric loss bins; the
curve is the mean over seeds of each seed's bin average and the band is ±2 standard deviations over seeds
(bins reached by only one seed are drawn without a band). The x axis is logarithmic and reversed, so
training proceeds from left to right.

``factors_vs_loss``: the main paper's Figure 3 — each trajectory probe (sharpness, Fisher trace, gradient
covariance trace, gradient similarity) of a task against its training loss, one panel per probe and one
curve per variant, binned the same way.

Both write a note under the plot (Figure 1) or in the panel (Figure 3) when a phase of the comparable-loss
analysis holds too few checkpoints to compare (``mtlscope.analysis.phases.phase_notes``), e.g. no checkpoint in
the early loss bins because the loss fell faster than checkpoints were taken (train with
``training.eval_every: log``).

``learning_curves``: the temperature paper's Figure 1 — the full training loss and the validation metric
against the epoch, one curve per variant (e.g. per loss scale C), mean ± 2 std over seeds, for one task or
averaged over each run's tasks.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from mtlscope.analysis.binning import assign_bins, bin_centers, geometric_edges
from mtlscope.analysis.trajectories import checkpoint_table
from mtlscope.runs.results import RunResults

STYLE: dict[str, Any] = {
    "figure.dpi": 110,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
}


def binned_curves(
    results: RunResults,
    task: str,
    metric: str,
    variants: Sequence[str] | None = None,
    bins: int = 25,
    value: str = "test",
    log_values: bool = False,
) -> pd.DataFrame:
    """Rows (variant, loss, mean, std, seeds) per loss bin, for ``task``: ``value`` is a column of
    ``checkpoint_table`` — ``test`` (``metric`` on test, the default), ``val``, or a probe value such as
    ``sharpness``. Checkpoints where ``value`` is missing are left out. With ``log_values`` the statistics
    are of log10 of the (positive) values."""
    runs = results.runs[
        (results.runs["status"] == "completed") & results.runs["tasks"].str.split("+").apply(lambda t: task in t)
    ]
    if variants is not None:
        runs = runs[runs["variant"].isin(variants)]
    runs = runs.sort_values(["num_tasks", "variant"], kind="stable")  # single-task reference first
    tables = {str(run_id): checkpoint_table(results.records, str(run_id), task, metric) for run_id in runs["run_id"]}
    losses = pd.concat([t["train_loss"] for t in tables.values()]) if tables else pd.Series(dtype=float)
    losses = losses[np.isfinite(losses) & (losses > 0)]
    if losses.empty or losses.max() <= losses.min():
        return pd.DataFrame(columns=["variant", "loss", "mean", "std", "seeds"])
    edges = geometric_edges(float(losses.max()), float(losses.min()), bins)
    centers = bin_centers(edges)
    rows = []
    for variant, group in runs.groupby("variant", sort=False):
        per_seed = []
        for run_id in group["run_id"]:
            table = tables[run_id]
            if value not in table:
                continue
            table = table.dropna(subset=[value]).assign(bin=lambda t: assign_bins(t["train_loss"], edges))
            values = np.log10(table[value].where(table[value] > 0)) if log_values else table[value]
            per_seed.append(values[table["bin"] > 0].groupby(table["bin"]).mean())
        if not per_seed:
            continue
        stacked = pd.concat(per_seed, axis=1)
        for bin_number, values in stacked.iterrows():
            present = values.dropna()
            rows.append(
                {
                    "variant": variant,
                    "loss": centers[int(str(bin_number)) - 1],
                    "mean": float(present.mean()),
                    "std": float(present.std(ddof=1)) if len(present) > 1 else float("nan"),
                    "seeds": len(present),
                }
            )
    return pd.DataFrame(rows)


def generalization_vs_loss(
    results: RunResults,
    task: str,
    path: str | Path,
    metric: str = "accuracy",
    variants: Sequence[str] | None = None,
) -> list[Path]:
    """Write Figure 1 for ``task`` to ``path`` (PNG) and a sibling SVG; returns the written paths. The notes of
    ``phase_notes`` (phases with too few checkpoints to compare at comparable loss) are written under the plot."""
    from mtlscope.analysis.phases import phase_notes

    curves = binned_curves(results, task, metric, variants)
    notes = phase_notes(results, task, "test")
    with plt.rc_context(STYLE):  # type: ignore[arg-type]
        text = _notes_text(notes, 95)
        lines = text.count("\n") + 1 if text else 0
        figure, axes = plt.subplots(figsize=(6.4, 4.2 + 0.16 * lines))
        _draw_curves(axes, curves)
        axes.set_xlabel(f"{task} full training loss (log scale; training proceeds left to right)")
        axes.set_ylabel(f"{task} test {metric}")
        axes.set_title(f"Generalization vs training loss: {task} (mean ± 2 std over seeds)")
        axes.legend(title="variant", fontsize="small")
        if not text:
            return _save(figure, path)
        figure.text(0.01, 0.01, text, fontsize=7, color=NOTE_COLOR, va="bottom", ha="left")
        figure.tight_layout(rect=(0, (0.16 * lines + 0.1) / (4.2 + 0.16 * lines), 1, 1))
        return _save(figure, path, layout=False)


#: The color of notes drawn on figures (phases with too few checkpoints).
NOTE_COLOR = "#a0322b"


def _notes_text(notes: Sequence[str], width: int) -> str:
    """``notes`` as "Note: ..." paragraphs wrapped at ``width`` characters ("" for none)."""
    return "\n".join(textwrap.fill(f"Note: {note}", width) for note in notes)


# probe value -> (axis label, log scale)
FACTOR_LABELS: dict[str, tuple[str, bool]] = {
    "sharpness": ("sharpness (adaptive worst-case l∞)", True),
    "fim_trace": ("Fisher information trace", True),
    "grad_cov_trace": ("gradient covariance trace", True),
    "grad_similarity": ("cosine(task gradient, UMTG)", False),
}


def factors_vs_loss(
    results: RunResults,
    task: str,
    path: str | Path,
    factors: Sequence[str] | None = None,
    variants: Sequence[str] | None = None,
) -> list[Path]:
    """Write Figure 3 for ``task`` (one panel per probe value in ``factors``, default: those of ``FACTOR_LABELS``)
    to ``path`` (PNG) and a sibling SVG; returns the written paths. A panel without data says which probe to
    run. Positive factors are drawn on a log scale with their bands in log space (geometric mean ×/÷
    exp(2 std of the log) over seeds), so a band never crosses zero. A panel whose factor has too few
    checkpoints in a phase to compare at comparable loss says so (``phase_notes``)."""
    from mtlscope.analysis.phases import MIN_CHECKPOINTS, phase_notes

    chosen = list(factors or FACTOR_LABELS)
    with plt.rc_context(STYLE):  # type: ignore[arg-type]
        columns = min(2, len(chosen))
        rows = (len(chosen) + columns - 1) // columns
        figure, grid = plt.subplots(rows, columns, figsize=(5.6 * columns, 3.6 * rows + 0.6), squeeze=False)
        colors: dict[str, Any] = {}
        for axes, factor in zip(grid.flat, chosen):
            label, log = FACTOR_LABELS.get(factor, (factor, False))
            curves = binned_curves(results, task, "loss", variants, value=factor)
            if curves.empty:
                probe = factor.split("/")[0]
                message = f"no {factor} records:\nrun with the '{probe}' probe"
                axes.text(0.5, 0.5, message, ha="center", va="center", transform=axes.transAxes)
            else:
                log = log and bool((curves["mean"] > 0).all())
                if log:
                    curves = binned_curves(results, task, "loss", variants, value=factor, log_values=True)
                _draw_curves(axes, curves, colors, log_values=log)
                if log:
                    axes.set_yscale("log")
                short = [note.split(" (fewer than")[0] for note in phase_notes(results, task, factor)]
                if short:
                    text = _notes_text(["; ".join(short) + f" (fewer than {MIN_CHECKPOINTS} to compare)"], 70)
                    axes.text(0.01, 0.02, text, fontsize=6, color=NOTE_COLOR, transform=axes.transAxes, va="bottom")
            axes.set_xlabel(f"{task} full training loss (log; training →)")
            axes.set_ylabel(label)
            axes.set_title(factor)
        for axes in list(grid.flat)[len(chosen) :]:
            axes.set_visible(False)
        handles = [plt.Line2D([], [], color=color, marker="o", markersize=3) for color in colors.values()]
        figure.legend(handles, list(colors), title="variant", loc="lower center", ncol=max(1, len(colors)))
        figure.suptitle(f"Trajectory factors vs training loss: {task} (mean ± 2 std over seeds)")
        figure.tight_layout(rect=(0, 0.08, 1, 1))
        return _save(figure, path, layout=False)


def learning_curve_table(
    results: RunResults, task: str | None = None, variants: Sequence[str] | None = None
) -> pd.DataFrame:
    """Rows (variant, panel, epoch, mean, std, seeds) behind ``learning_curves``: ``panel`` is ``train_loss``
    (the full training loss) or ``val`` (the validation primary metric) of ``task``, or with ``task=None`` their
    mean over each run's tasks, per checkpoint epoch; mean and sample std over the variant's completed runs."""
    from mtlscope.analysis.transfer import primary_metric

    runs = results.runs[results.runs["status"] == "completed"]
    if task is not None:
        runs = runs[runs["tasks"].astype(str).str.split("+").apply(lambda tasks: task in tasks)]
    if variants is not None:
        runs = runs[runs["variant"].isin(variants)]
    if runs.empty:
        where = f" training {task}" if task is not None else ""
        raise ValueError(f"no completed runs{where} to draw learning curves of")
    per_run = []
    for run in runs.itertuples():
        run_id = str(run.run_id)
        tasks = [task] if task is not None else str(run.tasks).split("+")
        tables = [checkpoint_table(results.records, run_id, t, primary_metric(results, run_id, t)) for t in tasks]
        both = pd.concat(tables).groupby("epoch")[["train_loss", "val"]].mean()
        both["variant"], both["run_id"] = str(run.variant), run_id
        per_run.append(both.reset_index())
    table = pd.concat(per_run).melt(
        id_vars=["variant", "run_id", "epoch"], value_vars=["train_loss", "val"], var_name="panel"
    )
    table = table.dropna(subset=["value"])
    grouped = table.groupby(["variant", "panel", "epoch"], sort=False)["value"]
    summary = grouped.agg(mean="mean", std="std", seeds="count").reset_index()
    order = {variant: index for index, variant in enumerate(dict.fromkeys(runs["variant"].astype(str)))}
    summary["position"] = summary["variant"].map(order)
    summary = summary.sort_values(["panel", "position", "epoch"], kind="stable").drop(columns="position")
    return summary.reset_index(drop=True)


def learning_curves(
    results: RunResults, path: str | Path, task: str | None = None, variants: Sequence[str] | None = None
) -> list[Path]:
    """Write the temperature paper's Figure 1 for ``task`` (None: the mean over each run's tasks) to ``path``
    (PNG) and a sibling SVG: full training loss (log scale) and validation metric against the epoch, one curve
    per variant, mean ± 2 std over seeds (``learning_curve_table``); returns the written paths."""
    curves = learning_curve_table(results, task, variants)
    name = task if task is not None else "mean over tasks"
    with plt.rc_context(STYLE):  # type: ignore[arg-type]
        figure, (loss_axes, val_axes) = plt.subplots(1, 2, figsize=(10.5, 4.2))
        cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        colors: dict[str, Any] = {}
        for axes, panel in ((loss_axes, "train_loss"), (val_axes, "val")):
            for variant, curve in curves[curves["panel"] == panel].groupby("variant", sort=False):
                color = colors.setdefault(str(variant), cycle[len(colors) % len(cycle)])
                epoch, mean, std = curve["epoch"], curve["mean"], curve["std"]
                axes.plot(epoch, mean, color=color, label=str(variant))
                banded = std.notna()
                low, high = (mean - 2 * std)[banded], (mean + 2 * std)[banded]
                if panel == "train_loss":
                    low = low.clip(lower=float(mean[mean > 0].min()) / 10 if (mean > 0).any() else 1e-12)
                axes.fill_between(epoch[banded], low, high, color=color, alpha=0.2, linewidth=0)
            axes.set_xlabel("epoch")
        loss_axes.set_yscale("log")
        loss_axes.set_ylabel(f"full training loss ({name}, log scale)")
        val_axes.set_ylabel(f"validation metric ({name})")
        val_axes.legend(title="variant", fontsize="small")
        figure.suptitle(f"Learning curves: {name} (mean ± 2 std over seeds)")
        return _save(figure, path)


def _draw_curves(
    axes: Any, curves: pd.DataFrame, colors: dict[str, Any] | None = None, log_values: bool = False
) -> None:
    """Mean ± 2 std per variant against the loss, on a reversed log x axis. ``colors`` keeps one color per
    variant across panels (filled in as variants appear); with ``log_values`` the curves hold statistics of
    log10 values and are drawn back on the original scale."""
    colors = {} if colors is None else colors
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for variant, curve in curves.groupby("variant", sort=False):
        color = colors.setdefault(str(variant), cycle[len(colors) % len(cycle)])
        curve = curve.sort_values("loss", ascending=False)
        mean, low, high = curve["mean"], curve["mean"] - 2 * curve["std"], curve["mean"] + 2 * curve["std"]
        if log_values:
            mean, low, high = 10**mean, 10**low, 10**high
        axes.plot(curve["loss"], mean, marker="o", markersize=3, color=color, label=str(variant))
        banded = curve["std"].notna()
        axes.fill_between(curve["loss"][banded], low[banded], high[banded], color=color, alpha=0.2, linewidth=0)
    axes.set_xscale("log")
    axes.invert_xaxis()


def _save(figure: Any, path: str | Path, layout: bool = True) -> list[Path]:
    if layout:
        figure.tight_layout()
    png = Path(path)
    svg = png.with_suffix(".svg")
    figure.savefig(png)
    figure.savefig(svg)
    plt.close(figure)
    return [png, svg]
