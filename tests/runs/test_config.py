from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mtlscope.options import PositiveInt
from mtlscope.runs.config import ConfigError, load_config, resolve, validate_config
from mtlscope.runs.launch import prepare
from mtlscope.settings import Setting, TaskSpec, from_arrays, register

BASE = "setting:\n  name: digits-mtl\n  tasks: [digits1]\n"

BAD_CONFIGS = {
    "unknown top-level key": (BASE + "learning_rate: 0.1\n", "learning_rate: unknown key"),
    "unknown nested key": (
        BASE + "training:\n  batchsize: 4\n",
        "training.batchsize: unknown key; expected one of: batch_size",
    ),
    "wrong type": (BASE + "training:\n  batch_size: many\n", "training.batch_size: expected an integer (got 'many')"),
    "bad value": (BASE + "optimizer:\n  lr: -0.1\n", "optimizer.lr: expected a value > 0 (got -0.1)"),
    "unknown optimizer": (
        BASE + "optimizer:\n  name: rmsprop\n",
        "optimizer.name: expected 'adam', 'adamw' or 'sgd'",
    ),
    "bad loss scale": (
        BASE + "training:\n  loss_scale: KK\n",
        "training.loss_scale: expected a positive number, 'K' or 'sqrt(K)'",
    ),
    "unknown setting": ("setting:\n  name: fashion\n", "setting.name: unknown setting 'fashion'"),
    "unknown task": ("setting:\n  name: digits-mtl\n  tasks: [digits3]\n", "no task 'digits3'"),
    "unknown setting option": (
        BASE.replace("tasks", "options: {size: 3}\n  tasks"),
        "setting.options.size: unknown option of setting 'digits-mtl'",
    ),
    "unknown method": (BASE + "method:\n  name: pcgradd\n", "method: unknown method 'pcgradd'; available: "),
    "unknown method option": (
        BASE + "method:\n  name: umtg\n  alpha: 1\n",
        "method.alpha: unknown option of method 'umtg'",
    ),
    "unknown encoder option": (
        BASE + "model:\n  encoder: {name: mlp, width: 3}\n",
        "model.encoder.width: unknown option of encoder 'mlp'",
    ),
    "momentum with adam": (
        BASE + "optimizer:\n  momentum: 0.9\n",
        "optimizer: momentum and nesterov apply to sgd only",
    ),
    "epochs and steps": (
        BASE + "training:\n  epochs: 2\n  steps: 3\n",
        "training: give either epochs or steps",
    ),
    "missing setting": ("seed: 1\n", "setting: required key is missing"),
    "not a mapping": ("- 1\n- 2\n", "expected a mapping of keys at the top level"),
    "invalid yaml": ("setting: [\n", "invalid YAML at line"),
    "bad method weight task": (BASE + "method:\n  name: umtg\n  weights: {digits2: 1}\n", "not in this run"),
    "per_task on shared-input": (
        "setting:\n  name: digits-attributes\ntraining:\n  jacobian_mode: per_task\n",
        "jacobian_mode 'per_task' needs the multi-input layout",
    ),
    "bad lr schedule option": (
        BASE + "optimizer:\n  schedule: {name: exponential, gamma: 1.5}\n",
        "optimizer.schedule.gamma: expected a number in (0, 1] (got 1.5)",
    ),
    "unknown lr schedule": (
        BASE + "optimizer:\n  schedule: linear\n",
        "optimizer.schedule: unknown lr schedule 'linear'; available: constant, cosine, exponential, step",
    ),
    "bad encoder value": (
        BASE + "model:\n  encoder: {name: mlp, hidden: [0]}\n",
        "model.encoder.hidden: expected a non-empty list of integers >= 1 (got [0])",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_is_one_line_error_exit_2_and_nothing_written(case: str, tmp_path: Path) -> None:
    text, expected = BAD_CONFIGS[case]
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "mtlscope.cli", "run", str(config), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert str(config) in lines[0]
    assert not out.exists()


def test_overrides_apply_and_are_validated(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(BASE)
    config = load_config(path, ["optimizer.lr=0.05", "training.loss_scale=sqrt(K)", "setting.tasks=[digits1,digits2]"])
    assert config.optimizer.lr == 0.05
    assert config.training.loss_scale == "sqrt(K)"
    assert config.setting.tasks == ["digits1", "digits2"]
    with pytest.raises(ConfigError, match=r"optimizer\.lr"):
        load_config(path, ["optimizer.lr=fast"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(path, ["optimizer.lr"])


def test_run_id_is_derived_from_the_resolved_config() -> None:
    implicit = resolve(validate_config({"setting": {"name": "digits-mtl"}}))
    explicit = resolve(
        validate_config(
            {
                "setting": {"name": "digits-mtl", "tasks": ["digits1", "digits2", "noisy-digits"]},
                "model": {"encoder": {"name": "lenet"}, "head": "linear"},
                "training": {"epochs": 20, "loss_scale": 1},
            }
        )
    )
    assert implicit.run_id() == explicit.run_id()
    other = resolve(validate_config({"setting": {"name": "digits-mtl"}, "seed": 1}))
    assert other.run_id() != implicit.run_id()
    assert implicit.run_id().startswith("digits1+digits2+noisy-digits-s0-")


SCHEDULE_ERRORS = {
    "missing option": ({"name": "step"}, "optimizer.schedule.every_epochs: required option of lr schedule 'step'"),
    "unknown option": (
        {"name": "cosine", "gamma": 0.5},
        "optimizer.schedule.gamma: unknown option of lr schedule 'cosine'; options: min_lr, warmup_steps",
    ),
    "negative warm-up": (
        {"name": "constant", "warmup_steps": -1},
        "optimizer.schedule.warmup_steps: expected an integer >= 0 (got -1)",
    ),
    "warm-up not an integer": (
        {"name": "exponential", "gamma": 0.99, "warmup_steps": 2.5},
        "optimizer.schedule.warmup_steps: expected an integer >= 0 (got 2.5)",
    ),
    "min_lr above lr": (
        {"name": "cosine", "min_lr": 0.5},
        "optimizer.schedule.min_lr: expected at most the optimizer's lr 0.1 (got 0.5)",
    ),
    "gamma zero": ({"name": "step", "every_epochs": 2, "gamma": 0}, "optimizer.schedule.gamma: expected a number in"),
    "not a mapping": (["exponential"], "optimizer.schedule: expected a mapping with a 'name'"),
}


@pytest.mark.parametrize("case", sorted(SCHEDULE_ERRORS))
def test_bad_lr_schedule_is_a_one_line_error_naming_the_key(case: str) -> None:
    schedule, expected = SCHEDULE_ERRORS[case]
    with pytest.raises(ConfigError) as error:
        validate_config({"setting": {"name": "digits-mtl"}, "optimizer": {"lr": 0.1, "schedule": schedule}})
    assert str(error.value).startswith(f"config: {expected}")
    assert "\n" not in str(error.value)


def test_a_config_without_lr_schedule_keeps_its_run_id() -> None:
    """No ``schedule`` key in the dumped config, so the run ids from before schedules existed stay (pinned)."""
    plain = validate_config({"setting": {"name": "digits-mtl"}})
    assert "schedule" not in plain.to_dict()["optimizer"]
    assert plain.run_id() == "digits-mtl-s0-cf18101267"
    constant = validate_config({"setting": {"name": "digits-mtl"}, "optimizer": {"schedule": "constant"}})
    assert constant.optimizer.schedule is None and constant.run_id() == plain.run_id()


def test_keep_best_changes_the_run_id_only_when_asked_for() -> None:
    plain = validate_config({"setting": {"name": "digits-mtl"}})
    off = validate_config({"setting": {"name": "digits-mtl"}, "training": {"keep_best": False}})
    on = validate_config({"setting": {"name": "digits-mtl"}, "training": {"keep_best": True}})
    assert "keep_best" not in plain.to_dict()["training"] and off.run_id() == plain.run_id()
    assert on.training.keep_best and on.run_id() != plain.run_id()
    assert validate_config(on.to_dict()).training.keep_best  # kept through the stored config


def test_lr_schedule_is_stored_with_its_defaults_and_changes_the_run_id() -> None:
    short = validate_config({"setting": {"name": "digits-mtl"}, "optimizer": {"schedule": {"name": "cosine"}}})
    assert short.to_dict()["optimizer"]["schedule"] == {"name": "cosine", "min_lr": 0.0, "warmup_steps": 0}
    full = validate_config({"setting": {"name": "digits-mtl"}, "optimizer": short.to_dict()["optimizer"]})
    assert full.run_id() == short.run_id() == validate_config(short.to_dict()).run_id()
    assert short.run_id() != validate_config({"setting": {"name": "digits-mtl"}}).run_id()
    warm = validate_config(
        {"setting": {"name": "digits-mtl"}, "optimizer": {"schedule": {"name": "cosine", "warmup_steps": 5}}}
    )
    assert warm.run_id() != short.run_id()


def test_lr_schedule_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(BASE + "optimizer:\n  schedule: {name: exponential, gamma: 0.99}\n")
    config = load_config(path, ["optimizer.schedule.gamma=0.9", "optimizer.schedule.warmup_steps=10"])
    assert config.optimizer.schedule == {"name": "exponential", "gamma": 0.9, "warmup_steps": 10}
    assert load_config(path, ["optimizer.schedule=null"]).optimizer.schedule is None


def test_a_builder_that_does_not_record_its_options_keeps_the_configs() -> None:
    """The resolved config holds the setting's options from the registry's defaults and the config, not from what the
    builder put in ``Setting.options`` (a builder that leaves it empty used to make the run build the defaults)."""

    @register("test-forgetful", "a builder that does not pass options= to its setting")
    def forgetful(*, size: PositiveInt = 50) -> Setting:
        rng = np.random.default_rng(0)
        splits = {
            split: (rng.standard_normal((size, 3)), rng.integers(0, 2, size)) for split in ("train", "val", "test")
        }
        return from_arrays("test-forgetful", [TaskSpec("t", 2, loss="cross_entropy")], {"t": splits})

    config = validate_config({"setting": {"name": "test-forgetful", "options": {"size": 60}}, "training": {"steps": 1}})
    resolved = resolve(config)
    assert resolved.setting.options == {"size": 60}
    assert len(prepare(resolved).setting.task("t").train) == 60
    default = resolve(validate_config({"setting": {"name": "test-forgetful"}, "training": {"steps": 1}}))
    assert default.setting.options == {"size": 50} and default.run_id() != resolved.run_id()
