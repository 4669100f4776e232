"""DWA (Liu et al. 2019): epoch averages, hand-computed weights, invariants, state, training."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

import mtlscope.methods.dwa  # noqa: F401  (registration)
from mtlscope import methods
from mtlscope.methods import dwa, umtg
from tests.methods.helpers import random_jacobian, step_input, total_train_loss, train_digits


def make(tasks: int = 2, **options: float) -> dwa.DWA:
    method = methods.get("dwa", **options)
    assert isinstance(method, dwa.DWA)
    method.setup(tuple(f"task{k}" for k in range(tasks)))
    return method


def run(method: dwa.DWA, losses: list[float], epoch: int, step: int = 0, scale: float = 1.0) -> Tensor:
    combination = method.combine(
        step_input(losses=torch.tensor(losses, dtype=torch.float64), epoch=epoch, step=step, loss_scale=scale)
    )
    assert combination.loss_weights is not None
    return combination.loss_weights


def test_registered_with_documented_defaults() -> None:
    assert methods.METHODS.entry("dwa").options() == {"temperature": 2.0}
    assert dwa.DWA.needs == frozenset()


def test_hand_computed_weights_from_epoch_averages() -> None:
    method = make()
    ones = torch.ones(2, dtype=torch.float64)
    # epoch 0: steps (3, 1) and (1, 1): average (2, 1); epoch 1: (1.5, 0.5) and (0.5, 1.5): average (1, 1).
    torch.testing.assert_close(run(method, [3.0, 1.0], 0), ones)
    torch.testing.assert_close(run(method, [1.0, 1.0], 0), ones)
    torch.testing.assert_close(run(method, [1.5, 0.5], 1), ones)
    torch.testing.assert_close(run(method, [0.5, 1.5], 1), ones)
    # epoch 2: r = (1/2, 1/1); w = 2 exp(r/2) / sum exp(r/2).
    a, b = math.exp(0.25), math.exp(0.5)
    expected = torch.tensor([2 * a / (a + b), 2 * b / (a + b)], dtype=torch.float64)
    torch.testing.assert_close(run(method, [9.0, 9.0], 2, scale=2.0), expected / 2.0)
    # the same weights for every step of epoch 2, whatever its losses
    torch.testing.assert_close(run(method, [0.1, 5.0], 2), expected)
    # epoch 3: averages of epoch 2 = (4.55, 7.0) against epoch 1's (1, 1)
    r = torch.tensor([4.55, 7.0], dtype=torch.float64)
    torch.testing.assert_close(run(method, [1.0, 1.0], 3), 2 * torch.softmax(r / 2, dim=0))


def test_pure_weights_sum_to_k_and_follow_the_temperature() -> None:
    generator = torch.Generator().manual_seed(0)
    last = torch.rand(5, generator=generator, dtype=torch.float64) + 0.1
    before = torch.rand(5, generator=generator, dtype=torch.float64) + 0.1
    for temperature in (0.05, 0.5, 2.0, 100.0):
        w = dwa.weights(last, before, temperature)
        assert bool((w > 0).all())
        torch.testing.assert_close(w.sum(), torch.tensor(5.0, dtype=torch.float64))
        # the task whose loss decreased least (largest ratio) gets the largest weight
        assert int(w.argmax()) == int((last / before).argmax())
    torch.testing.assert_close(dwa.weights(last, before, 1e6), torch.ones(5, dtype=torch.float64), atol=1e-5, rtol=0)
    sharp = dwa.weights(last, before, 1e-4)
    assert float(sharp.max()) == pytest.approx(5.0)
    with pytest.raises(ValueError, match="loss averages"):
        dwa.weights(last, before[:3])


def test_equal_task_gradients_give_the_umtg_at_every_step() -> None:
    g = random_jacobian(1, 6, seed=1)[0]
    jacobian = torch.stack([g, g, g])
    method = make(tasks=3)
    generator = torch.Generator().manual_seed(2)
    for step in range(20):
        losses = torch.rand(3, generator=generator, dtype=torch.float64) + 0.1
        combination = method.combine(step_input(jacobian, losses, epoch=step // 4, step=step, loss_scale=math.sqrt(3)))
        assert combination.loss_weights is not None
        torch.testing.assert_close(combination.loss_weights @ jacobian, umtg.aggregate(jacobian, math.sqrt(3)))
    assert not torch.allclose(method.current_weights(4, g), torch.ones(3, dtype=torch.float64))


def test_a_skipped_epoch_falls_back_to_unit_weights() -> None:
    method = make()
    run(method, [2.0, 1.0], 0)
    run(method, [1.0, 1.0], 1)
    torch.testing.assert_close(run(method, [1.0, 1.0], 3), torch.ones(2, dtype=torch.float64))


def test_epochs_cannot_go_back() -> None:
    method = make()
    run(method, [1.0, 1.0], 2)
    with pytest.raises(ValueError, match="epoch went back"):
        run(method, [1.0, 1.0], 1)


def test_works_in_the_dtype_of_the_losses() -> None:
    method = make()
    for epoch in range(4):
        combination = method.combine(step_input(losses=torch.tensor([1.0, 2.0]) / (epoch + 1), epoch=epoch))
        assert combination.loss_weights is not None and combination.loss_weights.dtype == torch.float32


@pytest.mark.parametrize(
    ("options", "message"),
    [({"temperature": 0.0}, "temperature"), ({"temperature": -2.0}, "temperature"), ({"T": 2.0}, "'T'")],
)
def test_bad_options_are_rejected(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        methods.get("dwa", **options)


def test_setup_resets_the_state() -> None:
    method = make()
    for epoch in range(3):
        run(method, [1.0 / (epoch + 1), 1.0], epoch)
    method.setup(("task0", "task1"))
    assert method.epoch is None and method.count == 0 and method.averages == {}
    torch.testing.assert_close(run(method, [1.0, 1.0], 2), torch.ones(2, dtype=torch.float64))


def test_state_round_trip_continues_identically() -> None:
    generator = torch.Generator().manual_seed(3)
    stream = [(torch.rand(3, generator=generator, dtype=torch.float64) + 0.1) / (1 + i // 3) for i in range(18)]
    first = make(tasks=3)
    for step in range(7):
        first.combine(step_input(losses=stream[step], epoch=step // 3, step=step))
    second = make(tasks=3)
    second.load_state_dict(first.state_dict())
    for step in range(7, 18):
        a = first.combine(step_input(losses=stream[step], epoch=step // 3, step=step))
        b = second.combine(step_input(losses=stream[step], epoch=step // 3, step=step))
        assert a.loss_weights is not None and b.loss_weights is not None
        assert torch.equal(a.loss_weights, b.loss_weights)
    assert a.loss_weights is not None and not torch.equal(a.loss_weights, torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="state keys"):
        second.load_state_dict({"epoch": 0})


def test_training_decreases_the_loss() -> None:
    total = total_train_loss(train_digits("dwa", epochs=4))
    assert total.iloc[-1] < 0.6 * total.iloc[0]
