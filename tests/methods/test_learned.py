"""LearnedVector: a method's learnable vector stepped by a real torch.optim optimizer (float64, CPU)."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from torch import Tensor

from mtlscope.methods.learned import LearnedVector

F64 = torch.float64


def gradients(count: int, size: int = 4, seed: int = 0) -> list[Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(size, generator=generator, dtype=F64) for _ in range(count)]


def reference(initial: Tensor, optimizer: str, **options: float) -> tuple[torch.nn.Parameter, torch.optim.Optimizer]:
    parameter = torch.nn.Parameter(initial.clone().to(F64))
    kind = torch.optim.Adam if optimizer == "adam" else torch.optim.SGD
    return parameter, kind([parameter], **options)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_trajectory_equals_torch_optim_on_a_parameter(optimizer: str, weight_decay: float) -> None:
    initial = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=F64)
    vector = LearnedVector(initial, lr=0.05, optimizer=optimizer, weight_decay=weight_decay)
    parameter, torch_optimizer = reference(initial, optimizer, lr=0.05, weight_decay=weight_decay)
    for gradient in gradients(20):
        vector.step(gradient)
        parameter.grad = gradient.clone()
        torch_optimizer.step()
        assert torch.equal(vector.value, parameter.detach())
    assert vector.steps == 20
    assert not torch.equal(vector.value, initial)


def test_hand_computed_steps() -> None:
    # Adam's first step moves every coordinate by lr against the sign of its gradient (up to eps); a zero
    # gradient does not move it.
    adam = LearnedVector(torch.zeros(3), lr=0.1)
    adam.step(torch.tensor([-2.0, 0.5, 0.0]))
    torch.testing.assert_close(adam.value, torch.tensor([0.1, -0.1, 0.0], dtype=F64))
    # SGD: x - lr (g + weight_decay x)
    sgd = LearnedVector(torch.tensor([1.0, -2.0]), lr=0.5, optimizer="sgd", weight_decay=0.1)
    sgd.step(torch.tensor([0.2, 0.4]))
    torch.testing.assert_close(sgd.value, torch.tensor([1.0 - 0.5 * 0.3, -2.0 - 0.5 * 0.2], dtype=F64))


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_weight_decay_pulls_towards_zero_without_gradient(optimizer: str) -> None:
    initial = torch.tensor([1.0, -3.0], dtype=F64)
    decayed = LearnedVector(initial, lr=0.01, optimizer=optimizer, weight_decay=0.5)
    plain = LearnedVector(initial, lr=0.01, optimizer=optimizer)
    for _ in range(5):
        decayed.step(torch.zeros(2))
        plain.step(torch.zeros(2))
    assert torch.equal(plain.value, initial)
    assert bool((decayed.value.abs() < initial.abs()).all())
    assert bool((torch.sign(decayed.value) == torch.sign(initial)).all())


def test_value_is_a_float64_cpu_copy() -> None:
    initial = torch.tensor([1.0, 2.0])  # float32
    vector = LearnedVector(initial, lr=0.1)
    initial.add_(10.0)  # the vector copied its initial value
    value = vector.value
    assert value.dtype == F64 and value.device.type == "cpu" and not value.requires_grad
    torch.testing.assert_close(value, torch.tensor([1.0, 2.0], dtype=F64))
    value.add_(5.0)  # changing a returned value does not change the vector
    vector.step(torch.tensor([1.0, -1.0]))  # float32 gradients are converted
    torch.testing.assert_close(value, torch.tensor([6.0, 7.0], dtype=F64))  # a step does not change a copy
    torch.testing.assert_close(vector.value, torch.tensor([0.9, 2.1], dtype=F64))
    assert vector.shape == (2,)


def test_assign_keeps_the_optimizer_state() -> None:
    # As GradNorm: a projection (here: rescale to sum 3) after every step, the Adam moments carried on.
    initial = torch.ones(3, dtype=F64)
    vector = LearnedVector(initial, lr=0.1)
    parameter, optimizer = reference(initial, "adam", lr=0.1)
    for gradient in gradients(10, size=3, seed=1):
        vector.step(gradient)
        vector.assign(vector.value * (3 / vector.value.sum()))
        parameter.grad = gradient.clone()
        optimizer.step()
        with torch.no_grad():
            parameter.mul_(3 / parameter.sum())
        assert torch.equal(vector.value, parameter.detach())
    torch.testing.assert_close(vector.value.sum(), torch.tensor(3.0, dtype=F64))
    # a fresh optimizer after the assignment would take a different step (the moments matter)
    fresh = LearnedVector(vector.value, lr=0.1)
    last = gradients(1, size=3, seed=2)[0]
    fresh.step(last)
    vector.step(last)
    assert not torch.allclose(fresh.value, vector.value)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_state_round_trip_continues_identically(optimizer: str) -> None:
    stream = gradients(12, seed=3)
    first = LearnedVector(torch.zeros(4), lr=0.05, optimizer=optimizer, weight_decay=0.01)
    for gradient in stream[:5]:
        first.step(gradient)
    state = first.state_dict()
    saved = copy.deepcopy(state)
    second = LearnedVector(torch.zeros(4), lr=0.05, optimizer=optimizer, weight_decay=0.01)
    second.load_state_dict(state)
    third = LearnedVector(torch.zeros(4), lr=0.05, optimizer=optimizer, weight_decay=0.01)
    third.load_state_dict(state)  # the same state loaded twice: the vectors must not share tensors
    assert second.steps == 5
    for gradient in stream[5:]:
        first.step(gradient)
        second.step(gradient)
        third.step(gradient)
        assert torch.equal(first.value, second.value)
        assert torch.equal(first.value, third.value)
    # later steps do not change a returned state
    assert torch.equal(state["value"], saved["value"]) and state["steps"] == saved["steps"] == 5
    for key, moment in saved["optimizer_state"]["state"].get(0, {}).items():
        assert torch.equal(state["optimizer_state"]["state"][0][key], moment)
    # an uninterrupted reference run gives the same value
    uninterrupted = LearnedVector(torch.zeros(4), lr=0.05, optimizer=optimizer, weight_decay=0.01)
    for gradient in stream:
        uninterrupted.step(gradient)
    assert torch.equal(uninterrupted.value, first.value)


def test_state_round_trips_through_torch_save(tmp_path: Path) -> None:
    stream = gradients(6, seed=4)
    first = LearnedVector(torch.zeros(4), lr=0.05)
    for gradient in stream[:3]:
        first.step(gradient)
    path = tmp_path / "state.pt"
    torch.save(first.state_dict(), path)
    second = LearnedVector(torch.zeros(4), lr=0.05)
    second.load_state_dict(torch.load(path, weights_only=False))
    for gradient in stream[3:]:
        first.step(gradient)
        second.step(gradient)
    assert torch.equal(first.value, second.value)


def test_loaded_state_keeps_the_vectors_hyperparameters() -> None:
    source = LearnedVector(torch.zeros(2), lr=0.1, optimizer="sgd")
    source.step(torch.ones(2))
    target = LearnedVector(torch.zeros(2), lr=0.5, optimizer="sgd")
    target.load_state_dict(source.state_dict())
    torch.testing.assert_close(target.value, torch.full((2,), -0.1, dtype=F64))
    target.step(torch.ones(2))
    torch.testing.assert_close(target.value, torch.full((2,), -0.6, dtype=F64))


def test_load_state_dict_validation() -> None:
    vector = LearnedVector(torch.zeros(3), lr=0.1)
    state = vector.state_dict()
    with pytest.raises(ValueError, match="state keys"):
        vector.load_state_dict({"value": torch.zeros(3)})
    with pytest.raises(ValueError, match="'sgd'"):
        vector.load_state_dict(LearnedVector(torch.zeros(3), lr=0.1, optimizer="sgd").state_dict())
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        vector.load_state_dict(LearnedVector(torch.zeros(2), lr=0.1).state_dict())
    with pytest.raises(ValueError, match="optimizer_state"):
        vector.load_state_dict({**state, "optimizer_state": {"state": {3: {}}, "param_groups": []}})


def test_step_and_assign_check_the_shape() -> None:
    vector = LearnedVector(torch.zeros(3), lr=0.1)
    with pytest.raises(ValueError, match="gradient"):
        vector.step(torch.zeros(2))
    with pytest.raises(ValueError, match="new value"):
        vector.assign(torch.zeros(4))
    assert vector.steps == 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"lr": 0.0}, "lr"),
        ({"lr": -1.0}, "lr"),
        ({"lr": math.nan}, "lr"),
        ({"lr": True}, "lr"),
        ({"lr": 0.1, "optimizer": "adamw"}, "optimizer"),
        ({"lr": 0.1, "weight_decay": -0.1}, "weight_decay"),
        ({"lr": 0.1, "weight_decay": math.inf}, "weight_decay"),
    ],
)
def test_bad_options_are_rejected(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LearnedVector(torch.zeros(2), **options)


def test_initial_value_must_be_a_vector() -> None:
    with pytest.raises(ValueError, match="1-D"):
        LearnedVector(torch.zeros(2, 2), lr=0.1)
