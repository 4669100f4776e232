"""The run store: one directory per run.

```
<out>/<run_id>/
  config.yaml       the resolved config (the run id is derived from it)
  environment.json  package versions, platform, device, git commit
  records.csv       long table step, epoch, task, split, metric, value; appended at every checkpoint
  summary.json      final summary (written before the run is marked completed), with what records.csv holds
                    (``records``: rows, last step and sha256 of the file)
  status.json       {"status": running | completed | failed | diverged, ...}; replaced atomically
  state.pt          training state at the last checkpoint (model, optimizer, method, samplers, RNGs);
                    replaced atomically; only unfinished runs (running, failed) keep it
  model.safetensors the final weights of a completed run (``mtlscope.runs.weights``; a diverged run has none)
  best.safetensors  with ``training.keep_best``: the weights at the best validation checkpoint (completed and
                    diverged runs), with the step they come from
  .lock             held by the process writing the run (``mtlscope.runs.locking``)
```

An unfinished run (killed, failed) with a ``state.pt`` resumes from it: ``reopen`` keeps exactly the records
written before that state was saved and training continues exactly as if it had not stopped. A saved state is
loaded with ``torch.load(weights_only=True)`` (tensors, containers, numbers and strings only: nothing in it can
run code); one that cannot be loaded that way, or that does not match the run's records, raises ``StoreError``
and the run starts over from step 0 (``mtlscope.runs.launch.execute`` says so in one line).

Crash safety: records are appended and flushed a whole checkpoint at a time, so a run killed at any
moment leaves a readable partial trajectory (a torn last line is dropped on load). ``status.json``,
``summary.json`` and ``state.pt`` are written to a temporary file with a unique name and renamed into place, so
they are always whole; the ``completed`` status is written last, by one rename, and only after the records on
disk were checked against what the run wrote, so a run is either completed with all its files or not
completed. ``damage(path)`` checks a completed (or diverged) run against its summary afterwards: records
missing, truncated, duplicated or changed, a missing or unreadable summary or config, a weights file missing or
changed (the summary's ``weights`` entry holds the sha256 of each one the run wrote).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import secrets
import shutil
import time
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, TextIO

import torch
import yaml

from mtlscope.engine.trainer import RECORD_COLUMNS, Record
from mtlscope.runs.locking import RUN_LOCK_FILE
from mtlscope.safe_yaml import parse_yaml

Status = Literal["running", "completed", "failed", "diverged"]
STATUSES: tuple[str, ...] = ("running", "completed", "failed", "diverged")
FINISHED: tuple[str, ...] = ("completed", "diverged")

CONFIG_FILE = "config.yaml"
ENVIRONMENT_FILE = "environment.json"
RECORDS_FILE = "records.csv"
STATUS_FILE = "status.json"
SUMMARY_FILE = "summary.json"
STATE_FILE = "state.pt"
STATE_FORMAT = 2
#: The weights files of a finished run, by which weights they hold.
WEIGHTS_FILES: dict[str, str] = {"final": "model.safetensors", "best": "best.safetensors"}
RECORDS_HEADER = ",".join(RECORD_COLUMNS)


class StoreError(ValueError):
    """A stored file of a run is missing, unreadable or inconsistent (the message is one line)."""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def brief(error: BaseException, limit: int = 160) -> str:
    """``Type: first line of the message``, cut to ``limit`` characters."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


@contextlib.contextmanager
def _temporary(path: Path, mode: str) -> Any:
    """A uniquely named temporary file next to ``path`` (``.<name>.<pid>.<random>.tmp``), renamed onto ``path``
    when the block succeeds and removed when it fails."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(descriptor, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a uniquely named temporary file and a rename (never a torn file)."""
    with _temporary(path, "w") as handle:
        handle.write(text)


def write_atomic_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a uniquely named temporary file and a rename (never a torn file)."""
    with _temporary(path, "wb") as handle:
        handle.write(data)


def remove_temporaries(directory: Path) -> None:
    """Remove the temporary files that processes killed mid-write left in ``directory`` (hold its lock)."""
    for path in directory.glob(".*.tmp"):
        with contextlib.suppress(OSError):
            path.unlink()


# -- reading -------------------------------------------------------------------------------------------------


def read_status(path: Path) -> dict[str, Any]:
    status: dict[str, Any] = json.loads((path / STATUS_FILE).read_text())
    return status


def stored_status(path: Path) -> str | None:
    """The status recorded in ``path/status.json``; ``None`` when there is none or it cannot be read."""
    try:
        status = read_status(path)
    except (OSError, ValueError):
        return None
    value = status.get("status") if isinstance(status, dict) else None
    return value if value in STATUSES else None


@dataclass(frozen=True)
class SavedState:
    """A run's saved training state: ``trainer`` (``Trainer.state_dict()``), its step, and the number of record
    rows the run had written when it was saved (``None`` in files of mtlscope before the row count was kept)."""

    trainer: dict[str, Any]
    step: int
    records_rows: int | None


def read_state(path: Path) -> SavedState | None:
    """The saved training state of the run at ``path``; ``None`` when it has none.

    Loaded with ``torch.load(weights_only=True)``: no code in the file runs. Raises ``StoreError`` (one line) for a
    file that cannot be loaded that way (empty, garbage, a pickle of anything but tensors and containers) or that
    is not a saved training state.
    """
    file = path / STATE_FILE
    if not file.exists():
        return None
    try:
        with warnings.catch_warnings():  # torch warns about unusual pickles before refusing them: the error says it
            warnings.simplefilter("ignore")
            data = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:
        raise StoreError(f"{STATE_FILE} unreadable ({brief(error)})") from None
    if not isinstance(data, dict):
        raise StoreError(f"{STATE_FILE} holds a {type(data).__name__}, not a saved training state")
    trainer, rows = (data.get("trainer"), data.get("records_rows")) if "trainer" in data else (data, None)
    if not isinstance(trainer, dict):
        raise StoreError(f"{STATE_FILE}: the trainer state is a {type(trainer).__name__}, not a mapping")
    step = trainer.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise StoreError(f"{STATE_FILE}: no valid step (got {str(step)[:40]!r})")
    if rows is not None and (isinstance(rows, bool) or not isinstance(rows, int) or rows < 0):
        raise StoreError(f"{STATE_FILE}: records_rows is not a row count (got {str(rows)[:40]!r})")
    return SavedState(trainer=trainer, step=step, records_rows=rows)


def _record_lines(text: str) -> tuple[list[str], str]:
    """The complete data lines of a records file (without their newlines) and its torn tail ('' if none);
    ``StoreError`` when the header is not the records header."""
    parts = text.split("\n")
    if parts[0] != RECORDS_HEADER:
        raise StoreError(f"{RECORDS_FILE}: the first line is not the header {RECORDS_HEADER}")
    if len(parts) == 1:  # the header without its newline: a creation cut short
        raise StoreError(f"{RECORDS_FILE}: the header line is not complete")
    return parts[1:-1], parts[-1]


def _step(line: str, number: int) -> int:
    try:
        return int(line.split(",", 1)[0])
    except ValueError:
        raise StoreError(f"{RECORDS_FILE}: row {number} is not a record (step {line[:20]!r})") from None


def _read_records_text(path: Path) -> tuple[bytes, str]:
    file = path / RECORDS_FILE
    if not file.is_file():
        raise StoreError(f"{RECORDS_FILE} missing")
    data = file.read_bytes()
    try:
        return data, data.decode("utf-8")
    except UnicodeDecodeError:
        raise StoreError(f"{RECORDS_FILE} is not text (binary content)") from None


def records_digest(path: Path) -> dict[str, Any]:
    """What ``path/records.csv`` holds: ``{"rows", "last_step", "sha256"}`` (``StoreError`` when it is not a
    whole records file: missing, no header, a torn last line)."""
    data, text = _read_records_text(path)
    lines, torn = _record_lines(text)
    if torn:
        raise StoreError(f"{RECORDS_FILE} ends in an incomplete line")
    last = _step(lines[-1], len(lines)) if lines else None
    return {"rows": len(lines), "last_step": last, "sha256": hashlib.sha256(data).hexdigest()}


def _records_damage(path: Path, expected: Mapping[str, Any]) -> str | None:
    rows, last, digest = expected.get("rows"), expected.get("last_step"), expected.get("sha256")
    if not isinstance(rows, int) or not isinstance(digest, str):
        return f"{SUMMARY_FILE}: the records entry is not understood"
    try:
        data, text = _read_records_text(path)
        if hashlib.sha256(data).hexdigest() == digest:
            return None
        lines, torn = _record_lines(text)
    except StoreError as error:
        return str(error)
    found = len(lines)
    at = f" (last step {_last_step(lines)} of {last})" if lines else ""
    if found < rows:
        return f"{RECORDS_FILE} truncated: {found} of {rows} rows{at}"
    if found > rows:
        duplicated = _duplicated(lines)
        what = f", {duplicated} of them duplicated" if duplicated else ""
        return f"{RECORDS_FILE} has {found} rows, {rows} expected{what}"
    if torn:
        return f"{RECORDS_FILE} ends in an incomplete line"
    return f"{RECORDS_FILE} changed after the run finished (same {rows} rows, different content)"


def _duplicated(lines: list[str]) -> int:
    """Rows repeating the (step, task, split, metric) of an earlier row."""
    keys = Counter(",".join(line.split(",")[i] for i in (0, 2, 3, 4)) for line in lines if line.count(",") >= 5)
    return sum(count - 1 for count in keys.values() if count > 1)


def _legacy_damage(path: Path, summary: Mapping[str, Any]) -> str | None:
    """The checks possible without a recorded digest: whole lines, no duplicated rows, and a completed run's
    records ending at its last step (the last checkpoint is the last step)."""
    try:
        _, text = _read_records_text(path)
        lines, torn = _record_lines(text)
    except StoreError as error:
        return str(error)
    if torn:
        return f"{RECORDS_FILE} ends in an incomplete line"
    duplicated = _duplicated(lines)
    if duplicated:
        return f"{RECORDS_FILE} has {duplicated} duplicated rows"
    steps = summary.get("steps")
    if stored_status(path) == "completed" and isinstance(steps, int) and lines:
        last = _step(lines[-1], len(lines))
        if last != steps:
            return f"{RECORDS_FILE} truncated: last step {last} of {steps}"
    return None


def _last_step(lines: list[str]) -> str:
    return lines[-1].split(",", 1)[0][:20]


def damage(path: Path) -> str | None:
    """What is wrong with the completed (or diverged) run at ``path``, in one line; ``None`` when it is whole or
    is not a finished run (running, failed, no status). Checks that the summary and the config are there and
    readable and that ``records.csv`` is exactly what the run wrote (rows and sha256 recorded in the summary;
    for runs of mtlscope before that record: whole lines, no duplicated rows, and a completed run's records
    reaching its last step), and that every weights file the summary records is there with its sha256."""
    if stored_status(path) not in FINISHED:
        return None
    try:
        summary = json.loads((path / SUMMARY_FILE).read_text())
    except FileNotFoundError:
        return f"{SUMMARY_FILE} missing"
    except (OSError, ValueError) as error:
        return f"{SUMMARY_FILE} unreadable ({brief(error)})"
    if not isinstance(summary, dict):
        return f"{SUMMARY_FILE} holds a {type(summary).__name__}, not a summary"
    try:
        config = parse_yaml((path / CONFIG_FILE).read_text())
    except FileNotFoundError:
        return f"{CONFIG_FILE} missing"
    except (OSError, ValueError) as error:  # YAMLInputError is a ValueError
        return f"{CONFIG_FILE} unreadable ({brief(error)})"
    if not isinstance(config, dict):
        return f"{CONFIG_FILE} holds a {type(config).__name__}, not a config"
    expected = summary.get("records")
    if expected is None:  # written before summaries recorded their records: what the rows themselves show
        return _legacy_damage(path, summary)
    if not isinstance(expected, dict):
        return f"{SUMMARY_FILE}: the records entry is not understood"
    return _records_damage(path, expected) or _weights_damage(path, summary)


def file_sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_entry(summary: Mapping[str, Any], which: str) -> dict[str, Any] | None:
    """The summary's record of the ``which`` weights file (``{"sha256", "step", ...}``); ``None`` when the run
    wrote none (a run of mtlscope before weights were kept, a diverged run's final weights, ``best`` without
    ``training.keep_best``). ``StoreError`` when the entry is there but not understood."""
    weights = summary.get("weights")
    if weights is None:
        return None
    if not isinstance(weights, dict) or not set(weights) <= set(WEIGHTS_FILES):
        raise StoreError(f"{SUMMARY_FILE}: the weights entry is not understood")
    entry = weights.get(which)
    if entry is None:
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str) or not _is_step(entry.get("step")):
        raise StoreError(f"{SUMMARY_FILE}: the weights entry of {which!r} is not understood")
    return entry


def _is_step(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _weights_damage(path: Path, summary: Mapping[str, Any]) -> str | None:
    """Every weights file the summary records is there with the recorded sha256."""
    for which, name in WEIGHTS_FILES.items():
        try:
            entry = weights_entry(summary, which)
        except StoreError as error:
            return str(error)
        if entry is None:
            continue
        file = path / name
        if not file.is_file():
            return f"{name} missing"
        try:
            digest = file_sha256(file)
        except OSError as error:
            return f"{name} unreadable ({brief(error)})"
        if digest != entry["sha256"]:
            return f"{name} changed after the run finished (its sha256 is not the one in {SUMMARY_FILE})"
    return None


# -- writing -------------------------------------------------------------------------------------------------


def _clear(path: Path) -> None:
    """Empty the run directory ``path``, keeping its lock file (held by the caller)."""
    for entry in path.iterdir():
        if entry.name == RUN_LOCK_FILE:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


class RunDirectory:
    """Writer of one run's directory (its caller holds the run's lock: ``mtlscope.runs.locking.hold_run``)."""

    def __init__(self, path: Path, rows: int = 0) -> None:
        self.path = path
        self.rows = rows  # record rows in records.csv, counted as they are written
        self._started = time.monotonic()
        self._started_at = now()
        self._records: TextIO | None = None

    @classmethod
    def create(cls, path: Path, config: Mapping[str, Any], environment: Mapping[str, Any]) -> RunDirectory:
        """Start a fresh run directory at ``path`` (an unfinished or damaged earlier attempt there is replaced)."""
        if path.exists():
            _clear(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / CONFIG_FILE).write_text(yaml.safe_dump(dict(config), sort_keys=False))
        (path / ENVIRONMENT_FILE).write_text(json.dumps(dict(environment), indent=2))
        with open(path / RECORDS_FILE, "w") as handle:
            handle.write(RECORDS_HEADER + "\n")
        directory = cls(path)
        directory.set_status("running")
        return directory

    @classmethod
    def reopen(
        cls, path: Path, state: SavedState, config: Mapping[str, Any], environment: Mapping[str, Any]
    ) -> RunDirectory:
        """Continue an unfinished run from ``state``: keep exactly the records written before it was saved.

        Raises ``StoreError`` (nothing changed) when ``records.csv`` cannot hold them: missing, unreadable, fewer
        rows than the state was saved after, or not ending at the state's step. Then rewrites ``records.csv`` and
        ``config.yaml`` atomically, writes ``environment.json`` if it is missing, and removes the summary, the
        weights files (of an earlier attempt) and the temporary files of killed writers.
        """
        _, text = _read_records_text(path)
        lines, _ = _record_lines(text)
        if state.records_rows is not None:
            if len(lines) < state.records_rows:
                raise StoreError(
                    f"{RECORDS_FILE} has {len(lines)} rows, fewer than the {state.records_rows} written before "
                    f"the saved state"
                )
            kept = lines[: state.records_rows]
        else:  # a state saved before the row count was kept: the rows up to its step
            kept = [line for number, line in enumerate(lines, 1) if _step(line, number) <= state.step]
        last = _step(kept[-1], len(kept)) if kept else None
        if last != state.step:
            raise StoreError(f"{RECORDS_FILE} does not end at the saved step {state.step} (last step {last})")
        write_atomic(path / RECORDS_FILE, "".join(f"{line}\n" for line in [RECORDS_HEADER, *kept]))
        write_atomic(path / CONFIG_FILE, yaml.safe_dump(dict(config), sort_keys=False))
        if not (path / ENVIRONMENT_FILE).exists():
            write_atomic(path / ENVIRONMENT_FILE, json.dumps(dict(environment), indent=2))
        for name in (SUMMARY_FILE, *WEIGHTS_FILES.values()):
            (path / name).unlink(missing_ok=True)
        remove_temporaries(path)
        directory = cls(path, rows=len(kept))
        directory.set_status("running", resumed_from_step=state.step)
        return directory

    def save_state(self, state: dict[str, Any]) -> None:
        """Save the training state (with the number of record rows written so far) through a temporary file and a
        rename."""
        with _temporary(self.path / STATE_FILE, "wb") as handle:
            torch.save({"format": STATE_FORMAT, "records_rows": self.rows, "trainer": state}, handle)

    def write(self, records: Sequence[Record]) -> None:
        """Append records (one checkpoint) and flush them to the file."""
        if self._records is None:
            self._records = open(self.path / RECORDS_FILE, "a")  # noqa: SIM115  (kept open across checkpoints)
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        for record in records:
            writer.writerow(
                [
                    record.step,
                    repr(float(record.epoch)),
                    record.task,
                    record.split,
                    record.metric,
                    repr(float(record.value)),
                ]
            )
        self._records.write(buffer.getvalue())
        self._records.flush()
        self.rows += len(records)

    def set_status(self, status: Status, **fields: Any) -> None:
        payload = {
            "status": status,
            "run_id": self.path.name,
            "started_at": self._started_at,
            "updated_at": now(),
            "elapsed_s": round(time.monotonic() - self._started, 3),
            **fields,
        }
        write_atomic(self.path / STATUS_FILE, json.dumps(payload, indent=2))

    def finish(self, status: Status, summary: Mapping[str, Any], **fields: Any) -> Status:
        """Close the records, check them, write the summary (with what the records hold), then set the final
        status (last, atomically); returns it. A run whose records on disk are not the rows it wrote is marked
        ``failed`` instead (a re-run resumes or redoes it). Completed and diverged runs lose their ``state.pt``."""
        self.close()
        summary = dict(summary)
        try:
            digest = records_digest(self.path)
            if digest["rows"] != self.rows:
                raise StoreError(f"{RECORDS_FILE} has {digest['rows']} rows, but this run wrote {self.rows}")
        except StoreError as error:
            if status in FINISHED:
                message = f"{error}; the run is not marked {status}"
                status, fields = "failed", {**fields, "message": message}
                summary.update(status="failed", error=message)
        else:
            summary["records"] = digest
        write_atomic(self.path / SUMMARY_FILE, json.dumps(summary, indent=2))
        self.set_status(status, **fields)
        if status in FINISHED:
            (self.path / STATE_FILE).unlink(missing_ok=True)
        return status

    def close(self) -> None:
        if self._records is not None:
            self._records.close()
            self._records = None
