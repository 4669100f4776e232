"""Trace of the Fisher information matrix (Mueller et al., TMLR 2025, eq. 5/8; Novack et al., 2023).

Labels are sampled from the model, ``yhat ~ p_theta(.|x)`` (no grad, eval mode, one draw per example from
``generator``), from the distribution the task's loss declares (``mtlscope.losses``, ``Loss.fisher``):
``categorical`` (``softmax(f(x))`` over dim 1, cross-entropy), ``bernoulli`` (``sigmoid(f(x))``, binary
cross-entropy) or ``gaussian`` (``N(f(x), 1)``, unit variance, MSE), and

- ``fim_trace = mean over consecutive minibatches b (|b| = batch_size = 16) of ||grad_theta mean_{x in b}
  l(f(x), yhat)||^2`` — the minibatch form the paper and Novack et al. use;
- ``fim_trace_per_example = mean_x ||grad_theta l(f(x), yhat_x)||^2`` (per-example squared gradient norms,
  ``mtlscope.probes.per_example_norms``), a one-draw Monte-Carlo estimate of ``mean_x Tr F(x)``.

Because the score of the model's own distribution has zero mean (``E_yhat grad l(f(x), yhat) = 0``), the
per-example gradients of different examples are uncorrelated given the inputs and
``E ||g_b||^2 = mean_{x in b} Tr F(x) / |b|`` exactly: ``fim_trace ≈ fim_trace_per_example / batch_size``.
The trace is of the loss's gradients: for MSE, which is twice the unit-variance Gaussian negative
log-likelihood, it is 4 Tr F.

Positions the loss leaves out of the true targets are left out of the sampled ones (``Loss.mask_sampled``):
with a per-pixel cross-entropy, pixels whose target is ``ignore_index`` get ``ignore_index`` instead of a draw,
so the trace covers the pixels the training loss covers (when ``targets`` are given, as the probe gives them).

Where the loss declares no distribution (``empirical``: L1, cosine, plain functions) or with ``empirical=True``,
the true targets are used (empirical Fisher). The result says which labels were used (``labels``:
``categorical``, ``bernoulli``, ``gaussian`` or ``empirical``); the probe records ``fim_empirical`` (1 for the
true targets) and the run's summary the labels each task's loss declares. The empirical version has no
relation to the per-example trace (its mean gradient is the full gradient, not 0).

Minibatches are consecutive (inputs in the given order); an incomplete last minibatch is dropped so every term
has the same ``|b|`` (when N < batch_size the single batch of all N is used). Loss: ``loss=`` (a ``Loss``
component or its spec), else by ``kind``: cross-entropy over dim 1 (categorical; dense ``[N, C, ...]`` outputs
work) for classification, ``F.mse_loss`` with the empirical Fisher for regression; ``loss_fn=`` replaces the
function (the labels stay those of ``loss`` or ``kind``).

Cost: one forward pass without grad to sample labels, N/|b| forward+backward passes for the minibatch trace and
the N per-example squared norms: with ``per_example_method="auto"`` (default) one forward+backward over the N
examples plus the per-layer norms of Linear, Conv2d and eval-mode BatchNorm layers (other parameters:
per-example gradients), about 1.6-1.8x a batched forward+backward; with ``"vmap"`` per-example gradients of every
parameter (torch.func, the path before the layer formulas), several times that on convolutions.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from mtlscope.engine.probe_budget import FORWARD
from mtlscope.losses import FisherLabels, Loss, LossLike, cross_entropy, from_function, mse
from mtlscope.losses import sample_targets as _sample_targets
from mtlscope.options import PositiveInt
from mtlscope.probes.base import PROBES, Probe, ProbeContext, probe_mode
from mtlscope.probes.per_example import (
    LossFn,
    batch_gradient,
    check_examples,
    check_model,
    loss_function,
    selected_parameters,
)
from mtlscope.probes.per_example_norms import NormMethod, iter_per_example_squared_norms
from mtlscope.probes.predictor import DEFAULT_SUBSET, ParameterChoice, TaskProbe, TaskView
from mtlscope.settings.setting import Setting

Kind = Literal["classification", "regression"]

__all__ = ["FisherProbe", "FisherResult", "expected_per_example_trace", "fim_trace", "sample_labels"]


@dataclass(frozen=True)
class FisherResult:
    """``fim_trace`` (minibatch form), ``fim_trace_per_example``, whether the empirical Fisher was used and which
    labels (``categorical``, ``bernoulli``, ``gaussian``: sampled from the model; ``empirical``: the targets)."""

    fim_trace: float
    fim_trace_per_example: float
    empirical: bool
    labels: FisherLabels = "categorical"


def _default_generator(generator: torch.Generator | None) -> torch.Generator:
    """The probe's generator; ``None`` means a fresh CPU generator seeded with 0 (never the global RNG)."""
    return torch.Generator().manual_seed(0) if generator is None else generator


def sample_labels(logits: Tensor, generator: torch.Generator) -> Tensor:
    """One label per example (per position for dense outputs) drawn from ``softmax(logits, dim=1)``."""
    if logits.dim() < 2:
        raise ValueError("classification outputs must have a class dimension (dim 1)")
    return _sample_targets("categorical", logits, generator)


def _resolve(kind: Kind | None, loss: LossLike | None) -> Loss:
    if loss is not None:
        component = loss_function(loss, "loss").function
        return component if isinstance(component, Loss) else from_function(component)
    if kind is None or kind == "classification":
        return cross_entropy()
    if kind == "regression":
        return mse(fisher="empirical")
    raise ValueError(f"kind must be 'classification' or 'regression', not {kind!r}")


def fim_trace(
    model: nn.Module,
    inputs: Tensor,
    *,
    targets: Tensor | None = None,
    batch_size: int = 16,
    loss: LossLike | None = None,
    kind: Kind | None = None,
    empirical: bool = False,
    parameters: Iterable[Tensor] | None = None,
    generator: torch.Generator | None = None,
    loss_fn: LossFn | None = None,
    chunk_size: int | None = None,
    per_example: bool = True,
    per_example_method: NormMethod = "auto",
) -> FisherResult:
    """Fisher-information trace of ``model`` on ``inputs`` (Mueller et al. 2025, eq. 5), see the module docstring.

    ``loss``: the task's loss (a ``Loss`` or its spec): the function and, by its ``fisher`` declaration, how labels
    are drawn; without it ``kind`` decides (module docstring). ``targets`` are required for the empirical Fisher
    (a loss declared ``empirical``, regression, or ``empirical=True``). ``parameters``
    chooses which parameters count (default: all requiring grad). Labels are drawn from ``generator`` (default:
    a fresh generator seeded with 0). ``per_example=False`` skips the per-example trace (NaN in the result):
    per-example gradients are the costly part for large models (see docs/probes.md, "Cost").
    ``per_example_method`` chooses how the per-example squared norms are computed (``per_example_norms``):
    ``"auto"`` (per-layer formulas, per-example gradients for the other parameters) or ``"vmap"``/``"loop"``
    (per-example gradients of every parameter); the values agree up to rounding. ``chunk_size``: examples per
    pass (``"auto"``: ``NORM_CHUNK``, 64; otherwise the per-example gradients' chunk). The model is left exactly
    as it was.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be positive")
    check_model(model)
    check_examples(inputs, targets, need_targets=False)
    component = _resolve(kind, loss)
    use_empirical = empirical or component.fisher == "empirical"
    function: LossFn = loss_function(loss_fn if loss_fn is not None else component, "loss_fn")
    chosen = selected_parameters(model, parameters)
    params = [p for _, p in chosen]
    with probe_mode(model):
        if use_empirical:
            if targets is None:
                raise ValueError(
                    f"the empirical Fisher ({component.name} loss declared empirical, or empirical=True) needs the "
                    "true targets"
                )
            labels = targets
        else:
            with torch.no_grad():
                labels = component.sample_targets(model(inputs), _default_generator(generator))
            if targets is not None:  # positions the loss leaves out (ignore_index) stay out
                labels = component.mask_sampled(labels, targets)
        per_example_total = 0.0 if per_example else math.nan
        if per_example:
            for norms in iter_per_example_squared_norms(
                model, function, inputs, labels, parameters=params, chunk_size=chunk_size, method=per_example_method
            ):
                per_example_total += norms.sum().item()
        size = min(batch_size, len(inputs))
        starts = range(0, len(inputs) - size + 1, size)
        minibatch = sum(
            batch_gradient(model, function, inputs[s : s + size], labels[s : s + size], chosen)
            .double()
            .pow(2)
            .sum()
            .item()
            for s in starts
        )
    return FisherResult(
        fim_trace=minibatch / len(starts),
        fim_trace_per_example=per_example_total / len(inputs),
        empirical=use_empirical,
        labels="empirical" if use_empirical else component.fisher,
    )


def expected_per_example_trace(
    model: nn.Module,
    inputs: Tensor,
    *,
    parameters: Iterable[Tensor] | None = None,
    loss_fn: LossFn | None = None,
    chunk_size: int | None = None,
    per_example_method: NormMethod = "auto",
) -> float:
    """``mean_x E_{yhat ~ p(.|x)} ||grad l(f(x), yhat)||^2 = mean_x Tr F(x)``, exactly, by enumerating the labels.

    For classifiers with ``[N, C]`` outputs; costs C per-example gradient passes. This is the expectation that
    ``fim_trace_per_example`` estimates (and ``batch_size * fim_trace`` in expectation). ``per_example_method``
    and ``chunk_size`` as in ``fim_trace``.
    """
    loss: LossFn = loss_fn if loss_fn is not None else cross_entropy()
    params = [p for _, p in selected_parameters(model, parameters)]
    with probe_mode(model):
        with torch.no_grad():
            logits = model(inputs)
        if logits.dim() != 2:
            raise ValueError("expected_per_example_trace needs [N, C] outputs")
        probs = torch.softmax(logits.double(), dim=1)
        total = torch.zeros(len(inputs), dtype=torch.float64, device=logits.device)
        for k in range(logits.shape[1]):
            labels = torch.full((len(inputs),), k, dtype=torch.long, device=logits.device)
            norms = torch.cat(
                list(
                    iter_per_example_squared_norms(
                        model, loss, inputs, labels, parameters=params, chunk_size=chunk_size, method=per_example_method
                    )
                )
            )
            total += probs[:, k] * norms
    return total.mean().item()


#: The per-example pass in forward+backward units per example, for the schedule's cost estimate: the layer
#: formulas measured 1.7-2.0x a batched forward+backward, per-example gradients (vmap, loop) 4.8-5.7x
#: (docs/probes.md, "The papers' runs").
PER_EXAMPLE_COST: dict[str, float] = {"auto": 2.0, "vmap": 5.0, "loop": 5.0}


class FisherProbe(TaskProbe):
    """``fim_trace`` of every task's predictor on its probe subset, at each checkpoint (Mueller et al. 2025, eq. 5).
    Labels come from the distribution the task's loss declares (``Loss.fisher``). Records ``fim_trace``,
    ``fim_trace_per_example`` and ``fim_empirical`` (1 when the empirical Fisher was used: the loss declares no
    distribution, or ``empirical: true``). ``per_example_method`` chooses how ``fim_trace_per_example`` is computed
    (``fim_trace``)."""

    name = "fim_trace"
    default_every = 10

    def __init__(
        self,
        batch_size: int,
        subset: int,
        parameters: str,
        empirical: bool,
        per_example: bool,
        per_example_method: NormMethod = "auto",
    ) -> None:
        super().__init__(subset, parameters)
        self.batch_size, self.empirical, self.per_example = batch_size, empirical, per_example
        self.per_example_method: NormMethod = per_example_method

    def measure(self, view: TaskView, context: ProbeContext) -> dict[str, float]:
        result = fim_trace(
            view.predictor,
            view.data.inputs,
            targets=view.data.targets,
            batch_size=self.batch_size,
            loss=view.task.loss,
            empirical=self.empirical,
            parameters=view.parameters,
            generator=context.generator,
            per_example=self.per_example,
            per_example_method=self.per_example_method,
        )
        values = {"fim_trace": result.fim_trace, "fim_empirical": float(result.empirical)}
        if self.per_example:
            values["fim_trace_per_example"] = result.fim_trace_per_example
        return values

    def cost(self, setting: Setting, batch_size: int) -> float:
        """Per task: a forward over the subset (labels), forward+backward over its full minibatches, and the
        per-example pass (``PER_EXAMPLE_COST`` times a forward+backward over the subset)."""
        del batch_size
        total = 0.0
        for n in self.subset_sizes(setting):
            minibatches = n if n < self.batch_size else n // self.batch_size * self.batch_size
            per_example = PER_EXAMPLE_COST[self.per_example_method] * n if self.per_example else 0.0
            total += FORWARD * n + minibatches + per_example
        return total


@PROBES.register("fim_trace", "Fisher-information trace of each task predictor, minibatch and per-example (eq. 5)")
def build_probe(
    *,
    batch_size: PositiveInt = 16,
    subset: PositiveInt = DEFAULT_SUBSET,
    parameters: ParameterChoice = "predictor",
    empirical: bool = False,
    per_example: bool = True,
    per_example_method: NormMethod = "auto",
) -> Probe:
    return FisherProbe(batch_size, subset, parameters, empirical, per_example, per_example_method)
