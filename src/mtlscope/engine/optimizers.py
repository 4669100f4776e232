"""Optimizers of a run (Mueller et al. 2025, App. A): Adam (default), AdamW, SGD and SGD with momentum (``name: sgd``
with ``momentum > 0``; the temperature paper uses momentum 0.9). The learning rate given here is the initial one;
a run's schedule (``mtlscope.engine.lr_schedules``) is applied by the trainer."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

OPTIMIZERS: tuple[str, ...] = ("adam", "adamw", "sgd")


def build_optimizer(
    parameters: Iterable[nn.Parameter],
    name: str,
    lr: float,
    *,
    momentum: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> torch.optim.Optimizer:
    """The torch optimizer ``name`` over ``parameters`` with learning rate ``lr``."""
    params = list(parameters)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    raise ValueError(f"optimizer.name must be one of {', '.join(OPTIMIZERS)}, got {name!r}")
