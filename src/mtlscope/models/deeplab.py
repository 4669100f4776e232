"""DeepLabV3 (Chen et al., "Rethinking Atrous Convolution for Semantic Image Segmentation", 2017) for dense tasks.

``deeplabv3`` encoder: the shared dilated ResNet backbone (He et al. 2016, bottleneck blocks; ``resnet50``:
blocks [3, 4, 6, 3], ``resnet101``: [3, 4, 23, 3]). ``output_stride=8`` replaces the strides of stages 3 and 4
by dilations 2 and 4 (16: stage 4 only, dilation 2), as torchvision's ``replace_stride_with_dilation`` does,
so a 128x256 image gives a ``[batch, 2048, 16, 32]`` representation. The layers carry torchvision's names
(``conv1``, ``bn1``, ``layer1.0.conv1``, ..., ``layer4.2.downsample.0``), so torchvision's ImageNet ResNet
weights load as they are. ``width`` (64) and ``blocks`` shrink it for tests (the stage widths are ``width``,
2x, 4x, 8x, with 4x as many output channels).

Pretrained weights come only from a local file, ``weights``: a state dict saved with ``torch.save`` (read with
``torch.load(weights_only=True)``: no pickled code runs) or a ``.safetensors`` file; a relative path is under
the data directory (``mtlscope data`` lists ``weights/resnet50-imagenet.pth`` and
``weights/resnet101-imagenet.pth`` with where to get them). Nothing is ever downloaded. The classifier
``fc.*`` of an ImageNet checkpoint is skipped; any other missing, unexpected or mis-shaped entry is one
``ValueError`` line naming it.

``aspp`` head, one per task (DeepLabV3's head, as torchvision's ``DeepLabHead``): Atrous Spatial Pyramid Pooling
— a 1x1 convolution, three 3x3 convolutions with dilation ``rates`` (12, 24, 36 at output stride 8; the paper's
6, 12, 18 at 16) and image pooling, each ``-> BN -> ReLU`` with ``channels`` outputs (the pooling branch without
the BN, which would see one value per channel for a single example) — concatenated, projected by
``Conv1x1 -> BN -> ReLU -> Dropout(dropout)``, then ``Conv3x3 -> BN -> ReLU -> Conv1x1(outputs)``, and upsampled
bilinearly by ``upsample`` (set it to the encoder's ``output_stride``) to the input's resolution.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from mtlscope.data.catalog import data_directory
from mtlscope.models.encoders import ENCODERS, Encoder, _check_sizes
from mtlscope.models.heads import HEADS
from mtlscope.options import PositiveInt, PositiveInts

__all__ = ["BACKBONES", "ASPPHead", "Bottleneck", "DilatedResNet", "load_backbone_weights"]

Backbone = Literal["resnet50", "resnet101"]
#: Bottleneck blocks per stage of each backbone.
BACKBONES: dict[str, tuple[int, ...]] = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3)}
OutputStride = Literal[8, 16]
#: Which stages (2, 3, 4) trade their stride for a dilation, per output stride.
DILATE: dict[int, tuple[bool, bool, bool]] = {8: (False, True, True), 16: (False, False, True)}


class Bottleneck(nn.Module):
    """``relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x))))))) + downsample(x))``, the stride on the 3x3
    convolution (ResNet v1.5, torchvision's), which is dilated by ``dilation``."""

    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None, dilation: int = 1
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(
            planes, planes, kernel_size=3, stride=stride, padding=dilation, dilation=dilation, bias=False
        )
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, inputs: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(inputs)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = inputs if self.downsample is None else self.downsample(inputs)
        result: Tensor = self.relu(out + shortcut)
        return result


class DilatedResNet(Encoder):
    """The dilated ResNet backbone of DeepLabV3 (module docstring); representation ``[batch, 32 * width, h, w]``."""

    def __init__(
        self, input_shape: Sequence[int], blocks: Sequence[int], width: int = 64, output_stride: int = 8
    ) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(
                f"encoder 'deeplabv3' needs image inputs [channels, height, width], got {list(input_shape)}"
            )
        depths = _check_sizes("encoder.blocks", blocks, allow_empty=False)
        if len(depths) != 4:
            raise ValueError(f"encoder.blocks must list 4 stages, got {depths}")
        if output_stride not in DILATE:
            raise ValueError(f"encoder.output_stride must be 8 or 16, got {output_stride!r}")
        self.output_stride = output_stride
        self.conv1 = nn.Conv2d(int(input_shape[0]), width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.inplanes, self.dilation = width, 1
        self.layer1 = self._stage(width, depths[0], stride=1, dilate=False)
        self.layer2 = self._stage(width * 2, depths[1], stride=2, dilate=DILATE[output_stride][0])
        self.layer3 = self._stage(width * 4, depths[2], stride=2, dilate=DILATE[output_stride][1])
        self.layer4 = self._stage(width * 8, depths[3], stride=2, dilate=DILATE[output_stride][2])
        self.output_dim = width * 8 * Bottleneck.expansion
        for module in self.modules():  # torchvision's initialization
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def _stage(self, planes: int, blocks: int, stride: int, dilate: bool) -> nn.Sequential:
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * Bottleneck.expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * Bottleneck.expansion),
            )
        layers = [Bottleneck(self.inplanes, planes, stride, downsample, previous_dilation)]
        self.inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self.inplanes, planes, dilation=self.dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def last_shared_layer(self) -> nn.Module:
        """The last block's ``conv3`` (its shortcut projection, when it has one, is registered after it)."""
        block = self.layer4[-1]
        assert isinstance(block, Bottleneck)
        return block.conv3

    def forward(self, inputs: Tensor) -> Tensor:
        out = self.maxpool(self.relu(self.bn1(self.conv1(inputs))))
        result: Tensor = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return result


def _read_state(path: Path) -> Mapping[str, object]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise ValueError(f"holds a {type(state).__name__}, not a state dict")
    return state


def load_backbone_weights(encoder: nn.Module, weights: str | Path) -> None:
    """Load a torchvision-named ResNet state dict from the local file ``weights`` into ``encoder`` (module
    docstring; a relative path is under the data directory). ``ValueError``, one line naming the file, for a
    missing or unreadable file, a missing, unexpected or mis-shaped entry."""
    path = Path(weights).expanduser()
    if not path.is_absolute():
        path = data_directory() / path
    if not path.is_file():
        raise ValueError(
            f"deeplabv3 weights: missing {path}; save torchvision's ImageNet ResNet weights there "
            "(`mtlscope data` lists where resnet50-imagenet and resnet101-imagenet are expected); never downloaded"
        )
    try:
        state = _read_state(path)
    except Exception as error:  # unpickling refused, a damaged zip or safetensors header, ...
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise ValueError(f"deeplabv3 weights {path}: not a readable state dict ({first})") from None
    own = encoder.state_dict()
    given = {key: value for key, value in state.items() if not key.startswith("fc.")}
    for key, value in given.items():
        if key not in own:
            raise ValueError(f"deeplabv3 weights {path}: unexpected entry {key!r} (not a layer of this backbone)")
        if not isinstance(value, Tensor) or value.shape != own[key].shape:
            shape = list(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(
                f"deeplabv3 weights {path}: entry {key!r} is {shape}, the backbone's is {list(own[key].shape)}"
            )
    missing = [key for key in own if key not in given and not key.endswith("num_batches_tracked")]
    if missing:
        raise ValueError(f"deeplabv3 weights {path}: no entry {missing[0]!r} ({len(missing)} missing in all)")
    with torch.no_grad():
        for key, value in given.items():
            assert isinstance(value, Tensor)
            own[key].copy_(value)


class ASPPHead(nn.Module):
    """DeepLabV3's ASPP head for one task (module docstring)."""

    def __init__(
        self,
        input_dim: int,
        output_size: int,
        rates: Sequence[int] = (12, 24, 36),
        channels: int = 256,
        dropout: float = 0.5,
        upsample: int = 8,
    ) -> None:
        super().__init__()

        def normed(conv: nn.Module) -> nn.Sequential:
            return nn.Sequential(conv, nn.BatchNorm2d(channels), nn.ReLU())

        branches = [normed(nn.Conv2d(input_dim, channels, kernel_size=1, bias=False))]
        branches += [
            normed(nn.Conv2d(input_dim, channels, kernel_size=3, padding=rate, dilation=rate, bias=False))
            for rate in _check_sizes("head.rates", rates, allow_empty=False)
        ]
        self.branches = nn.ModuleList(branches)
        self.pooling = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(input_dim, channels, kernel_size=1, bias=False), nn.ReLU()
        )
        self.project = nn.Sequential(
            nn.Conv2d(channels * (len(branches) + 1), channels, kernel_size=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Dropout(dropout),
        )
        self.classifier = nn.Sequential(
            nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Conv2d(channels, output_size, kernel_size=1),
        )
        self.upsample = upsample

    def forward(self, representation: Tensor) -> Tensor:
        if representation.dim() != 4:
            raise ValueError(
                f"head 'aspp' needs a per-pixel representation [batch, channels, height, width], got "
                f"{list(representation.shape)} (use the deeplabv3 encoder)"
            )
        size = representation.shape[-2:]
        pooled = F.interpolate(self.pooling(representation), size=size, mode="bilinear", align_corners=False)
        features = torch.cat([branch(representation) for branch in self.branches] + [pooled], dim=1)
        out: Tensor = self.classifier(self.project(features))
        if self.upsample > 1:
            out = F.interpolate(out, scale_factor=self.upsample, mode="bilinear", align_corners=False)
        return out


@ENCODERS.register("deeplabv3", "DeepLabV3's dilated ResNet-50/101 backbone (output stride 8 or 16), local weights")
def deeplabv3(
    input_shape: Sequence[int],
    *,
    backbone: Backbone = "resnet50",
    output_stride: OutputStride = 8,
    weights: str | None = None,
    blocks: PositiveInts | None = None,
    width: PositiveInt = 64,
) -> Encoder:
    if backbone not in BACKBONES:
        raise ValueError(f"encoder.backbone must be one of {', '.join(BACKBONES)}, got {backbone!r}")
    encoder = DilatedResNet(input_shape, blocks if blocks is not None else BACKBONES[backbone], width, output_stride)
    if weights is not None:
        load_backbone_weights(encoder, weights)
    return encoder


@HEADS.register("aspp", "DeepLabV3's Atrous Spatial Pyramid Pooling head, upsampled to the input's resolution")
def aspp(
    input_dim: int,
    output_size: int,
    *,
    rates: PositiveInts = (12, 24, 36),
    channels: PositiveInt = 256,
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.5,
    upsample: PositiveInt = 8,
) -> nn.Module:
    return ASPPHead(input_dim, output_size, rates, channels, dropout, upsample)
