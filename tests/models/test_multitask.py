from __future__ import annotations

import pytest
import torch

from mtlscope import settings
from mtlscope.models import build_model


@pytest.mark.parametrize("encoder", [{"name": "lenet"}, {"name": "mlp", "hidden": [32, 8]}])
def test_parameter_partition(encoder: dict) -> None:
    setting = settings.get("digits-mtl")
    model = build_model(setting, encoder, {"name": "mlp", "hidden": [4]}, seed=0)
    shared = {id(p) for p in model.shared_parameters()}
    heads = [{id(p) for p in model.task_parameters(t)} for t in setting.task_names]
    every = {id(p) for p in model.parameters()}
    assert shared and all(heads)
    assert shared.isdisjoint(set().union(*heads))
    for i in range(len(heads)):
        for j in range(i + 1, len(heads)):
            assert heads[i].isdisjoint(heads[j])
    assert shared | set().union(*heads) == every
    assert {id(p) for p in model.predictor_parameters("digits2")} == shared | heads[1]
    with pytest.raises(KeyError):
        list(model.task_parameters("nope"))


def test_single_task_model_matches_multi_task_initialization_and_global_rng_untouched() -> None:
    setting = settings.get("digits-mtl")
    state = torch.random.get_rng_state()
    mt = build_model(setting, {"name": "lenet"}, {"name": "linear"}, seed=3)
    st = build_model(setting.subset(["digits1"]), {"name": "lenet"}, {"name": "linear"}, seed=3)
    assert torch.equal(state, torch.random.get_rng_state())
    for a, b in zip(mt.predictor_parameters("digits1"), st.predictor_parameters("digits1"), strict=True):
        assert torch.equal(a, b)
    other = build_model(setting, {"name": "lenet"}, {"name": "linear"}, seed=4)
    assert not torch.equal(next(mt.shared_parameters()), next(other.shared_parameters()))


def test_shapes_on_every_setting() -> None:
    for name in settings.available():
        if "data_dir" in settings.entry(name).options():
            continue  # a real-data setting: built on its tiny files in its own tests
        setting = settings.get(name)
        model = build_model(setting, dict(setting.default_model["encoder"]), dict(setting.default_model["head"]), 0)
        x = setting.tasks[0].train.inputs[:5]
        for task in setting.tasks:
            out = model(x, task.name) if setting.layout == "multi-input" else model.forward_all(x)[task.name]
            assert out.shape[0] == 5
            assert out.reshape(5, -1).shape[1] == task.output_size


def test_bad_encoder_options() -> None:
    setting = settings.get("digits-mtl")
    with pytest.raises(ValueError, match=r"encoder\.hidden"):
        build_model(setting, {"name": "mlp", "hidden": [0]}, {"name": "linear"}, 0)
    with pytest.raises(ValueError, match="no option 'depth'"):
        build_model(setting, {"name": "lenet", "depth": 3}, {"name": "linear"}, 0)
    with pytest.raises(ValueError, match="image inputs"):
        build_model(settings.get("synthetic"), {"name": "lenet"}, {"name": "linear"}, 0)
