"""Every built-in loss against a hand-computed value, its Fisher declaration and its label sampling."""

from __future__ import annotations

import math

import pytest
import torch

from mtlscope import losses
from mtlscope.losses import LOSSES, from_function, resolve_loss
from mtlscope.registry import OptionError


def test_cross_entropy_by_hand_with_ignore_index() -> None:
    outputs = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0], [5.0, -5.0]])
    targets = torch.tensor([0, 1, 255])
    loss = losses.cross_entropy(ignore_index=255)
    expected = (math.log(2.0) + math.log(4.0)) / 2  # -log(1/2), -log(1/4); the third is ignored
    assert float(loss(outputs, targets)) == pytest.approx(expected, rel=1e-6)
    total, count = loss.sum_and_count(outputs, targets)
    assert (float(total), count) == (pytest.approx(2 * expected, rel=1e-6), 2)
    assert loss.fisher == "categorical"


def test_binary_cross_entropy_by_hand() -> None:
    outputs = torch.tensor([[0.0, math.log(3.0)]])  # sigmoid: 1/2, 3/4
    targets = torch.tensor([[1.0, 0.0]])
    expected = (math.log(2.0) + math.log(4.0)) / 2
    assert float(losses.binary_cross_entropy()(outputs, targets)) == pytest.approx(expected, rel=1e-6)
    assert losses.binary_cross_entropy().fisher == "bernoulli"


def test_mse_by_hand() -> None:
    outputs, targets = torch.tensor([[1.0], [4.0]]), torch.tensor([2.0, 2.0])
    assert float(losses.mse()(outputs, targets)) == pytest.approx((1 + 4) / 2)
    assert losses.mse().fisher == "gaussian" and losses.mse(fisher="empirical").fisher == "empirical"


def test_l1_with_validity_mask_by_hand() -> None:
    outputs = torch.tensor([[1.0, 5.0, 2.0, 7.0]])
    targets = torch.tensor([[2.0, 0.0, 4.0, float("nan")]])
    assert float(losses.l1(invalid=0.0)(outputs[:, :3], targets[:, :3])) == pytest.approx((1 + 2) / 2)
    assert float(losses.l1(invalid=math.nan)(outputs, targets)) == pytest.approx((1 + 5 + 2) / 3)
    assert float(losses.l1()(outputs[:, :3], targets[:, :3])) == pytest.approx((1 + 5 + 2) / 3)
    assert losses.l1().fisher == "empirical"


def test_cosine_by_hand() -> None:
    # channels (x, y, z) of three pixels: (1,0,0) vs target (1,0,0): cos 1; (2,2,0) vs (0,1,0): cos 1/sqrt2;
    # the third pixel's target is the zero vector (no normal): left out
    outputs = torch.tensor([[1.0, 2.0, 1.0], [0.0, 2.0, 5.0], [0.0, 0.0, 0.0]])[None]  # [1, 3 channels, 3 pixels]
    targets = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])[None]
    expected = ((1 - 1.0) + (1 - 1 / math.sqrt(2))) / 2
    assert float(losses.cosine()(outputs, targets)) == pytest.approx(expected, rel=1e-6)
    assert losses.cosine().fisher == "empirical"


def test_sampling_follows_the_declaration() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.tensor([[0.0, 50.0, 0.0]]).repeat(4, 1)
    assert losses.cross_entropy().sample_targets(logits, generator).tolist() == [1, 1, 1, 1]
    bernoulli = losses.binary_cross_entropy().sample_targets(torch.tensor([[50.0, -50.0]]), generator)
    assert bernoulli.tolist() == [[1.0, 0.0]]
    means = torch.full((20000, 1), 3.0)
    draws = losses.mse().sample_targets(means, generator)
    assert float(draws.mean()) == pytest.approx(3.0, abs=0.03) and float(draws.std()) == pytest.approx(1.0, abs=0.03)
    with pytest.raises(ValueError, match="no distribution"):
        losses.l1().sample_targets(means, generator)


def test_specs_and_plain_functions() -> None:
    assert resolve_loss({"name": "cross_entropy", "ignore_index": -1}).ignore_index == -1  # type: ignore[attr-defined]
    with pytest.raises(OptionError, match=r"loss\.ignore_index: expected an integer"):
        resolve_loss({"name": "cross_entropy", "ignore_index": "x"})
    with pytest.raises(KeyError, match="unknown loss 'ce'"):
        resolve_loss("ce")

    def squared(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return ((outputs - targets) ** 2).mean()

    plain = resolve_loss(squared)
    assert plain.name == "squared" and plain.fisher == "empirical"
    assert from_function(squared, fisher="gaussian").fisher == "gaussian"
    total, count = plain.sum_and_count(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 0.0]))
    assert (float(total), count) == (10.0, 2)
    assert set(LOSSES.available()) == {"cross_entropy", "binary_cross_entropy", "mse", "l1", "cosine"}


def test_bad_function_loss_definitions_are_one_clear_line() -> None:
    with pytest.raises(ValueError, match=r"a loss must be a function .* got int"):
        from_function(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="a loss name must be a non-empty string"):
        from_function(lambda o, t: (o - t).abs().mean(), name=" ")
    with pytest.raises(ValueError, match="fisher must be one of categorical, bernoulli, gaussian, empirical"):
        from_function(lambda o, t: (o - t).abs().mean(), fisher="poisson")  # type: ignore[arg-type]


def test_a_function_loss_defaults_to_the_empirical_fisher_and_keeps_its_name() -> None:
    def huber(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.huber_loss(outputs, targets)

    loss = from_function(huber)
    assert (loss.name, loss.fisher) == ("huber", "empirical")
    value = loss(torch.tensor([0.0, 3.0]), torch.tensor([0.5, 0.0]))
    assert float(value) == pytest.approx((0.5 * 0.25 + (3.0 - 0.5)) / 2)


def test_masked_mse_by_hand_and_its_fisher() -> None:
    outputs = torch.tensor([[1.0], [5.0], [2.0]], requires_grad=True)
    targets = torch.tensor([2.0, 0.0, 4.0])  # 0 = invalid (an unwatched pair's rating)
    loss = losses.mse(invalid=0.0)
    assert float(loss(outputs, targets).detach()) == pytest.approx((1 + 4) / 2)
    total, count = loss.sum_and_count(outputs, targets)
    assert (float(total.detach()), count) == (pytest.approx(5.0), 2)
    loss(outputs, targets).backward()
    assert outputs.grad is not None and float(outputs.grad[1, 0]) == 0.0  # the masked example has no gradient
    assert loss.fisher == "empirical" and losses.mse(invalid=0.0, fisher="empirical").fisher == "empirical"
    with pytest.raises(ValueError, match="fisher 'gaussian' cannot be used with invalid"):
        losses.mse(invalid=0.0, fisher="gaussian")
    assert float(losses.mse(invalid=0.0)(outputs[1:2], targets[1:2]).detach()) == 0.0  # nothing valid: 0, not NaN
