"""The cost-aware default probe schedule (mtlscope.engine.probe_budget): measurement counts, the water-filling
choice on hand-computed cases, the probes' cost estimates, and what a run records and measures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mtlscope.engine.probe_budget import (
    FORWARD,
    Spacing,
    checkpoint_measurements,
    choose_spacings,
    plan_probe_schedule,
    step_observations,
    training_units_per_step,
    warn_sparsest,
)
from mtlscope.engine.trainer import Schedule
from mtlscope.losses import cross_entropy
from mtlscope.probes import build_probe
from mtlscope.runs import execute, load, validate_config
from mtlscope.settings import Setting, Split, Task


def make_setting(tasks: int, train: int, layout: str = "multi-input") -> Setting:
    def split(size: int) -> Split:
        return Split(torch.zeros(size, 1), torch.zeros(size, dtype=torch.long))

    if layout == "shared-input":
        shared = [Task(f"t{k}", 5, split(train), split(2), split(2), loss=cross_entropy()) for k in range(tasks)]
        return Setting("plan", tuple(shared), layout, (1,), {"encoder": {"name": "mlp"}})
    made = tuple(Task(f"t{k}", 5, split(train), split(2), split(2), loss=cross_entropy()) for k in range(tasks))
    return Setting("plan", made, layout, (1,), {"encoder": {"name": "mlp"}})


def test_measurement_counts() -> None:
    # the FashionMTL preset: 36 log-spaced checkpoints, every 10th = indices 0, 10, 20, 30 and the last
    assert Schedule(4000, 1, checkpoints_per_decade=10).regular_checkpoints() == 35
    assert checkpoint_measurements(35, 10) == 5
    # the CIFAR run: a checkpoint per epoch (125 steps), 75 epochs: indices 0..74, every 10th and the last
    assert Schedule(9375, 125, eval_every=125).regular_checkpoints() == 75
    assert checkpoint_measurements(75, 10) == 9 and checkpoint_measurements(75, 75) == 2
    assert checkpoint_measurements(75, 1) == 76 and checkpoint_measurements(75, 1000) == 2
    # steps not a multiple of eval_every: 0, 4, 8 and 10 -> regular indices 0, 1, 2
    assert Schedule(10, 1, eval_every=4).regular_checkpoints() == 3
    assert step_observations(4000, 50) == 80 and step_observations(4001, 50) == 81 and step_observations(3, 50) == 1
    with pytest.raises(ValueError, match="every"):
        checkpoint_measurements(10, 0)


def _item(
    cost: float, regular: int = 20, training: float = 1000.0, lowest: int = 1, fixed: int | None = None
) -> Spacing:
    return Spacing(lambda n: cost * checkpoint_measurements(regular, n) / training, lowest, regular, fixed)


def test_everything_at_its_default_spacing_when_that_fits() -> None:
    # 21 measurements of 10 units = 210 of 1000 units: 21% <= 25%
    assert choose_spacings([_item(10.0)], budget=0.25) == [1]
    assert choose_spacings([_item(1.0, lowest=10), _item(0.5, lowest=3)], budget=0.25) == [10, 3]


def test_water_filling_hand_computed() -> None:
    # B (100 units) at its sparsest, 2 measurements (step 0 and the last), is 20%: A (10 units) gets the 5% left,
    # at most 5 measurements: ceil(20 / n) + 1 <= 5 -> n = 5 (indices 0, 5, 10, 15 and the last)
    assert choose_spacings([_item(10.0), _item(100.0)], budget=0.25) == [5, 20]
    # two equal probes share equally: 12.5% each -> at most 12 measurements of 10 units: ceil(20/n) <= 11 -> n = 2
    assert choose_spacings([_item(10.0), _item(10.0)], budget=0.25) == [2, 2]
    # a fixed spacing is kept and counts: A fixed at every 2 (11 measurements, 11%) leaves 14% for C (7 units):
    # at most 20 measurements, ceil(20/n) + 1 <= 20 -> n = 2 (11 measurements, 7.7%; n = 1 would be 14.7%)
    assert choose_spacings([_item(10.0, fixed=2), _item(7.0)], budget=0.25) == [2, 2]
    # a fixed spacing over budget leaves the planned ones at their sparsest
    assert choose_spacings([_item(10.0, fixed=1), _item(30.0)], budget=0.2) == [1, 20]


def test_over_budget_takes_the_sparsest_schedule() -> None:
    # 2 x 200 units = 40% > 25% even at the sparsest
    assert choose_spacings([_item(200.0), _item(5.0, lowest=2)], budget=0.25) == [20, 20]


def test_probe_cost_estimates_hand_computed() -> None:
    setting = make_setting(tasks=2, train=100)
    batch = 8
    # sharpness: subset min(64, 100) = 64 per task, 20 iterations + 8 forwards (checkpoints(20) has 8 entries)
    sharp = build_probe("sharpness", {"subset": 64})
    assert sharp.cost(setting, batch) == pytest.approx(2 * 64 * (20 + 8 * FORWARD))
    # subset larger than the training set: all 100 examples
    assert build_probe("sharpness", {"iterations": 1}).cost(setting, batch) == pytest.approx(2 * 100 * (1 + FORWARD))
    # Fisher: labels forward + 96 examples in full minibatches of 16 + the per-example pass (2 units, vmap 5)
    assert build_probe("fim_trace", {}).cost(setting, batch) == pytest.approx(2 * (100 * FORWARD + 96 + 200))
    vmap = build_probe("fim_trace", {"per_example_method": "vmap"})
    assert vmap.cost(setting, batch) == pytest.approx(2 * (100 * FORWARD + 96 + 500))
    without = build_probe("fim_trace", {"per_example": False, "batch_size": 7})
    assert without.cost(setting, batch) == pytest.approx(2 * (100 * FORWARD + 98))
    # covariance: min(1024, 100) rounded down to small batches of 16 = 96 per task
    assert build_probe("grad_cov_trace", {}).cost(setting, batch) == 2 * 96
    # similarity: 200 batches of the task gradients, one forward+backward per task's examples
    assert build_probe("grad_similarity", {}).cost(setting, batch) == 200 * 8 * 2
    assert build_probe("grad_similarity", {"batches": 3, "batch_size": 5}).cost(setting, batch) == 3 * 5 * 2
    assert build_probe("grad_similarity", {}).cost(make_setting(1, 100), batch) == 0  # single task: nothing
    shared = make_setting(tasks=3, train=100, layout="shared-input")
    assert build_probe("grad_similarity", {"batches": 1}).cost(shared, batch) == pytest.approx(
        8 * (FORWARD + 3 * (1 - FORWARD))
    )
    # affinity: the task gradients plus K + 1 forwards of the step's batch (exact), nothing more first-order
    assert build_probe("affinity", {}).cost(setting, batch) == pytest.approx(16 + 3 * FORWARD * 16)
    assert build_probe("affinity", {"mode": "first_order"}).cost(setting, batch) == 16
    assert build_probe("min_train_loss", {}).cost(setting, batch) == 0
    assert training_units_per_step(setting, batch) == 16 and training_units_per_step(shared, batch) == 8


def test_a_probe_thinned_to_two_measurements_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    setting = make_setting(tasks=2, train=1000)
    schedule = Schedule(4000, 1, checkpoints_per_decade=10)

    def plan(options: dict) -> list:
        probes = [build_probe("sharpness", options), build_probe("min_train_loss", {})]
        with caplog.at_level("WARNING", logger="mtlscope.engine.probe_budget"):
            caplog.clear()
            planned = plan_probe_schedule(
                probes, steps=4000, regular_checkpoints=schedule.regular_checkpoints(), setting=setting, batch_size=128
            )
            assert not caplog.records  # planning alone does not warn: the trainer does, when it starts training
            warn_sparsest(planned, schedule.regular_checkpoints())
            return planned

    # 2 x 1000 x (100 + 8/3) units per measurement against 4000 x 256 of training: 20% each, over the budget even
    # at the sparsest schedule (2 measurements)
    assert plan({"iterations": 100})[0].measurements == 2
    assert [r.getMessage() for r in caplog.records] == [
        "probe sharpness: the cost-aware default schedule measures it only at step 0 and the last checkpoint (one "
        "measurement costs 20% of the training); set probes.sharpness.every for a trajectory"
    ]
    # a cheap probe keeps every 10th checkpoint, an explicit spacing is the user's choice: no warning
    assert plan({})[0].measurements > 2 and not caplog.records
    assert plan({"iterations": 100, "every": 40})[0].measurements == 2 and not caplog.records


def test_plan_of_the_fashion_preset_shape() -> None:
    """All probes at their option defaults on FashionMTL's shape (2 tasks of 1,000 images, B = 128, 4,000 steps,
    36 log-spaced checkpoints): the expensive probes spaced out to step 0 and the last checkpoint, the explicit
    spacings kept."""
    setting = make_setting(tasks=2, train=1000)
    names = ["min_train_loss", "sharpness", "fim_trace", "grad_cov_trace", "grad_similarity", "affinity"]
    schedule = Schedule(4000, 1, checkpoints_per_decade=10)

    def plan(budget: float, options: dict[str, dict] | None = None) -> dict:
        probes = [build_probe(name, (options or {}).get(name, {})) for name in names]
        planned = plan_probe_schedule(
            probes,
            steps=4000,
            regular_checkpoints=schedule.regular_checkpoints(),
            setting=setting,
            batch_size=128,
            budget=budget,
        )
        for probe, entry in zip(probes, planned):
            assert (probe.every_steps if entry.unit == "steps" else probe.every) == entry.spacing
        return {entry.name: entry for entry in planned}

    training = 4000 * 2 * 128
    costs = {"sharpness": 2 * 1000 * (20 + 8 / 3), "fim_trace": 2 * (1000 / 3 + 992 + 2000), "grad_cov_trace": 2 * 992}
    costs |= {"grad_similarity": 200 * 256, "affinity": 256 + 3 * 256 / 3}
    # before: every 10th checkpoint (5 measurements), affinity every 50 steps (80): 55% by this estimate
    before = sum(cost * 5 for name, cost in costs.items() if name != "affinity") + costs["affinity"] * 80
    assert before / training == pytest.approx(0.5535, abs=1e-4)
    # the sparsest schedule is 20.59% by the estimate, over the default 20%: every planned probe takes it
    sparsest = sum(cost * 2 for name, cost in costs.items() if name != "affinity") + costs["affinity"]
    assert sparsest / training == pytest.approx(0.2059, abs=1e-4)
    default = plan(0.2)
    assert {name: entry.spacing for name, entry in default.items()} == {
        "min_train_loss": 1,
        "sharpness": 35,
        "fim_trace": 35,
        "grad_cov_trace": 35,
        "grad_similarity": 35,
        "affinity": 4000,
    }
    assert sum(entry.share for entry in default.values()) == pytest.approx(sparsest / training)
    assert default["sharpness"].measurements == 2 and default["affinity"].measurements == 1
    assert all(entry.chosen == "planned" for entry in default.values())
    # at 25%, the 4.4% left after the two expensive ones (18.9%) go to the cheaper three at a common level:
    # covariance keeps every 10th checkpoint, the Fisher trace and affinity are spaced out
    wider = plan(0.25)
    assert sum(entry.share for entry in wider.values()) <= 0.25
    assert wider["sharpness"].spacing == wider["grad_similarity"].spacing == 35
    assert wider["grad_cov_trace"].spacing == 10 and wider["fim_trace"].spacing > 10
    assert 50 < wider["affinity"].spacing < 4000
    # an explicit every always wins, and counts against the budget
    explicit = plan(0.25, {"grad_cov_trace": {"every": 1}})
    assert explicit["grad_cov_trace"].chosen == "explicit" and explicit["grad_cov_trace"].measurements == 36
    assert explicit["affinity"].spacing > wider["affinity"].spacing
    assert build_probe("affinity", {"every_steps": 7}).every_steps == 7


def test_a_run_records_its_plan_and_measures_at_the_planned_checkpoints(tmp_path: Path) -> None:
    """Probes at their defaults on a short run: the costly ones at step 0 and the last checkpoint only (their
    default every 10 would have measured at 0, 100 and 120 as well), the plan in the summary."""
    config = {
        "setting": {"name": "digits-mtl", "tasks": ["digits1", "digits2"]},
        "model": {"encoder": {"name": "mlp", "hidden": [16]}},
        "training": {"steps": 120, "eval_every": 10, "batch_size": 8},
        "probes": {"min_train_loss": {}, "grad_similarity": {"batches": 20}, "grad_cov_trace": {"every": 6}},
    }
    outcome = execute(validate_config(config), tmp_path)
    records = load(outcome.path.parent).records
    steps = records[records["split"] == "probe"].groupby("metric")["step"].unique()
    # similarity: 20 batches x 16 = 320 units per measurement, training 120 x 16 = 1920: 2 measurements = 33%
    assert sorted(steps["grad_similarity"]) == [0, 120]
    assert sorted(steps["grad_cov_trace"]) == [0, 60, 120]
    assert sorted(steps["min_train_loss"]) == list(range(0, 121, 10))
    summary = json.loads((outcome.path / "summary.json").read_text())
    plan = summary["probe_schedule"]
    assert plan["grad_similarity"]["every"] == 12 and plan["grad_similarity"]["chosen"] == "planned"
    assert plan["grad_similarity"]["measurements"] == 2 and plan["grad_similarity"]["cost_units"] == 320
    assert plan["grad_cov_trace"]["every"] == 6 and plan["grad_cov_trace"]["chosen"] == "explicit"
    assert plan["min_train_loss"] == {
        "every": 1,
        "chosen": "planned",
        "measurements": 13,
        "cost_units": 0.0,
        "estimated_share": 0.0,
    }
