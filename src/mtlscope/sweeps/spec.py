"""Sweep files: one base run config expanded over grids, zips, seeds and random auxiliary task sets.

A sweep file is YAML::

    name: lr-and-tasks            # optional label of the sweep
    base: ../presets/demo.yaml    # a run config file (relative to the sweep file) or an inline mapping
    plugins: [mylab.components]   # optional modules to import (added to every run's plugins, see configuration.md)
    overrides: {training.epochs: 10}   # optional dotted keys applied to the base first
    zip:                          # lists advanced together (all of one length)
      setting.tasks: [[digits1], [digits1, digits2]]
      name: [single, multi]
    grid:                         # the cartesian product of these lists
      optimizer.lr: [0.001, 0.003]
      method.name: [umtg, pcgrad]
    auxiliary_sets:               # random auxiliary task sets for conflict studies (main paper §5)
      target: digits1
      pool: [digits2, noisy-digits]   # default: every other task of the setting
      size: 1                     # tasks per auxiliary set
      count: 2                    # distinct sets, drawn without repetition from a seeded generator
      seed: 0
    seeds: 3                      # seeds 0..2, or an explicit list [0, 4, 7]
    max_runs: 100000              # optional: refuse a sweep of more runs (default 100,000; --max-runs)

Expansion order (deterministic): zip entry, then grid point (keys in file order, last key fastest), then
auxiliary set, then seed. Any dotted key of a run config can be swept (``optimizer.lr``,
``training.batch_size``, ``training.loss_scale``, ``optimizer.name``, ``method`` or ``method.name``,
``setting.tasks``, ...). Every expanded config is validated like a run config, and each run keeps the stable
id of its resolved config (``RunConfig.run_id``), so runs repeated across sweeps are recognised and
duplicates within a sweep are run once.

Rules checked before anything is expanded: a key is swept in one place only (not in both ``grid`` and ``zip``,
nor as ``setting.tasks`` next to ``auxiliary_sets`` or ``seed`` next to ``seeds``), and never together with its
parent key (``optimizer`` with ``optimizer.lr``: the parent's value would replace the child's). The number of
runs (zip length x grid points x auxiliary sets x seeds) is counted first and a sweep of more than ``max_runs``
runs (``DEFAULT_MAX_RUNS`` unless the file or the caller raises it) is refused.

Errors are ``ConfigError`` with one line naming the sweep file and the key.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mtlscope.messages import clip, show
from mtlscope.models.multitask import MAX_SEED, is_seed
from mtlscope.runs.config import (
    ConfigError,
    RunConfig,
    apply_overrides,
    build_setting,
    cached_settings,
    read_yaml,
    resolve,
    validate_config,
    with_plugins,
)

SWEEP_KEYS: tuple[str, ...] = (
    "name",
    "base",
    "plugins",
    "overrides",
    "zip",
    "grid",
    "auxiliary_sets",
    "seeds",
    "max_runs",
)
#: Most runs a sweep may expand to unless its ``max_runs`` key (or ``--max-runs``) says otherwise.
DEFAULT_MAX_RUNS = 100_000
AUXILIARY_KEYS: tuple[str, ...] = ("target", "pool", "size", "count", "seed")


@dataclass(frozen=True)
class Sweep:
    """An expanded sweep: its name, the file it came from and its run configs in expansion order."""

    name: str
    source: str
    configs: tuple[RunConfig, ...]
    duplicates: int = 0

    def run_ids(self) -> list[str]:
        return [config.run_id() for config in self.configs]


def load_sweep(
    path: str | Path, overrides: Sequence[str] = (), max_runs: int | None = None, *, plugins: Sequence[str] = ()
) -> Sweep:
    """Read and expand a sweep file; ``overrides`` (``key=value``) apply to the base config of every run.

    ``max_runs`` (e.g. from ``--max-runs``) replaces the file's ``max_runs``; ``plugins`` (``--plugin``) are added
    to the file's ``plugins``.
    """
    path = Path(path)
    data = read_yaml(path)
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: expected a mapping with the keys {', '.join(SWEEP_KEYS)}")
    return expand(with_plugins(data, plugins), str(path), path.parent, overrides, max_runs=max_runs)


def expand(
    data: Mapping[str, Any],
    source: str = "sweep",
    base_dir: Path | None = None,
    overrides: Sequence[str] = (),
    *,
    max_runs: int | None = None,
) -> Sweep:
    """Expand a sweep mapping (see the module docstring) into validated run configs.

    The runs are counted first: more than ``max_runs`` (default: the mapping's ``max_runs``, else
    ``DEFAULT_MAX_RUNS``) is a ``ConfigError`` before anything is expanded.
    """
    check_run_count(count_runs(data, source), data, source, max_runs)
    base = _base(data.get("base"), source, base_dir or Path("."))
    for key, value in _mapping(data, "overrides", source).items():
        _set(base, key, value, source)
    base = apply_overrides(base, overrides)
    plugins = data.get("plugins") or []
    if not isinstance(plugins, list) or not all(isinstance(plugin, str) for plugin in plugins):
        raise ConfigError(f"{source}: plugins: expected a list of module names (got {show(plugins)})")
    base = with_plugins(base, plugins)
    zipped = _zip(data, source)
    grid = _grid(data, source)
    seeds = _seeds(data.get("seeds"), source)
    auxiliary = _auxiliary_sets(data.get("auxiliary_sets"), base, source)
    configs: dict[str, RunConfig] = {}
    duplicates = 0
    with cached_settings():  # one build (and data fingerprint) per setting, not one per run
        for zip_point, grid_point, tasks, seed in itertools.product(zipped, grid, auxiliary, seeds):
            config = copy.deepcopy(base)
            point = {**zip_point, **grid_point}
            if tasks is not None:
                point["setting.tasks"] = tasks
            if seed is not None:
                point["seed"] = seed
            for key, value in point.items():
                _set(config, key, value, source)
            description = clip(", ".join(f"{k}={show(v)}" for k, v in point.items()), 300) or "the base config"
            try:
                run = resolve(validate_config(config, source), source)
            except ConfigError as error:
                raise error.restated(f"{error} (in the run with {description})") from None
            run_id = run.run_id()
            if run_id in configs:
                duplicates += 1
            configs.setdefault(run_id, run)
    name = str(data.get("name") or Path(source).stem)
    return Sweep(name=name, source=source, configs=tuple(configs.values()), duplicates=duplicates)


def count_runs(data: Mapping[str, Any], source: str = "sweep") -> int:
    """The number of runs ``data`` expands to (before duplicates are merged), counted without expanding it.

    Also checks the sweep's keys and axes (module docstring); ``ConfigError`` naming the key otherwise.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping with the keys {', '.join(SWEEP_KEYS)}")
    unknown = [key for key in data if key not in SWEEP_KEYS]
    if unknown:
        raise ConfigError(f"{source}: {clip(str(unknown[0]))}: unknown key; expected one of: {', '.join(SWEEP_KEYS)}")
    zipped, grid = _lists(data, "zip", source), _lists(data, "grid", source)
    _check_axes(data, zipped, grid, source)
    lengths = {len(values) for values in zipped.values()}
    if len(lengths) > 1:
        shown = clip(", ".join(f"{clip(name)} has {len(values)}" for name, values in zipped.items()), 300)
        raise ConfigError(f"{source}: zip: all lists must have the same length ({shown})")
    count = max(lengths, default=1) * math.prod(len(values) for values in grid.values())
    return count * _auxiliary_count(data.get("auxiliary_sets"), source) * len(_seed_range(data.get("seeds"), source))


def check_run_count(count: int, data: Mapping[str, Any], source: str, max_runs: int | None = None) -> None:
    """``ConfigError`` when ``count`` runs exceed ``max_runs`` (default: ``data``'s ``max_runs``, else the default)."""
    limit = max_runs if max_runs is not None else data.get("max_runs", DEFAULT_MAX_RUNS)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ConfigError(f"{source}: max_runs: expected a positive integer, got {show(limit)}")
    if count > limit:
        raise ConfigError(
            f"{source}: the sweep expands to {count:,} runs, more than max_runs = {limit:,}; raise the limit with "
            "the sweep file's max_runs key or --max-runs if you mean it"
        )


def _check_axes(data: Mapping[str, Any], zipped: Mapping[str, Any], grid: Mapping[str, Any], source: str) -> None:
    """A key is swept in one place only, and never together with its parent key."""
    axes: list[tuple[str, str]] = [(f"zip.{key}", key) for key in zipped] + [(f"grid.{key}", key) for key in grid]
    if data.get("auxiliary_sets") is not None:
        axes.append(("auxiliary_sets", "setting.tasks"))
    if data.get("seeds") is not None:
        axes.append(("seeds", "seed"))
    for index, (where, key) in enumerate(axes):
        for other_where, other in axes[index + 1 :]:
            if key == other:
                raise ConfigError(
                    f"{source}: {clip(where)} and {clip(other_where)}: {clip(key)} is swept twice; sweep each key "
                    "in one place"
                )
            if other.startswith(key + ".") or key.startswith(other + "."):
                parent, child = (where, other_where) if other.startswith(key + ".") else (other_where, where)
                raise ConfigError(
                    f"{source}: {clip(parent)} and {clip(child)}: a key cannot be swept together with its parent "
                    "(the parent's value would replace the child's); sweep one of them"
                )


def _auxiliary_count(value: Any, source: str) -> int:
    """How many task sets ``auxiliary_sets`` draws (targets x count); its other keys are checked when drawing."""
    if value is None:
        return 1
    if not isinstance(value, Mapping):
        raise ConfigError(f"{source}: auxiliary_sets: expected a mapping with {', '.join(AUXILIARY_KEYS)}")
    target = value.get("target")
    count = value.get("count", 1)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ConfigError(f"{source}: auxiliary_sets.count: expected an integer >= 1, got {show(count)}")
    return (len(target) if isinstance(target, list) else 1) * count


def _base(value: Any, source: str, base_dir: Path) -> dict[str, Any]:
    if value is None:
        raise ConfigError(f"{source}: base: required key is missing (a run config file or an inline mapping)")
    if isinstance(value, str):
        data = read_yaml(base_dir / value)
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: base: {value} does not hold a mapping of run config keys")
        return dict(data)
    if isinstance(value, Mapping):
        return copy.deepcopy(dict(value))
    raise ConfigError(f"{source}: base: expected a file path or a mapping, got {type(value).__name__}")


def _mapping(data: Mapping[str, Any], key: str, source: str) -> dict[str, Any]:
    value = data.get(key) or {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{source}: {key}: expected a mapping of dotted config keys to values")
    return dict(value)


def _lists(data: Mapping[str, Any], key: str, source: str) -> dict[str, list[Any]]:
    lists = {}
    for name, values in _mapping(data, key, source).items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{source}: {key}.{clip(str(name))}: expected a non-empty list of values")
        lists[str(name)] = values
    return lists


def _zip(data: Mapping[str, Any], source: str) -> list[dict[str, Any]]:
    lists = _lists(data, "zip", source)
    if not lists:
        return [{}]
    lengths = {name: len(values) for name, values in lists.items()}
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{name} has {length}" for name, length in lengths.items())
        raise ConfigError(f"{source}: zip: all lists must have the same length ({shown})")
    return [dict(zip(lists, values, strict=True)) for values in zip(*lists.values(), strict=True)]


def _grid(data: Mapping[str, Any], source: str) -> list[dict[str, Any]]:
    lists = _lists(data, "grid", source)
    return [dict(zip(lists, values, strict=True)) for values in itertools.product(*lists.values())]


def _seed_range(value: Any, source: str) -> Sequence[int | None]:
    """The seeds of ``seeds`` (a count gives a ``range``, so counting does not build a list)."""
    if value is None:
        return [None]
    if isinstance(value, bool):
        raise ConfigError(f"{source}: seeds: expected a count or a list of seeds, got {value!r}")
    if isinstance(value, int):
        if not 1 <= value <= MAX_SEED:
            raise ConfigError(f"{source}: seeds: expected a positive count of at most 2**63 - 1, got {show(value)}")
        return range(value)
    if isinstance(value, list) and value and all(is_seed(s) for s in value):
        if len(set(value)) != len(value):
            raise ConfigError(f"{source}: seeds: seeds must be distinct, got {show(value)}")
        return list(value)
    raise ConfigError(
        f"{source}: seeds: expected a positive count or a non-empty list of seeds in [0, 2**63 - 1], got {show(value)}"
    )


def _seeds(value: Any, source: str) -> list[int | None]:
    return list(_seed_range(value, source))


def _auxiliary_sets(value: Any, base: Mapping[str, Any], source: str) -> list[list[str] | None]:
    """``[target, *auxiliary]`` task lists, drawn without repetition from a seeded generator per target."""
    if value is None:
        return [None]
    if not isinstance(value, Mapping):
        raise ConfigError(f"{source}: auxiliary_sets: expected a mapping with {', '.join(AUXILIARY_KEYS)}")
    unknown = [key for key in value if key not in AUXILIARY_KEYS]
    if unknown:
        raise ConfigError(
            f"{source}: auxiliary_sets.{unknown[0]}: unknown key; expected one of: {', '.join(AUXILIARY_KEYS)}"
        )
    target = value.get("target")
    targets: list[Any] = target if isinstance(target, list) else [target]
    if not targets or not all(isinstance(t, str) for t in targets) or len(set(targets)) < len(targets):
        raise ConfigError(f"{source}: auxiliary_sets.target: expected a task name or a list of distinct task names")
    size, count, seed = value.get("size", 1), value.get("count", 1), value.get("seed", 0)
    for key, number in (("size", size), ("count", count)):
        if isinstance(number, bool) or not isinstance(number, int) or number < 1:
            raise ConfigError(f"{source}: auxiliary_sets.{key}: expected an integer >= 1, got {number!r}")
    if not is_seed(seed):
        raise ConfigError(f"{source}: auxiliary_sets.seed: expected an integer in [0, 2**63 - 1], got {seed!r}")
    sets: list[list[str] | None] = []
    for name in targets:
        pool = value.get("pool")
        if pool is None:
            pool = [task for task in _setting_tasks(base, source) if task != name]
        elif isinstance(pool, list) and len(targets) > 1:
            pool = [task for task in pool if task != name]  # a shared pool: each target draws from the others
        if not isinstance(pool, list) or not all(isinstance(t, str) for t in pool) or name in pool:
            raise ConfigError(f"{source}: auxiliary_sets.pool: expected a list of task names without the target")
        if size > len(pool):
            raise ConfigError(f"{source}: auxiliary_sets.size: {size} is more than the {len(pool)} tasks of the pool")
        possible = math.comb(len(pool), size)
        if count > possible:
            raise ConfigError(f"{source}: auxiliary_sets.count: only {possible} distinct sets of {size} from the pool")
        generator = np.random.default_rng(seed)  # one generator per target: its sets do not depend on the others
        chosen: list[tuple[str, ...]] = []
        seen: set[tuple[str, ...]] = set()
        while len(chosen) < count:
            picked = generator.permutation(len(pool))[:size]
            draw = tuple(sorted(str(pool[int(i)]) for i in picked))
            if draw not in seen:
                seen.add(draw)
                chosen.append(draw)
        sets += [[name, *aux] for aux in chosen]
    return sets


def _setting_tasks(base: Mapping[str, Any], source: str) -> list[str]:
    setting = dict(base.get("setting") or {})
    setting.pop("tasks", None)
    try:
        checked = validate_config(
            {"setting": setting, "plugins": base.get("plugins") or [], "data_dir": base.get("data_dir")}, source
        )
        built = build_setting(checked.setting, source, data_dir=checked.data_dir)
    except (ConfigError, KeyError, TypeError, ValueError) as error:
        message = f"{source}: auxiliary_sets.pool: cannot list the setting's tasks ({error})"
        raise (error.restated(message) if isinstance(error, ConfigError) else ConfigError(message)) from None
    return list(built.task_names)


def _set(config: dict[str, Any], key: str, value: Any, source: str) -> None:
    """Set a dotted key of a config mapping to a Python value (creating intermediate mappings)."""
    parts = key.split(".")
    node = config
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if isinstance(child, str) and part == "method":  # method: pcgrad -> {name: pcgrad}
            child = node[part] = {"name": child}
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: {clip(key)}: {clip(part)} is not a mapping in the base config")
        node = child
    node[parts[-1]] = copy.deepcopy(value)
