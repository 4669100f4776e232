"""Evaluation in batches gives the metrics of the whole set (sufficient statistics, not per-batch means)."""

from __future__ import annotations

import pytest
import torch

from mtlscope import settings
from mtlscope.engine.evaluation import evaluate
from mtlscope.models.multitask import build_model


@pytest.mark.parametrize("task_type", ["regression", "classification"])
def test_small_batches_give_the_whole_set_scores(task_type: str) -> None:
    setting = settings.get("synthetic", task_type=task_type, train_size=100, val_size=37, test_size=50)
    model = build_model(setting, {"name": "mlp", "hidden": [8]}, {"name": "linear"}, seed=0)
    whole = evaluate(model, setting, batch_size=4096)
    batched = evaluate(model, setting, batch_size=7)
    assert list(batched) == list(whole)
    for key, scores in whole.items():
        assert list(batched[key]) == list(scores) == list(setting.task(key[0]).metric_names)
        for metric, value in scores.items():
            assert batched[key][metric] == pytest.approx(value, rel=1e-6, abs=1e-12), (key, metric)
    # the one-batch scores are the task's metrics computed on all outputs at once
    task = setting.tasks[0]
    with torch.no_grad():
        model.eval()
        outputs = model.heads[task.name](model.encoder(task.val.inputs))
    assert whole[(task.name, "val")] == task.scores(outputs, task.val.targets)
