"""The optimizer lookahead equals a real optimizer.step() on a deep copy (SPEC §4.5)."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from torch import nn

from mtlscope.engine.lookahead import optimizer_update

OPTIMIZERS: dict[str, Callable[[list[nn.Parameter]], torch.optim.Optimizer]] = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1),
    "sgd_weight_decay": lambda p: torch.optim.SGD(p, lr=0.1, weight_decay=0.01),
    "sgd_momentum": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
    "sgd_nesterov_dampening": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "sgd_dampening": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.8, dampening=0.3),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    "adam_weight_decay_amsgrad": lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=0.1, amsgrad=True),
    "adam_betas": lambda p: torch.optim.Adam(p, lr=3e-3, betas=(0.5, 0.9), eps=1e-6),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.05),
}


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2)).double()


def _loss(model: nn.Module, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 4, generator=generator, dtype=torch.float64)
    return (model(x) ** 2).mean()


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("steps_before", [0, 3])  # step 1 and a later step
def test_lookahead_equals_real_step_and_touches_nothing(name: str, steps_before: int) -> None:
    model = _model()
    optimizer = OPTIMIZERS[name](list(model.parameters()))
    for seed in range(steps_before):
        optimizer.zero_grad()
        _loss(model, seed).backward()
        optimizer.step()
    gradients = [torch.randn_like(p) for p in model.parameters()]
    state_before = copy.deepcopy(optimizer.state_dict())
    params_before = [p.detach().clone() for p in model.parameters()]

    predicted = optimizer_update(optimizer, list(model.parameters()), gradients)

    # nothing moved
    for p, q in zip(model.parameters(), params_before, strict=True):
        assert torch.equal(p, q)
    after = optimizer.state_dict()
    for key, value in state_before["state"].items():
        for field, tensor in value.items():
            assert torch.equal(torch.as_tensor(after["state"][key][field]), torch.as_tensor(tensor))
    # a real step on a deep copy
    twin = copy.deepcopy(model)
    twin_optimizer = OPTIMIZERS[name](list(twin.parameters()))
    twin_optimizer.load_state_dict(copy.deepcopy(state_before))
    for p, g in zip(twin.parameters(), gradients, strict=True):
        p.grad = g.clone()
    twin_optimizer.step()
    for p_new, p_old, delta in zip(twin.parameters(), params_before, predicted, strict=True):
        torch.testing.assert_close(p_old + delta, p_new.detach(), rtol=1e-12, atol=1e-14)


def test_unsupported_optimizer_is_a_clear_error() -> None:
    model = _model()
    optimizer = torch.optim.RMSprop(model.parameters())
    with pytest.raises(TypeError, match="RMSprop"):
        optimizer_update(optimizer, list(model.parameters()), [torch.zeros_like(p) for p in model.parameters()])
