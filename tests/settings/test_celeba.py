"""The celeba setting on a tiny CelebA in the official layout: tasks, labels, partition, subsets, cache, a run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import mtlscope
from mtlscope import settings
from mtlscope.cli import main
from mtlscope.data.catalog import MissingDataError
from mtlscope.data.sources import celeba as source
from mtlscope.settings.celeba import SUBSETS, TASKS
from tests.data.celeba_files import PARTITION, file_name, write_celeba


@pytest.fixture
def tiny(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    written = write_celeba(tmp_path / "data")
    monkeypatch.setenv("MTLSCOPE_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("MTLSCOPE_CACHE", str(tmp_path / "cache"))
    return {**written, "root": tmp_path / "data", "cache": tmp_path / "cache"}


def test_task_names_match_the_presets() -> None:
    assert len(TASKS) == 40 and TASKS[0] == "five_o_clock_shadow" and TASKS[-1] == "young"
    for name in ("blurry", "eyeglasses", "double_chin", "gray_hair", "wearing_hat", "no_beard", "rosy_cheeks"):
        assert name in TASKS
    preset = (Path(mtlscope.__file__).parent / "experiments" / "transference-grouping.yaml").read_text()
    assert all(name in preset for name in SUBSETS["grouping"]) and len(SUBSETS["grouping"]) == 9


def test_shapes_dtypes_labels_and_the_official_partition(tiny: dict) -> None:
    setting = settings.get("celeba")
    assert setting.layout == "shared-input" and setting.input_shape == (3, 64, 64)
    assert setting.task_names == TASKS
    assert setting.default_model["encoder"] == {"name": "resnet", "stem": "maxpool"}
    labels = (tiny["labels"] == 1).astype(np.int64)  # -1 -> 0, 1 -> 1
    images = {}
    for split, code in (("train", 0), ("val", 1), ("test", 2)):
        rows = [i for i, c in enumerate(PARTITION) if c == code]
        dataset = setting.tasks[0].__getattribute__(split).dataset
        assert len(dataset) == len(rows)
        inputs, targets = dataset.batch(list(range(len(rows))))
        assert inputs.dtype == torch.float32 and inputs.shape == (len(rows), 3, 64, 64)
        assert float(inputs.min()) >= 0.0 and float(inputs.max()) <= 1.0  # x / 255
        for column, name in enumerate(TASKS):
            assert targets[name].dtype == torch.int64
            np.testing.assert_array_equal(targets[name].numpy(), labels[rows, column])
        # the images are those of the split's files, in order: compare with the written pixels, resized
        expected = source.resize(torch.from_numpy(tiny["pixels"][rows]).permute(0, 3, 1, 2)).float() / 255
        assert float((inputs - expected).abs().mean()) < 0.02  # JPEG at quality 95
        images[split] = inputs
    # no image in two splits: every pair of images of different splits differs
    flat = torch.cat([images[s].flatten(1) for s in images])
    assert len({tuple(row.tolist()[:64]) for row in flat}) == len(PARTITION)


def test_named_subsets_and_attribute_lists(tiny: dict) -> None:
    grouping = settings.get("celeba", attributes="grouping")
    assert grouping.task_names == SUBSETS["grouping"]
    chosen = settings.get("celeba", attributes=["gray_hair", "blurry"])
    assert chosen.task_names == ("gray_hair", "blurry")
    _, targets = chosen.task("blurry").train.dataset.batch([0, 1, 2])
    train_rows = [i for i, c in enumerate(PARTITION) if c == 0][:3]
    np.testing.assert_array_equal(
        targets["blurry"].numpy(), (tiny["labels"][train_rows, source.ATTRIBUTES.index("Blurry")] == 1)
    )
    assert chosen.options["attributes"] == ["gray_hair", "blurry"]


@pytest.mark.parametrize(
    ("attributes", "message"),
    [
        ("some", r"attributes: expected one of 'all', 'grouping' or a list of strings \(got 'some'\)"),
        (["blurry", "Blurry"], r"celeba option attributes: unknown attribute 'Blurry'; the 40 are five_o_clock_shadow"),
        (["blurry", "blurry"], r"celeba option attributes: 'blurry' is listed twice"),
        ([], r"celeba option attributes: an empty list"),
    ],
)
def test_bad_attribute_choices(tiny: dict, attributes: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        settings.get("celeba", attributes=attributes)


def test_split_sizes_keep_the_first_images_of_each_split(tiny: dict) -> None:
    setting = settings.get("celeba", train_size=2, val_size=1, test_size=2, attributes=["young"])
    task = setting.task("young")
    assert (len(task.train), len(task.val), len(task.test)) == (2, 1, 2)
    full = settings.get("celeba", attributes=["young"]).task("young")
    torch.testing.assert_close(task.train.dataset.batch([0, 1])[0], full.train.dataset.batch([0, 1])[0])
    assert setting.epoch_examples == 2


def test_binary_cross_entropy_variant(tiny: dict) -> None:
    setting = settings.get("celeba", loss="binary_cross_entropy", attributes=["male"])
    task = setting.task("male")
    assert task.output_size == 1 and type(task.loss).__name__ == "BinaryCrossEntropy"
    _, target = task.train.dataset[0]
    assert target["male"].dtype == torch.float32


def test_same_build_twice_is_a_cache_hit_with_the_same_fingerprint(tiny: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    first = settings.get("celeba", attributes="grouping")
    entries = sorted(path.name for path in tiny["cache"].glob("*.npy"))
    assert [name.split("-")[1] for name in entries] == ["test", "train", "val"]

    def no_decode(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded again although the cache holds the images")

    monkeypatch.setattr(source, "decode_images", no_decode)
    second = settings.get("celeba", attributes="grouping")
    assert sorted(path.name for path in tiny["cache"].glob("*.npy")) == entries
    assert first.fingerprint() == second.fingerprint()
    torch.testing.assert_close(
        first.tasks[0].train.dataset.batch([0, 5])[0], second.tasks[0].train.dataset.batch([0, 5])[0]
    )


def test_a_changed_image_gives_a_new_cache_entry(tiny: dict) -> None:
    from PIL import Image

    before = settings.get("celeba", attributes=["young"]).fingerprint()
    Image.new("RGB", (178, 218), color=(255, 0, 0)).save(
        tiny["root"] / "img_align_celeba" / file_name(0), format="JPEG"
    )
    after = settings.get("celeba", attributes=["young"])
    assert after.fingerprint() != before
    assert float(after.task("young").train.dataset[0][0][0].mean()) > 0.95  # the red image was decoded


def test_missing_data_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MTLSCOPE_DATA", str(tmp_path / "nothing"))
    with pytest.raises(
        MissingDataError,
        match=r"^celeba: missing .*img_align_celeba \(or celeba/img_align_celeba\); get it from the CelebA site",
    ):
        settings.get("celeba")


def test_missing_and_unreadable_images_are_one_line(tiny: dict) -> None:
    folder = tiny["root"] / "img_align_celeba"
    (folder / file_name(4)).unlink()
    with pytest.raises(
        ValueError, match=r"celeba: missing image .*000005.jpg \(listed in list_eval_partition.txt, split test\)"
    ):
        settings.get("celeba")
    (folder / file_name(4)).write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(ValueError, match=r"000005.jpg: unreadable JPEG") as error:
        settings.get("celeba")
    assert "\n" not in str(error.value)
    assert not list(tiny["cache"].glob("celeba-test-*.npy"))  # nothing half-written


def test_settings_listing_needs_no_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("MTLSCOPE_DATA", str(tmp_path / "nothing"))
    assert main(["settings"]) == 0
    out = capsys.readouterr().out
    assert "celeba: CelebA: 40 binary face-attribute tasks" in out and "reads its data files when used" in out


def test_short_training_run_with_probes(tiny: dict, tmp_path: Path) -> None:
    config = {
        "setting": {"name": "celeba", "tasks": ["blurry", "eyeglasses"], "options": {"train_size": 5}},
        "model": {
            "encoder": {"name": "resnet", "blocks": [1, 1], "widths": [4, 8], "stem": "maxpool"},
            "head": {"name": "linear"},
        },
        "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
        "training": {"steps": 4, "eval_every": 2, "batch_size": 3},
        "probes": {
            "min_train_loss": {},
            "sharpness": {"subset": 4, "iterations": 2, "batch_size": 2, "every": 1},
            "fim_trace": {"subset": 4, "every": 1},
            "grad_similarity": {"batches": 1, "every": 1},
            "affinity": {"every_steps": 2},
        },
        "seed": 0,
    }
    first = mtlscope.execute(mtlscope.validate_config(config), tmp_path / "a")
    second = mtlscope.execute(mtlscope.validate_config(config), tmp_path / "b")
    assert first.status == second.status == "completed"
    records = mtlscope.load(first.path.parent).records
    again = mtlscope.load(second.path.parent).records
    assert set(records["task"]) >= {"blurry", "eyeglasses"}
    assert {"accuracy", "balanced_accuracy", "f1", "loss"} <= set(records["metric"])
    probed = records[records["split"] == "probe"]
    assert {"sharpness", "fim_trace"} <= set(probed["metric"])
    assert any(metric.startswith("affinity") for metric in probed["metric"])
    values = records.drop(columns="run_id").reset_index(drop=True)
    other = again.drop(columns="run_id").reset_index(drop=True)
    cols = [c for c in values.columns if "time" not in c and "elapsed" not in c]
    import pandas as pd

    pd.testing.assert_frame_equal(values[cols], other[cols])  # same seed, same trajectory
