"""multi-mnist / multi-fashion / multi-fashion-mnist on tiny files in Lin et al.'s format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import mtlscope
from mtlscope.data.catalog import MissingDataError
from mtlscope.settings import get
from tests.data.pickle_files import multimnist_content, write_multimnist

FILES = {
    "multi-mnist": "multi_mnist.pickle",
    "multi-fashion": "multi_fashion.pickle",
    "multi-fashion-mnist": "multi_fashion_and_mnist.pickle",
}


@pytest.fixture
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MTLSCOPE_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("MTLSCOPE_CACHE", str(tmp_path / "cache"))
    for file in FILES.values():
        write_multimnist(tmp_path / "data", file, train=24, test=6)
    return tmp_path / "data"


def _indices(split: object) -> np.ndarray:
    return np.asarray(split.dataset.indices)  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", list(FILES))
def test_tasks_and_splits(data: Path, name: str) -> None:
    setting = get(name)
    assert setting.task_names == ("left", "right") and setting.layout == "shared-input"
    assert setting.input_shape == (1, 36, 36)
    left, right = setting.tasks
    train, val, test = (_indices(getattr(left, split)) for split in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (20, 4, 6)  # 1/6 of the 24 training images validate
    assert sorted([*train, *val]) == list(range(24)) and list(test) == list(range(24, 30))
    assert left.train.shares_inputs(right.train)
    content = multimnist_content(24, 6)
    split = left.train.head(None)
    # pixel (0, 0) holds the training image's index (x / 255 with mean 0, std 1)
    index = torch.round(split.inputs[:, 0, 0, 0] * 255).long().numpy()
    np.testing.assert_array_equal(index, train)
    np.testing.assert_array_equal(split.targets.numpy(), content[1][train, 0])
    np.testing.assert_array_equal(right.train.head(None).targets.numpy(), content[1][train, 1])
    np.testing.assert_array_equal(left.test.head(None).targets.numpy(), content[3][:, 0])
    assert float(split.inputs.min()) >= 0 and float(split.inputs.max()) <= 1


def test_validation_is_seeded(data: Path) -> None:
    a, b, c = get("multi-mnist"), get("multi-mnist"), get("multi-mnist", split_seed=3)
    assert np.array_equal(_indices(a.tasks[0].val), _indices(b.tasks[0].val))
    assert not np.array_equal(_indices(a.tasks[0].val), _indices(c.tasks[0].val))
    assert a.tasks[0].val.fingerprint() == b.tasks[0].val.fingerprint() != c.tasks[0].val.fingerprint()


def test_a_task_subset_and_missing_data(data: Path) -> None:
    assert get("multi-fashion", tasks=["right"]).task_names == ("right",)
    (data / "multi_fashion.pickle").unlink()
    with pytest.raises(MissingDataError, match=r"^multi-fashion: missing .*multi_fashion\.pickle"):
        get("multi-fashion")


def test_a_short_run_with_probes(data: Path, tmp_path: Path) -> None:
    config = {
        "setting": {"name": "multi-mnist"},
        "training": {"steps": 4, "batch_size": 8, "eval_every": 2},
        "probes": {"min_train_loss": {}, "sharpness": {"subset": 16}, "grad_similarity": {"batches": 1, "every": 2}},
        "seed": 0,
    }
    outcome = mtlscope.execute(mtlscope.validate_config(config), tmp_path / "run")
    assert outcome.status == "completed"
    records = mtlscope.load(tmp_path / "run").records
    assert {"train", "val", "test", "probe"} <= set(records["split"])
    assert {"left", "right"} <= set(records["task"].dropna())
