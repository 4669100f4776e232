"""Any nn.Module as encoder or head: factories, instances, import paths; size inferred by a dry forward."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from mtlscope import settings
from mtlscope.engine.gradients import last_shared_parameters
from mtlscope.models import build_model
from mtlscope.models.components import representation_size

from .conftest import CNN


def cnn(input_shape: tuple[int, ...], *, channels: int = 4) -> nn.Module:
    return nn.Sequential(nn.Conv2d(input_shape[0], channels, 3, padding=1), nn.AdaptiveAvgPool2d(3), nn.Flatten())


def test_the_representation_size_is_inferred_by_a_dry_forward_that_changes_nothing() -> None:
    setting = settings.get("digits-mtl")
    encoder = cnn(setting.input_shape, channels=5)
    encoder.train()
    state = torch.random.get_rng_state()
    assert representation_size(encoder, torch.zeros(2, *setting.input_shape)) == 5 * 3 * 3
    assert encoder.training and torch.equal(state, torch.random.get_rng_state())
    model = build_model(setting, cnn, {"name": "linear"}, seed=0)
    head = model.heads["digits1"]
    assert isinstance(head, nn.Linear) and head.in_features == 4 * 3 * 3 and head.out_features == 10


def test_a_declared_output_dim_is_used_without_a_forward() -> None:
    class Declared(nn.Module):
        output_dim = 7

        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(64, 7)

        def forward(self, inputs: torch.Tensor) -> torch.Tensor:
            raise AssertionError("no forward when output_dim is declared")

    assert representation_size(Declared(), torch.zeros(2, 1, 8, 8)) == 7


def test_an_output_that_is_not_batch_by_features_is_one_line() -> None:
    setting = settings.get("digits-mtl")
    with pytest.raises(ValueError) as error:
        build_model(setting, lambda input_shape: nn.Conv2d(1, 2, 3), {"name": "linear"}, seed=0)
    assert str(error.value) == (
        "encoder: expected an output of shape [batch, features] for 2 examples, got [2, 2, 6, 6] "
        "(flatten it, or declare output_dim)"
    )


def test_factories_are_seeded_and_instances_copied() -> None:
    setting = settings.get("digits-mtl")
    first = build_model(setting, cnn, {"name": "linear"}, seed=3)
    again = build_model(setting, cnn, {"name": "linear"}, seed=3)
    other = build_model(setting, cnn, {"name": "linear"}, seed=4)
    assert all(torch.equal(a, b) for a, b in zip(first.parameters(), again.parameters(), strict=True))
    assert not torch.equal(next(first.shared_parameters()), next(other.shared_parameters()))
    instance = cnn(setting.input_shape)
    model = build_model(setting, instance, {"name": "linear"}, seed=0)
    assert model.encoder is not instance
    assert torch.equal(next(model.encoder.parameters()), next(instance.parameters()))


def test_head_factories_get_output_size_and_input_dim() -> None:
    setting = settings.get("digits-mtl")

    def head(input_dim: int, output_size: int, *, hidden: int = 3) -> nn.Module:
        return nn.Sequential(nn.Linear(input_dim, hidden), nn.Linear(hidden, output_size))

    model = build_model(setting, {"name": "mlp", "hidden": [6]}, head, seed=0)
    assert model(torch.zeros(4, *setting.input_shape), "digits1").shape == (4, 10)
    with pytest.raises(ValueError, match=r"head factory .* must take a parameter 'output_size'"):
        build_model(setting, {"name": "mlp"}, lambda input_dim: nn.Linear(input_dim, 1), seed=0)


def test_a_factory_given_by_import_path_builds_and_gradnorm_finds_its_last_layer(
    project: Callable[[str, str], Path],
) -> None:
    project("mycnn", CNN)
    setting = settings.get("digits-mtl")
    model = build_model(setting, {"factory": "mycnn:make_cnn", "channels": 3}, {"name": "linear"}, seed=0)
    conv = model.encoder[0]
    assert [p.data_ptr() for p in last_shared_parameters(model)] == [p.data_ptr() for p in conv.parameters()]
    with pytest.raises(ValueError, match=r"encoder factory mycnn:make_cnn has no option 'width'; options: channels"):
        build_model(setting, {"factory": "mycnn:make_cnn", "width": 3}, {"name": "linear"}, seed=0)
    with pytest.raises(ValueError, match=r"returned a int, expected a torch nn.Module"):
        build_model(setting, lambda: 3, {"name": "linear"}, seed=0)
