"""The affinity lookahead with BatchNorm on the batch's statistics (option ``batchnorm``, default ``"batch"``), as the
training step sees the model: equal to an independent computation on train-mode copies with the SGD step made by
hand, with the running statistics, every buffer and the global RNG untouched, and a training run with the probe on
identical to one with it off."""

from __future__ import annotations

import copy
from typing import Any

import pandas as pd
import pytest
import torch
from torch import Tensor, nn

from mtlscope import methods, settings
from mtlscope.engine.lookahead import ModelLookahead
from mtlscope.engine.sampling import Batch, random_batch
from mtlscope.engine.trainer import ListSink, Schedule, Trainer
from mtlscope.models.encoders import Encoder
from mtlscope.models.multitask import MultiTaskModel
from mtlscope.probes import PROBES, affinity, task_affinity
from mtlscope.probes.base import StepContext

LR, MOMENTUM, WEIGHT_DECAY = 0.05, 0.9, 1e-3


class NormEncoder(Encoder):
    """Linear -> BatchNorm -> Tanh -> Dropout -> Linear -> BatchNorm -> Tanh."""

    def __init__(self, dim: int = 5, width: int = 8) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(dim, width),
            nn.BatchNorm1d(width),
            nn.Tanh(),
            nn.Dropout(0.3),
            nn.Linear(width, width),
            nn.BatchNorm1d(width),
            nn.Tanh(),
        )
        self.output_dim = width

    def forward(self, inputs: Tensor) -> Tensor:
        out: Tensor = self.layers(inputs)
        return out


def _double(setting: Any) -> Any:
    for task in setting.tasks:
        for split in (task.train, task.val, task.test):
            object.__setattr__(split, "inputs", split.inputs.double())
            object.__setattr__(split, "targets", split.targets.double())
    return setting


def _setting(layout: str = "multi-input") -> Any:
    setting = settings.get(
        "synthetic", num_tasks=3, dim=5, train_size=64, val_size=8, test_size=8, relatedness=0.5, layout=layout
    )
    return _double(setting)


def _model(setting: Any, seed: int = 0) -> MultiTaskModel:
    torch.manual_seed(seed)
    names = setting.task_names
    heads: dict[str, nn.Module] = {name: nn.Linear(8, 1) for name in names[:-1]}
    # one head with its own BatchNorm: the heads' statistics follow the mode too
    heads[names[-1]] = nn.Sequential(nn.Linear(8, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 1))
    return MultiTaskModel(NormEncoder(), heads).double()


def _trained(steps: int = 3, layout: str = "multi-input") -> tuple[Any, MultiTaskModel, torch.optim.Optimizer, Batch]:
    """A few real SGD steps with momentum: momentum buffers and running statistics away from their start."""
    setting = _setting(layout)
    model = _model(setting)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        optimizer.zero_grad()
        batch = random_batch(setting, 16, generator)
        _losses(model, setting, batch).sum().backward()
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return setting, model, optimizer, random_batch(setting, 16, generator)


def _losses(model: MultiTaskModel, setting: Any, batch: Batch) -> Tensor:
    z = model.encoder(batch.inputs)
    return torch.stack(
        [
            task.loss(model.heads[task.name](z[batch.rows[task.name]]), batch.targets[task.name])
            for task in setting.tasks
        ]
    )


def _reference(model: MultiTaskModel, setting: Any, batch: Batch, optimizer: torch.optim.Optimizer, train: bool):
    """Z[i, j] computed independently: copies of the model in train mode (BatchNorm on the batch's statistics,
    momentum 0) or eval mode, dropout off, the task gradients by autograd and the SGD step with momentum and
    weight decay written out by hand from the optimizer's momentum buffers."""

    def prepared(source: MultiTaskModel) -> MultiTaskModel:
        twin = copy.deepcopy(source).train(train)
        for module in twin.modules():
            if isinstance(module, nn.Dropout):
                module.eval()
            if isinstance(module, nn.BatchNorm1d):
                module.momentum = 0.0
        return twin

    base_model = prepared(model)
    names = [name for name, _ in base_model.encoder.named_parameters()]
    shared = [p for _, p in base_model.encoder.named_parameters()]
    before = _losses(base_model, setting, batch)
    gradients = [torch.autograd.grad(before[i], shared, retain_graph=True) for i in range(len(before))]
    originals = dict(model.encoder.named_parameters())
    exact = torch.zeros(len(before), len(before), dtype=torch.float64)
    first = torch.zeros_like(exact)
    for i, grads in enumerate(gradients):
        delta = []
        for name, p, g in zip(names, shared, grads, strict=True):
            d_p = g + WEIGHT_DECAY * p.detach()
            momentum = optimizer.state[originals[name]]["momentum_buffer"]
            delta.append(-LR * (MOMENTUM * momentum + d_p))
        moved = prepared(model)
        with torch.no_grad():
            for p, d in zip(moved.encoder.parameters(), delta, strict=True):
                p.add_(d)
            after = _losses(moved, setting, batch)
        for j in range(len(before)):
            exact[i, j] = 1 - after[j] / before[j].detach()
            first[i, j] = -sum((g * d).sum() for g, d in zip(gradients[j], delta, strict=True)) / before[j].detach()
    return exact, first, before.detach()


@pytest.mark.parametrize("layout", ["multi-input", "shared-input"])
@pytest.mark.parametrize("batchnorm", ["batch", "running"])
def test_affinity_equals_an_independent_lookahead_in_either_mode(batchnorm: str, layout: str) -> None:
    # multi-input: the batch's statistics are those of all tasks' examples together, as the training step's one
    # encoder pass sees them (the Jacobian is then taken on one graph, not task by task)
    setting, model, optimizer, batch = _trained(layout=layout)
    model.train()
    modes = [module.training for module in model.modules()]
    state = copy.deepcopy(model.state_dict())
    optimizer_state = copy.deepcopy(optimizer.state_dict())
    rng = torch.get_rng_state()

    result = affinity(model, setting, batch, optimizer, batchnorm=batchnorm)

    exact, first, losses = _reference(model, setting, batch, optimizer, train=batchnorm == "batch")
    assert result.exact is not None and result.first_order is not None
    torch.testing.assert_close(result.losses, losses, rtol=1e-12, atol=0)
    torch.testing.assert_close(result.exact, exact, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(result.first_order, first, rtol=1e-10, atol=1e-12)
    # running statistics, num_batches_tracked, parameters, modes, optimizer and global RNG as they were
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert [module.training for module in model.modules()] == modes
    assert all(m.track_running_stats for m in model.modules() if isinstance(m, nn.BatchNorm1d))
    assert str(optimizer.state_dict()) == str(optimizer_state)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(p.grad is None for p in model.parameters())


def test_the_two_modes_differ_and_batch_is_the_default() -> None:
    setting, model, optimizer, batch = _trained()
    default = affinity(model, setting, batch, optimizer)
    on_batch = affinity(model, setting, batch, optimizer, batchnorm="batch")
    running = affinity(model, setting, batch, optimizer, batchnorm="running")
    assert default.exact is not None and on_batch.exact is not None and running.exact is not None
    assert torch.equal(default.exact, on_batch.exact)
    assert float((on_batch.exact - running.exact).abs().max()) > 1e-3  # the option is not vacuous here
    assert float((on_batch.losses - running.losses).abs().max()) > 1e-3
    # the probe's default is the batch's statistics too, and its record is the function's matrix
    probe: Any = PROBES.build("affinity", every_steps=1, mode="exact")
    probe.before_step(StepContext(model, setting, batch, 0, optimizer, 1.0, torch.Generator().manual_seed(0)))
    values = probe.report(setting.task_names)
    for i, source in enumerate(setting.task_names):
        for j, target in enumerate(setting.task_names):
            assert values[target][f"affinity/{source}"] == float(on_batch.exact[i, j])


def test_task_affinity_on_batch_statistics_equals_the_model_affinity() -> None:
    setting, model, optimizer, batch = _trained()
    state = copy.deepcopy(model.state_dict())
    rng = torch.get_rng_state()
    heads = list(model.heads.values())

    def losses() -> Tensor:
        return _losses(model, setting, batch)

    for batchnorm in ("batch", "running"):
        reference = affinity(model, setting, batch, optimizer, batchnorm=batchnorm)
        plain = task_affinity(losses, model.encoder, optimizer, modules=heads, batchnorm=batchnorm)
        assert reference.exact is not None and plain.exact is not None and plain.first_order is not None
        torch.testing.assert_close(plain.exact, reference.exact, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(plain.first_order, reference.first_order, rtol=1e-9, atol=1e-12)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert torch.equal(torch.get_rng_state(), rng)


def test_an_unknown_batchnorm_value_is_one_clear_line() -> None:
    setting, model, optimizer, batch = _trained(steps=0)
    for call in (
        lambda: affinity(model, setting, batch, optimizer, batchnorm="train"),
        lambda: task_affinity(lambda: _losses(model, setting, batch), model.encoder, optimizer, batchnorm="train"),
    ):
        with pytest.raises(ValueError, match="batchnorm must be one of running, batch") as info:
            call()
        assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="batchnorm") as error:
        PROBES.build("affinity", batchnorm="train")
    assert "\n" not in str(error.value)
    # task by task, each task's examples would be normalized alone: refused with batch statistics, not silently
    with pytest.raises(ValueError, match="jacobian_mode 'per_task'"):
        affinity(model, setting, batch, optimizer, jacobian_mode="per_task")
    running = affinity(model, setting, batch, optimizer, jacobian_mode="per_task", batchnorm="running")
    assert running.exact is not None


def _train(probes: list[Any], steps: int = 6) -> tuple[dict[str, Tensor], pd.DataFrame]:
    setting = _setting()
    model = _model(setting)
    sink = ListSink()
    trainer = Trainer(
        setting,
        model,
        methods.get("umtg"),
        torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY),
        schedule=Schedule(steps=steps, steps_per_epoch=3, eval_every=3),
        batch_size=8,
        loss_scale=1.0,
        seed=0,
        sink=sink,
        probes=probes,
    )
    trainer.run()
    return copy.deepcopy(model.state_dict()), pd.DataFrame(sink.records)


def test_training_with_the_probe_on_equals_training_with_it_off() -> None:
    with_probe, records = _train([PROBES.build("affinity", every_steps=1)])
    without, plain = _train([])
    assert with_probe.keys() == without.keys()
    for key, value in without.items():
        assert torch.equal(with_probe[key], value), key  # parameters and BatchNorm running statistics
    trained = records[records["split"] != "probe"].reset_index(drop=True)
    pd.testing.assert_frame_equal(
        trained.drop(columns=[c for c in trained if c.endswith("_s") or c == "time"], errors="ignore"),
        plain.drop(columns=[c for c in plain if c.endswith("_s") or c == "time"], errors="ignore"),
    )
    assert records[records["metric"].str.startswith("affinity/")]["value"].abs().max() > 0


def test_the_training_step_lookahead_leaves_the_heads_batchnorm_statistics_alone() -> None:
    # IT-MTL's lookahead runs inside the training step (train mode): BatchNorm on the batch's statistics in the
    # encoder and the heads, and no running statistic of either may move
    setting, model, optimizer, batch = _trained()
    model.train()
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    state = copy.deepcopy(model.state_dict())
    lookahead = ModelLookahead(model, setting, batch, optimizer)
    zero = torch.zeros(sum(p.numel() for p in model.encoder.parameters()), dtype=torch.float64)
    base = lookahead.losses(zero)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    with torch.no_grad():
        twin = copy.deepcopy(model)
        torch.testing.assert_close(base, _losses(twin, setting, batch), rtol=1e-12, atol=0)  # the step's own losses
