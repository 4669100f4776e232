"""Per-task gradients: the K x P Jacobian on the shared parameters and its relatives (docs/methods.md,
"Per-task gradients").

Jacobian modes (``training.jacobian_mode``):

- ``per_task`` (multi-input layout only): every task's examples go through the encoder in their own
  graph, and each task's gradient is one backward of that graph. Task k's loss depends only on its own
  sub-batch, so the K backwards together cost the arithmetic of one backward of the summed loss — the
  physical floor.
- ``batched``: one graph for the whole batch; the K vector-Jacobian products run as one batched backward
  (``torch.autograd.grad(..., is_grads_batched=True)``, vmap over the cotangents), in chunks of
  ``jacobian_chunk`` tasks for large K. In the multi-input layout this costs about K backwards.
- ``loop``: one graph, K backwards with ``retain_graph`` (the fallback when vmap cannot handle a model).
- ``auto`` (default): ``per_task`` for multi-input, ``batched`` for shared-input (falling back to
  ``loop`` if the batched backward raises). See docs/methods.md for the measurements behind the choice.

On one graph (every mode but ``per_task``) the shared Jacobian is computed in two stages, as TorchJD's
``mtl_backward`` does: the K gradients at the representation come from ONE backward of the summed losses
through the heads (each head reads its own view of the representation, so each task's gradient arrives
separately: ``representation_gradients``), then one batched vector-Jacobian product carries them through
the encoder (``encoder_jacobian``; K backwards in ``loop`` mode). MGDA-UB's representation gradients are
the first stage alone; GradNorm's last-layer gradients are the second stage restricted to that layer's
parameters (autograd then crosses only that layer and the ones after it).

In ``per_task`` mode each task's examples pass through the encoder alone, so BatchNorm layers see
per-task batch statistics in the methods that need the Jacobian (the loss-weighting path encodes the
concatenated batch once).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor, nn

from mtlscope.engine.sampling import Batch
from mtlscope.models.encoders import Encoder, last_weight_layer
from mtlscope.models.multitask import MultiTaskModel
from mtlscope.settings.setting import Setting

JacobianMode = Literal["auto", "per_task", "batched", "loop"]
JACOBIAN_MODES: tuple[str, ...] = get_args(JacobianMode)


@dataclass
class Forward:
    """One encoder pass over a batch: the [K] task losses, the representation, and the view of it that each
    head reads (a separate graph node per task, so one backward gives every task's gradient at the
    representation)."""

    losses: Tensor
    representation: Tensor
    head_inputs: list[Tensor]
    rows: list[slice]


def forward(model: MultiTaskModel, setting: Setting, batch: Batch) -> Forward:
    """Task losses on ``batch`` from one encoder pass (graph attached)."""
    representation = model.encoder(batch.inputs)
    rows = [batch.rows[task.name] for task in setting.tasks]
    head_inputs = [representation[row] for row in rows]
    losses = torch.stack(
        [
            task.loss(model.heads[task.name](inputs), batch.targets[task.name])
            for task, inputs in zip(setting.tasks, head_inputs)
        ]
    )
    return Forward(losses, representation, head_inputs, rows)


def task_losses(model: MultiTaskModel, setting: Setting, batch: Batch) -> tuple[Tensor, Tensor]:
    """The [K] task losses on ``batch`` from one encoder pass, and the representation (graph attached)."""
    result = forward(model, setting, batch)
    return result.losses, result.representation


def representation_gradients(result: Forward) -> Tensor:
    """[K, *representation.shape]: each task's loss gradient at the representation (zero outside the rows
    its head reads), from ONE backward of the summed losses through the heads (graph kept)."""
    grads = torch.autograd.grad(result.losses.sum(), result.head_inputs, retain_graph=True)
    out = result.representation.new_zeros(len(grads), *result.representation.shape)
    for k, (grad, row) in enumerate(zip(grads, result.rows)):
        out[k, row] = grad
    return out


def _flat(grads: Sequence[Tensor | None], like: Sequence[Tensor]) -> Tensor:
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, like)])


def jacobian_loop(losses: Tensor, inputs: Sequence[Tensor]) -> Tensor:
    """[K, P] gradients of each loss on ``inputs`` by K backwards of one graph (graph kept)."""
    return torch.stack(
        [_flat(torch.autograd.grad(loss, inputs, retain_graph=True, allow_unused=True), inputs) for loss in losses]
    )


def jacobian_batched(losses: Tensor, inputs: Sequence[Tensor], chunk: int | None = None) -> Tensor:
    """[K, P] gradients of each loss on ``inputs`` by batched backwards over chunks of tasks (graph kept)."""
    num_tasks = losses.shape[0]
    size = num_tasks if chunk is None else max(1, chunk)
    rows = []
    for start in range(0, num_tasks, size):
        stop = min(num_tasks, start + size)
        cotangents = torch.zeros(stop - start, num_tasks, dtype=losses.dtype, device=losses.device)
        cotangents[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
        grads = torch.autograd.grad(
            losses, inputs, grad_outputs=cotangents, retain_graph=True, is_grads_batched=True, allow_unused=True
        )
        rows.append(
            torch.cat(
                [
                    (
                        g if g is not None else torch.zeros(stop - start, *p.shape, dtype=p.dtype, device=p.device)
                    ).reshape(stop - start, -1)
                    for g, p in zip(grads, inputs)
                ],
                dim=1,
            )
        )
    return torch.cat(rows)


def encoder_jacobian(
    representation: Tensor, cotangents: Tensor, inputs: Sequence[Tensor], mode: str, chunk: int | None = None
) -> Tensor:
    """[K, P] vector-Jacobian products of the representation with K cotangents [K, *representation.shape]
    on ``inputs`` (the encoder's parameters): one batched backward through the encoder (chunks of ``chunk``),
    or K backwards in ``loop`` mode (graph kept)."""
    num = cotangents.shape[0]
    if mode == "loop":
        return torch.stack(
            [
                _flat(torch.autograd.grad(representation, inputs, c, retain_graph=True, allow_unused=True), inputs)
                for c in cotangents
            ]
        )
    size = num if chunk is None else max(1, chunk)
    blocks = []
    for start in range(0, num, size):
        part = cotangents[start : start + size]
        grads = torch.autograd.grad(
            representation, inputs, grad_outputs=part, retain_graph=True, is_grads_batched=True, allow_unused=True
        )
        blocks.append(
            torch.cat(
                [
                    (g if g is not None else torch.zeros(len(part), *p.shape, dtype=p.dtype, device=p.device)).reshape(
                        len(part), -1
                    )
                    for g, p in zip(grads, inputs)
                ],
                dim=1,
            )
        )
    return torch.cat(blocks)


def joint_jacobian(losses: Tensor, inputs: Sequence[Tensor], mode: str, chunk: int | None = None) -> Tensor:
    """[K, P] Jacobian from one graph in ``mode`` (``batched`` falls back to ``loop`` if vmap fails)."""
    if mode == "loop":
        return jacobian_loop(losses, inputs)
    try:
        return jacobian_batched(losses, inputs, chunk)
    except RuntimeError:
        return jacobian_loop(losses, inputs)


@dataclass
class PerTaskGradients:
    """Everything the ``per_task`` mode computes: detached losses, the shared Jacobian, each head's own
    gradient, and (when asked) the Jacobian on the last shared layer."""

    losses: Tensor
    jacobian: Tensor
    head_grads: list[list[Tensor]]
    last_shared_jacobian: Tensor | None


def per_task_gradients(
    model: MultiTaskModel, setting: Setting, batch: Batch, last_shared: Sequence[nn.Parameter] | None = None
) -> PerTaskGradients:
    """Task-by-task forward and backward (multi-input layout; see the module docstring)."""
    shared = list(model.shared_parameters())
    losses, rows, heads, last_rows = [], [], [], []
    for task in setting.tasks:
        index = batch.rows[task.name]
        head = list(model.task_parameters(task.name))
        loss = task.loss(model(batch.inputs[index], task.name), batch.targets[task.name])
        wanted = shared + head + (list(last_shared) if last_shared is not None else [])
        grads = torch.autograd.grad(loss, wanted, allow_unused=True)
        losses.append(loss.detach())
        rows.append(_flat(grads[: len(shared)], shared))
        heads.append(
            [
                g if g is not None else torch.zeros_like(p)
                for g, p in zip(grads[len(shared) : len(shared) + len(head)], head)
            ]
        )
        if last_shared is not None:
            last_rows.append(_flat(grads[len(shared) + len(head) :], list(last_shared)))
    return PerTaskGradients(
        losses=torch.stack(losses),
        jacobian=torch.stack(rows),
        head_grads=heads,
        last_shared_jacobian=torch.stack(last_rows) if last_shared is not None else None,
    )


def last_shared_parameters(model: MultiTaskModel) -> list[nn.Parameter]:
    """Parameters of the last shared layer of weights (GradNorm's W): the encoder's ``last_shared_layer()``
    (for an encoder that is not an ``Encoder``, its last Linear/Conv, ``last_weight_layer``)."""
    encoder = model.encoder
    layer = encoder.last_shared_layer() if isinstance(encoder, Encoder) else last_weight_layer(encoder)
    parameters = list(layer.parameters())
    if not parameters:
        raise ValueError(f"the encoder's last shared layer {type(layer).__name__} has no parameters")
    return parameters


def resolve_mode(mode: str, setting: Setting) -> str:
    if mode not in JACOBIAN_MODES:
        raise ValueError(f"training.jacobian_mode must be one of {', '.join(JACOBIAN_MODES)}, got {mode!r}")
    if mode == "auto":
        return "per_task" if setting.layout == "multi-input" else "batched"
    if mode == "per_task" and setting.layout != "multi-input":
        raise ValueError("training.jacobian_mode 'per_task' needs the multi-input layout")
    return mode


def shared_jacobian(
    model: MultiTaskModel, setting: Setting, batch: Batch, mode: str = "auto", chunk: int | None = None
) -> tuple[Tensor, Tensor]:
    """The detached [K] task losses on ``batch`` and the [K, P] Jacobian on the shared parameters, computed
    in ``mode`` (as the training step does) without writing any ``.grad`` — what probes use."""
    mode = resolve_mode(mode, setting)
    if mode == "per_task":
        computed = per_task_gradients(model, setting, batch)
        return computed.losses, computed.jacobian
    graph = forward(model, setting, batch)
    shared = list(model.shared_parameters())
    cotangents = representation_gradients(graph)
    try:
        jacobian = encoder_jacobian(graph.representation, cotangents, shared, mode, chunk)
    except RuntimeError:
        if mode == "loop":
            raise
        jacobian = encoder_jacobian(graph.representation, cotangents, shared, "loop", chunk)
    return graph.losses.detach(), jacobian
