"""Per-example squared gradient norms without per-example gradients (as BackPACK's ``BatchL2Grad``).

``per_example_squared_norms`` returns ``||grad_theta loss_fn(model(x_n[None]), y_n[None])||^2`` for every example
n (float64, ``[N]``) — the row norms of ``per_example_gradients`` — from one forward and one backward pass per chunk
of examples. The backward is that of the *sum* of the per-example losses (the loss is applied to each example as a
single-example batch, ``torch.func.vmap`` over the loss only), so the gradient a layer's output receives is, row by
row, the gradient of that example's own loss; with the layer's input ``x`` it gives the per-example gradients of
the layer's parameters, of which only the squared norms are formed:

- ``nn.Linear`` on ``[B, in]`` inputs: ``||g_n||^2 ||x_n||^2`` (weight) and ``||g_n||^2`` (bias). On inputs
  ``[B, T..., in]`` the per-example weight gradient is ``sum_t g_t x_t^T``: its squared norm is either formed
  from the ``[B, out, in]`` per-example gradients or by the Gram form ``sum_{t,t'} (g_t.g_t') (x_t.x_t')``,
  whichever costs fewer operations;
- ``nn.Conv2d`` (any stride, padding, padding mode, dilation, groups): the input is unfolded into its ``[B,
  in/groups*kh*kw, L]`` patches and the same two forms apply over the ``L`` output positions, per group;
- ``nn.BatchNorm1d/2d/3d`` in eval mode with running statistics (the probes' mode): ``sum_positions g * x_hat``
  (weight) and ``sum_positions g`` (bias), ``x_hat`` normalized with the running statistics;
- ``nn.Embedding`` (integer indices of any shape ``[B, ...]``, ``padding_idx`` honoured; not with ``max_norm``,
  ``scale_grad_by_freq`` or sparse gradients): the output gradients of each example's lookups summed per distinct
  index, and the squared norms of those row sums added.

Every other selected parameter (LayerNorm, user modules, a parameter owned by several modules, a
layer called more than once per forward, a layer input modified in place) gets its per-example gradients from
``iter_per_example_gradients`` (torch.func ``vmap``, looped fallback), and their squared norms are added: the
result is correct for any model whose output for one example does not depend on the other examples of the
batch. A model holding a BatchNorm that normalizes with batch statistics (training mode, or no running
statistics) couples the examples: it goes wholly through per-example gradients. As a safeguard against a layer
parameter also used outside its layer's forward (e.g. ``F.linear(x, self.fc.weight)`` in a parent module), the
sum over the examples of the per-example gradients a layer accounts for is compared with autograd's gradient of
the summed loss; a layer that disagrees (beyond rounding) goes through per-example gradients too.

Cost: one forward and one backward of a chunk plus, per layer, about the arithmetic of its weight gradient (the
per-example gradients of a layer are materialized in sub-batches of at most ``CHUNK_MEMORY_BYTES``, then squared
and summed), against several times that for ``vmap`` over convolutions (docs/probes.md, "Cost").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap
from torch.nn.modules.batchnorm import _BatchNorm

from mtlscope.engine.layer_gramian import conv2d_patches
from mtlscope.probes.per_example import (
    CHUNK_MEMORY_BYTES,
    LossFn,
    check_examples,
    check_model,
    iter_per_example_gradients,
    loss_function,
    probe_mode,
    selected_parameters,
)

#: ``auto``: per-layer norms, per-example gradients for the other parameters; ``vmap``/``loop``: per-example
#: gradients of every parameter by that method (as ``per_example_gradients(method=...)``).
NormMethod = Literal["auto", "vmap", "loop"]
NORM_METHODS: tuple[str, ...] = ("auto", "vmap", "loop")
#: Examples per forward/backward of the layer path (its memory is that of a training step of this batch size).
NORM_CHUNK = 64
LAYER_TYPES = (nn.Linear, nn.Conv2d, _BatchNorm)

__all__ = [
    "NORM_CHUNK",
    "NORM_METHODS",
    "NormMethod",
    "iter_per_example_squared_norms",
    "per_example_squared_norms",
    "uses_batch_statistics",
]


def uses_batch_statistics(model: nn.Module) -> bool:
    """Whether a BatchNorm of ``model`` normalizes with the batch's statistics (training mode or no running
    statistics): then the examples of a batch interact and per-example losses cannot be summed in one pass."""
    return any(
        isinstance(m, _BatchNorm) and (m.training or m.running_mean is None or m.running_var is None)
        for m in model.modules()
    )


def _per_example_losses(loss_fn: LossFn, outputs: Tensor, targets: Tensor) -> Tensor:
    """``[loss_fn(outputs[n:n+1], targets[n:n+1]) for n]`` as a ``[B]`` tensor (vmap over the loss, else a loop)."""

    def single(output: Tensor, target: Tensor) -> Tensor:
        return loss_fn(output.unsqueeze(0), target.unsqueeze(0))

    try:
        losses: Tensor = vmap(single)(outputs, targets)
        return losses
    except Exception:  # a loss vmap cannot run (data-dependent control flow, .item(), ...)
        return torch.stack([single(outputs[n], targets[n]) for n in range(len(outputs))])


def _sub_batches(batch: int, bytes_per_example: int) -> Iterator[slice]:
    """Slices of ``range(batch)`` holding at most ``CHUNK_MEMORY_BYTES`` of per-example tensors each."""
    step = max(1, CHUNK_MEMORY_BYTES // max(bytes_per_example, 1))
    for start in range(0, batch, step):
        yield slice(start, min(batch, start + step))


def _sum_of_products_norms(g: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """For ``g`` ``[B, G, O, L]`` and ``x`` ``[B, G, I, L]``: the squared norms ``[B]`` (float64) of the per-example
    matrices ``M_n = (g_n x_n^T)`` (``[G, O, I]``: sum over the ``L`` positions) and ``sum_n M_n`` (``[G, O, I]``),
    by materializing ``M_n`` in sub-batches or by the Gram form, whichever costs fewer operations."""
    batch, groups, outs, positions = g.shape
    ins = x.shape[2]
    norms = torch.empty(batch, dtype=torch.float64, device=g.device)
    total = g.new_zeros(groups, outs, ins)
    if positions * positions * (outs + ins) < positions * outs * ins:  # Gram form: sum_{l,l'} (g_l.g_l')(x_l.x_l')
        for part in _sub_batches(batch, groups * positions * positions * g.element_size() * 3):
            gram_g = torch.einsum("bgol,bgom->bglm", g[part], g[part])
            gram_x = torch.einsum("bgil,bgim->bglm", x[part], x[part])
            norms[part] = (gram_g * gram_x).flatten(1).sum(1, dtype=torch.float64)
        total = torch.einsum("bgol,bgil->goi", g, x)
        return norms, total
    for part in _sub_batches(batch, groups * outs * ins * g.element_size() * 3):
        per_example = torch.einsum("bgol,bgil->bgoi", g[part], x[part])
        norms[part] = per_example.flatten(1).double().pow(2).sum(1)
        total += per_example.sum(0)
    return norms, total


def _linear(module: nn.Linear, x: Tensor, g: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
    batch = len(x)
    x3, g3 = x.reshape(batch, -1, x.shape[-1]), g.reshape(batch, -1, g.shape[-1])
    out: dict[str, tuple[Tensor, Tensor]] = {}
    if x3.shape[1] == 1:  # one position: ||g x^T||^2 = |g|^2 |x|^2
        g2, x2 = g3[:, 0], x3[:, 0]
        norms = g2.double().pow(2).sum(1) * x2.double().pow(2).sum(1)
        out["weight"] = (norms, g2.T @ x2)
    else:
        norms, total = _sum_of_products_norms(g3.transpose(1, 2).unsqueeze(1), x3.transpose(1, 2).unsqueeze(1))
        out["weight"] = (norms, total[0])
    if module.bias is not None:
        per_example = g3.sum(1)
        out["bias"] = (per_example.double().pow(2).sum(1), per_example.sum(0))
    return out


def _conv2d(module: nn.Conv2d, x: Tensor, g: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
    if x.dim() != 4 or g.dim() != 4:
        raise _Unsupported("Conv2d on an unbatched input")
    patches = conv2d_patches(module, x)  # [B, in*kh*kw, L]
    batch, groups = len(x), module.groups
    positions = g.shape[2] * g.shape[3]
    if patches.shape[2] != positions:
        raise _Unsupported("Conv2d output positions do not match the unfolded input")
    g4 = g.reshape(batch, groups, -1, positions)
    norms, total = _sum_of_products_norms(g4, patches.reshape(batch, groups, -1, positions))
    out = {"weight": (norms, total.reshape(module.weight.shape))}
    if module.bias is not None:
        per_example = g.sum((2, 3))
        out["bias"] = (per_example.double().pow(2).sum(1), per_example.sum(0))
    return out


def _batch_norm(module: _BatchNorm, x: Tensor, g: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
    if module.running_mean is None or module.running_var is None or module.training or x.dim() < 2:
        raise _Unsupported("BatchNorm with batch statistics")
    shape = (1, -1) + (1,) * (x.dim() - 2)
    x_hat = (x - module.running_mean.view(shape)) / torch.sqrt(module.running_var.view(shape) + module.eps)
    reduce = tuple(range(2, x.dim()))
    out: dict[str, tuple[Tensor, Tensor]] = {}
    if module.weight is not None:
        per_example = (g * x_hat).sum(reduce) if reduce else g * x_hat
        out["weight"] = (per_example.double().pow(2).sum(1), per_example.sum(0))
    if module.bias is not None:
        per_example = g.sum(reduce) if reduce else g
        out["bias"] = (per_example.double().pow(2).sum(1), per_example.sum(0))
    return out


def _embedding(module: nn.Embedding, x: Tensor, g: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
    """Example n's weight gradient has, in row i, the sum of the output gradients of n's lookups of index i:
    its squared norm is the sum over n's distinct indices of the squared norms of those sums."""
    if module.max_norm is not None or module.scale_grad_by_freq or module.sparse:
        raise _Unsupported("Embedding with max_norm, scale_grad_by_freq or sparse gradients")
    if x.dim() < 1 or x.dtype not in (torch.int32, torch.int64):
        raise _Unsupported("Embedding on an unbatched or non-integer input")
    batch, rows = len(x), module.num_embeddings
    indices = x.reshape(batch, -1).long()
    grads = g.reshape(batch, indices.shape[1], -1)
    if module.padding_idx is not None:  # the padding row receives no gradient
        grads = grads.masked_fill((indices == module.padding_idx).unsqueeze(-1), 0.0)
    flat_indices, flat_grads = indices.reshape(-1), grads.reshape(-1, grads.shape[-1])
    examples = torch.arange(batch, device=x.device).repeat_interleave(indices.shape[1])
    keys, inverse = torch.unique(examples * rows + flat_indices, return_inverse=True)
    per_row = flat_grads.new_zeros(len(keys), flat_grads.shape[1]).index_add_(0, inverse, flat_grads)
    norms = torch.zeros(batch, dtype=torch.float64, device=x.device)
    norms.index_add_(0, keys // rows, per_row.double().pow(2).sum(1))
    total = torch.zeros_like(module.weight).index_add_(0, flat_indices, flat_grads.to(module.weight.dtype))
    return {"weight": (norms, total)}


class _Unsupported(Exception):
    """A layer call the layer formulas do not cover (its parameters go through per-example gradients)."""


_FORMULAS: dict[type, Callable[..., dict[str, tuple[Tensor, Tensor]]]] = {
    nn.Linear: _linear,
    nn.Conv2d: _conv2d,
    nn.Embedding: _embedding,
}


def _formula(module: nn.Module) -> Callable[..., dict[str, tuple[Tensor, Tensor]]] | None:
    if type(module) in _FORMULAS:
        return _FORMULAS[type(module)]
    if isinstance(module, _BatchNorm) and type(module).forward is _BatchNorm.forward:
        return _batch_norm
    return None  # subclasses of Linear/Conv2d may override forward: not covered


@dataclass
class _Layer:
    """A module whose selected parameters (``local name -> leaf name``) the layer formulas cover."""

    module: nn.Module
    formula: Callable[..., dict[str, tuple[Tensor, Tensor]]]
    parameters: dict[str, str]
    calls: int = 0
    failed: bool = False
    results: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict)


def _plan(model: nn.Module, chosen: Sequence[tuple[str, Tensor]]) -> tuple[list[_Layer], list[str]]:
    """The layers covered by formulas and the names of the other chosen parameters (per-example gradients)."""
    owners: dict[int, list[tuple[nn.Module, str]]] = {}
    for module in model.modules(remove_duplicate=False):
        for local, owned in module.named_parameters(recurse=False, remove_duplicate=False):
            entry = (module, local)
            if entry not in owners.setdefault(id(owned), []):
                owners[id(owned)].append(entry)
    layers: dict[int, _Layer] = {}
    rest: list[str] = []
    for name, parameter in chosen:
        held = owners.get(id(parameter), [])
        formula = _formula(held[0][0]) if len(held) == 1 else None
        if formula is None or held[0][1] not in ("weight", "bias"):
            rest.append(name)
            continue
        module, local = held[0]
        layer = layers.setdefault(id(module), _Layer(module, formula, {}))
        layer.parameters[local] = name
    return list(layers.values()), rest


def _layer_chunk(
    model: nn.Module,
    loss_fn: LossFn,
    chosen: Sequence[tuple[str, Tensor]],
    layers: list[_Layer],
    inputs: Tensor,
    targets: Tensor,
) -> tuple[Tensor, list[str]]:
    """Squared norms ``[B]`` of the per-example gradients of the layers' parameters, and the names of the
    parameters the formulas could not account for on this chunk."""
    names = {name for layer in layers for name in layer.parameters.values()}
    leaves = {name: p.detach().requires_grad_(True) for name, p in chosen if name in names}
    handles = []

    def forward_hook(layer: _Layer) -> Callable[[nn.Module, tuple[Tensor, ...], Tensor], None]:
        def hook(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
            layer.calls += 1
            if layer.calls > 1 or not args or not isinstance(args[0], Tensor) or not isinstance(output, Tensor):
                layer.failed = True
                return
            x, version = args[0], args[0]._version
            if x.dim() < 1 or len(x) != len(inputs) or not output.requires_grad:
                layer.failed = True
                return

            def on_gradient(g: Tensor) -> None:
                if layer.failed or layer.calls != 1 or x._version != version:
                    layer.failed = True
                    return
                try:
                    with torch.no_grad():
                        layer.results = layer.formula(module, x.detach(), g.detach())
                except _Unsupported:
                    layer.failed = True

            output.register_hook(on_gradient)

        return hook

    for layer in layers:
        layer.calls, layer.failed, layer.results = 0, False, {}
        handles.append(layer.module.register_forward_hook(forward_hook(layer)))
    try:
        with torch.enable_grad():
            outputs = functional_call(model, leaves, (inputs,))
            total = _per_example_losses(loss_fn, outputs, targets).sum()
            gradients = torch.autograd.grad(total, list(leaves.values()), allow_unused=True)
    finally:
        for handle in handles:
            handle.remove()
    reference: dict[str, Tensor | None] = dict(zip(leaves, gradients))
    norms = torch.zeros(len(inputs), dtype=torch.float64, device=inputs.device)
    rest: list[str] = []
    for layer in layers:
        if all(reference[name] is None for name in layer.parameters.values()) and not layer.results:
            continue  # the loss does not depend on these parameters: zero gradients
        covered = not layer.failed and all(local in layer.results for local in layer.parameters)
        if not covered or not _agrees(layer, reference):
            rest.extend(layer.parameters.values())
            continue
        for local in layer.parameters:
            norms += layer.results[local][0]
    for layer in layers:
        layer.results = {}
    return norms, rest


def _agrees(layer: _Layer, reference: dict[str, Tensor | None]) -> bool:
    """Whether the summed per-example gradients the formulas account for are autograd's gradients (up to
    rounding): otherwise the parameter is also used outside its layer's forward."""
    for local, name in layer.parameters.items():
        norms, total = layer.results[local]
        expected = reference[name]
        if expected is None:
            return False
        scale = math.sqrt(norms.sum().item() * len(norms)) + expected.double().norm().item()
        if (total.double() - expected.double()).norm().item() > 1e-4 * scale:
            return False
    return True


def iter_per_example_squared_norms(
    model: nn.Module,
    loss_fn: LossFn,
    inputs: Tensor,
    targets: Tensor,
    *,
    parameters: Iterable[Tensor] | None = None,
    chunk_size: int | None = None,
    method: NormMethod = "auto",
) -> Iterator[Tensor]:
    """Per-example squared gradient norms chunk by chunk (``[<= chunk_size]`` float64 each).

    ``method="auto"``: per-layer formulas (module docstring) on chunks of ``chunk_size`` examples (default
    ``NORM_CHUNK``), per-example gradients for the other parameters; ``"vmap"``/``"loop"``: the row norms of
    per-example gradients of every parameter by that method (``iter_per_example_gradients``, where
    ``chunk_size`` is its chunk). The caller is responsible for eval mode (``probe_mode``).
    """
    if method not in NORM_METHODS:
        raise ValueError(f"method must be one of {', '.join(NORM_METHODS)}, got {method!r}")
    if len(inputs) != len(targets):
        raise ValueError(f"{len(inputs)} inputs but {len(targets)} targets")
    chosen = selected_parameters(model, parameters)
    if method != "auto" or uses_batch_statistics(model):
        gradient_method = "auto" if method == "auto" else method
        for chunk in iter_per_example_gradients(
            model,
            loss_fn,
            inputs,
            targets,
            parameters=[p for _, p in chosen],
            chunk_size=chunk_size,
            method=gradient_method,
        ):
            yield chunk.double().pow(2).sum(1)
        return
    size = NORM_CHUNK if chunk_size is None else chunk_size
    if size < 1:
        raise ValueError("chunk_size must be positive")
    layers, rest = _plan(model, chosen)
    by_name = dict(chosen)
    for start in range(0, len(inputs), size):
        x, y = inputs[start : start + size], targets[start : start + size]
        norms = torch.zeros(len(x), dtype=torch.float64, device=x.device)
        others = list(rest)
        if layers:
            layer_norms, failed = _layer_chunk(model, loss_fn, chosen, layers, x, y)
            norms += layer_norms
            others += failed
        if others:
            for offset, chunk in _offsets(
                iter_per_example_gradients(model, loss_fn, x, y, parameters=[by_name[n] for n in others])
            ):
                norms[offset : offset + len(chunk)] += chunk.double().pow(2).sum(1)
        yield norms


def _offsets(chunks: Iterable[Tensor]) -> Iterator[tuple[int, Tensor]]:
    offset = 0
    for chunk in chunks:
        yield offset, chunk
        offset += len(chunk)


def per_example_squared_norms(
    model: nn.Module,
    loss_fn: LossFn,
    inputs: Tensor,
    targets: Tensor,
    *,
    parameters: Iterable[Tensor] | None = None,
    chunk_size: int | None = None,
    method: NormMethod = "auto",
) -> Tensor:
    """``||grad loss_fn(model(x_n[None]), y_n[None])||^2`` for every example n, as an ``[N]`` float64 tensor.

    The squared row norms of ``per_example_gradients(model, loss_fn, inputs, targets, parameters=...)``, without
    forming them for Linear, Conv2d and eval-mode BatchNorm layers (module docstring; ``method`` chooses the path).
    The model runs in eval mode and is left exactly as it was (modes, parameters, buffers, ``.grad``).
    """
    check_model(model)
    check_examples(inputs, targets)
    loss_fn = loss_function(loss_fn, "loss_fn")
    with probe_mode(model):
        chunks = list(
            iter_per_example_squared_norms(
                model, loss_fn, inputs, targets, parameters=parameters, chunk_size=chunk_size, method=method
            )
        )
    return torch.cat(chunks)
