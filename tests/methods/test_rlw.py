"""RLW (Lin et al., TMLR 2022): K softmax(z) / C loss weights, z ~ N(0, I) from the run's generator."""

from __future__ import annotations

import math

import pytest
import torch

import mtlscope.methods.rlw  # noqa: F401  (registration)
from mtlscope import methods
from mtlscope.methods import rlw, umtg
from tests.methods.helpers import random_jacobian, step_input, total_train_loss, train_digits


def test_weights_are_k_times_softmax_of_a_normal_draw() -> None:
    for num_tasks in (1, 2, 5):
        for loss_scale in (1.0, math.sqrt(num_tasks), float(num_tasks)):
            w = rlw.sample_weights(num_tasks, torch.Generator().manual_seed(3), loss_scale, torch.float64)
            z = torch.randn(num_tasks, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
            torch.testing.assert_close(w, num_tasks * torch.softmax(z, 0) / loss_scale)
            assert (w > 0).all()
            assert float(w.sum()) == pytest.approx(num_tasks / loss_scale)
    # with C = K they are the paper's lambda = softmax(z), summing to 1
    w = rlw.sample_weights(4, torch.Generator().manual_seed(0), 4.0)
    assert float(w.sum()) == pytest.approx(1.0)


def test_mean_weight_is_umtg_weight() -> None:
    # E[K softmax(z)_k] = 1 by symmetry: the expected update is the UMTG at every C
    generator = torch.Generator().manual_seed(0)
    samples = torch.stack([rlw.sample_weights(3, generator, 1.0, torch.float64) for _ in range(20000)])
    torch.testing.assert_close(samples.mean(0), torch.ones(3, dtype=torch.float64), atol=0.02, rtol=0.0)
    assert samples.std(0).min() > 0.3  # really random, not constant


def test_equal_gradients_give_umtg() -> None:
    g = random_jacobian(1, 20, seed=1)
    for num_tasks in (2, 4):
        jacobian = g.expand(num_tasks, -1).clone()
        for loss_scale in (1.0, math.sqrt(num_tasks), float(num_tasks)):
            update = rlw.aggregate(jacobian, torch.Generator().manual_seed(5), loss_scale)
            torch.testing.assert_close(update, umtg.aggregate(jacobian, loss_scale))


@pytest.mark.parametrize("num_tasks", [2, 3, 6])
def test_agrees_with_torchjd_random(num_tasks: int) -> None:
    torchjd = pytest.importorskip(
        "torchjd", reason="TorchJD not installed: agreement with the reference implementation not checked"
    )
    from torchjd.aggregation import Random

    assert torchjd is not None
    for seed in range(4):
        jacobian = random_jacobian(num_tasks, 10, seed=seed)
        # TorchJD's Random is softmax(randn(K)) @ J from the global generator: ours with C = K
        torch.manual_seed(seed)
        expected = Random()(jacobian)
        ours = rlw.aggregate(jacobian, torch.Generator().manual_seed(seed), loss_scale=float(num_tasks))
        torch.testing.assert_close(ours, expected)


def test_weights_and_aggregate() -> None:
    jacobian = random_jacobian(3, 7, seed=2, dtype=torch.float32)
    w = rlw.weights(jacobian, torch.Generator().manual_seed(1), 2.0)
    assert w.dtype == torch.float32
    torch.testing.assert_close(rlw.aggregate(jacobian, torch.Generator().manual_seed(1), 2.0), w @ jacobian)


def test_method_returns_loss_weights_from_step_generator() -> None:
    method = methods.get("rlw")
    assert method.needs == frozenset()
    method.setup(("a", "b", "c"))
    losses = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    global_state = torch.get_rng_state()
    combination = method.combine(step_input(losses=losses, loss_scale=1.5, seed=4))
    assert torch.equal(torch.get_rng_state(), global_state)
    assert combination.shared_gradient is None and combination.loss_weights is not None
    expected = rlw.sample_weights(3, torch.Generator().manual_seed(4), 1.5, torch.float64)
    torch.testing.assert_close(combination.loss_weights, expected)
    assert combination.diagnostics == pytest.approx(
        {f"weight/{t}": float(v) for t, v in zip("abc", expected, strict=True)}
    )
    # a new draw every step from the same generator
    step = step_input(losses=losses, seed=4)
    first = method.combine(step).loss_weights
    second = method.combine(step).loss_weights
    assert first is not None and second is not None and not torch.equal(first, second)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="no option"):
        methods.get("rlw", dist="Normal")
    with pytest.raises(ValueError, match="loss_scale"):
        rlw.sample_weights(2, torch.Generator(), 0.0)
    with pytest.raises(ValueError, match="num_tasks"):
        rlw.sample_weights(0, torch.Generator())


def test_trains_digits() -> None:
    loss = total_train_loss(train_digits("rlw"))
    assert loss.iloc[-1] < 0.6 * loss.iloc[0]
