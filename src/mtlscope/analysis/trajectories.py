"""Per-trajectory views of stored records (Mueller et al., TMLR 2025, §3–5 and App. B.4).

A *trajectory* is one (run, task): its checkpoints in step order. ``checkpoint_table`` pivots the long
records into one row per checkpoint with columns ``train_loss``, ``val``, ``test`` (the task's primary
metric) and the task's probe values. ``generalization`` is the single value the main paper reports: the mean
test metric of the ``top`` checkpoints with the best validation metric (Mueller et al. 2025, App. B.4).
"""

from __future__ import annotations

import pandas as pd

from mtlscope import metrics


def checkpoint_table(records: pd.DataFrame, run_id: str, task: str, metric: str) -> pd.DataFrame:
    """One row per checkpoint of (``run_id``, ``task``): step, epoch, train_loss, val, test (``metric``), and
    one column per probe value of the task (NaN at checkpoints where that probe did not measure)."""
    rows = records[(records["run_id"] == run_id) & (records["task"] == task)]
    loss = rows[(rows["split"] == "train") & (rows["metric"] == "loss")].set_index("step")["value"]
    val = rows[(rows["split"] == "val") & (rows["metric"] == metric)].set_index("step")["value"]
    test = rows[(rows["split"] == "test") & (rows["metric"] == metric)].set_index("step")["value"]
    epoch = rows.drop_duplicates("step").set_index("step")["epoch"]
    table = pd.DataFrame({"epoch": epoch, "train_loss": loss, "val": val, "test": test})
    probes = rows[rows["split"] == "probe"]
    if not probes.empty:
        wide = probes.pivot_table(index="step", columns="metric", values="value", aggfunc="last")
        table = table.join(wide.drop(columns=[c for c in wide.columns if c in table.columns]), how="left")
    table = table.sort_index()
    return table.reset_index().rename(columns={"index": "step"})


def builtin_direction(metric: str) -> bool:
    """The direction of a built-in metric by its record name (``ValueError`` for any other name)."""
    try:
        return metrics.higher_is_better(metric)
    except KeyError as error:
        raise ValueError(f"{error.args[0]}: give higher_is_better") from None


def generalization(table: pd.DataFrame, metric: str, top: int = 10, higher_is_better: bool | None = None) -> float:
    """Mean test ``metric`` over the ``top`` checkpoints with the best validation ``metric``.

    ``higher_is_better``: the metric's direction as its task declared it (``mtlscope.analysis.transfer.
    metric_direction``); None looks up a built-in metric's (``builtin_direction``)."""
    higher = builtin_direction(metric) if higher_is_better is None else higher_is_better
    valid = table.dropna(subset=["val", "test"])
    if valid.empty:
        return float("nan")
    best = valid.sort_values("val", ascending=not higher, kind="stable").head(top)
    return float(best["test"].mean())
