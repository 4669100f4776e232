"""IT-MTL candidate wins: how often each candidate gradient was chosen over training (Fifty et al.,
"Measuring and Harnessing Transference in Multi-Task Learning", 2020, §4).

An ``it_mtl`` run trained with ``training.diagnostics_every`` records, at each such step, the index of the
chosen candidate (split ``step``, task ``*``, metric ``chosen_candidate``; see ``mtlscope.methods.itmtl``).
``candidate_wins`` counts them per run — over the whole run, or per window of steps — and names each index
with the candidate's label (``ITMTL.candidate_labels``), resolved from the options stored in the run's
config. See docs/analysis/conflict.md ("IT-MTL candidate wins").
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from mtlscope.runs.results import RunResults

METHOD_NAME = "it_mtl"
WINS_COLUMNS: tuple[str, ...] = ("run_id", "seed", "window_start", "candidate", "label", "wins", "steps", "fraction")

Labels = Sequence[str] | Mapping[str, Sequence[str]]


def resolve_labels(config: Mapping[str, Any] | None, tasks: Sequence[str]) -> tuple[str, ...] | None:
    """The candidate labels of an ``it_mtl`` run: the method rebuilt from ``config["method"]`` (name and
    options) and bound to ``tasks``; None when that fails (no or another method, invalid options)."""
    try:
        from mtlscope import methods  # imported here: building a method needs torch and every method module

        options = dict((config or {})["method"])
        name = options.pop("name")
        if name != METHOD_NAME:
            return None
        method = methods.get(name, **options)
        method.setup(tuple(tasks))
        return tuple(method.candidate_labels)  # type: ignore[attr-defined]
    except Exception:  # any failure means "no labels": the caller falls back to "candidate <i>"
        return None


def _labels_for(run_id: str, labels: Labels | None, row: Mapping[Any, Any]) -> tuple[str, ...] | None:
    if isinstance(labels, Mapping):
        given = labels.get(run_id)
        if given is not None:
            return tuple(given)
    elif labels is not None:
        return tuple(labels)
    config = row.get("config")
    return resolve_labels(config if isinstance(config, Mapping) else None, str(row.get("tasks", "")).split("+"))


def candidate_wins(results: RunResults, labels: Labels | None = None, window: int | None = None) -> pd.DataFrame:
    """How often each candidate of each ``it_mtl`` run was chosen.

    One row per (run, window, candidate): ``run_id, seed, window_start`` (NaN for the whole run when
    ``window`` is None; else the first step of the window ``[start, start + window)``, windows counted from
    step 0), ``candidate`` (index), ``label``, ``wins`` (steps at which it was chosen), ``steps`` (recorded
    steps in the window) and ``fraction = wins / steps``. Every candidate gets a row, with 0 wins if never
    chosen; windows without recorded steps are left out.

    ``labels``: one list for every run, or a mapping run_id -> list; otherwise (or for runs not in the mapping)
    they are resolved from the run's ``config["method"]`` and ``tasks`` (``resolve_labels``), and fall back to
    ``"candidate <i>"``. The number of candidates is the number of labels, at least the number of
    ``score_<i>`` metrics recorded and the largest chosen index plus one. All runs of method ``it_mtl``
    count, whatever their status (a partial run has its steps up to where it stopped).
    """
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
        raise ValueError(f"window must be a positive number of steps or None, got {window!r}")
    runs = results.runs
    if "method" not in runs.columns:
        raise ValueError("results.runs has no 'method' column")
    chosen_runs = runs[runs["method"] == METHOD_NAME]
    records = results.records
    steps = records[(records["split"] == "step") & records["run_id"].isin(set(chosen_runs["run_id"]))]
    rows: list[dict[str, object]] = []
    for run in chosen_runs.to_dict("records"):
        run_id = str(run["run_id"])
        own = steps[steps["run_id"] == run_id]
        chosen = own[own["metric"] == "chosen_candidate"].dropna(subset=["value"])
        chosen = chosen.drop_duplicates("step", keep="last")
        if chosen.empty:
            continue
        indices = np.rint(chosen["value"].to_numpy(dtype=float)).astype(int)
        score_metrics = {m for m in own["metric"].unique() if str(m).startswith("score_") and str(m)[6:].isdigit()}
        names = _labels_for(run_id, labels, run)
        count = max(len(names or ()), len(score_metrics), int(indices.max()) + 1)
        label_list = [names[i] if names is not None and i < len(names) else f"candidate {i}" for i in range(count)]
        step_values = chosen["step"].to_numpy(dtype=int)
        starts = np.zeros(len(step_values), dtype=int) if window is None else (step_values // window) * window
        for start in np.unique(starts):
            in_window = indices[starts == start]
            for candidate in range(count):
                wins = int((in_window == candidate).sum())
                rows.append(
                    {
                        "run_id": run_id,
                        "seed": run.get("seed"),
                        "window_start": math.nan if window is None else int(start),
                        "candidate": candidate,
                        "label": label_list[candidate],
                        "wins": wins,
                        "steps": len(in_window),
                        "fraction": wins / len(in_window),
                    }
                )
    return pd.DataFrame(rows, columns=list(WINS_COLUMNS))
