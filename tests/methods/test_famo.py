"""FAMO (Liu et al. 2023): agreement with the official algorithm, hand-computed steps, state, training."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

import mtlscope.methods.famo  # noqa: F401  (registration)
from mtlscope import methods
from mtlscope.methods import famo, umtg
from tests.methods.helpers import random_jacobian, step_input, total_train_loss, train_digits


def make(tasks: int = 2, **options: object) -> famo.FAMO:
    method = methods.get("famo", **options)
    assert isinstance(method, famo.FAMO)
    method.setup(tuple(f"task{k}" for k in range(tasks)))
    return method


def test_registered_with_documented_defaults() -> None:
    assert methods.METHODS.entry("famo").options() == {"lr": 0.025, "gamma": 0.01, "min_losses": None}
    assert famo.FAMO.needs == frozenset({"post_step_losses"})


class OfficialFAMO:
    """A restatement of the official algorithm (Cranial-XIX/FAMO, famo.py) with autograd and torch's Adam."""

    def __init__(self, tasks: int, lr: float, gamma: float, min_losses: Tensor) -> None:
        self.logits = torch.zeros(tasks, dtype=torch.float64, requires_grad=True)
        self.optimizer = torch.optim.Adam([self.logits], lr=lr, weight_decay=gamma)
        self.min_losses = min_losses
        self.before = torch.zeros(tasks, dtype=torch.float64)

    def loss(self, losses: Tensor) -> Tensor:
        self.before = losses.detach()
        z = torch.softmax(self.logits, -1).detach()
        gaps = losses - self.min_losses + 1e-8
        c = (z / gaps).sum().detach()
        return (gaps.log() * z / c).sum()

    def update(self, after: Tensor) -> None:
        delta = (self.before - self.min_losses + 1e-8).log() - (after - self.min_losses + 1e-8).log()
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(torch.softmax(self.logits, -1), self.logits, grad_outputs=delta)
        self.optimizer.zero_grad()
        self.logits.grad = grad
        self.optimizer.step()


def test_training_matches_the_official_algorithm_at_c_equal_k() -> None:
    generator = torch.Generator().manual_seed(0)
    tasks, dim = 4, 6
    x = torch.randn(64, dim, generator=generator, dtype=torch.float64)
    y = torch.randn(64, tasks, generator=generator, dtype=torch.float64) * torch.tensor([0.1, 1.0, 3.0, 10.0])
    reference_model = torch.nn.Linear(dim, tasks).double()
    model = torch.nn.Linear(dim, tasks).double()
    model.load_state_dict(reference_model.state_dict())
    reference_optimizer = torch.optim.Adam(reference_model.parameters(), lr=0.05)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    min_losses = torch.tensor([0.0, 0.01, 0.0, 0.5], dtype=torch.float64)
    reference = OfficialFAMO(tasks, lr=0.1, gamma=0.001, min_losses=min_losses)
    method = make(tasks=4, lr=0.1, gamma=0.001, min_losses={"task1": 0.01, "task3": 0.5})

    def task_losses(net: torch.nn.Module) -> Tensor:
        return ((y - net(x)) ** 2).mean(0)

    for step in range(30):
        reference_optimizer.zero_grad()
        reference.loss(task_losses(reference_model)).backward()
        reference_optimizer.step()
        with torch.no_grad():
            reference.update(task_losses(reference_model))

        optimizer.zero_grad()
        losses = task_losses(model)
        combination = method.combine(step_input(losses=losses.detach(), loss_scale=float(tasks), step=step))
        assert combination.loss_weights is not None
        (combination.loss_weights * losses).sum().backward()
        optimizer.step()
        with torch.no_grad():
            method.after_step(task_losses(model))

        torch.testing.assert_close(method.logits.value, reference.logits.detach())
        for ours, theirs in zip(model.parameters(), reference_model.parameters()):
            torch.testing.assert_close(ours, theirs)
    assert float(method.logits.value.abs().max()) > 0.1


def test_hand_computed_weights_and_logit_step() -> None:
    # logits 0, losses (1, 4): z = (1/2, 1/2), z / D = (1/2, 1/8), lambda = (0.8, 0.2); weights K lambda / C.
    method = make()
    combination = method.combine(step_input(losses=torch.tensor([1.0, 4.0], dtype=torch.float64), loss_scale=2.0))
    assert combination.loss_weights is not None
    torch.testing.assert_close(
        combination.loss_weights, torch.tensor([0.8, 0.2], dtype=torch.float64), atol=1e-7, rtol=0
    )
    assert combination.diagnostics == pytest.approx(
        {"weight/task0": 1.6, "weight/task1": 0.4, "logit/task0": 0.0, "logit/task1": 0.0}
    )
    # after the step losses (0.5, 4): delta = (log 2, 0), grad = z (delta - <z, delta>) = (log 2 / 4, -log 2 / 4);
    # Adam's first step (weight decay on zero logits adds nothing) moves each logit by lr against the sign.
    torch.testing.assert_close(
        famo.logit_gradient(
            torch.zeros(2, dtype=torch.float64),
            torch.tensor([1.0, 4.0], dtype=torch.float64),
            torch.tensor([0.5, 4.0], dtype=torch.float64),
            torch.zeros(2, dtype=torch.float64),
        ),
        torch.tensor([math.log(2) / 4, -math.log(2) / 4], dtype=torch.float64),
    )
    method.after_step(torch.tensor([0.5, 4.0], dtype=torch.float64))
    torch.testing.assert_close(method.logits.value, torch.tensor([-0.025, 0.025], dtype=torch.float64))


def test_pure_weights_sum_to_one_and_favour_small_loss_gaps() -> None:
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(5, generator=generator, dtype=torch.float64)
    losses = torch.rand(5, generator=generator, dtype=torch.float64) + 0.2
    w = famo.weights(logits, losses)
    assert bool((w > 0).all())
    torch.testing.assert_close(w.sum(), torch.tensor(1.0, dtype=torch.float64))
    # equal logits: lambda proportional to 1 / L (the gradient of sum_k log L_k, normalized)
    even = famo.weights(torch.zeros(5, dtype=torch.float64), losses)
    torch.testing.assert_close(even, (1 / losses) / (1 / losses).sum())
    with pytest.raises(ValueError, match="logits and losses"):
        famo.weights(logits[:3], losses)


def test_equal_task_gradients_give_the_umtg_at_every_step() -> None:
    g = random_jacobian(1, 7, seed=2)[0]
    jacobian = torch.stack([g, g, g])
    method = make(tasks=3)
    generator = torch.Generator().manual_seed(3)
    for step in range(10):
        losses = torch.rand(3, generator=generator, dtype=torch.float64) + 0.1
        combination = method.combine(step_input(jacobian, losses, step=step, loss_scale=1.0))
        assert combination.loss_weights is not None
        torch.testing.assert_close(combination.loss_weights @ jacobian, umtg.aggregate(jacobian, 1.0))
        method.after_step(losses * torch.tensor([0.5, 0.9, 1.0], dtype=torch.float64))
    assert float(method.logits.value.abs().max()) > 0.05


def test_losses_below_their_minimum_give_finite_weights() -> None:
    method = make(min_losses={"task0": 2.0})
    combination = method.combine(step_input(losses=torch.tensor([1.0, 1.0], dtype=torch.float64)))
    assert combination.loss_weights is not None
    assert bool(torch.isfinite(combination.loss_weights).all())
    method.after_step(torch.tensor([0.5, 0.5], dtype=torch.float64))
    assert bool(torch.isfinite(method.logits.value).all())


def test_after_step_needs_a_combine_first() -> None:
    method = make()
    with pytest.raises(ValueError, match="without a preceding combine"):
        method.after_step(torch.ones(2))
    method.combine(step_input(losses=torch.ones(2)))
    method.after_step(torch.ones(2))
    with pytest.raises(ValueError, match="without a preceding combine"):
        method.after_step(torch.ones(2))


def test_works_in_the_dtype_of_the_losses() -> None:
    method = make()
    combination = method.combine(step_input(losses=torch.tensor([1.0, 2.0])))
    assert combination.loss_weights is not None and combination.loss_weights.dtype == torch.float32
    method.after_step(torch.tensor([0.5, 2.0]))
    assert method.logits.value.dtype == torch.float64  # the logits are float64 whatever the losses
    combination = method.combine(step_input(losses=torch.tensor([1.0, 2.0], dtype=torch.float64)))
    assert combination.loss_weights is not None and combination.loss_weights.dtype == torch.float64


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"lr": 0.0}, "lr"),
        ({"lr": "x"}, "lr"),
        ({"gamma": -0.1}, "gamma"),
        ({"gamma": float("nan")}, "gamma"),
        ({"min_losses": {"task0": float("inf")}}, "min_losses: expected a mapping of names to finite numbers"),
        ({"min_losses": {"task0": "low"}}, "min_losses: expected a mapping of names to finite numbers"),
        ({"max_norm": 1.0}, "max_norm"),
    ],
)
def test_bad_options_are_rejected(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        methods.get("famo", **options)


def test_min_losses_must_name_tasks_of_the_run() -> None:
    method = methods.get("famo", min_losses={"depth": 0.1})
    with pytest.raises(ValueError, match="'depth'"):
        method.setup(("task0", "task1"))


def test_setup_resets_the_state() -> None:
    method = make()
    for _ in range(3):
        method.combine(step_input(losses=torch.tensor([1.0, 2.0])))
        method.after_step(torch.tensor([0.5, 2.0]))
    method.setup(("task0", "task1"))
    assert method.logits.steps == 0 and method.losses_before is None
    torch.testing.assert_close(method.logits.value, torch.zeros(2, dtype=torch.float64))


def test_state_round_trip_continues_identically() -> None:
    generator = torch.Generator().manual_seed(4)
    stream = [torch.rand(3, generator=generator, dtype=torch.float64) + 0.1 for _ in range(24)]
    first = make(tasks=3, lr=0.1, min_losses={"task2": 0.05})
    for step in range(5):
        first.combine(step_input(losses=stream[2 * step], step=step))
        first.after_step(stream[2 * step + 1])
    first.combine(step_input(losses=stream[10], step=5))  # saved between combine and after_step
    second = make(tasks=3, lr=0.1, min_losses={"task2": 0.05})
    second.load_state_dict(first.state_dict())
    first.after_step(stream[11])
    second.after_step(stream[11])
    for step in range(6, 12):
        a = first.combine(step_input(losses=stream[2 * step], step=step))
        b = second.combine(step_input(losses=stream[2 * step], step=step))
        assert a.loss_weights is not None and b.loss_weights is not None
        assert torch.equal(a.loss_weights, b.loss_weights)
        assert a.diagnostics == b.diagnostics
        first.after_step(stream[2 * step + 1])
        second.after_step(stream[2 * step + 1])
    with pytest.raises(ValueError, match="state keys"):
        second.load_state_dict({"logits": torch.zeros(3)})


def test_training_decreases_the_loss_and_the_engine_reports_post_step_losses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[Tensor] = []
    original = famo.FAMO.after_step

    def recording(self: famo.FAMO, losses_after: Tensor) -> None:
        calls.append(losses_after)
        original(self, losses_after)

    monkeypatch.setattr(famo.FAMO, "after_step", recording)
    total = total_train_loss(train_digits("famo"))
    assert total.iloc[-1] < 0.6 * total.iloc[0]
    assert len(calls) > 10 and all(call.shape == (2,) for call in calls)
