from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import f1_score, mean_absolute_error, r2_score

from mtlscope.settings.task import task_metrics


def test_classification_metrics_match_sklearn() -> None:
    generator = torch.Generator().manual_seed(0)
    outputs = torch.randn(200, 5, generator=generator)
    targets = torch.randint(0, 5, (200,), generator=generator)
    targets[targets == 4] = 3  # one class absent from the targets
    metrics = task_metrics("classification", 5, outputs, targets)
    predicted = outputs.argmax(1).numpy()
    assert np.isclose(metrics["accuracy"], (predicted == targets.numpy()).mean())
    expected_f1 = f1_score(targets.numpy(), predicted, average="macro", labels=sorted(set(targets.tolist())))
    assert np.isclose(metrics["macro_f1"], expected_f1)
    assert np.isclose(metrics["loss"], float(torch.nn.functional.cross_entropy(outputs, targets)))


def test_regression_metrics_match_sklearn() -> None:
    generator = torch.Generator().manual_seed(1)
    outputs = torch.randn(100, 1, generator=generator)
    targets = torch.randn(100, generator=generator)
    metrics = task_metrics("regression", 1, outputs, targets)
    assert np.isclose(metrics["r2"], r2_score(targets.numpy(), outputs[:, 0].numpy()), atol=1e-6)
    assert np.isclose(metrics["mae"], mean_absolute_error(targets.numpy(), outputs[:, 0].numpy()), atol=1e-6)
    assert np.isclose(metrics["loss"], float(((outputs[:, 0] - targets) ** 2).mean()), atol=1e-6)
