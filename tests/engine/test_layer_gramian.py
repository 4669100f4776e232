"""The closed form of a Linear/Conv2d layer's part of the task-gradient Gramian equals the explicit block
computation (float64), and the Gramian engine takes it or the block by the size rule, exactly either way."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mtlscope.engine.gramian as gramian_module
from mtlscope.engine.gradients import jacobian_loop
from mtlscope.engine.gramian import GramianEngine, _Call
from mtlscope.engine.layer_gramian import conv2d_block, conv2d_patches, layer_gramian, prefers_closed_form

LAYERS = {
    "linear": (lambda: nn.Linear(7, 5), (6, 7)),
    "linear_no_bias": (lambda: nn.Linear(7, 5, bias=False), (6, 7)),
    "linear_3d": (lambda: nn.Linear(7, 5), (3, 4, 7)),  # rows over every leading dimension
    "conv": (lambda: nn.Conv2d(3, 4, 3), (2, 3, 6, 6)),
    "conv_stride_padding": (lambda: nn.Conv2d(3, 4, (3, 2), stride=2, padding=(1, 2)), (2, 3, 7, 6)),
    "conv_dilation_no_bias": (lambda: nn.Conv2d(3, 4, 3, dilation=2, padding=2, bias=False), (2, 3, 7, 7)),
    "conv_groups": (lambda: nn.Conv2d(4, 6, 3, stride=(1, 2), padding=1, groups=2), (2, 4, 5, 6)),
    "conv_depthwise": (lambda: nn.Conv2d(3, 6, 3, groups=3, padding="same"), (2, 3, 5, 5)),
    "conv_reflect": (lambda: nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"), (2, 3, 5, 5)),
    "batchnorm2d": (lambda: _affine(nn.BatchNorm2d(3)), (4, 3, 5, 5)),
    "batchnorm1d": (lambda: _affine(nn.BatchNorm1d(3)), (5, 3)),
    "batchnorm1d_sequence": (lambda: _affine(nn.BatchNorm1d(3)), (4, 3, 6)),
    "batchnorm3d": (lambda: _affine(nn.BatchNorm3d(2)), (3, 2, 3, 4, 2)),
    "batchnorm2d_running_statistics": (lambda: _affine(nn.BatchNorm2d(3), running=True), (4, 3, 5, 5)),
    "batchnorm2d_no_running_statistics": (lambda: _affine(nn.BatchNorm2d(3, track_running_stats=False)), (4, 3, 5, 5)),
}


def _affine(layer: nn.Module, running: bool = False) -> nn.Module:
    """A BatchNorm layer with a weight and bias away from their initial values; with ``running``, in eval mode on
    running statistics away from theirs (the closed form must take the statistics the forward took)."""
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.uniform_(-1.0, 1.0)
        if running:
            layer.running_mean.uniform_(-1.0, 1.0)
            layer.running_var.uniform_(0.5, 2.0)
    return layer.eval() if running else layer.train()


def _block(layer: nn.Module, x: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """The explicit [K, p] block of task gradients (one backward per task)."""
    output = layer(x)
    rows = []
    for task_grad in grads:
        pieces = torch.autograd.grad(output, list(layer.parameters()), task_grad, retain_graph=True)
        rows.append(torch.cat([p.flatten() for p in pieces]))
    return torch.stack(rows)


def _layer_call(name: str, tasks: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """Layer ``name`` of ``LAYERS`` in float64, an input and ``tasks`` random gradients at its output."""
    build, shape = LAYERS[name]
    torch.manual_seed(0)
    layer = build().double()
    x = torch.randn(*shape, dtype=torch.float64)
    with torch.no_grad():
        output_shape = layer(x).shape
    return layer, x, torch.randn(tasks, *output_shape, dtype=torch.float64)


def _block_gramian(layer: nn.Module, x: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    block = _block(layer, x, grads)
    return block @ block.T


@pytest.mark.parametrize("chunk_elements", [1, 10**9])  # one task per weight-gradient convolution, or all
@pytest.mark.parametrize("name", sorted(name for name in LAYERS if name.startswith("conv")))
def test_conv2d_block_equals_the_explicit_block(name: str, chunk_elements: int) -> None:
    layer, x, grads = _layer_call(name, 5)
    pieces = conv2d_block(layer, x, grads, chunk_elements)
    assert pieces is not None and len(pieces) == len(list(layer.parameters()))
    assert torch.allclose(torch.cat(pieces, dim=1), _block(layer, x, grads), rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_closed_form_equals_the_block(name: str) -> None:
    layer, x, grads = _layer_call(name, 4)
    expected = _block_gramian(layer, x, grads)
    closed = layer_gramian(layer, x, grads, "closed")
    assert closed is not None
    assert torch.allclose(closed, expected, rtol=0, atol=1e-10)
    assert expected.abs().max() > 1e-2
    assert layer_gramian(layer, x, grads, "block") is None


def test_conv2d_patches_reproduce_the_convolution() -> None:
    torch.manual_seed(0)
    layer = nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=1, dilation=(1, 2), groups=2).double()
    x = torch.randn(2, 4, 7, 8, dtype=torch.float64)
    patches = conv2d_patches(layer, x)  # [B, in*kh*kw, L]
    output = layer(x)
    weight = layer.weight.reshape(2, 3, -1)  # [groups, out/groups, in/groups*kh*kw]
    per_group = patches.reshape(2, 2, -1, patches.shape[2])
    rebuilt = torch.einsum("goi,bgil->bgol", weight, per_group).reshape(output.shape) + layer.bias.view(1, -1, 1, 1)
    assert torch.allclose(rebuilt, output, rtol=0, atol=1e-12)


def test_the_size_rule() -> None:
    # ResNet-18 at full width, B = 8, K = 10: a stage-4 convolution (4 x 4 maps, 512 -> 512 channels) has
    # 128 rows against 4,608 inputs: the closed form; a stage-1 convolution (32 x 32 maps, 64 channels) the block
    assert prefers_closed_form(8 * 16, 512 * 9, 512, 10, unfolded=True)
    assert not prefers_closed_form(8 * 1024, 64 * 9, 64, 10, unfolded=True)
    # a Linear on a small batch takes the closed form, on a large one the block
    assert prefers_closed_form(32, 512, 512, 10, unfolded=False)
    assert not prefers_closed_form(4096, 512, 512, 10, unfolded=False)
    torch.manual_seed(0)
    small, large = nn.Linear(64, 64).double(), nn.Linear(4, 4).double()
    for layer, batch, expected in ((small, 2, True), (large, 64, False)):
        x = torch.randn(batch, layer.in_features, dtype=torch.float64)
        grads = torch.randn(3, batch, layer.out_features, dtype=torch.float64)
        assert (layer_gramian(layer, x, grads, "auto") is not None) == expected


class _Counting:
    """Wraps ``layer_gramian`` to count the layers whose part came from the closed form."""

    def __init__(self) -> None:
        self.closed = 0

    def __call__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        result = layer_gramian(*args, **kwargs)
        self.closed += result is not None
        return result


def _encoder() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, stride=2, dilation=2, padding=2, groups=2, bias=False),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 6),
        nn.Tanh(),
        nn.Linear(6, 6),
    )


@pytest.mark.parametrize(("form", "closed_layers"), [("closed", 5), ("block", 0), ("auto", 3)])  # BatchNorm: always
@pytest.mark.parametrize("chunk", [None, 2])
def test_engine_gramian_by_either_form_equals_the_jacobians(
    form: str, closed_layers: int, chunk: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    counting = _Counting()
    monkeypatch.setattr(gramian_module, "layer_gramian", counting)
    torch.manual_seed(0)
    encoder = _encoder().double().train()
    heads = nn.ModuleList([nn.Linear(6, 1) for _ in range(5)]).double()
    shared = list(encoder.parameters())
    engine = GramianEngine([encoder], shared, layer_form=form)  # type: ignore[arg-type]
    x = torch.randn(3, 2, 8, 8, dtype=torch.float64)
    features = encoder(x)
    losses = torch.stack([(head(features) ** 2).mean() + head(features).mean() for head in heads])
    jacobian = jacobian_loop(losses, shared)
    gramian = engine.gramian(losses, torch.eye(5, dtype=torch.float64), chunk)
    assert torch.allclose(gramian, jacobian @ jacobian.T, rtol=0, atol=1e-10)
    passes = 1 if chunk is None else 3  # pairs of chunks of 2 among 5 tasks
    assert counting.closed == closed_layers * passes
    engine.remove()


def test_an_earlier_forward_hook_on_the_layer_keeps_the_block(monkeypatch: pytest.MonkeyPatch) -> None:
    # the tap then sees a changed output: the closed form (which assumes the layer's own output) is not used
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 6)).double()
    encoder[0].register_forward_hook(lambda module, args, output: 2.0 * output)
    heads = nn.ModuleList([nn.Linear(6, 1) for _ in range(3)]).double()
    shared = list(encoder.parameters())
    engine = GramianEngine([encoder], shared, layer_form="closed")
    counting = _Counting()
    monkeypatch.setattr(gramian_module, "layer_gramian", counting)
    features = encoder(torch.randn(4, 5, dtype=torch.float64))
    losses = torch.stack([(head(features) ** 2).mean() for head in heads])
    jacobian = jacobian_loop(losses, shared)
    gramian = engine.gramian(losses, torch.eye(3, dtype=torch.float64))
    assert torch.allclose(gramian, jacobian @ jacobian.T, rtol=0, atol=1e-10)
    assert counting.closed == 1  # the second Linear only


def test_an_input_modified_in_place_is_not_used() -> None:
    x = torch.randn(3, 4)
    call = _Call([x], x)
    assert call.unchanged_input() is x
    x.mul_(2.0)
    assert call.unchanged_input() is None


def test_bad_layer_form_is_a_one_line_error() -> None:
    encoder = nn.Linear(3, 3)
    with pytest.raises(ValueError, match="layer_form must be one of auto, block, closed, got 'sometimes'"):
        GramianEngine([encoder], list(encoder.parameters()), layer_form="sometimes")  # type: ignore[arg-type]


def test_the_pass_takes_batchnorms_saved_statistics() -> None:
    # BatchNorm's closed form normalizes with the statistics its forward saved: none are computed again
    from torch.utils._python_dispatch import TorchDispatchMode

    class Reductions(TorchDispatchMode):
        calls = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            Reductions.calls += func in (torch.ops.aten.var_mean.correction, torch.ops.aten.var_mean.dim)
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    encoder = _encoder().double().train()
    heads = nn.ModuleList([nn.Linear(6, 1) for _ in range(3)]).double()
    shared = list(encoder.parameters())
    engine = GramianEngine([encoder], shared)
    features = encoder(torch.randn(3, 2, 8, 8, dtype=torch.float64))
    losses = torch.stack([(head(features) ** 2).mean() for head in heads])
    jacobian = jacobian_loop(losses, shared)
    with Reductions():
        gramian = engine.gramian(losses, torch.eye(3, dtype=torch.float64))
    assert Reductions.calls == 0
    assert torch.allclose(gramian, jacobian @ jacobian.T, rtol=0, atol=1e-10)
    engine.remove()
