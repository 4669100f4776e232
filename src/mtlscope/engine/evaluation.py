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

from mtlscope.data.datasets import DatasetSplit
from mtlscope.data.splits import Split, SplitData
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
            for members in input_groups(setting, split):
                first = next(iter(members.values()))
                accumulators = {name: setting.task(name).accumulators() for name in members}
                for inputs, targets in first.group_batches(members, batch_size, limit):
                    representation = model.encoder(inputs)
                    for name in members:
                        outputs = model.heads[name](representation)
                        for accumulator in accumulators[name].values():
                            accumulator.update(outputs, targets[name])
                for name in members:
                    scores[(name, split)] = {metric: acc.compute() for metric, acc in accumulators[name].items()}
    finally:
        model.train(was_training)
    return scores


def input_groups(setting: Setting, split: str) -> list[dict[str, SplitData]]:
    """The tasks whose ``split`` has the same inputs object (one encoder pass each), in task order."""
    groups: list[dict[str, SplitData]] = []
    for task in setting.tasks:
        data = task.split(split)
        for members in groups:
            if _same_source(next(iter(members.values())), data):
                members[task.name] = data
                break
        else:
            groups.append({task.name: data})
    return groups


def _same_source(a: SplitData, b: SplitData) -> bool:
    if isinstance(a, Split) and isinstance(b, Split):
        return a.inputs is b.inputs
    return isinstance(a, DatasetSplit) and isinstance(b, DatasetSplit) and a.dataset is b.dataset
