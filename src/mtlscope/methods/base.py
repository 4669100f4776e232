"""The method contract: how per-task losses (and, when asked for, gradients) become the shared update.

A method declares in ``needs`` what the engine must compute for it (nothing beyond the task losses by
default; ``"jacobian"``: the K x P matrix of task-loss gradients on the shared parameters). The trainer
computes only what is declared and never branches on which method it runs.

``combine`` returns a ``Combination``, exactly one of:

- ``loss_weights`` (shape [K]): the engine back-propagates ``sum_k loss_weights[k] * L_k`` through the
  whole model, heads included. Loss-weighting methods (UMTG, uncertainty weighting, DWA, ...) use this:
  one backward pass, the cheapest possible step. The weights are final: they already contain 1/C.
- ``shared_gradient`` (shape [P], P = number of shared parameters, in ``shared_parameters()`` order):
  the engine writes it as the gradient of the shared parameters; every head receives its own task
  gradient divided by C (SPEC §2). Gradient-combination methods (PCGrad, MGDA, ...) use this.

Stateful methods keep their state in ``state_dict`` so a resumed run continues identically.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

#: What a method may ask the engine for.
NEEDS: frozenset[str] = frozenset({"jacobian"})


@dataclass(frozen=True)
class StepInput:
    """What a method sees at one training step.

    Attributes:
        losses: detached task losses on this step's batch, shape [K], in ``task_names`` order.
        task_names: the run's tasks.
        loss_scale: C, the scaling of the multi-task objective (SPEC §2), already resolved to a number.
        step: index of the step (0-based).
        generator: the run's method generator (every random draw of a method comes from it).
        jacobian: [K, P] task-loss gradients on the shared parameters, present when ``"jacobian"`` is in
            the method's ``needs``.
    """

    losses: Tensor
    task_names: tuple[str, ...]
    loss_scale: float
    step: int
    generator: torch.Generator
    jacobian: Tensor | None = None


@dataclass(frozen=True)
class Combination:
    """A method's answer for one step (see the module docstring) plus diagnostics to log."""

    loss_weights: Tensor | None = None
    shared_gradient: Tensor | None = None
    diagnostics: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.loss_weights is None) == (self.shared_gradient is None):
            raise ValueError("a Combination needs exactly one of loss_weights and shared_gradient")


class Method(ABC):
    """Base class of multi-task methods."""

    #: Registry name, set by each method class.
    name: ClassVar[str] = ""
    #: What the engine must compute for this method (a subset of ``NEEDS``).
    needs: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, task_names: tuple[str, ...]) -> None:
        self.task_names = tuple(task_names)

    @abstractmethod
    def combine(self, step: StepInput) -> Combination:
        """The shared update for one step."""

    def state_dict(self) -> dict[str, Any]:
        """State to checkpoint (empty for stateless methods)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""
        if state:
            raise ValueError(f"method {self.name!r} is stateless but got state keys {sorted(state)}")
