"""The sweep manifest: ``sweep.json`` in a sweep's output directory, so ``mtlscope sweep-status DIR`` knows
which runs belong to the sweep (all of its expanded configs, including those not started yet).

Written atomically (a uniquely named temporary file, then a rename) before the first run starts, by the driver
holding the directory (``mtlscope.runs.locking.hold_directory``); rewritten when the same directory receives
another sweep (the union of the runs is kept, so several sweeps can share one results directory).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mtlscope.runs.config import ConfigError, RunConfig, validate_config
from mtlscope.runs.locking import hold_directory
from mtlscope.runs.store import write_atomic
from mtlscope.sweeps.spec import Sweep

MANIFEST_FILE = "sweep.json"


def write_manifest(sweep: Sweep, out: str | Path, *, wait: bool = False) -> Path:
    """Record ``sweep``'s configs in ``out/sweep.json`` (merged with the runs already recorded there), holding
    ``out`` (``InUseError`` when another driver does, unless ``wait``)."""
    out = Path(out)
    path = out / MANIFEST_FILE
    with hold_directory(out, wait=wait):
        entries: dict[str, dict[str, Any]] = {}
        names: list[str] = []
        if path.exists():
            previous = json.loads(path.read_text())
            entries = {entry["run_id"]: entry for entry in previous.get("runs", [])}
            names = list(previous.get("sweeps", []))
        for config in sweep.configs:
            entries.setdefault(config.run_id(), {"run_id": config.run_id(), "config": config.to_dict()})
        if sweep.name not in names:
            names.append(sweep.name)
        write_atomic(path, json.dumps({"sweeps": names, "runs": list(entries.values())}, indent=1))
    return path


def read_manifest(out: str | Path) -> list[RunConfig]:
    """The configs recorded in ``out/sweep.json`` (``ConfigError`` when there is none)."""
    path = Path(out) / MANIFEST_FILE
    if not path.is_file():
        raise ConfigError(f"{path}: no sweep manifest (is {out} the --out of mtlscope sweep?)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}: corrupt sweep manifest ({error.msg} at line {error.lineno})") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: corrupt sweep manifest (not UTF-8 text: byte at position {error.start})") from None
    runs = data.get("runs", []) if isinstance(data, dict) else None
    if not isinstance(runs, list):
        raise ConfigError(f"{path}: corrupt sweep manifest (expected a mapping with a list of runs)")
    configs = []
    for index, entry in enumerate(runs):
        if not isinstance(entry, dict) or not isinstance(entry.get("config"), dict):
            raise ConfigError(f"{path}: runs[{index}]: expected a mapping with the run's config (a mapping)")
        configs.append(validate_config(entry["config"], f"{path}: runs[{index}].config"))
    return configs
