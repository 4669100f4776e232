"""Dense prediction on CPUs: a small SegNet-style encoder-decoder and per-pixel convolutional heads.

``segnet`` (after Badrinarayanan et al., TPAMI 2017, and the SegNet of MTAN, Liu et al. CVPR 2019): level ``l``
applies ``convs`` blocks ``Conv3x3 -> BN -> ReLU`` of width ``channels[l]``, then (except at the deepest level)
a 2x2 max-pool; the decoder mirrors it: at each level, upsampling back to the size the encoder had there, then
``convs`` blocks of that level's width. The representation is ``[batch, channels[0], H, W]``, a feature vector
per input pixel (``output_dim = channels[0]``), shared by every task. Unlike SegNet the decoder upsamples
bilinearly instead of unpooling with the max-pool's indices (no index bookkeeping; every operation has a
batching rule, so the per-example probes apply).

``conv`` head: ``Conv1x1(outputs)``, or with ``hidden`` ``Conv3x3(hidden) -> ReLU -> Conv1x1(outputs)`` (the task
head of MTAN's SegNet), then a bilinear upsampling by ``upsample`` (1 for ``segnet``, whose representation is at
the input's resolution). A head's output is ``[batch, outputs, H, W]``: class scores for segmentation, one
channel for depth, three for normals.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from mtlscope.models.encoders import ENCODERS, Encoder, _check_sizes
from mtlscope.models.heads import HEADS
from mtlscope.options import PositiveInt, PositiveInts

__all__ = ["ConvHead", "SegNetEncoder"]


def conv_block(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    ]


class SegNetEncoder(Encoder):
    """Encoder-decoder with a per-pixel representation at the input's resolution (module docstring)."""

    def __init__(self, input_shape: Sequence[int], channels: Sequence[int], convs: int = 1) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"encoder 'segnet' needs image inputs [channels, height, width], got {list(input_shape)}")
        widths = _check_sizes("encoder.channels", channels, allow_empty=False)
        if convs < 1:
            raise ValueError(f"encoder.convs must be a positive integer, got {convs}")
        in_channels, height, width = (int(v) for v in input_shape)
        smallest = 2 ** (len(widths) - 1)
        if min(height, width) < smallest:
            raise ValueError(
                f"encoder 'segnet' with {len(widths)} levels pools {len(widths) - 1} times: images need at least "
                f"{smallest}x{smallest} pixels, got {height}x{width}"
            )
        down: list[nn.Module] = []
        previous = in_channels
        for size in widths:
            layers = conv_block(previous, size) + [m for _ in range(convs - 1) for m in conv_block(size, size)]
            down.append(nn.Sequential(*layers))
            previous = size
        up: list[nn.Module] = []
        for size in reversed(widths[:-1]):
            layers = conv_block(previous, size) + [m for _ in range(convs - 1) for m in conv_block(size, size)]
            up.append(nn.Sequential(*layers))
            previous = size
        self.down = nn.ModuleList(down)
        self.up = nn.ModuleList(up)
        self.output_dim = widths[0]
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, inputs: Tensor) -> Tensor:
        sizes: list[tuple[int, int]] = []
        out = inputs
        for level, block in enumerate(self.down):
            out = block(out)
            if level < len(self.down) - 1:
                sizes.append((int(out.shape[-2]), int(out.shape[-1])))
                out = F.max_pool2d(out, kernel_size=2)
        for block, size in zip(self.up, reversed(sizes)):
            out = block(F.interpolate(out, size=size, mode="bilinear", align_corners=False))
        return out


class ConvHead(nn.Module):
    """Per-pixel head on a ``[batch, input_dim, h, w]`` representation (module docstring)."""

    def __init__(self, input_dim: int, output_size: int, hidden: int | None = None, upsample: int = 1) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        if hidden is not None:
            layers += [nn.Conv2d(input_dim, hidden, kernel_size=3, padding=1), nn.ReLU()]
        layers.append(nn.Conv2d(hidden if hidden is not None else input_dim, output_size, kernel_size=1))
        self.layers = nn.Sequential(*layers)
        self.upsample = upsample

    def forward(self, representation: Tensor) -> Tensor:
        if representation.dim() != 4:
            raise ValueError(
                f"head 'conv' needs a per-pixel representation [batch, channels, height, width], got "
                f"{list(representation.shape)} (use a dense encoder: segnet or deeplabv3)"
            )
        out: Tensor = self.layers(representation)
        if self.upsample > 1:
            out = F.interpolate(out, scale_factor=self.upsample, mode="bilinear", align_corners=False)
        return out


@ENCODERS.register("segnet", "SegNet-style encoder-decoder: a per-pixel representation for dense tasks (CPU-sized)")
def segnet(input_shape: Sequence[int], *, channels: PositiveInts = (16, 32, 64), convs: PositiveInt = 1) -> Encoder:
    return SegNetEncoder(input_shape, channels, convs)


@HEADS.register("conv", "per-pixel head: [Conv3x3(hidden) -> ReLU ->] Conv1x1, then bilinear upsampling")
def conv(
    input_dim: int, output_size: int, *, hidden: PositiveInt | None = None, upsample: PositiveInt = 1
) -> nn.Module:
    return ConvHead(input_dim, output_size, hidden, upsample)
