"""Figures (matplotlib, headless Agg backend).

``generalization_vs_loss``: the main paper's Figure 1 — a task's test metric against its full training
loss, one curve per variant. Checkpoints of every seed are placed in common geometric loss bins; the
curve is the mean over seeds of each seed's bin average and the band is ±2 standard deviations over seeds
(bins reached by only one seed are drawn without a band). The x axis is logarithmic and reversed, so
training proceeds from left to right.

``factors_vs_loss``: the main paper's Figure 3 — each trajectory probe (sharpness, Fisher trace, gradient
covariance trace, gradient similarity) of a task against its training loss, one panel per probe and one
curve per variant, binned the same way.
"""

from __future__ import annotations

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
) -> pd.DataFrame:
    """Rows (variant, loss, mean, std, seeds) per loss bin, for ``task``: ``value`` is a column of
    ``checkpoint_table`` — ``test`` (``metric`` on test, the default), ``val``, or a probe value such as
    ``sharpness``. Checkpoints where ``value`` is missing are left out."""
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
            per_seed.append(table[table["bin"] > 0].groupby("bin")[value].mean())
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
    """Write Figure 1 for ``task`` to ``path`` (PNG) and a sibling SVG; returns the written paths."""
    curves = binned_curves(results, task, metric, variants)
    with plt.rc_context(STYLE):  # type: ignore[arg-type]
        figure, axes = plt.subplots(figsize=(6.4, 4.2))
        _draw_curves(axes, curves)
        axes.set_xlabel(f"{task} full training loss (log scale; training proceeds left to right)")
        axes.set_ylabel(f"{task} test {metric}")
        axes.set_title(f"Generalization vs training loss: {task} (mean ± 2 std over seeds)")
        axes.legend(title="variant", fontsize="small")
        return _save(figure, path)


# probe value -> (axis label, log scale)
FACTORS: dict[str, tuple[str, bool]] = {
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
    """Write Figure 3 for ``task`` (one panel per probe value in ``factors``, default: those of ``FACTORS``
    that the runs recorded) to ``path`` (PNG) and a sibling SVG; returns the written paths. A panel without
    data says which probe to run."""
    chosen = list(factors or FACTORS)
    with plt.rc_context(STYLE):  # type: ignore[arg-type]
        columns = min(2, len(chosen))
        rows = (len(chosen) + columns - 1) // columns
        figure, grid = plt.subplots(rows, columns, figsize=(5.6 * columns, 3.8 * rows), squeeze=False)
        for axes, factor in zip(grid.flat, chosen):
            label, log = FACTORS.get(factor, (factor, False))
            curves = binned_curves(results, task, "loss", variants, value=factor)
            if curves.empty:
                axes.text(
                    0.5,
                    0.5,
                    f"no {factor} records:\nrun with the '{factor.split('/')[0]}' probe",
                    ha="center",
                    va="center",
                    transform=axes.transAxes,
                )
            else:
                _draw_curves(axes, curves)
                if log and bool((curves["mean"] > 0).all()):
                    axes.set_yscale("log")
                axes.legend(title="variant", fontsize="x-small")
            axes.set_xlabel(f"{task} full training loss (log; training →)")
            axes.set_ylabel(label)
            axes.set_title(factor)
        for axes in list(grid.flat)[len(chosen) :]:
            axes.set_visible(False)
        figure.suptitle(f"Trajectory factors vs training loss: {task} (mean ± 2 std over seeds)")
        return _save(figure, path)


def _draw_curves(axes: Any, curves: pd.DataFrame) -> None:
    """Mean ± 2 std per variant against the loss, on a reversed log x axis."""
    for variant, curve in curves.groupby("variant", sort=False):
        curve = curve.sort_values("loss", ascending=False)
        (line,) = axes.plot(curve["loss"], curve["mean"], marker="o", markersize=3, label=str(variant))
        band = curve.dropna(subset=["std"])
        axes.fill_between(
            band["loss"],
            band["mean"] - 2 * band["std"],
            band["mean"] + 2 * band["std"],
            color=line.get_color(),
            alpha=0.2,
            linewidth=0,
        )
    axes.set_xscale("log")
    axes.invert_xaxis()


def _save(figure: Any, path: str | Path) -> list[Path]:
    figure.tight_layout()
    png = Path(path)
    svg = png.with_suffix(".svg")
    figure.savefig(png)
    figure.savefig(svg)
    plt.close(figure)
    return [png, svg]
