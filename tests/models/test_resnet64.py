"""The ResNet-18 variant for 64x64 images (CelebA): the CIFAR stem followed by a 3x3 stride-2 max-pool."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mtlscope.models import ENCODERS
from mtlscope.models.resnet import ResNetEncoder


def _resnet(input_shape: tuple[int, ...], **options: object) -> ResNetEncoder:
    encoder = ENCODERS.build("resnet", input_shape, **options)
    assert isinstance(encoder, ResNetEncoder)
    return encoder


def _spatial_sizes(encoder: ResNetEncoder, inputs: torch.Tensor) -> list[tuple[int, int]]:
    """Height and width after the stem and after every stage."""
    sizes = []
    out = encoder.stem(inputs)
    sizes.append(tuple(out.shape[2:]))
    for stage in encoder.stages:
        out = stage(out)
        sizes.append(tuple(out.shape[2:]))
    return sizes  # type: ignore[return-value]


def test_maxpool_stem_takes_64x64_to_31x31_and_the_stages_halve_it() -> None:
    torch.manual_seed(0)
    encoder = _resnet((3, 64, 64), blocks=[1, 1, 1, 1], widths=[4, 4, 8, 8], stem="maxpool")
    encoder.eval()
    inputs = torch.randn(2, 3, 64, 64)
    # (64 - 3) // 2 + 1 = 31 (TAG's 'valid' 3x3/2 max-pool), then stride 2 with padding 1: 16, 8, 4
    assert _spatial_sizes(encoder, inputs) == [(31, 31), (31, 31), (16, 16), (8, 8), (4, 4)]
    assert isinstance(encoder.stem[-1], nn.MaxPool2d)
    out = encoder(inputs)
    assert out.shape == (2, 8) and torch.isfinite(out).all()
    cifar = _resnet((3, 64, 64), blocks=[1, 1, 1, 1], widths=[4, 4, 8, 8])
    assert _spatial_sizes(cifar, inputs) == [(64, 64), (64, 64), (32, 32), (16, 16), (8, 8)]  # 4x the pixels


def test_maxpool_stem_is_the_cifar_stem_then_a_max_pool() -> None:
    """Same parameters, same stem convolution: the max-pool stem's output is max_pool2d of the CIFAR stem's."""
    torch.manual_seed(0)
    pooled = _resnet((3, 64, 64), blocks=[1, 1], widths=[4, 8], stem="maxpool").eval()
    plain = _resnet((3, 64, 64), blocks=[1, 1], widths=[4, 8], stem="cifar").eval()
    plain.load_state_dict(pooled.state_dict())  # no extra parameters or buffers: the state dicts match
    inputs = torch.randn(3, 3, 64, 64)
    expected = torch.nn.functional.max_pool2d(plain.stem(inputs), kernel_size=3, stride=2)
    torch.testing.assert_close(pooled.stem(inputs), expected)


def test_resnet18_64x64_parameter_count_equals_the_cifar_one() -> None:
    pooled = _resnet((3, 64, 64), stem="maxpool")  # the defaults: ResNet-18
    assert sum(p.numel() for p in pooled.parameters()) == 11_168_832
    assert pooled.output_dim == 512
    pooled.eval()
    with torch.no_grad():
        assert pooled(torch.rand(2, 3, 64, 64)).shape == (2, 512)


def test_default_stem_is_unchanged() -> None:
    torch.manual_seed(0)
    default = _resnet((3, 32, 32), blocks=[1], widths=[4])
    assert [type(m) for m in default.stem] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]


def test_maxpool_stem_backpropagates_to_every_parameter() -> None:
    torch.manual_seed(0)
    encoder = _resnet((3, 64, 64), blocks=[1, 1], widths=[4, 8], stem="maxpool")
    encoder(torch.randn(4, 3, 64, 64)).square().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in encoder.parameters())
    assert encoder.last_shared_layer() is encoder.stages[-1][-1].conv2


def test_unknown_stem_is_refused() -> None:
    with pytest.raises(ValueError, match=r"stem.*'cifar', 'maxpool'"):
        _resnet((3, 64, 64), stem="imagenet")


def test_maxpool_stem_needs_3x3_images() -> None:
    with pytest.raises(
        ValueError, match=r"encoder.stem 'maxpool' needs images of at least 3x3 pixels \(a 3x3 max-pool\), got 2x8"
    ):
        ResNetEncoder((1, 2, 8), [1], [4], stem="maxpool")
