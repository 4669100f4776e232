"""Nash-MTL (Navon et al., ICML 2022): the bargaining fixed point, the original's values, clipping, C, state."""

from __future__ import annotations

import math

import pytest
import torch

import mtlscope.methods.nash_mtl  # noqa: F401  (registration)
from mtlscope import methods
from mtlscope.methods import nash_mtl, umtg
from tests.methods.helpers import random_jacobian, step_input, total_train_loss, train_digits


def fixed_point_residual(jacobian: torch.Tensor, alpha: torch.Tensor) -> float:
    return float((alpha * (jacobian @ jacobian.T @ alpha) - 1.0).abs().max())


def test_two_task_closed_form() -> None:
    # g1 = [1, 0], g2 = [-1, 1]: G = [[1, -1], [-1, 2]]; a1 (a1 - a2) = 1, a2 (2 a2 - a1) = 1
    # -> a1 = sqrt(2) a2, a2 = 1 / sqrt(2 - sqrt(2)).
    # (The original CCP fails here from its start alpha = 1, where g1 . d = 0 makes its linearization
    # infinite, and returns alpha = 1 unchanged; see the module docstring.)
    jacobian = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)
    a2 = 1.0 / math.sqrt(2.0 - math.sqrt(2.0))
    solution = nash_mtl.solve(jacobian @ jacobian.T)
    assert solution.accepted
    torch.testing.assert_close(solution.alpha, torch.tensor([math.sqrt(2.0) * a2, a2], dtype=torch.float64))
    unclipped = nash_mtl.aggregate(jacobian, max_norm=0.0)
    torch.testing.assert_close(unclipped, solution.alpha @ jacobian)
    assert float(unclipped.norm()) == pytest.approx(math.sqrt(2.0))


# alpha computed by the original implementation (github.com/AvivNavon/nash-mtl, methods/weight_methods.py,
# NashMTL with optim_niter=20, cvxpy 1.9 + ECOS) from its cold start, for these Jacobians
ORIGINAL = [
    (
        [[2.0, 1.0, 0.0, -1.0], [0.5, -1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]],
        [0.34845964221262055, 0.62479136072377, 0.38950747179061596],
    ),
    (
        [
            [0.3, -0.2, 0.1, 0.0, 0.5],
            [-0.1, 0.4, 0.0, 0.2, 0.1],
            [0.0, 0.1, -0.3, 0.2, 0.2],
            [0.2, 0.2, 0.2, -0.1, 0.0],
        ],
        [1.453369361846633, 1.6523257974988248, 2.1703234887411194, 2.796641305775865],
    ),
]


@pytest.mark.parametrize(("matrix", "alpha"), ORIGINAL)
def test_matches_original_ccp(matrix: list[list[float]], alpha: list[float]) -> None:
    jacobian = torch.tensor(matrix, dtype=torch.float64)
    solution = nash_mtl.solve(jacobian @ jacobian.T)
    torch.testing.assert_close(solution.alpha, torch.tensor(alpha, dtype=torch.float64), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("num_tasks", [2, 3, 5, 8])
def test_fixed_point_and_invariants(num_tasks: int) -> None:
    for seed in range(5):
        jacobian = random_jacobian(num_tasks, 40, seed=seed) + random_jacobian(1, 40, seed=99)  # mostly aligned
        solution = nash_mtl.solve(jacobian @ jacobian.T, optim_niter=200)
        assert solution.accepted and (solution.alpha > 0).all()
        assert fixed_point_residual(jacobian, solution.alpha) < 1e-6
        direction = solution.alpha @ jacobian
        assert float(direction @ direction) == pytest.approx(num_tasks, rel=1e-6)  # |d|^2 = K
        assert (jacobian @ direction > 0).all()  # every task improves
        # scale-free: alpha(c J) = alpha(J) / c
        scaled = nash_mtl.solve(1e-4 * jacobian @ jacobian.T, optim_niter=200)
        torch.testing.assert_close(scaled.alpha, solution.alpha / 1e-2, rtol=1e-5, atol=0.0)


def test_clipping_and_loss_scale() -> None:
    jacobian = random_jacobian(3, 30, seed=1) + random_jacobian(1, 30, seed=2)
    unclipped = nash_mtl.aggregate(jacobian, max_norm=0.0, optim_niter=200)
    assert float(unclipped.norm()) == pytest.approx(math.sqrt(3.0), rel=1e-6)
    clipped = nash_mtl.aggregate(jacobian, optim_niter=200)  # max_norm = 1 (default)
    torch.testing.assert_close(clipped, unclipped / (unclipped.norm() + 1e-6))
    torch.testing.assert_close(nash_mtl.aggregate(jacobian, max_norm=5.0, optim_niter=200), unclipped)
    for loss_scale in (2.0, 3.0):
        torch.testing.assert_close(nash_mtl.aggregate(jacobian, loss_scale, optim_niter=200), clipped / loss_scale)
    w = nash_mtl.weights(jacobian, 2.0, optim_niter=200)
    torch.testing.assert_close(w @ jacobian, clipped / 2.0)


def test_equal_gradients_give_scaled_umtg() -> None:
    g = random_jacobian(1, 25, seed=4)
    for num_tasks in (2, 3, 6):
        jacobian = g.expand(num_tasks, -1).clone()
        for loss_scale in (1.0, math.sqrt(num_tasks), float(num_tasks)):
            reference = umtg.aggregate(jacobian, loss_scale)
            for max_norm in (0.0, 1.0, 100.0):
                norm = math.sqrt(num_tasks) if max_norm == 0 else min(math.sqrt(num_tasks), max_norm)
                expected = reference * norm / (num_tasks * float(g.norm()))
                update = nash_mtl.aggregate(jacobian, loss_scale, max_norm, optim_niter=100)
                torch.testing.assert_close(update, expected, rtol=2e-6, atol=1e-9)


def test_degenerate_cases_keep_previous_weights() -> None:
    method = methods.get("nash_mtl", max_norm=0.0)
    method.setup(("task0", "task1"))
    good = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    first = method.combine(step_input(good))
    assert first.diagnostics["accepted"] == 1.0
    alpha = torch.tensor([1.0, 0.5], dtype=torch.float64)  # orthogonal: alpha_k = 1 / |g_k|
    torch.testing.assert_close(first.shared_gradient, alpha @ good)
    # exactly opposite gradients: no d improves both tasks, no solution; the original keeps its alpha
    opposite = torch.tensor([[1.0, 1.0], [-1.0, -1.0]], dtype=torch.float64)
    second = method.combine(step_input(opposite))
    assert second.diagnostics["accepted"] == 0.0
    torch.testing.assert_close(second.shared_gradient, alpha @ opposite)
    # a zero task gradient: same
    zero = torch.tensor([[1.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
    third = method.combine(step_input(zero))
    assert third.diagnostics["accepted"] == 0.0
    torch.testing.assert_close(third.shared_gradient, alpha @ zero)
    # a zero Jacobian gives a zero update, no NaN
    zero_update = method.combine(step_input(torch.zeros(2, 3, dtype=torch.float64))).shared_gradient
    assert zero_update is not None and torch.equal(zero_update, torch.zeros(3, dtype=torch.float64))
    # pure function without a previous alpha: the fallback beta = 1, alpha = 1 / sqrt(|J J^T|_F)
    fallback = nash_mtl.solve(opposite @ opposite.T)
    assert not fallback.accepted
    torch.testing.assert_close(fallback.alpha, torch.full((2,), 1.0 / math.sqrt(4.0), dtype=torch.float64))


def test_update_weights_every_and_warm_start() -> None:
    method = methods.get("nash_mtl", update_weights_every=3, max_norm=0.0)
    method.setup(("task0", "task1", "task2"))
    rows = torch.tensor([[1.0], [10.0], [0.1]], dtype=torch.float64)  # solution far from the cold start
    jacobians = [rows * (0.3 * random_jacobian(3, 20, seed=s) + random_jacobian(1, 20, seed=50)) for s in range(6)]
    combinations = [method.combine(step_input(j, step=s)) for s, j in enumerate(jacobians)]
    solved = [("solver_iters" in c.diagnostics) for c in combinations]
    assert solved == [True, False, False, True, False, False]
    alpha0 = nash_mtl.solve(jacobians[0] @ jacobians[0].T).alpha
    for s in (0, 1, 2):  # alpha of step 0 reused on steps 1 and 2, applied to their own Jacobians
        torch.testing.assert_close(combinations[s].shared_gradient, alpha0 @ jacobians[s])
    # the solve at step 3 starts from step 0's solution: fewer iterations than from the cold start
    cold = nash_mtl.solve(jacobians[3] @ jacobians[3].T)
    assert combinations[3].diagnostics["solver_iters"] < cold.iterations
    torch.testing.assert_close(method.state_dict()["alpha"], cold.alpha, rtol=1e-6, atol=1e-9)


def test_state_round_trip() -> None:
    names = ("task0", "task1", "task2")
    first = methods.get("nash_mtl", update_weights_every=2, optim_niter=5)
    first.setup(names)
    jacobians = [random_jacobian(3, 10, seed=s) + random_jacobian(1, 10, seed=77) for s in range(8)]
    for s in range(3):
        first.combine(step_input(jacobians[s], step=s))
    second = methods.get("nash_mtl", update_weights_every=2, optim_niter=5)
    second.setup(names)
    second.load_state_dict(first.state_dict())
    for s in range(3, 8):
        a = first.combine(step_input(jacobians[s], step=s))
        b = second.combine(step_input(jacobians[s], step=s))
        assert a.shared_gradient is not None and b.shared_gradient is not None
        assert torch.equal(a.shared_gradient, b.shared_gradient)
        assert a.diagnostics == b.diagnostics
    with pytest.raises(ValueError, match="alpha"):
        second.load_state_dict({"calls": 1, "alpha": torch.ones(2)})
    with pytest.raises(ValueError, match="state keys"):
        second.load_state_dict({"step": 1})
    second.setup(names)
    assert second.state_dict() == {"calls": 0}


def test_method_output_and_diagnostics() -> None:
    method = methods.get("nash_mtl")
    assert method.needs == frozenset({"jacobian"})
    method.setup(("task0", "task1"))
    jacobian = random_jacobian(2, 30, seed=8, dtype=torch.float32)
    combination = method.combine(step_input(jacobian, loss_scale=2.0))
    assert combination.shared_gradient is not None and combination.shared_gradient.dtype == torch.float32
    torch.testing.assert_close(combination.shared_gradient, nash_mtl.aggregate(jacobian, 2.0))
    weights = torch.tensor([combination.diagnostics["weight/task0"], combination.diagnostics["weight/task1"]])
    torch.testing.assert_close(weights @ jacobian, combination.shared_gradient)
    assert combination.diagnostics["norm"] == pytest.approx(math.sqrt(2.0), rel=1e-4)
    assert combination.diagnostics["residual"] < 1e-4


def test_agrees_with_torchjd() -> None:
    torchjd = pytest.importorskip(
        "torchjd", reason="TorchJD not installed: agreement with the reference implementation not checked"
    )
    pytest.importorskip("cvxpy", reason="cvxpy not installed: TorchJD's NashMTL (the original CCP) cannot run")
    from torchjd.aggregation import NashMTL

    assert torchjd is not None
    for num_tasks in (2, 3, 5):
        # TorchJD's NashMTL is the original code; compare unclipped (max_norm=0) and clipped updates on
        # well-posed problems (mostly aligned gradients, where the original's CCP start is feasible)
        for max_norm in (0.0, 1.0):
            reference = NashMTL(n_tasks=num_tasks, max_norm=max_norm)
            for seed in range(3):
                jacobian = random_jacobian(num_tasks, 30, seed=seed) + 2 * random_jacobian(1, 30, seed=60)
                expected = reference(jacobian)
                ours = nash_mtl.aggregate(jacobian, max_norm=max_norm, optim_niter=200)
                torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-6)


def test_bad_options() -> None:
    with pytest.raises(ValueError, match="optim_niter"):
        methods.get("nash_mtl", optim_niter=0)
    with pytest.raises(ValueError, match="update_weights_every"):
        methods.get("nash_mtl", update_weights_every=1.5)
    with pytest.raises(ValueError, match="max_norm"):
        methods.get("nash_mtl", max_norm=-1.0)
    with pytest.raises(ValueError, match="no option"):
        methods.get("nash_mtl", n_tasks=2)
    with pytest.raises(ValueError, match="loss_scale"):
        nash_mtl.aggregate(random_jacobian(2, 3), loss_scale=0.0)
    with pytest.raises(ValueError, match="warm start"):
        nash_mtl.solve(torch.eye(2), torch.tensor([1.0, -1.0]))


def test_trains_digits() -> None:
    loss = total_train_loss(train_digits("nash_mtl"))
    assert loss.iloc[-1] < 0.6 * loss.iloc[0]
