"""fashion-mtl on tiny Fashion-MNIST/notMNIST files in the official formats, and on the real files when present."""

from __future__ import annotations

import os
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

from mtlscope import settings
from mtlscope.data.catalog import MissingDataError
from mtlscope.data.sources import mnist as mnist_source
from mtlscope.runs import execute, load, validate_config
from tests.data.tiny_mnist import image_ids, write_idx_dataset, write_notmnist_folder

TINY = {"train_size": 20, "val_size": 5, "test_size": 5, "notmnist_train_size": 12}
MEAN, STD = 0.2860, 0.3530
REAL = Path(os.environ.get("MTLSCOPE_FASHION_MNIST_DIR", "/work/shared/data/fashion-mnist"))


@pytest.fixture
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MTLSCOPE_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("MTLSCOPE_CACHE", str(tmp_path / "cache"))
    write_idx_dataset(tmp_path / "data" / "FashionMNIST" / "raw", train=60, test=20)
    return tmp_path / "data"


def _all(split) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # type: ignore[no-untyped-def]
    inputs, targets = split.dataset.batch(np.arange(len(split)))
    ids, tags = image_ids(inputs.numpy(), MEAN, STD)
    return ids, tags, targets.numpy()


def test_splits_sizes_disjoint_labels_and_normalization(data: Path) -> None:
    setting = settings.get("fashion-mtl", **TINY)
    assert setting.task_names == ("fashion1", "fashion2", "noisy-fashion", "notmnist")
    assert setting.input_shape == (1, 28, 28) and setting.layout == "multi-input"
    assert setting.default_model == {"encoder": {"name": "lenet5"}, "head": {"name": "linear"}}
    seen: dict[str, set[tuple[int, int]]] = {}
    for task in ("fashion1", "fashion2"):
        for split, size, tag in (("train", 20, 1), ("val", 5, 1), ("test", 5, 2)):
            data_split = setting.task(task).split(split)
            assert len(data_split) == size
            ids, tags, labels = _all(data_split)
            assert (tags == tag).all()  # train and val from the official train file, test from t10k
            # the label is the one written for that image (pixel [27, 27] = 25 * label)
            inputs, _ = data_split.dataset.batch(np.arange(size))
            written = np.rint((inputs.numpy()[:, 0, 27, 27] * STD + MEAN) * 255) / 25
            np.testing.assert_array_equal(labels, written)
            seen[f"{task}/{split}"] = {(t, i) for t, i in zip(tags, ids, strict=True)}
            assert len(seen[f"{task}/{split}"]) == size
    keys = list(seen)
    for a in range(len(keys)):
        for b in range(a + 1, len(keys)):
            assert not seen[keys[a]] & seen[keys[b]], (keys[a], keys[b])
    x, _ = setting.task("fashion1").train.dataset[0]
    assert x.dtype.is_floating_point and tuple(x.shape) == (1, 28, 28)


def test_noisy_fashion_is_fashion2_with_labels_permuted_across_images(data: Path) -> None:
    setting = settings.get("fashion-mtl", **TINY)
    for split in ("train", "val", "test"):
        ids2, _, labels2 = _all(setting.task("fashion2").split(split))
        ids_noisy, _, labels_noisy = _all(setting.task("noisy-fashion").split(split))
        np.testing.assert_array_equal(ids_noisy, ids2)  # the same images, in the same order
        np.testing.assert_array_equal(np.sort(labels_noisy), np.sort(labels2))  # the same class counts
    _, _, labels2 = _all(setting.task("fashion2").train)
    _, _, noisy = _all(setting.task("noisy-fashion").train)
    assert (noisy != labels2).sum() >= 10  # permuted: most labels moved
    assert setting.task("fashion2").train.fingerprint() != setting.task("noisy-fashion").train.fingerprint()


def test_deterministic_by_split_seed(data: Path) -> None:
    first, again = settings.get("fashion-mtl", **TINY), settings.get("fashion-mtl", **TINY)
    other = settings.get("fashion-mtl", **TINY, split_seed=1)
    for task in ("fashion1", "noisy-fashion"):
        np.testing.assert_array_equal(_all(first.task(task).train)[0], _all(again.task(task).train)[0])
        np.testing.assert_array_equal(_all(first.task(task).train)[2], _all(again.task(task).train)[2])
    assert not np.array_equal(_all(first.task("fashion1").train)[0], _all(other.task("fashion1").train)[0])
    tasks = ["fashion1", "fashion2", "noisy-fashion"]
    assert first.subset(tasks).fingerprint() == again.subset(tasks).fingerprint() != other.subset(tasks).fingerprint()


def test_split_sizes_that_do_not_fit_are_one_line(data: Path) -> None:
    with pytest.raises(ValueError) as error:
        settings.get("fashion-mtl", train_size=26, val_size=5)
    message = str(error.value)
    assert "\n" not in message
    assert "has 60 images, the splits need 62 (fashion1 train 26 + fashion2 train 26" in message


def test_notmnist_is_located_only_when_its_task_is_used(data: Path) -> None:
    setting = settings.get("fashion-mtl", **TINY)  # no notMNIST on disk: the other tasks build and run
    assert len(setting.task("notmnist").train) == 12
    setting.subset(["fashion1", "noisy-fashion"]).fingerprint()
    with pytest.raises(MissingDataError) as error:
        setting.subset(["fashion1", "notmnist"]).fingerprint()
    assert "\n" not in str(error.value) and "setting 'fashion-mtl', task 'notmnist'" in str(error.value)
    assert "notMNIST_small" in str(error.value)


def test_notmnist_task_from_a_folder_and_too_few_letters(data: Path) -> None:
    write_notmnist_folder(data / "notMNIST_small", per_letter=3, unreadable=1)  # 30 readable letters
    setting = settings.get("fashion-mtl", **TINY)
    task = setting.task("notmnist")
    sizes = [len(task.split(split)) for split in ("train", "val", "test")]
    assert sizes == [12, 5, 5]
    ids = [
        set(image_ids(task.split(s).dataset.batch(np.arange(n))[0].numpy(), 0, 1)[0])
        for s, n in zip(("train", "val", "test"), sizes, strict=True)
    ]
    assert not ids[0] & ids[1] and not ids[0] & ids[2] and not ids[1] & ids[2]
    inputs, labels = task.train.dataset.batch(np.arange(12))
    assert inputs.shape == (12, 1, 28, 28) and labels.dtype.is_floating_point is False
    assert abs(float(inputs.mean())) < 0.05 and abs(float(inputs.std()) - 1) < 0.05  # its own normalization
    big = settings.get("fashion-mtl", **{**TINY, "notmnist_train_size": 25})
    with pytest.raises(ValueError, match=r"has 30 images, the splits need 35 \(test 5 \+ val 5 \+ train 25\)"):
        big.task("notmnist").train.fingerprint()


def test_short_training_run_with_probes(data: Path, tmp_path: Path) -> None:
    write_notmnist_folder(data / "notMNIST_small", per_letter=3, unreadable=1)
    config = {
        "setting": {"name": "fashion-mtl", "tasks": ["fashion1", "noisy-fashion", "notmnist"], "options": TINY},
        "training": {"steps": 4, "eval_every": 2, "batch_size": 4},
        "probes": {
            "sharpness": {"subset": 8, "iterations": 2, "batch_size": 4, "every": 1},
            "fim_trace": {"subset": 8, "every": 1},
            "min_train_loss": {},
        },
    }
    outcome = execute(validate_config(config), tmp_path / "runs")
    assert outcome.status == "completed"
    records = load(outcome.path.parent).records
    probes = records[records["split"] == "probe"]
    assert set(probes["task"]) == {"fashion1", "noisy-fashion", "notmnist"}
    assert np.isfinite(probes["value"]).all() and sorted(probes["step"].unique()) == [0, 2, 4]
    assert load(outcome.path.parent).runs.iloc[0]["config"]["model"]["encoder"]["name"] == "lenet5"


@pytest.mark.skipif(not (REAL / "train-images-idx3-ubyte.gz").exists(), reason="real Fashion-MNIST files absent")
def test_real_fashion_mnist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "fashion-mnist").symlink_to(REAL)
    monkeypatch.setenv("MTLSCOPE_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("MTLSCOPE_CACHE", str(tmp_path / "cache"))
    setting = settings.get("fashion-mtl", tasks=["fashion1", "fashion2", "noisy-fashion"])
    for task in setting.tasks:
        assert [len(task.split(s)) for s in ("train", "val", "test")] == [25_000, 5_000, 5_000]
        counts = np.bincount(task.train.dataset.targets.numpy(), minlength=10)
        assert counts.min() > 2_300 and counts.max() < 2_700  # Fashion-MNIST is balanced: 2,500 expected
    assert abs(float(setting.task("fashion1").train.dataset.batch(np.arange(2000))[0].mean())) < 0.1
    with mock.patch.object(mnist_source, "_decode_idx_images", side_effect=AssertionError("decoded again")):
        again = settings.get("fashion-mtl", tasks=["fashion1", "fashion2", "noisy-fashion"])
    assert again.fingerprint() == setting.fingerprint()
