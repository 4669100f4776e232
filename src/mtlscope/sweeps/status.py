"""How far a sweep has got (``mtlscope sweep-status``): per-run status, counts and an ETA, read from disk.

Each of the sweep's runs is looked up in ``out/<run_id>``: no directory (or one without ``status.json``, whose
creation was interrupted) is ``remaining``; otherwise the run's ``status.json`` says ``completed`` (counted as
*done*), ``running``, ``failed`` or ``diverged``. A completed or diverged run that ``store.damage`` finds damaged
(records truncated, duplicated or changed, summary or config missing) is ``damaged``, with the reason as its
message: the next ``mtlscope sweep`` runs it again. A ``running`` run may also be one whose sweep was killed: the
next ``mtlscope sweep`` resumes it. Run directories in ``out`` that are not among the sweep's runs are not
counted, only reported as ``foreign``.

The ETA is the mean ``wall_time_s`` of the completed runs (their ``summary.json``) times the runs still to do
(remaining + running + damaged) divided by ``workers``; ``None`` until a run has completed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mtlscope.progress import format_duration
from mtlscope.runs.config import RunConfig
from mtlscope.runs.store import CONFIG_FILE, STATUS_FILE, SUMMARY_FILE, damage, read_status
from mtlscope.sweeps.execution import unique_runs

COUNTS: tuple[str, ...] = ("done", "running", "failed", "diverged", "damaged", "remaining")
_COUNTED_AS = {"completed": "done", "running": "running", "failed": "failed", "diverged": "diverged"}
_LISTED: tuple[str, ...] = ("failed", "damaged")


@dataclass(frozen=True)
class SweepStatus:
    """``runs``: run id -> completed | running | failed | diverged | damaged | remaining, in config order;
    ``counts``: done / running / failed / diverged / damaged / remaining; ``messages``: the message of each failed
    or diverged run, and what is wrong with each damaged one; ``foreign``: run directories in ``out`` that are not
    the sweep's; ``eta_s``: seconds left (``None`` until a run has completed); ``mean_wall_time_s``: of the
    completed runs."""

    out: Path
    runs: dict[str, str]
    counts: dict[str, int]
    messages: dict[str, str]
    foreign: int
    workers: int
    eta_s: float | None
    mean_wall_time_s: float | None

    @property
    def total(self) -> int:
        return len(self.runs)

    @property
    def finished(self) -> bool:
        """Nothing is left to run, running or damaged (failed runs are retried by the next sweep, though)."""
        return self.counts["remaining"] == 0 and self.counts["running"] == 0 and self.counts["damaged"] == 0


def _run_status(path: Path) -> tuple[str, str]:
    """``(status, message)`` of the run directory ``path``."""
    if not (path / STATUS_FILE).exists():
        return "remaining", ""
    try:
        status = read_status(path)
    except (OSError, ValueError) as error:  # never torn (written atomically), but a damaged file is a failure
        return "failed", f"unreadable {STATUS_FILE}: {error}"
    value = status.get("status") if isinstance(status, dict) else None
    if value not in _COUNTED_AS:
        return "failed", f"unknown status {str(value)[:40]!r} in {STATUS_FILE}"
    problem = damage(path)
    if problem is not None:
        return "damaged", problem
    return str(value), str(status.get("message") or "")


def _wall_time(path: Path) -> float | None:
    try:
        value = json.loads((path / SUMMARY_FILE).read_text()).get("wall_time_s")
    except (OSError, ValueError):
        return None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def sweep_status(configs: Sequence[RunConfig], out: str | Path, *, workers: int = 1) -> SweepStatus:
    """The status of the sweep of ``configs`` in ``out`` (see the module docstring).

    Configs are resolved and deduplicated as ``run_sweep`` does (``ConfigError`` for one that cannot be).
    """
    if workers < 1:
        raise ValueError(f"workers: expected a positive integer, got {workers}")
    out = Path(out)
    runs, _ = unique_runs(configs)
    statuses: dict[str, str] = {}
    messages: dict[str, str] = {}
    wall_times: list[float] = []
    for run_id, _ in runs:
        status, message = _run_status(out / run_id)
        statuses[run_id] = status
        if status in ("failed", "diverged", "damaged"):
            messages[run_id] = message
        if status == "completed":
            wall_time = _wall_time(out / run_id)
            if wall_time is not None:
                wall_times.append(wall_time)
    counts = dict.fromkeys(COUNTS, 0)
    for status in statuses.values():
        counts[_COUNTED_AS.get(status, status)] += 1
    foreign = 0
    if out.is_dir():
        for path in out.iterdir():
            is_run = path.is_dir() and ((path / STATUS_FILE).exists() or (path / CONFIG_FILE).exists())
            if is_run and path.name not in statuses:
                foreign += 1
    mean = sum(wall_times) / len(wall_times) if wall_times else None
    eta = None if mean is None else mean * (counts["remaining"] + counts["running"] + counts["damaged"]) / workers
    return SweepStatus(
        out=out,
        runs=statuses,
        counts=counts,
        messages=messages,
        foreign=foreign,
        workers=workers,
        eta_s=eta,
        mean_wall_time_s=mean,
    )


def format_status(status: SweepStatus, *, width: int = 30, show_failed: int = 5) -> str:
    """A few lines for the terminal: counts, a progress bar with the ETA, and the first failed and damaged runs
    (``show_failed`` of each; the damaged count is shown when there are damaged runs)."""
    counts = status.counts
    finished = counts["done"] + counts["failed"] + counts["diverged"]
    shown = [name for name in COUNTS if name != "damaged" or counts[name]]
    head = f"{status.out}: {status.total} runs: " + ", ".join(f"{counts[name]} {name}" for name in shown)
    if status.foreign:
        head += f" ({status.foreign} other run{'s' if status.foreign != 1 else ''} in the directory not counted)"
    fraction = finished / status.total if status.total else 1.0
    filled = round(fraction * width)
    bar = f"[{'#' * filled}{'-' * (width - filled)}] {fraction:4.0%}"
    if status.finished:
        eta = "finished"
    elif status.eta_s is None:
        eta = "ETA unknown until a run completes"
    else:
        per = f"{status.workers} workers" if status.workers != 1 else "1 worker"
        mean = format_duration(status.mean_wall_time_s or 0)
        eta = f"ETA {format_duration(status.eta_s)} with {per} (mean run {mean})"
    lines = [head, f"{bar}  {eta}"]
    for kind in _LISTED:
        listed = [(run_id, message) for run_id, message in status.messages.items() if status.runs[run_id] == kind]
        for run_id, message in listed[:show_failed]:
            lines.append(f"  {kind} {run_id}: {message or 'no message'}")
        if len(listed) > show_failed:
            lines.append(f"  ... and {len(listed) - show_failed} more {kind}")
    return "\n".join(lines)
