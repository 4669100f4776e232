"""cifar100-mtl on a tiny CIFAR-100 in the official format: tasks, label remapping, splits, determinism, a run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import mtlscope
from mtlscope.data.catalog import MissingDataError
from mtlscope.settings import get
from mtlscope.settings.cifar100 import MEAN, STD
from tests.data.pickle_files import COARSE_OF_FINE, TASK_NAMES, write_cifar100


@pytest.fixture
def cifar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MTLSCOPE_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("MTLSCOPE_CACHE", str(tmp_path / "cache"))
    return write_cifar100(tmp_path / "data", train_per_fine=6, test_per_fine=2)


def _indices(split: object) -> np.ndarray:
    return np.asarray(split.dataset.indices)  # type: ignore[attr-defined]


def test_tasks_labels_and_splits(cifar: Path) -> None:
    setting = get("cifar100-mtl", val_size=5)
    assert setting.task_names == tuple(TASK_NAMES)
    assert "large_man_made_outdoor_things" in setting.task_names and "fish" in setting.task_names
    assert setting.layout == "multi-input" and setting.input_shape == (3, 32, 32)
    assert setting.default_model["encoder"]["name"] == "resnet"
    for coarse, task in enumerate(setting.tasks):
        fine_of_task = np.flatnonzero(coarse == COARSE_OF_FINE)  # increasing fine labels -> 0..4
        assert task.output_size == 5
        train, val, test = (_indices(getattr(task, split)) for split in ("train", "val", "test"))
        assert (len(train), len(val), len(test)) == (25, 5, 10)
        assert not set(train) & set(val) and not set(train) & set(test) and not set(val) & set(test)
        assert (train < 600).all() and (val < 600).all() and (test >= 600).all()  # the test file is the test set
        inputs, targets = task.train.head(None).inputs, task.train.head(None).targets
        # pixel (0, 0, 0) holds the image's fine label: undo the normalization to read it
        fine = torch.round((inputs[:, 0, 0, 0] * STD[0] + MEAN[0]) * 255).long().numpy()
        assert set(fine) <= set(fine_of_task)
        np.testing.assert_array_equal(targets.numpy(), np.searchsorted(fine_of_task, fine))
        assert targets.dtype == torch.int64
        test_targets = task.test.head(None).targets
        assert sorted(test_targets.tolist()) == sorted([0, 1, 2, 3, 4] * 2)


def test_normalization_is_cifar100s_mean_and_std(cifar: Path) -> None:
    task = get("cifar100-mtl", val_size=5).task("fish")
    x, _ = task.train.dataset[1]
    raw = torch.from_numpy(np.array(task.train.dataset.dataset.images[_indices(task.train)[1]])).float() / 255
    expected = (raw - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    torch.testing.assert_close(x, expected, atol=1e-5, rtol=0)


def test_validation_draw_is_seeded(cifar: Path) -> None:
    a, b = get("cifar100-mtl", val_size=5), get("cifar100-mtl", val_size=5)
    c = get("cifar100-mtl", val_size=5, split_seed=1)
    assert all(np.array_equal(_indices(x.val), _indices(y.val)) for x, y in zip(a.tasks, b.tasks))
    assert any(not np.array_equal(_indices(x.val), _indices(y.val)) for x, y in zip(a.tasks, c.tasks))
    assert a.task("fish").train.fingerprint() == b.task("fish").train.fingerprint()
    assert a.task("fish").train.fingerprint() != c.task("fish").train.fingerprint()


def test_task_subsets_and_bad_options(cifar: Path) -> None:
    subset = get("cifar100-mtl", tasks=["fish", "trees"], val_size=5)
    assert subset.task_names == ("fish", "trees")
    with pytest.raises(ValueError, match=r"option val_size must be < 30 \(task 'aquatic_mammals'"):
        get("cifar100-mtl", val_size=30)


def test_missing_data_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MTLSCOPE_DATA", str(tmp_path / "nothing"))
    with pytest.raises(MissingDataError, match=r"^cifar-100: missing .*cifar-100-python/train; get it from"):
        get("cifar100-mtl")


def test_a_short_run_with_probes(cifar: Path, tmp_path: Path) -> None:
    config = {
        "setting": {"name": "cifar100-mtl", "tasks": ["fish", "people"], "options": {"val_size": 5}},
        "model": {"encoder": {"name": "resnet", "blocks": [1, 1], "widths": [8, 16]}, "head": {"name": "linear"}},
        "training": {"steps": 4, "batch_size": 8, "eval_every": 2},
        "probes": {"min_train_loss": {}, "sharpness": {"subset": 16}, "grad_similarity": {"batches": 1, "every": 2}},
        "seed": 0,
    }
    outcome = mtlscope.execute(mtlscope.validate_config(config), tmp_path / "run")
    assert outcome.status == "completed"
    records = mtlscope.load(tmp_path / "run").records
    assert {"train", "val", "test", "probe"} <= set(records["split"])
    assert set(records["task"].dropna()) >= {"fish", "people"}
    again = mtlscope.execute(mtlscope.validate_config(config), tmp_path / "again")
    assert again.status == "completed"
    first = records.drop(columns=["run_id"]).reset_index(drop=True)
    second = mtlscope.load(tmp_path / "again").records.drop(columns=["run_id"]).reset_index(drop=True)
    assert first.equals(second)
