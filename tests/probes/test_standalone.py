"""The standalone probes on a plain ``nn.Module`` (not an mtlscope model) with a loss given as a plain function,
a registered name or a ``Loss``: each agrees with an independent computation, and bad input is one clear line."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlscope import settings
from mtlscope.engine.sampling import random_batch
from mtlscope.losses import LOSSES
from mtlscope.models import build_model
from mtlscope.probes import (
    affinity,
    fim_trace,
    grad_cov_trace,
    grad_similarity,
    sharpness,
    task_affinity,
    task_gradients,
)

DTYPE = torch.float64


class TwoLayer(nn.Module):
    """A researcher's own model: two linear layers with a tanh, nothing from mtlscope."""

    def __init__(self, dim: int = 4, width: int = 6, classes: int = 3, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.first = nn.Linear(dim, width)
        self.second = nn.Linear(width, classes)
        self.to(DTYPE)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.second(torch.tanh(self.first(x)))
        return out


def _data(n: int = 24, seed: int = 1) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g, dtype=DTYPE), torch.randint(0, 3, (n,), generator=g)


def _single_gradients(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """[N, P] per-example gradients by a plain autograd loop (the independent path)."""
    rows = []
    for i in range(len(x)):
        loss = F.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(model.parameters()))]))
    return torch.stack(rows)


def my_cross_entropy(outputs: Tensor, targets: Tensor) -> Tensor:
    return F.cross_entropy(outputs, targets)


LOSS_FORMS = [my_cross_entropy, "cross_entropy", LOSSES.build("cross_entropy"), {"name": "cross_entropy"}]


@pytest.mark.parametrize("loss", LOSS_FORMS, ids=["function", "name", "Loss", "mapping"])
def test_grad_cov_trace_is_the_per_example_covariance_trace(loss: object) -> None:
    # small_batch = 1 and |L| = N: tr_Sigma = mean ||g_n||^2 - ||mean g||^2, the population covariance trace of the
    # per-example gradients, whatever the permutation drawn
    model, (x, y) = TwoLayer(), _data()
    g = _single_gradients(model, x, y)
    expected = float((g - g.mean(0)).pow(2).sum(1).mean())
    result = grad_cov_trace(model, loss, x, y, large_batch=len(x), small_batch=1)
    assert result.grad_cov_trace == pytest.approx(expected, rel=1e-10)
    assert result.grad_norm_sq == pytest.approx(float(g.mean(0).pow(2).sum()), rel=1e-10)


@pytest.mark.parametrize("loss", LOSS_FORMS, ids=["function", "name", "Loss", "mapping"])
def test_empirical_fisher_trace_is_the_explicit_sum(loss: object) -> None:
    model, (x, y) = TwoLayer(), _data()
    g = _single_gradients(model, x, y)
    result = fim_trace(model, x, targets=y, loss=loss, empirical=True, batch_size=8)
    assert result.empirical and result.labels == "empirical"
    assert result.fim_trace_per_example == pytest.approx(float(g.pow(2).sum(1).mean()), rel=1e-10)
    minibatch = torch.stack([g[s : s + 8].mean(0).pow(2).sum() for s in (0, 8, 16)]).mean()
    assert result.fim_trace == pytest.approx(float(minibatch), rel=1e-10)


def test_sampled_fisher_trace_of_linear_softmax_is_the_hand_computation() -> None:
    # a linear softmax model: the gradient of CE at label k is (p - e_k) x^T for W and (p - e_k) for b, so
    # ||g||^2 = ||p - e_k||^2 (||x||^2 + 1); the labels are the ones the generator draws from softmax(outputs)
    torch.manual_seed(0)
    model = nn.Linear(4, 3).to(DTYPE)
    x, _ = _data(12)
    result = fim_trace(model, x, loss="cross_entropy", batch_size=4, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        p = torch.softmax(model(x), dim=1)
    labels = LOSSES.build("cross_entropy").sample_targets(model(x).detach(), torch.Generator().manual_seed(5))
    residual = p - F.one_hot(labels, 3).to(DTYPE)  # [N, C]
    per_example = residual.pow(2).sum(1) * (x.pow(2).sum(1) + 1)
    assert result.labels == "categorical"
    assert result.fim_trace_per_example == pytest.approx(float(per_example.mean()), rel=1e-10)
    batches = []
    for s in range(0, 12, 4):
        r, z = residual[s : s + 4], x[s : s + 4]
        weight = r.T @ z / 4  # mean over the batch of (p - e) x^T
        batches.append(weight.pow(2).sum() + r.mean(0).pow(2).sum())
    assert result.fim_trace == pytest.approx(float(torch.stack(batches).mean()), rel=1e-10)


def test_sharpness_as_rho_goes_to_zero_is_the_first_order_term() -> None:
    # max over |eps_i| <= rho |theta_i| of L(theta + eps) - L(theta) = rho sum_i |theta_i| |g_i| + O(rho^2)
    model, (x, y) = TwoLayer(), _data(16)
    rho = 1e-6
    loss = F.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    first_order = rho * sum(float((p.detach().abs() * g.abs()).sum()) for p, g in zip(model.parameters(), grads))
    result = sharpness(model, "cross_entropy", x, y, rho=rho, batch_size=16)
    assert result.loss == pytest.approx(float(loss.detach()), rel=1e-12)
    assert result.sharpness == pytest.approx(first_order, rel=1e-4)


def test_task_gradients_and_similarity_on_a_plain_model() -> None:
    # two heads on a shared layer: rows equal separate backward passes; the K = 2 cosine closed form holds
    torch.manual_seed(3)
    shared, heads = nn.Linear(4, 5).to(DTYPE), [nn.Linear(5, 1).to(DTYPE) for _ in range(2)]
    x = torch.randn(10, 4, dtype=DTYPE)
    ys = [torch.randn(10, 1, dtype=DTYPE) for _ in heads]
    z = shared(x)
    losses = [F.mse_loss(h(z), y) for h, y in zip(heads, ys)]
    jacobian = task_gradients(losses, shared)
    for k, loss in enumerate(losses):
        shared.zero_grad()
        loss.backward(retain_graph=True)
        torch.testing.assert_close(jacobian[k], torch.cat([p.grad.reshape(-1) for p in shared.parameters()]))
    g1, g2 = jacobian
    closed = (g1.dot(g1) + g1.dot(g2)) / (g1.norm() * (g1 + g2).norm())
    torch.testing.assert_close(grad_similarity(jacobian)[0], closed)
    torch.testing.assert_close(task_gradients({"a": losses[0], "b": losses[1]}, shared.parameters()), jacobian)


def _two_heads(seed: int = 0) -> tuple[nn.Module, nn.ModuleList, Tensor, list[Tensor]]:
    torch.manual_seed(seed)
    shared = nn.Sequential(nn.Linear(4, 6), nn.Tanh()).to(DTYPE)
    heads = nn.ModuleList([nn.Linear(6, 1) for _ in range(3)]).to(DTYPE)
    x = torch.randn(16, 4, dtype=DTYPE)
    ys = [torch.randn(16, 1, dtype=DTYPE) for _ in heads]
    return shared, heads, x, ys


def test_task_affinity_is_the_explicit_lookahead_with_sgd() -> None:
    shared, heads, x, ys = _two_heads()
    lr = 0.1
    optimizer = torch.optim.SGD([*shared.parameters(), *heads.parameters()], lr=lr)

    def losses() -> list[Tensor]:
        z = shared(x)
        return [F.mse_loss(h(z), y) for h, y in zip(heads, ys)]

    before = [p.detach().clone() for p in shared.parameters()]
    result = task_affinity(losses, shared, optimizer)
    assert all(torch.equal(a, b) for a, b in zip(before, shared.parameters()))
    assert all(p.grad is None for p in [*shared.parameters(), *heads.parameters()])
    base = torch.stack(losses()).detach()
    expected = torch.zeros(3, 3, dtype=DTYPE)
    first = torch.zeros(3, 3, dtype=DTYPE)
    for i in range(3):
        grads = torch.autograd.grad(losses()[i], list(shared.parameters()))
        moved = copy.deepcopy(shared)
        with torch.no_grad():
            for p, g in zip(moved.parameters(), grads):
                p -= lr * g  # task i's SGD step on the shared parameters alone
            z = moved(x)
            after = torch.stack([F.mse_loss(h(z), y) for h, y in zip(heads, ys)])
        expected[i] = 1 - after / base
        for j in range(3):
            grads_j = torch.autograd.grad(losses()[j], list(shared.parameters()))
            first[i, j] = lr * sum((a * b).sum() for a, b in zip(grads, grads_j)) / base[j]
    assert result.exact is not None and result.first_order is not None
    torch.testing.assert_close(result.exact, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(result.first_order, first, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(result.losses, base)


def test_task_affinity_equals_the_mtlscope_model_affinity_with_adam() -> None:
    # the same model seen as a MultiTaskModel (affinity) and as plain modules with a loss closure (task_affinity)
    setting = settings.get("synthetic", num_tasks=3, dim=6, train_size=40, val_size=8, test_size=8)
    model = build_model(setting, {"name": "mlp", "hidden": [8]}, {"name": "linear"}, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    batch = random_batch(setting, 16, torch.Generator().manual_seed(1))
    for _ in range(2):  # give Adam moments
        optimizer.zero_grad()
        z = model.encoder(batch.inputs)
        sum(t.loss(model.heads[t.name](z[batch.rows[t.name]]), batch.targets[t.name]) for t in setting.tasks).backward()
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    reference = affinity(model, setting, batch, optimizer)

    tasks = setting.tasks

    def losses() -> dict[str, Tensor]:
        z = model.encoder(batch.inputs)
        return {t.name: t.loss(model.heads[t.name](z[batch.rows[t.name]]), batch.targets[t.name]) for t in tasks}

    plain = task_affinity(losses, model.encoder, optimizer)
    assert reference.exact is not None and plain.exact is not None and plain.first_order is not None
    torch.testing.assert_close(plain.exact, reference.exact, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(plain.first_order, reference.first_order, rtol=1e-4, atol=1e-6)
    assert float(plain.exact.abs().max()) > 1e-4  # not vacuous


def _raises(message: str, call: object) -> None:
    with pytest.raises(ValueError, match=message) as info:
        call()  # type: ignore[operator]
    assert "\n" not in str(info.value)


def test_bad_input_is_one_clear_line() -> None:
    model, (x, y) = TwoLayer(), _data(16)
    _raises("model must be a torch.nn.Module, got function", lambda: sharpness(lambda v: v, F.cross_entropy, x, y))
    _raises("16 inputs but 15 targets", lambda: sharpness(model, F.cross_entropy, x, y[:-1]))
    _raises("16 inputs but 15 targets", lambda: fim_trace(model, x, targets=y[:-1], empirical=True))
    _raises("16 inputs but 15 targets", lambda: grad_cov_trace(model, F.cross_entropy, x, y[:-1]))
    _raises("inputs hold no examples", lambda: grad_cov_trace(model, F.cross_entropy, x[:0], y[:0]))
    _raises("inputs hold no examples", lambda: fim_trace(model, x[:0]))
    _raises("inputs must be a tensor", lambda: sharpness(model, F.cross_entropy, x.tolist(), y))
    per_example = lambda o, t: F.cross_entropy(o, t, reduction="none")  # noqa: E731
    _raises("must return a 0-dim tensor .*got shape \\[16\\]", lambda: sharpness(model, per_example, x, y))
    _raises("must return a 0-dim tensor", lambda: grad_cov_trace(model, per_example, x, y, small_batch=4))
    _raises("unknown loss 'ce'; available: .*cross_entropy", lambda: sharpness(model, "ce", x, y))
    _raises("loss_fn must be a function", lambda: sharpness(model, 3, x, y))
    _raises(
        "failed on model outputs of shape \\[16, 3\\] and targets of shape \\[16\\]",
        lambda: sharpness(model, F.binary_cross_entropy_with_logits, x, y),
    )
    foreign = [nn.Parameter(torch.zeros(2))]
    _raises("must be a parameter of", lambda: sharpness(model, F.cross_entropy, x, y, parameters=foreign))
    _raises(
        "must be a parameter of",
        lambda: grad_cov_trace(model, F.cross_entropy, x, y, small_batch=4, parameters=foreign),
    )
    _raises("must be a parameter of", lambda: fim_trace(model, x, parameters=foreign))
    _raises("declared empirical.*needs the true targets", lambda: fim_trace(model, x, loss=my_cross_entropy))


def test_bad_gradient_and_affinity_input_is_one_clear_line() -> None:
    shared, heads, x, ys = _two_heads()
    optimizer = torch.optim.SGD(shared.parameters(), lr=0.1)
    z = shared(x)
    losses = [F.mse_loss(h(z), y) for h, y in zip(heads, ys)]
    _raises("losses is empty", lambda: task_gradients([], shared))
    _raises("loss 1 must be a scalar", lambda: task_gradients([losses[0], z], shared))
    _raises("loss 0 has no autograd graph", lambda: task_gradients([losses[0].detach()], shared))
    _raises("non-empty collection of tensors", lambda: task_gradients(losses, []))
    _raises("jacobian must be a \\[K, P\\] tensor", lambda: grad_similarity(torch.ones(3)))
    _raises("weights must be a \\[K\\] tensor with K = 3", lambda: grad_similarity(torch.ones(3, 4), torch.ones(2)))
    one = lambda: [F.mse_loss(heads[0](shared(x)), ys[0])]  # noqa: E731
    _raises("at least two tasks", lambda: task_affinity(one, shared, optimizer))
    both = lambda: [F.mse_loss(h(shared(x)), y) for h, y in zip(heads, ys)]  # noqa: E731
    _raises("optimizer's parameter groups", lambda: task_affinity(both, heads, optimizer))
    _raises("losses must be a function", lambda: task_affinity(losses, shared, optimizer))  # type: ignore[arg-type]
