"""Trace of the gradient covariance, "coherence" (Mueller et al., TMLR 2025, eq. 4 and App. B.3;
McCandlish et al., 2018, "An empirical model of large-batch training", App. A.1).

Draw a large batch of ``|L|`` examples without replacement from the N given (``generator``), split it into
``n = |L| / |B|`` small batches of ``|B|``, and compute the small-batch gradients ``g_1..g_n`` (each the gradient
of the mean loss over its batch). Then

- ``G_B = mean_i ||g_i||^2``, ``G_L = ||mean_i g_i||^2`` (the large-batch gradient's squared norm);
- with the finite-population factors ``A_Z = (N - Z) / (N - 1)``:
  ``tr_Sigma = (G_B - G_L) / (A_B / |B| - A_L / |L|)``;
- ``grad_norm_sq = G_L`` (the plain, slightly biased estimate of ``|G|^2``; always >= 0);
  ``grad_norm_sq_unbiased = (A_B/|B| * G_L - A_L/|L| * G_B) / (A_B/|B| - A_L/|L|)`` (McCandlish's unbiased
  estimate, may be negative);
- ``noise_scale = tr_Sigma / grad_norm_sq`` (McCandlish's simple noise scale, with ``G_L``).

Expectation. A batch of Z examples drawn without replacement has ``E ||g_Z||^2 = |G|^2 + sigma^2 * A_Z / Z``
with ``sigma^2 = (1/N) sum_n ||g_n - mean g||^2``, so ``tr_Sigma`` is an unbiased estimate of ``sigma^2`` (the
population trace, divided by N). The sample covariance trace ``sum_n ||g_n - mean g||^2 / (N - 1)`` is larger by
the factor ``N / (N - 1)`` (0.05% at N = 2048): with these finite-population factors ``A_Z`` the estimator's
expectation is the population value, and the difference is stated here. ``tr_Sigma`` is not clamped: a single draw
may be slightly negative.

Sizes. When N < ``large_batch`` all N examples are used (``|L| = N``, then ``A_L = 0`` and ``G_L`` is the exact
full gradient up to the truncation below). ``|L|`` is rounded down to a multiple of ``small_batch``; at least two
small batches are required. The small batches are a random partition of the drawn examples.

Cost: ``|L| / |B|`` forward+backward passes of batch ``|B|`` (64 for the defaults), in eval mode.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

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
from mtlscope.probes.predictor import DEFAULT_SUBSET, ParameterChoice, TaskProbe, TaskView
from mtlscope.settings.setting import Setting

__all__ = ["CovarianceProbe", "CovarianceResult", "grad_cov_trace"]


@dataclass(frozen=True)
class CovarianceResult:
    """Gradient-covariance trace, squared gradient norm (``G_L``) and noise scale; see the module docstring."""

    grad_cov_trace: float
    grad_norm_sq: float
    noise_scale: float
    grad_norm_sq_unbiased: float = float("nan")


def grad_cov_trace(
    model: nn.Module,
    loss_fn: LossFn,
    inputs: Tensor,
    targets: Tensor,
    *,
    large_batch: int = 1024,
    small_batch: int = 16,
    parameters: Iterable[Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> CovarianceResult:
    """Estimate ``tr Sigma`` of the per-example gradients of ``loss_fn`` (a mean loss) on ``inputs``.

    ``parameters`` chooses which parameters count (default: all requiring grad). The large batch is drawn from
    ``generator`` (default: a fresh generator seeded with 0, never the global RNG). The model runs in eval mode
    and is left exactly as it was (modes, parameters, buffers, ``.grad``). ``loss_fn`` may also be a loss name or
    an ``mtlscope.losses.Loss``.
    """
    check_model(model)
    check_examples(inputs, targets)
    loss_fn = loss_function(loss_fn, "loss_fn")
    n_total = len(inputs)
    if small_batch < 1 or large_batch < 1:
        raise ValueError("batch sizes must be positive")
    n_small = min(large_batch, n_total) // small_batch
    if n_small < 2:
        raise ValueError(f"need at least two small batches of {small_batch} (got N={n_total}, |L|={large_batch})")
    size_l = n_small * small_batch
    generator = torch.Generator().manual_seed(0) if generator is None else generator
    order = torch.randperm(n_total, generator=generator, device=generator.device)[:size_l].to(inputs.device)
    chosen = selected_parameters(model, parameters)
    squared_norms = 0.0
    total: Tensor | None = None  # running sum of the small-batch gradients: memory P, not n x P
    with probe_mode(model):
        for idx in order.split(small_batch):
            gradient = batch_gradient(model, loss_fn, inputs[idx], targets[idx.to(targets.device)], chosen).double()
            squared_norms += gradient.pow(2).sum().item()
            total = gradient if total is None else total + gradient
    assert total is not None
    g_b = squared_norms / n_small
    g_l = (total / n_small).pow(2).sum().item()
    a_b = (n_total - small_batch) / (n_total - 1)
    a_l = (n_total - size_l) / (n_total - 1)
    coef_b, coef_l = a_b / small_batch, a_l / size_l
    trace = (g_b - g_l) / (coef_b - coef_l)
    unbiased = (coef_b * g_l - coef_l * g_b) / (coef_b - coef_l)
    noise = trace / g_l if g_l > 0 else (0.0 if trace == 0 else float("inf"))
    return CovarianceResult(grad_cov_trace=trace, grad_norm_sq=g_l, noise_scale=noise, grad_norm_sq_unbiased=unbiased)


class CovarianceProbe(TaskProbe):
    """``grad_cov_trace`` of every task's predictor on its probe subset, at each checkpoint (Mueller et al.
    2025, eq. 4). Records ``grad_cov_trace``, ``grad_norm_sq`` and ``noise_scale``."""

    name = "grad_cov_trace"
    default_every = 10

    def __init__(self, large_batch: int, small_batch: int, subset: int, parameters: str) -> None:
        super().__init__(subset, parameters)
        self.large_batch, self.small_batch = large_batch, small_batch

    def measure(self, view: TaskView, context: ProbeContext) -> dict[str, float]:
        result = grad_cov_trace(
            view.predictor,
            view.task.loss,
            view.data.inputs,
            view.data.targets,
            large_batch=self.large_batch,
            small_batch=self.small_batch,
            parameters=view.parameters,
            generator=context.generator,
        )
        return {
            "grad_cov_trace": result.grad_cov_trace,
            "grad_norm_sq": result.grad_norm_sq,
            "noise_scale": result.noise_scale,
        }

    def cost(self, setting: Setting, batch_size: int) -> float:
        """Per task: forward+backward over the large batch (``min(large_batch, subset)`` rounded down to small
        batches)."""
        del batch_size
        return float(
            sum(min(self.large_batch, n) // self.small_batch * self.small_batch for n in self.subset_sizes(setting))
        )


@PROBES.register("grad_cov_trace", "gradient-covariance trace, gradient norm and noise scale per task (eq. 4)")
def build_probe(
    *,
    large_batch: PositiveInt = 1024,
    small_batch: PositiveInt = 16,
    subset: PositiveInt = DEFAULT_SUBSET,
    parameters: ParameterChoice = "predictor",
) -> Probe:
    for name, size in (("large_batch", large_batch), ("subset", subset)):
        if size < 2 * small_batch:  # the estimator needs two small batches (eq. 4): refused before the run starts
            raise ValueError(
                f"probes.grad_cov_trace.{name}: expected at least 2 x small_batch = {2 * small_batch} (got {size})"
            )
    return CovarianceProbe(large_batch, small_batch, subset, parameters)
