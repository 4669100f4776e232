"""Evaluation at checkpoints: every metric of every task on the requested splits (Mueller et al. 2025, App. A).

The model is put in eval mode (no dropout, BatchNorm running statistics) and restored to its previous
mode afterwards; no gradients are recorded. Tasks that share inputs (shared-input layout) share one
encoder pass. The training split can be capped to its first ``train_limit`` examples (a fixed subset).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtlscope.models.multitask import MultiTaskModel
from mtlscope.settings.setting import Setting

Scores = dict[tuple[str, str], dict[str, float]]  # (task, split) -> metric -> value


@torch.no_grad()
def evaluate(
    model: MultiTaskModel,
    setting: Setting,
    splits: Sequence[str] = ("train", "val", "test"),
    *,
    train_limit: int | None = None,
    batch_size: int = 1024,
) -> Scores:
    """Metrics per (task, split), e.g. ``scores[("digits1", "test")]["accuracy"]``."""
    was_training = model.training
    model.eval()
    scores: Scores = {}
    try:
        for split in splits:
            limit = train_limit if split == "train" else None
            groups: dict[int, list[str]] = {}
            for task in setting.tasks:
                groups.setdefault(id(task.split(split).inputs), []).append(task.name)
            for names in groups.values():
                inputs = setting.task(names[0]).split(split).head(limit).inputs
                outputs: dict[str, list[Tensor]] = {name: [] for name in names}
                for start in range(0, len(inputs), batch_size):
                    representation = model.encoder(inputs[start : start + batch_size])
                    for name in names:
                        outputs[name].append(model.heads[name](representation))
                for name in names:
                    task = setting.task(name)
                    targets = task.split(split).head(limit).targets
                    scores[(name, split)] = task.metrics(torch.cat(outputs[name]), targets)
    finally:
        model.train(was_training)
    return scores
