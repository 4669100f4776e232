"""Learning-rate schedules: closed forms, warm-up, what the trainer sets, records and simulates."""

from __future__ import annotations

import itertools
import math
from typing import Any

import pandas as pd
import pytest
import torch

from mtlscope import settings
from mtlscope.engine.lookahead import flatten
from mtlscope.engine.lr_schedules import LR_SCHEDULES, build_learning_rate
from mtlscope.engine.optimizers import build_optimizer
from mtlscope.engine.trainer import ListSink, Schedule, Trainer
from mtlscope.methods.base import Combination, Method, StepInput
from mtlscope.models import build_model
from mtlscope.probes.base import Probe, ProbeContext, ProbeValues, StepContext
from mtlscope.reproduce import load_preset
from mtlscope.runs import validate_config


def _lrs(lr: float, schedule: dict[str, Any] | None, steps: int, steps_per_epoch: int, upto: int) -> list[float]:
    learning_rate = build_learning_rate(lr, schedule, steps=steps, steps_per_epoch=steps_per_epoch)
    return [learning_rate.lr_at(step) for step in range(upto)]


def test_constant_is_the_optimizers_lr_at_every_step() -> None:
    assert _lrs(0.1, None, 100, 7, 50) == [0.1] * 50
    assert _lrs(0.1, {"name": "constant"}, 100, 7, 50) == [0.1] * 50


def test_step_decay_multiplies_by_gamma_every_n_epochs() -> None:
    # 3 steps per epoch, every 2 epochs: steps 0-5 at lr, 6-11 at lr/2, 12-17 at lr/4
    lrs = _lrs(1.0, {"name": "step", "every_epochs": 2, "gamma": 0.5}, 18, 3, 18)
    assert lrs == [1.0] * 6 + [0.5] * 6 + [0.25] * 6
    assert _lrs(2.0, {"name": "step", "every_epochs": 1}, 4, 2, 4) == pytest.approx([2.0, 2.0, 0.2, 0.2])


def test_exponential_decays_by_gamma_per_epoch() -> None:
    # the temperature paper's CIFAR-100: lr 0.004, decay 0.99; here 10 steps per epoch
    lrs = _lrs(0.004, {"name": "exponential", "gamma": 0.99}, 1000, 10, 31)
    assert lrs[:10] == [0.004] * 10
    assert lrs[10:20] == pytest.approx([0.00396] * 10, rel=1e-12)
    assert lrs[25] == pytest.approx(0.0039204, rel=1e-12)
    assert lrs[30] == pytest.approx(0.004 * 0.970299, rel=1e-12)


def test_cosine_goes_from_lr_to_min_lr_over_the_run() -> None:
    lrs = _lrs(1.0, {"name": "cosine", "min_lr": 0.1}, 4, 2, 5)
    half = (1 + math.sqrt(0.5)) / 2  # (1 + cos(pi/4)) / 2
    assert lrs == pytest.approx([1.0, 0.1 + 0.9 * half, 0.55, 0.1 + 0.9 * (1 - half), 0.1], rel=1e-12)
    assert _lrs(0.2, {"name": "cosine"}, 2, 1, 3) == pytest.approx([0.2, 0.1, 0.0], abs=1e-15)


def test_warmup_ramps_linearly_then_follows_the_schedule() -> None:
    assert _lrs(1.0, {"name": "constant", "warmup_steps": 4}, 10, 5, 6) == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    # combined: the schedule's value times (s + 1) / W during the warm-up
    lrs = _lrs(1.0, {"name": "exponential", "gamma": 0.5, "warmup_steps": 3}, 10, 2, 5)
    assert lrs == pytest.approx([1 / 3, 2 / 3, 0.5, 0.5, 0.25], rel=1e-12)
    lrs = _lrs(1.0, {"name": "cosine", "warmup_steps": 2}, 4, 1, 3)
    assert lrs == pytest.approx([0.5, (1 + math.sqrt(0.5)) / 2, 0.5], rel=1e-12)


def test_every_schedule_declares_typed_options() -> None:
    assert LR_SCHEDULES.available() == ["constant", "cosine", "exponential", "step"]
    for name in LR_SCHEDULES.available():
        assert "warmup_steps" in LR_SCHEDULES.entry(name).option_types()


# -- in the trainer ---------------------------------------------------------------------------------------------

SCHEDULE = {"name": "exponential", "gamma": 0.5, "warmup_steps": 3}
STEPS, STEPS_PER_EPOCH, EVAL_EVERY = 8, 2, 4


class LookaheadRecorder(Method):
    """The uniform objective (C = 1) formed explicitly, recording the lookahead's simulated shared update."""

    name = "lookahead-recorder"
    needs = frozenset({"jacobian", "lookahead"})

    def __init__(self) -> None:
        self.simulated: list[torch.Tensor] = []
        self.gradients: list[torch.Tensor] = []

    def combine(self, step: StepInput) -> Combination:
        assert step.jacobian is not None and step.lookahead is not None
        shared_gradient = step.jacobian.sum(0)
        self.gradients.append(shared_gradient.clone())
        self.simulated.append(step.lookahead.update(shared_gradient).clone())
        return Combination(shared_gradient=shared_gradient)


class LrRecorder(Probe):
    """Records the optimizer's learning rate as step-observing probes (the affinity probe) see it."""

    name = "lr-recorder"
    observes_steps = True

    def __init__(self) -> None:
        self.seen: dict[int, list[float]] = {}

    def before_step(self, context: StepContext) -> None:
        self.seen[context.step] = [group["lr"] for group in context.optimizer.param_groups]

    def __call__(self, context: ProbeContext) -> ProbeValues:
        return {}


def _scheduled_run(schedule: dict[str, Any] | None = SCHEDULE) -> dict[str, Any]:
    setting = settings.get("digits-mtl", tasks=["digits1", "digits2"])
    model = build_model(setting, {"name": "mlp", "hidden": [8]}, dict(setting.default_model["head"]), 0)
    optimizer = build_optimizer(model.parameters(), "sgd", 0.2, momentum=0.9)
    learning_rate = build_learning_rate(0.2, schedule, steps=STEPS, steps_per_epoch=STEPS_PER_EPOCH)
    method, probe, sink = LookaheadRecorder(), LrRecorder(), ListSink()
    shared = list(model.shared_parameters())
    after = [flatten([p.detach() for p in shared]).clone()]
    trainer = Trainer(
        setting,
        model,
        method,
        optimizer,
        schedule=Schedule(steps=STEPS, steps_per_epoch=STEPS_PER_EPOCH, eval_every=EVAL_EVERY),
        batch_size=8,
        loss_scale=1.0,
        seed=0,
        sink=sink,
        probes=[probe],
        on_step=lambda step: after.append(flatten([p.detach() for p in shared]).clone()),
        lr_at=learning_rate.lr_at,
    )
    assert trainer.run().status == "completed"
    return {
        "lrs": [learning_rate.lr_at(step) for step in range(STEPS + 1)],
        "seen": probe.seen,
        "simulated": method.simulated,
        "gradients": method.gradients,
        "real": [b - a for a, b in itertools.pairwise(after)],
        "records": pd.DataFrame(sink.records),
    }


def test_the_optimizer_holds_the_scheduled_lr_of_each_step() -> None:
    run = _scheduled_run()
    assert run["lrs"][:STEPS] == pytest.approx([0.2 / 3, 0.4 / 3, 0.1, 0.1, 0.05, 0.05, 0.025, 0.025], rel=1e-12)
    assert run["seen"] == {step: [run["lrs"][step]] for step in range(STEPS)}


def test_the_lookahead_simulates_each_step_with_its_scheduled_lr() -> None:
    run = _scheduled_run()
    assert len(run["simulated"]) == len(run["real"]) == STEPS
    buffer = torch.zeros_like(run["gradients"][0])
    for step, (simulated, real, gradient) in enumerate(zip(run["simulated"], run["real"], run["gradients"])):
        buffer = 0.9 * buffer + gradient  # SGD with momentum 0.9 (the first step's buffer is the gradient)
        expected = -run["lrs"][step] * buffer
        assert torch.allclose(real, expected, rtol=1e-4, atol=1e-7), f"real step {step}"
        assert torch.allclose(simulated, expected, rtol=1e-4, atol=1e-7), f"simulated step {step}"
        assert real.abs().max() > 0


def test_checkpoints_record_the_lr_of_the_next_update() -> None:
    run = _scheduled_run()
    records, lrs = run["records"], run["lrs"]
    for task in ("digits1", "digits2"):
        optim = records[(records["task"] == task) & (records["split"] == "optim")]
        table = optim.pivot_table(index="step", columns="metric", values="value")
        assert list(table.index) == [0, 4, 8]
        assert list(table["lr"]) == [lrs[0], lrs[4], lrs[8]]
        assert list(table["temperature"]) == [lrs[0] / 8, lrs[4] / 8, lrs[8] / 8]


def test_no_schedule_keeps_the_optimizers_lr() -> None:
    run = _scheduled_run(schedule=None)
    assert run["seen"] == {step: [0.2] for step in range(STEPS)}


# -- presets ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["temperature-fig1", "temperature-fig2", "temperature-fig4"])
def test_the_temperature_papers_cifar100_presets_decay_the_lr_by_099_per_epoch(name: str) -> None:
    """App. A.2 of Mueller et al. 2022; the presets wait for the cifar100-mtl setting, so their optimizer is checked
    on an embedded one."""
    base = load_preset(name).sweep["base"]
    config = validate_config({**base, "setting": {"name": "digits-mtl"}, "model": {}})
    assert config.optimizer.schedule == {"name": "exponential", "gamma": 0.99, "warmup_steps": 0}
    assert (config.optimizer.name, config.optimizer.lr, config.optimizer.momentum) == ("sgd", 0.004, 0.9)
