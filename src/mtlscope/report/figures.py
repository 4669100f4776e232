"""Figures (matplotlib, headless Agg backend).

``generalization_vs_loss``: the main paper's Figure 1 — a task's test metric against its full training
loss, one curve per variant. Checkpoints of every seed are placed in common geometric loss bins; the
curve is the mean over seeds of each seed's bin average and the band is ±2 standard deviations over seeds
(bins reached by only one seed are drawn without a band). The x axis is logarithmic and reversed, so
training proceeds from left to right.
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
    results: RunResults, task: str, metric: str, variants: Sequence[str] | None = None, bins: int = 25
) -> pd.DataFrame:
    """Rows (variant, loss, mean, std, seeds) of ``metric`` on test per loss bin, for ``task``."""
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
            table = table.assign(bin=assign_bins(table["train_loss"], edges))
            per_seed.append(table[table["bin"] > 0].groupby("bin")["test"].mean())
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
        axes.set_xlabel(f"{task} full training loss (log scale; training proceeds left to right)")
        axes.set_ylabel(f"{task} test {metric}")
        axes.set_title(f"Generalization vs training loss: {task} (mean ± 2 std over seeds)")
        axes.legend(title="variant", fontsize="small")
        figure.tight_layout()
        png = Path(path)
        svg = png.with_suffix(".svg")
        figure.savefig(png)
        figure.savefig(svg)
        plt.close(figure)
    return [png, svg]
