"""Sweep files: deterministic expansion over zips, grids, auxiliary sets and seeds; one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mtlscope.runs import ConfigError
from mtlscope.sweeps.spec import expand, load_sweep

BASE = {
    "setting": {"name": "digits-mtl", "tasks": ["digits1"]},
    "model": {"encoder": {"name": "mlp", "hidden": [16, 8]}},
    "training": {"steps": 10},
}


def test_expansion_order_and_values() -> None:
    sweep = expand(
        {
            "base": BASE,
            "zip": {"setting.tasks": [["digits1"], ["digits1", "digits2"]], "name": ["st", "mt"]},
            "grid": {"optimizer.lr": [0.001, 0.003], "method.name": ["umtg", "pcgrad"]},
            "seeds": 2,
        }
    )
    points = [(c.name, c.optimizer.lr, c.method["name"], c.seed) for c in sweep.configs]
    # zip entry, then grid point (last key fastest), then seed
    expected = [
        (name, lr, method, seed)
        for name in ("st", "mt")
        for lr in (0.001, 0.003)
        for method in ("umtg", "pcgrad")
        for seed in (0, 1)
    ]
    assert points == expected
    assert [c.setting.tasks for c in sweep.configs[:8]] == [["digits1"]] * 8  # resolved task lists
    assert len(set(sweep.run_ids())) == 16
    assert expand({"base": BASE, "zip": {"setting.tasks": [["digits1"], ["digits1", "digits2"]]}}).run_ids() == [
        c.run_id()
        for c in expand({"base": BASE, "zip": {"setting.tasks": [["digits1"], ["digits1", "digits2"]]}}).configs
    ]


def test_same_config_same_run_id_and_duplicates_run_once() -> None:
    one = expand({"base": BASE, "grid": {"optimizer.lr": [0.001]}, "seeds": [3]})
    again = expand({"base": {**BASE, "seed": 3, "optimizer": {"lr": 0.001}}})
    assert one.run_ids() == again.run_ids()
    doubled = expand({"base": BASE, "grid": {"optimizer.lr": [0.001, 0.001]}})
    assert len(doubled.configs) == 1 and doubled.duplicates == 1


def test_auxiliary_sets_of_several_targets_equal_each_target_alone() -> None:
    attributes = {**BASE, "setting": {"name": "digits-attributes", "tasks": ["digit"]}}
    both = expand(
        {"base": attributes, "auxiliary_sets": {"target": ["digit", "prime"], "size": 2, "count": 3, "seed": 4}}
    )
    alone = [
        expand({"base": attributes, "auxiliary_sets": {"target": target, "size": 2, "count": 3, "seed": 4}})
        for target in ("digit", "prime")
    ]
    assert [c.setting.tasks for c in both.configs] == [c.setting.tasks for s in alone for c in s.configs]
    assert [c.setting.tasks[0] for c in both.configs] == ["digit"] * 3 + ["prime"] * 3
    shared = expand(
        {
            "base": attributes,
            "auxiliary_sets": {"target": ["digit", "prime"], "pool": ["digit", "prime", "loop"], "count": 2},
        }
    )
    # a shared pool: each target draws from the pool without itself (here: both other tasks, in drawn order)
    drawn = [tuple(c.setting.tasks) for c in shared.configs]
    assert [tasks[0] for tasks in drawn] == ["digit", "digit", "prime", "prime"]
    assert set(drawn) == {("digit", "loop"), ("digit", "prime"), ("prime", "digit"), ("prime", "loop")}
    with pytest.raises(ConfigError, match=r"auxiliary_sets\.target: expected a task name or a list of distinct"):
        expand({"base": attributes, "auxiliary_sets": {"target": ["digit", "digit"]}})


def test_auxiliary_sets_are_seeded_distinct_and_include_the_target() -> None:
    spec = {"base": BASE, "auxiliary_sets": {"target": "digits1", "size": 1, "count": 2, "seed": 5}}
    first = [c.setting.tasks for c in expand(spec).configs]
    assert first == [c.setting.tasks for c in expand(spec).configs]  # same seed, same sets
    assert all(tasks[0] == "digits1" and len(tasks) == 2 for tasks in first)
    assert len({tuple(tasks) for tasks in first}) == 2
    assert {tasks[1] for tasks in first} <= {"digits2", "noisy-digits"}  # default pool: the other tasks
    with pytest.raises(ConfigError, match=r"auxiliary_sets\.count: only 2 distinct sets"):
        expand({"base": BASE, "auxiliary_sets": {"target": "digits1", "size": 1, "count": 3}})


def test_base_file_relative_to_the_sweep_file_and_overrides(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(BASE))
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(
        yaml.safe_dump({"name": "demo-lr", "base": "base.yaml", "overrides": {"training.steps": 7}, "seeds": 2})
    )
    sweep = load_sweep(sweep_file, overrides=["optimizer.lr=0.01"])
    assert sweep.name == "demo-lr" and len(sweep.configs) == 2
    assert {c.training.steps for c in sweep.configs} == {7} and {c.optimizer.lr for c in sweep.configs} == {0.01}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"base": BASE, "grdi": {}}, "grdi: unknown key"),
        ({"grid": {}}, "base: required key is missing"),
        ({"base": BASE, "grid": {"optimizer.lr": []}}, "grid.optimizer.lr: expected a non-empty list"),
        ({"base": BASE, "zip": {"optimizer.lr": [1e-3, 3e-3], "seed": [1]}}, "zip: all lists must have the same"),
        ({"base": BASE, "seeds": 0}, "seeds: expected a positive count"),
        ({"base": BASE, "seeds": [1, 1]}, "seeds must be distinct"),
        ({"base": BASE, "grid": {"optimizer.lr": [-1.0]}}, "optimizer.lr"),
        ({"base": BASE, "grid": {"setting.tasks": [["nope"]]}}, "nope"),
        ({"base": BASE, "auxiliary_sets": {"target": "digits1", "sizes": 1}}, "auxiliary_sets.sizes: unknown key"),
    ],
)
def test_errors_name_the_key(spec: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as error:
        expand(spec, "sweep.yaml")
    assert "\n" not in str(error.value) and str(error.value).startswith("sweep.yaml")
