"""The CIFAR-style ResNet encoder (He et al. 2016)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlscope import settings
from mtlscope.models import ENCODERS, build_model
from mtlscope.models.resnet import BasicBlock, ResNetEncoder
from mtlscope.probes import per_example_gradients
from mtlscope.probes.per_example import Method

TINY = {"blocks": [1, 1], "widths": [4, 8]}


def _resnet(input_shape: tuple[int, ...], **options: object) -> ResNetEncoder:
    encoder = ENCODERS.build("resnet", input_shape, **options)
    assert isinstance(encoder, ResNetEncoder)
    return encoder


@pytest.mark.parametrize(
    ("input_shape", "options"),
    [
        ((1, 8, 8), TINY),
        ((3, 32, 32), TINY),
        ((1, 8, 8), {"blocks": [1, 2, 1, 1], "widths": [4, 4, 8, 8]}),  # 4 stages on 8x8 digits
        ((3, 32, 32), {"blocks": [1, 1, 1], "widths": [2, 4, 6]}),
    ],
)
def test_output_shape(input_shape: tuple[int, ...], options: dict) -> None:
    torch.manual_seed(0)
    encoder = _resnet(input_shape, **options)
    assert encoder.output_dim == options["widths"][-1]
    out = encoder(torch.randn(5, *input_shape))
    assert out.shape == (5, encoder.output_dim)
    assert torch.isfinite(out).all()


def _expected_parameter_count(in_channels: int, blocks: list[int], widths: list[int], strides: list[int]) -> int:
    """ResNet body written out: 3x3 convs without bias, BatchNorm weight+bias per channel, 1x1 projections."""

    def conv(k: int, c_in: int, c_out: int) -> int:
        return k * k * c_in * c_out

    def bn(c: int) -> int:
        return 2 * c

    total = conv(3, in_channels, widths[0]) + bn(widths[0])  # stem
    previous = widths[0]
    for depth, width, stride in zip(blocks, widths, strides, strict=True):
        for block in range(depth):
            c_in = previous if block == 0 else width
            total += conv(3, c_in, width) + bn(width) + conv(3, width, width) + bn(width)
            if block == 0 and (stride != 1 or c_in != width):
                total += conv(1, c_in, width) + bn(width)  # projection shortcut
            previous = width
    return total


def test_default_is_resnet18_parameter_count() -> None:
    encoder = _resnet((3, 32, 32))  # defaults; no forward pass (11M parameters)
    expected = _expected_parameter_count(3, [2, 2, 2, 2], [64, 128, 256, 512], [1, 2, 2, 2])
    # The standard CIFAR ResNet-18 has 11,173,962 parameters with its 10-class classifier (512 * 10 + 10).
    assert expected == 11_173_962 - (512 * 10 + 10) == 11_168_832
    assert sum(p.numel() for p in encoder.parameters()) == expected
    assert encoder.output_dim == 512
    one_channel = _resnet((1, 28, 28))
    assert sum(p.numel() for p in one_channel.parameters()) == _expected_parameter_count(
        1, [2, 2, 2, 2], [64, 128, 256, 512], [1, 2, 2, 2]
    )


def test_no_bias_in_convs_and_torchvision_initialization() -> None:
    torch.manual_seed(0)
    encoder = _resnet((3, 32, 32), blocks=[1, 1], widths=[16, 32])
    convs = [m for m in encoder.modules() if isinstance(m, nn.Conv2d)]
    norms = [m for m in encoder.modules() if isinstance(m, nn.BatchNorm2d)]
    assert convs and all(m.bias is None for m in convs)
    assert all(torch.equal(m.weight, torch.ones_like(m.weight)) for m in norms)
    assert all(torch.equal(m.bias, torch.zeros_like(m.bias)) for m in norms)
    stem = convs[0]
    assert stem.stride == (1, 1) and stem.kernel_size == (3, 3)
    assert not any(isinstance(m, nn.MaxPool2d) for m in encoder.modules())
    # kaiming_normal_(mode="fan_out", nonlinearity="relu"): std = sqrt(2 / (out_channels * k * k))
    big = next(m for m in convs if m.out_channels == 32 and m.in_channels == 32)
    expected_std = (2.0 / (32 * 9)) ** 0.5
    assert abs(big.weight.std().item() - expected_std) / expected_std < 0.1


@pytest.mark.parametrize(
    ("input_shape", "widths", "sizes"),
    [
        ((3, 32, 32), [4, 8, 8, 8], [32, 16, 8, 4]),
        ((1, 8, 8), [4, 4, 8, 8, 8], [8, 4, 2, 1, 1]),  # no stride 2 once the map is 1x1
        ((1, 5, 7), [4, 4, 4], [(5, 7), (3, 4), (2, 2)]),
    ],
)
def test_stride_two_stages_halve_the_spatial_size(
    input_shape: tuple[int, ...], widths: list[int], sizes: list[int | tuple[int, int]]
) -> None:
    torch.manual_seed(0)
    encoder = _resnet(input_shape, blocks=[1] * len(widths), widths=widths)
    shapes: list[tuple[int, ...]] = []
    hooks = [
        stage.register_forward_hook(lambda _m, _i, out: shapes.append(tuple(out.shape))) for stage in encoder.stages
    ]
    stem: list[tuple[int, ...]] = []
    hooks.append(encoder.stem.register_forward_hook(lambda _m, _i, out: stem.append(tuple(out.shape))))
    encoder(torch.randn(2, *input_shape))
    for hook in hooks:
        hook.remove()
    assert stem == [(2, widths[0], *input_shape[1:])]  # the stem keeps the resolution
    expected = [(2, w, *(s if isinstance(s, tuple) else (s, s))) for w, s in zip(widths, sizes, strict=True)]
    assert shapes == expected


def _blocks(encoder: ResNetEncoder) -> list[list[BasicBlock]]:
    stages = []
    for stage in encoder.stages.children():
        blocks = list(stage.children())
        assert all(isinstance(block, BasicBlock) for block in blocks)
        stages.append([block for block in blocks if isinstance(block, BasicBlock)])
    return stages


def test_projection_shortcut_exactly_where_width_or_stride_changes() -> None:
    # 1x4x4 input: stage strides 1, 2 (4->2), 2 (2->1), 1, 1 (1x1 maps are not strided).
    encoder = _resnet((1, 4, 4), blocks=[2, 1, 2, 1, 1], widths=[4, 4, 8, 16, 16])
    stages = _blocks(encoder)
    projections = [[block.has_projection for block in stage] for stage in stages]
    assert projections == [[False, False], [True], [True, False], [True], [False]]
    strides = [[block.conv1.stride[0] for block in stage] for stage in stages]
    assert strides == [[1, 1], [2], [2, 1], [1], [1]]
    for stage in stages:
        for block in stage:
            if block.has_projection:
                conv, norm = list(block.shortcut.children())
                assert isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d)
                assert conv.kernel_size == (1, 1) and conv.stride == block.conv1.stride and conv.bias is None
            else:
                assert isinstance(block.shortcut, nn.Identity)


def test_identity_block_adds_its_input() -> None:
    torch.manual_seed(0)
    block = BasicBlock(3, 3).eval()
    nn.init.zeros_(block.bn2.weight)  # residual branch off: out = relu(x)
    x = torch.randn(2, 3, 5, 5)
    assert torch.equal(block(x), torch.relu(x))


@pytest.mark.parametrize(
    ("input_shape", "options", "match"),
    [
        ((1, 8, 8), {"blocks": []}, r"encoder\.blocks"),
        ((1, 8, 8), {"blocks": [], "widths": []}, r"encoder\.blocks"),
        ((1, 8, 8), {"widths": [0]}, r"encoder\.widths"),
        ((1, 8, 8), {"blocks": [1, 0], "widths": [4, 8]}, r"encoder\.blocks"),
        ((1, 8, 8), {"blocks": [1], "widths": [4, 2.5]}, r"encoder\.widths"),
        ((1, 8, 8), {"blocks": [1, 1], "widths": [4, 8, 16]}, r"encoder\.blocks and encoder\.widths"),
        ((1, 8, 8), {"widths": [4, 8]}, r"encoder\.blocks and encoder\.widths"),
        ((64,), TINY, "image inputs"),
        ((8, 8), TINY, "image inputs"),
    ],
)
def test_bad_options(input_shape: tuple[int, ...], options: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ENCODERS.build("resnet", input_shape, **options)


def test_registered_with_options_and_defaults() -> None:
    assert "resnet" in ENCODERS.available()
    assert ENCODERS.entry("resnet").options() == {
        "blocks": (2, 2, 2, 2),
        "widths": (64, 128, 256, 512),
        "stem": "cifar",
    }
    with pytest.raises(ValueError, match="no option 'depth'"):
        ENCODERS.build("resnet", (1, 8, 8), depth=18)
    with pytest.raises(ValueError, match="image inputs"):
        build_model(settings.get("synthetic"), {"name": "resnet", **TINY}, {"name": "linear"}, 0)


def test_through_build_model_training_step_has_finite_gradients() -> None:
    setting = settings.get("digits-mtl")
    assert setting.input_shape == (1, 8, 8)
    model = build_model(setting, {"name": "resnet", **TINY}, {"name": "linear"}, seed=0)
    again = build_model(setting, {"name": "resnet", **TINY}, {"name": "linear"}, seed=0)
    for a, b in zip(model.parameters(), again.parameters(), strict=True):
        assert torch.equal(a, b)  # seeded initialization
    assert isinstance(model.encoder, ResNetEncoder) and model.encoder.output_dim == 8
    model.train()
    loss = torch.zeros(())
    for task in setting.tasks:
        out = model(task.train.inputs[:6], task.name)
        assert out.shape == (6, task.output_size)
        loss = loss + F.cross_entropy(out, task.train.targets[:6])
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    assert any(p.grad.abs().sum() > 0 for p in model.shared_parameters() if p.grad is not None)
    # BatchNorm running statistics were updated by the training-mode forward passes.
    norm = next(m for m in model.encoder.modules() if isinstance(m, nn.BatchNorm2d))
    assert norm.num_batches_tracked is not None and norm.num_batches_tracked.item() == len(setting.tasks)


def _loop_gradients(model: nn.Module, inputs: Tensor, targets: Tensor) -> Tensor:
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for i in range(len(inputs)):
        loss = F.cross_entropy(model(inputs[i : i + 1]), targets[i : i + 1])
        grads = torch.autograd.grad(loss, params)
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows)


@pytest.mark.parametrize("method", ["vmap", "auto"])
def test_per_example_gradients_match_a_float64_loop(method: Method) -> None:
    torch.manual_seed(0)
    predictor = nn.Sequential(_resnet((1, 8, 8), **TINY), nn.Linear(8, 3))
    with torch.no_grad():  # non-trivial BatchNorm running statistics
        for _ in range(3):
            predictor(torch.randn(16, 1, 8, 8) * 2 + 0.5)
    predictor = predictor.double().eval()
    inputs = torch.randn(7, 1, 8, 8, dtype=torch.float64)
    targets = torch.randint(0, 3, (7,))
    expected = _loop_gradients(predictor, inputs, targets)
    state = {k: v.clone() for k, v in predictor.state_dict().items()}
    got = per_example_gradients(predictor, F.cross_entropy, inputs, targets, chunk_size=4, method=method)
    assert got.shape == (7, sum(p.numel() for p in predictor.parameters()))
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)
    assert not predictor.training
    for key, value in predictor.state_dict().items():
        assert torch.equal(value, state[key]), key  # running statistics untouched in eval mode
