"""A finished run keeps its weights: ``model.safetensors`` (completed runs) and, with ``training.keep_best``,
``best.safetensors`` (the best validation checkpoint); ``load_model`` rebuilds the trained model from them, and a
weights file that is missing, changed or not the model's is one clear line (and a damaged run for the store)."""

from __future__ import annotations

import json
import math
import shutil
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest
import torch
from safetensors.torch import save as save_safetensors

import mtlscope
from mtlscope.engine.evaluation import evaluate
from mtlscope.engine.trainer import ListSink, Trainer
from mtlscope.runs import ConfigError, RunOutcome, WeightsError, execute, load, load_model, prepare, validate_config
from mtlscope.runs.results import DamagedRunWarning
from mtlscope.runs.store import STATE_FILE, SUMMARY_FILE, damage
from mtlscope.runs.weights import BestCheckpoint

CONFIG: dict[str, Any] = {
    "setting": {"name": "digits-mtl", "tasks": ["digits1", "digits2"]},
    "model": {"encoder": {"name": "mlp", "hidden": [16, 8], "dropout": 0.1}},
    "optimizer": {"lr": 0.01},
    "training": {"steps": 40, "eval_every": 4, "batch_size": 16, "keep_best": True},
}
REGRESSION: dict[str, Any] = {
    "setting": {"name": "synthetic"},
    "model": {"encoder": {"name": "mlp", "hidden": [16]}},
    "optimizer": {"name": "sgd", "lr": 0.3},
    "training": {"steps": 40, "eval_every": 2, "batch_size": 16, "keep_best": True},
}


def summary_of(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((path / SUMMARY_FILE).read_text())
    return data


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> RunOutcome:
    torch.set_num_threads(1)
    outcome = execute(validate_config(CONFIG), tmp_path_factory.mktemp("stored"))
    assert outcome.status == "completed"
    return outcome


@pytest.fixture
def run(stored: RunOutcome, tmp_path: Path) -> Path:
    """A copy of the stored run, to damage."""
    return Path(shutil.copytree(stored.path, tmp_path / stored.path.name))


def one_line(error: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(error.value)
    assert "\n" not in text and text
    return text


def test_load_model_returns_the_trained_model(stored: RunOutcome) -> None:
    model = mtlscope.load_model(stored.path)
    assert not model.training
    # trained again in this process, as a user would with the public pieces
    config = validate_config(CONFIG)
    prepared = prepare(config)
    trainer = Trainer(
        prepared.setting,
        prepared.model,
        prepared.method,
        prepared.optimizer,
        schedule=prepared.schedule,
        batch_size=config.training.batch_size,
        loss_scale=prepared.loss_scale,
        seed=config.seed,
        sink=ListSink(),
    )
    assert trainer.run().status == "completed"
    trained = prepared.model.eval()
    for task in prepared.setting.tasks:
        inputs = task.test.inputs
        assert torch.equal(model(inputs, task.name), trained(inputs, task.name))
    # and the final numbers the run recorded
    scores = evaluate(model, prepared.setting)
    final = summary_of(stored.path)["final"]
    for (task, split), metrics in scores.items():
        assert metrics == final[task][split]
    assert summary_of(stored.path)["weights"]["final"]["step"] == 40
    assert not (stored.path / STATE_FILE).exists()  # state.pt is still removed: the weights are what stays


def _best_step(records: pd.DataFrame, metrics: dict[str, str]) -> tuple[int, float]:
    """The argmax (earliest among equals) over checkpoints of the mean validation primary metric."""
    val = records[(records["split"] == "val") & (records["metric"] == records["task"].map(metrics))]
    mean = val.groupby("step")["value"].mean()
    return int(mean.idxmax()), float(mean.max())


@pytest.mark.parametrize("config", [CONFIG, REGRESSION], ids=["accuracy", "r2"])
def test_best_checkpoint_is_the_argmax_of_the_recorded_validation_metric(
    config: dict[str, Any], stored: RunOutcome, tmp_path: Path
) -> None:
    outcome = stored if config is CONFIG else execute(validate_config(config), tmp_path)
    best = summary_of(outcome.path)["weights"]["best"]
    records = load(outcome.path.parent).records
    step, score = _best_step(records, best["metrics"])
    assert best["step"] == step and math.isclose(best["score"], score, rel_tol=1e-12)
    assert 0 < step < records["step"].max()  # a real choice: neither the first nor the last checkpoint
    model = load_model(outcome.path, which="best")
    setting = prepare(validate_config(config)).setting
    scores = evaluate(model, setting, ("val", "test"))
    at_step = records[records["step"] == step].set_index(["task", "split", "metric"])["value"]
    for (task, split), metrics in scores.items():
        for metric, value in metrics.items():
            assert value == at_step[(task, split, metric)]


def test_a_lower_is_better_primary_metric_counts_negated() -> None:
    tasks = [
        SimpleNamespace(name="a", primary_metric="mae", higher_is_better=False),
        SimpleNamespace(name="b", primary_metric="accuracy", higher_is_better=True),
    ]
    best = BestCheckpoint(SimpleNamespace(tasks=tasks))  # type: ignore[arg-type]
    model = torch.nn.Linear(1, 1)
    for step, (mae, accuracy) in enumerate([(1.0, 0.5), (0.2, 0.5), (0.6, 0.7), (float("nan"), 0.9)]):
        best.at_checkpoint(step, {("a", "val"): {"mae": mae}, ("b", "val"): {"accuracy": accuracy}}, model)  # type: ignore[arg-type]
    assert best.step == 1 and best.score == pytest.approx((-0.2 + 0.5) / 2)


class Stop(BaseException):
    """Stands in for a kill."""


@pytest.mark.parametrize("stop_at", [6, 38])  # 38: after the best checkpoint (36)
def test_a_resumed_run_keeps_the_same_best_checkpoint(stored: RunOutcome, tmp_path: Path, stop_at: int) -> None:
    def stop(step: int) -> None:
        if step == stop_at:
            raise Stop

    with pytest.raises(Stop):
        execute(validate_config(CONFIG), tmp_path, on_step=stop)
    steps: list[int] = []
    resumed = execute(validate_config(CONFIG), tmp_path, on_step=steps.append)
    assert resumed.status == "completed" and steps[0] == stop_at // 4 * 4 + 1  # after the last checkpoint
    for name in ("model.safetensors", "best.safetensors"):
        assert (resumed.path / name).read_bytes() == (stored.path / name).read_bytes()
    assert summary_of(resumed.path)["weights"] == summary_of(stored.path)["weights"]


def test_without_keep_best_only_the_final_weights(tmp_path: Path) -> None:
    outcome = execute(validate_config({**CONFIG, "training": {"steps": 4, "keep_best": False}}), tmp_path)
    assert (outcome.path / "model.safetensors").exists() and not (outcome.path / "best.safetensors").exists()
    with pytest.raises(WeightsError) as error:
        load_model(outcome.path, which="best")
    assert "no best weights recorded" in one_line(error) and "training.keep_best" in str(error.value)


def test_keep_best_is_validated() -> None:
    with pytest.raises(ConfigError) as error:
        validate_config({**CONFIG, "training": {"keep_best": "sometimes"}})
    assert one_line(error).startswith("config: training.keep_best: expected true or false")


def test_a_diverged_run_keeps_no_final_weights_but_its_best(tmp_path: Path) -> None:
    config = {
        "setting": {"name": "synthetic"},
        "optimizer": {"name": "sgd", "lr": 1e8},
        "training": {"steps": 30, "keep_best": True},
    }
    outcome = execute(validate_config(config), tmp_path)
    assert outcome.status == "diverged"
    assert not (outcome.path / "model.safetensors").exists()
    with pytest.raises(WeightsError) as error:
        load_model(outcome.path)
    assert "a diverged run keeps no final weights" in one_line(error)
    assert summary_of(outcome.path)["weights"]["best"]["step"] == 0
    assert isinstance(load_model(outcome.path, which="best"), torch.nn.Module)
    assert damage(outcome.path) is None


def test_an_unfinished_run_has_no_weights_to_load(tmp_path: Path) -> None:
    def fail(step: int) -> None:
        if step == 5:
            raise RuntimeError("boom")

    outcome = execute(validate_config(CONFIG), tmp_path, on_step=fail, on_failure="return")
    with pytest.raises(WeightsError) as error:
        load_model(outcome.path)
    assert one_line(error) == f"{outcome.path}: the run is failed; only completed or diverged runs keep weights"
    with pytest.raises(WeightsError) as error:
        load_model(tmp_path / "nothing")
    assert one_line(error) == f"{tmp_path / 'nothing'}: not a run directory"
    with pytest.raises(ValueError, match="which: expected 'final' or 'best'"):
        load_model(outcome.path, which="last")  # type: ignore[arg-type]


def _rerecord(run: Path, which: str, data: bytes) -> None:
    """Write ``data`` as the run's ``which`` weights and record its sha256, as if the run had written it."""
    import hashlib

    name = {"final": "model.safetensors", "best": "best.safetensors"}[which]
    (run / name).write_bytes(data)
    summary = summary_of(run)
    summary["weights"][which]["sha256"] = hashlib.sha256(data).hexdigest()
    (run / SUMMARY_FILE).write_text(json.dumps(summary))


def test_missing_weights(run: Path) -> None:
    (run / "model.safetensors").unlink()
    assert damage(run) == "model.safetensors missing"
    with pytest.raises(WeightsError) as error:
        load_model(run)
    assert one_line(error) == f"{run / 'model.safetensors'}: missing"


def test_corrupted_weights(run: Path) -> None:
    data = bytearray((run / "best.safetensors").read_bytes())
    data[-3] ^= 0xFF  # one flipped byte inside a tensor: still a valid file, other weights
    (run / "best.safetensors").write_bytes(bytes(data))
    assert damage(run) == "best.safetensors changed after the run finished (its sha256 is not the one in summary.json)"
    with pytest.raises(WeightsError) as error:
        load_model(run, which="best")
    assert one_line(error).endswith(
        "best.safetensors: changed or corrupted (its sha256 is not the one recorded in summary.json)"
    )


@pytest.mark.parametrize("content", [b"", b"garbage" * 10, b"\xff" * 8 + b"{}"])
def test_weights_that_are_not_safetensors(run: Path, content: bytes) -> None:
    _rerecord(run, "final", content)
    assert damage(run) is None  # what the run recorded: loading is what finds it is not weights
    with pytest.raises(WeightsError) as error:
        load_model(run)
    assert "model.safetensors: not a safetensors weights file" in one_line(error)


def test_weights_of_another_model(run: Path) -> None:
    other = {name: torch.zeros(2, 2) for name in ("encoder.net.0.weight", "heads.digits1.weight")}
    _rerecord(run, "final", save_safetensors(other))
    with pytest.raises(WeightsError) as error:
        load_model(run)
    text = one_line(error)
    assert "model.safetensors: not the weights of the model in config.yaml (missing " in text and "unexpected" in text
    tensors = load_model(run, which="best").state_dict()
    name = next(iter(tensors))
    tensors[name] = torch.zeros(3)
    _rerecord(run, "final", save_safetensors({k: v.contiguous() for k, v in tensors.items()}))
    with pytest.raises(WeightsError) as error:
        load_model(run)
    assert f"model.safetensors: {name} is torch.float32 (3,), the model in config.yaml has torch.float32" in one_line(
        error
    )


def test_a_run_with_damaged_weights_is_skipped_and_redone(run: Path, stored: RunOutcome) -> None:
    (run / "model.safetensors").write_bytes(b"changed")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = load(run.parent)
    assert results.runs.empty and "model.safetensors" in results.skipped[0][1]
    assert any(issubclass(w.category, DamagedRunWarning) for w in caught)
    again = execute(validate_config(CONFIG), run.parent)
    assert again.status == "completed" and not again.skipped
    assert (run / "model.safetensors").read_bytes() == (stored.path / "model.safetensors").read_bytes()


def test_a_stored_config_that_no_longer_builds(run: Path) -> None:
    (run / "config.yaml").write_text("setting: {name: no-such-setting}\n")
    with pytest.raises(ConfigError) as error:
        load_model(run)
    assert one_line(error).startswith(f"{run / 'config.yaml'}: setting")
