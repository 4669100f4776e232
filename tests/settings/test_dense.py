"""The cityscapes and nyuv2 settings on tiny files in MTAN's layout: tasks, targets, masks, splits, errors, runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import mtlscope
from mtlscope import settings
from mtlscope.cli import main
from mtlscope.data.catalog import MissingDataError
from mtlscope.data.sources.mtan import held_out, read_header
from tests.data.dense_files import SIZE, instance_offsets, write_cityscapes, write_nyuv2

TINY = {"image_size": list(SIZE)}


@pytest.fixture
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MTLSCOPE_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("MTLSCOPE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "data"


def indices(split: object) -> list[int]:
    return list(split.dataset.indices)  # type: ignore[attr-defined]


def test_cityscapes_tasks_targets_and_masks(data: Path) -> None:
    base = write_cityscapes(data, train=6, val=3)
    setting = settings.get("cityscapes", val_size=2, **TINY)
    assert setting.layout == "shared-input" and setting.input_shape == (3, *SIZE)
    assert setting.task_names == ("semantic_segmentation", "depth")  # no instance/ folder: no instance task
    semantic, depth = setting.task("semantic_segmentation"), setting.task("depth")
    assert semantic.output_size == 7 and depth.output_size == 1
    assert semantic.primary_metric == "miou" and depth.primary_metric == "depth_abs_error"
    assert (len(semantic.train), len(semantic.val), len(semantic.test)) == (4, 2, 3)
    image, targets = semantic.train.dataset[1]
    position = indices(semantic.train)[1]
    raw = np.load(base / "train" / "image" / f"{position}.npy")
    assert image.dtype == torch.float32 and image.shape == (3, *SIZE)
    assert torch.equal(image, torch.from_numpy(raw).permute(2, 0, 1))  # channels first, no normalization
    labels = targets["semantic_segmentation"]
    assert labels.dtype == torch.int64 and labels.shape == SIZE
    assert torch.equal(labels, torch.from_numpy(np.load(base / "train" / "label_7" / f"{position}.npy")).long())
    assert int(labels.min()) >= -1 and int(labels.max()) <= 6
    assert targets["depth"].shape == (1, *SIZE) and targets["depth"].dtype == torch.float32
    # the losses leave out the unlabelled pixels and the unmeasured depth: equal to a hand-masked mean
    inputs, group = semantic.train.head(4).inputs, semantic.train.head(4).targets
    logits = torch.randn(4, 7, *SIZE, generator=torch.Generator().manual_seed(0))
    kept = group != -1
    by_hand = -torch.log_softmax(logits, dim=1).gather(1, group.clamp(min=0)[:, None])[:, 0][kept].mean()
    assert torch.allclose(semantic.loss(logits, group), by_hand)
    true_depth = depth.train.head(4).targets
    guess = torch.full_like(true_depth, 0.5)
    measured = true_depth != 0
    assert torch.allclose(depth.loss(guess, true_depth), (guess - true_depth)[measured].abs().mean())
    assert inputs.shape == (4, 3, *SIZE)


def test_nineteen_classes_and_nyuv2_tasks(data: Path) -> None:
    write_cityscapes(data)
    nineteen = settings.get("cityscapes", classes=19, val_size=2, **TINY)
    assert nineteen.task("semantic_segmentation").output_size == 19
    assert int(nineteen.task("semantic_segmentation").test.head(3).targets.max()) == 18
    write_nyuv2(data)
    nyu = settings.get("nyuv2", val_size=2, **TINY)
    assert nyu.task_names == ("semantic_segmentation", "depth", "normal")
    assert nyu.task("semantic_segmentation").output_size == 13 and nyu.task("normal").output_size == 3
    normals = nyu.task("normal").train.head(2).targets
    assert normals.shape == (2, 3, *SIZE)
    lengths = normals.norm(dim=1)
    assert torch.allclose(lengths[:, 1:], torch.ones_like(lengths[:, 1:]), atol=1e-5) and lengths[:, 0].eq(0).all()
    assert nyu.task("normal").primary_metric == "normal_mean_angle"
    assert {"normal_within_11.25", "normal_within_22.5", "normal_within_30"} <= set(nyu.task("normal").metric_names)
    perfect = nyu.task("normal").scores(normals, normals)
    assert perfect["normal_mean_angle"] < 0.1 and perfect["normal_within_11.25"] == 1.0


def test_instance_task_when_its_files_exist(data: Path) -> None:
    write_cityscapes(data, instance=True)
    setting = settings.get("cityscapes", val_size=2, **TINY)
    assert setting.task_names == ("semantic_segmentation", "depth", "instance_segmentation")
    task = setting.task("instance_segmentation")
    offsets = task.train.head(2).targets
    assert offsets.shape == (2, 2, *SIZE)
    inside = offsets[:, 0] != 250
    assert inside.sum() == 2 * (3 * 5 + 3 * 6)  # the two instances' pixels
    # offsets to the centre of mass sum to zero over each instance
    assert abs(float(offsets[0, 0, 1:4, 2:7].sum())) < 1e-4 and abs(float(offsets[0, 1, 5:8, 9:15].sum())) < 1e-4
    scores = task.scores(offsets + 1.0, offsets)
    assert scores["instance_offset_error"] == pytest.approx(1.0) and scores["loss"] == pytest.approx(1.0)
    without = settings.get("cityscapes", val_size=2, instance=False, **TINY)
    assert "instance_segmentation" not in without.task_names


def test_instance_asked_for_without_its_files_is_one_line(data: Path) -> None:
    write_cityscapes(data)
    with pytest.raises(MissingDataError, match=r"^cityscapes-instance: missing .*cityscapes/train/instance; ") as error:
        settings.get("cityscapes", instance=True, **TINY)
    assert "\n" not in str(error.value)


def test_splits_are_disjoint_sized_and_seeded(data: Path) -> None:
    write_cityscapes(data, train=6, val=3)
    first = settings.get("cityscapes", val_size=2, split_seed=3, **TINY).task("depth")
    again = settings.get("cityscapes", val_size=2, split_seed=3, **TINY).task("depth")
    other = [settings.get("cityscapes", val_size=2, split_seed=s, **TINY).task("depth") for s in range(6)]
    assert not set(indices(first.train)) & set(indices(first.val))
    assert sorted(indices(first.train) + indices(first.val)) == list(range(6))
    assert indices(first.val) == indices(again.val)
    assert len({tuple(indices(t.val)) for t in other}) > 1  # the seed matters
    assert indices(first.test) == [0, 1, 2]
    assert first.test.dataset.root.name == "val" and first.val.dataset.root.name == "train"
    official = settings.get("cityscapes", validation="official", **TINY).task("depth")
    assert len(official.train) == 6 and indices(official.val) == [0, 1, 2] == indices(official.test)
    small = settings.get("cityscapes", val_size=2, train_size=3, **TINY).task("depth")
    seed_zero = settings.get("cityscapes", val_size=2, **TINY).task("depth")
    assert indices(small.train) == indices(seed_zero.train)[:3] and indices(small.val) == indices(seed_zero.val)
    assert held_out(6, 2, 3, "x") == (indices(first.train), indices(first.val))
    with pytest.raises(ValueError, match=r"val_size 6 must be between 1 and 5"):
        settings.get("cityscapes", val_size=6, **TINY)


def test_missing_data_is_the_catalogs_line(data: Path) -> None:
    with pytest.raises(MissingDataError, match=r"^cityscapes: missing .*cityscapes/train/image; get it from MTAN"):
        settings.get("cityscapes")
    with pytest.raises(MissingDataError, match=r"^nyuv2: missing .*nyuv2/train/image; get it from MTAN"):
        settings.get("nyuv2")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("missing", r"train/depth/4.npy: missing file"),
        ("shape", r"train/depth/4.npy: shape \[8, 15, 1\], expected \[8, 16, 1\] \(depth\)"),
        ("dtype", r"train/depth/4.npy: dtype int64, expected floats \(depth\)"),
        ("truncated", r"train/depth/4.npy: truncated \(\d+ bytes, its header \[8, 16, 1\] float32 needs \d+\)"),
        ("garbage", r"train/depth/4.npy: not a readable .npy file"),
        ("pickle", r"train/depth/4.npy: holds Python objects"),
        ("folder", r"^cityscapes: missing .*cityscapes/train/depth; get it from MTAN"),
        ("gap", r"train/image: 4.npy is missing; expected the files 0.npy ... N-1.npy"),
    ],
)
def test_damaged_files_are_one_line_naming_the_file(data: Path, damage: str, message: str) -> None:
    base = write_cityscapes(data)
    path = base / "train" / "depth" / "4.npy"
    if damage == "missing":
        path.unlink()
    elif damage == "shape":
        np.save(path, np.ones((8, 15, 1), dtype=np.float32))
    elif damage == "dtype":
        np.save(path, np.ones((8, 16, 1), dtype=np.int64))
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:-7])
    elif damage == "garbage":
        path.write_bytes(b"not numpy at all")
    elif damage == "pickle":
        np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    elif damage == "folder":
        for file in path.parent.iterdir():
            file.unlink()
        path.parent.rmdir()
    elif damage == "gap":
        (base / "train" / "image" / "4.npy").unlink()
    with pytest.raises((ValueError, MissingDataError), match=message) as error:
        settings.get("cityscapes", val_size=2, **TINY)
    assert "\n" not in str(error.value)


def test_only_the_chosen_label_set_is_needed(data: Path) -> None:
    base = write_cityscapes(data)
    for split in ("train", "val"):
        for file in (base / split / "label_19").iterdir():
            file.unlink()
        (base / split / "label_19").rmdir()
    assert settings.get("cityscapes", val_size=2, **TINY).task("semantic_segmentation").output_size == 7
    with pytest.raises(MissingDataError, match=r"missing .*cityscapes/train/label_19;"):
        settings.get("cityscapes", classes=19, **TINY)


@pytest.mark.parametrize(
    ("folder", "array", "message"),
    [
        ("label_7", np.full(SIZE, 7.0, dtype=np.float32), r"label 7 is not a class index in 0..6 or -1"),
        ("label_7", np.full(SIZE, 0.5, dtype=np.float32), r"label 0.5 is not a class index"),
        ("image", np.full((*SIZE, 3), 255.0, dtype=np.float32), r"pixel values outside \[0, 1\]"),
        ("depth", np.full((*SIZE, 1), np.nan, dtype=np.float32), r"holds NaN or infinite values \(depth\)"),
    ],
)
def test_bad_values_are_one_line_naming_the_file(data: Path, folder: str, array: np.ndarray, message: str) -> None:
    base = write_cityscapes(data)
    np.save(base / "val" / folder / "0.npy", array)  # the test split's first sample: read when the setting is built
    with pytest.raises(ValueError, match=rf"val/{folder}/0.npy: {message}") as error:
        settings.get("cityscapes", val_size=2, **TINY)
    assert "\n" not in str(error.value)


def test_read_header_checks_the_size(tmp_path: Path) -> None:
    path = tmp_path / "a.npy"
    np.save(path, np.zeros((2, 3), dtype=np.float64))
    assert read_header(path) == ((2, 3), np.dtype(np.float64))
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(ValueError, match="longer than its header says"):
        read_header(path)


def test_offsets_helper_matches_the_centre_of_mass() -> None:
    instances = np.zeros((3, 3), dtype=np.int64)
    instances[0, 0] = instances[0, 2] = 1
    offsets = instance_offsets(instances)
    assert offsets[0, 0].tolist() == [0.0, -1.0] and offsets[0, 2].tolist() == [0.0, 1.0]
    assert offsets[1, 1].tolist() == [250.0, 250.0]


def test_data_listing_shows_the_dense_datasets(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_cityscapes(data)
    assert main(["data"]) == 0
    out = capsys.readouterr().out
    for name in ("cityscapes", "cityscapes-instance", "nyuv2", "resnet50-imagenet", "resnet101-imagenet"):
        assert name in out
    assert main(["data", "check", "cityscapes"]) == 0
    main(["data", "check", "nyuv2"])
    assert "nyuv2/train/image" in capsys.readouterr().out


PROBES = {
    "min_train_loss": {},
    "sharpness": {"subset": 4, "iterations": 1, "batch_size": 2, "every": 1},
    "fim_trace": {"subset": 4, "every": 1},
    "grad_cov_trace": {"subset": 4, "large_batch": 4, "small_batch": 2, "every": 1},
    "grad_similarity": {"batches": 1, "every": 1},
    "affinity": {"every_steps": 2},
}


@pytest.mark.parametrize("name", ["cityscapes", "nyuv2"])
def test_short_training_run_with_every_probe(data: Path, tmp_path: Path, name: str) -> None:
    (write_cityscapes if name == "cityscapes" else write_nyuv2)(data)
    config = {
        "setting": {"name": name, "options": {"val_size": 2, **TINY}},
        "model": {"encoder": {"name": "segnet", "channels": [4, 8]}, "head": {"name": "conv"}},
        "optimizer": {"name": "adam", "lr": 0.001},
        "training": {"steps": 2, "eval_every": 2, "batch_size": 2},
        "probes": PROBES,
        "seed": 0,
    }
    run = mtlscope.execute(mtlscope.validate_config(config), tmp_path / "run")
    assert run.status == "completed"
    records = mtlscope.load(run.path.parent).records
    assert set(records["task"]) >= set(settings.get(name, val_size=2, **TINY).task_names)
    assert {"miou", "pixel_accuracy", "depth_abs_error", "depth_rel_error"} <= set(records["metric"])
    probed = records[records["split"] == "probe"]
    assert {"sharpness", "fim_trace", "min_train_loss"} <= set(probed["metric"])
    assert any(metric.startswith("affinity") for metric in probed["metric"])
    assert any("grad_cov" in metric for metric in probed["metric"])
    assert np.isfinite(records[records["metric"] == "loss"]["value"]).all()
    # the Fisher probe samples segmentation labels from the model and uses the true targets for l1 / cosine
    empirical = probed[probed["metric"] == "fim_empirical"].groupby("task")["value"].max()
    assert empirical["semantic_segmentation"] == 0 and empirical["depth"] == 1
    if name == "nyuv2":
        assert empirical["normal"] == 1
