"""A method's own learnable vector, stepped by a real ``torch.optim`` optimizer.

Several loss-weighting methods learn a small vector of K numbers next to the model: the log-variances of
uncertainty weighting (``uw``), GradNorm's task weights (``gradnorm``), IMTL-L's log-scales (``imtl_l``,
``imtl``) and FAMO's task logits (``famo``). None of these vectors is a model parameter: the method computes
the vector's gradient in closed form (from the task losses, gradient norms or loss changes) and then takes
one optimizer step with it. ``LearnedVector`` is that concept: the value, its optimizer (``torch.optim.Adam``
with PyTorch's defaults, betas (0.9, 0.999) and eps 1e-8, optional coupled L2 ``weight_decay``; or
``torch.optim.SGD`` without momentum) and the optimizer's state, checkpointed together.

The value is a float64 leaf tensor on the CPU, whatever the dtype and device of the run: it is only K numbers,
so float64 costs nothing, the optimizer's arithmetic does not depend on the run's dtype (a float16 or bfloat16
run does not round the vector or its moments), and checkpoints are exact and independent of the device they
were written on. A method converts the value where it uses it (``vector.value.to(losses)``) and passes
gradients of any dtype or device to ``step``, which converts them.

Typical use, one step of a method::

    weights = vector.value                 # the value used at this step (a copy)
    vector.step(closed_form_gradient)      # one optimizer step
    return weights.to(step.losses) / step.loss_scale
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

#: The optimizers a ``LearnedVector`` can use.
OPTIMIZERS: tuple[str, ...] = ("adam", "sgd")

_STATE_KEYS = frozenset({"value", "steps", "optimizer", "optimizer_state"})


def _as_vector(values: Tensor) -> Tensor:
    """``values`` as a detached float64 CPU copy."""
    return torch.as_tensor(values).detach().to(device="cpu", dtype=torch.float64).clone()


class LearnedVector:
    """A learnable [K] vector of a method (float64, CPU) and the ``torch.optim`` optimizer that steps it.

    Args:
        initial: the initial value, a 1-D tensor (copied; any dtype and device).
        lr: the optimizer's learning rate (a finite number > 0).
        optimizer: ``"adam"`` (``torch.optim.Adam``, default betas and eps) or ``"sgd"`` (``torch.optim.SGD``,
            no momentum).
        weight_decay: L2 weight decay coupled to the gradient, as ``torch.optim.Adam``/``SGD``'s
            ``weight_decay`` (a finite number >= 0; default 0).

    The hyperparameters belong to the vector, not to its state: ``load_state_dict`` restores the value, the
    optimizer's moments and the step count, and keeps ``lr``, ``optimizer`` and ``weight_decay`` as given here
    (as a method's other options come from its configuration).
    """

    def __init__(self, initial: Tensor, *, lr: float, optimizer: str = "adam", weight_decay: float = 0.0) -> None:
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"LearnedVector: optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
            raise ValueError(f"LearnedVector: lr must be a finite number > 0, got {lr!r}")
        if (
            isinstance(weight_decay, bool)
            or not isinstance(weight_decay, (int, float))
            or not math.isfinite(weight_decay)
            or weight_decay < 0
        ):
            raise ValueError(f"LearnedVector: weight_decay must be a finite number >= 0, got {weight_decay!r}")
        value = _as_vector(initial)
        if value.dim() != 1:
            raise ValueError(f"LearnedVector: expected a 1-D initial value, got shape {tuple(value.shape)}")
        self.lr = float(lr)
        self.optimizer_name = optimizer
        self.weight_decay = float(weight_decay)
        self._value = value.requires_grad_(True)
        self.optimizer: torch.optim.Optimizer
        if optimizer == "adam":
            self.optimizer = torch.optim.Adam([self._value], lr=self.lr, weight_decay=self.weight_decay)
        else:
            self.optimizer = torch.optim.SGD([self._value], lr=self.lr, weight_decay=self.weight_decay)
        #: Number of ``step`` calls since construction (restored by ``load_state_dict``).
        self.steps = 0

    @property
    def shape(self) -> torch.Size:
        return self._value.shape

    @property
    def value(self) -> Tensor:
        """[K] the current value, a detached float64 CPU copy (later steps do not change it)."""
        return self._value.detach().clone()

    def _check(self, values: Tensor, what: str) -> Tensor:
        converted = _as_vector(values)
        if converted.shape != self._value.shape:
            raise ValueError(
                f"LearnedVector: {what} has shape {tuple(converted.shape)}, expected {tuple(self._value.shape)}"
            )
        return converted

    def step(self, gradient: Tensor) -> None:
        """One optimizer step with ``gradient`` ([K], any dtype/device) as the value's gradient."""
        self._value.grad = self._check(gradient, "the gradient")
        self.optimizer.step()
        self._value.grad = None
        self.steps += 1

    def assign(self, new_value: Tensor) -> None:
        """Overwrite the value in place (e.g. a projection after a step); the optimizer's state is kept."""
        converted = self._check(new_value, "the new value")
        with torch.no_grad():
            self._value.copy_(converted)

    def state_dict(self) -> dict[str, Any]:
        """The value, the step count, the optimizer's name and its ``state_dict`` (copies: later steps do not
        change a returned state)."""
        return {
            "value": self.value,
            "steps": self.steps,
            "optimizer": self.optimizer_name,
            "optimizer_state": copy.deepcopy(self.optimizer.state_dict()),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what ``state_dict`` returned (copied: the state can be loaded into several vectors)."""
        if not isinstance(state, Mapping) or set(state) != _STATE_KEYS:
            keys = sorted(state) if isinstance(state, Mapping) else state
            raise ValueError(f"LearnedVector: state keys {keys} do not match {sorted(_STATE_KEYS)}")
        if state["optimizer"] != self.optimizer_name:
            raise ValueError(
                f"LearnedVector: state of a {state['optimizer']!r} optimizer, this vector uses {self.optimizer_name!r}"
            )
        value = self._check(state["value"], "the state's value")
        saved = state["optimizer_state"]
        if not isinstance(saved, Mapping) or not isinstance(saved.get("state"), Mapping) or set(saved["state"]) - {0}:
            raise ValueError(
                "LearnedVector: the state's optimizer_state is not the state_dict of a one-tensor optimizer"
            )
        # The moments come from the state; the hyperparameters (param_groups) stay those of this vector.
        current_groups = self.optimizer.state_dict()["param_groups"]
        self.optimizer.load_state_dict({"state": copy.deepcopy(dict(saved["state"])), "param_groups": current_groups})
        with torch.no_grad():
            self._value.copy_(value)
        self.steps = int(state["steps"])
