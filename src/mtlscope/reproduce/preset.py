"""Paper presets: one YAML file per figure or table of the papers (``experiments/``, shipped in the package).

A preset is a sweep (``docs/sweeps.md``, with or without the papers' ``protocol``) plus what to make of its
runs::

    name: main-fig1-mini                  # the file name without .yaml
    title: one line: which figure, on what data
    paper: Mueller, Dredze & Andrews, TMLR 2025   # the source
    reproduces: [Figure 1, Figure 3]
    full: main-fig1                       # a -mini preset names its full variant (or `mini:` the reverse)
    description: what it runs and what to look for
    sweep: {base: {...}, zip: ..., grid: ..., seeds: ..., protocol: ...}   # base paths relative to the file
    results: final                        # analyse the protocol's final runs (default) or `all` runs
    outputs:                              # figures and tables (mtlscope.reproduce.outputs)
      - {kind: generalization_vs_loss, task: digits1}
      - {kind: smto_quadrants, where: {tasks: digits1+digits2}, name: quadrants}

Each output has a ``kind`` (a registered output), an optional ``name`` (file stem; default the kind),
an optional ``where`` (keep only the runs whose runs-table columns equal the given value or one of a list of
values, e.g. ``{method: umtg}``) and the kind's options. ``load_preset`` checks all of it (one-line
``ConfigError`` naming the file and key) without running anything.

A preset may add later *stages*, each a sweep derived from an earlier stage's output (``mtlscope.reproduce.
stages``; Fifty et al.'s Fig. 4: the groups chosen from the affinities are trained)::

    stages:
      - name: groups                      # file stem: its files go to DIR/stages/groups/
        description: what the stage trains   # optional
        from: {output: grouping, splits: [2, 3]}   # a task_grouping output of an earlier stage; splits: a subset
                                          # of the output's budgets (default: all of them)
        baselines: [single_task, all_tasks]   # optional: also train each task alone and all tasks together
        sweep: {seeds: 2}                 # optional: top-level keys of the first stage's sweep to replace (null
                                          # removes one; the base config cannot change)
        results: final                    # as the preset's (default final)
        outputs:                          # as the preset's; names unique over all stages
          - {kind: grouping_evaluation, name: fig4}

A stage's runs are the first stage's sweep (with ``sweep``'s changes) with ``setting.tasks`` swept over the
distinct groups (a grid axis, first), so every group gets the same base config, seeds and protocol.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from mtlscope.runs.config import ConfigError, read_yaml
from mtlscope.sweeps.spec import SWEEP_KEYS

PRESET_KEYS: tuple[str, ...] = (
    "name",
    "title",
    "paper",
    "reproduces",
    "full",
    "mini",
    "description",
    "sweep",
    "results",
    "outputs",
    "stages",
)
STAGE_KEYS: tuple[str, ...] = ("name", "description", "from", "baselines", "sweep", "results", "outputs")
FROM_KEYS: tuple[str, ...] = ("output", "splits")
#: Extra groups a stage may train: every task alone, all tasks together.
BASELINES: tuple[str, ...] = ("single_task", "all_tasks")
#: Top-level keys of the first stage's sweep that a stage may replace (``base`` stays: same base config).
STAGE_SWEEP_KEYS: tuple[str, ...] = (*(key for key in SWEEP_KEYS if key != "base"), "protocol")
#: Output kinds a stage can derive its runs from (each a grouping per split budget).
DERIVING_KINDS: tuple[str, ...] = ("task_grouping",)
_STAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
OUTPUT_KEYS: tuple[str, ...] = ("kind", "name", "where")
RESULTS: tuple[str, ...] = ("final", "all")


@dataclass(frozen=True)
class OutputSpec:
    kind: str
    name: str
    where: dict[str, list[Any]]
    options: dict[str, Any]


@dataclass(frozen=True)
class StageSpec:
    """A later stage of a preset (module docstring): its runs derive from the output ``source`` of an earlier
    stage, the groups of its budgets ``splits``; ``sweep_changes`` replace top-level keys of the first stage's
    sweep (``None`` removes one)."""

    name: str
    description: str
    source: str
    splits: tuple[int, ...]
    baselines: tuple[str, ...]
    sweep_changes: dict[str, Any]
    results: str
    outputs: tuple[OutputSpec, ...]


@dataclass(frozen=True)
class Preset:
    """A validated preset file (``load_preset``); ``sweep`` is the sweep mapping, ``base_dir`` its base paths'."""

    name: str
    title: str
    paper: str
    reproduces: tuple[str, ...]
    description: str
    sweep: dict[str, Any]
    results: str
    outputs: tuple[OutputSpec, ...]
    source: str
    base_dir: Path
    full: str | None = None
    mini: str | None = None
    stages: tuple[StageSpec, ...] = ()

    @property
    def all_outputs(self) -> tuple[OutputSpec, ...]:
        """The outputs of every stage, the first stage's first."""
        return self.outputs + tuple(spec for stage in self.stages for spec in stage.outputs)

    @property
    def has_protocol(self) -> bool:
        return "protocol" in self.sweep

    @property
    def settings(self) -> list[str]:
        """The setting names the sweep uses (base config, zips and grids), in order of appearance."""
        names: list[str] = []
        _setting_names(self.sweep, names)
        return names


def presets_directory() -> Path:
    """The directory of the shipped presets (``experiments/`` in the repository)."""
    return Path(str(resources.files("mtlscope") / "experiments"))


def available_presets() -> list[str]:
    """Names of the shipped presets, sorted."""
    return sorted(path.stem for path in presets_directory().glob("*.yaml"))


def preset_file(name_or_path: str | Path) -> Path:
    """A preset's file: a path to a YAML file, or the name of a shipped preset."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"{path}: no such preset file")
        return path
    shipped = presets_directory() / f"{name_or_path}.yaml"
    if not shipped.is_file():
        raise ConfigError(
            f"{name_or_path}: unknown preset; available: {', '.join(available_presets())} (or a path to a .yaml file)"
        )
    return shipped


def load_preset(name_or_path: str | Path) -> Preset:
    """Read and check a preset (module docstring); nothing is run or written."""
    path = preset_file(name_or_path)
    source = str(path)
    data = read_yaml(path)
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping with the keys {', '.join(PRESET_KEYS)}")
    unknown = [key for key in data if key not in PRESET_KEYS]
    if unknown:
        raise ConfigError(f"{source}: {unknown[0]}: unknown key; expected one of: {', '.join(PRESET_KEYS)}")
    for key in ("name", "title", "paper", "description", "sweep", "outputs"):
        if key not in data:
            raise ConfigError(f"{source}: {key}: required key is missing")
    texts = {key: _text(data, key, source) for key in ("name", "title", "paper", "description")}
    sweep = data["sweep"]
    if not isinstance(sweep, Mapping):
        raise ConfigError(f"{source}: sweep: expected a sweep mapping (docs/sweeps.md)")
    reproduces = data.get("reproduces", [])
    if isinstance(reproduces, str):
        reproduces = [reproduces]
    if not isinstance(reproduces, list) or not all(isinstance(item, str) for item in reproduces):
        raise ConfigError(f"{source}: reproduces: expected a list of figure or table names")
    results = data.get("results", "final")
    if results not in RESULTS:
        raise ConfigError(f"{source}: results: expected one of {', '.join(RESULTS)}, got {results!r}")
    links = {}
    for key in ("full", "mini"):
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{source}: {key}: expected a preset name")
        links[key] = value
    outputs = _outputs(data["outputs"], source)
    stages = _stages(data.get("stages"), dict(sweep), outputs, source)
    return Preset(
        name=texts["name"],
        title=texts["title"],
        paper=texts["paper"],
        reproduces=tuple(reproduces),
        description=texts["description"].strip(),
        sweep=copy.deepcopy(dict(sweep)),
        results=str(results),
        outputs=outputs,
        source=source,
        base_dir=path.parent,
        full=links["full"],
        mini=links["mini"],
        stages=stages,
    )


def _text(data: Mapping[str, Any], key: str, source: str) -> str:
    value = data[key]
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{source}: {key}: expected a non-empty string")
    return value


def _outputs(
    value: Any, source: str, key: str = "outputs", earlier: tuple[OutputSpec, ...] = ()
) -> tuple[OutputSpec, ...]:
    from mtlscope.reproduce.outputs import OUTPUTS

    if not isinstance(value, list) or not value:
        raise ConfigError(f"{source}: {key}: expected a non-empty list of outputs (each a mapping with a kind)")
    specs: list[OutputSpec] = []
    for index, entry in enumerate(value):
        where_in = f"{source}: {key}[{index}]"
        if not isinstance(entry, Mapping) or "kind" not in entry:
            raise ConfigError(f"{where_in}: expected a mapping with a kind; kinds: {', '.join(OUTPUTS.available())}")
        entry = dict(entry)
        kind = entry.pop("kind")
        name = entry.pop("name", kind)
        where = entry.pop("where", {}) or {}
        if not isinstance(name, str) or not name or "/" in name:
            raise ConfigError(f"{where_in}.name: expected a file stem without '/'")
        if not isinstance(where, Mapping):
            raise ConfigError(f"{where_in}.where: expected a mapping of runs-table columns to values")
        try:
            OUTPUTS.check_options(str(kind), entry)
        except (KeyError, ValueError) as error:
            raise ConfigError(f"{where_in}: {error.args[0]}") from None
        if name in {spec.name for spec in (*earlier, *specs)}:
            raise ConfigError(f"{where_in}.name: {name!r} is used by an earlier output; give each a distinct name")
        values = {str(k): list(v) if isinstance(v, list) else [v] for k, v in where.items()}
        specs.append(OutputSpec(str(kind), name, values, entry))
    return tuple(specs)


def _stages(value: Any, sweep: dict[str, Any], outputs: tuple[OutputSpec, ...], source: str) -> tuple[StageSpec, ...]:
    """The ``stages`` list (module docstring), each checked against the outputs of the stages before it."""
    if value is None:
        return ()
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{source}: stages: expected a non-empty list of stages (each a mapping with a name)")
    stages: list[StageSpec] = []
    earlier = outputs
    for index, entry in enumerate(value):
        where = f"{source}: stages[{index}]"
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{where}: expected a mapping with the keys {', '.join(STAGE_KEYS)}")
        unknown = [key for key in entry if key not in STAGE_KEYS]
        if unknown:
            raise ConfigError(f"{where}.{unknown[0]}: unknown key; expected one of: {', '.join(STAGE_KEYS)}")
        for key in ("name", "from", "outputs"):
            if key not in entry:
                raise ConfigError(f"{where}.{key}: required key is missing")
        name = entry["name"]
        if not isinstance(name, str) or not _STAGE_NAME.fullmatch(name):
            raise ConfigError(f"{where}.name: expected a file stem of letters, digits, '-' and '_', got {name!r}")
        if name in {stage.name for stage in stages}:
            raise ConfigError(f"{where}.name: {name!r} is the name of an earlier stage; give each a distinct name")
        description = entry.get("description", "")
        if not isinstance(description, str):
            raise ConfigError(f"{where}.description: expected a string")
        output, splits = _stage_source(entry["from"], earlier, where)
        baselines = entry.get("baselines") or []
        if (
            not isinstance(baselines, list)
            or not all(item in BASELINES for item in baselines)
            or len(set(baselines)) != len(baselines)
        ):
            raise ConfigError(f"{where}.baselines: expected a list of distinct values among {', '.join(BASELINES)}")
        changes = _stage_sweep(entry.get("sweep"), sweep, where)
        results = entry.get("results", "final")
        if results not in RESULTS:
            raise ConfigError(f"{where}.results: expected one of {', '.join(RESULTS)}, got {results!r}")
        specs = _outputs(entry["outputs"], source, f"stages[{index}].outputs", earlier)
        stages.append(
            StageSpec(name, description.strip(), output, splits, tuple(baselines), changes, str(results), specs)
        )
        earlier = earlier + specs
    return tuple(stages)


def _stage_source(value: Any, earlier: tuple[OutputSpec, ...], where: str) -> tuple[str, tuple[int, ...]]:
    """``from``: the name of a grouping output of an earlier stage and the budgets taken from it."""
    from mtlscope.reproduce.outputs import OUTPUTS

    if not isinstance(value, Mapping) or "output" not in value:
        raise ConfigError(f"{where}.from: expected a mapping with output (an earlier output's name) and splits")
    unknown = [key for key in value if key not in FROM_KEYS]
    if unknown:
        raise ConfigError(f"{where}.from.{unknown[0]}: unknown key; expected one of: {', '.join(FROM_KEYS)}")
    name = value["output"]
    known = {spec.name: spec for spec in earlier}
    if name not in known:
        listed = ", ".join(spec.name for spec in earlier if spec.kind in DERIVING_KINDS) or "none"
        raise ConfigError(
            f"{where}.from.output: {name!r} is not an output of an earlier stage; its {'/'.join(DERIVING_KINDS)} "
            f"outputs: {listed}"
        )
    spec = known[name]
    if spec.kind not in DERIVING_KINDS:
        raise ConfigError(
            f"{where}.from.output: {name!r} is a {spec.kind} output; a stage derives its runs from a "
            f"{' or '.join(DERIVING_KINDS)} output"
        )
    computed = spec.options.get("splits", OUTPUTS.entry(spec.kind).options()["splits"])
    computed = [int(count) for count in computed]
    splits = value.get("splits", computed)
    if (
        not isinstance(splits, list)
        or not splits
        or not all(isinstance(count, int) and not isinstance(count, bool) for count in splits)
        or len(set(splits)) != len(splits)
    ):
        raise ConfigError(f"{where}.from.splits: expected a non-empty list of distinct split budgets (integers)")
    missing = [count for count in splits if count not in computed]
    if missing:
        raise ConfigError(
            f"{where}.from.splits: {missing[0]} is not a split budget that output {name!r} computes "
            f"(its splits: {', '.join(str(count) for count in computed)})"
        )
    return str(name), tuple(int(count) for count in splits)


def _stage_sweep(value: Any, sweep: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``sweep``: the changes of the first stage's sweep; the changed sweep must leave ``setting.tasks`` free."""
    changes = value or {}
    if not isinstance(changes, Mapping):
        raise ConfigError(f"{where}.sweep: expected a mapping of sweep keys to replace (null removes one)")
    for key in changes:
        if key not in STAGE_SWEEP_KEYS:
            why = "a stage keeps the first stage's base config" if key == "base" else "not a sweep key a stage changes"
            raise ConfigError(f"{where}.sweep.{key}: {why}; keys it can replace: {', '.join(STAGE_SWEEP_KEYS)}")
    merged = merge_sweep(sweep, changes)
    if merged.get("auxiliary_sets") is not None:
        raise ConfigError(
            f"{where}.sweep: the first stage's sweep draws auxiliary_sets, and a stage sets setting.tasks to its "
            "groups; remove it with auxiliary_sets: null"
        )
    for axis in ("zip", "grid"):
        axes = merged.get(axis)
        if isinstance(axes, Mapping) and any(key == "setting" or str(key).startswith("setting.tasks") for key in axes):
            raise ConfigError(
                f"{where}.sweep: the first stage's sweep sweeps setting.tasks in its {axis}, and a stage sets "
                f"setting.tasks to its groups; replace it with {axis}: (without setting.tasks) or null"
            )
    return dict(changes)


def merge_sweep(sweep: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``sweep`` with the top-level keys of ``changes`` replaced (``None``: removed)."""
    merged = copy.deepcopy(dict(sweep))
    for key, value in changes.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _setting_names(node: Any, names: list[str]) -> None:
    """Collect ``setting.name`` values of a sweep mapping: in base configs and as zip/grid/select values."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            named = key == "setting" and isinstance(value, Mapping) and isinstance(value.get("name"), str)
            if named and value["name"] not in names:
                names.append(value["name"])
            if key == "setting.name" and isinstance(value, list):
                names += [str(v) for v in value if str(v) not in names]
            _setting_names(value, names)
    elif isinstance(node, list):
        for item in node:
            _setting_names(item, names)
