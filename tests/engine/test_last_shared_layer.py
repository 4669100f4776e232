"""GradNorm's W, the last shared layer of weights (Chen et al. 2018 §3): the encoder's last Linear/Conv on
its main path, never a BatchNorm or a shortcut projection."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from mtlscope import settings
from mtlscope.engine.gradients import last_shared_parameters
from mtlscope.models import build_model
from mtlscope.models.encoders import Encoder
from mtlscope.models.multitask import MultiTaskModel


def _layer_name(model: MultiTaskModel) -> str:
    """The name (in the encoder) of the module whose parameters ``last_shared_parameters`` returns."""
    chosen = {id(p) for p in last_shared_parameters(model)}
    names = [
        name
        for name, module in model.encoder.named_modules()
        if {id(p) for p in module.parameters(recurse=False)} == chosen
    ]
    assert len(names) == 1, names
    return names[0]


@pytest.mark.parametrize(
    ("encoder", "expected"),
    [
        ({"name": "resnet"}, "stages.3.1.conv2"),  # ResNet-18: the last block's second convolution, not bn2
        ({"name": "resnet", "blocks": [2, 2, 2, 1], "widths": [8, 8, 16, 16]}, "stages.3.0.conv2"),  # not the shortcut
        ({"name": "resnet", "blocks": [1], "widths": [4]}, "stages.0.0.conv2"),
        ({"name": "resnet", "blocks": [1, 1], "widths": [4, 8]}, "stages.1.0.conv2"),
        ({"name": "mlp", "hidden": [16, 8], "dropout": 0.1}, "layers.4"),  # Linear(16, 8), not the dropout
        ({"name": "lenet"}, "layers.7"),  # the fully connected layer
        ({"name": "lenet", "hidden": []}, "layers.3"),  # no fully connected layer: the last convolution
    ],
)
def test_last_shared_layer_of_the_encoders(encoder: dict, expected: str) -> None:
    setting = settings.get("digits-mtl", tasks=["digits1", "digits2"])
    model = build_model(setting, encoder, {"name": "linear"}, seed=0)
    assert _layer_name(model) == expected
    layer = model.encoder.get_submodule(expected)
    assert isinstance(layer, (nn.Linear, nn.Conv2d))
    assert last_shared_parameters(model) == list(layer.parameters())


class NormalizedEncoder(Encoder):
    """A user encoder that declares nothing: Linear -> BatchNorm -> ReLU -> Linear -> LayerNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(64, 16)
        self.norm = nn.BatchNorm1d(16)
        self.second = nn.Linear(16, 8)
        self.out_norm = nn.LayerNorm(8)
        self.output_dim = 8

    def forward(self, inputs: Tensor) -> Tensor:
        hidden = torch.relu(self.norm(self.first(inputs.flatten(1))))
        out: Tensor = self.out_norm(self.second(hidden))
        return out


def test_an_encoder_without_a_declaration_gets_its_last_weight_layer_not_a_normalization() -> None:
    model = MultiTaskModel(NormalizedEncoder(), {"a": nn.Linear(8, 2)})
    assert _layer_name(model) == "second"


class NoWeightLayers(Encoder):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(4))
        self.output_dim = 4

    def forward(self, inputs: Tensor) -> Tensor:
        return inputs * self.scale


def test_an_encoder_without_weight_layers_falls_back_to_its_last_module_with_parameters() -> None:
    model = MultiTaskModel(NoWeightLayers(), {"a": nn.Linear(4, 2)})
    assert last_shared_parameters(model) == [model.encoder.scale]
