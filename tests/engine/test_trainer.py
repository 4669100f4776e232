from __future__ import annotations

import math

import pandas as pd
import torch

from mtlscope import methods, settings
from mtlscope.engine.optimizers import build_optimizer
from mtlscope.engine.sampling import BatchSampler
from mtlscope.engine.trainer import ListSink, Schedule, Trainer
from mtlscope.models import build_model
from mtlscope.probes.base import PROBES


def _train(
    setting_name: str = "digits-mtl",
    tasks=None,
    steps: int = 12,
    lr: float = 1e-3,
    optimizer: str = "adam",
    seed: int = 0,
    probes=(),
    **options,
):
    setting = settings.get(setting_name, tasks=tasks, **options)
    model = build_model(setting, dict(setting.default_model["encoder"]), dict(setting.default_model["head"]), seed)
    sink = ListSink()
    trainer = Trainer(
        setting,
        model,
        methods.get("umtg"),
        build_optimizer(model.parameters(), optimizer, lr),
        schedule=Schedule(steps=steps, steps_per_epoch=4, eval_every=4),
        batch_size=8,
        loss_scale=1.0,
        seed=seed,
        sink=sink,
        probes=[PROBES.build(p) for p in probes],
    )
    return trainer.run(), pd.DataFrame(sink.records), model


def test_records_cover_every_task_split_metric_and_checkpoint() -> None:
    outcome, records, _ = _train(tasks=["digits1", "digits2"], probes=["min_train_loss"])
    assert outcome.status == "completed" and outcome.steps == 12
    assert sorted(records["step"].unique()) == [0, 4, 8, 12]
    assert sorted(records["epoch"].unique()) == [0.0, 1.0, 2.0, 3.0]
    for task in ("digits1", "digits2"):
        rows = records[records["task"] == task]
        for split in ("train", "val", "test"):
            assert set(rows[rows["split"] == split]["metric"]) == {"loss", "accuracy", "macro_f1"}
        optim = rows[rows["split"] == "optim"].pivot_table(index="step", columns="metric", values="value")
        assert (optim["lr"] == 1e-3).all() and (optim["batch_size"] == 8).all()
        assert ((optim["temperature"] - 1e-3 / 8).abs() < 1e-15).all()
        probe = rows[rows["split"] == "probe"].set_index("step")["value"]
        train_loss = rows[(rows["split"] == "train") & (rows["metric"] == "loss")].set_index("step")["value"]
        assert (probe == train_loss.cummin()).all()


def test_same_seed_same_records_other_seed_other_records() -> None:
    _, a, _ = _train(tasks=["digits1", "noisy-digits"])
    _, b, _ = _train(tasks=["digits1", "noisy-digits"])
    _, c, _ = _train(tasks=["digits1", "noisy-digits"], seed=1)
    pd.testing.assert_frame_equal(a, b)
    assert not a["value"].equals(c["value"])


def test_task_sees_same_batches_in_single_and_multi_task_runs() -> None:
    full = settings.get("digits-mtl")
    single = BatchSampler(full.subset(["digits1"]), 16, seed=5)
    multi = BatchSampler(full.subset(["digits2", "digits1"]), 16, seed=5)
    for _ in range(20):  # beyond one pass of digits1's 150 images
        s, m = single.next(), multi.next()
        assert torch.equal(s.targets["digits1"], m.targets["digits1"])
        assert torch.equal(s.inputs, m.inputs[m.rows["digits1"]])


def test_sampler_passes_visit_every_example_once() -> None:
    setting = settings.get("digits-mtl", tasks=["digits1"])
    sampler = BatchSampler(setting, 10, seed=0)
    seen = torch.cat([sampler.next().targets["digits1"] for _ in range(15)])  # 150 = one pass
    assert torch.equal(torch.sort(seen).values, torch.sort(setting.tasks[0].train.targets).values)


def test_shared_input_batches_carry_every_label_of_the_same_images() -> None:
    setting = settings.get("digits-attributes")
    batch = BatchSampler(setting, 12, seed=0).next()
    assert batch.inputs.shape[0] == 12
    digit = batch.targets["digit"]
    assert torch.equal(batch.targets["even"], (digit % 2 == 0).long())
    outcome, records, _ = _train("digits-attributes", steps=8)
    assert outcome.status == "completed"
    assert set(records["task"]) == set(setting.task_names)


def test_divergence_ends_the_run_and_keeps_records() -> None:
    outcome, records, _ = _train("synthetic", steps=200, lr=1e8, optimizer="sgd")
    assert outcome.status == "diverged"
    assert "non-finite" in outcome.message
    assert outcome.steps < 200
    assert 0 in set(records["step"])  # the checkpoints before divergence are kept
    assert all(math.isfinite(v) for v in records[records["step"] == 0]["value"])


def test_training_lowers_the_loss() -> None:
    _, records, _ = _train(tasks=["digits1"], steps=200, lr=3e-3)
    loss = records[(records["split"] == "train") & (records["metric"] == "loss")].set_index("step")["value"]
    assert loss.iloc[-1] < 0.25 * loss.iloc[0]
