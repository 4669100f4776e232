"""The run store: one directory per run.

```
<out>/<run_id>/
  config.yaml       the resolved config (the run id is derived from it)
  environment.json  package versions, platform, device, git commit
  records.csv       long table step, epoch, task, split, metric, value; appended at every checkpoint
  summary.json      final summary (written before the run is marked completed)
  status.json       {"status": running | completed | failed | diverged, ...}; replaced atomically
  state.pt          training state at the last checkpoint (model, optimizer, method, samplers, RNGs);
                    replaced atomically, removed when the run completes
```

An unfinished run (killed, failed) with a ``state.pt`` resumes from it: ``reopen`` drops the records
after the saved step and training continues exactly as if it had not stopped.

Crash safety: records are appended and flushed a whole checkpoint at a time, so a run killed at any
moment leaves a readable partial trajectory (a torn last line is dropped on load). ``status.json`` and
``summary.json`` are written to a temporary file and renamed into place, so they are always whole; the
``completed`` status is written last, by one rename, so a run is either completed with all its files or
not completed.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, TextIO

import torch
import yaml

from mtlscope.engine.trainer import RECORD_COLUMNS, Record

Status = Literal["running", "completed", "failed", "diverged"]
STATUSES: tuple[str, ...] = ("running", "completed", "failed", "diverged")

CONFIG_FILE = "config.yaml"
ENVIRONMENT_FILE = "environment.json"
RECORDS_FILE = "records.csv"
STATUS_FILE = "status.json"
SUMMARY_FILE = "summary.json"
STATE_FILE = "state.pt"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename (never a torn file)."""
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def read_state(path: Path) -> dict[str, Any] | None:
    """The saved training state of the run at ``path``, if any."""
    if not (path / STATE_FILE).exists():
        return None
    state: dict[str, Any] = torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)
    return state


def read_status(path: Path) -> dict[str, Any]:
    status: dict[str, Any] = json.loads((path / STATUS_FILE).read_text())
    return status


class RunDirectory:
    """Writer of one run's directory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._started = time.monotonic()
        self._started_at = now()
        self._records: TextIO | None = None

    @classmethod
    def create(cls, path: Path, config: Mapping[str, Any], environment: Mapping[str, Any]) -> RunDirectory:
        """Start a fresh run directory at ``path`` (an unfinished earlier attempt there is replaced)."""
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        (path / CONFIG_FILE).write_text(yaml.safe_dump(dict(config), sort_keys=False))
        (path / ENVIRONMENT_FILE).write_text(json.dumps(dict(environment), indent=2))
        with open(path / RECORDS_FILE, "w") as handle:
            handle.write(",".join(RECORD_COLUMNS) + "\n")
        directory = cls(path)
        directory.set_status("running")
        return directory

    @classmethod
    def reopen(cls, path: Path, step: int) -> RunDirectory:
        """Continue an unfinished run: keep the records up to ``step`` (rewritten atomically)."""
        lines = (path / RECORDS_FILE).read_text().splitlines(keepends=True)
        kept = [lines[0]] + [line for line in lines[1:] if line.endswith("\n") and int(line.split(",", 1)[0]) <= step]
        write_atomic(path / RECORDS_FILE, "".join(kept))
        (path / SUMMARY_FILE).unlink(missing_ok=True)
        directory = cls(path)
        directory.set_status("running", resumed_from_step=step)
        return directory

    def save_state(self, state: dict[str, Any]) -> None:
        """Save the training state through a temporary file and a rename."""
        temporary = self.path / f".{STATE_FILE}.tmp"
        torch.save(state, temporary)
        os.replace(temporary, self.path / STATE_FILE)

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

    def finish(self, status: Status, summary: Mapping[str, Any], **fields: Any) -> None:
        """Write the summary, close the records, then set the final status (last, atomically)."""
        write_atomic(self.path / SUMMARY_FILE, json.dumps(dict(summary), indent=2))
        self.close()
        self.set_status(status, **fields)
        if status == "completed":
            (self.path / STATE_FILE).unlink(missing_ok=True)

    def close(self) -> None:
        if self._records is not None:
            self._records.close()
            self._records = None
