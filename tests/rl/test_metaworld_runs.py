"""Meta-World runs end to end (tiny: a few environment steps, tiny networks): seeding, resuming, transference
records read back by the standard analysis, config errors."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import pytest

import mtlscope
from mtlscope.analysis.affinity import affinity_matrix
from mtlscope.analysis.grouping import group_tasks, normalize_by_self_affinity
from mtlscope.rl.metaworld import PAPER_TASKS, available_tasks
from mtlscope.runs.config import ConfigError, validate_config
from mtlscope.runs.launch import execute

pytest.importorskip("metaworld")

TASKS = ["reach-v3", "window-close-v3", "push-v3"]


def _config(**rl: Any) -> dict[str, Any]:
    options = {
        "iterations": 3,
        "samples_per_iteration": 12,
        "gradient_steps": 3,
        "batch_size": 4,
        "episode_steps": 8,
        "random_samples": 6,
        "hidden": [8],
        "eval_episodes": 1,
        "transference": {"every_steps": 2},
        **rl,
    }
    return {"seed": 1, "setting": {"name": "metaworld", "tasks": TASKS}, "rl": options}


def _files(path: Path) -> dict[str, bytes]:
    return {name: (path / name).read_bytes() for name in ("records.csv", "model.safetensors")}


def test_same_seed_same_run_and_transference_is_loadable(tmp_path: Path) -> None:
    first = execute(_config(), tmp_path / "a")
    second = execute(_config(), tmp_path / "b")
    assert first.status == "completed" and first.run_id == second.run_id
    assert _files(first.path) == _files(second.path)
    other = execute({**_config(), "seed": 2}, tmp_path / "c")
    assert _files(other.path)["model.safetensors"] != _files(first.path)["model.safetensors"]

    results = mtlscope.load(tmp_path / "a")
    # the run table's optimization columns come from the rl section, not the supervised defaults (umtg, 32, ...)
    (row,) = results.runs.to_dict("records")
    assert (row["method"], row["optimizer"], row["lr"], row["batch_size"]) == ("sac", "adam", 3e-4, 4)
    assert all(math.isnan(row[column]) for column in ("temperature", "loss_scale", "momentum"))
    assert row["num_tasks"] == 3 and row["tasks"] == "+".join(TASKS)
    matrix = affinity_matrix(results.records)
    assert list(matrix.index) == TASKS and list(matrix.columns) == TASKS
    assert matrix.notna().all().all()
    first_order = affinity_matrix(results.records, kind="affinity_first_order_overall")
    assert first_order.shape == (3, 3)
    grouping = group_tasks(normalize_by_self_affinity(matrix), 2)
    assert 1 <= len(grouping.groups) <= 2
    assert {task for group in grouping.groups for task in group} <= set(TASKS)
    test = results.records[results.records["split"] == "val"]
    assert set(test["metric"]) == {"success_rate", "return"}
    assert sorted(test["step"].unique()) == [0, 3, 6, 9]
    train = results.records[results.records["split"] == "train"]
    assert {"loss", "critic_loss", "actor_loss", "alpha", "entropy", "success_rate", "return"} <= set(train["metric"])


def test_transference_does_not_change_training(tmp_path: Path) -> None:
    measured = execute(_config(), tmp_path / "a")
    unmeasured = execute(_config(transference=None), tmp_path / "b")
    assert measured.run_id != unmeasured.run_id
    assert _files(measured.path)["model.safetensors"] == _files(unmeasured.path)["model.safetensors"]


def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(tmp_path: Path) -> None:
    whole = execute(_config(), tmp_path / "whole")

    def interrupt(step: int) -> None:
        if step == 5:  # after the checkpoint at step 3 (replay buffers, networks, optimizers, generators saved)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        execute(_config(), tmp_path / "cut", on_step=interrupt)
    resumed = execute(_config(), tmp_path / "cut")
    assert resumed.status == "completed"
    assert _files(resumed.path) == _files(whole.path)


def test_unknown_task_names_the_available_ones(tmp_path: Path) -> None:
    config = {**_config(), "setting": {"name": "metaworld", "tasks": ["reach-v3", "fly-v3"]}}
    with pytest.raises(ConfigError) as error:
        execute(config, tmp_path)
    message = str(error.value)
    assert "\n" not in message and "fly-v3" in message and "window-close-v3" in message
    assert not any(tmp_path.iterdir())  # nothing written


def test_missing_metaworld_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "metaworld", None)
    with pytest.raises(ConfigError, match=r"pip install mtlscope\[rl\]"):
        execute(_config(), tmp_path)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"model": {"encoder": "mlp"}}, "model: not used by the metaworld setting"),
        ({"training": {"steps": 3}}, "training: not used by the metaworld setting"),
        ({"rl": {"batch_size": 0}}, "rl.batch_size: expected a value >= 1"),
        ({"rl": {"episode_steps": 600}}, "rl.episode_steps: expected a value <= 500"),
        ({"rl": {"transference": {"every_steps": 0}}}, "rl.transference.every_steps"),
        ({"rl": {"unknown": 1}}, "rl.unknown: unknown key"),
        ({"setting": {"name": "metaworld", "options": {"x": 1}}}, "takes no options"),
    ],
)
def test_bad_config_is_one_line(change: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as error:
        validate_config({**_config(), **change})
    assert expected in str(error.value) and "\n" not in str(error.value)


def test_rl_section_only_for_environment_settings() -> None:
    with pytest.raises(ConfigError, match="rl: applies to environment settings"):
        validate_config({"setting": {"name": "synthetic"}, "rl": {}})


def test_default_tasks_are_the_papers_five() -> None:
    assert set(PAPER_TASKS) <= set(available_tasks())
    from mtlscope.runs.config import resolve

    resolved = resolve(validate_config({"setting": {"name": "metaworld"}}))
    assert resolved.setting.tasks == list(PAPER_TASKS)
    assert resolved.rl is not None and resolved.rl.samples_per_iteration == 600 and resolved.rl.batch_size == 128
    assert "model" not in resolved.to_dict() and "rl" in resolved.to_dict()
