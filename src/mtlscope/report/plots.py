"""Plots of analysis outputs (matplotlib, headless Agg backend). Each function takes the output of an analysis
function (not raw results), writes a PNG to ``path`` and an SVG beside it, and returns both paths; an empty
input raises ``ValueError``.

- ``smto_quadrants``: the main paper's Figure 4 (Mueller, Dredze & Andrews, TMLR 2025) — per (task, variant),
  the % change over the UMTG of a factor (x) and of generalization (y), from ``analysis.factors.method_changes``.
- ``similarity_scatter``: Figures 5–6 — a quantity of each (run, target task) against the target's gradient
  similarity with the UMTG, with Pearson's r and the least-squares line per target, from
  ``analysis.conflict.conflict_table``.
- ``temperature_curves``: Figures 1–3 of the temperature paper (OPT 2022) — generalization against the
  temperature ``T = lr / B`` per (variant, method, loss scale), ±2 std over seeds, the best temperature starred,
  from ``analysis.temperature.temperature_table``.
- ``affinity_heatmap``: ``A[source, target]`` (Fifty et al., 2020) from ``analysis.affinity.affinity_matrix``.
- ``grouping_diagram``: the groups of ``analysis.grouping.group_tasks`` and which group serves each task.
- ``grouping_bars``: Fifty et al.'s Fig. 4 — each split budget's value (e.g. the total test loss) as bars, one
  per grouping (measured, reference numbers), from ``analysis.grouping_evaluation.evaluate_groupings``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import LogFormatter

from mtlscope.analysis.conflict import Correlation, correlation
from mtlscope.analysis.factors import METHOD_CHANGE_COLUMNS
from mtlscope.analysis.grouping import Grouping
from mtlscope.analysis.temperature import MEAN_TASK, TEMPERATURE_COLUMNS, best_temperatures
from mtlscope.report.figures import FACTOR_LABELS, STYLE, _save

METHOD_MARKERS: tuple[str, ...] = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "p", "h", "8")
SIGNIFICANCE: tuple[str, ...] = ("both", "either", "factor", "generalization")
GENERALIZATION_LABEL = "generalization: test metric,\nmean of the 10 best validation checkpoints"
ANNOTATE_MAX_TASKS = 12
_IMPROVES, _WORSENS = "#dff3df", "#fbe2e2"  # light green / light red
_SERVED, _MEMBER = "#3b75af", "0.87"
_NOT_MEASURED = "0.8"
#: The legend of the affinity heatmap's grey cells (drawn when there are any).
NOT_MEASURED_LABEL = "grey: not measured (no run trained both tasks with the affinity probe)"
_GRIDLESS: dict[str, Any] = {**STYLE, "axes.grid": False}


def smto_quadrants(
    changes: pd.DataFrame,
    factor: str,
    path: str | Path,
    generalization: str = "generalization",
    significant_on: str = "both",
    symlog: bool | None = None,
) -> list[Path]:
    """Figure 4 of the main paper: one point per (task, task set, variant) of ``changes`` (a ``method_changes``
    table) at x = % change of ``factor`` over the baseline method and y = % change of ``generalization``.

    The half-planes where generalization improves (y > 0; the primary metrics, accuracy and r2, are higher-is-
    better) and worsens are shaded green and red. Color = task, marker = variant (two variants of one method,
    e.g. ``pcgrad`` with two option values, are two markers); a point is filled when its
    change is significant by the 2-std rule on ``significant_on``: ``"both"`` axes (default), ``"either"``,
    ``"factor"`` or ``"generalization"``, hollow otherwise. ``symlog``: a symmetric-log x axis (None: when some
    |x| exceeds 1000 %). Points with a NaN change (baseline mean 0) are left out. Mix task sets with care:
    points of one task in several task sets share color and marker.
    """
    if changes.empty:
        raise ValueError("changes is empty: method_changes found no method and baseline runs to compare")
    _require(changes, METHOD_CHANGE_COLUMNS, "changes", "method_changes")
    if significant_on not in SIGNIFICANCE:
        raise ValueError(f"significant_on must be one of {', '.join(SIGNIFICANCE)}, got {significant_on!r}")
    known = list(dict.fromkeys(changes["factor"].astype(str)))
    for name in (factor, generalization):
        if name not in known:
            raise ValueError(f"{name!r} is not a factor of changes; factors: {', '.join(known)}")
    keys = ["task", "tasks", "variant"]
    columns = [*keys, "pct_change", "significant"]
    xs = changes.loc[changes["factor"] == factor, columns]
    ys = changes.loc[changes["factor"] == generalization, columns]
    points = xs.merge(ys, on=keys, suffixes=("_x", "_y"))
    points = points[
        np.isfinite(points["pct_change_x"].astype(float)) & np.isfinite(points["pct_change_y"].astype(float))
    ]
    if points.empty:
        raise ValueError(f"no (task, variant) has finite % changes of both {factor!r} and {generalization!r}")
    sig_x, sig_y = points["significant_x"].astype(bool), points["significant_y"].astype(bool)
    filled = {"both": sig_x & sig_y, "either": sig_x | sig_y, "factor": sig_x, "generalization": sig_y}[significant_on]
    baseline = ", ".join(dict.fromkeys(changes["baseline"].astype(str)))
    x_values, y_values = points["pct_change_x"].astype(float), points["pct_change_y"].astype(float)
    if symlog is None:
        symlog = bool(x_values.abs().max() > 1000)
    with plt.rc_context(STYLE):  # type: ignore[arg-type]
        figure, axes = plt.subplots(figsize=(8.4, 5.4))
        tasks = list(dict.fromkeys(points["task"].astype(str)))
        variants = list(dict.fromkeys(points["variant"].astype(str)))
        colors = _colors(tasks)
        markers = {variant: METHOD_MARKERS[i % len(METHOD_MARKERS)] for i, variant in enumerate(variants)}
        for task, variant, x, y, full in zip(
            points["task"].astype(str), points["variant"].astype(str), x_values, y_values, filled
        ):
            color = colors[task]
            axes.scatter(
                x,
                y,
                marker=markers[variant],
                s=60,
                facecolors=color if full else "white",
                edgecolors=color,
                linewidths=1.6,
                zorder=3,
            )
        x_low, x_high = _padded(x_values)
        y_low, y_high = _padded(y_values, 0.2)
        if symlog:
            axes.set_xscale("symlog", linthresh=10.0)
        axes.set_xlim(x_low, x_high)
        axes.set_ylim(y_low, y_high)
        axes.axhspan(0, y_high, color=_IMPROVES, zorder=0, linewidth=0)
        axes.axhspan(y_low, 0, color=_WORSENS, zorder=0, linewidth=0)
        axes.axhline(0, color="0.35", linestyle="--", linewidth=1, zorder=1)
        axes.axvline(0, color="0.35", linestyle="--", linewidth=1, zorder=1)
        corners = {
            (0.02, 0.98, "left", "top"): f"generalization improves,\nlower {factor}",
            (0.98, 0.98, "right", "top"): f"generalization improves,\nhigher {factor}",
            (0.02, 0.02, "left", "bottom"): f"generalization worsens,\nlower {factor}",
            (0.98, 0.02, "right", "bottom"): f"generalization worsens,\nhigher {factor}",
        }
        for (x, y, ha, va), text in corners.items():
            axes.text(x, y, text, transform=axes.transAxes, ha=ha, va=va, fontsize="x-small", color="0.3", zorder=2)
        handles: list[Any] = [_header()]
        labels = ["task (color)"]
        for task in tasks:
            handles.append(Line2D([], [], linestyle="none", marker="o", color=colors[task], markersize=7))
            labels.append(task)
        handles.append(_header())
        labels.append("variant (marker)")
        for variant in variants:
            handles.append(Line2D([], [], linestyle="none", marker=markers[variant], color="0.2", markersize=7))
            labels.append(variant)
        hollow = Line2D([], [], linestyle="none", marker="o", markerfacecolor="white", color="0.2", markersize=7)
        handles += [_header(), Line2D([], [], linestyle="none", marker="o", color="0.2", markersize=7), hollow]
        labels += [f"2-std rule ({significant_on})", "filled: significant", "hollow: not significant"]
        legend = axes.legend(
            handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small", frameon=False
        )
        for handle, entry in zip(handles, legend.get_texts()):
            if handle.get_marker() == "none":
                entry.set_fontweight("bold")
        scale = " (symlog scale)" if symlog else ""
        axes.set_xlabel(f"% change in {factor} vs {baseline}{scale}")
        axes.set_ylabel(f"% change in {generalization} vs {baseline}")
        axes.set_title(f"Change over {baseline}: {factor} vs {generalization} (mean over seeds)")
        return _save(figure, path)


def similarity_scatter(
    table: pd.DataFrame, quantity: str, path: str | Path, target: str | Sequence[str] | None = None
) -> list[Path]:
    """Figures 5–6 of the main paper: for each row of ``table`` (a ``conflict_table``) with target in ``target``
    (one task, several, or None for all), x = ``similarity`` (mean cosine of the target's gradient with the UMTG
    over training) and y = ``quantity`` (a factor column or ``generalization``); one color per target, its
    least-squares line and, in a text box, Pearson's ``r``, ``p`` and ``n`` (``analysis.conflict.correlation``
    on the finite pairs, as ``conflict_correlations``). A factor whose values are all positive is drawn on a log
    y axis (the line, fitted on the raw values, is then a curve). Mix no methods: filter the table first.
    """
    if table.empty:
        raise ValueError("table is empty: conflict_table found no completed multi-task runs")
    _require(table, ("target", "similarity", quantity), "table", "conflict_table")
    present = list(dict.fromkeys(table["target"].astype(str)))
    if target is None:
        targets = present
    else:
        targets = [target] if isinstance(target, str) else [str(t) for t in target]
        absent = [t for t in targets if t not in present]
        if absent:
            raise ValueError(f"target: {absent[0]!r} is not a target in the table ({', '.join(present)})")
    rows = table[table["target"].astype(str).isin(targets)]
    x_all = rows["similarity"].to_numpy(dtype=float)
    y_all = rows[quantity].to_numpy(dtype=float)
    finite = np.isfinite(x_all) & np.isfinite(y_all)
    if not finite.any():
        raise ValueError(f"no point has a finite similarity and {quantity}: run with the 'grad_similarity' probe")
    log = quantity != "generalization" and bool((y_all[finite] > 0).all())
    colors = _colors(targets)
    with plt.rc_context(STYLE):  # type: ignore[arg-type]
        figure, axes = plt.subplots(figsize=(8.0, 4.8))
        lines = []
        for name in targets:
            points = rows[rows["target"].astype(str) == name]
            xs, ys = points["similarity"].to_numpy(dtype=float), points[quantity].to_numpy(dtype=float)
            result = correlation(xs, ys)
            keep = np.isfinite(xs) & np.isfinite(ys)
            xs, ys = xs[keep], ys[keep]
            color = colors[name]
            axes.scatter(xs, ys, color=color, s=30, alpha=0.85, edgecolors="white", linewidths=0.5, label=name)
            if len(xs) and math.isfinite(result.slope):
                grid = np.linspace(xs.min(), xs.max(), 100)
                fit = result.slope * grid + result.intercept
                if log:
                    fit = np.where(fit > 0, fit, np.nan)
                axes.plot(grid, fit, color=color, linewidth=1.6)
            lines.append(f"{name}: {_correlation_text(result)}")
        if log:
            axes.set_yscale("log")
            axes.yaxis.set_major_formatter(LogFormatter())
            axes.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.4)))
        axes.legend(title="target task", loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small")
        axes.text(
            1.02,
            0.0,
            "Pearson (line: least squares)\n" + "\n".join(lines),
            transform=axes.transAxes,
            ha="left",
            va="bottom",
            fontsize="x-small",
            bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": "0.7"},
        )
        label = GENERALIZATION_LABEL if quantity == "generalization" else FACTOR_LABELS.get(quantity, (quantity,))[0]
        axes.set_xlabel("similarity: mean cos(target gradient, UMTG) over training (−1 to 1)")
        axes.set_ylabel(f"{label}{' (log scale)' if log else ''}")
        methods = _distinct(rows, "method")
        suffix = f" ({'method' if len(methods) == 1 else 'methods'} {', '.join(methods)})" if methods else ""
        axes.set_title(f"{quantity} vs similarity with the UMTG{suffix}")
        return _save(figure, path)


def temperature_curves(table: pd.DataFrame, path: str | Path, task: str = MEAN_TASK) -> list[Path]:
    """Figures 1–3 of the temperature paper: the generalization of ``task`` (default: the mean over tasks)
    against the temperature ``T = lr / B`` on a log axis, one line per (variant, task set, method, loss scale) of
    ``table`` (a ``temperature_table``), a band of ±2 std over seeds, and a star at each line's best temperature
    (``analysis.temperature.best_temperatures``). Rows with a NaN mean or a non-positive temperature are left out.
    """
    if table.empty:
        raise ValueError("table is empty: temperature_table found no completed runs with a temperature")
    _require(table, TEMPERATURE_COLUMNS, "table", "temperature_table")
    tasks = list(dict.fromkeys(table["task"].astype(str)))
    if task not in tasks:
        raise ValueError(f"task {task!r} is not in the table; tasks: {', '.join(tasks)}")
    rows = table[table["task"].astype(str) == task]
    temperature, mean = rows["temperature"].astype(float), rows["mean"].astype(float)
    rows = rows[np.isfinite(temperature) & (temperature > 0) & np.isfinite(mean)]
    if rows.empty:
        raise ValueError(f"task {task!r} has no finite generalization at a positive temperature")
    keys = ["variant", "kind", "tasks", "method", "loss_scale"]
    groups = list(rows.groupby(keys, sort=False, dropna=False))
    varying = [key for key in ("tasks", "method", "loss_scale") if rows[key].astype(str).nunique(dropna=False) > 1]
    metrics = list(dict.fromkeys(rows["metric"].astype(str)))
    metric = metrics[0] if len(metrics) == 1 else "metric"
    with plt.rc_context(STYLE):  # type: ignore[arg-type]
        figure, axes = plt.subplots(figsize=(7.6, 4.6))
        cycle = _colors([str(i) for i in range(len(groups))])
        handles: list[Any] = []
        labels: list[str] = []
        for number, (key, group) in enumerate(groups):
            values = dict(zip(keys, key))
            color = cycle[str(number)]
            group = group.sort_values("temperature")
            ts, ms = group["temperature"].astype(float), group["mean"].astype(float)
            ss = group["std"].astype(float)
            (line,) = axes.plot(ts, ms, marker="o", markersize=3.5, color=color)
            banded = np.isfinite(ss)
            axes.fill_between(ts[banded], (ms - 2 * ss)[banded], (ms + 2 * ss)[banded], color=color, alpha=0.18)
            best = best_temperatures(group)
            if not best.empty:
                axes.plot(
                    float(best["temperature"].iloc[0]),
                    float(best["mean"].iloc[0]),
                    marker="*",
                    markersize=15,
                    color=color,
                    markeredgecolor="black",
                    markeredgewidth=0.8,
                    linestyle="none",
                    zorder=4,
                )
            handles.append(line)
            labels.append(_line_label(values, varying))
        star = Line2D([], [], marker="*", markersize=12, color="0.6", markeredgecolor="black", linestyle="none")
        handles.append(star)
        labels.append("best temperature")
        axes.set_xscale("log")
        if len(handles) <= 6:
            axes.legend(handles, labels, title="variant", fontsize="small", loc="best")
        else:
            axes.legend(handles, labels, title="variant", fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1))
        axes.set_xlabel("temperature T = learning rate / batch size (log scale)")
        if task == MEAN_TASK:
            axes.set_ylabel(f"generalization: test {metric}, mean over tasks")
        else:
            axes.set_ylabel(f"{task} generalization: test {metric}")
        name = "mean over tasks" if task == MEAN_TASK else task
        axes.set_title(f"Generalization vs temperature: {name} (mean ± 2 std over seeds)")
        return _save(figure, path)


def affinity_heatmap(
    matrix: pd.DataFrame | np.ndarray, path: str | Path, title: str | None = None, nan_label: str = NOT_MEASURED_LABEL
) -> list[Path]:
    """``A[source, target]`` (an ``affinity_matrix``: index = source tasks, columns = target tasks) as a heatmap
    with a diverging colormap centered at 0 (blue: a step on the source lowers the target's loss; red: raises
    it), NaN cells grey with a legend below saying what they are (``nan_label``; by default
    ``NOT_MEASURED_LABEL``: no run trained both tasks with the affinity probe), the diagonal (self-affinity)
    outlined, and the values written in the cells when there are at most ``ANNOTATE_MAX_TASKS`` tasks. Very small
    or large affinities are shown scaled by a power of ten, stated on the colorbar.
    """
    frame = matrix if isinstance(matrix, pd.DataFrame) else pd.DataFrame(np.asarray(matrix, dtype=float))
    if frame.size == 0:
        raise ValueError("matrix is empty: affinity_matrix found no affinities")
    values = frame.to_numpy(dtype=float)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        raise ValueError("matrix has no finite affinity")
    factor, exponent = _power_of_ten(finite)
    shown = values / factor
    limit = float(np.abs(shown[np.isfinite(shown)]).max()) or 1.0
    sources, targets = [str(s) for s in frame.index], [str(t) for t in frame.columns]
    count = max(len(sources), len(targets))
    with plt.rc_context(_GRIDLESS):  # type: ignore[arg-type]
        width = min(10.0, max(5.6, 0.62 * len(targets) + 3.2))
        height = min(8.5, max(4.4, 0.5 * len(sources) + 2.4))
        figure, axes = plt.subplots(figsize=(width, height))
        colormap = plt.get_cmap("RdBu").with_extremes(bad=_NOT_MEASURED)
        image = axes.imshow(np.ma.masked_invalid(shown), cmap=colormap, vmin=-limit, vmax=limit)
        if count <= ANNOTATE_MAX_TASKS:
            size = 9 if count <= 6 else 7
            for row, column in np.ndindex(shown.shape):
                value = float(shown[row, column])
                if not math.isfinite(value):
                    continue
                color = "white" if abs(value) > 0.6 * limit else "black"
                axes.text(column, row, _short(value), ha="center", va="center", fontsize=size, color=color)
        for index, name in enumerate(sources):
            if name in targets:
                column = targets.index(name)
                box = Rectangle((column - 0.5, index - 0.5), 1, 1, fill=False, edgecolor="0.15", linewidth=1.2)
                axes.add_patch(box)
        rotate = count > 6 or max(len(t) for t in targets) > 8
        axes.set_xticks(range(len(targets)), targets, rotation=45 if rotate else 0, ha="right" if rotate else "center")
        axes.set_yticks(range(len(sources)), sources)
        axes.set_xlabel("target task (loss measured)")
        axes.set_ylabel("source task (gradient step on)")
        scale = f" (×1e{exponent})" if exponent else ""
        colorbar = figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
        colorbar.set_label(f"affinity Z (source → target){scale}")
        axes.set_title(
            title or "Inter-task affinity A[source, target]\n(> 0: a step on the source lowers the target's loss)"
        )
        if not np.isfinite(values).all():  # below everything, so that rotated task names never cover it
            grey = Patch(facecolor=_NOT_MEASURED, edgecolor="0.55", label=nan_label)
            figure.tight_layout(rect=(0, 0.07, 1, 1))
            figure.legend(handles=[grey], loc="lower center", fontsize="small", frameon=False)
            return _save(figure, path, layout=False)
        return _save(figure, path)


def grouping_diagram(grouping: Grouping, path: str | Path) -> list[Path]:
    """The groups of ``grouping`` (a ``group_tasks`` result) as rows and the tasks as columns: a cell is a member
    of the group, filled with the task's score where that group serves the task (``served_by``) and grey where
    another group does. The title gives the grouping's score (mean over tasks of their scores) and its number
    of groups. Very small or large scores are shown scaled by a power of ten, stated under the axis.
    """
    if not grouping.groups:
        raise ValueError("grouping has no groups")
    tasks = list(dict.fromkeys([*grouping.task_scores, *(task for group in grouping.groups for task in group)]))
    scores = np.array([grouping.task_scores.get(task, math.nan) for task in tasks], dtype=float)
    finite = scores[np.isfinite(scores)]
    factor, exponent = _power_of_ten(finite) if finite.size else (1.0, 0)
    count, rows = len(tasks), len(grouping.groups)
    with plt.rc_context(_GRIDLESS):  # type: ignore[arg-type]
        figure, axes = plt.subplots(figsize=(max(7.0, 0.6 * count + 5.0), max(3.0, 0.55 * rows + 2.2)))
        size = 9 if count <= 8 else 7.5
        for row, group in enumerate(grouping.groups):
            for column, task in enumerate(tasks):
                if task not in group:
                    continue
                served = tuple(grouping.served_by.get(task, ())) == tuple(group)
                face = _SERVED if served else _MEMBER
                cell = Rectangle((column - 0.45, row - 0.4), 0.9, 0.8, facecolor=face, edgecolor="0.55", linewidth=0.6)
                axes.add_patch(cell)
                if served and math.isfinite(scores[column]):
                    text = _short(float(scores[column]) / factor)
                    axes.text(column, row, text, ha="center", va="center", fontsize=size, color="white")
        axes.set_xlim(-0.5, count - 0.5)
        axes.set_ylim(rows - 0.5, -0.5)
        rotate = count > 6 or max(len(t) for t in tasks) > 8
        axes.set_xticks(range(count), tasks, rotation=45 if rotate else 0, ha="right" if rotate else "center")
        names = [f"group {i + 1} ({len(g)} task{'s' if len(g) != 1 else ''})" for i, g in enumerate(grouping.groups)]
        axes.set_yticks(range(rows), names)
        axes.tick_params(length=0)
        for side in ("top", "right", "bottom", "left"):
            axes.spines[side].set_visible(False)
        scale = f" (scores ×1e{exponent})" if exponent else ""
        axes.set_xlabel(f"task{scale}")
        legend = [
            Patch(
                facecolor=_SERVED,
                edgecolor="0.55",
                label="serves the task\n(number: the task's score,\nmean affinity onto it)",
            ),
            Patch(facecolor=_MEMBER, edgecolor="0.55", label="member; the task is\nserved by another group"),
        ]
        axes.legend(handles=legend, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small", frameon=False)
        plural = "s" if rows != 1 else ""
        axes.set_title(
            f"Task grouping: {rows} group{plural}, score {grouping.score:.3g}\n"
            f"(score: mean over tasks of their scores; {grouping.method} search)"
        )
        return _save(figure, path)


def grouping_bars(table: pd.DataFrame, path: str | Path, ylabel: str, title: str | None = None) -> list[Path]:
    """Fig. 4 of Fifty et al.: one group of bars per split budget (``splits``, ascending), one bar per
    ``grouping`` (colors in the table's order: the measured grouping, its baselines, then the references), the
    mean ``value`` with ±1 ``std`` error bars where there is one (a reference number has none), the value written
    above each bar. The baselines sit at their own budgets (all tasks: 1, single-task: the number of tasks).
    """
    _require(table, ("grouping", "splits", "value"), "table", "grouping_evaluation")
    if table.empty:
        raise ValueError("table is empty: no grouping to draw")
    budgets = sorted({int(s) for s in table["splits"]})
    labels = _distinct(table, "grouping")
    colors = _colors(labels)
    width = 0.8 / max(1, max(int((table["splits"] == b).sum()) for b in budgets))
    with plt.rc_context(STYLE):  # type: ignore[arg-type]
        figure, axes = plt.subplots(figsize=(max(6.0, 1.2 * len(budgets) * max(1, len(labels)) * 0.6 + 3), 4.6))
        drawn: set[str] = set()
        for position, budget in enumerate(budgets):
            rows = table[table["splits"].astype(int) == budget].to_dict("records")
            start = position - width * (len(rows) - 1) / 2
            for offset, row in enumerate(rows):
                label = str(row["grouping"])
                value = float(row["value"])
                std = row.get("std")
                error = float(std) if isinstance(std, (int, float)) and math.isfinite(float(std)) else None
                axes.bar(
                    start + offset * width,
                    value,
                    width=width * 0.92,
                    color=colors[label],
                    yerr=error,
                    capsize=3 if error is not None else 0,
                    label=label if label not in drawn else None,
                )
                drawn.add(label)
                axes.annotate(
                    f"{value:.4g}",
                    (start + offset * width, value + (error or 0.0)),
                    textcoords="offset points",
                    xytext=(0, 3),
                    ha="center",
                    fontsize=7,
                )
        axes.set_xticks(range(len(budgets)), [f"{b} split{'s' if b != 1 else ''}" for b in budgets])
        axes.set_xlabel("split budget (number of networks)")
        axes.set_ylabel(ylabel)
        low = float(table["value"].min())
        high = float(table["value"].max())
        pad = 0.15 * (high - low) or 0.05 * abs(high) or 1.0
        axes.set_ylim(max(0.0, low - pad) if low >= 0 else low - pad, high + pad)
        axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small", frameon=False)
        axes.set_title(title or f"Groupings by split budget: {ylabel}")
        return _save(figure, path)


def _require(frame: pd.DataFrame, columns: Sequence[str], name: str, producer: str) -> None:
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise ValueError(f"{name} must be a {producer} table; missing column {missing[0]!r}")


def _colors(names: Sequence[str]) -> dict[str, Any]:
    """One color per name: tab10 up to 10 names, tab20 beyond (cycling after 20)."""
    colormap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    return {name: colormap(i % colormap.N) for i, name in enumerate(names)}


def _header() -> Line2D:
    """An invisible legend handle, for a section title inside a legend."""
    return Line2D([], [], linestyle="none", marker="none")


def _padded(values: pd.Series, fraction: float = 0.08) -> tuple[float, float]:
    """Axis limits covering the values and 0, padded by ``fraction`` of the range (±1 when everything is 0)."""
    low, high = min(float(values.min()), 0.0), max(float(values.max()), 0.0)
    pad = fraction * (high - low) or 1.0
    return low - pad, high + pad


def _distinct(frame: pd.DataFrame, column: str) -> list[str]:
    if column not in frame.columns:
        return []
    return list(dict.fromkeys(frame[column].dropna().astype(str)))


def _correlation_text(result: Correlation) -> str:
    if not math.isfinite(result.r):
        return f"r = n/a ({result.reason}), n = {result.n}"
    return f"r = {result.r:.2f}, p = {result.p:.2g}, n = {result.n}"


def _line_label(values: dict[str, Any], varying: Sequence[str]) -> str:
    """The variant, plus the task set, method and loss scale where they vary between lines and the variant's
    name does not already say them."""
    variant = str(values["variant"])
    parts = [variant]
    for key in varying:
        value = values[key]
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        if key == "loss_scale":
            parts.append(f"C = {float(value):.3g}")
        elif str(value) not in variant:
            parts.append(str(value))
    return parts[0] + (f" ({', '.join(parts[1:])})" if len(parts) > 1 else "")


def _power_of_ten(values: np.ndarray) -> tuple[float, int]:
    """(10^e, e) to divide values by so the largest magnitude lies in [1e-2, 1e4); (1, 0) when no scaling."""
    largest = float(np.abs(values).max()) if values.size else 0.0
    if largest == 0.0 or not math.isfinite(largest):
        return 1.0, 0
    exponent = math.floor(math.log10(largest))
    if -2 <= exponent <= 3:
        return 1.0, 0
    return 10.0**exponent, exponent


def _short(value: float) -> str:
    """A compact cell label: 2 significant digits, whole numbers from 10 on."""
    return f"{value:.0f}" if abs(value) >= 10 else f"{value:.2g}"
