"""The fused sharpness ascent (one forward per iteration) against the straightforward reference it replaced:
bit-identical worst losses and perturbations, and the forward/backward counts it saves."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from mtlscope.probes.sharpness import MIN_UPDATE_RATIO, MOMENTUM, _worst_case, checkpoints, sharpness

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def reference_worst_case(
    model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor, names: list[str], rho: float, iterations: int
) -> tuple[float, float, dict[str, torch.Tensor], int]:
    """The ascent as first written: a gradient forward+backward at eps, then a separate no-grad forward at the
    new eps for the worst-loss bookkeeping. Also returns the number of restarts (step halvings)."""
    chosen = set(names)
    theta = {n: p.detach() for n, p in model.named_parameters() if n in chosen}
    fixed = {n: p.detach() for n, p in model.named_parameters() if n not in chosen}
    fixed.update({n: b.detach().clone() for n, b in model.named_buffers()})
    bound = {n: rho * t.abs() for n, t in theta.items()}

    def loss_at(eps: dict[str, torch.Tensor]) -> torch.Tensor:
        return loss_fn(functional_call(model, {**fixed, **{n: theta[n] + eps[n] for n in names}}, (x,)), y)

    def value_at(eps: dict[str, torch.Tensor]) -> float:
        with torch.no_grad():
            return float(loss_at(eps).item())

    zeros = {n: torch.zeros_like(t) for n, t in theta.items()}
    initial = value_at(zeros)
    eps, eps_prev = dict(zeros), dict(zeros)
    worst, worst_eps = initial, dict(zeros)
    step = 2.0 * rho
    marks = set(checkpoints(iterations))
    last_mark, updates, restarts = 0, 0, 0
    prev_step, prev_worst = step, worst
    for t in range(1, iterations + 1):
        with torch.enable_grad():
            leaves = {n: e.detach().requires_grad_(True) for n, e in eps.items()}
            grads = torch.autograd.grad(loss_at(leaves), [leaves[n] for n in names], allow_unused=True)
        with torch.no_grad():
            new_eps = {}
            for n, g in zip(names, grads):
                if g is None:
                    z = eps[n]
                else:
                    z = eps[n] + step * g.sign() * theta[n].abs()
                    z = torch.maximum(torch.minimum(z, bound[n]), -bound[n])
                mixed = MOMENTUM * z + (1.0 - MOMENTUM) * eps_prev[n]
                new_eps[n] = torch.maximum(torch.minimum(mixed, bound[n]), -bound[n])
            eps_prev, eps = eps, new_eps
        current = value_at(eps)
        if current > worst:
            worst, worst_eps = current, dict(eps)
            updates += 1
        if t in marks:
            too_few = updates < MIN_UPDATE_RATIO * (t - last_mark)
            stalled = prev_step == step and prev_worst == worst
            prev_step, prev_worst, last_mark, updates = step, worst, t, 0
            if too_few or stalled:
                step *= 0.5
                restarts += t < iterations
                eps, eps_prev = dict(worst_eps), dict(worst_eps)
    return initial, worst, worst_eps, restarts


class _CountBackward(torch.autograd.Function):
    counter: Counter

    @staticmethod
    def forward(ctx: object, x: torch.Tensor, counter: Counter) -> torch.Tensor:  # type: ignore[override]
        ctx.counter = counter  # type: ignore[attr-defined]
        return x.view_as(x)

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        ctx.counter.backwards += 1  # type: ignore[attr-defined]
        return grad, None


class Counter(nn.Module):
    """Identity that counts the forwards through it, with and without a graph, and the backwards."""

    def __init__(self) -> None:
        super().__init__()
        self.forwards = self.graph_forwards = self.backwards = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.forwards += 1
        if not x.requires_grad:
            return x
        self.graph_forwards += 1
        return _CountBackward.apply(x, self)


def counted_model(kind: str, seed: int, dtype: torch.dtype = torch.float64) -> tuple[nn.Module, Counter]:
    torch.manual_seed(seed)
    counter = Counter()
    if kind == "mlp":
        layers: list[nn.Module] = [nn.Linear(6, 16), counter, nn.BatchNorm1d(16), nn.Tanh(), nn.Linear(16, 3)]
    else:
        layers = [
            nn.Conv2d(1, 4, 3),
            counter,
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(4 * 3 * 3, 3),
        ]
    model = nn.Sequential(*layers).to(dtype)
    model.eval()
    return model, counter


def inputs(kind: str, n: int, seed: int, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shape = (n, 6) if kind == "mlp" else (n, 1, 8, 8)
    return torch.randn(*shape, generator=g, dtype=dtype), torch.randint(0, 3, (n,), generator=g)


CASES = [
    (kind, rho, iterations, seed)
    for kind in ("mlp", "conv", "conv32")
    for rho, iterations in ((1e-3, 20), (0.05, 20), (0.5, 7), (2.0, 11), (1e-4, 1), (0.1, 3))
    for seed in (0, 1)
]


@pytest.mark.parametrize(("kind", "rho", "iterations", "seed"), CASES)
def test_fused_ascent_is_bit_identical_to_the_reference_and_saves_the_forwards(
    kind: str, rho: float, iterations: int, seed: int
) -> None:
    dtype = torch.float32 if kind.endswith("32") else torch.float64
    model, counter = counted_model(kind.removesuffix("32"), seed, dtype)
    x, y = inputs(kind.removesuffix("32"), 24, seed, dtype)
    names = [n for n, _ in model.named_parameters()]
    expected = reference_worst_case(model, F.cross_entropy, x, y, names, rho, iterations)
    reference_forwards = counter.forwards
    assert reference_forwards == 2 * iterations + 1 and counter.backwards == iterations
    counter.forwards = counter.graph_forwards = counter.backwards = 0

    initial, worst, worst_eps = _worst_case(model, F.cross_entropy, x, y, names, rho=rho, iterations=iterations)

    assert (initial, worst) == expected[:2]  # exact float equality
    assert worst_eps.keys() == expected[2].keys()
    for name in names:
        assert torch.equal(worst_eps[name], expected[2][name])
    restarts = expected[3]
    # one forward per iteration and the initial one, plus at most one per restart away from the current point
    assert counter.backwards == iterations
    assert iterations + 1 <= counter.forwards <= iterations + 1 + restarts
    assert counter.graph_forwards == counter.forwards - 1  # only the last iteration's loss runs without graph
    assert counter.forwards < reference_forwards or iterations == 0


def test_restarts_happen_in_the_cases_and_a_restart_to_another_point_costs_one_forward() -> None:
    """The cases above include restarts that move eps (otherwise the restart branch would be untested)."""
    moved_total = 0
    for kind, rho, iterations, seed in CASES:
        model, counter = counted_model(kind.removesuffix("32"), seed)
        x, y = inputs(kind.removesuffix("32"), 24, seed)
        names = [n for n, _ in model.named_parameters()]
        _worst_case(model, F.cross_entropy, x, y, names, rho=rho, iterations=iterations)
        moved_total += counter.forwards - (iterations + 1)
    assert moved_total > 0


def test_sharpness_counts_one_forward_and_one_backward_per_iteration_per_batch() -> None:
    model, counter = counted_model("conv", 3)
    x, y = inputs("conv", 40, 3)
    result = sharpness(model, F.cross_entropy, x, y, rho=1e-3, batch_size=16, iterations=20)
    batches = 3
    assert counter.backwards == 20 * batches
    assert 21 * batches <= counter.forwards <= 28 * batches  # 41 per batch before the fusion
    assert result.sharpness >= 0


def test_zero_iterations_is_the_unperturbed_loss_with_one_forward() -> None:
    model, counter = counted_model("mlp", 0)
    x, y = inputs("mlp", 10, 0)
    names = [n for n, _ in model.named_parameters()]
    initial, worst, _ = _worst_case(model, F.cross_entropy, x, y, names, rho=0.1, iterations=0)
    assert initial == worst == reference_worst_case(model, F.cross_entropy, x, y, names, 0.1, 0)[0]
    assert (counter.forwards, counter.backwards) == (2, 0)  # ours and the reference's
