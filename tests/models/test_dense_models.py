"""Dense models: the SegNet-style encoder with conv heads, DeepLabV3's dilated ResNet with ASPP heads, weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from mtlscope.models import ENCODERS, HEADS
from mtlscope.models.deeplab import BACKBONES, Bottleneck, DilatedResNet, load_backbone_weights
from mtlscope.models.encoders import last_weight_layer
from mtlscope.settings import TaskSpec, from_arrays

TINY = {"backbone": "resnet50", "blocks": [1, 1, 1, 1], "width": 4}


def test_segnet_keeps_the_input_resolution_and_heads_give_one_map_per_task() -> None:
    encoder = ENCODERS.build("segnet", (3, 10, 14), channels=[4, 8, 16])  # odd sizes on the way down: 5x7, 2x3
    torch.manual_seed(0)
    x = torch.rand(2, 3, 10, 14)
    representation = encoder(x)
    assert representation.shape == (2, 4, 10, 14) and encoder.output_dim == 4
    assert HEADS.build("conv", 4, 7)(representation).shape == (2, 7, 10, 14)
    assert HEADS.build("conv", 4, 1, hidden=6)(representation).shape == (2, 1, 10, 14)
    assert HEADS.build("conv", 4, 3, upsample=2)(representation).shape == (2, 3, 20, 28)
    # per-pixel: changing one corner of a wide input leaves the far corner's representation unchanged (the receptive
    # field of two levels is about 10 pixels), so it is not a global feature
    encoder = ENCODERS.build("segnet", (3, 8, 40), channels=[4, 8])
    encoder.eval()
    x = torch.rand(2, 3, 8, 40)
    y = x.clone()
    y[:, :, 0, 0] += 1.0
    with torch.no_grad():
        a, b = encoder(x), encoder(y)
    assert not torch.equal(a[:, :, 0, 0], b[:, :, 0, 0])
    assert torch.equal(a[:, :, -1, -1], b[:, :, -1, -1])


def test_segnet_refuses_too_small_images() -> None:
    with pytest.raises(ValueError, match=r"pools 2 times: images need at least 4x4 pixels, got 3x8"):
        ENCODERS.build("segnet", (3, 3, 8), channels=[4, 8, 16])


def test_deeplabv3_matches_torchvisions_parameter_counts() -> None:
    """torchvision's ResNet-50 and ResNet-101 have 25,557,032 and 44,549,160 parameters with their 2048x1000 fc
    layer (2,049,000): the backbones here have the same layers without it (ResNet-101: 17 more stage-3 blocks)."""
    encoder = ENCODERS.build("deeplabv3", (3, 128, 256), backbone="resnet50")
    assert sum(p.numel() for p in encoder.parameters()) == 25_557_032 - 2_049_000
    assert encoder.output_dim == 2048
    block = sum(p.numel() for p in encoder.layer3[-1].parameters())
    assert BACKBONES["resnet101"] == (3, 4, 23, 3) and BACKBONES["resnet50"] == (3, 4, 6, 3)
    assert 25_557_032 + 17 * block == 44_549_160


@pytest.mark.parametrize(("stride", "rates"), [(8, [12, 24, 36]), (16, [6, 12, 18])])
def test_deeplabv3_output_stride_and_aspp_shapes(stride: int, rates: list[int]) -> None:
    encoder = ENCODERS.build("deeplabv3", (3, 32, 64), output_stride=stride, **{**TINY, "blocks": [1, 1, 2, 2]})
    x = torch.rand(2, 3, 32, 64)
    representation = encoder(x)
    assert representation.shape == (2, 128, 32 // stride, 64 // stride)
    head = HEADS.build("aspp", encoder.output_dim, 7, rates=rates, channels=8, upsample=stride)
    assert head(representation).shape == (2, 7, 32, 64)
    dilations = [m.dilation[0] for m in encoder.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    # torchvision's rule: the first block of a dilated stage keeps the previous dilation
    assert dilations == ([1, 1, 1, 2, 2, 4] if stride == 8 else [1, 1, 1, 1, 1, 2])
    assert isinstance(encoder, DilatedResNet)
    assert encoder.last_shared_layer() is encoder.layer4[-1].conv3
    single = DilatedResNet((3, 16, 16), [1, 1, 1, 1], width=4)  # its last block has a shortcut projection
    assert single.last_shared_layer() is single.layer4[0].conv3
    assert last_weight_layer(single) is single.layer4[0].downsample[0]  # what the default would have taken


def test_pretrained_weights_load_from_a_local_file(tmp_path: Path) -> None:
    source = ENCODERS.build("deeplabv3", (3, 16, 16), **TINY)
    with torch.no_grad():
        for parameter in source.parameters():
            parameter.normal_()
    state = {**source.state_dict(), "fc.weight": torch.zeros(10, 128), "fc.bias": torch.zeros(10)}  # skipped
    torch.save(state, tmp_path / "backbone.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "backbone.safetensors"))
    for name in ("backbone.pth", "backbone.safetensors"):
        loaded = ENCODERS.build("deeplabv3", (3, 16, 16), weights=str(tmp_path / name), **TINY)
        for key, value in source.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), key
    fresh = ENCODERS.build("deeplabv3", (3, 16, 16), **TINY)
    assert not torch.equal(fresh.conv1.weight, source.conv1.weight)


def test_relative_weights_are_under_the_data_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MTLSCOPE_DATA", str(tmp_path))
    source = ENCODERS.build("deeplabv3", (3, 16, 16), **TINY)
    (tmp_path / "weights").mkdir()
    torch.save(source.state_dict(), tmp_path / "weights" / "tiny.pth")
    loaded = ENCODERS.build("deeplabv3", (3, 16, 16), weights="weights/tiny.pth", **TINY)
    assert torch.equal(loaded.layer4[0].conv3.weight, source.layer4[0].conv3.weight)


class Payload:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("unpickled code ran",))


def test_bad_weight_files_are_one_line(tmp_path: Path) -> None:
    encoder = DilatedResNet((3, 16, 16), [1, 1, 1, 1], width=4)
    state = encoder.state_dict()
    with pytest.raises(ValueError, match=r"deeplabv3 weights: missing .*nothing.pth; .*never downloaded"):
        load_backbone_weights(encoder, tmp_path / "nothing.pth")
    cases = {
        "code.pth": {"conv1.weight": Payload()},  # refused by weights_only loading: no code runs
        "garbage.pth": b"garbage",
        "list.pth": [1, 2, 3],
        "shape.pth": {**state, "conv1.weight": torch.zeros(4, 3, 3, 3)},
        "unexpected.pth": {**state, "layer5.weight": torch.zeros(1)},
        "missing.pth": {k: v for k, v in state.items() if k != "layer2.0.bn2.running_var"},
    }
    messages = {
        "code.pth": r"not a readable state dict",
        "garbage.pth": r"not a readable state dict",
        "list.pth": r"not a readable state dict \(holds a list",
        "shape.pth": r"entry 'conv1.weight' is \[4, 3, 3, 3\], the backbone's is \[4, 3, 7, 7\]",
        "unexpected.pth": r"unexpected entry 'layer5.weight'",
        "missing.pth": r"no entry 'layer2.0.bn2.running_var' \(1 missing in all\)",
    }
    for name, content in cases.items():
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            torch.save(content, path)
        with pytest.raises(ValueError, match=messages[name]) as error:
            load_backbone_weights(encoder, path)
        assert "\n" not in str(error.value) and str(path) in str(error.value)
    (tmp_path / "bad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    with pytest.raises(ValueError, match=r"bad.safetensors: not a readable state dict"):
        load_backbone_weights(encoder, tmp_path / "bad.safetensors")


def test_bottleneck_is_torchvisions_v1_5_block() -> None:
    block = Bottleneck(8, 2, stride=2, downsample=nn.Sequential(nn.Conv2d(8, 8, 1, stride=2, bias=False)))
    assert block.conv1.stride == (1, 1) and block.conv2.stride == (2, 2)  # the stride on the 3x3 convolution
    assert [name for name, _ in block.named_children()] == [
        "conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "relu", "downsample"
    ]  # fmt: skip


def test_dense_heads_train_with_the_dense_losses() -> None:
    """A tiny DeepLabV3 multi-task model fits one batch: the losses of both tasks go down."""
    from mtlscope.models import build_model

    rng = np.random.default_rng(0)
    x = rng.random((4, 3, 16, 16)).astype(np.float32)
    labels = rng.integers(-1, 3, size=(4, 16, 16))
    depth = rng.random((4, 1, 16, 16)).astype(np.float32)
    splits = {split: (x, {"seg": labels, "depth": depth}) for split in ("train", "val", "test")}
    setting = from_arrays(
        "tiny-dense",
        [
            TaskSpec("seg", 3, loss={"name": "cross_entropy", "ignore_index": -1}, metrics=["miou"]),
            TaskSpec("depth", 1, loss={"name": "l1", "invalid": 0.0}, metrics=["depth_abs_error"]),
        ],
        splits,
        layout="shared-input",
    )
    model = build_model(
        setting,
        {"name": "deeplabv3", "blocks": [1, 1, 1, 1], "width": 4},
        {"name": "aspp", "channels": 8, "dropout": 0.0, "rates": [1, 2, 3]},  # small rates for the 2x2 map
        seed=0,
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    inputs = torch.from_numpy(x)
    targets = {"seg": torch.from_numpy(labels), "depth": torch.from_numpy(depth)}

    def losses() -> dict[str, torch.Tensor]:
        outputs = model.forward_all(inputs)
        return {name: setting.task(name).loss(outputs[name], targets[name]) for name in targets}

    before = {name: float(value.detach()) for name, value in losses().items()}
    for _ in range(5):
        optimizer.zero_grad()
        sum(losses().values()).backward()  # type: ignore[union-attr]
        optimizer.step()
    after = {name: float(value.detach()) for name, value in losses().items()}
    assert all(after[name] < before[name] for name in targets), (before, after)
