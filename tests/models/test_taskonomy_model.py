"""Standley et al.'s Taskonomy network: shapes, structure, initialization, the representation's gradient scale."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mtlscope.models import ENCODERS, HEADS
from mtlscope.models.taskonomy import SeparableConv2d, XceptionBlock, scale_gradient

SMALL = {"channels": [4, 4, 8, 8], "middle": 8, "middle_blocks": 2, "representation": 6}


def test_shapes_from_input_to_every_decoder() -> None:
    torch.manual_seed(0)
    encoder = ENCODERS.build("xception_taskonomy", (3, 32, 48), **SMALL)
    assert encoder.output_dim == 6
    inputs = torch.rand(2, 3, 32, 48)
    representation = encoder(inputs)
    assert representation.shape == (2, 6, 2, 3)  # 1/16 of the input
    for outputs in (18, 1, 3):
        head = HEADS.build("taskonomy_decoder", 6, outputs, channels=[5, 4, 4, 3])
        assert head(representation).shape == (2, outputs, 32, 48)  # back to the input's resolution


def test_structure_follows_their_xception_taskonomy_new() -> None:
    encoder = ENCODERS.build("xception_taskonomy", (3, 16, 16))  # their size-1 widths
    blocks = [b for b in encoder.blocks if isinstance(b, XceptionBlock)]
    assert len(blocks) == 3 + 8
    strided = [b for b in blocks if b.skip is not None]
    assert len(strided) == 3  # three downsampling blocks with a 1x1 shortcut, then 8 identity-shortcut blocks
    separable = [m for b in blocks for m in b.rep if isinstance(m, SeparableConv2d)]
    assert len(separable) == 3 * 2 + 8 * 3
    assert [b.rep[-1].out_channels for b in strided] == [128, 256, 728]
    assert encoder.final_conv.pointwise.out_channels == 512 and encoder.output_dim == 512
    first = strided[0].rep
    assert isinstance(first[0], SeparableConv2d)  # the first block starts without a ReLU
    assert isinstance(strided[1].rep[0], nn.ReLU)
    depthwise = separable[0].depthwise
    assert depthwise.groups == depthwise.in_channels and depthwise.bias is None
    head = HEADS.build("taskonomy_decoder", 512, 18)
    transposed = [m for m in head.layers if isinstance(m, nn.ConvTranspose2d)]
    assert [m.out_channels for m in transposed] == [128, 64, 48, 32]
    assert head.layers[-1].out_channels == 18 and head.layers[-1].kernel_size == (3, 3)


def test_convolutions_are_initialized_as_theirs() -> None:
    torch.manual_seed(0)
    encoder = ENCODERS.build("xception_taskonomy", (3, 16, 16), middle_blocks=1)
    stem = encoder.stem[0]  # 3 -> 32, 3x3: std sqrt(2 / (9 * 32))
    assert float(stem.weight.detach().std()) == pytest.approx(math.sqrt(2 / (9 * 32)), rel=0.1)
    pointwise = encoder.final_conv.pointwise  # 728 -> 512, 1x1: std sqrt(2 / 512)
    assert float(pointwise.weight.detach().std()) == pytest.approx(math.sqrt(2 / 512), rel=0.05)
    norms = [m for m in encoder.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(bool((m.weight == 1).all()) and bool((m.bias == 0).all()) for m in norms)


def test_gradient_scale_scales_only_the_gradient_into_the_encoder() -> None:
    inputs = torch.rand(2, 3, 16, 16)
    models = []
    for scale in (1.0, 0.25):
        torch.manual_seed(0)
        encoder = ENCODERS.build("xception_taskonomy", (3, 16, 16), gradient_scale=scale, **SMALL)
        head = HEADS.build("taskonomy_decoder", 6, 1, channels=[4, 4, 4, 4])
        loss = head(encoder(inputs)).square().mean()
        loss.backward()
        models.append((encoder, head, loss))
    (enc1, head1, loss1), (enc2, head2, loss2) = models
    assert float(loss1.detach()) == float(loss2.detach())  # the forward value is unchanged, exactly
    for p1, p2 in zip(enc1.parameters(), enc2.parameters(), strict=True):
        torch.testing.assert_close(p2.grad, 0.25 * p1.grad)
    for p1, p2 in zip(head1.parameters(), head2.parameters(), strict=True):
        torch.testing.assert_close(p2.grad, p1.grad)
    x = torch.tensor([1.5, -2.0], requires_grad=True)
    y = scale_gradient(x, 0.3)
    assert torch.equal(y, x)
    (y * torch.tensor([2.0, 1.0])).sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([0.6, 0.3]))


def test_bad_options_are_one_line() -> None:
    with pytest.raises(ValueError, match=r"multiples of 16, got 24x32"):
        ENCODERS.build("xception_taskonomy", (3, 24, 32))
    with pytest.raises(ValueError, match=r"encoder.channels must have 4 entries"):
        ENCODERS.build("xception_taskonomy", (3, 16, 16), channels=[4, 4])
    with pytest.raises(ValueError, match=r"head.channels must have 4 entries"):
        HEADS.build("taskonomy_decoder", 4, 1, channels=[4])
    head = HEADS.build("taskonomy_decoder", 4, 1, channels=[4, 4, 4, 4])
    with pytest.raises(ValueError, match=r"needs a per-pixel representation"):
        head(torch.rand(2, 4))
