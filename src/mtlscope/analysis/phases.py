"""Comparing two trajectories at comparable training loss (Mueller et al., TMLR 2025, §3 and App. B.4).

A trajectory's training loss is cut into ``bins`` (20) geometrically spaced bins between its maximum and its
minimum, numbered 1 (highest loss, start of training) to ``bins`` (lowest loss). A *phase* is a range of bins:

- ``early`` = bins 2–5: the early phase, past the first, abnormally high losses (where the FIM trace explodes);
- ``end`` = bins 18–20 (the last three bins): the end of training, near convergence.

Two trajectories reach different losses (a multi-task trajectory typically stops an order of magnitude above
its single-task counterpart), so their phases are made comparable by computing **one** set of edges, from the
trajectory with the **highest minimum** training loss, and applying it to both: each trajectory's value is the
mean over its checkpoints whose training loss lies in the same interval ``[low, high]``. The paper states this
rule for the end phase (App. B.4); it is applied to the early phase as well, so that both phases compare values at the
same losses (the paper's early interval, "often 10^0 to 10^-1", differs little between the two choices, since
trajectories start at about the same loss).

A phase mean over one or two checkpoints is the reading of a single point, not a comparison, and a phase with
no checkpoint gives NaN: a trajectory whose loss falls fast at the start (on Fashion-MNIST the loss falls from
2.3 to 0.7 in the first 50 steps) has no checkpoint at all in the early bins when checkpoints are taken every
epoch. Every comparison with fewer than ``MIN_CHECKPOINTS`` checkpoints on either side carries a ``note``
saying so and what to do (``training.eval_every: log`` puts checkpoints where the loss falls fast), and
``phase_table`` warns (``SparsePhaseWarning``) once per table; ``phase_notes`` sums the notes of a task up
in a line per phase, for figures and reports.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from mtlscope.analysis.binning import geometric_edges
from mtlscope.analysis.trajectories import checkpoint_table
from mtlscope.analysis.transfer import primary_metric
from mtlscope.runs.results import RunResults

PHASES: Mapping[str, tuple[int, int]] = {"early": (2, 5), "end": (-3, -1)}
"""Phase name -> (first, last) bin, 1-based and inclusive; negative numbers count from the last bin (-1)."""

PHASE_COLUMNS: tuple[str, ...] = (
    "run_id",
    "variant",
    "tasks",
    "method",
    "seed",
    "task",
    "column",
    "phase",
    "high",
    "low",
    "set_by",
    "value",
    "count",
    "reference_run_id",
    "reference_value",
    "reference_count",
    "note",
)

Phase = str | tuple[int, int]

#: The fewest checkpoints of each trajectory in a phase for a comparison without a note: with one or two, the
#: phase mean is the value of one or two points (and the bins of a phase are 3 or 4), not a mean over the phase.
MIN_CHECKPOINTS = 3

#: What to do about too few checkpoints in a phase, by phase name (other phases: the generic advice).
PHASE_ADVICE: Mapping[str, str] = {
    "early": "train with training.eval_every: log (checkpoints dense where the loss falls fast)",
    "end": "train longer, or take checkpoints more often near convergence (a smaller training.eval_every, or "
    "eval_every: log with more checkpoints_per_decade)",
}
GENERIC_ADVICE = "take more checkpoints (training.eval_every: log places them densely early in training)"


class SparsePhaseWarning(UserWarning):
    """A phase comparison rests on fewer than ``MIN_CHECKPOINTS`` checkpoints of a trajectory (see its note)."""


@dataclass(frozen=True)
class PhaseComparison:
    """Means of ``column`` of trajectories a and b over their checkpoints with ``low <= train_loss <= high``.

    ``set_by`` is ``"a"`` or ``"b"``: the trajectory with the highest minimum training loss, whose bins set the
    interval. ``count_*`` is the number of checkpoints in the interval where ``column`` was measured; the mean is
    NaN when it is 0. ``note`` is empty when both counts are at least ``MIN_CHECKPOINTS``, else it says how
    many checkpoints each side has in which bins and what to do (``sparse_note``)."""

    column: str
    phase: Phase
    first_bin: int
    last_bin: int
    high: float
    low: float
    set_by: str
    mean_a: float
    count_a: int
    mean_b: float
    count_b: int
    note: str = ""


def phase_bins(phase: Phase, bins: int = 20) -> tuple[int, int]:
    """The (first, last) bin numbers, 1-based and inclusive, of ``phase``: a name in ``PHASES`` or a pair of bin
    numbers (negative ones count from the last bin)."""
    _check_bins(bins)
    if isinstance(phase, str):
        if phase not in PHASES:
            raise ValueError(f"phase: unknown phase {phase!r}; known: {', '.join(PHASES)} or a (first, last) pair")
        first, last = PHASES[phase]
    else:
        try:
            first, last = (int(number) for number in phase)
        except (TypeError, ValueError):
            raise ValueError(f"phase: expected a phase name or a (first, last) pair of bins, got {phase!r}") from None
    first, last = (bins + 1 + number if number < 0 else number for number in (first, last))
    if not 1 <= first <= last <= bins:
        raise ValueError(f"phase: {phase!r} gives bins {first}..{last}, outside 1..{bins}")
    return first, last


def trajectory_bins(train_loss: pd.Series | np.ndarray, bins: int = 20) -> np.ndarray:
    """The ``bins + 1`` descending edges of ``bins`` geometric bins between the maximum and the minimum of one
    trajectory's finite training losses."""
    return _edges(train_loss, "train_loss", bins)


def phase_edges(
    reference_losses: pd.Series | np.ndarray,
    other_losses: pd.Series | np.ndarray,
    phase: Phase = "end",
    bins: int = 20,
) -> tuple[float, float]:
    """The (high, low) training-loss bounds of ``phase``, from the bins of whichever trajectory has the highest
    minimum training loss (the reference on a tie), to be applied to both."""
    high, low, _ = _interval(reference_losses, other_losses, phase, bins, ("reference_losses", "other_losses"))
    return high, low


def compare_at_loss(
    table_a: pd.DataFrame, table_b: pd.DataFrame, column: str, phase: Phase = "end", bins: int = 20
) -> PhaseComparison:
    """Mean of ``column`` (any ``checkpoint_table`` column: ``test``, ``val``, ``sharpness``, ...) of two
    trajectories over their checkpoints in the same training-loss interval of ``phase``.

    The interval comes from the bins of the trajectory with the highest minimum training loss. A trajectory
    without ``column`` (its probe did not run) counts as unmeasured; ``column`` must be in at least one table.
    """
    for name, table in (("table_a", table_a), ("table_b", table_b)):
        if "train_loss" not in table.columns:
            raise ValueError(f"{name}: no train_loss column (expected a checkpoint_table)")
    if column not in table_a.columns and column not in table_b.columns:
        raise ValueError(f"column: {column!r} is in neither table")
    return _compare(table_a, table_b, column, phase, bins, ("table_a", "table_b"))


def phase_table(
    results: RunResults,
    task: str,
    column: str,
    phase: Phase = "end",
    reference_variant: str | None = None,
    bins: int = 20,
    metric: str | None = None,
) -> pd.DataFrame:
    """One row per completed run that trains ``task`` (reference runs excluded), compared with the reference run
    of the **same seed** at comparable loss (``compare_at_loss``); columns ``PHASE_COLUMNS``.

    The reference is the single-task run (``tasks`` exactly ``task``), or, with ``reference_variant``, the run of
    that variant. ``value``/``count`` describe the run, ``reference_value``/``reference_count`` its reference,
    both over the same interval ``[low, high]`` set by whichever of the pair has the highest minimum training
    loss (``set_by`` = ``"run"`` or ``"reference"``); the interval thus differs from pair to pair. A run whose
    seed the reference lacks gets NaN values and counts 0. ``metric`` (for ``test``/``val``) defaults to each
    task's primary metric.

    ``note`` is empty for a comparison with at least ``MIN_CHECKPOINTS`` checkpoints on both sides; otherwise it
    says how many each side has in the phase's bins and what to do, and the table warns once
    (``SparsePhaseWarning``) with the number of such rows. When one side never records ``column`` at all (e.g.
    ``grad_similarity``, the similarity to the multi-task gradient, which a single-task reference has not), the
    note says so instead; such rows are listed in ``frame.attrs["unmeasured"]`` and are neither warned about
    nor counted as sparse by ``phase_notes``.
    """
    phase_bins(phase, bins)
    completed = results.runs[results.runs["status"] == "completed"]
    runs = [run for run in completed.to_dict("records") if task in str(run["tasks"]).split("+")]
    if not runs:
        raise ValueError(f"task: no completed run trains {task!r}")
    if reference_variant is None:
        is_reference = [str(run["tasks"]) == task for run in runs]
        if not any(is_reference):
            raise ValueError(f"task: no completed single-task run of {task!r} to compare against")
    else:
        is_reference = [run.get("variant") == reference_variant for run in runs]
        if not any(is_reference):
            raise ValueError(f"reference_variant: no completed run of {reference_variant!r} trains {task!r}")
    records = dict(tuple(results.records.groupby("run_id", sort=False)))
    empty = results.records.iloc[0:0]

    def table(run: Mapping[Any, Any]) -> pd.DataFrame:
        run_id = str(run["run_id"])
        own = records.get(run_id, empty)
        task_metric = metric or primary_metric(RunResults(results.runs, own), run_id, task)
        return checkpoint_table(own, run_id, task, task_metric)

    references: dict[Any, tuple[str, pd.DataFrame]] = {}
    for run, is_ref in zip(runs, is_reference):
        if is_ref:
            if run["seed"] in references:
                raise ValueError(
                    f"reference_variant: several reference runs of {task!r} with seed {run['seed']}; "
                    "select one configuration per seed first"
                )
            references[run["seed"]] = (str(run["run_id"]), table(run))
    tables = [(run, table(run)) for run, is_ref in zip(runs, is_reference) if not is_ref]
    if not any(column in t.columns for t in [*(t for _, t in references.values()), *(t for _, t in tables)]):
        raise ValueError(f"column: {column!r} is not recorded for task {task!r}")
    rows = []
    unmeasured: list[str] = []
    for run, own in tables:
        row: dict[str, Any] = {
            "run_id": run["run_id"],
            "variant": run.get("variant"),
            "tasks": run["tasks"],
            "method": run.get("method"),
            "seed": run.get("seed"),
            "task": task,
            "column": column,
            "phase": phase,
        }
        if run.get("seed") not in references:
            nan = float("nan")
            row.update(high=nan, low=nan, set_by=None, value=nan, count=0)
            row.update(reference_run_id=None, reference_value=nan, reference_count=0)
            row.update(note=f"no reference run with seed {run.get('seed')}: nothing to compare with")
        else:
            reference_id, reference_table = references[run["seed"]]
            result = _compare(own, reference_table, column, phase, bins, ("run", "reference"))
            row.update(high=result.high, low=result.low, set_by="run" if result.set_by == "a" else "reference")
            row.update(value=result.mean_a, count=result.count_a)
            row.update(reference_run_id=reference_id, reference_value=result.mean_b, reference_count=result.count_b)
            missing = [
                name for name, t in (("the run", own), ("its reference", reference_table)) if not _records(t, column)
            ]
            if missing:  # e.g. gradient similarity to the multi-task gradient, which a single-task run has not
                unmeasured.append(str(run["run_id"]))
                row.update(note=f"{column} is not recorded by {' and '.join(missing)}: nothing to compare")
            else:
                row.update(note=sparse_note(result, ("the run", "its reference")))
        rows.append(row)
    frame = pd.DataFrame(rows, columns=list(PHASE_COLUMNS))
    #: runs whose comparison is impossible because one side never records ``column`` (not a sparse phase)
    frame.attrs["unmeasured"] = tuple(unmeasured)
    noted = int((frame["note"] != "").sum()) - len(unmeasured)
    if noted:
        first, last = phase_bins(phase, bins)
        warnings.warn(
            f"phase_table: {noted} of {len(frame)} comparisons of {task} in the {_phase_name(phase)} (loss bins "
            f"{first}–{last}) rest on fewer than {MIN_CHECKPOINTS} checkpoints of a trajectory (see the note "
            f"column); {PHASE_ADVICE.get(str(phase), GENERIC_ADVICE)}",
            SparsePhaseWarning,
            stacklevel=2,
        )
    return frame


def _records(table: pd.DataFrame, column: str) -> bool:
    """Whether a checkpoint table holds any value of ``column``."""
    return column in table.columns and bool(table[column].notna().any())


def sparse_note(comparison: PhaseComparison, names: tuple[str, str] = ("a", "b")) -> str:
    """Empty when both trajectories of ``comparison`` have at least ``MIN_CHECKPOINTS`` checkpoints in the
    phase; else one line, e.g. ``"early phase: 0 checkpoints of the run and 5 of its reference in loss bins 2–5
    (training loss 1.39 to 0.187), fewer than 3 to compare; train with training.eval_every: log (...)"``."""
    counts = (comparison.count_a, comparison.count_b)
    if min(counts) >= MIN_CHECKPOINTS:
        return ""
    plural = "" if counts[0] == 1 else "s"
    return (
        f"{_phase_name(comparison.phase)}: {counts[0]} checkpoint{plural} of {names[0]} and {counts[1]} of "
        f"{names[1]} in loss bins {comparison.first_bin}–{comparison.last_bin} (training loss "
        f"{comparison.high:.3g} to {comparison.low:.3g}), fewer than {MIN_CHECKPOINTS} to compare; "
        f"{PHASE_ADVICE.get(str(comparison.phase), GENERIC_ADVICE)}"
    )


def phase_notes(
    results: RunResults,
    task: str,
    column: str = "test",
    phases: Sequence[Phase] = ("early", "end"),
    reference_variant: str | None = None,
    bins: int = 20,
) -> list[str]:
    """One line per phase of ``phases`` in which some comparison of ``phase_table(results, task, column, ...)``
    rests on fewer than ``MIN_CHECKPOINTS`` checkpoints of a trajectory, e.g. ``"early phase: 0 checkpoints in
    loss bins 2–5 in 3 of 3 comparisons with the reference run (fewer than 3 to compare); train with
    training.eval_every: log (...)"``; empty when every phase has enough, or when the results hold no
    comparison for ``task`` (no reference run, ``column`` not recorded). For figures and reports: never raises
    for missing inputs."""
    notes = []
    for phase in phases:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", SparsePhaseWarning)
                table = phase_table(results, task, column, phase, reference_variant, bins)
        except (ValueError, KeyError):  # nothing to compare (no reference run, no such column, runs without seeds)
            return []
        # runs whose seed the reference lacks compare nothing; nor do pairs where one side never records ``column``
        compared = table[table["reference_run_id"].notna() & ~table["run_id"].isin(table.attrs.get("unmeasured", ()))]
        sparse = compared[compared["note"] != ""]
        if sparse.empty:
            continue
        fewest = sparse[["count", "reference_count"]].min(axis=1).astype(int)
        low, high = int(fewest.min()), int(fewest.max())
        counted = f"{low}" if low == high else f"{low}–{high}"
        first, last = phase_bins(phase, bins)
        notes.append(
            f"{_phase_name(phase)}: {counted} checkpoint{'' if counted == '1' else 's'} in loss bins {first}–{last} "
            f"in {len(sparse)} of {len(compared)} comparisons of {task} with the reference run (fewer than "
            f"{MIN_CHECKPOINTS} to compare); {PHASE_ADVICE.get(str(phase), GENERIC_ADVICE)}"
        )
    return notes


def _phase_name(phase: Phase) -> str:
    return f"{phase} phase" if isinstance(phase, str) else f"bins {tuple(phase)}"


def _check_bins(bins: int) -> None:
    if isinstance(bins, bool) or not isinstance(bins, int | np.integer) or bins < 1:
        raise ValueError(f"bins: expected a positive integer, got {bins!r}")


def _finite(losses: pd.Series | np.ndarray, name: str) -> np.ndarray:
    values = np.asarray(losses, dtype=float).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise ValueError(f"{name}: no finite training loss to bin")
    return values


def _edges(losses: pd.Series | np.ndarray, name: str, bins: int) -> np.ndarray:
    _check_bins(bins)
    values = _finite(losses, name)
    try:
        return geometric_edges(float(values.max()), float(values.min()), bins)
    except ValueError as error:
        raise ValueError(f"{name}: {error}") from None


def _interval(
    losses_a: pd.Series | np.ndarray,
    losses_b: pd.Series | np.ndarray,
    phase: Phase,
    bins: int,
    names: tuple[str, str],
) -> tuple[float, float, int]:
    """(high, low, index of the trajectory that set the bins: 0 or 1)."""
    first, last = phase_bins(phase, bins)
    a, b = _finite(losses_a, names[0]), _finite(losses_b, names[1])
    setter = 0 if a.min() >= b.min() else 1
    edges = _edges((a, b)[setter], names[setter], bins)
    return float(edges[first - 1]), float(edges[last]), setter


def _mean_in(table: pd.DataFrame, column: str, high: float, low: float) -> tuple[float, int]:
    if column not in table.columns:
        return float("nan"), 0
    loss = pd.to_numeric(table["train_loss"], errors="coerce")
    values = pd.to_numeric(table[column], errors="coerce")[(loss >= low) & (loss <= high)].dropna()
    return (float(values.mean()) if len(values) else float("nan")), len(values)


def _compare(
    table_a: pd.DataFrame, table_b: pd.DataFrame, column: str, phase: Phase, bins: int, names: tuple[str, str]
) -> PhaseComparison:
    first, last = phase_bins(phase, bins)
    high, low, setter = _interval(table_a["train_loss"], table_b["train_loss"], phase, bins, names)
    mean_a, count_a = _mean_in(table_a, column, high, low)
    mean_b, count_b = _mean_in(table_b, column, high, low)
    comparison = PhaseComparison(column, phase, first, last, high, low, "ab"[setter], mean_a, count_a, mean_b, count_b)
    return dataclasses.replace(comparison, note=sparse_note(comparison, names))
