"""The run id covers the resolved config, the mtlscope version, the user modules' sources and the data."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch import nn

import mtlscope
from mtlscope.runs.config import ConfigError, resolve, validate_config
from mtlscope.runs.launch import execute

from .conftest import CNN, TOY

BASE: dict[str, Any] = {
    "setting": {"name": "digits-mtl", "tasks": ["digits1", "digits2"]},
    "model": {"encoder": {"factory": "mycnn:make_cnn", "channels": 3}},
    "training": {"steps": 2, "batch_size": 8, "eval_every": 2},
}


def run_id(data: dict[str, Any]) -> str:
    return resolve(validate_config(data)).run_id()


def test_the_run_id_is_stable_and_changes_with_source_version_and_data(
    project: Callable[[str, str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = project("mycnn", CNN)
    first = run_id(BASE)
    assert run_id(BASE) == first
    identity = resolve(validate_config(BASE)).identity
    assert identity is not None and set(identity) == {"mtlscope", "sources", "data"}
    assert list(identity["sources"]) == ["mycnn"]

    path.write_text(CNN.replace("padding=1", "padding=0"))  # the encoder's code changed
    with pytest.raises(ConfigError, match=r"module 'mycnn' changed on disk since this process imported it"):
        run_id(BASE)  # the imported (old) code would run under the new code's id
    importlib.reload(sys.modules["mycnn"])
    edited = run_id(BASE)
    assert edited != first
    path.write_text(CNN)
    importlib.reload(sys.modules["mycnn"])
    assert run_id(BASE) == first

    with monkeypatch.context() as patch:
        patch.setattr(mtlscope, "__version__", "99.0")
        assert run_id(BASE) != first
    assert run_id(BASE) == first

    project("toydata", TOY)  # a setting by import path: its data fingerprint is in the id
    toy = {"setting": {"factory": "toydata:make_toy", "options": {"sign": 1.0}}, "training": {"batch_size": 8}}
    plus = run_id(toy)
    minus = run_id({**toy, "setting": {"factory": "toydata:make_toy", "options": {"sign": -1.0}}})
    assert plus != minus


def test_changed_data_behind_the_same_config_gives_a_new_run_id(project: Callable[[str, str], Path]) -> None:
    path = project("toydata", TOY)
    toy = {"plugins": ["toydata"], "setting": {"name": "toy"}, "training": {"batch_size": 8}}
    first = resolve(validate_config(toy))
    path.write_text(TOY.replace("manual_seed(0)", "manual_seed(1)"))
    importlib.reload(sys.modules["toydata"])  # the same builder registered again: replaced quietly
    second = resolve(validate_config(toy))
    assert first.identity is not None and second.identity is not None
    assert first.identity["data"] != second.identity["data"]
    assert first.run_id() != second.run_id()


def test_a_changed_encoder_source_is_a_new_run_never_an_old_result(
    project: Callable[[str, str], Path], tmp_path: Path
) -> None:
    path = project("mycnn", CNN)
    config = validate_config(BASE)
    first = execute(config, tmp_path / "out")
    assert first.status == "completed" and not first.skipped
    assert execute(config, tmp_path / "out").skipped
    path.write_text(CNN.replace("channels, 3,", "channels, 1,"))
    importlib.reload(sys.modules["mycnn"])
    second = execute(config, tmp_path / "out")
    assert not second.skipped and second.run_id != first.run_id
    assert (
        yaml.safe_load((second.path / "config.yaml").read_text())["identity"]["sources"]["mycnn"]
        != (yaml.safe_load((first.path / "config.yaml").read_text())["identity"]["sources"]["mycnn"])
    )


def test_python_objects_are_covered_by_the_run_id(tmp_path: Path) -> None:
    from mtlscope import settings

    setting = settings.get("digits-mtl").subset(["digits1", "digits2"])
    training = {"training": {"steps": 2, "batch_size": 8, "eval_every": 2}}

    def encoder(input_shape: tuple[int, ...]) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 5))

    first = execute(training, tmp_path / "out", setting=setting, encoder=encoder)
    assert first.status == "completed"
    assert execute(training, tmp_path / "out", setting=setting, encoder=encoder).skipped
    instance = encoder((1, 8, 8))
    by_instance = execute(training, tmp_path / "out", setting=setting, encoder=instance)
    with torch.no_grad():
        instance[1].weight.add_(1.0)
    other_weights = execute(training, tmp_path / "out", setting=setting, encoder=instance)
    assert len({first.run_id, by_instance.run_id, other_weights.run_id}) == 3
    changed = setting.subset(["digits1"])
    assert execute(training, tmp_path / "out", setting=changed, encoder=encoder).run_id != first.run_id
    with pytest.raises(ConfigError, match=r"setting: given as a Python object .* pass it with setting="):
        execute(validate_config({**training, "setting": {"object": "Setting 'x'"}}), tmp_path / "none")
    assert not (tmp_path / "none").exists()
