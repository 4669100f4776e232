"""ResNet encoder: the CIFAR variant of He et al., "Deep Residual Learning for Image Recognition" (CVPR 2016).

This is the CIFAR-style network, not the ImageNet one: the stem is a single ``Conv3x3(stride 1) -> BN -> ReLU``
with no max-pool, so small images (8x8 digits, 28x28 FashionMNIST, 32x32 CIFAR) keep their resolution. Stage
``s`` stacks ``blocks[s]`` ``BasicBlock``s of width ``widths[s]``; the first block of every stage after the first
has stride 2 while the spatial size is at least 2 (so 8x8 inputs work with 4 stages). Global average pooling and
flatten give a ``[batch, widths[-1]]`` representation (no classifier: that is the heads' job).

With the defaults (``blocks=(2, 2, 2, 2)``, ``widths=(64, 128, 256, 512)``: ResNet-18) the encoder has
11,168,832 parameters on 3-channel inputs (11,167,680 on 1-channel inputs), about 11.2M.

``stem="maxpool"`` is the variant for 64x64 images (CelebA): the same ``Conv3x3(stride 1) -> BN -> ReLU`` followed
by ``MaxPool(3x3, stride 2, no padding)``, so 64x64 inputs enter the first stage at 31x31 and cost about what a
32x32 CIFAR image costs with the plain stem (the plain stem on 64x64 costs 4x). This is the stem of the
CelebA encoder in the authors' code of Fifty et al.'s task-grouping experiments (google-research/tag,
``celeba/CelebA.ipynb``: ``conv 3x3 stride 1, BN, ReLU, max-pool 3x3 stride 2 'valid'``); the max-pool adds no
parameters, so the counts above hold for both stems.

Initialization follows torchvision: convolutions ``kaiming_normal_(mode="fan_out", nonlinearity="relu")``,
BatchNorm weight 1 and bias 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from torch import Tensor, nn

from mtlscope.models.encoders import Encoder, _check_sizes

__all__ = ["STEMS", "BasicBlock", "ResNetEncoder", "Stem"]

Stem = Literal["cifar", "maxpool"]
STEMS: tuple[str, ...] = ("cifar", "maxpool")


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """``relu(bn(conv3x3(relu(bn(conv3x3(x))))) + shortcut(x))``.

    The shortcut is the identity, or ``Conv1x1(stride) -> BN`` (a projection) when the stride or the width
    changes.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = _conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        else:
            self.shortcut = nn.Identity()

    @property
    def has_projection(self) -> bool:
        return not isinstance(self.shortcut, nn.Identity)

    def forward(self, inputs: Tensor) -> Tensor:
        out: Tensor = self.relu(self.bn1(self.conv1(inputs)))
        out = self.bn2(self.conv2(out))
        out = self.relu(out + self.shortcut(inputs))
        return out


class ResNetEncoder(Encoder):
    """CIFAR-style ResNet body: stem, ``BasicBlock`` stages, global average pooling (see the module docstring)."""

    def __init__(
        self, input_shape: Sequence[int], blocks: Sequence[int], widths: Sequence[int], stem: Stem = "cifar"
    ) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"encoder 'resnet' needs image inputs [channels, height, width], got {list(input_shape)}")
        if stem not in STEMS:
            raise ValueError(f"encoder.stem must be one of {', '.join(STEMS)}, got {stem!r}")
        depths = _check_sizes("encoder.blocks", blocks, allow_empty=False)
        channels = _check_sizes("encoder.widths", widths, allow_empty=False)
        if len(depths) != len(channels):
            raise ValueError(
                f"encoder.blocks and encoder.widths must have the same length (one entry per stage), "
                f"got {len(depths)} blocks {depths} and {len(channels)} widths {channels}"
            )
        in_channels, height, width = (int(v) for v in input_shape)
        stem_layers: list[nn.Module] = [_conv3x3(in_channels, channels[0]), nn.BatchNorm2d(channels[0]), nn.ReLU()]
        if stem == "maxpool":
            if min(height, width) < 3:
                raise ValueError(
                    f"encoder.stem 'maxpool' needs images of at least 3x3 pixels (a 3x3 max-pool), got {height}x{width}"
                )
            stem_layers.append(nn.MaxPool2d(kernel_size=3, stride=2, padding=0))
            height, width = (height - 3) // 2 + 1, (width - 3) // 2 + 1
        self.stem = nn.Sequential(*stem_layers)
        stages: list[nn.Module] = []
        previous = channels[0]
        for index, (depth, size) in enumerate(zip(depths, channels)):
            stride = 2 if index > 0 and min(height, width) >= 2 else 1
            if stride == 2:
                height, width = (height + 1) // 2, (width + 1) // 2
            layers: list[nn.Module] = []
            for block in range(depth):
                layers.append(BasicBlock(previous, size, stride if block == 0 else 1))
                previous = size
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.output_dim = channels[-1]
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def last_shared_layer(self) -> nn.Module:
        """The second convolution of the last block: the last layer of weights on the main path (its BatchNorm
        and a shortcut projection come after it in registration order, but are not that layer)."""
        stage = self.stages[-1]
        assert isinstance(stage, nn.Sequential)
        block = stage[-1]
        assert isinstance(block, BasicBlock)
        return block.conv2

    def forward(self, inputs: Tensor) -> Tensor:
        out: Tensor = self.pool(self.stages(self.stem(inputs)))
        return out
