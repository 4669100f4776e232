"""Adaptive worst-case l_inf sharpness (SPEC §4.1): invariants, closed forms, batching, no side effects."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from mtlscope.probes.sharpness import SharpnessResult, _worst_case, checkpoints, sharpness

DTYPE = torch.float64


class Quadratic(nn.Module):
    """theta -> theta; with ``quadratic_loss`` the loss is L = 0.5 * sum h_i theta_i^2 (inputs ignored)."""

    def __init__(self, theta: torch.Tensor) -> None:
        super().__init__()
        self.theta = nn.Parameter(theta.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.theta


def quadratic_loss(h: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    def loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return 0.5 * (h * outputs**2).sum()

    return loss


def logistic_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.softplus(-targets * outputs.squeeze(-1)).mean()


def softplus(v: float) -> float:
    return float(F.softplus(torch.tensor(v, dtype=DTYPE)))


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Dropout(0.5), nn.Linear(8, 3)).to(DTYPE)


def data(n: int = 40, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g, dtype=DTYPE), torch.randint(0, 3, (n,), generator=g)


def test_checkpoints_match_spec() -> None:
    assert checkpoints(20) == [5, 9, 12, 15, 16, 18, 19, 20]
    assert checkpoints(0) == []


@pytest.mark.parametrize("rho", [1e-3, 1e-2, 0.1, 0.5])
def test_quadratic_closed_form(rho: float) -> None:
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(7, generator=g, dtype=DTYPE)
    h = torch.rand(7, generator=g, dtype=DTYPE) + 0.1
    model = Quadratic(theta)
    result = sharpness(model, quadratic_loss(h), torch.zeros(3, 1), torch.zeros(3), rho=rho)
    value = 0.5 * float((h * theta**2).sum())
    assert result.loss == pytest.approx(value, rel=1e-12)
    assert result.sharpness == pytest.approx(value * (2 * rho + rho**2), rel=1e-6)


@pytest.mark.parametrize(("iterations", "fraction"), [(1, 0.75), (2, 0.75), (3, 0.9375)])
def test_momentum_uses_the_perturbation_before_the_current_one(iterations: int, fraction: float) -> None:
    # eps_t = 0.75 * z + 0.25 * eps_{t-2} with z at the vertex rho * theta: 0.75, 0.75, 0.9375 of the vertex.
    theta = torch.tensor([1.0, -2.0, 0.5], dtype=DTYPE)
    h = torch.ones(3, dtype=DTYPE)
    rho = 0.1
    model = Quadratic(theta)
    result = sharpness(model, quadratic_loss(h), torch.zeros(1, 1), torch.zeros(1), rho=rho, iterations=iterations)
    value = 0.5 * float((theta**2).sum())
    assert result.sharpness == pytest.approx(value * ((1 + fraction * rho) ** 2 - 1), rel=1e-12)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("rho", [1e-3, 5e-2])
def test_logistic_regression_closed_form(seed: int, rho: float) -> None:
    torch.manual_seed(seed)
    model = nn.Linear(6, 1).to(DTYPE)
    x = torch.randn(1, 6, dtype=DTYPE)
    y = torch.tensor([1.0 if seed % 2 else -1.0], dtype=DTYPE)
    result = sharpness(model, logistic_loss, x, y, rho=rho)
    w, b = model.weight.detach()[0], model.bias.detach()[0]
    m = float(y[0] * (w @ x[0] + b))
    radius = rho * float((w * x[0]).abs().sum() + b.abs())
    expected = softplus(-(m - radius)) - softplus(-m)
    assert result.loss == pytest.approx(softplus(-m), rel=1e-12)
    assert result.sharpness == pytest.approx(expected, rel=1e-6)


def test_only_the_chosen_parameters_are_perturbed() -> None:
    # A fixed feature layer followed by logistic regression: perturbing only the last layer gives the closed
    # form on the features.
    torch.manual_seed(3)
    features, head = nn.Linear(4, 4).to(DTYPE), nn.Linear(4, 1).to(DTYPE)
    model = nn.Sequential(features, head)
    x, y = torch.randn(1, 4, dtype=DTYPE), torch.tensor([1.0], dtype=DTYPE)
    rho = 1e-2
    result = sharpness(model, logistic_loss, x, y, rho=rho, parameters=head.parameters())
    with torch.no_grad():
        z = features(x)[0]
        w, b = head.weight[0], head.bias[0]
        m = float(w @ z + b)
        radius = rho * float((w * z).abs().sum() + b.abs())
    expected = softplus(-(m - radius)) - softplus(-m)
    assert result.sharpness == pytest.approx(expected, rel=1e-6)
    # and perturbing everything is sharper
    assert sharpness(model, logistic_loss, x, y, rho=rho).sharpness > result.sharpness * (1 + 1e-3)

    names = ["1.weight", "1.bias"]
    _, _, eps = _worst_case(model.eval(), logistic_loss, x, y, names, rho=rho, iterations=20)
    assert sorted(eps) == sorted(names)


def test_nonnegative_and_zero_at_rho_zero() -> None:
    model = mlp()
    x, y = data()
    for rho in [0.0, 1e-4, 1e-3, 1e-2]:
        result = sharpness(model, F.cross_entropy, x, y, rho=rho, batch_size=16)
        assert result.sharpness >= 0
        assert all(s >= 0 for s in result.per_batch)
        if rho == 0:
            assert result.sharpness == 0.0
            assert result.per_batch == [0.0, 0.0, 0.0]
        else:
            assert result.sharpness > 0


def test_perturbation_stays_in_the_box_and_zero_parameters_stay_put() -> None:
    model = mlp().eval()
    with torch.no_grad():
        model[0].weight[0, :3] = 0.0
        model[4].bias[1] = 0.0
    x, y = data()
    names = [name for name, _ in model.named_parameters()]
    rho = 0.05
    initial, worst, eps = _worst_case(model, F.cross_entropy, x, y, names, rho=rho, iterations=20)
    assert worst > initial
    params = dict(model.named_parameters())
    assert sorted(eps) == sorted(names)
    moved = 0
    for name, e in eps.items():
        theta = params[name].detach()
        assert torch.all(e.abs() <= rho * theta.abs()), name
        assert torch.all(e[theta == 0] == 0), name
        moved += int((e != 0).sum())
    assert moved > 0
    assert torch.all(eps["0.weight"][0, :3] == 0)
    assert eps["4.bias"][1] == 0
    # the reported worst loss is the loss at the reported perturbation
    with torch.no_grad():
        perturbed = {name: params[name].detach() + eps[name] for name in names}
        assert float(F.cross_entropy(functional_call(model, perturbed, (x,)), y)) == pytest.approx(worst, rel=1e-12)


def test_nondecreasing_in_rho() -> None:
    model = mlp()
    x, y = data()
    values = [sharpness(model, F.cross_entropy, x, y, rho=rho).sharpness for rho in [0, 1e-4, 1e-3, 1e-2, 0.1]]
    assert values == sorted(values)
    assert values[-1] > values[1] > 0

    torch.manual_seed(0)
    linear = nn.Linear(6, 1).to(DTYPE)
    xs, ys = torch.randn(1, 6, dtype=DTYPE), torch.tensor([1.0], dtype=DTYPE)
    values = [sharpness(linear, logistic_loss, xs, ys, rho=rho).sharpness for rho in [0, 1e-3, 1e-2, 0.1, 1.0]]
    assert all(a < b for a, b in itertools.pairwise(values))


def test_mean_over_batches_equals_separate_calls() -> None:
    model = mlp()
    x, y = data(n=45)
    result = sharpness(model, F.cross_entropy, x, y, rho=1e-2, batch_size=16)
    assert len(result.per_batch) == 3
    separate = [
        sharpness(model, F.cross_entropy, x[i : i + 16], y[i : i + 16], rho=1e-2, batch_size=16) for i in (0, 16, 32)
    ]
    assert result.per_batch == [s.sharpness for s in separate]
    assert result.sharpness == pytest.approx(sum(s.sharpness for s in separate) / 3, rel=1e-12)
    assert result.loss == pytest.approx(sum(s.loss for s in separate) / 3, rel=1e-12)
    # a single batch covering everything is a different (here: one-batch) quantity
    whole = sharpness(model, F.cross_entropy, x, y, rho=1e-2, batch_size=45)
    assert len(whole.per_batch) == 1
    with torch.no_grad():
        assert whole.loss == pytest.approx(float(F.cross_entropy(model.eval()(x), y)), rel=1e-12)


def test_model_is_left_exactly_as_it_was() -> None:
    model = mlp()
    model.train()
    model[3].eval()  # a submodule in a different mode than its parent must keep it
    x, y = data()
    model(x).sum().backward()  # running stats move, grads exist
    model[4].bias.grad = None
    before_state = {k: v.clone() for k, v in model.state_dict().items()}
    before_grads = {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}
    before_params = {n: p for n, p in model.named_parameters()}
    modes = [m.training for m in model.modules()]
    rng = torch.get_rng_state()

    result = sharpness(model, F.cross_entropy, x, y, rho=0.05, batch_size=16)
    assert isinstance(result, SharpnessResult)
    assert result.sharpness > 0

    assert [m.training for m in model.modules()] == modes
    assert torch.equal(torch.get_rng_state(), rng)
    state = model.state_dict()
    assert state.keys() == before_state.keys()
    for k, v in before_state.items():
        assert torch.equal(state[k], v), k
    for n, p in model.named_parameters():
        assert p is before_params[n]
        assert p.requires_grad
        expected = before_grads[n]
        if expected is None:
            assert p.grad is None
        else:
            assert p.grad is not None and torch.equal(p.grad, expected), n


def test_eval_mode_is_used() -> None:
    # With dropout active or batch statistics, repeated calls would differ or the RNG would move.
    model = mlp().train()
    x, y = data()
    a = sharpness(model, F.cross_entropy, x, y, rho=1e-2)
    b = sharpness(model, F.cross_entropy, x, y, rho=1e-2)
    assert a == b
    with torch.no_grad():
        assert a.loss == pytest.approx(float(F.cross_entropy(model.eval()(x), y)), rel=1e-12)


def test_works_under_no_grad_and_is_frozen() -> None:
    model = mlp()
    x, y = data()
    with torch.no_grad():
        result = sharpness(model, F.cross_entropy, x, y, rho=1e-2)
    assert result.sharpness > 0
    assert math.isfinite(result.loss)
    with pytest.raises(AttributeError):
        result.sharpness = 0.0  # type: ignore[misc]


def test_rejects_bad_arguments() -> None:
    model = mlp()
    x, y = data()
    with pytest.raises(ValueError):
        sharpness(model, F.cross_entropy, x, y, rho=-1.0)
    with pytest.raises(ValueError):
        sharpness(model, F.cross_entropy, x, y, batch_size=0)
    with pytest.raises(ValueError):
        sharpness(model, F.cross_entropy, x, y[:-1])
    with pytest.raises(ValueError):
        sharpness(model, F.cross_entropy, x, y, parameters=[nn.Parameter(torch.zeros(2))])
