"""Gradient-covariance trace (SPEC §4.3) against the exact value from per-example gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlscope.probes.covariance import grad_cov_trace
from mtlscope.probes.per_example import per_example_gradients

N = 256


def _problem() -> tuple[nn.Linear, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(0)
    model = nn.Linear(5, 2).double()
    inputs = torch.randn(N, 5, generator=gen, dtype=torch.float64)
    targets = torch.randn(N, 2, generator=gen, dtype=torch.float64) + inputs[:, :2]
    return model, inputs, targets


def test_mean_over_draws_matches_exact_trace() -> None:
    model, inputs, targets = _problem()
    g = per_example_gradients(model, F.mse_loss, inputs, targets)
    exact = (g - g.mean(0)).pow(2).sum().item() / (N - 1)  # SPEC §4.3's reference
    # With A_Z = (N - Z)/(N - 1) the estimator's exact expectation is that times (N - 1)/N (module docstring).
    expected = exact * (N - 1) / N
    gen = torch.Generator().manual_seed(1)
    draws = [
        grad_cov_trace(model, F.mse_loss, inputs, targets, large_batch=128, small_batch=8, generator=gen)
        for _ in range(300)
    ]
    mean = sum(d.grad_cov_trace for d in draws) / len(draws)
    assert mean == pytest.approx(expected, rel=0.04)
    assert mean == pytest.approx(exact, rel=0.04)
    full = g.mean(0).pow(2).sum().item()
    assert sum(d.grad_norm_sq_unbiased for d in draws) / len(draws) == pytest.approx(full, rel=0.04)


def test_all_examples_used_when_fewer_than_large_batch() -> None:
    model, inputs, targets = _problem()
    result = grad_cov_trace(model, F.mse_loss, inputs, targets, large_batch=4096, small_batch=16)
    full = per_example_gradients(model, F.mse_loss, inputs, targets).mean(0).pow(2).sum().item()
    assert result.grad_norm_sq == pytest.approx(full, rel=1e-10)  # |L| = N: G_L is the full gradient
    assert result.noise_scale == pytest.approx(result.grad_cov_trace / result.grad_norm_sq, rel=1e-12)


def test_zero_when_all_per_example_gradients_are_equal() -> None:
    model, inputs, targets = _problem()

    def mean_output(outputs: Tensor, _: Tensor) -> Tensor:
        return outputs.mean()  # gradient w.r.t. the bias is (1/2, 1/2) for every example

    result = grad_cov_trace(model, mean_output, inputs, targets, large_batch=64, parameters=[model.bias])
    assert result.grad_cov_trace == 0.0
    assert result.grad_norm_sq == pytest.approx(0.5)
    same = grad_cov_trace(model, F.mse_loss, inputs[:1].expand(N, 5), targets[:1].expand(N, 2), large_batch=64)
    assert abs(same.grad_cov_trace) <= 1e-12 * same.grad_norm_sq


def test_scales_with_the_square_of_the_loss_scale() -> None:
    model, inputs, targets = _problem()

    def scaled(outputs: Tensor, y: Tensor) -> Tensor:
        return 3.0 * F.mse_loss(outputs, y)

    base = grad_cov_trace(
        model, F.mse_loss, inputs, targets, large_batch=64, generator=torch.Generator().manual_seed(7)
    )
    big = grad_cov_trace(model, scaled, inputs, targets, large_batch=64, generator=torch.Generator().manual_seed(7))
    assert big.grad_cov_trace == pytest.approx(9 * base.grad_cov_trace, rel=1e-10)
    assert big.grad_norm_sq == pytest.approx(9 * base.grad_norm_sq, rel=1e-10)
    assert big.noise_scale == pytest.approx(base.noise_scale, rel=1e-10)


def test_generator_only_and_model_untouched() -> None:
    gen = torch.Generator().manual_seed(4)
    first_layer = nn.Linear(5, 4)
    model = nn.Sequential(first_layer, nn.BatchNorm1d(4), nn.Dropout(0.5), nn.Linear(4, 2))
    inputs, targets = torch.randn(64, 5, generator=gen), torch.randn(64, 2, generator=gen)
    model.train()
    with torch.no_grad():
        model(inputs)
    first_layer.bias.grad = torch.ones_like(first_layer.bias)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    rng = torch.get_rng_state()
    first = grad_cov_trace(
        model, F.mse_loss, inputs, targets, large_batch=32, generator=torch.Generator().manual_seed(1)
    )
    again = grad_cov_trace(
        model, F.mse_loss, inputs, targets, large_batch=32, generator=torch.Generator().manual_seed(1)
    )
    assert first == again
    assert torch.equal(rng, torch.get_rng_state())
    assert all(m.training for m in model.modules())
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    for old, param in zip(grads, model.parameters()):
        assert (old is None and param.grad is None) or torch.equal(old, param.grad)  # type: ignore[arg-type]


def test_needs_two_small_batches() -> None:
    model, inputs, targets = _problem()
    with pytest.raises(ValueError):
        grad_cov_trace(model, F.mse_loss, inputs[:20], targets[:20], small_batch=16)
