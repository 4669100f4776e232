"""IMTL-G, IMTL-L and IMTL (Liu et al., ICLR 2021): the paper's closed form, equal projections, hand-computed
cases, agreement with TorchJD's IMTLG, the loss-scale updates, state round trip, options, training."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

import mtlscope.methods.imtl  # noqa: F401  (registration)
from mtlscope import methods
from mtlscope.methods import imtl
from tests.methods.helpers import random_jacobian, step_input, total_train_loss, train_digits

F64 = torch.float64
TASKS3 = ("task0", "task1", "task2")


def vec(*values: float) -> Tensor:
    return torch.tensor(values, dtype=F64)


def paper_closed_form(jacobian: Tensor) -> Tensor:
    """Liu et al. 2021, eq. for IMTL-G: alpha_{2:K} = g_1 U^T (D U^T)^{-1}, alpha_1 = 1 - sum alpha_{2:K}."""
    units = jacobian / jacobian.norm(dim=1, keepdim=True)
    d = jacobian[0] - jacobian[1:]
    u = units[0] - units[1:]
    rest = (jacobian[0] @ u.T) @ torch.linalg.inv(d @ u.T)
    return torch.cat([(1 - rest.sum()).reshape(1), rest])


def make(name: str, tasks: tuple[str, ...] = TASKS3, **options: object) -> methods.Method:
    method = methods.get(name, **options)
    method.setup(tasks)
    return method


@pytest.mark.parametrize(("num_tasks", "dim"), [(2, 5), (3, 8), (5, 20), (10, 40), (10, 10)])
def test_equal_projections_and_paper_closed_form(num_tasks: int, dim: int) -> None:
    for seed in range(10):
        jacobian = random_jacobian(num_tasks, dim, seed) * torch.linspace(0.1, 5, num_tasks, dtype=F64)[:, None]
        alpha = imtl.weights(jacobian)
        torch.testing.assert_close(alpha.sum(), torch.tensor(1.0, dtype=F64))
        g = imtl.aggregate(jacobian)
        torch.testing.assert_close(g, alpha @ jacobian)
        projections = jacobian @ g / jacobian.norm(dim=1)
        torch.testing.assert_close(projections, projections[0].expand(num_tasks), rtol=1e-8, atol=0)
        torch.testing.assert_close(alpha, paper_closed_form(jacobian), rtol=1e-7, atol=1e-9)


def test_hand_computed() -> None:
    # g1 = (1, 0), g2 = (0, 2): g = a g1 + (1 - a) g2 = (a, 2 - 2a); equal projections a = 2 - 2a -> a = 2/3
    torch.testing.assert_close(imtl.weights(torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=F64)), vec(2 / 3, 1 / 3))
    torch.testing.assert_close(imtl.aggregate(torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=F64)), vec(2 / 3, 2 / 3))
    # g1 = (1, 0), g2 = (1, 1): g = (1, b), (1 + b)/sqrt(2) = 1 -> b = sqrt(2) - 1, a = 2 - sqrt(2)
    root = math.sqrt(2)
    torch.testing.assert_close(imtl.weights(torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=F64)), vec(2 - root, root - 1))
    # three orthogonal gradients of norms 1, 2, 4: alpha proportional to 1/|g_k|
    jacobian = torch.diag(vec(1.0, 2.0, 4.0))
    torch.testing.assert_close(imtl.weights(jacobian), vec(1.0, 0.5, 0.25) / 1.75)


def test_rank_deficient_and_zero() -> None:
    # duplicated task: the pseudo-inverse splits the weight; projections are still equal
    base = random_jacobian(2, 6, 4)
    jacobian = torch.cat([base, base[:1]])
    alpha = imtl.weights(jacobian)
    torch.testing.assert_close(alpha[0], alpha[2])
    g = imtl.aggregate(jacobian)
    projections = jacobian @ g / jacobian.norm(dim=1)
    torch.testing.assert_close(projections, projections[0].expand(3))
    torch.testing.assert_close(imtl.aggregate(base), g)
    # all zero: zero weights (as TorchJD), no NaN
    torch.testing.assert_close(imtl.weights(torch.zeros(3, 4, dtype=F64)), torch.zeros(3, dtype=F64))


@pytest.mark.parametrize(("num_tasks", "dim"), [(2, 5), (3, 8), (5, 20), (10, 40), (6, 3), (10, 2)])
def test_agrees_with_torchjd(num_tasks: int, dim: int) -> None:
    pytest.importorskip(
        "torchjd", reason="TorchJD not installed: agreement with the reference implementation not checked"
    )
    from torchjd.aggregation import IMTLG

    # same Gramian formulation (pinv(G) n normalized); (6, 3) and (10, 2) are rank-deficient
    for seed in range(10):
        jacobian = random_jacobian(num_tasks, dim, seed)
        torch.testing.assert_close(imtl.aggregate(jacobian), IMTLG()(jacobian), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("loss_scale", [1.0, 2.0, 3.0])
@pytest.mark.parametrize("name", ["imtl_g", "imtl"])
def test_equals_umtg_when_all_task_gradients_are_equal(name: str, loss_scale: float) -> None:
    method = make(name)
    jacobian = random_jacobian(1, 7, 2).repeat(3, 1)
    combination = method.combine(step_input(jacobian, loss_scale=loss_scale))
    assert combination.shared_gradient is not None
    torch.testing.assert_close(combination.shared_gradient, jacobian.sum(0) / loss_scale)


def test_imtl_g_combine_is_k_over_c_times_aggregate() -> None:
    method = make("imtl_g")
    assert method.needs == frozenset({"jacobian"})
    jacobian = random_jacobian(3, 9, 8)
    combination = method.combine(step_input(jacobian, loss_scale=2.0))
    assert combination.shared_gradient is not None
    torch.testing.assert_close(combination.shared_gradient, 1.5 * imtl.aggregate(jacobian))
    alpha = imtl.weights(jacobian)
    assert [combination.diagnostics[f"weight/{task}"] for task in TASKS3] == pytest.approx((1.5 * alpha).tolist())
    assert method.state_dict() == {}


def test_imtl_l_starts_at_umtg_and_follows_adam_on_the_scaled_losses() -> None:
    method = make("imtl_l", lr=0.05)
    assert method.needs == frozenset()
    # reference: torch.optim.Adam on s with the paper's scaled loss sum_k (e^{s_k} L_k - s_k)
    s = torch.zeros(3, dtype=F64, requires_grad=True)
    optimizer = torch.optim.Adam([s], lr=0.05)
    generator = torch.Generator().manual_seed(0)
    for step in range(6):
        losses = torch.rand(3, generator=generator, dtype=F64) * 3
        combination = method.combine(step_input(losses=losses, loss_scale=2.0, step=step))
        assert combination.loss_weights is not None
        torch.testing.assert_close(combination.loss_weights, s.detach().exp() / 2.0)
        if step == 0:
            torch.testing.assert_close(combination.loss_weights, torch.full((3,), 0.5, dtype=F64))
        assert combination.diagnostics["log_scale/task1"] == pytest.approx(float(s[1].detach()))
        optimizer.zero_grad()
        (s.exp() * losses - s).sum().backward()
        optimizer.step()


def test_log_scale_gradient_matches_autograd() -> None:
    generator = torch.Generator().manual_seed(2)
    s = torch.randn(4, generator=generator, dtype=F64, requires_grad=True)
    losses = torch.rand(4, generator=generator, dtype=F64) * 3
    (s.exp() * losses - s).sum().backward()
    assert s.grad is not None
    torch.testing.assert_close(imtl.log_scale_gradient(s.detach(), losses), s.grad)


def test_imtl_l_works_in_the_dtype_of_the_losses() -> None:
    method = make("imtl_l", lr=0.1)
    for dtype in (torch.float32, torch.float64):
        combination = method.combine(step_input(losses=torch.full((3,), 2.0, dtype=dtype)))
        assert combination.loss_weights is not None and combination.loss_weights.dtype == dtype
    assert isinstance(method, imtl.IMTLL)
    assert method.log_scales.value.dtype == F64 and method.log_scales.steps == 2


def test_imtl_l_sgd_update_and_fixed_point() -> None:
    method = make("imtl_l", lr=0.1, optimizer="sgd")
    losses = vec(4.0, 1.0, 0.25)
    first = method.combine(step_input(losses=losses))
    assert first.loss_weights is not None
    # s <- s - lr (e^s L - 1): from 0, s = -0.1 * (L - 1)
    second = method.combine(step_input(losses=losses))
    assert second.loss_weights is not None
    torch.testing.assert_close(second.loss_weights, torch.exp(-0.1 * (losses - 1)))
    # at the fixed point every scaled loss e^s L equals 1: weights 1 / L
    for _ in range(300):
        last = method.combine(step_input(losses=losses))
    assert last.loss_weights is not None
    torch.testing.assert_close(last.loss_weights, 1 / losses, rtol=1e-6, atol=0)


def test_imtl_hybrid_is_imtl_g_of_the_scaled_gradients() -> None:
    method = make("imtl", lr=0.2)
    assert method.needs == frozenset({"jacobian"})
    generator = torch.Generator().manual_seed(1)
    for step in range(4):
        jacobian = random_jacobian(3, 10, 20 + step)
        losses = torch.rand(3, generator=generator, dtype=F64) + 0.5
        assert isinstance(method, imtl.IMTL)
        s = method.log_scales.value
        combination = method.combine(step_input(jacobian, losses, loss_scale=3.0))
        assert combination.shared_gradient is not None
        scaled = s.exp()[:, None] * jacobian
        torch.testing.assert_close(combination.shared_gradient, imtl.aggregate(scaled))  # K / C = 1
        # the loss scales change the length, not IMTL-G's direction
        direction = imtl.aggregate(jacobian)
        cosine = combination.shared_gradient @ direction / (combination.shared_gradient.norm() * direction.norm())
        torch.testing.assert_close(cosine, torch.tensor(1.0, dtype=F64))
        assert combination.diagnostics["log_scale/task2"] == pytest.approx(float(s[2]))
    assert isinstance(method, imtl.IMTL)
    assert method.log_scales.steps == 4


@pytest.mark.parametrize("name", ["imtl_l", "imtl"])
def test_state_round_trip(name: str) -> None:
    def inputs(step: int) -> tuple[Tensor, Tensor]:
        generator = torch.Generator().manual_seed(step)
        return random_jacobian(3, 6, step), torch.rand(3, generator=generator, dtype=F64) + 0.1

    first = make(name, lr=0.1)
    for step in range(5):
        first.combine(step_input(*inputs(step)))
    second = make(name, lr=0.1)
    second.load_state_dict(first.state_dict())
    for step in range(5, 10):
        a = first.combine(step_input(*inputs(step)))
        b = second.combine(step_input(*inputs(step)))
        left = a.loss_weights if a.loss_weights is not None else a.shared_gradient
        right = b.loss_weights if b.loss_weights is not None else b.shared_gradient
        assert left is not None and right is not None
        assert torch.equal(left, right)
        assert a.diagnostics == b.diagnostics
    assert isinstance(first, imtl.IMTLL) and isinstance(second, imtl.IMTLL)
    assert torch.equal(first.log_scales.value, second.log_scales.value)
    assert first.log_scales.steps == second.log_scales.steps == 10
    moments = [method.state_dict()["log_scales"]["optimizer_state"]["state"][0] for method in (first, second)]
    assert set(moments[0]) == set(moments[1]) == {"step", "exp_avg", "exp_avg_sq"}
    assert all(torch.equal(moments[0][key], moments[1][key]) for key in moments[0])
    # setup re-initializes
    first.setup(TASKS3)
    assert torch.equal(first.log_scales.value, torch.zeros(3, dtype=F64))
    assert first.log_scales.steps == 0 and first.state_dict()["log_scales"]["optimizer_state"]["state"] == {}


def test_load_state_dict_validation() -> None:
    method = make("imtl_l")
    with pytest.raises(ValueError, match="state keys"):
        method.load_state_dict({"s": [0.0, 0.0, 0.0]})
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        method.load_state_dict(make("imtl_l", ("task0", "task1")).state_dict())
    with pytest.raises(ValueError, match="'sgd'"):
        method.load_state_dict(make("imtl_l", optimizer="sgd").state_dict())


def test_option_validation() -> None:
    for name in ("imtl_l", "imtl"):
        with pytest.raises(ValueError, match=r"method\.lr"):
            methods.get(name, lr=0.0)
        with pytest.raises(ValueError, match=r"method\.lr"):
            methods.get(name, lr="fast")
        with pytest.raises(ValueError, match=r"method\.optimizer"):
            methods.get(name, optimizer="adamw")
    with pytest.raises(ValueError, match="has no option"):
        methods.get("imtl_g", lr=0.1)
    with pytest.raises(ValueError, match="jacobian"):
        imtl.weights(torch.zeros(3))


@pytest.mark.parametrize("name", ["imtl_g", "imtl_l", "imtl"])
def test_trains_digits(name: str) -> None:
    total = total_train_loss(train_digits(name))
    assert total.iloc[-1] < 0.6 * total.iloc[0]
