"""The loss scale C of the multi-task objective (Mueller et al., OPT 2022 "temperature" paper, eq. 2).

``grad_MT = (1/C) sum_k w_k grad L_k``. A run gives C as a positive number or as ``"K"`` (uniform
average) or ``"sqrt(K)"`` (keeps the gradient-noise of the sum equal to the average task noise); ``1`` is
the uniform sum, the papers' default. With Adam the step is nearly invariant to a constant gradient
scale, so C mainly matters for SGD (Mueller et al. 2025, eq. 2): both C and the optimizer are recorded with every run.
"""

from __future__ import annotations

import math

LossScale = float | str
SYMBOLIC: tuple[str, ...] = ("K", "sqrt(K)")


def parse_loss_scale(value: object) -> LossScale:
    """Validate a loss scale: a positive number, ``"K"`` or ``"sqrt(K)"``. Raises ``ValueError``."""
    if isinstance(value, bool):
        raise ValueError(f"expected a positive number, 'K' or 'sqrt(K)', got {value!r}")
    if isinstance(value, str):
        text = value.strip()
        if text in SYMBOLIC:
            return text
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"expected a positive number, 'K' or 'sqrt(K)', got {value!r}") from None
    if isinstance(value, int | float) and math.isfinite(value) and value > 0:
        return float(value)
    raise ValueError(f"expected a positive number, 'K' or 'sqrt(K)', got {value!r}")


def resolve_loss_scale(value: LossScale, num_tasks: int) -> float:
    """The number C for ``num_tasks`` tasks."""
    parsed = parse_loss_scale(value)
    if parsed == "K":
        return float(num_tasks)
    if parsed == "sqrt(K)":
        return math.sqrt(num_tasks)
    return float(parsed)
