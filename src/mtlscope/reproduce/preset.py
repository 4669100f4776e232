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
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from mtlscope.runs.config import ConfigError, read_yaml

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
)
OUTPUT_KEYS: tuple[str, ...] = ("kind", "name", "where")
RESULTS: tuple[str, ...] = ("final", "all")


@dataclass(frozen=True)
class OutputSpec:
    kind: str
    name: str
    where: dict[str, list[Any]]
    options: dict[str, Any]


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
    )


def _text(data: Mapping[str, Any], key: str, source: str) -> str:
    value = data[key]
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{source}: {key}: expected a non-empty string")
    return value


def _outputs(value: Any, source: str) -> tuple[OutputSpec, ...]:
    from mtlscope.reproduce.outputs import OUTPUTS

    if not isinstance(value, list) or not value:
        raise ConfigError(f"{source}: outputs: expected a non-empty list of outputs (each a mapping with a kind)")
    specs: list[OutputSpec] = []
    for index, entry in enumerate(value):
        where_in = f"{source}: outputs[{index}]"
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
        if name in {spec.name for spec in specs}:
            raise ConfigError(f"{where_in}.name: {name!r} is used by an earlier output; give each a distinct name")
        values = {str(k): list(v) if isinstance(v, list) else [v] for k, v in where.items()}
        specs.append(OutputSpec(str(kind), name, values, entry))
    return tuple(specs)


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
