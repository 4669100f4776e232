"""Seconds per training step and per probe measurement of a finished run, from its own timing (``timing_s``:
``train_s`` and ``probe_s/<name>``) and the number of steps at which each probe recorded values. Shared by the
per-setting cost benchmarks (``dense_segnet.py``, ``glue_costs.py``)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

import mtlscope

#: A probe's name -> the prefix of the metrics it records, where they differ.
METRIC_PREFIX = {"grad_cov_trace": "grad_cov", "grad_similarity": "grad_sim"}


def step_and_probe_costs(run_path: Path, steps: int) -> dict[str, float]:
    """``step_s`` (seconds per training step) and, per probe, ``<probe>_s`` (seconds per measurement) and
    ``<probe>_steps`` (the same in training steps) of the run at ``run_path`` that trained ``steps`` steps."""
    results = mtlscope.load(run_path.parent)
    timing = results.runs["timing_s"].iloc[0]
    probed = results.records[results.records["split"] == "probe"]
    step = timing["train_s"] / steps
    costs = {"step_s": step}
    for key, seconds in timing.items():
        if key.startswith("probe_s/"):
            probe = key.split("/", 1)[1]
            prefix = METRIC_PREFIX.get(probe, probe)
            measurements = probed[probed["metric"].str.startswith(prefix)]["step"].nunique()
            costs[f"{probe}_s"] = seconds / max(1, measurements)
            costs[f"{probe}_steps"] = seconds / max(1, measurements) / step
    return costs


def costs_markdown(table: pd.DataFrame, label: str, header: str) -> str:
    """One row per run (named by its ``label`` column, headed ``header``) and probe: seconds per measurement and
    its cost in training steps."""
    lines = [
        f"| {header} | batch | probe subset | what | seconds | training steps |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in table.to_dict("records"):
        head = f"| {row[label]} | {row['batch']} | {row['subset']}"
        lines.append(f"{head} | training step | {row['step_s']:.3g} | 1 |")
        for key in row:
            if key.endswith("_steps"):
                probe = key[: -len("_steps")]
                lines.append(f"{head} | {probe} | {row[probe + '_s']:.3g} | {row[key]:.3g} |")
    return "\n".join(lines) + "\n"
