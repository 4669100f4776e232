"""The per-task gradient engine: every Jacobian mode agrees with a reference, in both layouts."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from mtlscope import methods, settings
from mtlscope.engine.gradients import (
    encoder_jacobian,
    forward,
    jacobian_batched,
    jacobian_loop,
    last_shared_parameters,
    per_task_gradients,
    representation_gradients,
    task_losses,
)
from mtlscope.engine.lookahead import ModelLookahead, flatten, optimizer_update, unflatten
from mtlscope.engine.optimizers import build_optimizer
from mtlscope.engine.sampling import BatchSampler
from mtlscope.engine.trainer import ListSink, Schedule, Trainer
from mtlscope.methods.base import Combination, Method, StepInput
from mtlscope.models import build_model


def _setup(name: str, **options):
    setting = settings.get(name, **options)
    model = build_model(setting, {"name": "mlp", "hidden": [16, 8]}, {"name": "linear"}, 0).double()
    batch = BatchSampler(setting, 8, seed=0).next()
    batch = type(batch)(batch.inputs.double(), batch.targets, batch.rows)
    return setting, model, batch


def _reference(model, setting, batch) -> torch.Tensor:
    """Each task's gradient from its own loss, computed from scratch (no shared graph)."""
    shared = list(model.shared_parameters())
    rows = []
    for task in setting.tasks:
        index = batch.rows[task.name]
        outputs = model.heads[task.name](model.encoder(batch.inputs)[index])
        loss = task.loss(outputs, batch.targets[task.name])
        rows.append(flatten(torch.autograd.grad(loss, shared)))
    return torch.stack(rows)


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("digits-mtl", {}),
        ("digits-attributes", {}),
        ("synthetic", {"num_tasks": 4, "layout": "shared-input"}),
        ("synthetic", {"num_tasks": 5}),
    ],
)
def test_every_jacobian_mode_equals_the_reference(name: str, options: dict) -> None:
    setting, model, batch = _setup(name, **options)
    expected = _reference(model, setting, batch)
    shared = list(model.shared_parameters())
    losses, _ = task_losses(model, setting, batch)
    torch.testing.assert_close(jacobian_loop(losses, shared), expected)
    torch.testing.assert_close(jacobian_batched(losses, shared), expected)
    torch.testing.assert_close(jacobian_batched(losses, shared, chunk=2), expected)
    graph = forward(model, setting, batch)
    at_representation = representation_gradients(graph)
    torch.testing.assert_close(at_representation.flatten(1), jacobian_loop(graph.losses, [graph.representation]))
    for mode, chunk in (("batched", None), ("batched", 2), ("loop", None)):
        through = encoder_jacobian(graph.representation, at_representation, shared, mode, chunk)
        torch.testing.assert_close(through, expected)
    if setting.layout == "multi-input":
        computed = per_task_gradients(model, setting, batch, last_shared_parameters(model))
        torch.testing.assert_close(computed.jacobian, expected)
        torch.testing.assert_close(computed.losses, losses.detach())
        last = flatten(last_shared_parameters(model))
        assert computed.last_shared_jacobian is not None
        assert computed.last_shared_jacobian.shape == (len(setting.tasks), last.numel())
        torch.testing.assert_close(computed.last_shared_jacobian, expected[:, -last.numel() :])


class Recorder(Method):
    """Records what the engine hands to a method that needs everything; returns the UMTG."""

    name = "recorder"
    needs = frozenset({"jacobian", "representation", "last_shared_jacobian", "lookahead", "post_step_losses"})

    def __init__(self) -> None:
        self.inputs: list[StepInput] = []
        self.after: list[torch.Tensor] = []

    def combine(self, step: StepInput) -> Combination:
        self.inputs.append(step)
        return Combination(loss_weights=torch.ones(len(step.task_names)) / step.loss_scale)

    def after_step(self, losses_after: torch.Tensor) -> None:
        self.after.append(losses_after)


@pytest.mark.parametrize("name", ["digits-mtl", "digits-attributes"])
def test_engine_supplies_every_need(name: str) -> None:
    setting = settings.get(name)
    model = build_model(setting, {"name": "mlp", "hidden": [16, 8]}, {"name": "linear"}, 0)
    recorder = Recorder()
    optimizer = build_optimizer(model.parameters(), "adam", 1e-2)
    trainer = Trainer(
        setting,
        model,
        recorder,
        optimizer,
        schedule=Schedule(3, 10, 10),
        batch_size=8,
        loss_scale=2.0,
        seed=0,
        sink=ListSink(),
    )
    trainer.run()
    step = recorder.inputs[0]
    num_tasks = len(setting.tasks)
    shared = flatten(list(model.shared_parameters()))
    assert step.jacobian is not None and step.jacobian.shape == (num_tasks, shared.numel())
    assert step.representation_jacobian is not None and step.representation_jacobian.shape[0] == num_tasks
    rows = 8 * num_tasks if setting.layout == "multi-input" else 8
    assert step.representation_jacobian.shape[1] == rows * 8  # encoder output: 8 units per example
    assert step.last_shared_jacobian is not None and step.last_shared_jacobian.shape == (num_tasks, 8 * 16 + 8)
    assert step.lookahead is not None and step.loss_scale == 2.0 and step.epoch == 0
    assert len(recorder.after) == 3 and recorder.after[0].shape == (num_tasks,)


def test_lookahead_losses_equal_a_real_step_and_change_nothing() -> None:
    setting, model, batch = _setup("digits-mtl")
    model.float()
    batch = type(batch)(batch.inputs.float(), batch.targets, batch.rows)
    optimizer = build_optimizer(model.parameters(), "adam", 1e-2)
    lookahead = ModelLookahead(model, setting, batch, optimizer)
    shared = list(model.shared_parameters())
    gradient = torch.randn(flatten(shared).numel(), generator=torch.Generator().manual_seed(1))
    before = [p.detach().clone() for p in model.parameters()]
    delta = lookahead.update(gradient)
    torch.testing.assert_close(delta, flatten(optimizer_update(optimizer, shared, unflatten(gradient, shared))))
    predicted = lookahead.losses(delta)
    for p, q in zip(model.parameters(), before):
        assert torch.equal(p, q)
    assert not optimizer.state  # the optimizer state was not created or touched
    with torch.no_grad():
        for p, d in zip(shared, unflatten(delta, shared)):
            p.add_(d)
    torch.testing.assert_close(predicted, task_losses(model, setting, batch)[0].detach())


def _run(diagnostics_every: int | None, jacobian_mode: str = "auto", method: str = "umtg") -> pd.DataFrame:
    setting = settings.get("digits-mtl", tasks=["digits1", "noisy-digits"])
    model = build_model(setting, {"name": "mlp", "hidden": [16, 8]}, {"name": "linear"}, 0)
    sink = ListSink()
    Trainer(
        setting,
        model,
        methods.get(method),
        build_optimizer(model.parameters(), "adam", 1e-2),
        schedule=Schedule(12, 4, 4),
        batch_size=8,
        loss_scale=1.0,
        seed=0,
        sink=sink,
        diagnostics_every=diagnostics_every,
        jacobian_mode=jacobian_mode,
    ).run()
    return pd.DataFrame(sink.records)


def test_diagnostics_leave_training_unchanged_and_are_recorded() -> None:
    plain = _run(None)
    diagnosed = _run(3)
    steps = diagnosed[diagnosed["split"] == "step"]
    pd.testing.assert_frame_equal(diagnosed[diagnosed["split"] != "step"].reset_index(drop=True), plain)
    assert sorted(steps["step"].unique()) == [0, 3, 6, 9]
    metrics = set(zip(steps["task"], steps["metric"]))
    assert ("digits1|noisy-digits", "cosine") in metrics
    assert {
        ("*", "conflicting_pairs"),
        ("*", "shared_grad_norm"),
        ("*", "update_norm"),
        ("digits1", "weight"),
    } <= metrics
    cosine = steps[steps["metric"] == "cosine"]["value"]
    assert ((cosine >= -1) & (cosine <= 1)).all()
    conflicts = steps[steps["metric"] == "conflicting_pairs"].set_index("step")["value"]
    assert (conflicts == (cosine.values < 0).astype(float)).all()
    assert (steps[steps["metric"] == "weight"]["value"] == 1.0).all()
