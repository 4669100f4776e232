"""GradDrop (Chen et al., NeurIPS 2020): masks by hand, sign consistency, expectation, agreement with TorchJD."""

from __future__ import annotations

import math

import pytest
import torch

import mtlscope.methods.graddrop  # noqa: F401  (registration)
from mtlscope import methods
from mtlscope.methods import graddrop, umtg
from tests.methods.helpers import random_jacobian, step_input, total_train_loss, train_digits


def test_masks_by_hand() -> None:
    # columns: purities P = 1/2 (1 + sum / sum|.|)
    #   col 0: [ 1, -3] -> P = 0.25;  col 1: [2, 2] -> P = 1;  col 2: [-1, -1] -> P = 0;  col 3: [0, 0] -> P = 0.5
    #   col 4: [ 3, -1] -> P = 0.75
    jacobian = torch.tensor([[1.0, 2.0, -1.0, 0.0, 3.0], [-3.0, 2.0, -1.0, 0.0, -1.0]], dtype=torch.float64)
    uniform = torch.tensor([0.5, 0.5, 0.5, 0.5, 0.9], dtype=torch.float64)
    # col 0: P < U -> negatives survive; col 1: positives; col 2: negatives; col 3: nothing (zeros);
    # col 4: P = 0.75 < 0.9 -> negatives survive
    expected = torch.tensor([[False, True, True, False, False], [True, True, True, False, True]])
    assert torch.equal(graddrop.masks(jacobian, uniform), expected)
    uniform = torch.tensor([0.1, 0.5, 0.5, 0.5, 0.1], dtype=torch.float64)
    expected = torch.tensor([[True, True, True, False, True], [False, True, True, False, False]])
    assert torch.equal(graddrop.masks(jacobian, uniform), expected)


def test_leak_zero_keeps_one_sign_per_coordinate_and_leak_one_is_sum() -> None:
    for seed in range(5):
        jacobian = random_jacobian(4, 200, seed=seed)
        generator = torch.Generator().manual_seed(seed)
        update = graddrop.aggregate(jacobian, generator)
        mask = graddrop.masks(
            jacobian, torch.rand(200, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        )
        kept = torch.where(mask, jacobian, 0.0)
        assert not ((kept > 0).any(0) & (kept < 0).any(0)).any()  # one sign per coordinate
        torch.testing.assert_close(update, kept.sum(0))
        torch.testing.assert_close(graddrop.aggregate(jacobian, generator, leak=1.0), jacobian.sum(0))
        # a leak l keeps l of every dropped component
        leaks = torch.tensor([0.0, 0.2, 0.5, 1.0], dtype=torch.float64)
        partial = graddrop.aggregate(jacobian, torch.Generator().manual_seed(seed), leak=leaks)
        expected = ((leaks[:, None] + (1 - leaks[:, None]) * mask) * jacobian).sum(0)
        torch.testing.assert_close(partial, expected)


def test_expectation_over_draws() -> None:
    # E[update_p] = P_p S+_p + (1 - P_p) S-_p for leak 0 (sign-consistency property of the paper)
    jacobian = torch.tensor([[1.0, 2.0, -0.5], [-3.0, 1.0, 1.5], [0.5, -1.0, -2.0]], dtype=torch.float64)
    positive = jacobian.clamp(min=0).sum(0)
    negative = jacobian.clamp(max=0).sum(0)
    purity = 0.5 * (1 + jacobian.sum(0) / jacobian.abs().sum(0))
    expected = purity * positive + (1 - purity) * negative
    generator = torch.Generator().manual_seed(0)
    draws = 4000
    samples = torch.stack([graddrop.aggregate(jacobian, generator) for _ in range(draws)])
    # each coordinate is S+ with probability P and S- otherwise: check mean within 5 standard errors
    std = ((positive - negative) * torch.sqrt(purity * (1 - purity))) / math.sqrt(draws)
    assert ((samples.mean(0) - expected).abs() <= 5 * std).all()
    frequency_positive = (samples == positive).double().mean(0)
    assert ((frequency_positive - purity).abs() < 0.04).all()


def test_equal_gradients_give_umtg() -> None:
    g = random_jacobian(1, 300, seed=3)
    for num_tasks in (2, 5):
        jacobian = g.expand(num_tasks, -1).clone()
        for loss_scale in (1.0, math.sqrt(num_tasks), float(num_tasks)):
            update = graddrop.aggregate(jacobian, torch.Generator().manual_seed(1), loss_scale=loss_scale)
            torch.testing.assert_close(update, umtg.aggregate(jacobian, loss_scale))


@pytest.mark.parametrize("num_tasks", [2, 3, 7])
def test_agrees_with_torchjd(num_tasks: int) -> None:
    torchjd = pytest.importorskip(
        "torchjd", reason="TorchJD not installed: agreement with the reference implementation not checked"
    )
    from torchjd.aggregation import GradDrop

    assert torchjd is not None
    for seed in range(4):
        for dtype in (torch.float32, torch.float64):
            jacobian = random_jacobian(num_tasks, 500, seed=seed, dtype=dtype)
            leak = torch.linspace(0.0, 0.6, num_tasks, dtype=dtype)
            # TorchJD draws U = torch.rand(P) (matrix dtype) from the global generator; we draw the same from ours
            torch.manual_seed(seed)
            expected = GradDrop()(jacobian)
            torch.testing.assert_close(graddrop.aggregate(jacobian, torch.Generator().manual_seed(seed)), expected)
            torch.manual_seed(seed)
            expected = GradDrop(leak=leak)(jacobian)
            torch.testing.assert_close(
                graddrop.aggregate(jacobian, torch.Generator().manual_seed(seed), leak), expected
            )


def test_loss_scale_and_dtype() -> None:
    jacobian = random_jacobian(3, 50, seed=4, dtype=torch.float32)
    a = graddrop.aggregate(jacobian, torch.Generator().manual_seed(2))
    b = graddrop.aggregate(jacobian, torch.Generator().manual_seed(2), loss_scale=3.0)
    assert a.dtype == torch.float32 and a.shape == (50,)
    torch.testing.assert_close(b, a / 3.0)


def test_method_uses_step_generator_and_leak_per_task() -> None:
    method = methods.get("graddrop", leak={"task1": 0.5})
    assert method.needs == frozenset({"jacobian"})
    method.setup(("task0", "task1", "task2"))
    jacobian = random_jacobian(3, 40, seed=6)
    global_state = torch.get_rng_state()
    combination = method.combine(step_input(jacobian, loss_scale=2.0, seed=8))
    assert torch.equal(torch.get_rng_state(), global_state)
    expected = graddrop.aggregate(jacobian, torch.Generator().manual_seed(8), [0.0, 0.5, 0.0], loss_scale=2.0)
    assert combination.shared_gradient is not None
    torch.testing.assert_close(combination.shared_gradient, expected)
    assert 0.0 < combination.diagnostics["kept_frac"] < 1.0
    # different draws on different steps
    other = method.combine(step_input(jacobian, loss_scale=2.0, seed=9))
    assert other.shared_gradient is not None
    assert not torch.equal(other.shared_gradient, combination.shared_gradient)


def test_bad_options() -> None:
    with pytest.raises(ValueError, match="leak"):
        methods.get("graddrop", leak=1.5)
    with pytest.raises(ValueError, match=r"leak: expected a number in \[0, 1\] or a mapping of names to numbers"):
        methods.get("graddrop", leak={"a": -0.1})
    method = methods.get("graddrop", leak={"nope": 0.1})
    with pytest.raises(ValueError, match="nope"):
        method.setup(("task0", "task1"))
    with pytest.raises(ValueError, match="one leak per task"):
        graddrop.aggregate(random_jacobian(2, 3), torch.Generator(), [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="loss_scale"):
        graddrop.aggregate(random_jacobian(2, 3), torch.Generator(), loss_scale=0.0)


def test_trains_digits() -> None:
    loss = total_train_loss(train_digits("graddrop"))
    assert loss.iloc[-1] < 0.6 * loss.iloc[0]
