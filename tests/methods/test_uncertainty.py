"""Uncertainty weighting (Kendall et al. 2018): analytic log-variance gradient, Adam steps, state, training."""

from __future__ import annotations

import math

import pytest
import torch

import mtlscope.methods.uncertainty  # noqa: F401  (registration)
from mtlscope import methods
from mtlscope.methods import umtg
from mtlscope.methods.uncertainty import UncertaintyWeighting, log_variance_gradient
from tests.methods.helpers import random_jacobian, step_input, total_train_loss, train_digits

TASKS = ("a", "b", "c")


def make(**options: float) -> UncertaintyWeighting:
    method = methods.get("uw", **options)
    assert isinstance(method, UncertaintyWeighting)
    method.setup(TASKS)
    return method


def test_registered_with_documented_defaults() -> None:
    assert methods.METHODS.entry("uw").options() == {"lr": 0.025, "init_log_variance": 0.0}
    assert UncertaintyWeighting.needs == frozenset()


def test_first_step_is_the_umtg_at_any_loss_scale() -> None:
    jacobian = random_jacobian(3, 7, seed=1)
    for scale in (1.0, math.sqrt(3), 3.0):
        method = make()
        combination = method.combine(
            step_input(jacobian, torch.tensor([2.0, 0.5, 1.0], dtype=torch.float64), loss_scale=scale)
        )
        assert combination.loss_weights is not None
        torch.testing.assert_close(combination.loss_weights @ jacobian, umtg.aggregate(jacobian, scale))


def test_equal_task_gradients_give_the_umtg_direction_scaled_by_the_mean_weight() -> None:
    method = make(lr=0.3)
    g = random_jacobian(1, 5, seed=2)[0]
    jacobian = torch.stack([g, g, g])
    losses = torch.tensor([3.0, 0.2, 1.0], dtype=torch.float64)
    for _ in range(4):
        weights = method.current_weights().to(torch.float64)
        combination = method.combine(step_input(jacobian, losses, loss_scale=3.0))
        assert combination.loss_weights is not None
        torch.testing.assert_close(
            combination.loss_weights @ jacobian, weights.mean() * umtg.aggregate(jacobian, 3.0).to(weights)
        )
    assert not torch.allclose(method.current_weights(), torch.ones(3, dtype=torch.float64))


def test_log_variance_gradient_matches_autograd() -> None:
    generator = torch.Generator().manual_seed(3)
    s = torch.randn(4, generator=generator, dtype=torch.float64, requires_grad=True)
    losses = torch.rand(4, generator=generator, dtype=torch.float64) * 3
    (torch.exp(-s) * losses + s).sum().backward()
    assert s.grad is not None
    torch.testing.assert_close(log_variance_gradient(s.detach(), losses), s.grad)


def test_hand_computed_first_adam_step() -> None:
    # s = 0, losses (2, 0.5, 1): dL/ds = 1 - L = (-1, 0.5, 0). Adam's first step is lr * g / (|g| + eps')
    # where eps' = eps / sqrt(1 - beta2) ... i.e. lr * sign(g) up to eps; zero gradient -> no move.
    method = make(lr=0.1)
    losses = torch.tensor([2.0, 0.5, 1.0], dtype=torch.float64)
    first = method.combine(step_input(losses=losses))
    assert first.loss_weights is not None
    torch.testing.assert_close(first.loss_weights, torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(method.log_variances.value, torch.tensor([0.1, -0.1, 0.0], dtype=torch.float64))
    second = method.combine(step_input(losses=losses, loss_scale=2.0, step=1))
    assert second.loss_weights is not None
    expected = torch.tensor([math.exp(-0.1), math.exp(0.1), 1.0], dtype=torch.float64) / 2.0
    torch.testing.assert_close(second.loss_weights, expected)
    assert second.diagnostics == pytest.approx({"weight/a": math.exp(-0.1), "weight/b": math.exp(0.1), "weight/c": 1.0})


def test_updates_match_torch_adam_on_the_uw_objective() -> None:
    generator = torch.Generator().manual_seed(4)
    method = make(lr=0.05, init_log_variance=0.3)
    s = torch.full((3,), 0.3, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([s], lr=0.05)
    for step in range(25):
        losses = torch.rand(3, generator=generator, dtype=torch.float64) * 2 + 0.1
        combination = method.combine(step_input(losses=losses, step=step))
        assert combination.loss_weights is not None
        torch.testing.assert_close(combination.loss_weights, torch.exp(-s.detach()))
        optimizer.zero_grad()
        (torch.exp(-s) * losses + s).sum().backward()
        optimizer.step()
        torch.testing.assert_close(method.log_variances.value, s.detach())


def test_constant_losses_drive_weights_to_inverse_losses() -> None:
    method = make(lr=0.05)
    losses = torch.tensor([4.0, 0.25, 1.0], dtype=torch.float64)
    for _ in range(3000):
        method.update(losses)
    torch.testing.assert_close(method.log_variances.value, losses.log(), atol=1e-3, rtol=0)
    torch.testing.assert_close(method.current_weights(), 1 / losses, atol=5e-3, rtol=0)


def test_works_in_the_dtype_of_the_losses() -> None:
    # The log-variances and current_weights (which IT-MTL uses) are exact float64; the loss weights come in
    # the dtype of the losses.
    method = make()
    for dtype in (torch.float32, torch.float64, torch.float32):
        combination = method.combine(step_input(losses=torch.full((3,), 2.0, dtype=dtype)))
        assert combination.loss_weights is not None and combination.loss_weights.dtype == dtype
        assert method.current_weights().dtype == torch.float64
        assert method.log_variances.value.dtype == torch.float64


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"lr": 0.0}, "lr"),
        ({"lr": -1.0}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"lr": "fast"}, "lr"),
        ({"init_log_variance": float("inf")}, "init_log_variance"),
        ({"init_log_variance": "zero"}, "init_log_variance"),
        ({"learning_rate": 0.1}, "learning_rate"),
    ],
)
def test_bad_options_are_rejected(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        methods.get("uw", **options)


def test_update_checks_the_number_of_losses() -> None:
    with pytest.raises(ValueError, match="3 task losses"):
        make().update(torch.ones(2))


def test_setup_resets_the_state() -> None:
    method = make()
    for step in range(3):
        method.combine(step_input(losses=torch.tensor([3.0, 1.0, 0.1]), step=step))
    method.setup(TASKS)
    torch.testing.assert_close(method.current_weights(), torch.ones(3, dtype=torch.float64))
    assert method.log_variances.steps == 0


def test_state_round_trip_continues_identically() -> None:
    generator = torch.Generator().manual_seed(6)
    stream = [torch.rand(3, generator=generator, dtype=torch.float64) + 0.05 for _ in range(12)]
    first = make(lr=0.1)
    for step in range(5):
        first.combine(step_input(losses=stream[step], step=step))
    second = make(lr=0.1)
    second.load_state_dict(first.state_dict())
    for step in range(5, 12):
        a = first.combine(step_input(losses=stream[step], step=step))
        b = second.combine(step_input(losses=stream[step], step=step))
        assert a.loss_weights is not None and b.loss_weights is not None
        assert torch.equal(a.loss_weights, b.loss_weights)
        assert a.diagnostics == b.diagnostics
    with pytest.raises(ValueError, match="state keys"):
        second.load_state_dict({"learned": first.state_dict()["log_variances"]})
    two_tasks = make(lr=0.1)
    two_tasks.setup(("a", "b"))
    with pytest.raises(ValueError, match="shape"):
        second.load_state_dict(two_tasks.state_dict())


def test_float32_run_resumes_exactly() -> None:
    # The state holds the exact float64 log-variances and Adam moments, so a resumed float32 run continues
    # bit for bit.
    generator = torch.Generator().manual_seed(7)
    stream = [torch.rand(3, generator=generator) + 0.05 for _ in range(12)]
    first = make(lr=0.1)
    for step in range(5):
        first.combine(step_input(losses=stream[step], step=step))
    state = first.state_dict()
    second = make(lr=0.1)
    second.load_state_dict(state)
    assert torch.equal(second.log_variances.value, first.log_variances.value)
    for step in range(5, 12):
        a = first.combine(step_input(losses=stream[step], step=step))
        b = second.combine(step_input(losses=stream[step], step=step))
        assert a.loss_weights is not None and b.loss_weights is not None
        assert torch.equal(a.loss_weights, b.loss_weights)
        assert a.diagnostics == b.diagnostics
    assert torch.equal(first.log_variances.value, second.log_variances.value)


def test_training_decreases_the_loss() -> None:
    records = train_digits("uw")
    total = total_train_loss(records)
    assert total.iloc[-1] < 0.6 * total.iloc[0]
