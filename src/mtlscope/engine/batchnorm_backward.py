"""BatchNorm's backward in a form that ``torch.func.vmap`` batches without copies, for the Gramian pass.

The Gramian pass (``mtlscope.engine.gramian``) pulls K task cotangents back through the encoder at once, under
``vmap``. PyTorch's batching rule for ``native_batch_norm_backward`` with batched output gradients folds the K
tasks into the channels: it copies the input K times and the gradients twice, four tensors of K activations
for one BatchNorm layer — on a ResNet-18 at 32x32 the largest tensors of the whole pass (docs/methods.md,
"The Gramian path").

``lean_batchnorm`` re-attaches a training-mode BatchNorm call's output to the graph through
``_BatchNormBackward``: the same values (the layer's own output), and as backward

- outside ``vmap`` (the step's backward of the weighted loss, or any backward with ``create_graph``):
  ``native_batch_norm_backward`` with the statistics the layer saved, exactly the layer's own backward;
- under ``vmap`` (the Gramian pass), with x̂ = (x − mean)·invstd over the n values of a channel,
  ∂β = Σ gy, ∂γ = Σ gy·x̂, ∂x = γ·invstd·(gy − ∂β/n − x̂·∂γ/n): sums per channel and element-wise
  updates in place, so the only new K-batched tensor is ∂x (∂γ is summed over chunks of examples).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

#: The BatchNorm classes whose calls are re-attached (subclasses may override the forward: left as they are).
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


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
        values: Tensor, x: Tensor, weight: Tensor, bias: Tensor | None, mean: Tensor, invstd: Tensor, eps: float
    ) -> Tensor:
        return values.detach()

    @staticmethod
    def setup_context(ctx: Any, inputs: Any, output: Any) -> None:
        _, x, weight, _, mean, invstd, eps = inputs
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.eps = eps

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Any:
        x, weight, mean, invstd = ctx.saved_tensors
        needs = ctx.needs_input_grad
        if torch.is_grad_enabled() or not torch._C._functorch.is_batchedtensor(grad):
            grad_x, grad_weight, grad_bias = torch.ops.aten.native_batch_norm_backward(
                grad, x, weight, None, None, mean, invstd, True, ctx.eps, [needs[1], needs[2], needs[3]]
            )
            return None, grad_x, grad_weight, grad_bias, None, None, None
        shape = [1, x.shape[1]] + [1] * (x.dim() - 2)
        normalized = (x - mean.view(shape)) * invstd.view(shape)
        dims = [0, *range(2, x.dim())]
        grad_bias = grad.sum(dims)
        grad_weight = channel_products(grad, normalized)
        grad_x = None
        if needs[1]:
            count = x.numel() // x.shape[1]
            grad_x = torch.addcmul(grad, normalized, (grad_weight / count).view(shape), value=-1.0)
            grad_x.sub_((grad_bias / count).view(shape))
            grad_x.mul_((weight * invstd).view(shape))
        return (
            None,
            grad_x,
            grad_weight if needs[2] else None,
            grad_bias if needs[3] else None,
            None,
            None,
            None,
        )


def lean_batchnorm(module: nn.Module, x: Tensor, output: Tensor) -> Tensor:
    """``output`` of a call of ``module`` on ``x`` re-attached through ``_BatchNormBackward`` where the call is a plain
    BatchNorm in training mode with an affine weight (``output`` itself otherwise, e.g. in eval mode, where
    BatchNorm's backward couples no examples and its batching rule copies nothing large)."""
    node = output.grad_fn
    if (
        type(module) not in BATCHNORMS
        or node is None
        or type(node).__name__ != "NativeBatchNormBackward0"
        or not getattr(node, "_saved_training", False)
    ):
        return output
    weight, bias = module.weight, module.bias
    if not isinstance(weight, Tensor) or not isinstance(bias, Tensor):
        return output
    mean, invstd, eps = node._saved_result1, node._saved_result2, node._saved_eps  # type: ignore[attr-defined]
    return _BatchNormBackward.apply(output.detach(), x, weight, bias, mean, invstd, eps)
