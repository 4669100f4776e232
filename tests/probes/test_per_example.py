"""Per-example gradients (torch.func with a looped fallback) and the probes' do-not-touch rule."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlscope.probes.per_example import per_example_gradients


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Dropout(0.5), nn.Linear(6, 3)).double()


def _data(n: int = 10) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(n, 4, generator=gen, dtype=torch.float64), torch.randint(0, 3, (n,), generator=gen)


def _reference(model: nn.Module, inputs: Tensor, targets: Tensor, params: list[nn.Parameter]) -> Tensor:
    """A Python loop of autograd over single examples, in eval mode."""
    model.eval()
    rows = []
    for x, y in zip(inputs, targets):
        loss = F.cross_entropy(model(x[None]), y[None])
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
    return torch.stack(rows)


class _Branchy(nn.Module):
    """Data-dependent control flow: vmap cannot run it, the looped fallback can."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3).double()

    def forward(self, x: Tensor) -> Tensor:
        out = self.linear(x)
        return out * 2 if x.sum() > 0 else out


def _snapshot(model: nn.Module) -> tuple[dict[str, Tensor], list[Tensor | None], list[bool]]:
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    return state, grads, [m.training for m in model.modules()]


def assert_untouched(model: nn.Module, before: tuple[dict[str, Tensor], list[Tensor | None], list[bool]]) -> None:
    state, grads, modes = before
    after = model.state_dict()
    assert state.keys() == after.keys()
    for key, value in state.items():
        assert torch.equal(value, after[key]), key
    for old, p in zip(grads, model.parameters()):
        assert (old is None and p.grad is None) or (old is not None and p.grad is not None and torch.equal(old, p.grad))
    assert modes == [m.training for m in model.modules()]


def _prepare_dirty(model: nn.Module) -> None:
    """Train mode with one submodule in eval, some .grad set and some None, BatchNorm statistics non-trivial."""
    model.train()
    model[3].eval()  # type: ignore[index]
    with torch.no_grad():
        model(torch.randn(8, 4, dtype=torch.float64))
    model[0].weight.grad = torch.ones_like(model[0].weight)  # type: ignore[index]


def test_matches_autograd_loop_in_float64() -> None:
    model = _model()
    _prepare_dirty(model)
    inputs, targets = _data()
    result = per_example_gradients(model, F.cross_entropy, inputs, targets, chunk_size=3)
    expected = _reference(model, inputs, targets, list(model.parameters()))
    assert result.shape == (10, sum(p.numel() for p in model.parameters()))
    torch.testing.assert_close(result, expected, rtol=1e-12, atol=1e-12)


def test_parameter_subset_and_order() -> None:
    model = _model()
    inputs, targets = _data()
    params = [model[4].bias, model[0].weight]  # type: ignore[index]
    expected = _reference(model, inputs, targets, params)
    result = per_example_gradients(model, F.cross_entropy, inputs, targets, parameters=params)
    assert result.shape == (10, 3 + 24)
    torch.testing.assert_close(result, expected, rtol=1e-12, atol=1e-12)


def test_loop_fallback_equals_vmap() -> None:
    model = _model()
    inputs, targets = _data()
    vmapped = per_example_gradients(model, F.cross_entropy, inputs, targets, method="vmap", chunk_size=4)
    looped = per_example_gradients(model, F.cross_entropy, inputs, targets, method="loop")
    torch.testing.assert_close(vmapped, looped, rtol=1e-12, atol=1e-12)


def test_auto_falls_back_when_vmap_fails() -> None:
    model = _Branchy()
    inputs, targets = _data()
    with pytest.raises(Exception):  # noqa: B017  (whatever vmap raises for data-dependent control flow)
        per_example_gradients(model, F.cross_entropy, inputs, targets, method="vmap")
    auto = per_example_gradients(model, F.cross_entropy, inputs, targets)
    torch.testing.assert_close(auto, _reference(model, inputs, targets, list(model.parameters())))


def test_model_left_exactly_as_before() -> None:
    model = _model()
    _prepare_dirty(model)
    before = _snapshot(model)
    inputs, targets = _data()
    per_example_gradients(model, F.cross_entropy, inputs, targets, method="vmap")
    assert_untouched(model, before)
    per_example_gradients(model, F.cross_entropy, inputs, targets, method="loop")
    assert_untouched(model, before)


def test_rejects_foreign_parameters() -> None:
    with pytest.raises(ValueError):
        per_example_gradients(_model(), F.cross_entropy, *_data(), parameters=[nn.Parameter(torch.zeros(2))])
