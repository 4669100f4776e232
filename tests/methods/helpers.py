"""Shared helpers for method tests: random Jacobians, StepInput construction, end-to-end training."""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch
from torch import Tensor

from mtlscope import methods, settings
from mtlscope.engine.optimizers import build_optimizer
from mtlscope.engine.trainer import ListSink, Schedule, Trainer
from mtlscope.methods.base import Lookahead, StepInput
from mtlscope.models import build_model


def random_jacobian(num_tasks: int, dim: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> Tensor:
    """A [K, P] Gaussian Jacobian from a seeded generator."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(num_tasks, dim, generator=generator, dtype=dtype)


def step_input(
    jacobian: Tensor | None = None,
    losses: Tensor | None = None,
    *,
    loss_scale: float = 1.0,
    step: int = 0,
    epoch: int = 0,
    seed: int = 0,
    representation_jacobian: Tensor | None = None,
    last_shared_jacobian: Tensor | None = None,
    lookahead: Lookahead | None = None,
) -> StepInput:
    """A StepInput for calling ``Method.combine`` directly in a test."""
    num_tasks = jacobian.shape[0] if jacobian is not None else (losses.shape[0] if losses is not None else 2)
    if losses is None:
        losses = torch.ones(num_tasks, dtype=torch.float64)
    return StepInput(
        losses=losses,
        task_names=tuple(f"task{k}" for k in range(num_tasks)),
        loss_scale=loss_scale,
        step=step,
        epoch=epoch,
        generator=torch.Generator().manual_seed(seed),
        jacobian=jacobian,
        representation_jacobian=representation_jacobian,
        last_shared_jacobian=last_shared_jacobian,
        lookahead=lookahead,
    )


def train_digits(
    method: str,
    *,
    tasks: tuple[str, ...] = ("digits1", "digits2"),
    setting: str = "digits-mtl",
    epochs: int = 3,
    batch_size: int = 32,
    lr: float = 3e-3,
    seed: int = 0,
    **options: Any,
) -> pd.DataFrame:
    """Train ``method`` end to end on a small MLP; returns the records (long table)."""
    chosen = settings.get(setting, tasks=list(tasks))
    model = build_model(chosen, {"name": "mlp", "hidden": [64, 16]}, {"name": "linear"}, seed)
    steps_per_epoch = chosen.steps_per_epoch(batch_size)
    sink = ListSink()
    outcome = Trainer(
        chosen,
        model,
        methods.get(method, **options),
        build_optimizer(model.parameters(), "adam", lr),
        schedule=Schedule(epochs * steps_per_epoch, steps_per_epoch, steps_per_epoch),
        batch_size=batch_size,
        loss_scale=1.0,
        seed=seed,
        sink=sink,
    ).run()
    assert outcome.status == "completed", outcome.message
    return pd.DataFrame(sink.records)


def total_train_loss(records: pd.DataFrame) -> pd.Series:
    """Sum over tasks of the full training loss, per checkpoint step."""
    rows = records[(records["split"] == "train") & (records["metric"] == "loss")]
    return rows.groupby("step")["value"].sum()
