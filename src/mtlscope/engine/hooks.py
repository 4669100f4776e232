"""The trainer's hook contract: what the training loop calls at checkpoints and before steps (``Probe``), what it
gives them (``ProbeContext``, ``StepContext``) and the eval mode they measure in (``probe_mode``).

The contract lives next to the trainer so the engine depends on nothing above it; the probes themselves
(``mtlscope.probes``) implement ``Probe`` and register in ``mtlscope.probes.base.PROBES``.

A probe is called at checkpoints with a ``ProbeContext`` and returns ``{task: {metric: value}}``, stored as
records with split ``probe``. It measures at every ``every``-th checkpoint (counted from step 0) and always at
the last one (default: planned from its ``cost``, ``mtlscope.engine.probe_budget``). Probes that also observe
training steps set ``observes_steps`` and get ``before_step`` with the step's batch, before the update; they
report what they gathered at the next checkpoint they measure at.

Probes must not change the model, its buffers, the optimizer state or the training random streams: each
probe gets its own generator, seeded from the run seed and its name, and measures inside ``probe_mode``
(eval mode: BatchNorm running statistics used, not updated; no dropout, so no draw from the global RNG),
which restores every submodule's mode afterwards, whatever mode the caller left the model in. A probe that
measures what the training step sees (the affinity lookahead) may ask ``probe_mode(model, batchnorm="batch")``:
eval mode except that the normalization layers with running statistics normalize with the statistics of the
batch, as in training; their running statistics and every other buffer are restored exactly afterwards.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from mtlscope.engine.evaluation import Scores
from mtlscope.engine.sampling import Batch
from mtlscope.models.multitask import MultiTaskModel
from mtlscope.settings.setting import Setting

__all__ = [
    "BATCHNORM_STATISTICS",
    "BatchNormStatistics",
    "Probe",
    "ProbeContext",
    "ProbeValues",
    "StepContext",
    "probe_mode",
]

ProbeValues = dict[str, dict[str, float]]  # task -> metric -> value


#: Which statistics BatchNorm layers normalize with inside ``probe_mode``: ``"running"`` (eval mode) or
#: ``"batch"`` (the batch's own mean and variance, as in a training step).
BatchNormStatistics = Literal["running", "batch"]
BATCHNORM_STATISTICS: tuple[str, ...] = get_args(BatchNormStatistics)


@contextmanager
def probe_mode(model: nn.Module, batchnorm: str = "running") -> Iterator[None]:
    """Eval mode for the duration of a probe; every submodule's ``training`` flag is restored afterwards.

    ``batchnorm="batch"``: the normalization layers with running statistics (``BatchNorm1d/2d/3d``,
    ``SyncBatchNorm``, ``InstanceNorm`` with ``track_running_stats``) normalize with the statistics of each batch
    they see, as in a training step, and do not update their running statistics; every buffer of ``model`` is
    restored bit for bit afterwards all the same. Dropout stays off either way (no draw from the random streams).
    """
    if batchnorm not in BATCHNORM_STATISTICS:
        raise ValueError(f"batchnorm must be one of {', '.join(BATCHNORM_STATISTICS)}, got {batchnorm!r}")
    modes = [(module, module.training) for module in model.modules()]
    norms = [m for m in model.modules() if isinstance(m, _NormBase)] if batchnorm == "batch" else []
    tracking = [(norm, norm.track_running_stats) for norm in norms]
    with torch.no_grad():
        saved = [(buffer, buffer.clone()) for buffer in model.buffers()] if norms else []
    model.eval()
    for norm in norms:
        # training mode without tracking: the batch's statistics, running statistics neither read nor written
        norm.train()
        norm.track_running_stats = False
    try:
        yield
    finally:
        for norm, tracks in tracking:
            norm.track_running_stats = tracks
        for module, training in modes:
            module.training = training
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


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
    """Base class of probes; ``name`` is the registry name.

    Spacing: ``every`` (checkpoints) and, for step-observing probes, ``every_steps`` (training steps) are the
    value given explicitly (the option), else the one the trainer's cost-aware plan chose for the run
    (``planned_every``, ``planned_every_steps``: ``mtlscope.engine.probe_budget``), else ``default_every`` /
    ``default_every_steps``. ``cost`` estimates what one measurement costs, for that plan.
    """

    name: str = ""
    default_every: int = 1
    default_every_steps: int = 1
    observes_steps: bool = False
    planned_every: int | None = None
    planned_every_steps: int | None = None

    @property
    def every(self) -> int:
        """Measure at every ``every``-th checkpoint (and at the last)."""
        explicit = getattr(self, "_every", None)
        return int(explicit or self.planned_every or self.default_every)

    @every.setter
    def every(self, value: int) -> None:
        self._every = value

    @property
    def every_is_set(self) -> bool:
        """Whether ``every`` was given explicitly (then no plan changes it)."""
        return getattr(self, "_every", None) is not None

    @property
    def every_steps(self) -> int:
        """Step-observing probes: observe every ``every_steps``-th training step (counted from step 0)."""
        explicit = getattr(self, "_every_steps", None)
        return int(explicit or self.planned_every_steps or self.default_every_steps)

    @every_steps.setter
    def every_steps(self, value: int) -> None:
        self._every_steps = value

    @property
    def every_steps_is_set(self) -> bool:
        return getattr(self, "_every_steps", None) is not None

    def cost(self, setting: Setting, batch_size: int) -> float:
        """Estimated cost of one measurement on ``setting`` (training ``batch_size``) in example forward+backward
        units: one example's forward and backward through a task's predictor is 1, a forward alone
        ``FORWARD`` = 1/3 (``mtlscope.engine.probe_budget``). For a step-observing probe, one observed step
        (its checkpoint reports are taken as free). From the options only, so the same on every machine;
        0 (the default): nothing beyond the checkpoint's evaluation."""
        del setting, batch_size
        return 0.0

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
