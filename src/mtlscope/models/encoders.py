"""Shared encoders ``g_theta`` (Mueller et al. 2025, §2.1). Each exposes ``output_dim``, the size of the representation.

- ``mlp``: flatten, then ``Linear -> activation`` per entry of ``hidden``.
- ``lenet``: LeNet-style CNN (LeCun et al. 1998) as used for FashionMTL in Mueller et al. (TMLR 2025):
  ``Conv(k) -> ReLU -> MaxPool(2)`` per entry of ``channels``, flatten, ``Linear -> ReLU`` per entry of
  ``hidden``. Padding keeps the spatial size through each convolution (so it works on 8x8 digits and
  28x28 FashionMNIST alike); pooling halves it while it is at least 2.
- ``resnet``: CIFAR-style ResNet (He et al., CVPR 2016; ``mtlscope.models.resnet``): ``Conv3x3 -> BN -> ReLU``
  stem without max-pool, ``BasicBlock`` stages of ``blocks[s]`` blocks of width ``widths[s]`` (stride 2 at the
  start of every stage after the first while the spatial size is at least 2), global average pooling. The
  defaults are ResNet-18 (about 11.2M parameters). ``stem="maxpool"`` adds a 3x3 stride-2 max-pool after the
  stem convolution: the variant for 64x64 images (CelebA), a quarter of the cost of the plain stem there.
- ``lenet5``, ``multilenet``: below.
- ``movielens``: embeddings of the ``movielens`` setting's pair features, concatenated, into ``Dense(50) ->
  Dropout(0.05) -> Dense(10) -> Dropout(0.01)`` (Fifty et al. 2020, App. D.6; ``mtlscope.models.recommender``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from mtlscope.options import PositiveInt, PositiveInts
from mtlscope.registry import Registry

#: The layers of weights (GradNorm's "last shared layer of weights" is one of them).
WEIGHT_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def last_weight_layer(module: nn.Module) -> nn.Module:
    """The last ``WEIGHT_LAYERS`` submodule of ``module`` in registration order; without one, the last
    submodule with parameters of its own. Raises ``ValueError`` when ``module`` has no parameters."""
    weights = [layer for layer in module.modules() if isinstance(layer, WEIGHT_LAYERS)]
    if weights:
        return weights[-1]
    owners = [layer for layer in module.modules() if next(layer.parameters(recurse=False), None) is not None]
    if not owners:
        raise ValueError("the encoder has no parameters")
    return owners[-1]


class Encoder(nn.Module):
    """Base class: a module mapping a batch of inputs to ``[batch, output_dim]`` representations."""

    output_dim: int

    def last_shared_layer(self) -> nn.Module:
        """The last layer of weights on the encoder's main path (GradNorm's W, Chen et al. 2018 §3).

        Default: ``last_weight_layer(self)``, the last Linear/Conv in registration order — right for an
        encoder whose layers are registered in forward order with no side branch (normalization layers,
        activations and dropout are skipped). An encoder with side branches (ResNet's shortcut projections)
        overrides this.
        """
        return last_weight_layer(self)


class SequentialEncoder(Encoder):
    """An encoder whose forward pass is its ``layers`` (an ``nn.Sequential`` built by the subclass)."""

    layers: nn.Sequential

    def forward(self, inputs: Tensor) -> Tensor:
        out: Tensor = self.layers(inputs)
        return out


Activation = Literal["relu", "tanh", "gelu"]
_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}


def _activation(name: str) -> nn.Module:
    if name not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(_ACTIVATIONS)}, got {name!r}")
    return _ACTIVATIONS[name]()


def _check_sizes(field: str, sizes: Sequence[int], allow_empty: bool = True) -> list[int]:
    values = list(sizes)
    if (not values and not allow_empty) or any(int(v) != v or v < 1 for v in values):
        raise ValueError(f"{field} must be a list of positive integers, got {values}")
    return [int(v) for v in values]


class MLPEncoder(SequentialEncoder):
    def __init__(self, input_shape: Sequence[int], hidden: Sequence[int], activation: str, dropout: float) -> None:
        super().__init__()
        widths = _check_sizes("encoder.hidden", hidden, allow_empty=False)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"encoder.dropout must be in [0, 1), got {dropout}")
        layers: list[nn.Module] = [nn.Flatten()]
        previous = int(torch.tensor(list(input_shape)).prod())
        for width in widths:
            layers += [nn.Linear(previous, width), _activation(activation)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            previous = width
        self.layers = nn.Sequential(*layers)
        self.output_dim = previous


class LeNetEncoder(SequentialEncoder):
    def __init__(
        self, input_shape: Sequence[int], channels: Sequence[int], kernel_size: int, hidden: Sequence[int]
    ) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"encoder 'lenet' needs image inputs [channels, height, width], got {list(input_shape)}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"encoder.kernel_size must be a positive odd integer, got {kernel_size}")
        conv_channels = _check_sizes("encoder.channels", channels, allow_empty=False)
        widths = _check_sizes("encoder.hidden", hidden)
        layers: list[nn.Module] = []
        in_channels, height, width = (int(v) for v in input_shape)
        for out_channels in conv_channels:
            layers += [nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2), nn.ReLU()]
            if min(height, width) >= 2:
                layers.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
            in_channels = out_channels
        layers.append(nn.Flatten())
        previous = in_channels * height * width
        for size in widths:
            layers += [nn.Linear(previous, size), nn.ReLU()]
            previous = size
        self.layers = nn.Sequential(*layers)
        self.output_dim = previous


ENCODERS: Registry[Encoder] = Registry("encoder")


@ENCODERS.register("mlp", "multi-layer perceptron on flattened inputs")
def mlp(
    input_shape: Sequence[int],
    *,
    hidden: PositiveInts = (128, 128),
    activation: Activation = "relu",
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0,
) -> Encoder:
    return MLPEncoder(input_shape, hidden, activation, dropout)


@ENCODERS.register("lenet", "LeNet-style CNN: conv-relu-pool blocks, then fully connected layers")
def lenet(
    input_shape: Sequence[int],
    *,
    channels: PositiveInts = (16, 32),
    kernel_size: PositiveInt = 3,
    hidden: Sequence[PositiveInt] = (64,),
) -> Encoder:
    return LeNetEncoder(input_shape, channels, kernel_size, hidden)


from mtlscope.models.resnet import ResNetEncoder, Stem  # noqa: E402  (imports Encoder and _check_sizes from here)


@ENCODERS.register("resnet", "CIFAR-style ResNet (He et al. 2016): BasicBlock stages, global average pooling")
def resnet(
    input_shape: Sequence[int],
    *,
    blocks: PositiveInts = (2, 2, 2, 2),
    widths: PositiveInts = (64, 128, 256, 512),
    stem: Stem = "cifar",
) -> Encoder:
    return ResNetEncoder(input_shape, blocks, widths, stem)


class LeNet5Encoder(SequentialEncoder):
    """LeNet-5 (LeCun et al. 1998) up to its penultimate layer: ``Conv5x5(6, padding 2) -> ReLU -> MaxPool(2) ->
    Conv5x5(16) -> ReLU -> MaxPool(2) -> flatten -> Linear(120) -> ReLU -> Linear(84) -> ReLU``; on 1x28x28
    inputs the flattened map is 16x5x5 (60,856 parameters)."""

    def __init__(self, input_shape: Sequence[int], channels: Sequence[int], hidden: Sequence[int]) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"encoder 'lenet5' needs image inputs [channels, height, width], got {list(input_shape)}")
        sizes = _check_sizes("encoder.channels", channels, allow_empty=False)
        if len(sizes) != 2:
            raise ValueError(f"encoder.channels must be two positive integers (two convolutions), got {sizes}")
        first, second = sizes
        widths = _check_sizes("encoder.hidden", hidden)
        in_channels, height, width = (int(v) for v in input_shape)
        # padding 2 keeps the size through the first 5x5 convolution; the second shrinks it by 4
        if min(height, width) // 2 - 4 < 2:
            raise ValueError(f"encoder 'lenet5' needs inputs of at least 12x12 pixels, got {height}x{width}")
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, first, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(first, second, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        ]
        previous = second * ((height // 2 - 4) // 2) * ((width // 2 - 4) // 2)
        for size in widths:
            layers += [nn.Linear(previous, size), nn.ReLU()]
            previous = size
        self.layers = nn.Sequential(*layers)
        self.output_dim = previous


class MultiLeNetEncoder(SequentialEncoder):
    """The shared part of the multi-task LeNet (Mueller et al. 2022, App. A.3; the layer sizes of Sener & Koltun
    2018's MultiLeNet): ``Conv5x5(10) -> MaxPool(2) -> ReLU -> Conv5x5(20) -> Dropout2d(p) -> MaxPool(2) -> ReLU ->
    flatten -> Linear(50) -> ReLU -> Dropout(p)``; on 1x28x28 inputs the flattened map is 20x4x4."""

    def __init__(self, input_shape: Sequence[int], channels: Sequence[int], hidden: int, dropout: float) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(
                f"encoder 'multilenet' needs image inputs [channels, height, width], got {list(input_shape)}"
            )
        sizes = _check_sizes("encoder.channels", channels, allow_empty=False)
        if len(sizes) != 2:
            raise ValueError(f"encoder.channels must be two positive integers (two convolutions), got {sizes}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"encoder.dropout must be in [0, 1), got {dropout}")
        in_channels, height, width = (int(v) for v in input_shape)
        out_height, out_width = ((height - 4) // 2 - 4) // 2, ((width - 4) // 2 - 4) // 2
        if min(out_height, out_width) < 1:
            raise ValueError(f"encoder 'multilenet' needs inputs of at least 16x16 pixels, got {height}x{width}")
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, sizes[0], 5),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Conv2d(sizes[0], sizes[1], 5),
            nn.Dropout2d(dropout),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(sizes[1] * out_height * out_width, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
        )
        self.output_dim = hidden


@ENCODERS.register("lenet5", "LeNet-5 (LeCun et al. 1998) to its 84-unit penultimate layer; FashionMTL's default")
def lenet5(
    input_shape: Sequence[int],
    *,
    channels: PositiveInts = (6, 16),
    hidden: Sequence[PositiveInt] = (120, 84),
) -> Encoder:
    return LeNet5Encoder(input_shape, channels, hidden)


@ENCODERS.register(
    "multilenet", "multi-task LeNet with dropout (temperature paper App. A.3, Sener & Koltun 2018); MNISTS' default"
)
def multilenet(
    input_shape: Sequence[int],
    *,
    channels: PositiveInts = (10, 20),
    hidden: PositiveInt = 50,
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.5,
) -> Encoder:
    return MultiLeNetEncoder(input_shape, channels, hidden, dropout)


from mtlscope.models import recommender  # noqa: E402, F401  (registers the movielens encoder; imports from here)
