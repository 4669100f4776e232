"""Learning-rate schedules: the learning rate of every optimizer step, a pure function of the step's index.

A run's ``optimizer.schedule`` names one of ``LR_SCHEDULES`` with its options (left out: a constant learning
rate). With ``lr`` the optimizer's learning rate, ``s`` the 0-based index of the optimizer step (0 is the first
update), ``T`` the run's number of steps and ``e = s // steps_per_epoch`` the epoch step ``s`` belongs to:

- ``constant``: ``lr``;
- ``step``: ``lr * gamma ** (e // every_epochs)`` — multiplied by ``gamma`` every ``every_epochs`` epochs;
- ``exponential``: ``lr * gamma ** e`` — multiplied by ``gamma`` after every epoch (Mueller et al. 2022, "The
  Importance of Temperature in Multi-Task Optimization", App. A.2: SGD with an lr decay of 0.99 on CIFAR-100);
- ``cosine``: ``min_lr + (lr - min_lr) * (1 + cos(pi * s / T)) / 2`` — from ``lr`` down to ``min_lr`` over the
  run's steps.

Every schedule takes ``warmup_steps`` W (default 0): for ``s < W`` its value is multiplied by ``(s + 1) / W``, a
linear warm-up that reaches the schedule's value at step W (the first step is at ``lr / W``, not 0).

``build_learning_rate`` gives a ``LearningRate`` whose ``lr_at(step)`` the trainer sets on every parameter group
before each step and at each checkpoint, so the optimizer always holds the learning rate of its next update —
what the optimizer lookahead of IT-MTL and the affinity probe simulate with, and what a checkpoint records.
Being a function of the step index only, it resumes exactly from a saved state.

A schedule of your own: ``@LR_SCHEDULES.register(name, description)`` on ``builder(lr, length, *, option=default)``
(options annotated with their types and ranges, ``mtlscope.options``) returning the function ``step -> lr``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import Field

from mtlscope.options import NonNegativeFloat, NonNegativeInt, PositiveInt
from mtlscope.registry import OptionError, Registry

#: A schedule before warm-up: the learning rate of step ``s``.
LRFunction = Callable[[int], float]

#: A decay factor: in (0, 1].
Gamma = Annotated[float, Field(gt=0, le=1)]


@dataclass(frozen=True)
class RunLength:
    """What a schedule knows of its run: the number of optimizer steps and the steps per epoch."""

    steps: int
    steps_per_epoch: int


LR_SCHEDULES: Registry[LRFunction] = Registry("lr schedule", common={"warmup_steps": (NonNegativeInt, 0)})


@LR_SCHEDULES.register("constant", "the optimizer's lr at every step")
def _constant(lr: float, length: RunLength) -> LRFunction:
    return lambda step: lr


@LR_SCHEDULES.register("step", "lr multiplied by gamma every every_epochs epochs")
def _step(lr: float, length: RunLength, *, every_epochs: PositiveInt, gamma: Gamma = 0.1) -> LRFunction:
    return lambda step: lr * gamma ** (step // length.steps_per_epoch // every_epochs)


@LR_SCHEDULES.register("exponential", "lr multiplied by gamma after every epoch (the temperature paper's 0.99)")
def _exponential(lr: float, length: RunLength, *, gamma: Gamma) -> LRFunction:
    return lambda step: lr * gamma ** (step // length.steps_per_epoch)


@LR_SCHEDULES.register("cosine", "cosine from lr down to min_lr over the run's steps")
def _cosine(lr: float, length: RunLength, *, min_lr: NonNegativeFloat = 0.0) -> LRFunction:
    if min_lr > lr:
        raise OptionError(
            "min_lr",
            f"expected at most the optimizer's lr {lr} (got {min_lr})",
            f"lr schedule 'cosine': min_lr {min_lr} is above the optimizer's lr {lr}",
        )
    return lambda step: min_lr + (lr - min_lr) * (1 + math.cos(math.pi * step / length.steps)) / 2


_NONE = inspect.Parameter.empty


@dataclass(frozen=True)
class LearningRate:
    """The learning rate of every optimizer step: ``schedule(step)``, warmed up over ``warmup_steps``."""

    schedule: LRFunction
    warmup_steps: int = 0

    def lr_at(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (0-based)."""
        value = self.schedule(step)
        if step < self.warmup_steps:
            value = value * (step + 1) / self.warmup_steps
        return value


def canonical_schedule(schedule: Mapping[str, Any]) -> dict[str, Any] | None:
    """A checked ``{name, **options}`` with every default filled in; ``None`` for the constant learning rate
    without warm-up (the default, so ``schedule: constant`` is the same run as no schedule)."""
    options = LR_SCHEDULES.entry(schedule["name"]).options()  # the schedule's own, then warmup_steps
    given = {k: v for k, v in schedule.items() if k != "name"}
    filled = {"name": schedule["name"]}
    filled.update({k: given.get(k, default) for k, default in options.items() if k in given or default is not _NONE})
    if filled["name"] == "constant" and filled["warmup_steps"] == 0:
        return None
    return filled


def build_learning_rate(
    lr: float, schedule: Mapping[str, Any] | None, *, steps: int, steps_per_epoch: int
) -> LearningRate:
    """The ``LearningRate`` of a run with base ``lr``, ``schedule`` (``{name, **options}``; ``None``: constant),
    ``steps`` optimizer steps and ``steps_per_epoch``. ``KeyError``/``OptionError`` for a bad schedule."""
    if schedule is None:
        schedule = {"name": "constant"}
    options = {k: v for k, v in schedule.items() if k != "name"}
    common, _ = LR_SCHEDULES.split_common(options)
    function = LR_SCHEDULES.build(schedule["name"], lr, RunLength(steps, steps_per_epoch), **options)
    return LearningRate(function, int(common.get("warmup_steps", 0)))
