"""Loading stored runs into pandas DataFrames (``mtlscope.runs.load``).

``load(directory)`` finds every run directory below ``directory`` (any depth: a directory with a
``status.json``) and returns ``RunResults``:

- ``runs``: one row per run: ``run_id, path, status, variant, setting, tasks, num_tasks, method,
  optimizer, lr, batch_size, temperature, loss_scale, momentum, seed, steps, planned_steps, message,
  wall_time_s, timing_s``, ``task_declarations`` (what each task declared: loss, Fisher labels, primary metric
  and every metric's direction; empty for runs stored before tasks declared them, or still running) and
  ``config`` (the resolved config as a dict). ``loss_scale`` is C as a number; ``tasks`` is the task
  list joined by '+'. A run on an environment setting (Meta-World) takes ``method`` ``sac``, ``optimizer``
  ``adam``, ``lr`` and ``batch_size`` (per task) from its ``rl`` section; its ``temperature``, ``loss_scale`` and
  ``momentum`` are empty (NaN): the supervised sections they come from do not apply to it.
- ``records``: the long table ``run_id, step, epoch, task, split, metric, value`` of all runs.
- ``skipped``: ``(path, reason)`` of every damaged run directory that was left out.

Partial runs (killed, failed, diverged) load too: their records up to the last whole line.

Each run directory is read and checked as a unit (``read_run``) before any of it is used: ``status.json`` is a
JSON object with a known ``status``; ``config.yaml`` is a run config that validates
(``mtlscope.runs.config.validate_config``); ``records.csv`` has exactly the header ``step,epoch,task,split,
metric,value`` and well-formed rows (an integer step, numeric epoch and value — ``nan`` and ``inf`` are
values — and non-empty task, split and metric); ``summary.json`` (required once the run is completed or
diverged) and ``environment.json`` are JSON objects with fields of the right types. A run that fails any check
is skipped with one ``DamagedRunWarning`` naming the file and what is wrong, and the other runs load.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import warnings
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mtlscope.engine.loss_scale import resolve_loss_scale
from mtlscope.engine.trainer import RECORD_COLUMNS
from mtlscope.runs.config import ConfigError, RunConfig, read_yaml, validate_config
from mtlscope.runs.store import (
    CONFIG_FILE,
    ENVIRONMENT_FILE,
    RECORDS_FILE,
    STATUS_FILE,
    STATUSES,
    SUMMARY_FILE,
    damage,
)

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
    "task_declarations",
    "config",
)

#: The ``method`` column of a run on an environment setting (``mtlscope.rl``: multi-task soft actor-critic).
RL_METHOD = "sac"

RECORDS_HEADER = ",".join(RECORD_COLUMNS)
_RECORD_DTYPES: dict[str, Any] = {
    "step": "int64",
    "epoch": "float64",
    "task": str,
    "split": str,
    "metric": str,
    "value": "float64",
}
_INTEGER = re.compile(r"[0-9]+")


class DamagedRunWarning(UserWarning):
    """A stored run directory that ``load`` skipped because one of its files is missing or damaged."""


class DamagedRun(ValueError):
    """What is wrong with one run directory: the damaged ``file`` (and ``line``, for records) and a ``reason``."""

    def __init__(self, file: Path, reason: str, line: int | None = None) -> None:
        self.file = file
        self.reason = reason
        self.line = line
        where = f"{file}, line {line}" if line is not None else str(file)
        super().__init__(f"{where}: {reason}")


@dataclass(frozen=True)
class RunResults:
    runs: pd.DataFrame
    records: pd.DataFrame
    #: ``(run directory, what is wrong)`` of every damaged run ``load`` left out.
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def merged(self, columns: tuple[str, ...] = ("variant", "tasks", "method", "seed")) -> pd.DataFrame:
        """Records joined with the given run columns."""
        return self.records.merge(self.runs[["run_id", *columns]], on="run_id", how="left")

    def subset(self, run_ids: Collection[str]) -> RunResults:
        """The runs (and records, and skipped runs) whose run id is in ``run_ids``."""
        keep = set(run_ids)
        return RunResults(
            runs=self.runs[self.runs["run_id"].isin(keep)].reset_index(drop=True),
            records=self.records[self.records["run_id"].isin(keep)].reset_index(drop=True),
            skipped=[(path, reason) for path, reason in self.skipped if Path(path).name in keep],
        )


@dataclass(frozen=True)
class StoredRun:
    """One run directory, read and checked (``read_run``): its runs-table row and its records."""

    row: dict[str, Any]
    records: pd.DataFrame


# -- reading one file --------------------------------------------------------------------------------------


def _read_text(file: Path) -> str:
    if not file.is_file():
        raise DamagedRun(file, "missing" if not file.exists() else "not a file")
    try:
        return file.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise DamagedRun(file, f"not UTF-8 text (byte {error.start})") from None
    except OSError as error:
        raise DamagedRun(file, f"unreadable ({error.strerror or error})") from None


def _read_json(file: Path) -> dict[str, Any]:
    try:
        data = json.loads(_read_text(file))
    except json.JSONDecodeError as error:
        raise DamagedRun(file, f"invalid JSON ({error.msg}: line {error.lineno}, column {error.colno})") from None
    if not isinstance(data, dict):
        raise DamagedRun(file, f"expected a JSON object, got {_kind(data)}")
    return data


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def _check_fields(file: Path, data: Mapping[str, Any], expected: Mapping[str, str]) -> None:
    """Each of ``expected``'s keys (-> "integer", "number", "string" or "object") present in ``data`` has that
    type (``null`` is allowed)."""
    for key, kind in expected.items():
        value = data.get(key)
        if value is not None and not _FIELD_TYPES[kind](value):
            raise DamagedRun(file, f"{key}: expected {'an' if kind[0] in 'aeiou' else 'a'} {kind}, got {value!r:.60}")


_FIELD_TYPES = {
    "integer": lambda value: isinstance(value, int) and not isinstance(value, bool),
    "number": lambda value: isinstance(value, int | float) and not isinstance(value, bool),
    "string": lambda value: isinstance(value, str),
    "object": lambda value: isinstance(value, dict),
}


def read_status_file(path: Path) -> dict[str, Any]:
    """The checked ``status.json`` of the run at ``path`` (``DamagedRun`` if it is not a run status)."""
    file = path / STATUS_FILE
    status = _read_json(file)
    if status.get("status") not in STATUSES:
        got = repr(status["status"])[:60] if "status" in status else "no status"
        raise DamagedRun(file, f"status: expected one of {', '.join(STATUSES)}, got {got}")
    _check_fields(file, status, {"steps": "integer", "message": "string"})
    return status


def _read_summary(path: Path, status: str) -> dict[str, Any]:
    file = path / SUMMARY_FILE
    if not file.exists() and status not in ("completed", "diverged"):
        return {}  # written when the run finishes
    summary = _read_json(file)
    expected = {"steps": "integer", "planned_steps": "integer", "wall_time_s": "number", "timing_s": "object"}
    _check_fields(file, summary, expected)
    _check_declarations(file, summary.get("task_declarations"))
    return summary


def _check_declarations(file: Path, declarations: Any) -> None:
    """``task_declarations``: task -> {loss, fisher, primary_metric (strings), higher_is_better: metric -> bool}."""
    if declarations is None:
        return
    if not isinstance(declarations, dict):
        raise DamagedRun(file, f"task_declarations: expected an object, got {_kind(declarations)}")
    for task, declared in declarations.items():
        key = f"task_declarations.{task}"
        if not isinstance(declared, dict):
            raise DamagedRun(file, f"{key}: expected an object, got {_kind(declared)}")
        _check_fields(file, declared, {"loss": "string", "fisher": "string", "primary_metric": "string"})
        directions = declared.get("higher_is_better")
        if not isinstance(directions, dict) or not all(isinstance(value, bool) for value in directions.values()):
            raise DamagedRun(file, f"{key}.higher_is_better: expected an object of metric names to booleans")
        if declared.get("primary_metric") not in directions:
            raise DamagedRun(file, f"{key}.primary_metric: expected one of the metrics in higher_is_better")


def _read_environment(path: Path) -> None:
    file = path / ENVIRONMENT_FILE
    if file.exists():
        _check_fields(file, _read_json(file), {"packages": "object"})


def read_stored_config(path: Path) -> RunConfig:
    """The validated ``config.yaml`` of the run at ``path`` (``DamagedRun`` naming the key that is wrong)."""
    file = path / CONFIG_FILE
    try:
        if not file.is_file():
            raise DamagedRun(file, "missing" if not file.exists() else "not a file")
        return validate_config(read_yaml(file), str(file), imports=False)
    except ConfigError as error:
        raise DamagedRun(file, str(error).removeprefix(f"{file}: ")) from None
    except UnicodeDecodeError as error:
        raise DamagedRun(file, f"not UTF-8 text (byte {error.start})") from None
    except OSError as error:
        raise DamagedRun(file, f"unreadable ({error.strerror or error})") from None


def read_records(path: Path) -> pd.DataFrame:
    """The checked records of the run at ``path``; a torn last line (the run was killed mid-write) is dropped.

    Raises ``DamagedRun`` naming the line for a wrong header, a row without exactly six fields, a step that is
    not an integer, an epoch or value that is not a number (``nan``, ``inf`` are numbers) or an empty name.
    """
    file = path / RECORDS_FILE
    text = _read_text(file)
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    header, _, body = text.partition("\n")
    if header.rstrip("\r") != RECORDS_HEADER:
        shown = f"{header[:80]!r}" if header else "an empty file"
        raise DamagedRun(file, f"expected the header {RECORDS_HEADER!r}, got {shown}", line=1)
    if not body:
        return pd.DataFrame({column: pd.Series(dtype=dtype) for column, dtype in _RECORD_DTYPES.items()})
    frame = _parse_records_fast(text) if '"' not in body else None
    return frame if frame is not None else _parse_records_exact(file, body)


def _parse_records_fast(text: str) -> pd.DataFrame | None:
    """The records, if every row is plainly well-formed; ``None`` sends them to the exact (slower) check."""
    fields = len(RECORD_COLUMNS) - 1
    if any(line.count(",") != fields for line in text.splitlines()):
        return None
    try:
        frame = pd.read_csv(
            io.StringIO(text),
            dtype=_RECORD_DTYPES,
            keep_default_na=False,
            na_values={"epoch": ["nan"], "value": ["nan"]},
            skip_blank_lines=False,
        )
    except (ValueError, pd.errors.ParserError):
        return None
    names = frame[["task", "split", "metric"]]
    if list(frame.columns) != list(RECORD_COLUMNS) or (frame["step"] < 0).any() or (names == "").any().any():
        return None
    return frame


def _parse_records_exact(file: Path, body: str) -> pd.DataFrame:
    """Check every row with the csv module; ``DamagedRun`` names the first bad line."""
    columns: dict[str, list[Any]] = {column: [] for column in RECORD_COLUMNS}
    reader = csv.reader(io.StringIO(body))
    for row in reader:
        line = reader.line_num + 1  # the header is line 1
        if len(row) != len(RECORD_COLUMNS):
            raise DamagedRun(file, f"expected {len(RECORD_COLUMNS)} fields ({RECORDS_HEADER}), got {len(row)}", line)
        step, epoch, task, split, metric, value = row
        if not _INTEGER.fullmatch(step):
            raise DamagedRun(file, f"step: expected a non-negative integer, got {step[:40]!r}", line)
        for name, cell in (("epoch", epoch), ("value", value)):
            try:
                columns[name].append(float(cell))
            except ValueError:
                raise DamagedRun(file, f"{name}: expected a number, got {cell[:40]!r}", line) from None
        for name, cell in (("task", task), ("split", split), ("metric", metric)):
            if not cell:
                raise DamagedRun(file, f"{name}: empty", line)
            columns[name].append(cell)
        columns["step"].append(int(step))
    return pd.DataFrame({column: pd.Series(values, dtype=_RECORD_DTYPES[column]) for column, values in columns.items()})


# -- reading one run ---------------------------------------------------------------------------------------


def check_run(path: Path, status: Mapping[str, Any], summary: Mapping[str, Any], records: pd.DataFrame) -> None:
    """Checks across the files of one run whose files each read well; raises ``DamagedRun``.

    The one place for a whole-run integrity check (e.g. records complete for the status).
    """
    if status["status"] in ("completed", "diverged") and not summary:
        raise DamagedRun(path / SUMMARY_FILE, f"empty, but {STATUS_FILE} says the run is {status['status']}")
    problem = damage(path)  # a finished run's records must be exactly the rows it wrote (truncated, duplicated, ...)
    if problem is not None:
        name, _, reason = problem.partition(" ")
        raise DamagedRun(path / name.rstrip(":"), reason)


def read_run(path: Path) -> StoredRun:
    """Read and check the run directory at ``path`` as a unit; ``DamagedRun`` for the first defect found."""
    status = read_status_file(path)
    config = read_stored_config(path)
    summary = _read_summary(path, status["status"])
    _read_environment(path)
    records = read_records(path)
    check_run(path, status, summary, records)
    return StoredRun(_run_row(path, status, config, summary), records)


def _training_columns(config: RunConfig, tasks: int) -> dict[str, Any]:
    """The run table's optimization columns: from the supervised sections, or for a run on an environment
    setting from its ``rl`` section (method ``sac``, its Adam's ``lr``, ``batch_size`` per task) with the columns
    that have no meaning there (temperature, loss_scale, momentum) empty (NaN)."""
    if config.rl is not None:
        return {
            "method": RL_METHOD,
            "optimizer": "adam",
            "lr": config.rl.lr,
            "batch_size": config.rl.batch_size,
            "temperature": math.nan,
            "loss_scale": math.nan,
            "momentum": math.nan,
        }
    lr = config.optimizer.lr
    batch_size = config.training.batch_size
    return {
        "method": config.method["name"],
        "optimizer": config.optimizer.name,
        "lr": lr,
        "batch_size": batch_size,
        "temperature": lr / batch_size,
        "loss_scale": resolve_loss_scale(config.training.loss_scale, max(tasks, 1)),
        "momentum": config.optimizer.momentum,
    }


def _run_row(path: Path, status: Mapping[str, Any], config: RunConfig, summary: Mapping[str, Any]) -> dict[str, Any]:
    tasks = list(config.setting.tasks or [])
    return {
        "run_id": path.name,
        "path": str(path),
        "status": status["status"],
        "variant": config.variant,
        "setting": config.setting.label,
        "tasks": "+".join(tasks),
        "num_tasks": len(tasks),
        **_training_columns(config, len(tasks)),
        "seed": config.seed,
        "steps": status.get("steps", summary.get("steps")),
        "planned_steps": summary.get("planned_steps"),
        "message": status.get("message") or "",
        "wall_time_s": summary.get("wall_time_s"),
        "timing_s": summary.get("timing_s") or {},
        "task_declarations": summary.get("task_declarations") or {},
        "config": config.to_dict(),
    }


def load(directory: str | Path) -> RunResults:
    """All runs stored below ``directory``; a damaged run is skipped with a ``DamagedRunWarning`` (module docstring).

    Raises ``FileNotFoundError`` when ``directory`` is not a directory.
    """
    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such results directory")
    rows = []
    frames = []
    skipped: list[tuple[str, str]] = []
    for path in sorted(status.parent for status in root.rglob(STATUS_FILE)):
        try:
            run = read_run(path)
        except DamagedRun as damage:
            skipped.append((str(path), str(damage)))
            warnings.warn(f"{damage}; run skipped", DamagedRunWarning, stacklevel=2)
            continue
        rows.append(run.row)
        records = run.records
        records.insert(0, "run_id", path.name)
        frames.append(records)
    runs = pd.DataFrame(rows, columns=list(RUN_COLUMNS))
    records = (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame({column: pd.Series(dtype=object) for column in ("run_id", *RECORD_COLUMNS)})
    )
    return RunResults(runs=runs, records=records, skipped=skipped)
