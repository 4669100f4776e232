"""MGDA and MGDA-UB (Désidéri 2012; Sener & Koltun, NeurIPS 2018): KKT invariants, hand-computed cases,
normalizations, scale (K/C), agreement with TorchJD's MGDA, options, end-to-end training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor

import mtlscope.methods.mgda  # noqa: F401  (registration)
from mtlscope import methods
from mtlscope.methods import mgda
from tests.methods.helpers import random_jacobian, step_input, total_train_loss, train_digits

F64 = torch.float64


def t(rows: list[list[float]]) -> Tensor:
    return torch.tensor(rows, dtype=F64)


def low_rank_jacobian(num_tasks: int, dim: int, rank: int, seed: int) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    left = torch.randn(num_tasks, rank, generator=generator, dtype=F64)
    return left @ torch.randn(rank, dim, generator=generator, dtype=F64)


def jacobian_cases() -> list[tuple[str, Tensor]]:
    """Random Jacobians: K = 2, 3, 10, full rank, K > P (0 often in the hull), rank-deficient, duplicated
    and opposite rows, and widely different norms."""
    cases: list[tuple[str, Tensor]] = []
    for seed in range(12):
        generator = torch.Generator().manual_seed(100 + seed)
        norms = torch.exp(3 * torch.randn(10, 1, generator=generator, dtype=F64))
        cases += [
            (f"K2-{seed}", random_jacobian(2, 7, seed)),
            (f"K3-{seed}", random_jacobian(3, 20, seed)),
            (f"K10-{seed}", random_jacobian(10, 40, seed)),
            (f"K10-scaled-{seed}", random_jacobian(10, 40, seed) * norms),
            (f"K10-P5-{seed}", random_jacobian(10, 5, seed)),
            (f"K3-P2-{seed}", random_jacobian(3, 2, seed)),
            (f"K10-rank3-{seed}", low_rank_jacobian(10, 30, 3, seed)),
            (f"K3-rank1-{seed}", low_rank_jacobian(3, 30, 1, seed)),
        ]
        base = random_jacobian(3, 12, seed)
        cases.append((f"K4-duplicate-{seed}", torch.cat([base, base[:1]])))
        cases.append((f"K2-opposite-{seed}", torch.cat([base[:1], -2 * base[:1]])))
    return cases


CASES = jacobian_cases()


def assert_kkt(normalized: Tensor, alpha: Tensor, atol: float = 1e-9) -> None:
    """alpha on the simplex; g_i . d >= |d|^2 for all i, with equality where alpha_i > 0 (d = alpha @ J)."""
    scale = float(normalized.norm(dim=1).max() ** 2)
    assert bool((alpha >= 0).all()), alpha
    torch.testing.assert_close(alpha.sum(), torch.tensor(1.0, dtype=alpha.dtype), atol=1e-12, rtol=0)
    d = alpha @ normalized
    products = normalized @ d
    squared = d @ d
    assert bool((products >= squared - atol * scale).all()), (products - squared) / scale
    support = alpha > 1e-8
    torch.testing.assert_close(products[support], squared.expand(int(support.sum())), atol=atol * scale, rtol=0)


@pytest.mark.parametrize(("label", "jacobian"), CASES, ids=[label for label, _ in CASES])
def test_kkt_invariants_on_random_jacobians(label: str, jacobian: Tensor) -> None:
    assert_kkt(jacobian, mgda.weights(jacobian))


@pytest.mark.parametrize("normalization", ["l2", "loss", "loss+"])
def test_kkt_holds_for_the_normalized_gradients(normalization: str) -> None:
    for seed in range(10):
        for num_tasks, dim in ((2, 6), (3, 9), (10, 30), (10, 4)):
            jacobian = random_jacobian(num_tasks, dim, seed) * torch.linspace(0.1, 10, num_tasks, dtype=F64)[:, None]
            losses = torch.linspace(0.2, 3.0, num_tasks, dtype=F64).roll(seed)
            norms = jacobian.norm(dim=1)
            n = {"l2": norms, "loss": losses, "loss+": losses * norms}[normalization]
            alpha = mgda.weights(jacobian, losses, normalization)  # type: ignore[arg-type]
            assert_kkt(jacobian / n[:, None], alpha)
            # the weights of the normalized gradients are applied to the raw gradients (Sener & Koltun's code)
            torch.testing.assert_close(mgda.aggregate(jacobian, losses, normalization), alpha @ jacobian)  # type: ignore[arg-type]


def test_min_norm_value_is_optimal_against_random_simplex_points() -> None:
    generator = torch.Generator().manual_seed(0)
    for seed in range(5):
        jacobian = random_jacobian(5, 8, seed)
        best = float(mgda.aggregate(jacobian).norm())
        exponential = -torch.rand(2000, 5, generator=generator, dtype=F64).log()  # uniform on the simplex
        others = exponential / exponential.sum(dim=1, keepdim=True)
        assert float((others @ jacobian).norm(dim=1).min()) >= best - 1e-12


def test_hand_computed_two_tasks() -> None:
    # orthogonal, equal norms: the midpoint
    torch.testing.assert_close(mgda.weights(t([[1, 0], [0, 1]])), t([[0.5, 0.5]])[0])
    # g1 = (2, 0), g2 = (0, 1): gamma = (|g2|^2 - g1.g2) / |g1 - g2|^2 = 1/5; d = (0.4, 0.8); g_i . d = 0.8 = |d|^2
    jacobian = t([[2, 0], [0, 1]])
    torch.testing.assert_close(mgda.weights(jacobian), t([[0.2, 0.8]])[0])
    torch.testing.assert_close(mgda.aggregate(jacobian), t([[0.4, 0.8]])[0])
    # g1 . g2 >= |g1|^2: the min-norm point is g1 itself (exact closed form: weight 1, not 0.999)
    torch.testing.assert_close(mgda.weights(t([[1, 0], [3, 1]])), t([[1.0, 0.0]])[0])
    torch.testing.assert_close(mgda.weights(t([[3, 1], [1, 0]])), t([[0.0, 1.0]])[0])
    # opposite gradients: 0 is in the hull, d = 0 (weights 2/3, 1/3 for g2 = -2 g1)
    torch.testing.assert_close(mgda.weights(t([[1, 1], [-2, -2]])), t([[2 / 3, 1 / 3]])[0])
    torch.testing.assert_close(mgda.aggregate(t([[1, 1], [-2, -2]])), t([[0.0, 0.0]])[0])


def test_hand_computed_three_tasks() -> None:
    # g1 + g2 + g3 = 0 with a symmetric Gramian: uniform weights and d = 0 (Pareto stationary)
    jacobian = t([[1, 0], [-0.5, 3**0.5 / 2], [-0.5, -(3**0.5) / 2]])
    for solver in ("exact", "frank_wolfe"):
        alpha = mgda.weights(jacobian, solver=solver)
        torch.testing.assert_close(alpha, torch.full((3,), 1 / 3, dtype=F64), atol=1e-4, rtol=0)
    torch.testing.assert_close(mgda.aggregate(jacobian), torch.zeros(2, dtype=F64), atol=1e-12, rtol=0)
    # g3 = (1, 1) lies beyond the segment [g1, g2] = [(1, 0), (0, 1)]: d = (0.5, 0.5), weight 0 on g3
    jacobian = t([[1, 0], [0, 1], [1, 1]])
    torch.testing.assert_close(mgda.weights(jacobian), t([[0.5, 0.5, 0.0]])[0])


def test_hand_computed_normalizations() -> None:
    jacobian = t([[2, 0], [0, 1]])
    losses = t([[2.0, 1.0]])[0]
    # l2: both unit vectors -> (1/2, 1/2), applied to the raw gradients
    torch.testing.assert_close(mgda.weights(jacobian, normalization="l2"), t([[0.5, 0.5]])[0])
    torch.testing.assert_close(mgda.aggregate(jacobian, normalization="l2"), t([[1.0, 0.5]])[0])
    # loss: g / L = (1, 0), (0, 1) -> (1/2, 1/2)
    torch.testing.assert_close(mgda.weights(jacobian, losses, "loss"), t([[0.5, 0.5]])[0])
    # loss+: n = L |g| = (4, 1) -> (0.5, 0), (0, 1): gamma = 1 / 1.25 = 0.8 on the first
    torch.testing.assert_close(mgda.weights(jacobian, losses, "loss+"), t([[0.8, 0.2]])[0])
    # none ignores the losses
    torch.testing.assert_close(mgda.weights(jacobian, losses, "none"), t([[0.2, 0.8]])[0])


def test_zero_gradients() -> None:
    # all zero: uniform weights, zero update
    torch.testing.assert_close(mgda.weights(torch.zeros(3, 4, dtype=F64)), torch.full((3,), 1 / 3, dtype=F64))
    # one zero gradient: it is the min-norm point (also with l2 normalization: the zero row stays zero)
    jacobian = t([[1, 2], [0, 0], [3, -1]])
    for normalization in ("none", "l2"):
        torch.testing.assert_close(mgda.weights(jacobian, normalization=normalization), t([[0, 1, 0]])[0])


def test_solvers_agree() -> None:
    # K = 2: both are the exact closed form
    for seed in range(10):
        jacobian = random_jacobian(2, 5, seed)
        torch.testing.assert_close(
            mgda.weights(jacobian, solver="frank_wolfe"), mgda.weights(jacobian, solver="exact"), atol=1e-14, rtol=0
        )
    # K > 2: Frank-Wolfe (250 iterations at most) gets close to the exact min-norm value, never below it
    for seed in range(10):
        for num_tasks, dim in ((3, 10), (10, 40), (10, 5)):
            jacobian = random_jacobian(num_tasks, dim, seed)
            exact = mgda.aggregate(jacobian, solver="exact").norm() ** 2
            approximate = mgda.aggregate(jacobian, solver="frank_wolfe").norm() ** 2
            scale = jacobian.norm(dim=1).max() ** 2
            assert float(approximate) >= float(exact) - 1e-12 * float(scale)
            assert float(approximate - exact) <= 1e-2 * float(scale)


def test_exact_solver_matches_a_scipy_qp() -> None:
    scipy_optimize = pytest.importorskip("scipy.optimize")
    for seed in range(5):
        jacobian = random_jacobian(6, 9, seed)
        gramian = (jacobian @ jacobian.T).numpy()
        result = scipy_optimize.minimize(
            lambda w, g=gramian: w @ g @ w,
            np.full(6, 1 / 6),
            jac=lambda w, g=gramian: 2 * g @ w,
            method="SLSQP",
            bounds=[(0, 1)] * 6,
            constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1}],
            options={"ftol": 1e-15, "maxiter": 1000},
        )
        exact = mgda.aggregate(jacobian)
        torch.testing.assert_close(exact, torch.as_tensor(result.x) @ jacobian, atol=1e-5, rtol=0)


@pytest.mark.parametrize("num_tasks", [2, 3, 5, 10])
def test_agrees_with_torchjd(num_tasks: int) -> None:
    pytest.importorskip(
        "torchjd", reason="TorchJD not installed: agreement with the reference implementation not checked"
    )
    from torchjd.aggregation import MGDA

    # TorchJD runs Frank-Wolfe from uniform weights. The min-norm point d* is unique (the weights need not be)
    # and, the hull being convex, every point d of it satisfies |d - d*|^2 <= |d|^2 - |d*|^2: TorchJD's answer
    # can only be longer than ours, and its distance to ours is bounded by how much longer. With a tiny
    # epsilon and many iterations it converges to the same point (K <= 5 here; K = 10 converges too slowly).
    for seed in range(5):
        jacobian = random_jacobian(num_tasks, 3 * num_tasks, seed)
        ours = mgda.aggregate(jacobian)
        scale = float(jacobian.norm(dim=1).max() ** 2)
        for reference in (MGDA(), MGDA(epsilon=1e-12, max_iters=20000 if num_tasks <= 5 else 1000)):
            theirs = reference(jacobian)
            excess = float(theirs @ theirs - ours @ ours)
            assert excess >= -1e-12 * scale
            assert float((theirs - ours) @ (theirs - ours)) <= excess + 1e-12 * scale
        if num_tasks <= 5:
            torch.testing.assert_close(ours, theirs, atol=1e-7, rtol=1e-7)
        # default settings of TorchJD (epsilon 1e-3, 100 iterations) land close to the min-norm point
        assert float((MGDA()(jacobian) - ours).norm()) <= 0.05 * scale**0.5


@pytest.mark.parametrize("normalization", ["none", "l2", "loss", "loss+"])
@pytest.mark.parametrize("loss_scale", [1.0, 2.0, 3.0])
def test_equals_umtg_when_all_task_gradients_are_equal(normalization: str, loss_scale: float) -> None:
    method = methods.get("mgda", normalization=normalization)
    method.setup(("task0", "task1", "task2"))
    g = random_jacobian(1, 6, 3)
    jacobian = g.repeat(3, 1)
    losses = t([[0.5, 1.0, 2.0]])[0]
    combination = method.combine(step_input(jacobian, losses, loss_scale=loss_scale))
    assert combination.shared_gradient is not None
    torch.testing.assert_close(combination.shared_gradient, jacobian.sum(0) / loss_scale)


def test_combine_is_k_over_c_times_the_min_norm_point() -> None:
    jacobian = random_jacobian(4, 10, 7)
    method = methods.get("mgda")
    method.setup(tuple(f"task{k}" for k in range(4)))
    assert method.needs == frozenset({"jacobian"})
    for loss_scale in (1.0, 2.0, 4.0):
        combination = method.combine(step_input(jacobian, loss_scale=loss_scale))
        assert combination.shared_gradient is not None and combination.loss_weights is None
        torch.testing.assert_close(combination.shared_gradient, (4 / loss_scale) * mgda.aggregate(jacobian))
        alpha = mgda.weights(jacobian)
        for k in range(4):
            assert combination.diagnostics[f"weight/task{k}"] == pytest.approx(float(alpha[k]) * 4 / loss_scale)
        assert combination.diagnostics["min_norm"] == pytest.approx(float(mgda.aggregate(jacobian).norm()))


def test_float32_inputs_keep_their_dtype() -> None:
    jacobian = random_jacobian(3, 8, 1, dtype=torch.float32)
    alpha = mgda.weights(jacobian)
    assert alpha.dtype == torch.float32
    torch.testing.assert_close(alpha, mgda.weights(jacobian.double()).float(), atol=1e-5, rtol=0)


def test_mgda_ub_weights_from_the_representation() -> None:
    method = methods.get("mgda_ub", normalization="l2")
    method.setup(("task0", "task1", "task2"))
    assert method.needs == frozenset({"representation"})
    representation = random_jacobian(3, 12, 5)
    losses = t([[1.0, 2.0, 0.5]])[0]
    combination = method.combine(step_input(losses=losses, representation_jacobian=representation, loss_scale=2.0))
    assert combination.loss_weights is not None and combination.shared_gradient is None
    expected = mgda.weights(representation, losses, "l2") * 3 / 2.0
    torch.testing.assert_close(combination.loss_weights, expected)
    assert combination.loss_weights.sum().item() == pytest.approx(1.5)
    assert combination.diagnostics["weight/task1"] == pytest.approx(float(expected[1]))


def test_mgda_ub_multi_input_layout_gives_inverse_squared_norm_weights() -> None:
    # each task's loss depends only on its own rows of the representation: orthogonal gradients,
    # alpha_k proportional to 1 / |z_k|^2
    representation = torch.zeros(3, 9, dtype=F64)
    norms = t([[1.0, 2.0, 4.0]])[0]
    for k in range(3):
        representation[k, 3 * k : 3 * k + 3] = norms[k] / 3**0.5
    inverse = 1 / norms**2
    torch.testing.assert_close(mgda.weights(representation), inverse / inverse.sum())


@pytest.mark.parametrize("name", ["mgda", "mgda_ub"])
def test_option_validation(name: str) -> None:
    with pytest.raises(ValueError, match="normalization"):
        methods.get(name, normalization="L2")
    with pytest.raises(ValueError, match="solver"):
        methods.get(name, solver="cvxpy")
    with pytest.raises(ValueError, match="has no option"):
        methods.get(name, normalisation="l2")
    method = methods.get(name, normalization="loss")
    method.setup(("a", "b"))
    jacobian = random_jacobian(2, 4, 0)
    with pytest.raises(ValueError, match="non-negative"):
        method.combine(step_input(jacobian, t([[-1.0, 1.0]])[0], representation_jacobian=jacobian))
    with pytest.raises(ValueError, match="needs the task losses"):
        mgda.weights(jacobian, None, "loss")
    with pytest.raises(ValueError, match="normalization"):
        mgda.weights(jacobian, normalization="max")  # type: ignore[arg-type]


def test_stateless() -> None:
    method = methods.get("mgda")
    assert method.state_dict() == {}
    with pytest.raises(ValueError, match="stateless"):
        method.load_state_dict({"x": 1})


def test_mgda_trains_digits() -> None:
    total = total_train_loss(train_digits("mgda"))
    assert total.iloc[-1] < 0.6 * total.iloc[0]


def test_mgda_ub_trains_digits() -> None:
    total = total_train_loss(train_digits("mgda_ub", normalization="loss+"))
    assert total.iloc[-1] < 0.6 * total.iloc[0]
