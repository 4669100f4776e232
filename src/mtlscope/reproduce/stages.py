"""A later stage of a preset: its runs derived from an earlier stage's grouping (Fifty et al. 2020, Fig. 4).

The pipeline of Fig. 4: the affinities of the first stage's multi-task runs give, through the ``task_grouping``
output, the best grouping for each split budget; the stage then trains every distinct group of the budgets it
takes (``from.splits``) once — a group chosen for two budgets is one set of runs — plus the ``baselines`` it asks
for (each task alone, all tasks together), and its outputs (e.g. ``grouping_evaluation``) read those runs.

For a stage named ``NAME`` the preset's output directory ``DIR`` gets ``DIR/stages/NAME/``:

- ``grouping.json``: what fed the stage, written before any of its runs starts: the source output (name, kind,
  options, ``where``), the affinity matrix the grouping search saw (``tasks``, ``affinity`` rows = sources), each
  budget's ``groups``, ``served_by`` and ``score``, the ``baselines`` and the ``groups`` trained, in order;
- ``sweep.yaml``: the stage's sweep, self-contained (the base config inline, the command's overrides applied):
  ``mtlscope sweep DIR/stages/NAME/sweep.yaml --out DIR/stages/NAME/runs`` runs the same runs (same run ids);
- ``runs/``: the stage's run directories (and ``selection.csv``/``final.csv`` for a protocol), resumable like
  any sweep's: a finished run is never run again. Before the stage runs, every finished, undamaged run of the
  earlier stages whose task set is one of the stage's groups (e.g. the first stage's all-tasks runs) is copied
  in (``reuse_finished_runs``): the same config has the same run id, so it is not trained again.

The stage's sweep is the first stage's sweep with the stage's ``sweep`` changes
(``mtlscope.reproduce.preset.merge_sweep``), its base config read inline, and ``setting.tasks`` swept over the
groups as the first ``grid`` axis: the same base config, seeds and protocol for every group.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from mtlscope.analysis.grouping_evaluation import BudgetGrouping, budget_groupings, group_key
from mtlscope.reproduce.preset import OutputSpec, Preset, StageSpec, merge_sweep
from mtlscope.runs.config import ConfigError, apply_overrides, read_yaml
from mtlscope.runs.locking import RUN_LOCK_FILE, hold_run
from mtlscope.runs.results import DamagedRun, RunResults, read_stored_config
from mtlscope.runs.store import FINISHED, STATUS_FILE, damage, stored_status, write_atomic

STAGES_DIRECTORY = "stages"
GROUPING_FILE = "grouping.json"
SWEEP_FILE = "sweep.yaml"
RUNS_DIRECTORY = "runs"
GROUPING_KEYS: tuple[str, ...] = ("stage", "from", "tasks", "affinity", "budgets", "baselines", "groups")


def stage_directory(out: str | Path, stage: StageSpec) -> Path:
    """``DIR/stages/NAME``: where a stage's files and runs go."""
    return Path(out) / STAGES_DIRECTORY / stage.name


def groups_to_train(
    budgets: Sequence[BudgetGrouping], tasks: Sequence[str], baselines: Sequence[str] = ()
) -> list[tuple[str, ...]]:
    """The distinct groups of ``budgets`` in order of first appearance (a group chosen for several budgets, in
    whatever task order, once), then each task alone (``single_task``) and all ``tasks`` (``all_tasks``) where
    asked for and not already there."""
    groups: dict[str, tuple[str, ...]] = {}
    for budget in budgets:
        for group in budget.groups:
            groups.setdefault(group_key(group), tuple(group))
    if "single_task" in baselines:
        for task in tasks:
            groups.setdefault(group_key([task]), (task,))
    if "all_tasks" in baselines:
        groups.setdefault(group_key(tasks), tuple(tasks))
    return list(groups.values())


def derive_grouping(stage: StageSpec, source: OutputSpec, results: RunResults) -> dict[str, Any]:
    """The grouping record of ``stage`` (``grouping.json``'s content) from the runs ``results`` that the source
    output ``source`` (a ``task_grouping``) was made from: its ``where`` and options applied as the output does.
    ``ValueError`` when the runs give no affinity matrix."""
    from mtlscope.reproduce.outputs import task_groupings
    from mtlscope.reproduce.runner import select_runs

    subset = select_runs(results, source.where)
    options = {key: value for key, value in source.options.items() if key in ("affinity", "singleton")}
    matrix, groupings = task_groupings(subset, stage.splits, **options)
    tasks = [str(task) for task in matrix.columns]
    budgets = [
        {
            "splits": count,
            "groups": [list(group) for group in grouping.groups],
            "served_by": {task: list(group) for task, group in grouping.served_by.items()},
            "score": grouping.score,
        }
        for count, grouping in groupings.items()
    ]
    groups = groups_to_train(budget_groupings(budgets), tasks, stage.baselines)
    return {
        "stage": stage.name,
        "from": {"output": source.name, "kind": source.kind, "options": source.options, "where": source.where},
        "tasks": tasks,
        "affinity": [[float(value) for value in row] for row in matrix.to_numpy()],
        "budgets": budgets,
        "baselines": list(stage.baselines),
        "groups": [list(group) for group in groups],
    }


def read_grouping(path: str | Path) -> dict[str, Any]:
    """A stage's ``grouping.json``, checked: one-line ``ConfigError`` naming the file and field otherwise."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such grouping file (written by mtlscope reproduce for a stage)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: not a JSON grouping file ({error})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with the keys {', '.join(GROUPING_KEYS)}")
    missing = [key for key in GROUPING_KEYS if key not in data]
    if missing:
        raise ConfigError(f"{path}: {missing[0]}: required key is missing")
    tasks = data["tasks"]
    if not isinstance(tasks, list) or not tasks or not all(isinstance(task, str) for task in tasks):
        raise ConfigError(f"{path}: tasks: expected a non-empty list of task names")
    affinity = data["affinity"]
    if (
        not isinstance(affinity, list)
        or len(affinity) != len(tasks)
        or not all(isinstance(row, list) and len(row) == len(tasks) for row in affinity)
        or not all(isinstance(v, (int, float)) and math.isfinite(v) for row in affinity for v in row)
    ):
        raise ConfigError(f"{path}: affinity: expected a {len(tasks)} x {len(tasks)} matrix of finite numbers")
    try:
        budgets = budget_groupings(data["budgets"])
    except ValueError as error:
        raise ConfigError(f"{path}: budgets: {error}") from None
    unknown = sorted({task for budget in budgets for group in budget.groups for task in group} - set(tasks))
    if unknown:
        raise ConfigError(f"{path}: budgets: task {unknown[0]!r} is not one of the file's tasks")
    expected = groups_to_train(budgets, tasks, data["baselines"] if isinstance(data["baselines"], list) else [])
    if data["groups"] != [list(group) for group in expected]:
        raise ConfigError(f"{path}: groups: not the distinct groups of the budgets and baselines")
    return data


def stage_sweep(
    preset: Preset, stage: StageSpec, groups: Sequence[Sequence[str]], overrides: Sequence[str] = ()
) -> dict[str, Any]:
    """The stage's sweep mapping (module docstring), self-contained: the base config inline, with the first
    sweep's ``overrides`` mapping and then the command's ``overrides`` applied to it (the order ``expand``
    applies them in), and ``setting.tasks`` over ``groups`` as the first grid axis."""
    from mtlscope.sweeps.spec import _set

    sweep = merge_sweep(preset.sweep, stage.sweep_changes)
    base = sweep.get("base")
    if isinstance(base, str):
        loaded = read_yaml(preset.base_dir / base)
        if not isinstance(loaded, Mapping):
            raise ConfigError(f"{preset.source}: base: {base} does not hold a mapping of run config keys")
        base = dict(loaded)
    if not isinstance(base, Mapping):
        raise ConfigError(f"{preset.source}: sweep.base: expected a file path or a mapping")
    base = copy.deepcopy(dict(base))
    changes = sweep.pop("overrides", None) or {}
    if not isinstance(changes, Mapping):
        raise ConfigError(f"{preset.source}: sweep.overrides: expected a mapping of dotted config keys to values")
    for key, value in changes.items():
        _set(base, str(key), value, preset.source)
    sweep["base"] = apply_overrides(base, overrides)
    sweep["name"] = f"{preset.name}-{stage.name}"
    grid = sweep.get("grid") or {}
    if not isinstance(grid, Mapping):
        raise ConfigError(f"{preset.source}: sweep.grid: expected a mapping of dotted config keys to lists")
    sweep["grid"] = {"setting.tasks": [list(group) for group in groups], **grid}
    return sweep


def write_stage_files(directory: Path, grouping: Mapping[str, Any], sweep: Mapping[str, Any]) -> list[Path]:
    """Write ``grouping.json`` and ``sweep.yaml`` into ``directory`` atomically (the caller holds the output
    directory); returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    grouping_path = directory / GROUPING_FILE
    sweep_path = directory / SWEEP_FILE
    write_atomic(grouping_path, json.dumps(grouping, indent=1) + "\n")
    header = (
        f"# The sweep of stage {grouping['stage']}: its groups (grid setting.tasks) from {GROUPING_FILE}.\n"
        f"# mtlscope sweep {SWEEP_FILE} --out runs   (in this directory) runs the same runs.\n"
    )
    write_atomic(sweep_path, header + yaml.safe_dump(dict(sweep), sort_keys=False))
    return [grouping_path, sweep_path]


def reuse_finished_runs(sources: Sequence[Path], target: Path, groups: Sequence[Sequence[str]]) -> int:
    """Copy into ``target`` every finished, undamaged run directory of ``sources`` whose tasks form one of
    ``groups`` and that ``target`` lacks (through a temporary directory beside ``target`` and a rename, holding
    the run's lock); returns how many were copied. A copied run that a stage's sweep plans is skipped by it, as
    completed; one it does not plan is ignored (only the planned runs are analysed)."""
    keys = {group_key(group) for group in groups}
    target.mkdir(parents=True, exist_ok=True)
    copied = 0
    for source in sources:
        if not source.is_dir() or source.resolve() == target.resolve():
            continue
        for path in sorted(status.parent for status in source.glob(f"*/{STATUS_FILE}")):
            if (target / path.name).exists() or stored_status(path) not in FINISHED or damage(path) is not None:
                continue
            try:
                tasks = read_stored_config(path).setting.tasks or []
            except (DamagedRun, ConfigError):
                continue
            if group_key(tasks) not in keys:
                continue
            temporary = target.parent / f".copying-{path.name}"
            with hold_run(path):
                shutil.rmtree(temporary, ignore_errors=True)
                shutil.copytree(path, temporary, ignore=shutil.ignore_patterns(RUN_LOCK_FILE, ".*.tmp"))
                with contextlib.suppress(FileNotFoundError):
                    (temporary / RUN_LOCK_FILE).unlink()
                temporary.rename(target / path.name)
            copied += 1
    return copied
