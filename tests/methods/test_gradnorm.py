"""GradNorm (Chen et al. 2018): closed-form weight gradient, invariants, fixed points, state, training."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

import mtlscope.methods.gradnorm  # noqa: F401  (registration)
from mtlscope import methods
from mtlscope.methods import umtg
from mtlscope.methods.gradnorm import (
    GradNorm,
    gradnorm_loss,
    inverse_training_rates,
    renormalize,
    weight_gradient,
)
from tests.methods.helpers import random_jacobian, step_input, total_train_loss, train_digits


def make(tasks: int = 2, **options: float) -> GradNorm:
    method = methods.get("gradnorm", **options)
    assert isinstance(method, GradNorm)
    method.setup(tuple(f"task{k}" for k in range(tasks)))
    return method


def run(method: GradNorm, last: Tensor, losses: Tensor, step: int = 0, scale: float = 1.0) -> Tensor:
    combination = method.combine(step_input(losses=losses, last_shared_jacobian=last, loss_scale=scale, step=step))
    assert combination.loss_weights is not None
    return combination.loss_weights


def test_registered_with_documented_defaults() -> None:
    assert methods.METHODS.entry("gradnorm").options() == {"alpha": 1.5, "lr": 0.025}
    assert GradNorm.needs == frozenset({"last_shared_jacobian"})


def test_weight_gradient_matches_autograd_with_constant_targets() -> None:
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        weights = (torch.rand(4, generator=generator, dtype=torch.float64) + 0.5).requires_grad_(True)
        norms = torch.rand(4, generator=generator, dtype=torch.float64) * 3
        rates = inverse_training_rates(
            torch.rand(4, generator=generator, dtype=torch.float64) + 0.1,
            torch.rand(4, generator=generator, dtype=torch.float64) + 0.1,
        )
        target = ((weights * norms).mean() * rates.pow(1.5)).detach()
        (weights * norms - target).abs().sum().backward()
        assert weights.grad is not None
        torch.testing.assert_close(weight_gradient(weights.detach(), norms, rates, 1.5), weights.grad)
        torch.testing.assert_close(
            gradnorm_loss(weights.detach(), norms, rates, 1.5), (weights * norms - target).abs().sum().detach()
        )


def test_weight_gradient_matches_second_order_autograd_through_a_network() -> None:
    # The reference way (e.g. LibMTL): G_k = ||grad_W (w_k L_k)|| with create_graph=True, L_grad back-propagated
    # to w. Our closed form must give the same gradient.
    generator = torch.Generator().manual_seed(1)
    shared = torch.nn.Linear(5, 4).double()
    heads = [torch.nn.Linear(4, 1).double() for _ in range(3)]
    x = torch.randn(8, 5, generator=generator, dtype=torch.float64)
    ys = [torch.randn(8, 1, generator=generator, dtype=torch.float64) for _ in range(3)]
    features = torch.tanh(shared(x))
    losses = torch.stack([((head(features) - y) ** 2).mean() for head, y in zip(heads, ys)])
    initial = losses.detach() * torch.tensor([1.3, 0.8, 1.1], dtype=torch.float64)
    weights = torch.tensor([0.7, 1.5, 0.8], dtype=torch.float64, requires_grad=True)
    layer = list(shared.parameters())
    norms_graph = []
    for k in range(3):
        grads = torch.autograd.grad(weights[k] * losses[k], layer, retain_graph=True, create_graph=True)
        norms_graph.append(torch.cat([g.reshape(-1) for g in grads]).norm())
    big_g = torch.stack(norms_graph)
    rates = inverse_training_rates(losses.detach(), initial)
    target = (big_g.mean() * rates.pow(1.5)).detach()
    (big_g - target).abs().sum().backward(inputs=[weights])
    assert weights.grad is not None
    jacobian = torch.stack(
        [torch.cat([g.reshape(-1) for g in torch.autograd.grad(losses[k], layer, retain_graph=True)]) for k in range(3)]
    )
    ours = weight_gradient(weights.detach(), jacobian.norm(dim=1), rates, 1.5)
    torch.testing.assert_close(ours, weights.grad)


def test_hand_computed_first_steps() -> None:
    # norms (2, 1), first step: L(0) = L so r = (1, 1); G = (2, 1), targets 1.5 -> dL/dw = (+2, -1), L_grad = 1.
    # Adam's first step moves each weight by lr against the sign: (1 - lr, 1 + lr), which already sums to 2.
    method = make(lr=0.1)
    last = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.6, 0.8]], dtype=torch.float64)
    losses = torch.tensor([0.7, 2.0], dtype=torch.float64)
    combination = method.combine(step_input(losses=losses, last_shared_jacobian=last, loss_scale=2.0))
    assert combination.loss_weights is not None
    torch.testing.assert_close(combination.loss_weights, torch.tensor([0.5, 0.5], dtype=torch.float64))
    assert combination.diagnostics == pytest.approx({"weight/task0": 1.0, "weight/task1": 1.0, "gradnorm_loss": 1.0})
    torch.testing.assert_close(method.initial_losses, losses)
    torch.testing.assert_close(run(method, last, losses, 1), torch.tensor([0.9, 1.1], dtype=torch.float64))


def test_weights_stay_positive_and_sum_to_k() -> None:
    generator = torch.Generator().manual_seed(2)
    for lr in (0.025, 0.5, 5.0):
        method = make(tasks=4, lr=lr, alpha=2.0)
        for step in range(60):
            last = random_jacobian(4, 6, seed=100 + step) * torch.tensor([[10.0], [1.0], [0.1], [0.01]])
            losses = torch.rand(4, generator=generator, dtype=torch.float64) * 2 + 1e-3
            weights = run(method, last, losses, step, scale=3.0) * 3.0
            assert bool((weights > 0).all())
            torch.testing.assert_close(weights.sum(), torch.tensor(4.0, dtype=torch.float64))
            assert bool((method.weights.value > 0).all())
            torch.testing.assert_close(method.weights.value.sum(), torch.tensor(4.0, dtype=torch.float64))


def test_renormalize_floors_and_rescales() -> None:
    weights = renormalize(torch.tensor([-1.0, 1.0, 2.0], dtype=torch.float64))
    assert bool((weights > 0).all())
    torch.testing.assert_close(weights.sum(), torch.tensor(3.0, dtype=torch.float64))


def test_equal_task_gradients_give_the_umtg_at_every_step() -> None:
    g = random_jacobian(1, 9, seed=3)[0]
    jacobian = torch.stack([g, g, g])
    method = make(tasks=3)
    for step in range(10):
        last = random_jacobian(3, 4, seed=step)
        losses = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64) / (step + 1) ** torch.arange(3)
        weights = run(method, last, losses, step, scale=3.0)
        torch.testing.assert_close(weights @ jacobian, umtg.aggregate(jacobian, 3.0))


def test_equalizes_weighted_gradient_norms_at_equal_training_rates() -> None:
    # Constant losses: r = 1, the fixed point has w_k ||g_k|| equal: w = (0.4, 1.6) for norms (4, 1).
    method = make(lr=0.01)
    last = torch.tensor([[4.0], [1.0]], dtype=torch.float64)
    for step in range(1500):
        run(method, last, torch.ones(2, dtype=torch.float64), step)
    torch.testing.assert_close(method.weights.value, torch.tensor([0.4, 1.6], dtype=torch.float64), atol=0.03, rtol=0)


def test_favours_the_task_that_trains_slower() -> None:
    # Equal norms, task1's loss dropped to a quarter of its initial value: ratios (1, 0.25), r = (1.6, 0.4);
    # with alpha = 1 the fixed point is w proportional to r: (1.6, 0.4).
    method = make(lr=0.01, alpha=1.0)
    last = torch.eye(2, dtype=torch.float64)
    run(method, last, torch.ones(2, dtype=torch.float64), 0)
    for step in range(1, 1500):
        run(method, last, torch.tensor([1.0, 0.25], dtype=torch.float64), step)
    torch.testing.assert_close(method.weights.value, torch.tensor([1.6, 0.4], dtype=torch.float64), atol=0.03, rtol=0)


def test_works_in_the_dtype_of_the_losses() -> None:
    method = make()
    weights = run(method, torch.ones(2, 3), torch.ones(2))
    assert weights.dtype == torch.float32
    weights = run(method, torch.ones(2, 3, dtype=torch.float64), torch.ones(2, dtype=torch.float64), 1)
    assert weights.dtype == torch.float64
    assert method.weights.value.dtype == torch.float64  # the learned weights are float64 whatever the losses


def test_updates_match_torch_adam_followed_by_renormalization() -> None:
    # Algorithm 1: one Adam step of the weights on dL_grad/dw, then floor and renormalize to sum K; Adam's
    # moments carry over the renormalization.
    generator = torch.Generator().manual_seed(5)
    method = make(tasks=3, lr=0.2, alpha=0.5)
    reference = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    optimizer = torch.optim.Adam([reference], lr=0.2)
    initial = None
    for step in range(25):
        last = random_jacobian(3, 4, seed=300 + step)
        losses = torch.rand(3, generator=generator, dtype=torch.float64) + 0.1
        initial = losses.clone() if initial is None else initial
        used = reference.detach().clone()
        torch.testing.assert_close(run(method, last, losses, step), used)
        rates = inverse_training_rates(losses, initial)
        reference.grad = weight_gradient(used, last.norm(dim=1), rates, 0.5)
        optimizer.step()
        with torch.no_grad():
            reference.copy_(renormalize(reference))
        torch.testing.assert_close(method.weights.value, reference.detach())


def test_needs_the_last_shared_jacobian() -> None:
    with pytest.raises(ValueError, match="last_shared_jacobian"):
        make().combine(step_input(losses=torch.ones(2)))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"alpha": -0.5}, "alpha"),
        ({"alpha": float("nan")}, "alpha"),
        ({"alpha": "high"}, "alpha"),
        ({"lr": 0.0}, "lr"),
        ({"lr": float("inf")}, "lr"),
        ({"beta": 1.0}, "beta"),
    ],
)
def test_bad_options_are_rejected(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        methods.get("gradnorm", **options)


def test_setup_resets_the_state() -> None:
    method = make()
    last = torch.tensor([[3.0], [1.0]], dtype=torch.float64)
    for step in range(3):
        run(method, last, torch.tensor([2.0, 1.0], dtype=torch.float64) / (step + 1), step)
    method.setup(("task0", "task1"))
    assert method.initial_losses is None and method.weights.steps == 0
    torch.testing.assert_close(method.weights.value, torch.ones(2, dtype=torch.float64))


def test_state_round_trip_continues_identically() -> None:
    generator = torch.Generator().manual_seed(4)
    stream = [
        (random_jacobian(3, 5, seed=200 + i), torch.rand(3, generator=generator, dtype=torch.float64) + 0.1)
        for i in range(12)
    ]
    first = make(tasks=3, lr=0.1)
    for step in range(5):
        run(first, *stream[step], step)
    second = make(tasks=3, lr=0.1)
    second.load_state_dict(first.state_dict())
    for step in range(5, 12):
        a = first.combine(step_input(losses=stream[step][1], last_shared_jacobian=stream[step][0], step=step))
        b = second.combine(step_input(losses=stream[step][1], last_shared_jacobian=stream[step][0], step=step))
        assert a.loss_weights is not None and b.loss_weights is not None
        assert torch.equal(a.loss_weights, b.loss_weights)
        assert a.diagnostics == b.diagnostics
    with pytest.raises(ValueError, match="state keys"):
        second.load_state_dict({"weights": torch.ones(3)})


def test_training_decreases_the_loss() -> None:
    total = total_train_loss(train_digits("gradnorm"))
    assert total.iloc[-1] < 0.6 * total.iloc[0]
