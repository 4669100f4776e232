"""Fisher-information trace (SPEC §4.2) against the softmax-regression closed forms."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from mtlscope.probes.fisher import expected_per_example_trace, fim_trace, sample_labels

N_CLASSES, DIM = 4, 3


def _softmax_regression() -> tuple[nn.Linear, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(0)
    model = nn.Linear(DIM, N_CLASSES).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(N_CLASSES, DIM, generator=gen, dtype=torch.float64))
        model.bias.copy_(torch.randn(N_CLASSES, generator=gen, dtype=torch.float64))
    inputs = torch.randn(512, DIM, generator=gen, dtype=torch.float64)
    targets = torch.randint(0, N_CLASSES, (512,), generator=gen)
    return model, inputs, targets


def _closed_form(model: nn.Linear, inputs: Tensor, targets: Tensor | None = None) -> float:
    """Tr F(x) = (1 + |x|^2)(1 - sum_k p_k^2); empirical: (1 + |x|^2) |p - e_y|^2 (averaged over x)."""
    with torch.no_grad():
        p = torch.softmax(model(inputs), dim=1)
    scale = 1 + inputs.pow(2).sum(1)
    if targets is None:
        return (scale * (1 - p.pow(2).sum(1))).mean().item()
    return (scale * (p - nn.functional.one_hot(targets, N_CLASSES)).pow(2).sum(1)).mean().item()


def test_expected_trace_is_the_closed_form() -> None:
    model, inputs, _ = _softmax_regression()
    assert expected_per_example_trace(model, inputs) == pytest.approx(_closed_form(model, inputs), rel=1e-10)


def test_sampled_per_example_trace_converges_to_the_expectation() -> None:
    model, inputs, _ = _softmax_regression()
    gen = torch.Generator().manual_seed(1)
    draws = [fim_trace(model, inputs, generator=gen).fim_trace_per_example for _ in range(40)]  # 40 * 512 labels
    assert sum(draws) / len(draws) == pytest.approx(expected_per_example_trace(model, inputs), rel=0.03)
    assert not fim_trace(model, inputs, generator=gen).empirical


def test_empirical_fisher_is_exact() -> None:
    model, inputs, targets = _softmax_regression()
    result = fim_trace(model, inputs, targets=targets, empirical=True)
    assert result.empirical
    assert result.fim_trace_per_example == pytest.approx(_closed_form(model, inputs, targets), rel=1e-10)
    single = fim_trace(model, inputs, targets=targets, empirical=True, batch_size=1)
    assert single.fim_trace == pytest.approx(result.fim_trace_per_example, rel=1e-10)


def test_minibatch_trace_is_per_example_trace_over_batch_size() -> None:
    """E ||g_b||^2 = mean_{x in b} Tr F(x) / |b|.

    Conditions: labels are drawn independently for each example from the model's own distribution p_theta(.|x)
    (so each per-example gradient has mean 0 given x and different examples are uncorrelated), the model is in
    eval mode (no coupling between the examples of a batch) and the minibatch loss is the mean of the per-example
    losses. Then the cross terms vanish in expectation; 512 examples = 32 batches of 16, 30 label draws.
    """
    model, inputs, _ = _softmax_regression()
    gen = torch.Generator().manual_seed(2)
    draws = [fim_trace(model, inputs, generator=gen, batch_size=16).fim_trace for _ in range(30)]
    expected = expected_per_example_trace(model, inputs) / 16
    assert sum(draws) / len(draws) == pytest.approx(expected, rel=0.06)


def test_regression_uses_the_empirical_fisher() -> None:
    gen = torch.Generator().manual_seed(3)
    model = nn.Linear(DIM, 1).double()
    inputs = torch.randn(40, DIM, generator=gen, dtype=torch.float64)
    targets = torch.randn(40, 1, generator=gen, dtype=torch.float64)
    result = fim_trace(model, inputs, targets=targets, kind="regression")
    assert result.empirical
    with torch.no_grad():
        residual = (model(inputs) - targets).squeeze(1)
    exact = (4 * residual.pow(2) * (1 + inputs.pow(2).sum(1))).mean().item()  # grad of (f - y)^2 = 2(f - y)[x, 1]
    assert result.fim_trace_per_example == pytest.approx(exact, rel=1e-10)
    with pytest.raises(ValueError):
        fim_trace(model, inputs, kind="regression")


def test_parameter_subset() -> None:
    model, inputs, _ = _softmax_regression()
    with torch.no_grad():
        p = torch.softmax(model(inputs), dim=1)
    exact = (1 - p.pow(2).sum(1)).mean().item()  # bias only: E |p - e_y|^2
    assert expected_per_example_trace(model, inputs, parameters=[model.bias]) == pytest.approx(exact, rel=1e-10)


def test_generator_only_and_model_untouched() -> None:
    gen = torch.Generator().manual_seed(4)
    last = nn.Linear(5, 3)
    model = nn.Sequential(nn.Linear(DIM, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Dropout(0.3), last)
    inputs = torch.randn(48, DIM, generator=gen)
    model.train()
    with torch.no_grad():
        model(inputs)
    last.weight.grad = torch.full_like(last.weight, 2.0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    rng = torch.get_rng_state()
    first = fim_trace(model, inputs, generator=torch.Generator().manual_seed(5))
    second = fim_trace(model, inputs, generator=torch.Generator().manual_seed(5))
    assert first == second
    assert torch.equal(rng, torch.get_rng_state())
    assert all(m.training for m in model.modules())
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    for old, param in zip(grads, model.parameters()):
        assert (old is None and param.grad is None) or torch.equal(old, param.grad)  # type: ignore[arg-type]


def test_sample_labels_dense_outputs() -> None:
    logits = torch.randn(2, 3, 5, 7)
    labels = sample_labels(logits, torch.Generator().manual_seed(0))
    assert labels.shape == (2, 5, 7) and labels.max() < 3
    assert sample_labels(torch.tensor([[0.0, 50.0, 0.0]]), torch.Generator()).item() == 1


def test_per_example_pass_can_be_skipped() -> None:
    import math

    model, inputs, _ = _softmax_regression()
    full = fim_trace(model, inputs, generator=torch.Generator().manual_seed(5))
    minibatch_only = fim_trace(model, inputs, generator=torch.Generator().manual_seed(5), per_example=False)
    assert minibatch_only.fim_trace == full.fim_trace  # same labels, same minibatches
    assert math.isnan(minibatch_only.fim_trace_per_example) and math.isfinite(full.fim_trace_per_example)


def _linear(outputs: int = 1) -> tuple[nn.Linear, Tensor]:
    gen = torch.Generator().manual_seed(6)
    model = nn.Linear(DIM, outputs).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(outputs, DIM, generator=gen, dtype=torch.float64))
    return model, torch.randn(256, DIM, generator=gen, dtype=torch.float64)


def test_gaussian_labels_for_mse() -> None:
    """y ~ N(f(x), 1): grad of (f - y)^2 = -2 eps [x, 1], so E ||g||^2 = 4 (1 + |x|^2)."""
    model, inputs = _linear()
    gen = torch.Generator().manual_seed(7)
    draws = [fim_trace(model, inputs, loss="mse", generator=gen) for _ in range(40)]
    assert {(d.labels, d.empirical) for d in draws} == {("gaussian", False)}
    exact = (4 * (1 + inputs.pow(2).sum(1))).mean().item()
    assert sum(d.fim_trace_per_example for d in draws) / len(draws) == pytest.approx(exact, rel=0.03)


def test_bernoulli_labels_for_binary_cross_entropy() -> None:
    """y ~ Bernoulli(p), p = sigmoid(f): grad = (p - y) [x, 1], so E ||g||^2 = p (1 - p) (1 + |x|^2)."""
    model, inputs = _linear()
    gen = torch.Generator().manual_seed(8)
    draws = [fim_trace(model, inputs, loss="binary_cross_entropy", generator=gen) for _ in range(40)]
    assert {d.labels for d in draws} == {"bernoulli"}
    with torch.no_grad():
        p = torch.sigmoid(model(inputs)).squeeze(1)
    exact = (p * (1 - p) * (1 + inputs.pow(2).sum(1))).mean().item()
    assert sum(d.fim_trace_per_example for d in draws) / len(draws) == pytest.approx(exact, rel=0.05)


def test_a_loss_declared_empirical_uses_the_targets() -> None:
    model, inputs = _linear()
    targets = torch.randn(len(inputs), 1, dtype=torch.float64)
    result = fim_trace(model, inputs, targets=targets, loss={"name": "l1"})
    assert result.empirical and result.labels == "empirical"
    with torch.no_grad():
        sign = torch.sign(model(inputs) - targets).squeeze(1)  # grad of |f - y| = sign(f - y) [x, 1]
    exact = (sign.pow(2) * (1 + inputs.pow(2).sum(1))).mean().item()
    assert result.fim_trace_per_example == pytest.approx(exact, rel=1e-10)
    with pytest.raises(ValueError, match="l1 loss declared empirical"):
        fim_trace(model, inputs, loss="l1")
    forced = fim_trace(model, inputs, targets=targets, loss="mse", empirical=True)
    assert forced.labels == "empirical"
