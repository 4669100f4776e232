"""The trainer's hook contract: what the training loop calls at checkpoints and before steps (``Probe``), what it
gives them (``ProbeContext``, ``StepContext``) and the eval mode they measure in (``probe_mode``).

The contract lives next to the trainer so the engine depends on nothing above it; the probes themselves
(``mtlscope.probes``) implement ``Probe`` and register in ``mtlscope.probes.base.PROBES``.

A probe is called at checkpoints with a ``ProbeContext`` and returns ``{task: {metric: value}}``, stored as
records with split ``probe``. It measures at every ``every``-th checkpoint (counted from step 0) and always at
the last one (default: the probe's ``default_every``). Probes that also observe training steps set
``observes_steps`` and get ``before_step`` with the step's batch, before the update; they report what they
gathered at the next checkpoint they measure at.

Probes must not change the model, its buffers, the optimizer state or the training random streams: each
probe gets its own generator, seeded from the run seed and its name, and measures inside ``probe_mode``
(eval mode: BatchNorm running statistics used, not updated; no dropout, so no draw from the global RNG),
which restores every submodule's mode afterwards, whatever mode the caller left the model in.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mtlscope.engine.evaluation import Scores
from mtlscope.engine.sampling import Batch
from mtlscope.models.multitask import MultiTaskModel
from mtlscope.settings.setting import Setting

__all__ = ["Probe", "ProbeContext", "ProbeValues", "StepContext", "probe_mode"]

ProbeValues = dict[str, dict[str, float]]  # task -> metric -> value


@contextmanager
def probe_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for the duration of a probe; every submodule's ``training`` flag is restored afterwards."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


@dataclass(frozen=True)
class ProbeContext:
    """Everything a probe may read at a checkpoint (it must not modify any of it)."""

    model: MultiTaskModel
    setting: Setting
    step: int
    epoch: float
    scores: Scores
    optimizer: torch.optim.Optimizer
    loss_scale: float
    batch_size: int
    generator: torch.Generator


@dataclass(frozen=True)
class StepContext:
    """What a step-observing probe may read before a training step (it must not modify any of it): the
    model and optimizer as they are before the update, and the step's batch."""

    model: MultiTaskModel
    setting: Setting
    batch: Batch
    step: int
    optimizer: torch.optim.Optimizer
    loss_scale: float
    generator: torch.Generator


class Probe(ABC):
    """Base class of probes; ``name`` is the registry name."""

    name: str = ""
    default_every: int = 1
    observes_steps: bool = False

    @property
    def every(self) -> int:
        """Measure at every ``every``-th checkpoint (and at the last)."""
        return int(getattr(self, "_every", self.default_every))

    @every.setter
    def every(self, value: int) -> None:
        self._every = value

    @abstractmethod
    def __call__(self, context: ProbeContext) -> ProbeValues:
        """Values per task at this checkpoint."""

    def before_step(self, context: StepContext) -> None:  # noqa: B027  (only step-observing probes)
        """Observe a training step before its update (called only when ``observes_steps``)."""

    def state_dict(self) -> dict[str, Any]:
        """State carried across checkpoints (saved with the run's training state)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027  (stateless by default)
        """Restore what ``state_dict`` returned."""
