"""Gradient similarity to the uniform multi-task gradient (Mueller et al., TMLR 2025, eq. 6).

For task k and a training batch b (B examples per task), the cosine between task k's gradient on the shared
parameters and the UMTG ``grad_MT(b) = (1/C) sum_j grad L_j^b`` (the scale C does not change a cosine):

    sim_k = mean over N batches of cos(grad_theta L_k^b, grad_MT(b)),

with N = 200 batches drawn from the probe's own generator (not the training stream). For K = 2 the cosine
has the closed form ``(|g1|^2 + g1.g2) / (|g1| |g1 + g2|)``. Low or negative similarity means the task's
gradient conflicts with the direction the shared parameters actually move in. Multi-task runs only.

- ``grad_similarity(jacobian)`` is the pure function on a [K, P] matrix of task gradients;
  ``task_gradients(losses, parameters)`` computes that matrix for any model (one backward per task);
- the ``grad_similarity`` probe records ``grad_similarity`` per task at checkpoints, with the model in eval
  mode (``probe_mode``; the caller's mode is restored).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from mtlscope.engine.gradients import JacobianMode, shared_jacobian
from mtlscope.engine.probe_budget import jacobian_units
from mtlscope.engine.sampling import random_batch
from mtlscope.options import PositiveInt
from mtlscope.probes.base import PROBES, Probe, ProbeContext, ProbeValues, probe_mode
from mtlscope.settings.setting import Setting


def task_gradients(
    losses: Sequence[Tensor] | Mapping[str, Tensor] | Tensor, parameters: nn.Module | Iterable[Tensor]
) -> Tensor:
    """The [K, P] matrix of task gradients: row k is the gradient of ``losses[k]`` (a scalar with its graph) with
    respect to ``parameters`` (a module's parameters, or tensors requiring grad), flattened in their order; a
    parameter a loss does not reach contributes zeros. One backward per task; the graph is kept, ``.grad`` is
    not written."""
    if isinstance(losses, Mapping):
        items = list(losses.values())
    elif isinstance(losses, Tensor):
        items = list(losses.reshape(-1)) if losses.dim() <= 1 else [losses]
    else:
        items = list(losses)
    if not items:
        raise ValueError("losses is empty: give one scalar loss per task")
    for k, loss in enumerate(items):
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            got = f"shape {list(loss.shape)}" if isinstance(loss, Tensor) else type(loss).__name__
            raise ValueError(f"loss {k} must be a scalar tensor (the task's mean loss), got {got}")
        if not loss.requires_grad:
            raise ValueError(f"loss {k} has no autograd graph: compute it from the parameters, outside torch.no_grad()")
    if isinstance(parameters, Tensor):
        raise ValueError("parameters must be a module or an iterable of tensors, not one tensor")
    params = list(parameters.parameters()) if isinstance(parameters, nn.Module) else list(parameters)
    if not params or any(not isinstance(p, Tensor) or not p.requires_grad for p in params):
        raise ValueError("parameters must be a non-empty collection of tensors that require grad")
    rows = []
    for loss in items:
        grads = torch.autograd.grad(loss.reshape(()), params, retain_graph=True, allow_unused=True)
        rows.append(torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params)]))
    return torch.stack(rows)


def grad_similarity(jacobian: Tensor, weights: Tensor | None = None) -> Tensor:
    """[K] cosine of each row of ``jacobian`` [K, P] with the combined gradient ``weights @ jacobian``
    (the UMTG direction for uniform weights, the default). NaN for a zero task gradient or a zero sum.
    For any model: ``grad_similarity(task_gradients(losses, shared_parameters))``."""
    if not isinstance(jacobian, Tensor) or jacobian.dim() != 2:
        got = list(jacobian.shape) if isinstance(jacobian, Tensor) else type(jacobian).__name__
        raise ValueError(f"jacobian must be a [K, P] tensor of task gradients (see task_gradients), got {got}")
    if weights is not None and (not isinstance(weights, Tensor) or weights.shape != (len(jacobian),)):
        got = list(weights.shape) if isinstance(weights, Tensor) else type(weights).__name__
        raise ValueError(f"weights must be a [K] tensor with K = {len(jacobian)} (one per task), got {got}")
    combined = (torch.ones(len(jacobian)) if weights is None else weights).to(jacobian) @ jacobian
    norms = jacobian.norm(dim=1) * combined.norm()
    cosines = (jacobian @ combined) / norms
    return torch.where(norms > 0, cosines, torch.full_like(cosines, math.nan))


class GradSimilarityProbe(Probe):
    """``grad_similarity`` of every task at checkpoints: the mean over ``batches`` random training batches."""

    name = "grad_similarity"
    default_every = 10

    def __init__(self, batches: int, batch_size: int | None, jacobian_mode: str) -> None:
        if batches < 1 or (batch_size is not None and batch_size < 1):
            raise ValueError(
                f"grad_similarity: batches and batch_size must be >= 1, got batches={batches}, batch_size={batch_size}"
            )
        self.batches, self.batch_size, self.jacobian_mode = batches, batch_size, jacobian_mode

    def __call__(self, context: ProbeContext) -> ProbeValues:
        names = context.setting.task_names
        if len(names) < 2:
            return {}
        batch_size = self.batch_size or context.batch_size
        totals = torch.zeros(len(names), dtype=torch.float64)
        counts = torch.zeros(len(names), dtype=torch.float64)
        with probe_mode(context.model):
            for _ in range(self.batches):
                batch = random_batch(context.setting, batch_size, context.generator)
                _, jacobian = shared_jacobian(context.model, context.setting, batch, self.jacobian_mode)
                cosines = grad_similarity(jacobian.detach()).double().cpu()
                finite = torch.isfinite(cosines)
                totals += torch.where(finite, cosines, torch.zeros_like(cosines))
                counts += finite.double()
        means = torch.where(counts > 0, totals / counts.clamp_min(1), torch.full_like(totals, math.nan))
        return {name: {"grad_similarity": float(value)} for name, value in zip(names, means)}

    def cost(self, setting: Setting, batch_size: int) -> float:
        """The task gradients of ``batches`` batches (none for a single task)."""
        if len(setting.tasks) < 2:
            return 0.0
        return self.batches * jacobian_units(setting, self.batch_size or batch_size)


@PROBES.register("grad_similarity", "cosine of each task gradient with the UMTG, mean over random batches (eq. 6)")
def build_probe(
    *, batches: PositiveInt = 200, batch_size: PositiveInt | None = None, jacobian_mode: JacobianMode = "auto"
) -> Probe:
    return GradSimilarityProbe(batches, batch_size, jacobian_mode)
