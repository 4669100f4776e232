"""The probe contract: measurements of the trajectory taken at checkpoints (SPEC §4).

A probe is built once per run (``PROBES.build(name, **options)``) and called at every checkpoint with a
``ProbeContext``. It returns ``{task: {metric: value}}``, stored as records with split ``probe``. Probes
must not change the model, its buffers, the optimizer state or the training random streams: each probe
gets its own generator, seeded from the run seed and its name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch

from mtlscope.engine.evaluation import Scores
from mtlscope.models.multitask import MultiTaskModel
from mtlscope.registry import Registry
from mtlscope.settings.setting import Setting

ProbeValues = dict[str, dict[str, float]]  # task -> metric -> value


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


class Probe(ABC):
    """Base class of probes; ``name`` is the registry name."""

    name: str = ""

    @abstractmethod
    def __call__(self, context: ProbeContext) -> ProbeValues:
        """Values per task at this checkpoint."""

    def state_dict(self) -> dict[str, Any]:
        """State carried across checkpoints (saved with the run's training state)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027  (stateless by default)
        """Restore what ``state_dict`` returned."""


PROBES: Registry[Probe] = Registry("probe")
