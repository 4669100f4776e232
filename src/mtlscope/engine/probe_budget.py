"""The cost-aware default probe schedule: how often each probe measures when its spacing is not given.

A probe's options say *what* one measurement is (the papers' 2,048-example subsets, 20 sharpness iterations,
200 similarity batches); its spacing says *how often* it is taken. Where a run's config gives no ``every`` (or
``every_steps`` for a step-observing probe), the trainer plans it here so that the probes together cost at most
25% of the training time — ``PROBE_BUDGET`` = 20% by the estimate, estimated before the run from the options
alone:

- Unit: one example's forward+backward through a task's predictor; a forward alone is ``FORWARD`` = 1/3 of
  it (a backward costs about two forwards). ``Probe.cost(setting, batch_size)`` gives one measurement (or one
  observed step) in these units; a training step costs ``batch_size`` units per task in the multi-input
  layout (``batch_size`` in all in the shared-input layout, where the tasks share the examples). The estimate
  is deterministic and the same on every machine: the plan, and so what a run measures, never depends on
  where it runs. It ignores the optimizer's and the method's own work (the UMTG step is the cheapest), so it
  errs towards sparser probes.
- A probe's share of training is ``cost * measurements(spacing) / (steps * units per step)``, where
  ``measurements`` counts the checkpoints at which it measures (every ``every``-th, counted from step 0, and
  always the last) or the steps it observes (every ``every_steps``-th, from step 0).
- Each planned probe gets the smallest spacing, at least its ``default_every`` (``default_every_steps``),
  whose share is at most a common level ``s``; ``s`` is the largest level at which the planned shares and the
  shares of the probes with an explicit spacing sum to at most ``PROBE_BUDGET`` (water-filling: cheap probes
  keep their default spacing, the expensive ones share what is left equally). When even the sparsest
  spacing of every planned probe (step 0 and the last checkpoint; one observed step) exceeds the budget,
  they all take it, and the plan's ``share`` says by how much the budget is exceeded.

The chosen spacing of every probe, its measurements and estimated share are recorded in the run's summary
(``probe_schedule``), so results say what was measured.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from mtlscope.engine.hooks import Probe
from mtlscope.settings.setting import Setting

__all__ = [
    "FORWARD",
    "PROBE_BUDGET",
    "PlannedProbe",
    "Spacing",
    "checkpoint_measurements",
    "choose_spacings",
    "jacobian_units",
    "plan_probe_schedule",
    "step_observations",
    "training_units_per_step",
    "warn_sparsest",
]

#: Share of training the default probe schedule aims at (probe work / training work), by the estimate below: 20%,
#: so that the measured share stays within 25% of the training time (measured / estimated was up to 1.2 on the
#: FashionMTL LeNet run: small per-task batches and per-call overheads that the example count does not see).
PROBE_BUDGET = 0.2
#: Cost of a forward pass alone, in forward+backward units.
FORWARD = 1.0 / 3.0

Unit = Literal["checkpoints", "steps"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Spacing:
    """One probe's spacing problem: ``share(n)`` is its share of training at spacing ``n`` (non-increasing in
    ``n``); the spacing is ``fixed`` if given, else chosen in [``lowest``, ``highest``]."""

    share: Callable[[int], float]
    lowest: int
    highest: int
    fixed: int | None = None


@dataclass(frozen=True)
class PlannedProbe:
    """What the plan decided for one probe: ``spacing`` in ``unit`` (``every`` or ``every_steps``), how it was
    chosen (``explicit``: the config; ``planned``: this plan), the number of measurements (or observed steps),
    the estimated cost of one in example forward+backward units and the estimated share of training."""

    name: str
    unit: Unit
    spacing: int
    chosen: Literal["explicit", "planned"]
    measurements: int
    cost: float
    share: float

    def as_dict(self) -> dict[str, object]:
        key = "every" if self.unit == "checkpoints" else "every_steps"
        return {
            key: self.spacing,
            "chosen": self.chosen,
            "measurements": self.measurements,
            "cost_units": round(self.cost, 3),
            "estimated_share": round(self.share, 6),
        }


def training_units_per_step(setting: Setting, batch_size: int) -> float:
    """Forward+backward example units of one training step: ``batch_size`` per task (multi-input) or
    ``batch_size`` in all (shared-input)."""
    return float(batch_size * (len(setting.tasks) if setting.layout == "multi-input" else 1))


def jacobian_units(setting: Setting, batch_size: int) -> float:
    """Forward+backward units of the task gradients (the shared Jacobian) on one batch: one forward and one
    backward per task's examples (multi-input, ``per_task``), or one forward of the shared batch and K
    backwards (shared-input)."""
    tasks = len(setting.tasks)
    if setting.layout == "multi-input":
        return float(batch_size * tasks)
    return batch_size * (FORWARD + tasks * (1.0 - FORWARD))


def checkpoint_measurements(regular: int, every: int) -> int:
    """Measurements of a probe with ``every`` when the checkpoints before the last have indices 0..``regular``-1
    (at index 0, every ``every``-th index, and at the last checkpoint)."""
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    return len(range(0, regular, every)) + 1


def step_observations(steps: int, every_steps: int) -> int:
    """Observed steps of a step-observing probe with ``every_steps`` over ``steps`` training steps (0-based steps
    ``s`` with ``s % every_steps == 0``)."""
    if every_steps < 1:
        raise ValueError(f"every_steps must be >= 1, got {every_steps}")
    return -(-steps // every_steps)


def _smallest_spacing(item: Spacing, level: float) -> int:
    """The smallest spacing in [lowest, highest] whose share is <= level (``highest`` if none is)."""
    low, high = item.lowest, max(item.lowest, item.highest)
    if item.share(high) > level:
        return high
    while low < high:  # share is non-increasing in the spacing
        middle = (low + high) // 2
        if item.share(middle) <= level:
            high = middle
        else:
            low = middle + 1
    return low


def choose_spacings(items: Sequence[Spacing], budget: float = PROBE_BUDGET) -> list[int]:
    """Spacings for ``items`` (fixed ones kept) so that the shares sum to at most ``budget`` where possible:
    each free item takes the smallest spacing whose share is <= a common level, the largest level that keeps
    the sum within ``budget`` (all at ``lowest`` if that fits; all at ``highest`` if nothing fits)."""
    fixed_total = sum(item.share(item.fixed) for item in items if item.fixed is not None)
    free = [item for item in items if item.fixed is None]

    def spacings(level: float) -> list[int]:
        return [_smallest_spacing(item, level) for item in free]

    def total(level: float) -> float:
        return fixed_total + sum(item.share(n) for item, n in zip(free, spacings(level)))

    if free:
        top = max(item.share(item.lowest) for item in free)
        if total(top) <= budget:
            level = top
        elif total(0.0) > budget:  # even the sparsest schedule is over: take it
            level = 0.0
        else:
            good, bad = 0.0, top  # total(good) <= budget < total(bad); total is non-decreasing in the level
            for _ in range(200):
                middle = (good + bad) / 2
                if middle in (good, bad):
                    break
                if total(middle) <= budget:
                    good = middle
                else:
                    bad = middle
            level = good
        chosen = iter(spacings(level))
    else:
        chosen = iter(())
    return [item.fixed if item.fixed is not None else next(chosen) for item in items]


def plan_probe_schedule(
    probes: Sequence[Probe],
    *,
    steps: int,
    regular_checkpoints: int,
    setting: Setting,
    batch_size: int,
    budget: float = PROBE_BUDGET,
) -> list[PlannedProbe]:
    """Plan the spacing of every probe without an explicit one (sets ``planned_every`` or
    ``planned_every_steps``) for a run of ``steps`` training steps whose checkpoints before the last have
    indices 0..``regular_checkpoints``-1, and return the plan of every probe."""
    training = steps * training_units_per_step(setting, batch_size)

    def measurements(unit: Unit, spacing: int) -> int:
        if unit == "steps":
            return step_observations(steps, spacing)
        return checkpoint_measurements(regular_checkpoints, spacing)

    items, costs, units, explicit = [], [], [], []
    for probe in probes:
        cost = float(probe.cost(setting, batch_size))
        if not math.isfinite(cost) or cost < 0:
            raise ValueError(f"probe {probe.name!r}: cost must be a finite number >= 0, got {cost}")
        unit: Unit = "steps" if probe.observes_steps else "checkpoints"
        if unit == "steps":
            given = probe.every_steps_is_set
            fixed = probe.every_steps if given else None
            lowest, highest = probe.default_every_steps, max(probe.default_every_steps, steps)
        else:
            given = probe.every_is_set
            fixed = probe.every if given else None
            lowest, highest = probe.default_every, max(probe.default_every, regular_checkpoints)
        if cost == 0 and fixed is None:
            fixed = lowest  # free: the default spacing

        def share(n: int, cost: float = cost, unit: Unit = unit) -> float:
            return cost * measurements(unit, n) / training

        items.append(Spacing(share, lowest, highest, fixed))
        costs.append(cost)
        units.append(unit)
        explicit.append(given)
    plan = []
    for probe, item, cost, unit, given, spacing in zip(
        probes, items, costs, units, explicit, choose_spacings(items, budget)
    ):
        if not given and unit == "steps":
            probe.planned_every_steps = spacing
        elif not given:
            probe.planned_every = spacing
        plan.append(
            PlannedProbe(
                name=probe.name,
                unit=unit,
                spacing=spacing,
                chosen="explicit" if given else "planned",
                measurements=measurements(unit, spacing),
                cost=cost,
                share=item.share(spacing),
            )
        )
    return plan


def warn_sparsest(plan: Sequence[PlannedProbe], regular_checkpoints: int) -> None:
    """One warning per planned checkpoint probe that the budget thinned to step 0 and the last checkpoint, where
    the run has more checkpoints: its trajectory then has two points, which is easy to miss. The trainer warns
    when it starts training (not when it is built: a resumed run builds one to check its saved state first)."""
    for entry in plan:
        if entry.chosen == "planned" and entry.unit == "checkpoints" and entry.measurements <= 2 < regular_checkpoints:
            logger.warning(
                "probe %s: the cost-aware default schedule measures it only at step 0 and the last checkpoint "
                "(one measurement costs %.0f%% of the training); set probes.%s.every for a trajectory",
                entry.name,
                100 * entry.share / max(entry.measurements, 1),
                entry.name,
            )
