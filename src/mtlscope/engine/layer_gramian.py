"""A Linear, Conv2d or BatchNorm layer's part of the K x K Gramian of the task gradients, from the layer's input
and the task gradients at its output, without forming the [K, parameters] block of task gradients by autograd.

For ``nn.Linear`` with inputs X [R, in] (all leading dimensions flattened into R rows) and the gradients of
task k at the output Y_k [R, out], task k's weight gradient is ``Y_kᵀ X``, so

    <g_k, g_l> = Σ_{r,s} (X Xᵀ)[r, s] (Y_k Y_lᵀ)[r, s] = <Y_k, (X Xᵀ) Y_l>,

and the bias gradient is ``Σ_r Y_k[r]`` ([K, out], formed). ``nn.Conv2d`` is the same on the unfolded input
(``conv2d_patches``: R = batch x output positions rows of in/groups x kh x kw columns), group by group.

The closed form holds the input's Gram matrix X Xᵀ [R, R], the unfolded input [R, in·kh·kw] (Conv2d) and
``(X Xᵀ) Y`` [K, R, out]; the block form holds the [K, in·out·kh·kw/groups] block. ``prefers_closed_form``
picks the smaller: the closed form wins where the rows are few against the parameters (deep convolution
stages, small batches), the block where the feature maps are large.

BatchNorm (1d/2d/3d) has only 2 x channels parameters, and its gradients have a closed form from the normalized
input x̂: ``Σ Y_k·x̂`` (weight) and ``Σ Y_k`` (bias) per channel, formed directly as [K, C] blocks. It is always
taken (except under ``block``): autograd would batch BatchNorm's backward over the K tasks one task at a time.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlscope.engine.lean_backward import BATCHNORMS, channel_products

#: How a Linear/Conv2d layer's part of the Gramian is computed: ``auto`` by ``prefers_closed_form`` (BatchNorm:
#: always the closed form), ``closed`` whenever the layer call allows it, ``block`` never by the closed form.
LayerForm = Literal["auto", "block", "closed"]
LAYER_FORMS: tuple[str, ...] = get_args(LayerForm)


def conv2d_padded(module: nn.Conv2d, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
    """``x`` as the convolution of ``module`` sees it, and the padding it adds: padded first (and no padding then)
    for a padding mode other than zeros or a padding given as a string, as ``nn.Conv2d`` does."""
    padding = module.padding
    if module.padding_mode != "zeros" or isinstance(padding, str):
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        return F.pad(x, module._reversed_padding_repeated_twice, mode=mode), (0, 0)
    assert not isinstance(padding, str)
    return x, (int(padding[0]), int(padding[1]))


def conv2d_patches(module: nn.Conv2d, x: Tensor) -> Tensor:
    """The input ``x`` [B, in, H, W] of ``module`` unfolded into its [B, in·kh·kw, L] patches (L output
    positions; any stride, padding, padding mode and dilation): ``module(x)`` is, group by group, the weight
    [out/groups, in/groups·kh·kw] times the patches of the group's input channels, plus the bias."""
    x, padding = conv2d_padded(module, x)
    return F.unfold(x, module.kernel_size, module.dilation, padding, module.stride)


def conv2d_block(module: nn.Conv2d, x: Tensor, grads: Tensor, chunk_elements: int = 2**18) -> list[Tensor] | None:
    """The block of task gradients of ``module`` for one call on ``x`` [B, in, H, W], from the task gradients
    ``grads`` [K, B, out, H', W'] at its output: one [K, p] piece per trainable parameter (weight, then bias),
    without autograd. The weight gradients of a chunk of c tasks are one weight-gradient convolution with the
    tasks stacked as c x out output channels (group by group), so a chunk costs about one backward of the layer
    with c times its output channels instead of c backwards; chunks hold at most ``chunk_elements`` output
    gradients (at least one task). ``None`` for a call this does not cover (an unbatched input)."""
    if x.dim() != 4 or grads.dim() != 5:
        return None
    weight, bias = module.weight, module.bias
    count, batch, outputs, height, width = grads.shape
    groups = module.groups
    padded, padding = conv2d_padded(module, x.to(grads.dtype))
    pieces: list[Tensor] = []
    if weight.requires_grad:
        step = max(1, chunk_elements // max(1, grads[0].numel()))
        rows = []
        for start in range(0, count, step):
            part = grads[start : start + step]
            tasks = part.shape[0]
            # [c, B, g, out/g, H', W'] -> [B, g, c, out/g, H', W']: task channels inside each group's block
            stacked = part.reshape(tasks, batch, groups, outputs // groups, height, width).permute(1, 2, 0, 3, 4, 5)
            stacked = stacked.reshape(batch, groups * tasks * (outputs // groups), height, width)
            shape = (groups * tasks * (outputs // groups), *weight.shape[1:])
            dummy = stacked.new_zeros(()).expand(shape)  # only its shape is read for the weight gradient
            computed = torch.ops.aten.convolution_backward(
                stacked,
                padded,
                dummy,
                None,
                module.stride,
                padding,
                module.dilation,
                False,
                (0, 0),
                groups,
                [False, True, False],
            )[1]
            per_task = computed.reshape(groups, tasks, outputs // groups, -1).permute(1, 0, 2, 3)
            rows.append(per_task.reshape(tasks, -1))
        pieces.append(torch.cat(rows) if len(rows) > 1 else rows[0])
    if isinstance(bias, Tensor) and bias.requires_grad:
        pieces.append(grads.sum((1, 3, 4)))
    return pieces


def has_closed_form(module: nn.Module) -> bool:
    """Whether ``module`` is a plain ``nn.Linear``, ``nn.Conv2d`` or BatchNorm (``BATCHNORMS``; not a subclass,
    which may override its forward) whose only parameters are its own ``weight`` and ``bias``."""
    if type(module) not in (nn.Linear, nn.Conv2d, *BATCHNORMS):
        return False
    return {name for name, _ in module.named_parameters()} <= {"weight", "bias"}


def prefers_closed_form(rows: int, inputs: int, outputs: int, count: int, unfolded: bool) -> bool:
    """Whether the closed form holds fewer elements than the block form for a layer of ``inputs`` x ``outputs``
    weights (over all groups) seen on ``rows`` rows, for ``count`` tasks: ``rows²`` (X Xᵀ) + ``count·rows·outputs``
    ((X Xᵀ) Y) + ``rows·inputs`` (the unfolded input of a Conv2d) against ``count·inputs·outputs`` (the block).
    Where it holds, the closed form's arithmetic is also at most about twice the block form's."""
    closed = rows * rows + count * rows * outputs + (rows * inputs if unfolded else 0)
    return closed < count * inputs * outputs


def _grouped_gramian(x: Tensor, y: Tensor) -> Tensor:
    """``Σ_g <Y_g,k, (X_g X_gᵀ) Y_g,l>`` [K, K] for ``x`` [G, R, I] and ``y`` [K, G, R, O]."""
    count = y.shape[0]
    gramian = y.new_zeros(count, count)
    for group in range(x.shape[0]):
        rows_x, rows_y = x[group], y[:, group]
        mixed = (rows_x @ rows_x.T) @ rows_y  # [K, R, O]
        gramian += mixed.reshape(count, -1) @ rows_y.reshape(count, -1).T
    return gramian


def layer_gramian(
    module: nn.Module,
    x: Tensor,
    grads: Tensor,
    form: LayerForm = "auto",
    statistics: tuple[Tensor, Tensor] | None = None,
) -> Tensor | None:
    """The [K, K] Gramian of the task gradients on the weight (and bias) of ``module`` (``has_closed_form``)
    for one call on input ``x``, from the task gradients ``grads`` [K, *output] at its output — or ``None``
    where the block form is to be used instead (``form`` ``block``, the size rule under ``auto``, or a call the
    closed form does not cover: an unbatched Conv2d input, a weight that requires no gradient). The bias counts
    where it requires gradients; the result is in the weight's dtype. ``statistics``: for a BatchNorm in training
    mode, the batch (mean, inverse standard deviation) its forward saved (``batchnorm_statistics``), if known."""
    weight = module.weight
    assert isinstance(weight, Tensor)
    if form == "block" or not weight.requires_grad:
        return None
    bias = module.bias if isinstance(module.bias, Tensor) and module.bias.requires_grad else None
    count, dtype = grads.shape[0], weight.dtype
    if isinstance(module, BATCHNORMS):
        return _batchnorm_gramian(module, x.to(dtype), grads.to(dtype), statistics)
    if isinstance(module, nn.Conv2d):
        if x.dim() != 4 or grads.dim() != 5:
            return None
        groups = module.groups
        batch, outputs, height, width = grads.shape[1:]
        positions = height * width
        rows, inputs = batch * positions, weight[0].numel() * groups
        if form == "auto" and not prefers_closed_form(rows, inputs, outputs, count, unfolded=True):
            return None
        patches = conv2d_patches(module, x.to(dtype))  # [B, in·kh·kw, L]
        if patches.shape[2] != positions:
            return None
        # rows ordered (example, position) in both: [G, R, I] and [K, G, R, O]
        unfolded = patches.reshape(batch, groups, -1, positions).permute(1, 0, 3, 2).reshape(groups, rows, -1)
        per_group = grads.to(dtype).reshape(count, batch, groups, outputs // groups, positions)
        per_group = per_group.permute(0, 2, 1, 4, 3).reshape(count, groups, rows, -1)
        del patches
        bias_grads = grads.to(dtype).sum((1, 3, 4)) if bias is not None else None
    else:
        if x.dim() < 2:
            return None
        inputs, outputs = x.shape[-1], grads.shape[-1]
        rows = x.numel() // inputs
        if form == "auto" and not prefers_closed_form(rows, inputs, outputs, count, unfolded=False):
            return None
        unfolded = x.to(dtype).reshape(1, rows, inputs)
        per_group = grads.to(dtype).reshape(count, 1, rows, outputs)
        bias_grads = per_group[:, 0].sum(1) if bias is not None else None
    gramian = _grouped_gramian(unfolded, per_group)
    if bias_grads is not None:
        gramian += bias_grads @ bias_grads.T
    return gramian


def _batchnorm_gramian(
    module: nn.Module, x: Tensor, grads: Tensor, statistics: tuple[Tensor, Tensor] | None = None
) -> Tensor | None:
    """BatchNorm's part: with x̂ the normalized input (the batch's statistics in training mode or without running
    statistics, the running ones otherwise, as the forward), task k's gradients are ``Σ Y_k·x̂`` (weight) and
    ``Σ Y_k`` (bias) per channel, [K, C] each, formed from the [K, B, C, ...] output gradients. ``statistics``:
    the batch (mean, inverse standard deviation) the forward saved, if known (then not computed again)."""
    if x.dim() < 2 or grads.dim() != x.dim() + 1:
        return None
    dims = [0, *range(2, x.dim())]
    if statistics is not None:
        mean, invstd = (t.to(x.dtype) for t in statistics)
    elif module.training or (module.running_mean is None and module.running_var is None):
        var, mean = torch.var_mean(x, dim=dims, unbiased=False)
        invstd = torch.rsqrt(var + module.eps)  # type: ignore[operator]
    else:
        assert isinstance(module.running_mean, Tensor) and isinstance(module.running_var, Tensor)
        mean = module.running_mean.to(x.dtype)
        invstd = torch.rsqrt(module.running_var.to(x.dtype) + module.eps)  # type: ignore[operator]
    shape = [1, x.shape[1]] + [1] * (x.dim() - 2)
    normalized = (x - mean.view(shape)) * invstd.view(shape)
    weight_grads = channel_products(grads, normalized, examples_dim=1)
    gramian = weight_grads @ weight_grads.T
    bias = module.bias
    if isinstance(bias, Tensor) and bias.requires_grad:
        bias_grads = grads.sum([d + 1 for d in dims])
        gramian += bias_grads @ bias_grads.T
    return gramian
