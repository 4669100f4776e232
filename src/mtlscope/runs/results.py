"""Loading stored runs into pandas DataFrames (``mtlscope.runs.load``).

``load(directory)`` finds every run directory below ``directory`` (any depth) and returns ``RunResults``:

- ``runs``: one row per run: ``run_id, path, status, variant, setting, tasks, num_tasks, method,
  optimizer, lr, batch_size, temperature, loss_scale, momentum, seed, steps, planned_steps, message``
  and ``config`` (the resolved config as a dict). ``loss_scale`` is C as a number; ``tasks`` is the task
  list joined by '+'.
- ``records``: the long table ``run_id, step, epoch, task, split, metric, value`` of all runs.

Partial runs (killed, failed, diverged) load too: their records up to the last whole line.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from mtlscope.engine.loss_scale import resolve_loss_scale
from mtlscope.engine.trainer import RECORD_COLUMNS
from mtlscope.runs.store import CONFIG_FILE, RECORDS_FILE, STATUS_FILE, SUMMARY_FILE, read_status

RUN_COLUMNS: tuple[str, ...] = (
    "run_id",
    "path",
    "status",
    "variant",
    "setting",
    "tasks",
    "num_tasks",
    "method",
    "optimizer",
    "lr",
    "batch_size",
    "temperature",
    "loss_scale",
    "momentum",
    "seed",
    "steps",
    "planned_steps",
    "message",
    "wall_time_s",
    "timing_s",
    "config",
)


@dataclass(frozen=True)
class RunResults:
    runs: pd.DataFrame
    records: pd.DataFrame

    def merged(self, columns: tuple[str, ...] = ("variant", "tasks", "method", "seed")) -> pd.DataFrame:
        """Records joined with the given run columns."""
        return self.records.merge(self.runs[["run_id", *columns]], on="run_id", how="left")


def read_records(path: Path) -> pd.DataFrame:
    """A run's records; a torn last line (the run was killed mid-write) is dropped."""
    text = (path / RECORDS_FILE).read_text() if (path / RECORDS_FILE).exists() else ""
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    if not text.strip():
        return pd.DataFrame({column: pd.Series(dtype=object) for column in RECORD_COLUMNS})
    frame = pd.read_csv(io.StringIO(text), dtype={"task": str, "split": str, "metric": str}, keep_default_na=False)
    frame["value"] = pd.to_numeric(frame["value"], errors="coerce")
    return frame


def _run_row(path: Path) -> dict[str, Any]:
    status = read_status(path)
    config: dict[str, Any] = yaml.safe_load((path / CONFIG_FILE).read_text()) if (path / CONFIG_FILE).exists() else {}
    summary = json.loads((path / SUMMARY_FILE).read_text()) if (path / SUMMARY_FILE).exists() else {}
    tasks = list(config.get("setting", {}).get("tasks") or [])
    optimizer = config.get("optimizer", {})
    training = config.get("training", {})
    method = config.get("method", {}).get("name")
    lr = optimizer.get("lr")
    batch_size = training.get("batch_size")
    name = config.get("name")
    variant = name or ("+".join(tasks) if method == "umtg" else f"{'+'.join(tasks)}:{method}")
    return {
        "run_id": path.name,
        "path": str(path),
        "status": status.get("status"),
        "variant": variant,
        "setting": config.get("setting", {}).get("name"),
        "tasks": "+".join(tasks),
        "num_tasks": len(tasks),
        "method": method,
        "optimizer": optimizer.get("name"),
        "lr": lr,
        "batch_size": batch_size,
        "temperature": lr / batch_size if lr and batch_size else None,
        "loss_scale": resolve_loss_scale(training.get("loss_scale", 1.0), max(len(tasks), 1)),
        "momentum": optimizer.get("momentum"),
        "seed": config.get("seed"),
        "steps": status.get("steps", summary.get("steps")),
        "planned_steps": summary.get("planned_steps"),
        "message": status.get("message", ""),
        "wall_time_s": summary.get("wall_time_s"),
        "timing_s": summary.get("timing_s", {}),
        "config": config,
    }


def load(directory: str | Path) -> RunResults:
    """All runs stored below ``directory``."""
    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such results directory")
    paths = sorted(status.parent for status in root.rglob(STATUS_FILE))
    rows = [_run_row(path) for path in paths]
    runs = pd.DataFrame(rows, columns=list(RUN_COLUMNS))
    frames = []
    for path in paths:
        records = read_records(path)
        records.insert(0, "run_id", path.name)
        frames.append(records)
    records = (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame({column: pd.Series(dtype=object) for column in ("run_id", *RECORD_COLUMNS)})
    )
    return RunResults(runs=runs, records=records)
