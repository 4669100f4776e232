"""Aligned-MTL (Senushkin et al., CVPR 2023): the aligned system is orthogonal with equal norms, hand-computed
cases, scale modes, the K/C scale, agreement with TorchJD's AlignedMTL, options, training."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

import mtlscope.methods.aligned_mtl  # noqa: F401  (registration)
from mtlscope import methods
from mtlscope.methods import aligned_mtl
from tests.methods.helpers import random_jacobian, step_input, total_train_loss, train_digits

F64 = torch.float64


def vec(*values: float) -> Tensor:
    return torch.tensor(values, dtype=F64)


def expected_sigma(gramian: Tensor, scale_mode: str) -> Tensor:
    eigenvalues = torch.linalg.eigvalsh(gramian)
    kept = eigenvalues[eigenvalues > eigenvalues.max() * gramian.shape[0] * torch.finfo(F64).eps]
    return {"min": kept.min(), "median": kept.median(), "rmse": kept.mean()}[scale_mode]


@pytest.mark.parametrize("scale_mode", ["min", "median", "rmse"])
@pytest.mark.parametrize(("num_tasks", "dim"), [(2, 5), (3, 10), (5, 20), (10, 40)])
def test_aligned_gradients_are_orthogonal_with_equal_norms(num_tasks: int, dim: int, scale_mode: str) -> None:
    for seed in range(8):
        jacobian = random_jacobian(num_tasks, dim, seed) * torch.linspace(0.1, 10, num_tasks, dtype=F64)[:, None]
        gramian = jacobian @ jacobian.T
        balance, rank = aligned_mtl.balance_matrix(gramian, scale_mode)  # type: ignore[arg-type]
        assert rank == num_tasks
        torch.testing.assert_close(balance, balance.T)
        aligned = balance @ jacobian
        sigma = expected_sigma(gramian, scale_mode)
        torch.testing.assert_close(
            aligned @ aligned.T, sigma * torch.eye(num_tasks, dtype=F64), atol=1e-9 * float(sigma), rtol=0
        )
        torch.testing.assert_close(aligned_mtl.aggregate(jacobian, scale_mode), aligned.mean(dim=0))  # type: ignore[arg-type]


def test_rank_deficient_gradients_are_aligned_on_their_span() -> None:
    base = random_jacobian(3, 8, 2)
    jacobian = torch.cat([base, base[:1] + base[1:2]])  # rank 3 of 4
    gramian = jacobian @ jacobian.T
    balance, rank = aligned_mtl.balance_matrix(gramian)
    assert rank == 3
    aligned = balance @ jacobian
    eigenvalues, eigenvectors = torch.linalg.eigh(gramian)
    span = eigenvectors[:, 1:]  # the kept eigenvectors (the smallest eigenvalue is ~0)
    sigma = eigenvalues[1]
    torch.testing.assert_close(aligned @ aligned.T, sigma * span @ span.T, atol=1e-9 * float(sigma), rtol=0)
    # no non-zero gradient: identity balance, zero update
    zero_balance, zero_rank = aligned_mtl.balance_matrix(torch.zeros(3, 3, dtype=F64))
    assert zero_rank == 0
    torch.testing.assert_close(zero_balance, torch.eye(3, dtype=F64))
    torch.testing.assert_close(aligned_mtl.aggregate(torch.zeros(3, 4, dtype=F64)), torch.zeros(4, dtype=F64))


def test_hand_computed_orthogonal_gradients() -> None:
    # g1 = (1, 0), g2 = (0, 2): eigenvalues 1, 4. min: sigma = 1, B = diag(1, 1/2), aligned (1, 0), (0, 1)
    jacobian = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=F64)
    torch.testing.assert_close(aligned_mtl.weights(jacobian), vec(0.5, 0.25))
    torch.testing.assert_close(aligned_mtl.aggregate(jacobian), vec(0.5, 0.5))
    # median = lower middle value = 1 (torch.median), the same here
    torch.testing.assert_close(aligned_mtl.aggregate(jacobian, "median"), vec(0.5, 0.5))
    # rmse: sigma = mean = 2.5, aligned vectors of norm sqrt(2.5)
    torch.testing.assert_close(aligned_mtl.aggregate(jacobian, "rmse"), vec(0.5, 0.5) * 2.5**0.5)


def test_hand_computed_correlated_pair() -> None:
    # g1 = (1, 0), g2 = (1, 1): G = [[1, 1], [1, 2]], eigenvalues (3 -+ sqrt 5)/2. With sigma = lambda_min the
    # aligned pair is orthonormal up to sqrt(lambda_min); check against the explicit formula.
    jacobian = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=F64)
    gramian = jacobian @ jacobian.T
    eigenvalues, eigenvectors = torch.linalg.eigh(gramian)
    balance = eigenvalues[0].sqrt() * eigenvectors @ torch.diag(eigenvalues.rsqrt()) @ eigenvectors.T
    torch.testing.assert_close(aligned_mtl.weights(jacobian), balance.sum(dim=1) / 2)
    torch.testing.assert_close(
        aligned_mtl.balance_matrix(gramian)[0] @ gramian @ aligned_mtl.balance_matrix(gramian)[0],
        eigenvalues[0] * torch.eye(2, dtype=F64),
    )


@pytest.mark.parametrize("scale_mode", ["min", "median", "rmse"])
@pytest.mark.parametrize(("num_tasks", "dim"), [(2, 5), (3, 10), (5, 20), (10, 40), (6, 3)])
def test_agrees_with_torchjd(num_tasks: int, dim: int, scale_mode: str) -> None:
    pytest.importorskip(
        "torchjd", reason="TorchJD not installed: agreement with the reference implementation not checked"
    )
    from torchjd.aggregation import AlignedMTL

    # TorchJD averages the aligned gradients (preference vector 1/K), as our pure functions; (6, 3) is
    # rank-deficient (same rank tolerance, lambda_max * K * eps).
    for seed in range(6):
        jacobian = random_jacobian(num_tasks, dim, seed)
        reference = AlignedMTL(scale_mode=scale_mode)(jacobian)  # type: ignore[arg-type]
        torch.testing.assert_close(aligned_mtl.aggregate(jacobian, scale_mode), reference)  # type: ignore[arg-type]


@pytest.mark.parametrize("loss_scale", [1.0, 2.0, 3.0])
@pytest.mark.parametrize("scale_mode", ["min", "median", "rmse"])
def test_equals_umtg_when_all_task_gradients_are_equal(scale_mode: str, loss_scale: float) -> None:
    method = methods.get("aligned_mtl", scale_mode=scale_mode)
    method.setup(("a", "b", "c"))
    jacobian = random_jacobian(1, 6, 4).repeat(3, 1)
    combination = method.combine(step_input(jacobian, loss_scale=loss_scale))
    assert combination.shared_gradient is not None
    torch.testing.assert_close(combination.shared_gradient, jacobian.sum(dim=0) / loss_scale)
    assert combination.diagnostics["rank"] == 1.0


def test_combine_sums_the_aligned_gradients_divided_by_c() -> None:
    method = methods.get("aligned_mtl")
    assert method.needs == frozenset({"jacobian"})
    method.setup(("a", "b", "c"))
    jacobian = random_jacobian(3, 10, 6)
    balance, _ = aligned_mtl.balance_matrix(jacobian @ jacobian.T)
    for loss_scale in (1.0, 3.0):
        combination = method.combine(step_input(jacobian, loss_scale=loss_scale))
        assert combination.shared_gradient is not None
        # C = 1: the official code's sum of the aligned gradients; C = K: TorchJD's average
        torch.testing.assert_close(combination.shared_gradient, (balance @ jacobian).sum(dim=0) / loss_scale)
        torch.testing.assert_close(combination.shared_gradient, (3 / loss_scale) * aligned_mtl.aggregate(jacobian))
        coefficients = balance.sum(dim=1) / loss_scale
        assert [combination.diagnostics[f"weight/task{k}"] for k in range(3)] == pytest.approx(coefficients.tolist())
        assert combination.diagnostics["rank"] == 3.0
    assert method.state_dict() == {}


def test_float32_inputs() -> None:
    jacobian = random_jacobian(4, 12, 3, dtype=torch.float32)
    out = aligned_mtl.aggregate(jacobian)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, aligned_mtl.aggregate(jacobian.double()).float(), rtol=1e-4, atol=1e-5)


def test_option_validation() -> None:
    with pytest.raises(ValueError, match=r"method\.scale_mode"):
        methods.get("aligned_mtl", scale_mode="mean")
    with pytest.raises(ValueError, match="has no option"):
        methods.get("aligned_mtl", pref_vector=[1, 1])
    with pytest.raises(ValueError, match=r"method\.scale_mode"):
        aligned_mtl.weights(random_jacobian(2, 3), "max")  # type: ignore[arg-type]


def test_trains_digits() -> None:
    total = total_train_loss(train_digits("aligned_mtl"))
    assert total.iloc[-1] < 0.6 * total.iloc[0]
