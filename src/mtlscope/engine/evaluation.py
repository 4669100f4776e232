"""Evaluation at checkpoints: every metric of every task on the requested splits (Mueller et al. 2025, App. A).

The model is put in eval mode (no dropout, BatchNorm running statistics) and restored to its previous
mode afterwards; no gradients are recorded. Tasks that share inputs (shared-input layout) share one
encoder pass. The training split can be capped to its first ``train_limit`` examples (a fixed subset).

Sets are evaluated in batches of ``batch_size``; each metric accumulates its sufficient statistics over the
batches (``mtlscope.metrics.Accumulator``), so a score is the metric on the whole set, never a mean of
per-batch values. Counts, confusion matrices and centred sums merge exactly; a loss summed over several
batches can differ from a one-shot float32 mean in the last float32 bit (summation order), so the default
batch (2048) keeps every split of the built-in settings in one batch and their records as they always were.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

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
    batch_size: int = 2048,
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
                accumulators = {name: setting.task(name).accumulators() for name in names}
                targets = {name: setting.task(name).split(split).head(limit).targets for name in names}
                for start in range(0, len(inputs), batch_size):
                    representation = model.encoder(inputs[start : start + batch_size])
                    for name in names:
                        outputs = model.heads[name](representation)
                        for accumulator in accumulators[name].values():
                            accumulator.update(outputs, targets[name][start : start + batch_size])
                for name in names:
                    scores[(name, split)] = {metric: acc.compute() for metric, acc in accumulators[name].items()}
    finally:
        model.train(was_training)
    return scores
