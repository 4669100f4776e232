"""The papers' training protocol as one command: select hyperparameters on validation per variant, then seeds.

A sweep file with a ``protocol`` mapping (see docs/sweeps.md, "The papers' protocol")::

    base: ../presets/demo.yaml
    zip:                            # the variants (zip, grid and auxiliary_sets, as in any sweep file)
      setting.tasks: [[digits1], [digits1, digits2]]
    protocol:
      select: {optimizer.lr: [0.001, 0.003, 0.01], training.batch_size: [16, 32]}   # the hyperparameter grid
      selection_seed: 0             # seed of the selection stage (default 0)
      seeds: 3                      # seeds of the final stage: a count (0..n-1, default 3) or a list
      metric: val                   # selection score (default val; see SCORES)

Stage 1 (selection) runs every variant at every point of ``select`` with ``selection_seed``: the file is
expanded by ``spec.expand`` once per point, with ``grid`` extended by that point and ``seeds`` set to
``[selection_seed]``. Each run gets a *score*: the mean over the variant's tasks of the validation primary
metric (``val``: mean over the 10 best validation checkpoints, as ``generalization`` but on validation;
``best_val``: the best checkpoint; ``last_val``: the last one; a lower-is-better metric enters negated, so a
higher score is always better). ``select_best`` picks, per variant, the completed run with the highest score
(ties: the first in grid order); diverged and failed runs, and runs without validation records, are excluded
and reported, and a variant whose every run is excluded gets no final runs. Stage 2 (final) expands the file
again with the chosen point of each variant and the final seeds. The run of the final stage with the
selection seed is the selection run itself (same resolved config, same run id), so it is not run again.
``run_protocol`` writes ``selection.csv`` (with ``.md`` and ``.tex``) and ``final.csv`` (the final runs) into the
results directory; ``load_final(out)`` loads the final runs alone (without the unchosen selection runs).

A config's *variant* is its resolved config without ``seed`` and without the selected keys (the canonical JSON
of ``RunConfig.to_dict()`` minus those keys); its label is ``RunConfig.variant``, with ``@`` and a short hash of
that JSON appended when two variants share a label.

ST and MT with equal steps: for every point of ``select``, all variants of one setting (name and options) must
plan the same number of training steps (``training.steps``, or epochs times the setting's steps per epoch, which
task subsets keep); otherwise the protocol is refused (``ConfigError``) before anything runs.

Errors in the ``protocol`` mapping are one-line ``ConfigError``s naming ``protocol.<key>``.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mtlscope.analysis.trajectories import builtin_direction, checkpoint_table
from mtlscope.models.multitask import MAX_SEED, is_seed
from mtlscope.report.tables import to_markdown, write_table
from mtlscope.runs.config import ConfigError, RunConfig, SettingConfig, build_setting, read_yaml, with_plugins
from mtlscope.runs.results import DamagedRun, RunResults, load, read_records
from mtlscope.sweeps.execution import SweepResult, run_sweep
from mtlscope.sweeps.manifest import write_manifest
from mtlscope.sweeps.spec import Sweep, check_run_count, count_runs, expand

PROTOCOL_KEYS: tuple[str, ...] = ("select", "selection_seed", "seeds", "metric")
#: Selection scores: how many of the best validation checkpoints are averaged per task (None: the last one).
SCORES: dict[str, int | None] = {"val": 10, "best_val": 1, "last_val": None}
SELECTION_FILE = "selection.csv"
FINAL_FILE = "final.csv"
DEFAULT_SEEDS = 3


@dataclass(frozen=True)
class Protocol:
    """The parsed ``protocol`` mapping: the hyperparameter grid, the selection seed, final seeds and score."""

    select: dict[str, list[Any]]
    selection_seed: int = 0
    seeds: tuple[int, ...] = tuple(range(DEFAULT_SEEDS))
    metric: str = "val"

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(self.select)

    def points(self) -> list[dict[str, Any]]:
        """The points of ``select`` in grid order (keys in file order, the last fastest)."""
        return [dict(zip(self.select, values, strict=True)) for values in itertools.product(*self.select.values())]


@dataclass(frozen=True)
class Candidate:
    """One run of the selection stage: its variant (key and label), grid point index and resolved config."""

    variant_key: str
    label: str
    point: int
    config: RunConfig
    steps: int


@dataclass(frozen=True)
class ProtocolPlan:
    """A protocol file, validated and its selection stage expanded (``load_protocol``; nothing is run)."""

    name: str
    source: str
    protocol: Protocol
    data: dict[str, Any]
    base_dir: Path
    overrides: tuple[str, ...]
    candidates: tuple[Candidate, ...]
    labels: dict[str, str]  # variant key -> label, in variant order
    duplicates: int = 0

    @property
    def keys(self) -> tuple[str, ...]:
        return self.protocol.keys

    def selection_sweep(self) -> Sweep:
        configs = tuple(candidate.config for candidate in self.candidates)
        return Sweep(f"{self.name} (selection)", self.source, configs, self.duplicates)

    def final_sweep(self, selection: pd.DataFrame) -> Sweep:
        """The final stage: each variant with a chosen row of ``selection`` at its chosen point, every final seed."""
        by_run = {candidate.config.run_id(): candidate for candidate in self.candidates}
        chosen_at: dict[int, set[str]] = {}
        for run_id in selection.loc[selection["chosen"].astype(bool), "run_id"]:
            candidate = by_run[str(run_id)]
            chosen_at.setdefault(candidate.point, set()).add(candidate.variant_key)
        order = {key: index for index, key in enumerate(self.labels)}
        configs: list[tuple[int, int, RunConfig]] = []
        points = self.protocol.points()
        for point in sorted(chosen_at):
            sweep = self._expand(points[point], list(self.protocol.seeds))
            for position, config in enumerate(sweep.configs):
                key = variant_key(config, self.keys)
                if key in chosen_at[point]:
                    configs.append((order[key], position, config))
        configs.sort(key=lambda item: item[:2])
        return Sweep(f"{self.name} (final)", self.source, tuple(config for _, _, config in configs))

    def _expand(self, point: Mapping[str, Any], seeds: list[int]) -> Sweep:
        return _expand_point(self.data, self.source, self.base_dir, self.overrides, point, seeds)


def _expand_point(
    data: Mapping[str, Any],
    source: str,
    base_dir: Path,
    overrides: Sequence[str],
    point: Mapping[str, Any],
    seeds: list[int],
) -> Sweep:
    """``expand`` the sweep mapping with ``grid`` extended by ``point`` (one value per key) and ``seeds``."""
    grid = data.get("grid") or {}
    if not isinstance(grid, Mapping):
        raise ConfigError(f"{source}: grid: expected a mapping of dotted config keys to values")
    grid = {**grid, **{key: [value] for key, value in point.items()}}
    return expand({**data, "grid": grid, "seeds": seeds}, source, base_dir, overrides)


@dataclass(frozen=True)
class ProtocolResult:
    """What ``run_protocol`` did.

    ``selection``: one row per selection run (variant, the selected keys, score, status, chosen, run_id, steps,
    message), variants in expansion order and points in grid order; ``excluded``: the runs left out of the
    selection (diverged, failed, no validation score) and the final runs that did not complete, with their
    ``stage``; ``unselected``: the variants whose every selection run was excluded (they get no final runs).
    """

    name: str
    keys: tuple[str, ...]
    selection: pd.DataFrame
    excluded: pd.DataFrame
    unselected: list[str]
    selection_result: SweepResult
    final: SweepResult
    final_configs: tuple[RunConfig, ...]
    files: list[Path]

    @property
    def chosen(self) -> pd.DataFrame:
        """The chosen row of every variant that has one."""
        return self.selection[self.selection["chosen"]].reset_index(drop=True)


# -- parsing -----------------------------------------------------------------------------------------------


def has_protocol(path: str | Path) -> bool:
    """Whether the sweep file at ``path`` has a ``protocol`` mapping (``ConfigError`` if it cannot be read)."""
    data = read_yaml(Path(path))
    return isinstance(data, Mapping) and "protocol" in data


def parse_protocol(value: Any, data: Mapping[str, Any], source: str, overrides: Sequence[str] = ()) -> Protocol:
    """Validate the ``protocol`` mapping of the sweep mapping ``data`` (one-line ``ConfigError``s)."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"{source}: protocol: expected a mapping with the keys {', '.join(PROTOCOL_KEYS)}")
    unknown = [key for key in value if key not in PROTOCOL_KEYS]
    if unknown:
        raise ConfigError(f"{source}: protocol.{unknown[0]}: unknown key; expected one of: {', '.join(PROTOCOL_KEYS)}")
    select = _select(value.get("select"), data, source, overrides)
    selection_seed = value.get("selection_seed", 0)
    if not is_seed(selection_seed):
        raise ConfigError(
            f"{source}: protocol.selection_seed: expected an integer in [0, 2**63 - 1], got {selection_seed!r}"
        )
    if "seeds" in value and data.get("seeds") is not None:
        raise ConfigError(f"{source}: protocol.seeds: the sweep file has seeds too; give the final seeds in one place")
    if "seeds" in value:
        seeds = _seeds(value["seeds"], f"{source}: protocol.seeds")
    elif data.get("seeds") is not None:
        seeds = _seeds(data["seeds"], f"{source}: seeds")
    else:
        seeds = tuple(range(DEFAULT_SEEDS))
    metric = value.get("metric", "val")
    if metric not in SCORES:
        raise ConfigError(f"{source}: protocol.metric: expected one of {', '.join(SCORES)}, got {metric!r}")
    return Protocol(select=select, selection_seed=selection_seed, seeds=seeds, metric=str(metric))


def _overlaps(a: str, b: str) -> bool:
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def _select(value: Any, data: Mapping[str, Any], source: str, overrides: Sequence[str]) -> dict[str, list[Any]]:
    if not isinstance(value, Mapping) or not value:
        raise ConfigError(
            f"{source}: protocol.select: expected a non-empty mapping of dotted config keys to lists of values"
        )
    swept: list[tuple[str, str]] = []
    for part in ("zip", "grid"):
        if isinstance(data.get(part), Mapping):
            swept += [(f"{part}.{key}", str(key)) for key in data[part]]
    if data.get("auxiliary_sets") is not None:
        swept.append(("auxiliary_sets", "setting.tasks"))
    swept += [(f"the override {override}", override.partition("=")[0].strip()) for override in overrides]
    select: dict[str, list[Any]] = {}
    for key, values in value.items():
        key = str(key)
        where = f"{source}: protocol.select.{key}"
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: expected a non-empty list of values")
        if _overlaps(key, "seed"):
            raise ConfigError(f"{where}: the seeds are protocol.selection_seed and protocol.seeds")
        for name, other in swept:
            if _overlaps(key, other):
                raise ConfigError(f"{where}: also set by {name}; a selected key cannot also define the variants")
        for other in select:
            if _overlaps(key, other):
                raise ConfigError(f"{where}: overlaps protocol.select.{other}")
        select[key] = values
    return select


def _seeds(value: Any, where: str) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_SEED + 1:
        return tuple(range(value))
    if isinstance(value, list) and value and all(is_seed(s) for s in value) and len(set(value)) == len(value):
        return tuple(value)
    raise ConfigError(
        f"{where}: expected a positive count or a non-empty list of distinct seeds in [0, 2**63 - 1], got {value!r}"
    )


def variant_key(config: RunConfig, keys: Sequence[str]) -> str:
    """The canonical JSON of ``config`` (resolved) without ``seed`` and the selected ``keys``: its variant."""
    data = config.to_dict()
    data.pop("seed", None)
    data.pop("data_dir", None)  # where the data are, not what they are
    for key in keys:
        *parents, last = key.split(".")
        node: Any = data
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return json.dumps(data, sort_keys=True)


def _value_at(config: RunConfig, key: str) -> Any:
    node: Any = config.to_dict()
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node if node is None or isinstance(node, str | int | float | bool) else json.dumps(node, sort_keys=True)


def _setting(config: RunConfig) -> Any:
    """The full setting of ``config`` (a few kept, by name and options)."""
    return _built_setting(json.dumps(config.setting.model_dump(exclude={"tasks"}), sort_keys=True), config.data_dir)


@functools.lru_cache(maxsize=4)
def _built_setting(spec: str, data_dir: str | None) -> Any:
    return build_setting(SettingConfig.model_validate(json.loads(spec)), data_dir=data_dir)


def planned_steps(config: RunConfig) -> int:
    """The training steps ``config`` (resolved) plans: ``training.steps``, or epochs times steps per epoch."""
    training = config.training
    if training.steps is not None:
        return training.steps
    return int((training.epochs or 1) * _setting(config).steps_per_epoch(training.batch_size))


def load_protocol(
    path: str | Path, overrides: Sequence[str] = (), max_runs: int | None = None, *, plugins: Sequence[str] = ()
) -> ProtocolPlan:
    """Read a sweep file with a ``protocol`` mapping and expand its selection stage (writes nothing); ``plugins``
    are added to the file's ``plugins``."""
    path = Path(path)
    data = read_yaml(path)
    if not isinstance(data, Mapping) or "protocol" not in data:
        raise ConfigError(f"{path}: protocol: required key is missing (see docs/sweeps.md)")
    return plan_protocol(with_plugins(data, plugins), str(path), path.parent, overrides, max_runs=max_runs)


def plan_protocol(
    data: Mapping[str, Any],
    source: str,
    base_dir: Path,
    overrides: Sequence[str] = (),
    *,
    max_runs: int | None = None,
) -> ProtocolPlan:
    """``load_protocol`` on a sweep mapping with a ``protocol`` key (``base`` paths relative to ``base_dir``).

    The selection runs (points of ``select`` x the runs of one point) are counted before anything is expanded and
    refused past ``max_runs`` (default: the mapping's ``max_runs``, else ``spec.DEFAULT_MAX_RUNS``).
    """
    data = dict(data)
    if "protocol" not in data:
        raise ConfigError(f"{source}: protocol: required key is missing (see docs/sweeps.md)")
    if max_runs is not None:
        data["max_runs"] = max_runs  # kept in the plan's data: the final stage's expansions use it too
    protocol = parse_protocol(data.pop("protocol"), data, source, overrides)
    data.pop("seeds", None)
    points = math.prod(len(values) for values in protocol.select.values())
    check_run_count(points * count_runs({**data, "seeds": [protocol.selection_seed]}, source), data, source)
    name = str(data.get("name") or Path(source).stem)
    found: list[tuple[int, int, str, RunConfig]] = []  # (variant index, point, variant key, config)
    order: dict[str, int] = {}
    labels: dict[str, str] = {}
    duplicates = 0
    for point_index, point in enumerate(protocol.points()):
        sweep = _expand_point(data, source, base_dir, overrides, point, [protocol.selection_seed])
        duplicates += sweep.duplicates
        for config in sweep.configs:
            key = variant_key(config, protocol.keys)
            order.setdefault(key, len(order))
            labels.setdefault(key, config.variant)
            found.append((order[key], point_index, key, config))
    found.sort(key=lambda item: item[:2])  # variants in expansion order, points in grid order (stable)
    labels = _unique_labels(labels)
    ordered = tuple(
        Candidate(key, labels[key], point_index, config, planned_steps(config)) for _, point_index, key, config in found
    )
    _check_equal_steps(ordered, protocol, source)
    return ProtocolPlan(name, source, protocol, data, base_dir, tuple(overrides), ordered, labels, duplicates)


def _unique_labels(labels: Mapping[str, str]) -> dict[str, str]:
    counts = pd.Series(list(labels.values())).value_counts()
    return {
        key: label if counts[label] == 1 else f"{label}@{hashlib.sha256(key.encode()).hexdigest()[:6]}"
        for key, label in labels.items()
    }


def _check_equal_steps(candidates: Sequence[Candidate], protocol: Protocol, source: str) -> None:
    """ST and MT with equal steps: at each point, every variant of one setting plans the same steps."""
    groups: dict[str, list[Candidate]] = {}
    for candidate in candidates:
        setting = candidate.config.setting
        name = json.dumps([setting.model_dump(exclude={"tasks"}), candidate.point], sort_keys=True, default=str)
        groups.setdefault(name, []).append(candidate)
    points = protocol.points()
    for group in groups.values():
        steps = {candidate.steps for candidate in group}
        if len(steps) > 1:
            first = group[0]
            other = next(candidate for candidate in group if candidate.steps != first.steps)
            shown = ", ".join(f"{key}={value!r}" for key, value in points[first.point].items())
            raise ConfigError(
                f"{source}: protocol: ST and MT runs must train for equal steps, but with {shown} {first.label} plans "
                f"{first.steps} steps and {other.label} {other.steps}; give every variant the same training.steps"
            )


# -- scoring and selection -------------------------------------------------------------------------------


def validation_score(
    records: pd.DataFrame,
    run_id: str,
    metrics: Mapping[str, str],
    metric: str = "val",
    higher_is_better: Mapping[str, bool] | None = None,
) -> float:
    """The selection score of a run: the mean over its tasks (``metrics``: task -> primary metric) of the
    validation metric at the best checkpoints (``SCORES[metric]`` of them; ``last_val``: the last checkpoint).
    A lower-is-better metric (``higher_is_better``: task -> the direction its task declares; a built-in metric's
    direction where not given) enters negated. NaN when a task has no validation record."""
    top = SCORES[metric]
    values = []
    for task, task_metric in metrics.items():
        table = checkpoint_table(records, run_id, task, task_metric).dropna(subset=["val"])
        if table.empty:
            return math.nan
        declared = (higher_is_better or {}).get(task)
        higher = builtin_direction(task_metric) if declared is None else declared
        if top is None:
            value = float(table["val"].iloc[-1])
        else:
            value = float(table.sort_values("val", ascending=not higher, kind="stable").head(top)["val"].mean())
        values.append(value if higher else -value)
    return float(np.mean(values)) if values else math.nan


def select_best(scores: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """``scores`` (one row per selection run: ``variant``, the selected ``keys``, ``status``, ``score``; the rows
    of a variant in grid order) with a boolean ``chosen`` column: per variant, the first row with the highest
    score among its completed runs with a finite score. Diverged, failed and unscored rows are never chosen, and
    a variant without an eligible row has no chosen row."""
    missing = [column for column in ("variant", "status", "score", *keys) if column not in scores.columns]
    if missing:
        raise ValueError(f"select_best: scores lack the columns {', '.join(missing)}")
    table = scores.reset_index(drop=True).copy()
    score = pd.to_numeric(table["score"], errors="coerce").astype(float)
    eligible = (table["status"] == "completed") & np.isfinite(score)
    best = [score[group.index].idxmax() for _, group in table[eligible].groupby("variant", sort=False)]
    table["chosen"] = table.index.isin(best)  # idxmax: the first of equal maxima, i.e. the first in grid order
    return table


def _message(status: str, score: float, message: str) -> str:
    if status != "completed":
        return message or status
    return "no validation records" if not np.isfinite(score) else ""


def score_selection(plan: ProtocolPlan, result: SweepResult, out: Path) -> pd.DataFrame:
    """The scores table of the selection stage (``select_best``'s input), from the runs stored in ``out``."""
    outcomes = {outcome.run_id: outcome for outcome in result.outcomes}
    rows = []
    for candidate in plan.candidates:
        run_id = candidate.config.run_id()
        outcome = outcomes[run_id]
        score = math.nan
        message = _message(outcome.status, score, outcome.message)
        if outcome.status == "completed":
            try:
                records = read_records(out / run_id)
            except DamagedRun as damage:  # excluded from the selection, like a run without validation records
                message = str(damage)
            else:
                records.insert(0, "run_id", run_id)
                setting = _setting(candidate.config)
                tasks = [setting.task(task) for task in candidate.config.setting.tasks or []]
                metrics = {task.name: task.primary_metric for task in tasks}
                directions = {task.name: task.higher_is_better for task in tasks}
                score = validation_score(records, run_id, metrics, plan.protocol.metric, directions)
                message = _message(outcome.status, score, outcome.message)
        rows.append(
            {
                "variant": candidate.label,
                **{key: _value_at(candidate.config, key) for key in plan.keys},
                "score": score,
                "status": outcome.status,
                "run_id": run_id,
                "steps": candidate.steps,
                "message": message,
            }
        )
    columns = ["variant", *plan.keys, "score", "status", "run_id", "steps", "message"]
    return pd.DataFrame(rows, columns=columns)


# -- running -----------------------------------------------------------------------------------------------


def run_protocol(
    path: str | Path | ProtocolPlan,
    out: str | Path,
    *,
    workers: int = 1,
    overrides: Sequence[str] = (),
    progress: bool = True,
    **execution: Any,
) -> ProtocolResult:
    """Run the protocol of the sweep file ``path`` (or an already loaded plan) into ``out`` (module docstring):
    the selection stage, then ``out/selection.csv`` (with ``.md`` and ``.tex`` copies) and ``out/final.csv`` (the
    final runs: run_id, variant, the selected values, seed), then the final stage. Both stages are recorded in
    ``out/sweep.json`` before they start and resume like any sweep; completed runs are never run again.
    ``execution``: passed to both stages' ``run_sweep`` (``executor``, ``address``, ``trackers``,
    ``threads_per_worker``, ``force``, ``restart_failed``, ``wait``); a run forced in the selection stage is not
    forced again in the final stage.
    """
    plan = path if isinstance(path, ProtocolPlan) else load_protocol(path, overrides)
    out = Path(out)
    selection_sweep = plan.selection_sweep()
    write_manifest(selection_sweep, out, wait=execution.get("wait", False))
    first = run_sweep(selection_sweep.configs, out, workers=workers, progress=progress, **execution)
    selection = select_best(score_selection(plan, first, out), plan.keys)
    columns = ["variant", *plan.keys, "score", "status", "chosen", "run_id", "steps", "message"]
    selection = selection[columns]
    title = (
        f"Hyperparameter selection of {plan.name}: score = {plan.protocol.metric} (mean over the variant's tasks), "
        f"seed {plan.protocol.selection_seed}; chosen = highest score per variant among completed runs."
    )
    files = write_table(selection, out / SELECTION_FILE, title=title)
    final_sweep = plan.final_sweep(selection)
    final_runs = pd.DataFrame(
        [
            {
                "run_id": config.run_id(),
                "variant": plan.labels[variant_key(config, plan.keys)],
                **{key: _value_at(config, key) for key in plan.keys},
                "seed": config.seed,
            }
            for config in final_sweep.configs
        ],
        columns=["run_id", "variant", *plan.keys, "seed"],
    )
    final_runs.to_csv(out / FINAL_FILE, index=False)
    files.append(out / FINAL_FILE)
    write_manifest(final_sweep, out, wait=execution.get("wait", False))
    if execution.get("force"):  # a forced run that the selection stage ran again is not run a third time
        execution = {**execution, "force": set(execution["force"]) - {outcome.run_id for outcome in first.outcomes}}
    final = run_sweep(final_sweep.configs, out, workers=workers, progress=progress, **execution)
    unselected = [str(v) for v, group in selection.groupby("variant", sort=False) if not group["chosen"].any()]
    excluded = _excluded(selection, final_sweep, final, plan)
    return ProtocolResult(
        name=plan.name,
        keys=plan.keys,
        selection=selection,
        excluded=excluded,
        unselected=unselected,
        selection_result=first,
        final=final,
        final_configs=final_sweep.configs,
        files=files,
    )


def load_final(out: str | Path) -> RunResults:
    """The final-stage runs of the protocol run into ``out`` (listed in ``out/final.csv``), without the other
    selection runs: the input of the transfer tables (``mtlscope.analysis``) for the protocol's results."""
    out = Path(out)
    if not (out / FINAL_FILE).is_file():
        raise FileNotFoundError(f"{out / FINAL_FILE}: no final runs listed (is {out} the output of a protocol?)")
    run_ids = set(pd.read_csv(out / FINAL_FILE, dtype={"run_id": str})["run_id"])
    return load(out).subset(run_ids)


def _excluded(selection: pd.DataFrame, final_sweep: Sweep, final: SweepResult, plan: ProtocolPlan) -> pd.DataFrame:
    columns = ["stage", "variant", "run_id", "status", "message"]
    left_out = selection[selection["message"] != ""]
    rows = [
        {
            "stage": "selection",
            "variant": row.variant,
            "run_id": row.run_id,
            "status": row.status,
            "message": row.message,
        }
        for row in left_out.itertuples()
    ]
    for config, outcome in zip(final_sweep.configs, final.outcomes, strict=True):
        if outcome.status != "completed":
            rows.append(
                {
                    "stage": "final",
                    "variant": plan.labels[variant_key(config, plan.keys)],
                    "run_id": outcome.run_id,
                    "status": outcome.status,
                    "message": outcome.message or outcome.status,
                }
            )
    return pd.DataFrame(rows, columns=columns)


def format_result(result: ProtocolResult) -> str:
    """The selection table, the excluded runs and the final counts, for the command line."""
    first = result.selection_result
    counts = ", ".join(f"{count} {status}" for status, count in sorted(first.counts.items()))
    lines = [f"protocol {result.name}: selection {len(first.outcomes)} runs: {counts} ({first.skipped} already done)"]
    lines.append(to_markdown(result.selection[["variant", *result.keys, "score", "status", "chosen"]]))
    if not result.excluded.empty:
        lines.append("excluded or not completed:")
        lines += [
            f"  {row.stage} {row.variant} {row.run_id}: {row.status} ({row.message})"
            for row in result.excluded.itertuples()
        ]
    for variant in result.unselected:
        lines.append(f"{variant}: every selection run was excluded; no final runs")
    counts = ", ".join(f"{count} {status}" for status, count in sorted(result.final.counts.items()))
    lines.append(
        f"protocol {result.name}: final {len(result.final_configs)} runs: {counts} "
        f"({result.final.skipped} already done) in {result.final.elapsed_s:.1f} s"
    )
    for path in result.files:
        lines.append(f"wrote {path}")
    return "\n".join(lines)
