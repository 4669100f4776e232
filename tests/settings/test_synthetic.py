from __future__ import annotations

import numpy as np
import pytest
import torch

from mtlscope import settings
from mtlscope.settings.synthetic import teacher_vectors


@pytest.mark.parametrize(("tasks", "relatedness"), [(2, 0.5), (2, -0.9), (3, -0.4), (4, 0.0), (5, 1.0)])
def test_teachers_have_exact_pairwise_cosine(tasks: int, relatedness: float) -> None:
    w = teacher_vectors(tasks, 16, relatedness, np.random.default_rng(0))
    gram = w @ w.T
    expected = (1 - relatedness) * np.eye(tasks) + relatedness
    assert np.allclose(gram, expected, atol=1e-10)


def test_infeasible_relatedness_is_rejected() -> None:
    with pytest.raises(ValueError, match="relatedness"):
        settings.get("synthetic", num_tasks=3, relatedness=-0.6)


def test_regression_labels_follow_teacher_with_noise() -> None:
    setting = settings.get("synthetic", noise=0.0, relatedness=0.3, train_size=200)
    t0 = setting.tasks[0]
    # without noise the labels are exactly linear in the inputs
    solution, *_ = np.linalg.lstsq(t0.train.inputs.numpy().astype(np.float64), t0.train.targets.numpy(), rcond=None)
    assert np.allclose(t0.train.inputs.numpy() @ solution, t0.train.targets.numpy(), atol=1e-4)
    assert abs(np.linalg.norm(solution) - 1) < 1e-4
    noisy = settings.get("synthetic", noise=1.0, train_size=2000).tasks[0]
    residual = (
        noisy.train.targets.numpy()
        - noisy.train.inputs.numpy()
        @ np.linalg.lstsq(noisy.train.inputs.numpy(), noisy.train.targets.numpy(), rcond=None)[0]
    )
    assert 0.8 < residual.std() < 1.2


def test_layouts_and_classification() -> None:
    multi = settings.get("synthetic", num_tasks=3, task_type="classification")
    assert multi.layout == "multi-input"
    assert not torch.equal(multi.tasks[0].train.inputs, multi.tasks[1].train.inputs)
    shared = settings.get("synthetic", num_tasks=3, task_type="classification", layout="shared-input")
    assert shared.layout == "shared-input"
    assert shared.tasks[0].train.inputs is shared.tasks[2].train.inputs
    assert set(shared.tasks[0].train.targets.unique().tolist()) == {0, 1}
    assert shared.tasks[0].primary_metric == "accuracy"


def test_related_teachers_give_correlated_labels() -> None:
    same = settings.get("synthetic", layout="shared-input", relatedness=1.0, noise=0.0)
    assert torch.allclose(same.tasks[0].train.targets, same.tasks[1].train.targets, atol=1e-5)
    opposite = settings.get("synthetic", layout="shared-input", relatedness=-1.0, noise=0.0)
    assert torch.allclose(opposite.tasks[0].train.targets, -opposite.tasks[1].train.targets, atol=1e-5)
