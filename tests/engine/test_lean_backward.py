"""BatchNorm's and Conv2d's backwards re-attached for the Gramian pass: under ``vmap`` they give the gradients of
PyTorch's own batched backward (float64), outside ``vmap`` they are the layer's own backward bit for bit (and
twice differentiable); the Gramian pass never runs PyTorch's batched BatchNorm backward (which copies the input
once per task) and runs the convolutions' input gradients by chunks of tasks, with no parameter gradient."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import mtlscope.engine.lean_backward as lean_backward
from mtlscope.engine.gradients import jacobian_loop
from mtlscope.engine.gramian import GramianEngine
from mtlscope.engine.lean_backward import channel_products, lean_batchnorm, reattach

SHAPES = {
    "2d": (nn.BatchNorm2d, (6, 3, 5, 4)),
    "1d": (nn.BatchNorm1d, (7, 3)),
    "1d_sequence": (nn.BatchNorm1d, (5, 3, 6)),
    "3d": (nn.BatchNorm3d, (4, 3, 2, 3, 2)),
}


def _layer_and_call(name: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A training-mode BatchNorm away from its initial affine values, an input with a graph above it, the
    layer's own output and the re-attached one."""
    kind, shape = SHAPES[name]
    torch.manual_seed(0)
    layer = kind(shape[1]).double().train()
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.uniform_(-1.0, 1.0)
    source = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    x = torch.tanh(source) * 3.0
    output = layer(x)
    return layer, source, output, lean_batchnorm(layer, x, output)


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_batched_gradients_equal_pytorchs(name: str) -> None:
    layer, source, output, lean = _layer_and_call(name)
    assert lean is not output and torch.equal(lean, output)
    inputs = [source, layer.weight, layer.bias]
    cotangents = torch.randn(4, *output.shape, dtype=torch.float64)
    expected = torch.func.vmap(lambda v: torch.autograd.grad(output, inputs, v, retain_graph=True))(cotangents)
    got = torch.func.vmap(lambda v: torch.autograd.grad(lean, inputs, v, retain_graph=True))(cotangents)
    for a, b in zip(expected, got):
        assert torch.allclose(a, b, rtol=0, atol=1e-12)
        assert a.abs().max() > 1e-3


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_plain_backward_is_the_layers_own(name: str) -> None:
    layer, source, output, lean = _layer_and_call(name)
    inputs = [source, layer.weight, layer.bias]
    cotangent = torch.randn(*output.shape, dtype=torch.float64)
    expected = torch.autograd.grad(output, inputs, cotangent, retain_graph=True)
    got = torch.autograd.grad(lean, inputs, cotangent, retain_graph=True)
    assert all(torch.equal(a, b) for a, b in zip(expected, got))
    # twice differentiable, as the layer's own backward
    first = torch.autograd.grad((lean * cotangent).sum(), source, create_graph=True)[0]
    reference = torch.autograd.grad((output * cotangent).sum(), source, create_graph=True)[0]
    second = torch.autograd.grad(first.square().sum(), source, retain_graph=True)[0]
    assert torch.allclose(second, torch.autograd.grad(reference.square().sum(), source)[0], rtol=0, atol=1e-10)


def test_other_calls_keep_their_output() -> None:
    x = torch.randn(4, 3, 2, 2, requires_grad=True)
    evaluating = nn.BatchNorm2d(3).eval()  # running statistics: the backward couples no examples
    output = evaluating(x)
    assert lean_batchnorm(evaluating, x, output) is output

    class Custom(nn.BatchNorm2d):
        pass

    custom = Custom(3).train()
    output = custom(x)
    assert lean_batchnorm(custom, x, output) is output
    plain = nn.BatchNorm2d(3).train()
    output = plain(x) * 2.0  # not the layer's own output
    assert lean_batchnorm(plain, x, output) is output


def test_channel_products_in_chunks_equal_the_whole_product() -> None:
    torch.manual_seed(0)
    normalized = torch.randn(11, 3, 4, 5, dtype=torch.float64)
    grads = torch.randn(2, 11, 3, 4, 5, dtype=torch.float64)
    expected = (grads * normalized).sum((1, 3, 4))
    for pieces in (1, 3, 8, 20):
        assert torch.allclose(channel_products(grads, normalized, 1, pieces), expected, rtol=0, atol=1e-12)
    assert torch.allclose(channel_products(grads[0], normalized), expected[0], rtol=0, atol=1e-12)


class _BatchNormBackwards(TorchDispatchMode):
    """Counts the calls of PyTorch's BatchNorm backward."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.calls += func is torch.ops.aten.native_batch_norm_backward.default
        return func(*args, **(kwargs or {}))


def test_the_gramian_pass_runs_no_batched_batchnorm_backward() -> None:
    torch.manual_seed(0)
    encoder = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(inplace=True),
        nn.Conv2d(4, 3, 3, stride=2),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(3 * 3 * 3, 5),
        nn.BatchNorm1d(5),
    ).double()
    heads = nn.ModuleList([nn.Linear(5, 1) for _ in range(4)]).double()
    shared = list(encoder.parameters())
    engine = GramianEngine([encoder], shared)
    features = encoder(torch.randn(6, 2, 7, 7, dtype=torch.float64))
    losses = torch.stack([(head(features) ** 2).mean() + head(features).mean() for head in heads])
    jacobian = jacobian_loop(losses, shared)
    counter = _BatchNormBackwards()
    with counter:
        gramian = engine.gramian(losses, torch.eye(4, dtype=torch.float64))
    assert counter.calls == 0
    assert torch.allclose(gramian, jacobian @ jacobian.T, rtol=0, atol=1e-10)
    # the step's backward of the weighted loss is the layers' own
    with counter:
        losses.sum().backward()
    assert counter.calls == 3
    engine.remove()


CONVOLUTIONS = {
    "plain": (lambda: nn.Conv2d(3, 4, 3), (2, 3, 6, 6)),
    "stride_padding": (lambda: nn.Conv2d(3, 4, (3, 2), stride=2, padding=(1, 2)), (2, 3, 7, 6)),
    "dilation_no_bias": (lambda: nn.Conv2d(3, 4, 3, dilation=2, padding=2, bias=False), (2, 3, 7, 7)),
    "groups": (lambda: nn.Conv2d(4, 6, 3, stride=(1, 2), padding=1, groups=2), (2, 4, 5, 6)),
    "reflect": (lambda: nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"), (2, 3, 5, 5)),
}


def _convolution_call(name: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    build, shape = CONVOLUTIONS[name]
    torch.manual_seed(0)
    layer = build().double()
    source = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    x = torch.tanh(source) * 3.0
    output = layer(x)
    return layer, source, output, reattach(layer, x, output)


@pytest.mark.parametrize("chunk_elements", [1, 10**9])  # one task per chunk, and all tasks at once
@pytest.mark.parametrize("name", sorted(CONVOLUTIONS))
def test_convolution_batched_gradients_equal_pytorchs(
    name: str, chunk_elements: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lean_backward, "CONVOLUTION_CHUNK_ELEMENTS", chunk_elements)
    layer, source, output, lean = _convolution_call(name)
    assert lean is not output and torch.equal(lean, output)
    inputs = [source, *layer.parameters()]
    cotangents = torch.randn(5, *output.shape, dtype=torch.float64)
    expected = torch.func.vmap(lambda v: torch.autograd.grad(output, inputs, v, retain_graph=True))(cotangents)
    got = torch.func.vmap(lambda v: torch.autograd.grad(lean, inputs, v, retain_graph=True))(cotangents)
    for a, b in zip(expected, got):
        assert torch.allclose(a, b, rtol=0, atol=1e-12)
    # the input alone (the Gramian pass's case): the chunked path
    expected = torch.func.vmap(lambda v: torch.autograd.grad(output, source, v, retain_graph=True))(cotangents)
    got = torch.func.vmap(lambda v: torch.autograd.grad(lean, source, v, retain_graph=True))(cotangents)
    assert torch.allclose(got[0], expected[0], rtol=0, atol=1e-12) and expected[0].abs().max() > 1e-3


@pytest.mark.parametrize("name", sorted(CONVOLUTIONS))
def test_convolution_plain_backward_is_the_layers_own(name: str) -> None:
    layer, source, output, lean = _convolution_call(name)
    inputs = [source, *layer.parameters()]
    cotangent = torch.randn(*output.shape, dtype=torch.float64)
    expected = torch.autograd.grad(output, inputs, cotangent, retain_graph=True)
    got = torch.autograd.grad(lean, inputs, cotangent, retain_graph=True)
    assert all(torch.equal(a, b) for a, b in zip(expected, got))
    first = torch.autograd.grad((torch.tanh(lean) * cotangent).sum(), source, create_graph=True)[0]
    reference = torch.autograd.grad((torch.tanh(output) * cotangent).sum(), source, create_graph=True)[0]
    second = torch.autograd.grad(first.square().sum(), source, retain_graph=True)[0]
    assert torch.allclose(second, torch.autograd.grad(reference.square().sum(), source)[0], rtol=0, atol=1e-10)


class _ConvolutionBackwards(TorchDispatchMode):
    """Records the batch size and output mask of every ``convolution_backward``."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, tuple[bool, ...]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if func is torch.ops.aten.convolution_backward.default:
            self.calls.append((args[0].shape[0], tuple(args[-1])))
        return func(*args, **(kwargs or {}))


def test_the_gramian_pass_runs_convolutions_by_chunks_of_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    batch, tasks = 3, 6
    encoder = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 3, stride=2), nn.Flatten(), nn.Linear(27, 5)
    ).double()
    per_task = 3 * 3 * 3 * batch  # the second convolution's output gradient [B, 3, 3, 3], one task
    monkeypatch.setattr(lean_backward, "CONVOLUTION_CHUNK_ELEMENTS", 2 * per_task)
    heads = nn.ModuleList([nn.Linear(5, 1) for _ in range(tasks)]).double()
    shared = list(encoder.parameters())
    engine = GramianEngine([encoder], shared, layer_form="closed")  # no block: the pass alone runs convolutions
    features = encoder(torch.randn(batch, 2, 7, 7, dtype=torch.float64))
    losses = torch.stack([(head(features) ** 2).mean() + head(features).mean() for head in heads])
    jacobian = jacobian_loop(losses, shared)
    recorder = _ConvolutionBackwards()
    with recorder:
        gramian = engine.gramian(losses, torch.eye(tasks, dtype=torch.float64))
    assert torch.allclose(gramian, jacobian @ jacobian.T, rtol=0, atol=1e-10)
    # the second convolution's input gradient, 2 tasks at a time; the first one's input needs no gradient
    assert recorder.calls == [(2 * batch, (True, False, False))] * 3
    engine.remove()
