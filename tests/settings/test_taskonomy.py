"""The taskonomy setting on tiny PNG files in Standley et al.'s layout: targets, masks, splits, errors, runs."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import mtlscope
from mtlscope import settings
from mtlscope.cli import main
from mtlscope.data.catalog import MissingDataError
from mtlscope.data.sources.taskonomy import DEPTH_INVALID, label_name
from mtlscope.losses import resolve_loss
from mtlscope.metrics import LossMetric
from mtlscope.reproduce import load_preset, reproduce
from mtlscope.reproduce.stages import read_grouping
from tests.data.taskonomy_files import NATIVE, TRAIN_BUILDINGS, VAL_BUILDINGS, file_name, write_taskonomy

TINY = {"image_size": list(NATIVE), "eval_per_building": 2}
TASKS = ("segment_semantic", "depth_zbuffer", "normal", "keypoints2d", "edge_texture")


@pytest.fixture
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MTLSCOPE_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("MTLSCOPE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "data"


def samples(setting: settings.Setting, split: str) -> list[tuple[str, str]]:
    dataset = getattr(setting.tasks[0], split).dataset
    return [(sample.building, sample.name) for sample in dataset.samples]


def test_targets_are_their_loaders_normalizations_of_the_written_files(data: Path) -> None:
    _, written = write_taskonomy(data)
    setting = settings.get("taskonomy", **TINY)
    assert setting.task_names == TASKS and setting.input_shape == (3, *NATIVE)
    assert setting.layout == "shared-input"
    assert [task.output_size for task in setting.tasks] == [18, 1, 3, 1, 1]
    dataset = setting.tasks[0].train.dataset
    for position in (0, 5):
        image, targets = dataset[position]
        sample = dataset.samples[position]
        key = f"{sample.building}/{sample.name}"
        rgb, depth = written[("rgb", key)], written[("depth_zbuffer", key)].astype(np.float64)
        np.testing.assert_allclose(image.permute(1, 2, 0).numpy(), rgb / 255.0, atol=1e-7)
        np.testing.assert_array_equal(targets["segment_semantic"].numpy(), written[("segment_semantic", key)])
        assert targets["segment_semantic"].dtype == torch.int64
        mask = depth < 8192
        assert not mask[0, 1] and mask[0, 0]  # 8192 is masked, 8191 is not
        expected_depth = np.where(mask, (depth - 1500) / 1000, DEPTH_INVALID)
        np.testing.assert_allclose(targets["depth_zbuffer"][0].numpy(), expected_depth, rtol=1e-6)
        normal = (written[("normal", key)] / 255.0 - 0.5) * 2
        expected_normal = np.where(mask[..., None], normal, 0.0).transpose(2, 0, 1)
        np.testing.assert_allclose(targets["normal"].numpy(), expected_normal, atol=1e-6)
        keypoints = (written[("keypoints2d", key)].astype(np.float64) - 50) / 100
        np.testing.assert_allclose(targets["keypoints2d"][0].numpy(), keypoints, rtol=1e-6)
        edges = (written[("edge_texture", key)].astype(np.float64) - 718) / 1070
        np.testing.assert_allclose(targets["edge_texture"][0].numpy(), edges, rtol=1e-6, atol=1e-7)
        # a valid normal never has a zero channel (8-bit values), so zero marks exactly the masked pixels
        assert ((targets["normal"] == 0).all(dim=0).numpy() == ~mask).all()


def test_resized_images_keep_labels_and_masks_valid(data: Path) -> None:
    write_taskonomy(data)
    setting = settings.get("taskonomy", image_size=[8, 12], eval_per_building=2)
    assert setting.input_shape == (3, 8, 12)
    image, targets = setting.tasks[0].val.dataset[1]
    assert image.shape == (3, 8, 12) and float(image.min()) >= 0 and float(image.max()) <= 1
    assert targets["segment_semantic"].shape == (8, 12) and set(targets["segment_semantic"].unique().tolist()) <= set(
        range(18)
    )
    depth = targets["depth_zbuffer"]
    assert depth.shape == (1, 8, 12)
    assert bool(((depth == DEPTH_INVALID) | ((depth >= -1.5) & (depth < (8192 - 1500) / 1000))).all())
    masked = (depth[0] == DEPTH_INVALID).numpy()
    assert masked.any() and ((targets["normal"] == 0).all(dim=0).numpy() == masked).all()
    assert targets["normal"].shape == (3, 8, 12)


def test_splits_follow_the_building_lists(data: Path) -> None:
    write_taskonomy(data, per_building=5)
    setting = settings.get("taskonomy", image_size=list(NATIVE), eval_per_building=2)
    names = [file_name(point, "rgb") for point in range(5)]
    assert samples(setting, "train") == [(b, n) for b in TRAIN_BUILDINGS for n in names]
    assert samples(setting, "val") == [(b, n) for b in VAL_BUILDINGS for n in names[:2]]
    assert samples(setting, "test") == [(b, n) for b in VAL_BUILDINGS for n in names[2:4]]
    # their --model-limit: the first images of each training building
    limited = settings.get("taskonomy", image_size=list(NATIVE), eval_per_building=3, train_per_building=1)
    assert samples(limited, "train") == [(b, names[0]) for b in TRAIN_BUILDINGS]
    assert samples(limited, "test") == [(b, n) for b in VAL_BUILDINGS for n in names[3:5]]
    with pytest.raises(ValueError, match=r"^taskonomy: the test split is empty: .*eval_per_building=5"):
        settings.get("taskonomy", image_size=list(NATIVE), eval_per_building=5)


def test_seeded_subsamples(data: Path) -> None:
    write_taskonomy(data, per_building=5)
    full = samples(settings.get("taskonomy", **TINY), "train")
    first = settings.get("taskonomy", train_size=4, val_size=3, test_size=1, subsample_seed=3, **TINY)
    again = settings.get("taskonomy", train_size=4, val_size=3, test_size=1, subsample_seed=3, **TINY)
    assert samples(first, "train") == samples(again, "train") and len(samples(first, "train")) == 4
    assert len(samples(first, "val")) == 3 and len(samples(first, "test")) == 1
    chosen = sorted(int(i) for i in torch.randperm(15, generator=torch.Generator().manual_seed(3))[:4])
    assert samples(first, "train") == [full[i] for i in chosen]
    other = [samples(settings.get("taskonomy", train_size=4, subsample_seed=s, **TINY), "train") for s in range(4)]
    assert len({tuple(o) for o in other}) > 1
    with pytest.raises(ValueError, match=r"^taskonomy option train_size: 16 is more than the split's 15 samples"):
        settings.get("taskonomy", train_size=16, **TINY)


def test_missing_data_and_bad_lists_are_one_line(data: Path) -> None:
    with pytest.raises(MissingDataError, match=r"^taskonomy: missing .*taskonomy/train_models.txt; get it from"):
        settings.get("taskonomy")
    base, _ = write_taskonomy(data)
    lists = base / "train_models.txt"
    lists.write_text("allensville\nwainscott\n")
    with pytest.raises(ValueError, match=r"^taskonomy: the building 'wainscott' is in both train_models.txt and"):
        settings.get("taskonomy", **TINY)
    lists.write_text("allensville\nallensville\n")
    with pytest.raises(ValueError, match=r"train_models.txt lists the building 'allensville' twice"):
        settings.get("taskonomy", **TINY)
    lists.write_text("\n\n")
    with pytest.raises(ValueError, match=r"train_models.txt lists no building"):
        settings.get("taskonomy", **TINY)
    lists.write_text("allensville\nnowhere\n")
    with pytest.raises(ValueError, match=r"^taskonomy: missing folder .*taskonomy/rgb/nowhere$"):
        settings.get("taskonomy", **TINY)
    skipping = settings.get("taskonomy", missing_buildings="skip", **TINY)
    assert {b for b, _ in samples(skipping, "train")} == {"allensville"}
    assert "1 listed buildings skipped" in skipping.description


def _damage(path: Path, damage: str) -> None:
    if damage == "missing":
        path.unlink()
    elif damage == "garbage":
        path.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:60])
    elif damage == "jpeg":
        Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(path, format="JPEG")
    elif damage == "eight-bit":
        Image.fromarray(np.zeros((16, 16), dtype=np.uint8)).save(path)
    elif damage == "size":
        Image.fromarray(np.zeros((12, 16), dtype=np.uint16)).save(path)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("garbage", r"point_1_view_0_domain_depth_zbuffer.png: not a readable PNG image \(.*\); expected a 16-bit"),
        ("truncated", r"point_1_view_0_domain_depth_zbuffer.png: not a readable PNG image"),
        ("jpeg", r"point_1_view_0_domain_depth_zbuffer.png: a JPEG image; expected a 16-bit grayscale PNG"),
        ("eight-bit", r"depth_zbuffer.png: image mode L; expected a 16-bit grayscale PNG \(depth_zbuffer\)"),
        ("size", r"depth_zbuffer.png: 12x16 pixels; expected 16x16 as its rgb image \(depth_zbuffer\)"),
    ],
)
def test_damaged_files_are_one_line_naming_the_file(data: Path, damage: str, message: str) -> None:
    base, _ = write_taskonomy(data)
    path = base / "depth_zbuffer" / "beechwood" / file_name(1, "depth_zbuffer")
    _damage(path, damage)
    dataset = settings.get("taskonomy", **TINY).tasks[0].train.dataset
    position = [(s.building, s.name) for s in dataset.samples].index(("beechwood", file_name(1, "rgb")))
    with pytest.raises(ValueError, match=message) as error:
        dataset[position]
    assert "\n" not in str(error.value) and str(path) in str(error.value)


def test_missing_files_and_bad_labels(data: Path) -> None:
    base, _ = write_taskonomy(data)
    missing = base / "normal" / "hobson" / file_name(3, "normal")
    missing.unlink()
    with pytest.raises(ValueError, match=r"^taskonomy test: missing file .*normal/hobson/point_3_view_0_domain_normal"):
        settings.get("taskonomy", **TINY)
    write_taskonomy(data)
    labels = np.zeros(NATIVE, dtype=np.uint8)
    labels[3, 4] = 18
    Image.fromarray(labels).save(base / "segment_semantic" / "allensville" / file_name(0, "segment_semantic"))
    with pytest.raises(ValueError, match=r"segment_semantic.png: label 18 is not a class in 0..17") as error:
        settings.get("taskonomy", **TINY)  # example 0 of every split is read when the setting is built
    assert "\n" not in str(error.value)
    assert label_name("point_0_view_0_domain_rgb.png", "normal") == "point_0_view_0_domain_normal.png"
    assert label_name("point_0_view_0.png", "normal") == "point_0_view_0.png"  # their README's names


def test_losses_and_metrics_against_hand_computed_values() -> None:
    setting_specs = {spec.name: spec for spec in settings.taskonomy.SPECS}
    depth = setting_specs["depth_zbuffer"].resolved_loss
    outputs = torch.tensor([[[[1.0, 2.0], [0.5, -1.0]]]])
    targets = torch.tensor([[[[0.0, DEPTH_INVALID], [1.5, -1.5]]]])
    # (|1 - 0| + 0 + |0.5 - 1.5| + |-1 + 1.5|) / 4: their (l1 * mask).mean() over all four pixels
    assert math.isclose(float(depth(outputs, targets)), 2.5 / 4, rel_tol=1e-6)
    assert LossMetric(depth).compute(LossMetric(depth).statistics(outputs, targets)) == pytest.approx(2.5 / 4)
    valid = resolve_loss({"name": "l1", "invalid": DEPTH_INVALID})  # the default mean over the valid pixels
    assert math.isclose(float(valid(outputs, targets)), 2.5 / 3, rel_tol=1e-6)
    normal = setting_specs["normal"].resolved_loss
    normal_targets = torch.tensor([[[[0.5, 0.0]], [[-0.5, 0.0]], [[1.0, 0.0]]]])  # pixel 2 masked (zero vector)
    normal_outputs = torch.tensor([[[[0.0, 3.0]], [[0.0, 3.0]], [[0.0, 3.0]]]])
    assert math.isclose(float(normal(normal_outputs, normal_targets)), 2.0 / 6, rel_tol=1e-6)
    segmentation = setting_specs["segment_semantic"].resolved_loss
    logits = torch.zeros(1, 18, 1, 2)
    logits[0, 3, 0, 1] = math.log(17.0)  # p(3) = 17 / (17 + 17) at pixel 1
    labels = torch.tensor([[[0, 3]]])  # pixel 0 unlabelled: ignored
    assert math.isclose(float(segmentation(logits, labels)), math.log(2.0), rel_tol=1e-6)
    keypoints = setting_specs["keypoints2d"].resolved_loss
    assert math.isclose(float(keypoints(torch.tensor([[1.0, -2.0]]), torch.tensor([[0.0, 0.0]]))), 1.5)


def test_data_listing_and_check(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_taskonomy(data)
    assert main(["data"]) == 0
    assert "taskonomy" in capsys.readouterr().out
    assert main(["data", "check", "taskonomy"]) == 0
    out = capsys.readouterr().out
    assert "taskonomy/train_models.txt" in out and "taskonomy/edge_texture" in out


PROBES = {
    "min_train_loss": {},
    "sharpness": {"subset": 4, "iterations": 1, "batch_size": 2, "every": 1},
    "fim_trace": {"subset": 4, "every": 1},
    "grad_cov_trace": {"subset": 4, "large_batch": 4, "small_batch": 2, "every": 1},
    "grad_similarity": {"batches": 1, "every": 1},
    "affinity": {"every_steps": 1, "mode": "both"},
}
TINY_MODEL = {
    "encoder": {"name": "xception_taskonomy", "channels": [4, 4, 8, 8], "middle": 8, "middle_blocks": 1,
                "representation": 8, "gradient_scale": 0.4472135955},
    "head": {"name": "taskonomy_decoder", "channels": [4, 4, 4, 4]},
}  # fmt: skip


def test_short_training_run_with_every_probe(data: Path, tmp_path: Path) -> None:
    write_taskonomy(data)
    config = {
        "setting": {"name": "taskonomy", "options": TINY},
        "model": TINY_MODEL,
        "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 0.0001},
        "training": {"steps": 2, "eval_every": 2, "batch_size": 2, "loss_scale": 1},
        "probes": PROBES,
        "seed": 0,
    }
    run = mtlscope.execute(mtlscope.validate_config(config), tmp_path / "run")
    assert run.status == "completed"
    records = mtlscope.load(run.path.parent).records
    assert set(records["task"]) >= set(TASKS)
    assert {"miou", "pixel_accuracy", "depth_abs_error", "normal_mean_angle", "mae"} <= set(records["metric"])
    assert np.isfinite(records[records["metric"] == "loss"]["value"]).all()
    probed = records[records["split"] == "probe"]
    assert {"sharpness", "fim_trace", "min_train_loss"} <= set(probed["metric"])
    assert any("grad_cov" in metric for metric in probed["metric"])
    affinity = probed[probed["metric"].str.startswith("affinity")]
    assert not affinity.empty and np.isfinite(affinity["value"]).all()
    # the Fisher probe samples segmentation labels from the model and uses the true targets for the l1 losses
    empirical = probed[probed["metric"] == "fim_empirical"].groupby("task")["value"].max()
    assert empirical["segment_semantic"] == 0 and empirical["depth_zbuffer"] == 1


def test_the_preset_runs_on_generated_files_and_groups_the_five_tasks(data: Path, tmp_path: Path) -> None:
    preset = load_preset("transference-taskonomy")
    assert preset.settings == ["taskonomy"] and {spec.kind for spec in preset.outputs} == {
        "affinity_matrix",
        "task_grouping",
    }
    write_taskonomy(data)
    encoder, head = TINY_MODEL["encoder"], TINY_MODEL["head"]
    overrides = [
        "setting.options.image_size=[16,16]",
        "setting.options.eval_per_building=2",
        *(f"model.encoder.{key}={value}" for key, value in encoder.items() if key != "name"),
        f"model.head.channels={head['channels']}",
        "training.batch_size=4",
        "training.epochs=1",
        # plain SGD with a small step: a step on a task's own gradient lowers its loss (with momentum, or at lr 0.01
        # on these L1 losses, a self-affinity can be negative)
        "optimizer.lr=0.001",
        "optimizer.momentum=0",
    ]
    result = reproduce("transference-taskonomy", tmp_path / "out", overrides=overrides, progress=False)
    assert set(result.counts) == {"completed"}, result.counts
    # the lookahead sees the batch norms as the training step does (batch statistics, option batchnorm: batch):
    # after 3 steps of a 4-channel network every self-affinity is positive and every output is produced (with
    # probes.affinity.batchnorm=running, the running statistics still near their initial ones, every self-affinity
    # is exactly 0 in float32 and the normalized matrix refuses)
    assert not result.failed_outputs, {o.spec.name: o.error for o in result.failed_outputs}
    produced = {o.spec.name: o.produced for o in result.outputs if o.produced is not None}
    assert {"affinity", "affinity-normalized", "grouping"} <= set(produced)
    matrix = produced["affinity"].table
    assert set(matrix.columns) >= set(TASKS)
    diagonal = matrix.set_index("source").loc[TASKS, TASKS].to_numpy().diagonal()
    assert (diagonal > 0).all(), matrix
    grouping = produced["grouping"].table
    assert grouping["splits"].tolist() == [2, 3, 4]
    for row in grouping["groups"]:
        groups = [set(group.split(", ")) for group in re.findall(r"\{([^}]*)\}", row)]
        assert groups and all(group <= set(TASKS) for group in groups)
    # stage 2 (Figure 4 right): the chosen groups and the five single-task models trained, the total test loss per
    # split budget next to Table 7's rows
    out = tmp_path / "out"
    trained = {tuple(group) for group in read_grouping(out / "stages" / "groups" / "grouping.json")["groups"]}
    assert {(task,) for task in TASKS} <= trained
    table = pd.read_csv(out / "tables" / "total-test-loss.csv")
    measured = table[table["source"] == "measured"]
    assert set(measured["splits"]) >= {2, 3, 4} and np.isfinite(measured["value"]).all()
    reference = table[table["source"] == "reference"].set_index(["grouping", "splits"])["value"]
    assert reference[("HOA (paper)", 2)] == 0.54 and reference[("Optimal (paper)", 4)] == 0.4802
    assert (out / "tables" / "total-test-loss-first-order.csv").exists()
