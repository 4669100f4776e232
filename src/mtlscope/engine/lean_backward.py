"""Backwards of BatchNorm and Conv2d that ``torch.func.vmap`` batches without large copies, for the Gramian pass.

The Gramian pass (``mtlscope.engine.gramian``) pulls K task cotangents back through the encoder at once, under
``vmap``; PyTorch's batching rules then make large copies at two layer types (docs/methods.md, "The Gramian
path"):

- BatchNorm: the rule for ``native_batch_norm_backward`` folds the K tasks into the channels, copying the input
  K times and the gradients twice — four tensors of K activations for one layer;
- Conv2d: the rule folds the K tasks into the batch, one ``convolution_backward`` over K x B examples, whose
  workspace (oneDNN's reordered copies) grows with K x B — up to three times the K-batched input gradient.

``reattach`` re-attaches such a call's output to the graph through an identity ``autograd.Function``: the same
values (the layer's own output), with the layer's backward as follows.

- Outside ``vmap`` (the step's backward of the weighted loss, or any backward that builds a graph): PyTorch's
  own backward op with what the layer's node saved (statistics, input, convolution parameters) — the layer's
  own backward, bit for bit.
- BatchNorm under ``vmap``, training mode, with x̂ = (x − mean)·invstd over the n values of a channel:
  ∂β = Σ gy, ∂γ = Σ gy·x̂, ∂x = γ·invstd·(gy − ∂β/n − x̂·∂γ/n): per-channel sums (∂γ over chunks of
  examples) and element-wise updates in place; the only new K-batched tensor is ∂x.
- Conv2d under ``vmap``: the input gradient is computed for chunks of tasks into one preallocated K-batched
  tensor (``_ConvolutionInputGradient``, whose ``vmap`` rule sees the task dimension), so the workspace is
  that of a chunk. In the Gramian engine's pass, which asks autograd for no parameter gradient (the
  engine's blocks and closed forms give those), the weight and bias gradients are not computed.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor, nn

#: The BatchNorm classes whose calls are re-attached (subclasses may override the forward: left as they are).
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
#: A Conv2d's input gradient under ``vmap`` is computed for chunks of tasks of at most this many elements of
#: output gradient (chunk x B x out x H x W; at least one task per chunk).
CONVOLUTION_CHUNK_ELEMENTS = 2**18


class PassState(Protocol):
    """What the pass a re-attached backward runs in needs: in the Gramian engine's pass only the gradients
    with respect to activations, in its block computations only those with respect to parameters."""

    @property
    def activations_needed(self) -> bool: ...

    @property
    def parameters_needed(self) -> bool: ...


class _EveryGradient:
    activations_needed = True
    parameters_needed = True


#: Outside the Gramian engine: every gradient autograd asks for.
EVERY_GRADIENT: PassState = _EveryGradient()


def channel_products(grads: Tensor, normalized: Tensor, examples_dim: int = 0, pieces: int = 8) -> Tensor:
    """``Σ grads·normalized`` over every dimension but the leading ones before ``examples_dim`` and the channel
    dimension right after it, summed over at most ``pieces`` chunks of examples so that no product of the whole
    size is formed. ``normalized`` [B, C, ...] broadcasts against ``grads`` [..., B, C, ...]."""
    batch = normalized.shape[0]
    step = max(1, -(-batch // pieces))
    dims = [examples_dim, *range(examples_dim + 2, grads.dim())]
    total: Tensor | None = None
    for start in range(0, batch, step):
        index = (slice(None),) * examples_dim + (slice(start, start + step),)
        part = (grads[index] * normalized[start : start + step]).sum(dims)
        total = part if total is None else total + part
    assert total is not None
    return total


class _BatchNormBackward(torch.autograd.Function):
    """Identity on a BatchNorm call's output values, with BatchNorm's backward (module docstring)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(
        values: Tensor,
        x: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        mean: Tensor,
        invstd: Tensor,
        eps: float,
        state: PassState,
    ) -> Tensor:
        return values.detach()

    @staticmethod
    def setup_context(ctx: Any, inputs: Any, output: Any) -> None:
        _, x, weight, _, mean, invstd, eps, state = inputs
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.eps, ctx.state = eps, state

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Any:
        x, weight, mean, invstd = ctx.saved_tensors
        want_x, want_weight, want_bias = _wanted(ctx, grad)
        if not _batched(grad):
            grad_x, grad_weight, grad_bias = torch.ops.aten.native_batch_norm_backward(
                grad, x, weight, None, None, mean, invstd, True, ctx.eps, [want_x, want_weight, want_bias]
            )
            return None, grad_x, grad_weight, grad_bias, None, None, None, None
        shape = [1, x.shape[1]] + [1] * (x.dim() - 2)
        normalized = (x - mean.view(shape)) * invstd.view(shape)
        grad_bias = grad.sum([0, *range(2, x.dim())]) if want_x or want_bias else None
        grad_weight = channel_products(grad, normalized) if want_x or want_weight else None
        grad_x = None
        if want_x:
            assert grad_weight is not None and grad_bias is not None
            count = x.numel() // x.shape[1]
            grad_x = torch.addcmul(grad, normalized, (grad_weight / count).view(shape), value=-1.0)
            grad_x.sub_((grad_bias / count).view(shape))
            grad_x.mul_((weight * invstd).view(shape))
        return (
            None,
            grad_x,
            grad_weight if want_weight else None,
            grad_bias if want_bias else None,
            None,
            None,
            None,
            None,
        )


def _batched(grad: Tensor) -> bool:
    """Whether a backward runs under ``torch.func.vmap`` (and builds no graph): then the lean formulas apply."""
    return not torch.is_grad_enabled() and torch._C._functorch.is_batchedtensor(grad)


def _in_pass(grad: Tensor) -> bool:
    """Whether a backward runs batched, by ``torch.func.vmap`` or by ``autograd.grad(is_grads_batched=True)``
    (the Gramian engine's blocks; PyTorch's legacy batching, where PyTorch's own ops run): then the pass state
    says which gradients are needed."""
    functorch = torch._C._functorch
    return not torch.is_grad_enabled() and (functorch.is_batchedtensor(grad) or functorch.is_legacy_batchedtensor(grad))


def _wanted(ctx: Any, grad: Tensor) -> tuple[bool, bool, bool]:
    """Which of (input, weight, bias) gradients to compute: those autograd may ask for (``needs_input_grad`` of
    the Function's inputs 1-3), less what the pass state says it does not need in a batched pass."""
    needs = ctx.needs_input_grad
    state: PassState = ctx.state if _in_pass(grad) else EVERY_GRADIENT
    parameters = state.parameters_needed
    return needs[1] and state.activations_needed, needs[2] and parameters, needs[3] and parameters


def reattach(module: nn.Module, x: Tensor, output: Tensor, state: PassState = EVERY_GRADIENT) -> Tensor:
    """``output`` of a call of ``module`` on ``x`` re-attached through the lean backward of its type (module
    docstring), or ``output`` itself where none applies."""
    if type(module) is nn.Conv2d:
        return _reattach_convolution(module, output, state)
    return lean_batchnorm(module, x, output, state)


def lean_batchnorm(module: nn.Module, x: Tensor, output: Tensor, state: PassState = EVERY_GRADIENT) -> Tensor:
    """``output`` of a call of ``module`` on ``x`` re-attached through ``_BatchNormBackward`` where the call is a plain
    BatchNorm in training mode with an affine weight (``output`` itself otherwise, e.g. in eval mode, where
    BatchNorm's backward couples no examples and its batching rule copies nothing large)."""
    statistics = batchnorm_statistics(module, output)
    weight, bias = module.weight, module.bias
    if statistics is None or not isinstance(weight, Tensor) or not isinstance(bias, Tensor):
        return output
    mean, invstd = statistics
    eps = output.grad_fn._saved_eps  # type: ignore[union-attr]
    return _BatchNormBackward.apply(output.detach(), x, weight, bias, mean, invstd, eps, state)


def batchnorm_statistics(module: nn.Module, output: Tensor) -> tuple[Tensor, Tensor] | None:
    """The batch mean and inverse standard deviation a plain BatchNorm call in training mode normalized with
    (saved by PyTorch's native kernel on ``output``'s node), or ``None`` for any other call."""
    node = output.grad_fn
    if (
        type(module) not in BATCHNORMS
        or node is None
        or type(node).__name__ != "NativeBatchNormBackward0"
        or not getattr(node, "_saved_training", False)
    ):
        return None
    return node._saved_result1, node._saved_result2  # type: ignore[attr-defined]


def _convolution_backward(
    grad: Tensor, x: Tensor, weight: Tensor, bias_sizes: list[int] | None, conv: tuple[Any, ...], mask: tuple[bool, ...]
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """PyTorch's ``convolution_backward`` (not transposed) for the saved ``conv`` = (stride, padding, dilation,
    output padding, groups), the gradients ``mask`` asks for."""
    stride, padding, dilation, output_padding, groups = conv
    return torch.ops.aten.convolution_backward(
        grad, x, weight, bias_sizes, stride, padding, dilation, False, output_padding, groups, list(mask)
    )


class _ConvolutionInputGradient(torch.autograd.Function):
    """A Conv2d's input gradient from its output gradient; under ``vmap`` computed chunk of tasks by chunk of
    tasks into one preallocated tensor."""

    @staticmethod
    def forward(grad: Tensor, weight: Tensor, input_shape: tuple[int, ...], conv: tuple[Any, ...]) -> Tensor:
        dummy = grad.new_zeros(()).expand(input_shape)  # only its shape is read for the input gradient
        grad_x = _convolution_backward(grad, dummy, weight, None, conv, (True, False, False))[0]
        assert grad_x is not None
        return grad_x

    @staticmethod
    def setup_context(ctx: Any, inputs: Any, output: Any) -> None:
        pass

    @staticmethod
    def vmap(info: Any, in_dims: Any, grad: Tensor, weight: Tensor, input_shape: tuple[int, ...], conv: Any) -> Any:
        if in_dims[0] is None or in_dims[1] is not None:  # a batched weight: PyTorch's own rule

            def one(g: Tensor, w: Tensor) -> Tensor:
                return _ConvolutionInputGradient.forward(g, w, input_shape, conv)

            return torch.func.vmap(one, in_dims=(in_dims[0], in_dims[1]))(grad, weight), 0
        grad = grad.movedim(in_dims[0], 0)
        count = grad.shape[0]
        step = max(1, CONVOLUTION_CHUNK_ELEMENTS // max(1, grad[0].numel()))
        if step >= count:  # one chunk: no copy into a preallocated result
            rows = grad.reshape(-1, *grad.shape[2:])
            computed = _ConvolutionInputGradient.forward(rows, weight, (rows.shape[0], *input_shape[1:]), conv)
            return computed.view(count, *input_shape), 0
        result = grad.new_empty(count, *input_shape)
        for start in range(0, count, step):
            part = grad[start : start + step]
            rows = part.reshape(-1, *part.shape[2:])
            computed = _ConvolutionInputGradient.forward(rows, weight, (rows.shape[0], *input_shape[1:]), conv)
            result[start : start + step] = computed.view(part.shape[0], *input_shape)
            del computed
        return result, 0


class _ConvolutionBackward(torch.autograd.Function):
    """Identity on a Conv2d call's output values, with the convolution's backward (module docstring)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(
        values: Tensor, x: Tensor, weight: Tensor, bias: Tensor | None, conv: tuple[Any, ...], state: PassState
    ) -> Tensor:
        return values.detach()

    @staticmethod
    def setup_context(ctx: Any, inputs: Any, output: Any) -> None:
        _, x, weight, bias, conv, state = inputs
        ctx.save_for_backward(x, weight)
        ctx.conv, ctx.state, ctx.has_bias = conv, state, bias is not None

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Any:
        x, weight = ctx.saved_tensors
        want_x, want_weight, want_bias = _wanted(ctx, grad)
        want_bias = want_bias and ctx.has_bias
        if _batched(grad) and not (want_weight or want_bias):
            grad_x = _ConvolutionInputGradient.apply(grad, weight, tuple(x.shape), ctx.conv) if want_x else None
            return None, grad_x, None, None, None, None
        bias_sizes = [weight.shape[0]] if ctx.has_bias else None
        grad_x, grad_weight, grad_bias = _convolution_backward(
            grad, x, weight, bias_sizes, ctx.conv, (want_x, want_weight, want_bias)
        )
        return None, grad_x, grad_weight, grad_bias, None, None


def _reattach_convolution(module: nn.Conv2d, output: Tensor, state: PassState) -> Tensor:
    node = output.grad_fn
    if node is None or type(node).__name__ != "ConvolutionBackward0" or node._saved_transposed:  # type: ignore[attr-defined]
        return output
    x = node._saved_input  # type: ignore[attr-defined]  # the convolution's own input (padded: padding modes)
    conv = (
        tuple(node._saved_stride),  # type: ignore[attr-defined]
        tuple(node._saved_padding),  # type: ignore[attr-defined]
        tuple(node._saved_dilation),  # type: ignore[attr-defined]
        tuple(node._saved_output_padding),  # type: ignore[attr-defined]
        int(node._saved_groups),  # type: ignore[attr-defined]
    )
    bias = module.bias if isinstance(module.bias, Tensor) else None
    return _ConvolutionBackward.apply(output.detach(), x, module.weight, bias, conv, state)
