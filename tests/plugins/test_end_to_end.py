"""A user's CNN by import path from the CLI and a 2-worker sweep; a plugin's setting in a 2-worker sweep, from a
file and from stdin; bad input is one line with nothing written."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from mtlscope.runs.config import ConfigError, validate_config
from mtlscope.sweeps.execution import run_sweep

from .conftest import CNN, TOY

SRC = str(Path(__file__).resolve().parents[2] / "src")
RUN = """
setting: {name: digits-mtl, tasks: [digits1, digits2]}
model:
  encoder: {factory: "mycnn:make_cnn", channels: 3}
training: {steps: 2, batch_size: 8, eval_every: 2}
"""


def cli(*args: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": SRC}
    command = [sys.executable, *(["-"] if stdin is not None else ["-m", "mtlscope", *args])]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, input=stdin, timeout=300)


def test_a_cnn_by_import_path_runs_from_the_cli(project: Callable[[str, str], Path], tmp_path: Path) -> None:
    project("mycnn", CNN)
    (tmp_path / "run.yaml").write_text(RUN)
    done = cli("run", "run.yaml", "--out", "out", "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert ": completed" in done.stdout
    again = cli("run", "run.yaml", "--out", "out", "--quiet", cwd=tmp_path)
    assert "already completed" in again.stdout


def test_a_cnn_by_import_path_and_a_plugin_setting_in_two_worker_sweeps(
    project: Callable[[str, str], Path], tmp_path: Path
) -> None:
    project("mycnn", CNN)
    project("toyplugin", TOY)
    training = {"steps": 2, "batch_size": 8, "eval_every": 2}
    cnn = {"setting": {"name": "digits-mtl", "tasks": ["digits1"]}, "model": {"encoder": "mycnn:make_cnn"}}
    configs = [validate_config({**cnn, "training": training, "seed": seed}) for seed in (0, 1)]
    result = run_sweep(configs, tmp_path / "cnn", workers=2, progress=False)
    assert result.counts["completed"] == 2, [outcome.message for outcome in result.outcomes]
    toy = [
        validate_config({"plugins": ["toyplugin"], "setting": {"name": "toy"}, "training": training, "seed": seed})
        for seed in (0, 1)
    ]
    result = run_sweep(toy, tmp_path / "toy", workers=2, progress=False)
    assert result.counts["completed"] == 2, [outcome.message for outcome in result.outcomes]


def test_a_driver_fed_from_stdin_runs_a_plugin_sweep_and_refuses_a_main_component(
    project: Callable[[str, str], Path], tmp_path: Path
) -> None:
    project("toyplugin", TOY)
    script = """
import mtlscope
from mtlscope.sweeps.execution import run_sweep
from mtlscope.settings import register
training = {"steps": 2, "batch_size": 8, "eval_every": 2}
configs = [mtlscope.validate_config({"plugins": ["toyplugin"], "setting": {"name": "toy"}, "training": training,
                                     "seed": seed}) for seed in (0, 1)]
print(run_sweep(configs, "out", workers=2, progress=False).counts["completed"])
import toyplugin

@register("mine", "defined in the script")
def mine():
    return toyplugin.make_toy()

try:
    run_sweep([mtlscope.validate_config({"setting": {"name": "mine"}, "training": training, "seed": seed})
               for seed in (0, 1)], "main-out", workers=2, progress=False)
except mtlscope.ConfigError as error:
    print(error)
"""
    done = cli(cwd=tmp_path, stdin=script)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "2"
    assert lines[1].startswith("sweep config 1: __main__:mine is defined in a module other processes cannot import")
    assert not (tmp_path / "main-out").exists()


@pytest.mark.parametrize(
    ("args", "config", "expected"),
    [
        ((), {"model.encoder.factory": "nomodule_xyz:make"}, "module 'nomodule_xyz': no module named 'nomodule_xyz'"),
        ((), {"model.encoder.factory": "mycnn:nothing"}, "mycnn has no attribute 'nothing'"),
        ((), {"model.encoder.factory": "mycnn"}, "is not an import path; expected 'package.module:attribute'"),
        ((), {"model.encoder.width": "3"}, "encoder factory mycnn:make_cnn has no option 'width'; options: channels"),
        ((), {"model.encoder.input_shape": "[1]"}, "encoder option 'input_shape' is given by mtlscope"),
        (("--plugin", "nomodule_xyz"), {}, "plugins[0]: plugin 'nomodule_xyz': no module named 'nomodule_xyz'"),
        (("--plugin", "broken"), {}, "plugin 'broken': importing it failed: ZeroDivisionError: division by zero"),
        ((), {"setting.factory": "mycnn:three", "setting.name": "null"}, "returned a int, expected a mtlscope Setting"),
        ((), {"model.encoder": "mycnn:flat_conv"}, "expected an output of shape [batch, features]"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    project: Callable[[str, str], Path], tmp_path: Path, args: tuple[str, ...], config: dict[str, str], expected: str
) -> None:
    conv = (
        "\n\ndef flat_conv(input_shape):\n    return nn.Conv2d(input_shape[0], 2, 3)\n\n\ndef three():\n    return 3\n"
    )
    project("mycnn", CNN + conv)
    project("broken", "1 / 0\n")
    (tmp_path / "run.yaml").write_text(RUN)
    overrides = [f"{key}={value}" for key, value in config.items()]
    done = cli("run", "run.yaml", *overrides, *args, "--out", "out", "--quiet", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and expected in done.stderr, done.stderr
    assert not (tmp_path / "out").exists()


def test_a_setting_config_needs_exactly_one_of_name_and_factory(project: Callable[[str, str], Path]) -> None:
    project("toyplugin", TOY)
    with pytest.raises(ConfigError, match=r"expected exactly one of name .* or factory .*, got name and factory"):
        validate_config({"setting": {"name": "digits-mtl", "factory": "toyplugin:make_toy"}})
    with pytest.raises(ConfigError, match=r"setting factory toyplugin:make_toy has no option 'seed'; options: sign"):
        validate_config({"setting": {"factory": "toyplugin:make_toy", "options": {"seed": 1}}})
