"""mnists on tiny MNIST, Fashion-MNIST and notMNIST files in the official formats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mtlscope import settings
from mtlscope.data.catalog import MissingDataError
from mtlscope.runs import execute, load, validate_config
from tests.data.tiny_mnist import image_ids, write_idx_dataset

TINY = {"train_size": 30, "val_size": 10, "test_size": 10}
NORMALIZATION = {"mnist": (0.1307, 0.3081), "fashion": (0.2860, 0.3530)}


@pytest.fixture
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MTLSCOPE_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("MTLSCOPE_CACHE", str(tmp_path / "cache"))
    write_idx_dataset(tmp_path / "data" / "MNIST" / "raw", train=45, test=12, gz=False, seed=10)
    write_idx_dataset(tmp_path / "data" / "fashion-mnist", train=40, test=10, seed=20)
    return tmp_path / "data"


def test_three_tasks_sizes_sources_and_disjoint_splits(data: Path) -> None:
    write_idx_dataset(data / "notmnist", train=50, test=15, seed=30)  # the IDX conversion
    setting = settings.get("mnists", **TINY)
    assert setting.task_names == ("mnist", "fashion", "notmnist")
    assert setting.default_model == {"encoder": {"name": "multilenet"}, "head": {"name": "multilenet"}}
    for task in setting.tasks:
        ids = {}
        for split, tag in (("train", 1), ("val", 1), ("test", 2)):
            part = task.split(split)
            assert len(part) == TINY[f"{split}_size"]
            inputs, labels = part.dataset.batch(np.arange(len(part)))
            mean, std = (
                NORMALIZATION.get(task.name, (part.dataset.built.mean[0], part.dataset.built.std[0]))
                if (task.name == "notmnist")
                else NORMALIZATION[task.name]
            )
            found, tags = image_ids(inputs.numpy(), mean, std)
            assert (tags == tag).all(), (task.name, split)
            label_pixels = np.rint((inputs.numpy()[:, 0, 27, 27] * std + mean) * 255) / 25
            np.testing.assert_array_equal(labels.numpy(), label_pixels)
            ids[split] = set(found)
            assert len(ids[split]) == len(part)
        assert not ids["train"] & ids["val"]


def test_mnist_and_fashion_run_without_notmnist_and_seed_changes_the_draw(data: Path) -> None:
    setting = settings.get("mnists", **TINY)
    setting.subset(["mnist", "fashion"]).fingerprint()
    with pytest.raises(MissingDataError, match="setting 'mnists', task 'notmnist'"):
        setting.task("notmnist").train.fingerprint()
    other = settings.get("mnists", **TINY, split_seed=3)
    first_ids = setting.task("mnist").train.dataset.batch(np.arange(30))[0]
    again_ids = settings.get("mnists", **TINY).task("mnist").train.dataset.batch(np.arange(30))[0]
    assert (first_ids == again_ids).all()
    assert not (first_ids == other.task("mnist").train.dataset.batch(np.arange(30))[0]).all()


def test_defaults_are_the_papers_sizes_and_need_enough_images(data: Path) -> None:
    with pytest.raises(ValueError, match=r"task 'mnist': mnist train files: has 45 images, the splits need 60000"):
        settings.get("mnists")


def test_short_training_run_with_probes_and_dropout_model(data: Path, tmp_path: Path) -> None:
    write_idx_dataset(data / "notmnist", train=50, test=15, seed=30)
    config = {
        "setting": {"name": "mnists", "options": TINY},
        "training": {"steps": 4, "eval_every": 2, "batch_size": 4},
        "probes": {"fim_trace": {"subset": 8, "every": 1}, "grad_similarity": {"batches": 2, "every": 1}},
    }
    outcome = execute(validate_config(config), tmp_path / "runs")
    assert outcome.status == "completed"
    records = load(outcome.path.parent).records
    probes = records[records["split"] == "probe"]
    assert set(probes["task"]) == {"mnist", "fashion", "notmnist"}
    assert np.isfinite(probes["value"]).all()
