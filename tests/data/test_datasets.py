"""Settings read from map-style Datasets: the same trajectory as tensors, independent of workers, seeded
train-only augmentation, never augmented evaluation and probes, fingerprints, and one-line errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import Dataset, IterableDataset

import mtlscope
from mtlscope.data import DatasetSplit
from mtlscope.engine.evaluation import evaluate
from mtlscope.engine.sampling import BatchSampler, IndexStream, make_batch, random_batch
from mtlscope.models.multitask import build_model, derived_seed
from mtlscope.probes.predictor import probe_subset
from mtlscope.settings import Setting, TaskSpec, from_arrays, from_datasets

RNG = np.random.default_rng(0)
SIZES = {"train": 40, "val": 12, "test": 12}
IMAGES = {split: RNG.standard_normal((n, 1, 4, 4)) for split, n in SIZES.items()}
LABELS = {split: {"a": RNG.integers(0, 3, n), "b": RNG.integers(0, 2, n)} for split, n in SIZES.items()}
TASKS = [
    TaskSpec("a", 3, loss="cross_entropy", metrics=["accuracy"]),
    TaskSpec("b", 2, loss="cross_entropy", metrics=["accuracy"]),
]
MODEL = {"encoder": {"name": "mlp", "hidden": [8]}, "head": {"name": "linear"}}


class Pairs(Dataset[Any]):
    """(image as numpy, int label) items; the shared form has {task: label} targets."""

    def __init__(self, images: np.ndarray, labels: Any) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[np.ndarray, Any]:
        if isinstance(self.labels, dict):
            return self.images[index], {task: int(values[index]) for task, values in self.labels.items()}
        return self.images[index], int(self.labels[index])


def shift(image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A seeded augmentation: a random roll and additive noise."""
    steps = int(torch.randint(-1, 2, (1,), generator=generator))
    return torch.roll(image, steps, dims=-1) + 0.1 * torch.randn(image.shape, generator=generator)


def _multi_arrays() -> dict[str, Any]:
    # task b trains on the second half of the images (its own inputs), both evaluate on all val/test images
    return {
        "a": {split: (IMAGES[split], LABELS[split]["a"]) for split in SIZES},
        "b": {
            split: (IMAGES[split][len(IMAGES[split]) // 2 :], LABELS[split]["b"][len(IMAGES[split]) // 2 :])
            for split in SIZES
        },
    }


def tensor_setting(layout: str = "multi-input") -> Setting:
    if layout == "multi-input":
        return from_arrays("toy", TASKS, _multi_arrays(), default_model=MODEL)
    data = {split: (IMAGES[split], LABELS[split]) for split in SIZES}
    return from_arrays("toy", TASKS, data, layout="shared-input", default_model=MODEL)


def dataset_setting(layout: str = "multi-input", num_workers: int = 0, augment: bool = False) -> Setting:
    transform = shift if augment else None
    if layout == "multi-input":
        data = {
            task: {split: Pairs(x, y) for split, (x, y) in splits.items()} for task, splits in _multi_arrays().items()
        }
    else:
        data = {split: Pairs(IMAGES[split], LABELS[split]) for split in SIZES}  # type: ignore[misc]
    return from_datasets(
        "toy", TASKS, data, layout=layout, train_transform=transform, num_workers=num_workers, default_model=MODEL
    )


@mtlscope.settings.register("test-data-toy", "toy images as tensors or as Datasets (tests)")
def _toy(*, kind: str = "tensors", layout: str = "multi-input", num_workers: int = 0, augment: bool = False) -> Setting:
    setting = tensor_setting(layout) if kind == "tensors" else dataset_setting(layout, num_workers, augment)
    # a builder records its options: a run's resolved config keeps them
    options = {"kind": kind, "layout": layout, "num_workers": num_workers, "augment": augment}
    return dataclasses.replace(setting, options=options)


def _run(tmp_path: Path, name: str, seed: int = 0, **options: Any) -> tuple[pd.DataFrame, dict[str, torch.Tensor]]:
    config = {
        "setting": {"name": "test-data-toy", "options": options},
        "training": {"steps": 6, "batch_size": 8, "eval_every": 3},
        "probes": {"min_train_loss": {}, "grad_similarity": {"batches": 1, "every": 1}, "sharpness": {"subset": 16}},
        "seed": seed,
    }
    outcome = mtlscope.execute(mtlscope.validate_config(config), tmp_path / name)
    assert outcome.status == "completed"
    records = mtlscope.load(tmp_path / name).records.drop(columns=["run_id"]).reset_index(drop=True)
    return records, mtlscope.load_model(outcome.path).state_dict()


@pytest.mark.parametrize("layout", ["multi-input", "shared-input"])
def test_a_dataset_setting_trains_exactly_like_the_same_tensors(tmp_path: Path, layout: str) -> None:
    tensors, tensor_weights = _run(tmp_path, "tensors", layout=layout)
    datasets, dataset_weights = _run(tmp_path, "datasets", kind="datasets", layout=layout)
    assert {"train", "val", "test", "probe"} <= set(tensors["split"])
    pd.testing.assert_frame_equal(tensors, datasets)
    assert all(torch.equal(tensor_weights[key], dataset_weights[key]) for key in tensor_weights)


def test_workers_do_not_change_the_augmented_trajectory(tmp_path: Path) -> None:
    none, none_weights = _run(tmp_path, "w0", kind="datasets", augment=True, num_workers=0)
    two, two_weights = _run(tmp_path, "w2", kind="datasets", augment=True, num_workers=2)
    plain, _ = _run(tmp_path, "plain", kind="datasets")
    other_seed, _ = _run(tmp_path, "seed1", seed=1, kind="datasets", augment=True)
    pd.testing.assert_frame_equal(none, two)
    assert all(torch.equal(none_weights[key], two_weights[key]) for key in none_weights)
    trained = (none["split"] == "train") & (none["step"] > 0)
    assert not none.loc[trained, "value"].equals(plain.loc[trained, "value"])  # the augmentation changed training
    assert not none["value"].equals(other_seed["value"])


@pytest.mark.parametrize("num_workers", [0, 2])
def test_augmentation_is_seeded_by_run_seed_stream_step_and_position(num_workers: int) -> None:
    setting = dataset_setting(num_workers=num_workers, augment=True)
    sampler = BatchSampler(setting, 8, seed=3)
    streams = {task: IndexStream(len(setting.task(task).train), 8, derived_seed(3, "data", task)) for task in "ab"}
    for step in range(3):
        batch = sampler.next()
        for task in "ab":
            index = streams[task].next()
            raw = torch.from_numpy(_multi_arrays()[task]["train"][0]).float()[index]
            expected = torch.stack(
                [
                    shift(raw[p], torch.Generator().manual_seed(derived_seed(3, "augment", task, str(step), str(p))))
                    for p in range(len(index))
                ]
            )
            assert torch.equal(batch.inputs[batch.rows[task]], expected)
            assert batch.targets[task].tolist() == _multi_arrays()[task]["train"][1][index.numpy()].tolist()
    sampler.close()


def test_a_resumed_reader_continues_with_the_same_batches() -> None:
    setting = dataset_setting(layout="shared-input", num_workers=2, augment=True)
    sampler = BatchSampler(setting, 8, seed=0)
    first = [sampler.next() for _ in range(3)]  # the workers have read further ahead than step 3
    state = sampler.state_dict()
    rest = [sampler.next() for _ in range(4)]
    resumed = BatchSampler(setting, 8, seed=0)
    resumed.load_state_dict(state)
    again = [resumed.next() for _ in range(4)]
    assert len(first) == 3
    for a, b in zip(rest, again, strict=True):
        assert torch.equal(a.inputs, b.inputs) and all(torch.equal(a.targets[k], b.targets[k]) for k in "ab")
    sampler.close()
    resumed.close()


def test_evaluation_and_probe_data_are_never_augmented() -> None:
    tensors = tensor_setting("shared-input")
    augmented = dataset_setting("shared-input", augment=True)
    model = build_model(tensors, MODEL["encoder"], MODEL["head"], seed=0)
    assert evaluate(model, tensors) == evaluate(model, augmented)
    assert evaluate(model, tensors, ["train"], train_limit=10, batch_size=3) == evaluate(
        model, augmented, ["train"], train_limit=10, batch_size=3
    )
    for task in tensors.tasks:
        subset = probe_subset(augmented.task(task.name), 16)
        assert torch.equal(subset.inputs, task.train.inputs[:16]) and torch.equal(
            subset.targets, task.train.targets[:16]
        )
    for setting in (tensors, augmented):
        assert torch.equal(
            random_batch(setting, 5, torch.Generator().manual_seed(1)).inputs,
            random_batch(tensors, 5, torch.Generator().manual_seed(1)).inputs,
        )
    index = {"shared-input": torch.tensor([3, 1, 4])}
    assert torch.equal(make_batch(augmented, index).inputs, tensors.tasks[0].train.inputs[[3, 1, 4]])


class Versioned(Pairs):
    def fingerprint(self) -> str:
        return "toy-v1"

    def __getitem__(self, index: int) -> tuple[np.ndarray, Any]:
        raise AssertionError("a dataset with fingerprint() is not read to fingerprint it")


def test_fingerprints() -> None:
    images, labels = IMAGES["train"].copy(), LABELS["train"]["a"]
    base = DatasetSplit(Pairs(images, labels)).fingerprint()
    assert DatasetSplit(Pairs(images.copy(), labels)).fingerprint() == base  # read and hashed: same data, same digest
    changed = images.copy()
    changed[17, 0, 2, 3] += 1e-3
    assert DatasetSplit(Pairs(changed, labels)).fingerprint() != base
    relabelled = labels.copy()
    relabelled[5] = (relabelled[5] + 1) % 3
    assert DatasetSplit(Pairs(images, relabelled)).fingerprint() != base
    assert DatasetSplit(Pairs(images, labels), train_transform=shift).fingerprint() != base
    versioned = DatasetSplit(Versioned(images, labels))
    assert versioned.fingerprint() == DatasetSplit(Versioned(changed, labels)).fingerprint()
    assert DatasetSplit(Pairs(images, labels), fingerprint="toy-v1").fingerprint() == versioned.fingerprint()
    assert dataset_setting().fingerprint() != dataset_setting(augment=True).fingerprint()


class Stream(IterableDataset[Any]):
    def __iter__(self) -> Any:
        return iter([])


def _bad(data: dict[str, Any], layout: str = "multi-input") -> str:
    with pytest.raises(ValueError) as error:
        from_datasets("toy", TASKS, data, layout=layout)
    assert "\n" not in str(error.value)
    return str(error.value)


def test_bad_datasets_are_one_line_errors() -> None:
    good = {task: {split: Pairs(x, y) for split, (x, y) in splits.items()} for task, splits in _multi_arrays().items()}
    wrong_shape = {**good, "b": {**good["b"], "val": Pairs(IMAGES["val"][:, :, :3], LABELS["val"]["b"])}}
    assert _bad(wrong_shape) == (
        "setting 'toy': task 'b', split 'val': inputs have example shape (1, 3, 4), expected (1, 4, 4) "
        "(the shape of task 'a', split 'train')"
    )
    out_of_range = {**good, "b": {**good["b"], "test": Pairs(IMAGES["test"], LABELS["test"]["a"] + 2)}}
    assert "task 'b', split 'test': example 0: class target" in _bad(out_of_range)
    not_pairs = {**good, "a": {**good["a"], "train": [IMAGES["train"][0]] * 3}}
    assert (
        _bad(not_pairs)
        == "setting 'toy': task 'a', split 'train': example 0 must be a pair (input, target), got ndarray"
    )
    assert "expected a map-style Dataset" in _bad({**good, "a": {**good["a"], "val": Stream()}})
    assert "task 'a', split 'test': the split is empty" in _bad(
        {**good, "a": {**good["a"], "test": Pairs(IMAGES["test"][:0], [])}}
    )
    shared = {split: Pairs(IMAGES[split], {"a": LABELS[split]["a"]}) for split in SIZES}
    assert _bad(shared, "shared-input") == (
        "setting 'toy': task 'b', split 'train': example 0 must be (input, {task: target}) with a target for task 'b'"
    )
    with pytest.raises(ValueError, match="num_workers must be an integer >= 0, got -1"):
        from_datasets("toy", TASKS, good, num_workers=-1)
