"""GradVac (Wang et al., ICLR 2021): hand-computed corrections, EMA targets, state, agreement with TorchJD."""

from __future__ import annotations

import math

import pytest
import torch

import mtlscope.methods.gradvac  # noqa: F401  (registration)
from mtlscope import methods
from mtlscope.methods import gradvac, pcgrad, umtg
from tests.methods.helpers import random_jacobian, step_input, total_train_loss, train_digits


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


def test_hand_computed_orthogonal_pair() -> None:
    # g1 = [1, 0], g2 = [0, 1]: cos = 0 < target 0.5, so each gets tan(30 deg) = 1/sqrt(3) of the other:
    # w = |g_i| (0.5 * 1 - 0 * sqrt(0.75)) / (|g_j| sqrt(0.75)) = 1/sqrt(3); cos(g1 + w g2, g2) = 0.5.
    jacobian = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    targets = torch.tensor([[0.0, 0.5], [0.5, 0.0]], dtype=torch.float64)
    w, new_targets = gradvac.weights(jacobian, targets, beta=0.1, eps=0.0)
    expected = 1.0 + 1.0 / math.sqrt(3.0)
    torch.testing.assert_close(w, torch.tensor([expected, expected], dtype=torch.float64))
    # EMA with the cosine measured before the correction (0): (1 - 0.1) * 0.5
    torch.testing.assert_close(new_targets, torch.tensor([[0.0, 0.45], [0.45, 0.0]], dtype=torch.float64))
    assert torch.equal(targets, torch.tensor([[0.0, 0.5], [0.5, 0.0]], dtype=torch.float64))  # not modified
    update, _ = gradvac.aggregate(jacobian, targets, beta=0.1, loss_scale=2.0, eps=0.0)
    torch.testing.assert_close(update, torch.tensor([expected, expected], dtype=torch.float64) / 2.0)


def test_correction_reaches_the_target_cosine_k2() -> None:
    for seed in range(20):
        jacobian = random_jacobian(2, 15, seed=seed)
        phi = cosine(jacobian[0], jacobian[1])
        target = min(phi + 0.3, 0.95)
        targets = torch.tensor([[0.0, target], [target, 0.0]], dtype=torch.float64)
        w, new_targets = gradvac.weights(jacobian, targets, beta=0.01, eps=0.0)
        # K = 2: w_0 = 1 + (coefficient of g_0 in g_1^PC), w_1 = 1 + (coefficient of g_1 in g_0^PC)
        corrected_0 = jacobian[0] + (w[1] - 1.0) * jacobian[1]
        corrected_1 = jacobian[1] + (w[0] - 1.0) * jacobian[0]
        assert cosine(corrected_0, jacobian[1]) == pytest.approx(target, abs=1e-9)
        assert cosine(corrected_1, jacobian[0]) == pytest.approx(target, abs=1e-9)
        assert float(new_targets[0, 1]) == pytest.approx(0.99 * target + 0.01 * phi)


def test_no_correction_above_target() -> None:
    jacobian = random_jacobian(3, 10, seed=3)
    targets = torch.full((3, 3), -1.0, dtype=torch.float64)  # every cosine is >= -1
    w, new_targets = gradvac.weights(jacobian, targets, torch.Generator().manual_seed(0), beta=0.5)
    torch.testing.assert_close(w, torch.ones(3, dtype=torch.float64))
    gram = jacobian @ jacobian.T
    norms = gram.diagonal().sqrt()
    cosines = gram / (norms[:, None] * norms[None, :] + 1e-8)
    off = ~torch.eye(3, dtype=torch.bool)
    torch.testing.assert_close(new_targets[off], (0.5 * -1.0 + 0.5 * cosines)[off])


def test_first_step_with_zero_targets_is_pcgrad() -> None:
    for num_tasks in (2, 3, 6):
        jacobian = random_jacobian(num_tasks, 25, seed=num_tasks)
        update, _ = gradvac.aggregate(jacobian, eps=0.0)  # index order, like pcgrad with generator=None
        torch.testing.assert_close(update, pcgrad.aggregate(jacobian))


def test_equal_gradients_give_umtg() -> None:
    g = random_jacobian(1, 20, seed=1)
    for num_tasks in (2, 4):
        targets = None
        generator = torch.Generator().manual_seed(0)
        for step in range(5):
            jacobian = (1.0 + step) * g.expand(num_tasks, -1).clone()
            for loss_scale in (1.0, math.sqrt(num_tasks), float(num_tasks)):
                update, new_targets = gradvac.aggregate(jacobian, targets, generator, beta=0.5, loss_scale=loss_scale)
                torch.testing.assert_close(update, umtg.aggregate(jacobian, loss_scale), rtol=1e-7, atol=1e-9)
            targets = new_targets


@pytest.mark.parametrize("num_tasks", [2, 3, 5])
@pytest.mark.parametrize("beta", [0.01, 0.5])
def test_agrees_with_torchjd_over_steps(num_tasks: int, beta: float) -> None:
    torchjd = pytest.importorskip(
        "torchjd", reason="TorchJD not installed: agreement with the reference implementation not checked"
    )
    from torchjd.aggregation import GradVac

    assert torchjd is not None
    reference = GradVac(beta=beta)
    # TorchJD draws randperm(K - 1) per task from the global generator, as we do from ours
    torch.manual_seed(123)
    generator = torch.Generator().manual_seed(123)
    targets = None
    for step in range(8):
        jacobian = random_jacobian(num_tasks, 30, seed=step)
        expected = reference(jacobian)
        ours, targets = gradvac.aggregate(jacobian, targets, generator, beta=beta)
        torch.testing.assert_close(ours, expected)


def test_weights_times_jacobian_is_aggregate_and_dtype() -> None:
    jacobian = random_jacobian(4, 12, seed=2, dtype=torch.float32)
    targets = torch.full((4, 4), 0.3, dtype=torch.float64)
    w, _ = gradvac.weights(jacobian, targets, torch.Generator().manual_seed(5), beta=0.2, loss_scale=2.0)
    d, _ = gradvac.aggregate(jacobian, targets, torch.Generator().manual_seed(5), beta=0.2, loss_scale=2.0)
    assert w.dtype == torch.float32 and d.dtype == torch.float32
    torch.testing.assert_close(w @ jacobian, d)


def test_method_matches_pure_function_and_uses_generator_only() -> None:
    method = methods.get("gradvac", beta=0.3)
    assert method.needs == frozenset({"jacobian"})
    method.setup(tuple(f"task{k}" for k in range(3)))
    targets = None
    for step in range(4):
        jacobian = random_jacobian(3, 10, seed=10 + step)
        global_state = torch.get_rng_state()
        combination = method.combine(step_input(jacobian, loss_scale=3.0, step=step, seed=step))
        assert torch.equal(torch.get_rng_state(), global_state)
        expected, targets = gradvac.aggregate(
            jacobian, targets, torch.Generator().manual_seed(step), beta=0.3, loss_scale=3.0
        )
        assert combination.shared_gradient is not None
        torch.testing.assert_close(combination.shared_gradient, expected)
        assert set(combination.diagnostics) == {
            "weight/task0",
            "weight/task1",
            "weight/task2",
            "corrections",
            "target_mean",
        }
    assert targets is not None
    torch.testing.assert_close(method.state_dict()["targets"], targets)
    method.setup(("a", "b"))  # setup resets the targets
    assert torch.equal(method.state_dict()["targets"], torch.zeros(2, 2, dtype=torch.float64))


def test_state_round_trip() -> None:
    names = tuple(f"task{k}" for k in range(4))
    first = methods.get("gradvac", beta=0.2)
    first.setup(names)
    for step in range(3):
        first.combine(step_input(random_jacobian(4, 8, seed=step), step=step, seed=step))
    second = methods.get("gradvac", beta=0.2)
    second.setup(names)
    second.load_state_dict(first.state_dict())
    for step in range(3, 7):
        jacobian = random_jacobian(4, 8, seed=step)
        a = first.combine(step_input(jacobian, step=step, seed=step))
        b = second.combine(step_input(jacobian, step=step, seed=step))
        assert a.shared_gradient is not None and b.shared_gradient is not None
        assert torch.equal(a.shared_gradient, b.shared_gradient)
        assert a.diagnostics == b.diagnostics
    with pytest.raises(ValueError, match="targets"):
        second.load_state_dict({"targets": torch.zeros(3, 3)})
    with pytest.raises(ValueError, match="state keys"):
        second.load_state_dict({})


def test_bad_options() -> None:
    with pytest.raises(ValueError, match="beta"):
        methods.get("gradvac", beta=1.5)
    with pytest.raises(ValueError, match="eps"):
        methods.get("gradvac", eps=-1.0)
    with pytest.raises(ValueError, match="no option"):
        methods.get("gradvac", group_type=0)
    with pytest.raises(ValueError, match="loss_scale"):
        gradvac.aggregate(random_jacobian(2, 3), loss_scale=-1.0)
    with pytest.raises(ValueError, match="targets"):
        gradvac.aggregate(random_jacobian(2, 3), torch.zeros(3, 3))


def test_trains_digits() -> None:
    loss = total_train_loss(train_digits("gradvac"))
    assert loss.iloc[-1] < 0.6 * loss.iloc[0]


def test_degenerate_gradients_give_finite_updates() -> None:
    # a zero task gradient, or a target of exactly 1, admit no finite correction: none is made (even with eps = 0)
    targets = torch.full((2, 2), 0.5, dtype=torch.float64)
    update, _ = gradvac.aggregate(torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64), targets, eps=0.0)
    torch.testing.assert_close(update, torch.tensor([1.0, 0.0], dtype=torch.float64))
    parallel = torch.tensor([[1.0, 1.0], [2.0, 2.0]], dtype=torch.float64)
    update, _ = gradvac.aggregate(parallel, torch.ones(2, 2, dtype=torch.float64), eps=0.0)
    assert torch.isfinite(update).all()
