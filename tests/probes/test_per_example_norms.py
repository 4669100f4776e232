"""Per-example squared gradient norms from per-layer formulas, against the row norms of per-example gradients."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlscope.models.multitask import MultiTaskModel
from mtlscope.probes import per_example_norms
from mtlscope.probes.fisher import expected_per_example_trace, fim_trace
from mtlscope.probes.per_example import per_example_gradients
from mtlscope.probes.per_example_norms import (
    iter_per_example_squared_norms,
    per_example_squared_norms,
    uses_batch_statistics,
)
from mtlscope.probes.predictor import TaskPredictor, probe_parameters
from mtlscope.runs import ConfigError, execute, load, validate_config
from tests.probes.test_per_example import _snapshot, assert_untouched

LossFn = Callable[[Tensor, Tensor], Tensor]


@pytest.fixture
def fallback(monkeypatch: pytest.MonkeyPatch) -> list[list[Tensor]]:
    """Records the parameters of every call of the per-example-gradient fallback (and still runs it)."""
    calls: list[list[Tensor]] = []
    original = per_example_norms.iter_per_example_gradients

    def spy(*args: object, **kwargs: object) -> Iterator[Tensor]:
        calls.append(list(kwargs["parameters"]))  # type: ignore[call-overload]
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(per_example_norms, "iter_per_example_gradients", spy)
    return calls


def _reference(model: nn.Module, loss: LossFn, inputs: Tensor, targets: Tensor, params: list | None = None) -> Tensor:
    return per_example_gradients(model, loss, inputs, targets, parameters=params, method="vmap").pow(2).sum(1)


def _check(
    model: nn.Module, inputs: Tensor, targets: Tensor, loss: LossFn = F.cross_entropy, params: list | None = None
) -> Tensor:
    before = _snapshot(model)
    norms = per_example_squared_norms(model, loss, inputs, targets, parameters=params, chunk_size=7)
    assert_untouched(model, before)
    expected = _reference(model, loss, inputs, targets, params)
    assert norms.dtype == torch.float64 and norms.shape == (len(inputs),)
    assert torch.allclose(norms, expected, rtol=1e-10, atol=0), (norms - expected).abs().max()
    return norms


def _images(n: int, shape: tuple[int, ...], classes: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=gen, dtype=torch.float64), torch.randint(0, classes, (n,), generator=gen)


def test_mlp_uses_the_layer_formulas_only(fallback: list) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3, bias=False), nn.ReLU(), nn.Linear(3, 4)).double()
    _check(model, *_images(20, (5,), 4))
    head = list(model[4].parameters())
    _check(model, *_images(20, (5,), 4), params=[model[0].weight, *head])  # a subset, in the order given
    assert fallback == []


def test_convolutions_with_stride_padding_dilation_groups_and_batch_norm(fallback: list) -> None:
    torch.manual_seed(1)
    batch_norm = nn.BatchNorm2d(4)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 8, 3, padding=2, dilation=2, groups=2),
        nn.ReLU(),
        nn.Conv2d(8, 4, 2, padding="same", padding_mode="reflect", bias=False),
        batch_norm,
        nn.MaxPool2d(2),
        nn.Conv2d(4, 16, (2, 3), stride=(1, 2), padding=(1, 0)),  # 4 positions, 16 x 24: the Gram form
        nn.Flatten(),
        nn.Linear(64, 5),
    ).double()
    with torch.no_grad():
        batch_norm.running_mean.normal_()
        batch_norm.running_var.uniform_(0.5, 2.0)
        batch_norm.weight.normal_()
        batch_norm.bias.normal_()
    model.train()  # the probes' eval mode is set (and restored) by the function
    inputs, targets = _images(10, (3, 11, 11), 5)
    _check(model, inputs, targets)
    _check(model, inputs, targets, params=[model[2].weight, batch_norm.weight, model[9].bias])
    assert fallback == []


def test_linear_on_sequences_both_forms(fallback: list) -> None:
    """[B, T, in] inputs: the per-example weight gradient sums over T (Gram form for the 40 x 40 layer, the
    materialized [B, out, in] for the 3 -> 4 one), a dense per-position loss and an extra leading dim."""
    torch.manual_seed(2)

    class Sequence(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp, self.mid, self.out = nn.Linear(3, 40), nn.Linear(40, 40), nn.Linear(40, 4)

        def forward(self, x: Tensor) -> Tensor:  # [B, 2, T, 3] -> [B, 4, 2, T] (classes on dim 1)
            return self.out(torch.tanh(self.mid(torch.tanh(self.inp(x))))).permute(0, 3, 1, 2)

    gen = torch.Generator().manual_seed(3)
    inputs = torch.randn(9, 2, 5, 3, generator=gen, dtype=torch.float64)
    targets = torch.randint(0, 4, (9, 2, 5), generator=gen)
    _check(Sequence().double(), inputs, targets)
    assert fallback == []


def test_layer_norm_goes_through_per_example_gradients_and_embeddings_have_their_formula(fallback: list) -> None:
    torch.manual_seed(3)

    class Tokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed, self.norm = nn.Embedding(11, 6), nn.LayerNorm(6)
            self.linear, self.batch_norm, self.head = nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Linear(8, 3)

        def forward(self, x: Tensor) -> Tensor:
            hidden = torch.relu(self.linear(self.norm(self.embed(x)))).mean(1)
            return self.head(self.batch_norm(hidden))

    model = Tokens().double()
    with torch.no_grad():
        model.batch_norm.running_var.uniform_(0.5, 2.0)
    gen = torch.Generator().manual_seed(4)
    inputs, targets = torch.randint(0, 11, (12, 4), generator=gen), torch.randint(0, 3, (12,), generator=gen)
    _check(model, inputs, targets)
    others = {id(p) for p in model.norm.parameters()}
    assert fallback and all({id(p) for p in call} == others for call in fallback)


@pytest.mark.parametrize("padding_idx", [None, 0])
def test_embeddings_with_repeated_indices_padding_and_several_tables(padding_idx: int | None, fallback: list) -> None:
    # per-example norms of an embedding's gradient: lookups of the same index in one example add up before the
    # norm (indices repeat here), the padding row gets no gradient, and a one-index-per-example table ([B])
    torch.manual_seed(5)

    class Pairs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.user, self.words = nn.Embedding(7, 4), nn.Embedding(5, 4, padding_idx=padding_idx)
            self.head = nn.Linear(4, 3)

        def forward(self, x: Tensor) -> Tensor:
            return self.head(self.user(x[:, 0]) * self.words(x[:, 1:]).mean(1))

    model = Pairs().double()
    gen = torch.Generator().manual_seed(6)
    inputs = torch.cat([torch.randint(0, 7, (10, 1), generator=gen), torch.randint(0, 5, (10, 6), generator=gen)], 1)
    targets = torch.randint(0, 3, (10,), generator=gen)
    _check(model, inputs, targets)
    assert fallback == []


def test_batch_statistics_couple_the_examples(fallback: list) -> None:
    """BatchNorm in training mode or without running statistics: per-example gradients of everything."""

    class Positions(nn.Module):  # [B, L, 4] -> BatchNorm over the batch and the L positions -> [B, 3]
        def __init__(self) -> None:
            super().__init__()
            self.inp, self.norm, self.out = (
                nn.Linear(4, 6),
                nn.BatchNorm1d(6, track_running_stats=False),
                nn.Linear(6, 3),
            )

        def forward(self, x: Tensor) -> Tensor:
            return self.out(self.norm(self.inp(x).transpose(1, 2)).mean(2))

    model = Positions().double()
    assert uses_batch_statistics(model) and uses_batch_statistics(nn.BatchNorm1d(3).train())
    assert not uses_batch_statistics(nn.BatchNorm1d(3).eval())
    inputs, targets = _images(8, (5, 4), 3)
    _check(model, inputs, targets)
    assert len(fallback[0]) == 6


def test_multi_task_predictors_and_parameter_choices(fallback: list) -> None:
    torch.manual_seed(4)
    encoder = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 8), nn.ReLU())
    model = MultiTaskModel(encoder, {"a": nn.Linear(8, 3), "b": nn.Linear(8, 2)}).double()
    inputs, targets = _images(10, (1, 6, 6), 2)
    for task in ("a", "b"):
        for choice in ("predictor", "shared"):
            predictor = TaskPredictor(model, task)
            _check(predictor, inputs, targets, params=probe_parameters(model, task, choice))
    assert fallback == []


class _Reused(nn.Module):
    """A layer called twice per forward, a weight also used outside its layer, and a weight tied to another."""

    def __init__(self, case: str) -> None:
        super().__init__()
        self.case, self.first, self.second = case, nn.Linear(4, 4), nn.Linear(4, 3)
        if case == "tied":
            self.tied = nn.Linear(4, 4)
            self.tied.weight = self.first.weight

    def forward(self, x: Tensor) -> Tensor:
        hidden = torch.tanh(self.first(x))
        if self.case == "twice":
            hidden = torch.tanh(self.first(hidden))
        elif self.case == "functional":
            hidden = hidden + 0.5 * F.linear(x, self.first.weight)
        elif self.case == "tied":
            hidden = torch.tanh(self.tied(hidden))
        return self.second(hidden)


@pytest.mark.parametrize("case", ["twice", "functional", "tied"])
def test_layers_used_more_than_once_are_detected(case: str, fallback: list) -> None:
    model = _Reused(case).double()
    inputs, targets = _images(10, (4,), 3)
    _check(model, inputs, targets)
    # the layer's parameters (the tied weight only, for "tied") go through per-example gradients, in both chunks
    others = {id(model.first.weight)} if case == "tied" else {id(p) for p in model.first.parameters()}
    assert [{id(p) for p in call} for call in fallback] == [others, others]


def test_mean_reduced_losses_and_unused_parameters(fallback: list) -> None:
    """The loss is applied to each example as a one-example batch: a mean over an example's outputs stays a mean
    over that example's outputs (not over the batch); a layer the forward never calls has zero gradients."""
    torch.manual_seed(5)

    class Unused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used, self.unused = nn.Linear(3, 2), nn.Linear(3, 2)

        def forward(self, x: Tensor) -> Tensor:
            return self.used(x)

    model = Unused().double()
    gen = torch.Generator().manual_seed(6)
    inputs, targets = torch.randn(11, 3, generator=gen, dtype=torch.float64), torch.randn(11, 2, generator=gen)
    _check(model, inputs, targets.double(), loss=F.mse_loss)
    norms = per_example_squared_norms(
        model, "mse", inputs, targets.double(), parameters=[*model.unused.parameters(), model.used.bias]
    )
    expected = _reference(model, F.mse_loss, inputs, targets.double(), [model.used.bias])
    assert torch.allclose(norms, expected, rtol=1e-10, atol=0)
    assert fallback == []


def test_methods_and_bad_input() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    inputs, targets = _images(6, (3,), 2)
    auto = per_example_squared_norms(model, "cross_entropy", inputs, targets)
    for method in ("vmap", "loop"):
        forced = per_example_squared_norms(model, "cross_entropy", inputs, targets, method=method)  # type: ignore[arg-type]
        assert torch.allclose(auto, forced, rtol=1e-10, atol=0)
    with pytest.raises(ValueError, match="method must be one of auto, vmap, loop"):
        list(iter_per_example_squared_norms(model, F.cross_entropy, inputs, targets, method="fast"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="chunk_size"):
        per_example_squared_norms(model, F.cross_entropy, inputs, targets, chunk_size=0)
    with pytest.raises(ValueError, match="6 inputs but 5 targets"):
        per_example_squared_norms(model, F.cross_entropy, inputs, targets[:5])


def test_fisher_traces_equal_the_per_example_gradient_path() -> None:
    torch.manual_seed(6)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 25, 3)).double()
    inputs, _ = _images(40, (1, 5, 5), 3)

    def trace(method: str) -> object:
        return fim_trace(model, inputs, generator=torch.Generator().manual_seed(0), per_example_method=method)  # type: ignore[arg-type]

    auto, vmap = trace("auto"), trace("vmap")
    assert auto.fim_trace == vmap.fim_trace  # type: ignore[attr-defined]
    assert auto.fim_trace_per_example == pytest.approx(vmap.fim_trace_per_example, rel=1e-10)  # type: ignore[attr-defined]
    assert expected_per_example_trace(model, inputs) == pytest.approx(
        expected_per_example_trace(model, inputs, per_example_method="vmap"), rel=1e-10
    )


def _run(path: Path, method: str | None) -> pd.DataFrame:
    options = {"subset": 64, "every": 1} | ({"per_example_method": method} if method else {})
    config = {
        "setting": {"name": "digits-mtl", "tasks": ["digits1", "noisy-digits"]},
        "model": {"encoder": {"name": "lenet", "channels": [4, 6], "kernel_size": 3, "hidden": [16]}},
        "training": {"steps": 10, "eval_every": 5, "batch_size": 16},
        "probes": {"fim_trace": options},
    }
    records = load(execute(validate_config(config), path).path.parent).records
    return records[records["split"] == "probe"].drop(columns="run_id").reset_index(drop=True)


def test_a_runs_recorded_fisher_values_do_not_depend_on_the_path(tmp_path: Path) -> None:
    """float32, a LeNet with two tasks: the default (layer formulas) records what per-example gradients give."""
    auto, vmap = _run(tmp_path / "auto", None), _run(tmp_path / "vmap", "vmap")
    pd.testing.assert_frame_equal(auto.drop(columns="value"), vmap.drop(columns="value"))
    per_example = auto["metric"] == "fim_trace_per_example"
    assert per_example.sum() == 6
    assert ((auto["value"] - vmap["value"]).abs() <= 1e-6 * vmap["value"].abs())[per_example].all()
    assert (auto["value"] == vmap["value"])[~per_example].all()
    with pytest.raises(ConfigError, match="per_example_method"):
        validate_config(
            {
                "setting": {"name": "digits-mtl", "tasks": ["digits1"]},
                "probes": {"fim_trace": {"per_example_method": "x"}},
            }
        )
