"""The method contract: how per-task losses (and, when asked for, gradients) become the shared update.

A method is built from its options alone (``mtlscope.methods.get(name, **options)``) and bound to a run's
tasks by ``setup(task_names)``, which (re)initializes its state. It declares in ``needs`` what the engine
must compute for it each step; the engine computes only that, and never branches on the method:

- always: ``StepInput.losses``, the [K] detached task losses on the step's batch;
- ``"jacobian"``: ``jacobian``, [K, P] task-loss gradients on the shared parameters;
- ``"representation"``: ``representation_jacobian``, [K, R] task-loss gradients on the encoder output of
  the batch, flattened (MGDA-UB);
- ``"gramian"``: ``gramian``, the [K, K] Gramian ``J Jᵀ`` of the task-loss gradients on the shared
  parameters (computed module by module, without the Jacobian: ``mtlscope.engine.gramian``);
- ``"last_shared_jacobian"``: ``last_shared_jacobian``, [K, P_last] task-loss gradients on the parameters
  of the encoder's last shared layer of weights, ``Encoder.last_shared_layer()`` (GradNorm);
- ``"lookahead"``: ``lookahead``, a ``Lookahead``: the optimizer's update for a candidate shared gradient
  and the task losses after it (IT-MTL);
- ``"post_step_losses"``: ``after_step`` is called with the [K] task losses on the same batch after the
  update (FAMO).

A method whose update depends on the task gradients only through their inner products sets ``accepts_gramian``
(and needs ``"jacobian"``): on the Gramian path (``training.gradient_path``) the engine gives it
``StepInput.gramian`` and no ``jacobian``, and it returns as ``loss_weights`` the coefficients ``w`` of the task
gradients in its shared update (``Σ_k w_k g_k``, computed by one backward of ``Σ_k w_k L_k``) with the
``head_weights`` its heads receive — the update it returns from the Jacobian (``gramian_of`` and
``gradient_combination`` below do both).

``combine`` returns a ``Combination``, exactly one of:

- ``loss_weights`` [K]: the engine back-propagates ``sum_k loss_weights[k] * L_k`` through the whole model,
  heads included (one backward). The weights are final: they already contain 1/C where the method uses C.
  With ``head_weights`` [K] the heads receive ``head_weights[k] * grad L_k`` instead (the Gramian path of a
  method that gives heads ``grad L_k / C``).
- ``shared_gradient`` [P] (``shared_parameters()`` order): written as the shared parameters' gradient; every
  head receives its own task gradient divided by C (Mueller et al., TMLR 2025, eq. 2).

plus ``diagnostics``: named floats stored with the run's per-step records (e.g. ``weight/<task>``,
``chosen_candidate``). Stateful methods keep their state in ``state_dict``/``load_state_dict`` (tensors,
numbers, lists, dicts) so a resumed run continues identically; every random draw uses ``step.generator``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor

#: What a method may ask the engine for.
NEEDS: frozenset[str] = frozenset(
    {"jacobian", "gramian", "representation", "last_shared_jacobian", "lookahead", "post_step_losses"}
)


class Lookahead(Protocol):
    """Simulated optimizer steps on the shared parameters (Fifty et al. 2020, eq. 1); real state is never touched."""

    def update(self, shared_gradient: Tensor) -> Tensor:
        """[P] the change the run's optimizer would make to the shared parameters from this gradient."""
        ...

    def losses(self, delta: Tensor) -> Tensor:
        """[K] task losses on this step's batch at shared parameters + ``delta`` (heads unchanged)."""
        ...


@dataclass(frozen=True)
class StepInput:
    """What a method sees at one training step (see the module docstring for the optional fields).

    Attributes:
        losses: detached task losses on this step's batch, shape [K], in ``task_names`` order.
        task_names: the run's tasks.
        loss_scale: C, the scaling of the multi-task objective (Mueller et al., TMLR 2025, eq. 2), resolved to a number.
        step: index of the step (0-based).
        epoch: number of completed epochs before this step (``step // steps_per_epoch``).
        generator: the run's method generator (every random draw of a method comes from it).
        diagnose: whether the engine records this step's diagnostics; a method may skip computing costly
            diagnostics when False (they would be discarded).
    """

    losses: Tensor
    task_names: tuple[str, ...]
    loss_scale: float
    step: int
    generator: torch.Generator
    epoch: int = 0
    diagnose: bool = True
    jacobian: Tensor | None = None
    gramian: Tensor | None = None
    representation_jacobian: Tensor | None = None
    last_shared_jacobian: Tensor | None = None
    lookahead: Lookahead | None = None


@dataclass(frozen=True)
class Combination:
    """A method's answer for one step (see the module docstring) plus diagnostics to log."""

    loss_weights: Tensor | None = None
    shared_gradient: Tensor | None = None
    diagnostics: Mapping[str, float] = field(default_factory=dict)
    head_weights: Tensor | None = None

    def __post_init__(self) -> None:
        if (self.loss_weights is None) == (self.shared_gradient is None):
            raise ValueError("a Combination needs exactly one of loss_weights and shared_gradient")
        if self.head_weights is not None and self.loss_weights is None:
            raise ValueError("a Combination's head_weights go with loss_weights")


class Method(ABC):
    """Base class of multi-task methods. Subclasses take their options as keyword arguments."""

    #: Registry name, set by each method class.
    name: ClassVar[str] = ""
    #: What the engine must compute for this method (a subset of ``NEEDS``).
    needs: ClassVar[frozenset[str]] = frozenset()
    #: Whether ``combine`` also works from ``StepInput.gramian`` in place of ``jacobian`` (the update depends on
    #: the task gradients only through ``J Jᵀ``), returning ``loss_weights`` and ``head_weights``.
    accepts_gramian: ClassVar[bool] = False

    task_names: tuple[str, ...] = ()

    @property
    def num_tasks(self) -> int:
        return len(self.task_names)

    def setup(self, task_names: tuple[str, ...]) -> None:
        """Bind to the run's tasks and (re)initialize state. Raise ``ValueError`` for options that do not
        fit these tasks (e.g. a weight for a task that is not in the run). Subclasses call ``super()``."""
        self.task_names = tuple(task_names)

    @abstractmethod
    def combine(self, step: StepInput) -> Combination:
        """The shared update for one step."""

    def after_step(self, losses_after: Tensor) -> None:  # noqa: B027  (optional hook)
        """Called after the optimizer step with the [K] task losses on the same batch, when
        ``"post_step_losses"`` is in ``needs``."""

    def state_dict(self) -> dict[str, Any]:
        """State to checkpoint (empty for stateless methods)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""
        if state:
            raise ValueError(f"method {self.name!r} is stateless but got state keys {sorted(state)}")


def gramian_of(step: StepInput, method: str) -> Tensor:
    """The [K, K] Gramian ``J Jᵀ`` of the step: ``step.gramian``, else formed from ``step.jacobian``."""
    if step.jacobian is not None:
        jacobian = check_jacobian(step.jacobian).detach()
        return jacobian @ jacobian.T
    if step.gramian is None:
        raise ValueError(
            f"{method} needs the Jacobian of the task losses (StepInput.jacobian) or its Gramian (StepInput.gramian)"
        )
    gramian = step.gramian.detach()
    if gramian.dim() != 2 or gramian.shape[0] != gramian.shape[1] or gramian.shape[0] != len(step.task_names):
        raise ValueError(
            f"{method}: expected a [K, K] gramian for {len(step.task_names)} tasks, got {tuple(gramian.shape)}"
        )
    return gramian


def gradient_combination(
    step: StepInput, coefficients: Tensor, diagnostics: Mapping[str, float], method: str
) -> Combination:
    """The update ``Σ_k coefficients[k] g_k`` with heads receiving ``grad L_k / C``: the shared gradient
    ``coefficients @ J`` when the step has the Jacobian, otherwise (the Gramian path) the loss weights
    ``coefficients`` with head weights ``1 / C`` (the engine's one backward gives the same update)."""
    if step.jacobian is not None:
        jacobian = step.jacobian.detach()
        shared = coefficients.to(dtype=jacobian.dtype, device=jacobian.device) @ jacobian
        return Combination(shared_gradient=shared, diagnostics=diagnostics)
    if step.gramian is None:
        raise ValueError(
            f"{method} needs the Jacobian of the task losses (StepInput.jacobian) or its Gramian (StepInput.gramian)"
        )
    weights = coefficients.detach().to(dtype=step.losses.dtype, device=step.losses.device)
    heads = torch.full_like(weights, 1.0 / check_loss_scale(step.loss_scale, method))
    return Combination(loss_weights=weights, head_weights=heads, diagnostics=diagnostics)


def check_jacobian(jacobian: Tensor) -> Tensor:
    """Validate a [K, P] Jacobian argument of a pure ``aggregate``/``weights`` function."""
    if jacobian.dim() != 2 or jacobian.shape[0] < 1:
        raise ValueError(f"expected a [K, P] jacobian with K >= 1, got shape {tuple(jacobian.shape)}")
    return jacobian


def check_positive(name: str, value: float, method: str) -> float:
    """Validate a method's option: ``value`` as a float, or a ValueError naming ``method.name`` when it is not a
    finite number > 0."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{method}: option {name} must be a number > 0, got {value!r}") from None
    if not (math.isfinite(number) and number > 0):
        raise ValueError(f"{method}: option {name} must be a finite number > 0, got {value!r}")
    return number


def check_loss_scale(loss_scale: float, method: str) -> float:
    """The loss scale C of a pure ``aggregate``/``weights`` call as a float; a ValueError naming ``method``
    when it is not a number > 0."""
    if not float(loss_scale) > 0:
        raise ValueError(f"{method}: loss_scale (C) must be a number > 0, got {loss_scale!r}")
    return float(loss_scale)
