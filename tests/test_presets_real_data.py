"""The full presets on Cityscapes and GLUE: App. A's hyperparameters, sweeps that expand into valid run configs (on
tiny files in the real formats, nothing run), and a short run of the GLUE preset's own config on tiny data."""

from __future__ import annotations

import copy
import itertools
from pathlib import Path
from typing import Any

import pytest

from mtlscope.reproduce import load_preset
from mtlscope.runs.config import RunConfig
from mtlscope.sweeps import protocol
from tests.data.dense_files import SIZE, write_cityscapes
from tests.data.glue_files import write_glue

#: App. A of the main paper, "for all settings" (its "50^-k" entries read as 5e-k, as main-fig1)
PAPER_LRS = [0.1, 0.05, 0.01, 0.005, 0.001, 0.0005, 0.0001, 0.00005, 0.00001]
PAPER_BATCHES = [4, 16, 32, 64, 128, 256]
GLUE_TASKS = ["cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte"]
#: the full presets on Cityscapes or GLUE and the task sets of their variants
PRESETS: dict[str, list[list[str]]] = {
    "main-table1-glue": [[task] for task in GLUE_TASKS] + [GLUE_TASKS],
    "main-table1-cityscapes": [["semantic_segmentation"], ["depth"], ["semantic_segmentation", "depth"]],
    "main-fig4-cityscapes": [["semantic_segmentation", "depth"]],
}
#: tiny Cityscapes files: a training set as large as the grid's largest batch, and the files' own image size
CITYSCAPES_OVERRIDES = (f"setting.options.image_size=[{SIZE[0]}, {SIZE[1]}]", "setting.options.val_size=2")


@pytest.mark.parametrize("name", list(PRESETS))
def test_the_presets_set_app_a_hyperparameters(name: str) -> None:
    preset = load_preset(name)
    sweep = preset.sweep
    base = sweep["base"]
    assert sweep["protocol"]["select"] == {"optimizer.lr": PAPER_LRS, "training.batch_size": PAPER_BATCHES}
    assert sweep["protocol"]["seeds"] == 3  # §2.2
    assert base["optimizer"]["name"] == "adam" and "lr_schedule" not in base  # App. A: Adam, constant rate
    assert base["training"]["loss_scale"] == 1 and base["training"]["eval_every"] == "epoch"  # §2.2: C = 1
    # App. B's probe options at every epoch (Table 1's aggregates average the last 20 measurements, footnote 6)
    every_epoch = {"every": 1}
    assert base["probes"] == {
        "min_train_loss": {},
        "sharpness": every_epoch,
        "fim_trace": every_epoch,
        "grad_cov_trace": every_epoch,
    }
    if "glue" in name:
        assert base["model"] == {"encoder": {"name": "roberta"}, "head": {"name": "linear"}}
    else:
        assert base["model"]["encoder"]["backbone"] == "resnet101" and base["model"]["head"]["name"] == "aspp"
        assert base["setting"]["options"]["classes"] == 7
    source = Path(preset.source).read_text()
    assert source.count("App. A") >= 4  # each hyperparameter cites where it comes from


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """GLUE with 290 training rows per task (261 after the validation slice: the grid's batch of 256 fits), a
    tiny RoBERTa as roberta-base/, and Cityscapes with 258 training images of 8x16."""
    pytest.importorskip("transformers")
    from tests.data.glue_files import write_model

    root = tmp_path_factory.mktemp("presets") / "data"
    write_glue(root, train_rows=290, dev_rows=4)
    write_model(root / "roberta-base")
    write_cityscapes(root, train=258, val=2)
    return root


def _configs(sweep: dict[str, Any], name: str, overrides: tuple[str, ...]) -> list[RunConfig]:
    preset = load_preset(name)
    plan = protocol.plan_protocol(sweep, preset.source, preset.base_dir, overrides)
    return [candidate.config for candidate in plan.candidates]


@pytest.mark.parametrize("name", list(PRESETS))
def test_the_sweeps_expand_into_valid_configs(name: str, tiny_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every variant with the grid's extremes (the largest batch included) is a valid run config; nothing runs."""
    monkeypatch.setenv("MTLSCOPE_DATA", str(tiny_data))
    monkeypatch.setenv("MTLSCOPE_CACHE", str(tiny_data.parent / "cache"))
    sweep = copy.deepcopy(load_preset(name).sweep)
    sweep["protocol"]["select"] = {"optimizer.lr": [PAPER_LRS[0], PAPER_LRS[-1]], "training.batch_size": [4, 256]}
    overrides = () if "glue" in name else CITYSCAPES_OVERRIDES
    configs = _configs(sweep, name, overrides)
    variants = len(PRESETS[name]) * (4 if "fig4" in name else 1)
    assert len(configs) == variants * 4 and len({config.run_id() for config in configs}) == len(configs)
    assert sorted({tuple(config.setting.tasks or ()) for config in configs}) == sorted(map(tuple, PRESETS[name]))
    grid = {(config.optimizer.lr, config.training.batch_size) for config in configs}
    assert grid == set(itertools.product([PAPER_LRS[0], PAPER_LRS[-1]], [4, 256]))
    if "fig4" in name:
        assert {config.method["name"] for config in configs} == {"umtg", "mgda", "pcgrad", "gradnorm"}


def test_a_short_run_of_the_glue_preset_config(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The preset's 8-task config (RoBERTa from roberta-base/ of the data directory, linear heads, UMTG with C = 1,
    Adam, the Table 1 probes) on tiny data: shorter, smaller, and with small probe subsets."""
    import mtlscope

    monkeypatch.setenv("MTLSCOPE_DATA", str(tiny_data))
    monkeypatch.setenv("MTLSCOPE_CACHE", str(tiny_data.parent / "cache"))
    sweep = copy.deepcopy(load_preset("main-table1-glue").sweep)
    sweep["protocol"]["select"] = {"optimizer.lr": [0.001], "training.batch_size": [4]}
    config = next(c for c in _configs(sweep, "main-table1-glue", ()) if len(c.setting.tasks or ()) == 8)
    data = config.model_dump(mode="json", exclude={"identity"})
    data["setting"]["options"].update(max_length=16, train_size=8, val_size=4, test_size=4)
    data["training"].update(epochs=None, steps=2, eval_every=2)
    data["probes"] = {
        "min_train_loss": {},
        "sharpness": {"subset": 4, "iterations": 1, "batch_size": 2},
        "fim_trace": {"subset": 4, "batch_size": 2},
        "grad_cov_trace": {"subset": 4, "small_batch": 2, "large_batch": 4},
    }
    result = mtlscope.execute(mtlscope.validate_config(data), tmp_path / "runs")
    assert result.status == "completed"
    records = mtlscope.load(tmp_path / "runs").records
    assert set(records["task"]) >= set(GLUE_TASKS)
    probed = records[records["split"] == "probe"]
    assert {"min_train_loss", "sharpness", "fim_trace", "grad_cov_trace"} <= {m.split("/")[0] for m in probed["metric"]}
    fim = probed[probed["metric"] == "fim_empirical"]
    assert set(fim["task"]) == set(GLUE_TASKS) and (fim["value"] == 0).all()  # labels sampled from the model
