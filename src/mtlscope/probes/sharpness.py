"""Adaptive worst-case l_inf sharpness (Mueller et al., TMLR 2025, eq. 3/7; after Andriushchenko et
al., ICML 2023, "A modern look at the relationship between sharpness and generalization").

    S = mean over batches b of [ max_{|eps_i| <= rho*|theta_i|} L_b(theta + eps) - L_b(theta) ]

The inner maximum is approximated by sign-gradient ascent with Auto-PGD step-size control, as in the reference
code (``eval_APGD_sharpness`` with ``norm='linf'``, ``adaptive=True``, ``rand_init=False``). This module is the
standalone measurement; it knows nothing about tasks or the trainer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from mtlscope.engine.probe_budget import FORWARD
from mtlscope.options import PositiveFloat, PositiveInt
from mtlscope.probes.base import PROBES, Probe, ProbeContext, probe_mode
from mtlscope.probes.per_example import check_examples, check_model, loss_function
from mtlscope.probes.predictor import DEFAULT_SUBSET, ParameterChoice, TaskProbe, TaskView
from mtlscope.settings.setting import Setting

__all__ = ["SharpnessProbe", "SharpnessResult", "checkpoints", "sharpness"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

MOMENTUM = 0.75  # eps = MOMENTUM * z + (1 - MOMENTUM) * eps_prev
MIN_UPDATE_RATIO = 0.75  # halve the step if fewer than this share of iterations improved the worst loss


@dataclass(frozen=True)
class SharpnessResult:
    """``sharpness``: mean over batches of (worst loss - loss); ``per_batch``: those differences, one per batch;
    ``loss``: mean over batches of the unperturbed batch loss L_b(theta)."""

    sharpness: float
    per_batch: list[float]
    loss: float


def checkpoints(iterations: int) -> list[int]:
    """Iteration counts after which the step size may be halved (Auto-PGD schedule of the reference code).

    The reference builds fractions p = 0, 0.22, then p_j = p_{j-1} + max(p_{j-1} - p_{j-2} - 0.03, 0.06) and
    checkpoints ceil(p_j * iterations) until one reaches ``iterations``. The same floating-point arithmetic is
    reproduced here, so 20 iterations give [5, 9, 12, 15, 16, 18, 19, 20], as in the reference (the 15 comes from
    0.7 * 20 rounding to 14.000000000000002 in the reference).
    """
    if iterations <= 0:
        return []
    p = [0.0, 0.22]
    w = [0, math.ceil(0.22 * iterations)]
    while w[-1] < iterations and w[-1] != w[-2]:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
        w.append(math.ceil(p[-1] * iterations))
    return w[1:]


def sharpness(
    model: nn.Module,
    loss_fn: LossFn,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    rho: float = 1e-3,
    batch_size: int = 128,
    iterations: int = 20,
    parameters: Iterable[nn.Parameter] | None = None,
    generator: torch.Generator | None = None,
) -> SharpnessResult:
    """Adaptive worst-case l_inf sharpness of ``model`` on (``inputs``, ``targets``).

    Args:
        model: any module mapping ``inputs`` (a batch along dim 0) to outputs.
        loss_fn: ``loss_fn(outputs, targets)`` -> scalar mean loss of the batch (a plain function, a registered
            loss name or an ``mtlscope.losses.Loss``).
        inputs, targets: the examples (the trainer passes the 2048-example probe subset); they are split into
            consecutive chunks of ``batch_size`` along dim 0 and must already be on the model's device.
        rho: radius of the box |eps_i| <= rho * |theta_i| (elementwise, relative to each parameter).
        batch_size: examples per batch b (the last batch may be smaller).
        iterations: sign-ascent iterations per batch.
        parameters: the parameters to perturb (must belong to ``model``); default all parameters of ``model``
            that require grad. All other parameters and all buffers stay fixed.
        generator: unused (the method is deterministic: ascent starts at eps = 0, as in the reference, whose
            random start was never used); accepted so every probe has the same signature. The global RNG is
            never touched either.

    Interpretations (of the paper's App. B.1 and the reference code, choices made explicit):
        - Each batch counts equally in the mean, also a smaller last batch; ``loss`` is averaged the same way.
        - Iteration t (1-based): gradient g of L_b at theta + eps; z = clip(eps + step * sign(g) * |theta|) to
          the box; eps_new = 0.75 * z + 0.25 * eps_prev, where eps_prev is the perturbation *before* the current
          one (eps_{t-2}; the reference's ``prev_delta_dict``), with eps_{-1} = eps_0 = 0. Both terms lie in the
          box, so eps_new does too. Step size starts at 2 * rho. A zero gradient component (sign 0) or a zero
          parameter (box [0, 0]) is never moved.
        - After each iteration the loss at theta + eps_new is evaluated (by the forward that also gives the next
          iteration's gradient); it *improves* the worst loss only if strictly larger. The worst loss starts at
          L_b(theta) (eps = 0), so every S_b >= 0.
        - Checkpoints are counts of completed iterations (``checkpoints(iterations)``); at a checkpoint the step
          is halved if the number of improvements since the previous checkpoint (or since the start) is below
          0.75 times the iterations since then, or if the step was not halved at the previous checkpoint and
          the worst loss has not changed. The reference tests ``i in w`` with a 0-based ``i`` (one iteration
          later) and never reaches its last checkpoint; the checkpoint list is read literally here instead.
        - Restart: when the step is halved, eps and eps_prev are both set to the worst point found. (The
          reference reloads the worst weights but keeps its perturbation dictionaries, so its next step starts
          from the current, not the worst, perturbation; here the step restarts from the worst point, as
          Auto-PGD describes it.)
        - The model is put in eval mode (every submodule's mode is restored afterwards). The forward passes use
          ``torch.func.functional_call`` with perturbed copies of the chosen parameters, detached copies of the
          other parameters and clones of the buffers; gradients come from ``torch.autograd.grad`` w.r.t. the
          perturbed copies. The model's parameters, buffers and ``.grad`` fields are never written.

    Cost per batch: ``iterations`` x (forward + backward) + 1 forward, plus 1 forward per restart that moves eps
    to an earlier worst point (at most ``len(checkpoints(iterations)) - 1``, 7 for 20 iterations); the loss at each
    new eps comes from the forward that computes the next gradient (before, every iteration also ran a separate
    no-grad forward: 2 x ``iterations`` + 1 forwards).
    """
    del generator  # deterministic; see docstring
    if rho < 0 or not math.isfinite(rho):
        raise ValueError(f"rho must be a finite number >= 0, got {rho}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    check_model(model)
    check_examples(inputs, targets)
    loss_fn = loss_function(loss_fn, "loss_fn")

    names = _parameter_names(model, parameters)
    per_batch: list[float] = []
    losses: list[float] = []
    with probe_mode(model):
        for start in range(0, len(inputs), batch_size):
            x, y = inputs[start : start + batch_size], targets[start : start + batch_size]
            loss, worst, _ = _worst_case(model, loss_fn, x, y, names, rho=rho, iterations=iterations)
            per_batch.append(worst - loss)
            losses.append(loss)
    return SharpnessResult(
        sharpness=sum(per_batch) / len(per_batch), per_batch=per_batch, loss=sum(losses) / len(losses)
    )


def _parameter_names(model: nn.Module, parameters: Iterable[nn.Parameter] | None) -> list[str]:
    """Names (in ``model.named_parameters()`` order) of the parameters to perturb."""
    named = list(model.named_parameters())
    if parameters is None:
        return [name for name, p in named if p.requires_grad]
    wanted = {id(p) for p in parameters}
    names = [name for name, p in named if id(p) in wanted]
    if len(names) != len(wanted):
        raise ValueError("every parameter in `parameters` must be a parameter of `model`")
    return names


def _worst_case(
    model: nn.Module,
    loss_fn: LossFn,
    x: torch.Tensor,
    y: torch.Tensor,
    names: list[str],
    *,
    rho: float,
    iterations: int,
) -> tuple[float, float, dict[str, torch.Tensor]]:
    """One batch: (L_b(theta), worst loss found, worst perturbation eps by parameter name).

    The model must already be in the mode the measurement wants (``sharpness`` sets eval mode).

    Passes: the forward that gives iteration t+1 its gradient (at eps_t, with graph) also gives the loss at eps_t
    that iteration t's worst-loss bookkeeping needs, so each iteration costs one forward and one backward. Only
    two cases need an extra pass: a restart that moves eps to a worst point other than eps_t (the graph at eps_t
    is dropped without its backward and a forward with graph runs at the worst point), and the last iteration,
    whose loss is a no-grad forward. The values are those of a separate no-grad evaluation after every iteration
    (tested bit for bit against that reference in tests/probes/test_sharpness.py).
    """
    chosen = set(names)
    theta = {name: p.detach() for name, p in model.named_parameters() if name in chosen}
    fixed: dict[str, torch.Tensor] = {name: p.detach() for name, p in model.named_parameters() if name not in chosen}
    fixed.update({name: b.detach().clone() for name, b in model.named_buffers()})
    bound = {name: rho * t.abs() for name, t in theta.items()}

    def loss_at(eps: dict[str, torch.Tensor]) -> torch.Tensor:
        params = {name: theta[name] + eps[name] for name in names}
        return loss_fn(functional_call(model, {**fixed, **params}, (x,)), y)

    def graph_at(eps: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss at eps with its graph, and the leaves the gradient is taken with respect to."""
        with torch.enable_grad():
            leaves = {name: e.detach().requires_grad_(True) for name, e in eps.items()}
            return loss_at(leaves), leaves

    def gradient(loss: torch.Tensor, leaves: dict[str, torch.Tensor]) -> tuple[torch.Tensor | None, ...]:
        return torch.autograd.grad(loss, [leaves[n] for n in names], allow_unused=True)

    zeros = {name: torch.zeros_like(t) for name, t in theta.items()}
    if iterations == 0:
        with torch.no_grad():
            initial = float(loss_at(zeros).item())
        return initial, initial, dict(zeros)
    loss, leaves = graph_at(zeros)
    initial = float(loss.detach().item())
    grads = gradient(loss, leaves)
    eps, eps_prev = dict(zeros), dict(zeros)
    worst, worst_eps = initial, dict(zeros)
    step = 2.0 * rho
    marks = set(checkpoints(iterations))
    last_mark, updates = 0, 0
    prev_step, prev_worst = step, worst

    for t in range(1, iterations + 1):
        with torch.no_grad():
            new_eps: dict[str, torch.Tensor] = {}
            for name, grad in zip(names, grads):
                if grad is None:
                    z = eps[name]
                else:
                    z = eps[name] + step * grad.sign() * theta[name].abs()
                    z = torch.maximum(torch.minimum(z, bound[name]), -bound[name])
                mixed = MOMENTUM * z + (1.0 - MOMENTUM) * eps_prev[name]
                # Already in the box mathematically; the clip only removes a possible last-bit rounding excess.
                new_eps[name] = torch.maximum(torch.minimum(mixed, bound[name]), -bound[name])
            eps_prev, eps = eps, new_eps
        last = t == iterations
        if last:  # nothing follows: the loss alone, without graph
            with torch.no_grad():
                current = float(loss_at(eps).item())
        else:  # the next iteration's gradient forward, whose loss is this iteration's value
            loss, leaves = graph_at(eps)
            current = float(loss.detach().item())
        if current > worst:
            worst, worst_eps = current, dict(eps)
            updates += 1
        if t in marks:
            too_few = updates < MIN_UPDATE_RATIO * (t - last_mark)
            stalled = prev_step == step and prev_worst == worst
            prev_step, prev_worst, last_mark, updates = step, worst, t, 0
            if too_few or stalled:
                step *= 0.5
                moved = any(worst_eps[name] is not eps[name] for name in names)
                eps, eps_prev = dict(worst_eps), dict(worst_eps)
                if moved and not last:  # the graph at eps_t is not where the next gradient is taken
                    loss, leaves = graph_at(eps)
        if not last:
            grads = gradient(loss, leaves)
    return initial, worst, worst_eps


class SharpnessProbe(TaskProbe):
    """``sharpness`` of every task's predictor on its probe subset, at each checkpoint (Mueller et al. 2025, eq. 3)."""

    name = "sharpness"
    default_every = 10

    def __init__(self, rho: float, batch_size: int, iterations: int, subset: int, parameters: str) -> None:
        super().__init__(subset, parameters)
        self.rho, self.batch_size, self.iterations = rho, batch_size, iterations

    def measure(self, view: TaskView, context: ProbeContext) -> dict[str, float]:
        result = sharpness(
            view.predictor,
            view.task.loss,
            view.data.inputs,
            view.data.targets,
            rho=self.rho,
            batch_size=self.batch_size,
            iterations=self.iterations,
            parameters=view.parameters,
        )
        return {"sharpness": result.sharpness}

    def cost(self, setting: Setting, batch_size: int) -> float:
        """Per example: ``iterations`` forward+backward passes and at most ``len(checkpoints(iterations))`` forwards
        (the last iteration's loss and the restarts; see ``sharpness``)."""
        del batch_size
        per_example = self.iterations + FORWARD * len(checkpoints(self.iterations))
        return float(sum(self.subset_sizes(setting))) * per_example


@PROBES.register("sharpness", "adaptive worst-case l_inf sharpness of each task predictor (Mueller et al. 2025, eq. 3)")
def build_probe(
    *,
    rho: PositiveFloat = 1e-3,
    batch_size: PositiveInt = 128,
    iterations: PositiveInt = 20,
    subset: PositiveInt = DEFAULT_SUBSET,
    parameters: ParameterChoice = "predictor",
) -> Probe:
    return SharpnessProbe(rho, batch_size, iterations, subset, parameters)
