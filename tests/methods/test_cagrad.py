"""CAGrad (Liu et al., NeurIPS 2021): hand-computed cases, optimality (primal-dual) on random Jacobians,
the rescale option and the K/C scale, agreement with TorchJD's CAGrad, options, training."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

import mtlscope.methods.cagrad  # noqa: F401  (registration)
from mtlscope import methods
from mtlscope.methods import cagrad
from tests.methods.helpers import random_jacobian, step_input, total_train_loss, train_digits

F64 = torch.float64


def vec(*values: float) -> Tensor:
    return torch.tensor(values, dtype=F64)


def low_rank_jacobian(num_tasks: int, dim: int, rank: int, seed: int) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(num_tasks, rank, generator=generator, dtype=F64) @ torch.randn(
        rank, dim, generator=generator, dtype=F64
    )


def worst_decrease(jacobian: Tensor, d: Tensor) -> float:
    return float((jacobian @ d).min())


def test_hand_computed_orthogonal_pair() -> None:
    # g1 = (1, 0), g2 = (0, 1): by symmetry w* = (1/2, 1/2), g_w = g0 = (1/2, 1/2), d = (1 + c) g0
    jacobian = torch.eye(2, dtype=F64)
    torch.testing.assert_close(cagrad.aggregate(jacobian, 0.5, 0), vec(0.75, 0.75))
    torch.testing.assert_close(cagrad.aggregate(jacobian, 0.5, 1), vec(0.6, 0.6))  # / (1 + 0.25)
    torch.testing.assert_close(cagrad.aggregate(jacobian, 0.5, 2), vec(0.5, 0.5))  # / 1.5
    torch.testing.assert_close(cagrad.weights(jacobian, 0.5, 0), vec(0.75, 0.75))


def test_hand_computed_conflict() -> None:
    # g1 = (1, 0), g2 = (-2, 0): g0 = (-1/2, 0), radius c|g0| = 1/4. The dual F(w) = -x/2 + |x|/4 with
    # x = w1 - 2 w2 is minimal at w = (1, 0): g_w = g1, lambda = 1/4, d = g0 + g1/4 = (-1/4, 0), and the
    # worst decrease min(d_x, -2 d_x) = -1/4 equals F(w*).
    jacobian = torch.tensor([[1.0, 0.0], [-2.0, 0.0]], dtype=F64)
    d = cagrad.aggregate(jacobian, 0.5, 0)
    torch.testing.assert_close(d, vec(-0.25, 0.0))
    torch.testing.assert_close(cagrad.weights(jacobian, 0.5, 0), vec(0.5 + 0.25, 0.5))
    # exactly opposite equal gradients: g0 = 0, d = g0 = 0
    torch.testing.assert_close(cagrad.aggregate(torch.tensor([[1.0, 2.0], [-1.0, -2.0]], dtype=F64)), vec(0.0, 0.0))


CASES = [(2, 6), (3, 10), (5, 20), (10, 40), (10, 6)]


@pytest.mark.parametrize(("num_tasks", "dim"), CASES)
@pytest.mark.parametrize("c", [0.2, 0.5, 1.0])
def test_optimality_on_random_jacobians(num_tasks: int, dim: int, c: float) -> None:
    """d is on the ball |d - g0| = c|g0|, its worst decrease min_i g_i.d equals the dual value F(w*)
    (strong duality), and no other point of the ball does better."""
    generator = torch.Generator().manual_seed(num_tasks * 100 + dim)
    for seed in range(6):
        jacobian = random_jacobian(num_tasks, dim, seed) * torch.exp(
            torch.randn(num_tasks, 1, generator=generator, dtype=F64)
        )
        if seed % 3 == 2:
            jacobian = low_rank_jacobian(num_tasks, dim, 2, seed)
        g0 = jacobian.mean(dim=0)
        radius = c * float(g0.norm())
        d = cagrad.aggregate(jacobian, c, 0)
        scale = float(jacobian.norm(dim=1).max() ** 2)
        assert float((d - g0).norm()) == pytest.approx(radius, rel=1e-9)
        gramian = (jacobian @ jacobian.T).numpy()
        w, _ = cagrad.dual_weights(gramian, c)
        assert (w >= 0).all() and w.sum() == pytest.approx(1.0)
        g_w = torch.as_tensor(w) @ jacobian
        dual_value = float(g_w @ g0) + radius * float(g_w.norm())
        assert worst_decrease(jacobian, d) == pytest.approx(dual_value, abs=1e-5 * scale)
        torch.testing.assert_close(d, g0 + (radius / g_w.norm()) * g_w, atol=1e-12 * scale**0.5, rtol=1e-9)
        # random points of the ball (directions from the seeded generator)
        directions = torch.randn(4000, dim, generator=generator, dtype=F64)
        directions /= directions.norm(dim=1, keepdim=True)
        radii = radius * torch.rand(4000, 1, generator=generator, dtype=F64) ** (1 / dim)
        others = g0 + radii * directions
        assert float((others @ jacobian.T).min(dim=1).values.max()) <= worst_decrease(jacobian, d) + 1e-6 * scale


@pytest.mark.parametrize("rescale", [0, 1, 2])
def test_c_zero_is_the_umtg(rescale: int) -> None:
    jacobian = random_jacobian(4, 9, 3)
    torch.testing.assert_close(cagrad.aggregate(jacobian, 0.0, rescale), jacobian.mean(dim=0))
    method = methods.get("cagrad", c=0.0, rescale=rescale)
    method.setup(tuple(f"task{k}" for k in range(4)))
    combination = method.combine(step_input(jacobian, loss_scale=2.0))
    assert combination.shared_gradient is not None
    torch.testing.assert_close(combination.shared_gradient, jacobian.sum(dim=0) / 2.0)


@pytest.mark.parametrize("loss_scale", [1.0, 2.0, 3.0])
@pytest.mark.parametrize(("rescale", "factor"), [(0, 1.5), (1, 1.5 / 1.25), (2, 1.0)])
def test_equal_task_gradients_give_the_documented_multiple_of_the_umtg(
    rescale: int, factor: float, loss_scale: float
) -> None:
    method = methods.get("cagrad", c=0.5, rescale=rescale)
    method.setup(("a", "b", "c"))
    jacobian = random_jacobian(1, 5, 1).repeat(3, 1)
    combination = method.combine(step_input(jacobian, loss_scale=loss_scale))
    assert combination.shared_gradient is not None
    torch.testing.assert_close(combination.shared_gradient, factor * jacobian.sum(dim=0) / loss_scale)


def test_combine_is_k_over_c_times_aggregate() -> None:
    method = methods.get("cagrad")
    assert method.needs == frozenset({"jacobian"})
    method.setup(("a", "b", "c"))
    jacobian = random_jacobian(3, 12, 9)
    combination = method.combine(step_input(jacobian, loss_scale=1.0))
    assert combination.shared_gradient is not None
    torch.testing.assert_close(combination.shared_gradient, 3 * cagrad.aggregate(jacobian, 0.5, 1))
    coefficients = 3 * cagrad.weights(jacobian, 0.5, 1)
    assert [combination.diagnostics[f"weight/task{k}"] for k in range(3)] == pytest.approx(coefficients.tolist())
    _, lam = cagrad.dual_weights((jacobian @ jacobian.T).numpy(), 0.5)
    # lambda is computed on the Gramian scaled to a unit mean diagonal: c|g0| / |g_w| is scale-free
    assert combination.diagnostics["lambda"] == pytest.approx(lam)
    assert method.state_dict() == {}


def test_scale_invariance_and_float32() -> None:
    jacobian = random_jacobian(4, 10, 5)
    torch.testing.assert_close(cagrad.aggregate(1000 * jacobian), 1000 * cagrad.aggregate(jacobian), rtol=1e-6, atol=0)
    single = cagrad.aggregate(jacobian.float())
    assert single.dtype == torch.float32
    torch.testing.assert_close(single, cagrad.aggregate(jacobian).float(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("num_tasks", "dim"), [(2, 6), (3, 10), (5, 20), (10, 40), (10, 6)])
def test_agrees_with_torchjd(num_tasks: int, dim: int) -> None:
    pytest.importorskip(
        "torchjd", reason="TorchJD not installed: agreement with the reference implementation not checked"
    )
    pytest.importorskip("cvxpy", reason="cvxpy not installed: TorchJD's CAGrad cannot run, agreement not checked")
    from torchjd.aggregation import CAGrad

    # TorchJD returns d = g0 + lambda g_w at the scale of the mean, without rescaling: our rescale = 0.
    # It solves the dual with Clarabel (tolerance about 1e-8 on the Frobenius-normalized Gramian), we with
    # SLSQP: they agree to about 1e-5 relative (1e-4 when K > P, where TorchJD's answer is the less accurate
    # one: its worst-task decrease is further below the dual value), and ours is never worse.
    for seed in range(5):
        jacobian = random_jacobian(num_tasks, dim, seed)
        ours = cagrad.aggregate(jacobian, 0.5, 0)
        theirs = CAGrad(c=0.5)(jacobian)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=5e-4 * float(theirs.norm()))
        scale = float(jacobian.norm(dim=1).max() ** 2)
        assert worst_decrease(jacobian, ours) >= worst_decrease(jacobian, theirs) - 1e-7 * scale


def test_option_validation() -> None:
    for bad in (-0.1, math.nan, "big", True):
        with pytest.raises(ValueError, match=r"method\.c"):
            methods.get("cagrad", c=bad)
    for bad_rescale in (3, -1, 0.5, True, "1"):
        with pytest.raises(ValueError, match=r"method\.rescale"):
            methods.get("cagrad", rescale=bad_rescale)
    with pytest.raises(ValueError, match="has no option"):
        methods.get("cagrad", alpha=0.5)
    with pytest.raises(ValueError, match=r"method\.c"):
        cagrad.aggregate(random_jacobian(2, 3), c=-1.0)


def test_trains_digits() -> None:
    total = total_train_loss(train_digits("cagrad"))
    assert total.iloc[-1] < 0.6 * total.iloc[0]
