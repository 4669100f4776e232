"""The Taskonomy network of Standley et al. (ICML 2020): a shared Xception-style encoder, one decoder per task.

Rebuilt from the description of their ``model_definitions/xception_taskonomy_new.py`` (tstandley/taskgrouping),
the network their README trains and the transference paper's "Setting 3" runs use (App. D.2):

``xception_taskonomy`` encoder (input ``[3, H, W]``, ``H`` and ``W`` multiples of 16):

- stem: ``Conv3x3(channels[0], stride 2) -> BN -> ReLU -> Conv3x3(channels[1]) -> BN -> ReLU``;
- three downsampling blocks to ``channels[2]``, ``channels[3]`` and ``middle`` channels: each two
  ``ReLU -> SeparableConv3x3 -> BN`` (the first block without its leading ReLU), then a ``Conv2x2`` of stride 2,
  plus a ``Conv1x1(stride 2) -> BN`` shortcut;
- ``middle_blocks`` (8) residual blocks of three ``ReLU -> SeparableConv3x3 -> BN`` at ``middle`` channels
  (identity shortcut), then a ReLU;
- the shared representation: ``SeparableConv3x3(representation) -> BN`` (their ``final_conv``), at 1/16 of the
  input's resolution: ``[batch, representation, H/16, W/16]``.

A separable convolution is a depthwise ``Conv3x3`` (one filter per channel) then a pointwise ``Conv1x1``, both
without bias. Their widths (``size=1``): ``channels [32, 64, 128, 256]``, ``middle 728``, ``representation 512``;
the defaults here. Convolutions are initialized from ``N(0, 2 / (k*k*out_channels))`` and batch norms with weight
1 and bias 0, as theirs.

``gradient_scale`` multiplies the gradient that reaches the encoder through the representation (the forward
value is unchanged): their ``TrevorRepFunction`` scales it by ``1 / sqrt(number of tasks)`` (0.4472 for their
five tasks); the default 1 leaves it unscaled.

``taskonomy_decoder`` head (their ``Decoder`` with ``small_decoder=True``): four times ``ConvTranspose2x2(stride
2) -> BN -> ReLU``, each but the last followed by ``Conv3x3 -> BN -> ReLU``, at ``channels`` (128, 64, 48, 32),
then ``Conv3x3(outputs)``: back to the input's resolution, ``[batch, outputs, H, W]``.

Simplifications: every ReLU is out of place and the residual sum is ``x + shortcut`` (theirs are in place: the
same values); their half-sized output option and their ``rotate_loss`` are not provided.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from mtlscope.models.encoders import ENCODERS, Encoder, _check_sizes
from mtlscope.models.heads import HEADS
from mtlscope.options import PositiveFloat, PositiveInt, PositiveInts

__all__ = ["TaskonomyDecoder", "XceptionTaskonomyEncoder"]

#: The encoder's downsampling: a stride-2 stem and three stride-2 blocks.
DOWNSAMPLING = 16


class SeparableConv2d(nn.Module):
    """Depthwise ``Conv(kernel)`` (one filter per input channel) then pointwise ``Conv1x1``, no biases."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, padding: int = 1) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(
            in_channels, in_channels, kernel_size, padding=padding, groups=in_channels, bias=False
        )
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, inputs: Tensor) -> Tensor:
        out: Tensor = self.pointwise(self.depthwise(inputs))
        return out


class XceptionBlock(nn.Module):
    """``reps`` times ``ReLU -> SeparableConv3x3 -> BN`` (the first to ``out_channels``), optionally without the
    first ReLU, then a stride-2 ``Conv2x2`` when ``downsample``; shortcut ``Conv1x1 -> BN`` when the shape
    changes, else the identity."""

    def __init__(
        self, in_channels: int, out_channels: int, reps: int, *, downsample: bool, start_with_relu: bool
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for _ in range(reps):
            layers += [nn.ReLU(), SeparableConv2d(channels, out_channels), nn.BatchNorm2d(out_channels)]
            channels = out_channels
        if not start_with_relu:
            layers = layers[1:]
        if downsample:
            layers.append(nn.Conv2d(out_channels, out_channels, 2, stride=2))
        self.rep = nn.Sequential(*layers)
        self.skip: nn.Module | None = None
        if out_channels != in_channels or downsample:
            self.skip = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=2 if downsample else 1, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, inputs: Tensor) -> Tensor:
        shortcut = inputs if self.skip is None else self.skip(inputs)
        out: Tensor = self.rep(inputs) + shortcut
        return out


def scale_gradient(inputs: Tensor, scale: float) -> Tensor:
    """``inputs`` unchanged, its gradient multiplied by ``scale`` (plain operations: the functional transforms of
    the per-example probes apply). The forward value is exactly ``inputs``: ``x.detach() + scale * 0``."""
    if scale == 1.0:
        return inputs
    detached = inputs.detach()
    return detached + scale * (inputs - detached)


class XceptionTaskonomyEncoder(Encoder):
    """The shared encoder of Standley et al.'s Taskonomy network (module docstring)."""

    def __init__(
        self,
        input_shape: Sequence[int],
        channels: Sequence[int],
        middle: int,
        middle_blocks: int,
        representation: int,
        gradient_scale: float,
    ) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(
                f"encoder 'xception_taskonomy' needs image inputs [channels, height, width], got {list(input_shape)}"
            )
        widths = _check_sizes("encoder.channels", channels, allow_empty=False)
        if len(widths) != 4:
            raise ValueError(f"encoder.channels must have 4 entries (stem 1, stem 2, block 1, block 2), got {widths}")
        in_channels, height, width = (int(v) for v in input_shape)
        if height % DOWNSAMPLING or width % DOWNSAMPLING:
            raise ValueError(
                f"encoder 'xception_taskonomy' downsamples by {DOWNSAMPLING}: image height and width must be "
                f"multiples of {DOWNSAMPLING}, got {height}x{width}"
            )
        relu = nn.ReLU
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            relu(),
            nn.Conv2d(widths[0], widths[1], 3, padding=1, bias=False),
            nn.BatchNorm2d(widths[1]),
            relu(),
        )
        blocks = [
            XceptionBlock(widths[1], widths[2], 2, downsample=True, start_with_relu=False),
            XceptionBlock(widths[2], widths[3], 2, downsample=True, start_with_relu=True),
            XceptionBlock(widths[3], middle, 2, downsample=True, start_with_relu=True),
        ]
        blocks += [
            XceptionBlock(middle, middle, 3, downsample=False, start_with_relu=True) for _ in range(middle_blocks)
        ]
        self.blocks = nn.Sequential(*blocks, relu())
        self.final_conv = SeparableConv2d(middle, representation)
        self.final_bn = nn.BatchNorm2d(representation)
        self.gradient_scale = float(gradient_scale)
        self.output_dim = representation
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, inputs: Tensor) -> Tensor:
        out = self.final_bn(self.final_conv(self.blocks(self.stem(inputs))))
        return scale_gradient(out, self.gradient_scale)


class TaskonomyDecoder(nn.Module):
    """One task's decoder: four 2x upsamplings back to the input's resolution (module docstring)."""

    def __init__(self, input_dim: int, output_size: int, channels: Sequence[int]) -> None:
        super().__init__()
        widths = _check_sizes("head.channels", channels, allow_empty=False)
        if len(widths) != 4:
            raise ValueError(f"head.channels must have 4 entries (one per 2x upsampling), got {widths}")
        layers: list[nn.Module] = []
        previous = input_dim
        for level, size in enumerate(widths):
            layers += [nn.ConvTranspose2d(previous, size, 2, stride=2), nn.BatchNorm2d(size), nn.ReLU()]
            if level < len(widths) - 1:
                layers += [nn.Conv2d(size, size, 3, padding=1), nn.BatchNorm2d(size), nn.ReLU()]
            previous = size
        layers.append(nn.Conv2d(previous, output_size, 3, padding=1))
        self.layers = nn.Sequential(*layers)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):  # not the transposed convolutions, as theirs
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))

    def forward(self, representation: Tensor) -> Tensor:
        if representation.dim() != 4:
            raise ValueError(
                f"head 'taskonomy_decoder' needs a per-pixel representation [batch, channels, height, width], got "
                f"{list(representation.shape)} (use the xception_taskonomy encoder)"
            )
        out: Tensor = self.layers(representation)
        return out


@ENCODERS.register(
    "xception_taskonomy", "Standley et al.'s shared Xception-style Taskonomy encoder (1/16 resolution representation)"
)
def xception_taskonomy(
    input_shape: Sequence[int],
    *,
    channels: PositiveInts = (32, 64, 128, 256),
    middle: PositiveInt = 728,
    middle_blocks: int = 8,
    representation: PositiveInt = 512,
    gradient_scale: PositiveFloat = 1.0,
) -> Encoder:
    if middle_blocks < 0:
        raise ValueError(f"encoder.middle_blocks must be an integer >= 0, got {middle_blocks}")
    return XceptionTaskonomyEncoder(input_shape, channels, middle, middle_blocks, representation, gradient_scale)


@HEADS.register("taskonomy_decoder", "Standley et al.'s Taskonomy decoder: four 2x transposed-conv upsamplings")
def taskonomy_decoder(input_dim: int, output_size: int, *, channels: PositiveInts = (128, 64, 48, 32)) -> nn.Module:
    return TaskonomyDecoder(input_dim, output_size, channels)
