"""``training.autocast: bf16``: the model's forward passes inside training steps run in bfloat16, checkpoints and
probes in float32; ``off`` (the default) changes nothing, not even the run id."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from mtlscope.engine.trainer import ListSink
from mtlscope.runs import ConfigError, execute, read_records, validate_config
from mtlscope.runs.launch import _trainer, prepare

BASE: dict[str, Any] = {
    "setting": {"name": "digits-mtl", "tasks": ["digits1", "digits2"]},
    "model": {"encoder": {"name": "mlp", "hidden": [16, 8]}},
    "training": {"steps": 4, "eval_every": 2, "batch_size": 16},
    "probes": {"sharpness": {"every": 1}, "fim_trace": {"every": 1}, "grad_similarity": {"every": 1}},
}


def config(method: str = "umtg", **training: Any) -> Any:
    return validate_config({**BASE, "method": {"name": method}, "training": {**BASE["training"], **training}})


@pytest.mark.parametrize("method", ["umtg", "mgda"])  # mgda: per-task forward passes (multi-input layout)
def test_bf16_inside_training_steps_only(method: str) -> None:
    prepared = prepare(config(method, autocast="bf16"))
    trainer = _trainer(prepared, ListSink(), None, None)
    seen: list[tuple[str, torch.dtype]] = []
    phase = ["other"]
    linears = [m for m in prepared.model.modules() if isinstance(m, nn.Linear)]
    for linear in linears:  # the encoder's layers and the heads'
        linear.register_forward_hook(lambda _m, _a, output: seen.append((phase[0], output.dtype)))
    watched = [prepared.model.encoder, *prepared.model.heads.values()]
    hooks_before = [(len(m._forward_pre_hooks), len(m._forward_hooks)) for m in watched]
    step_fn = trainer.step_fn
    losses = []

    def step(batch: Any, index: int) -> Any:
        phase[0] = "step"
        try:
            result = step_fn(batch, index)
        finally:
            phase[0] = "other"
        losses.append(result.losses.dtype)
        return result

    trainer.step_fn = step  # type: ignore[assignment]
    outcome = trainer.run()
    assert outcome.status == "completed"
    in_steps = {dtype for where, dtype in seen if where == "step"}
    elsewhere = {dtype for where, dtype in seen if where == "other"}
    assert in_steps == {torch.bfloat16}
    assert elsewhere == {torch.float32}  # evaluation and the three probes
    assert set(losses) == {torch.float32}  # losses, gradients and the method's combination stay float32
    assert {p.dtype for p in prepared.model.parameters()} == {torch.float32}
    hooks_after = [(len(m._forward_pre_hooks), len(m._forward_hooks)) for m in watched]
    assert hooks_after == hooks_before  # autocast's hooks live only inside steps


def test_off_is_the_run_without_the_option_and_bf16_is_close_but_not_equal(tmp_path: Path) -> None:
    plain = execute(config(), tmp_path)
    off = execute(config(autocast="off"), tmp_path)
    assert off.skipped and off.run_id == plain.run_id  # the same run: "off" is no part of the config's identity
    assert "autocast" not in config(autocast="off").to_dict()["training"]
    bf16 = execute(config(autocast="bf16"), tmp_path)
    assert bf16.run_id != plain.run_id
    assert "autocast: bf16" in (bf16.path / "config.yaml").read_text()
    a, b = read_records(plain.path), read_records(bf16.path)
    key = ["step", "task", "split", "metric"]
    a = a[a["split"] == "train"].sort_values(key).reset_index(drop=True)
    b = b[b["split"] == "train"].sort_values(key).reset_index(drop=True)
    assert (a["step"].to_numpy() == b["step"].to_numpy()).all()
    last = a["step"] == a["step"].max()
    assert not a["value"][last].equals(b["value"][last])  # bf16 arithmetic really ran
    torch.testing.assert_close(
        torch.tensor(b["value"][last].to_numpy()), torch.tensor(a["value"][last].to_numpy()), rtol=0.05, atol=0.02
    )


def test_bad_autocast_value_is_one_line() -> None:
    with pytest.raises(ConfigError, match=r"training\.autocast") as error:
        config(autocast="fp16")
    assert "\n" not in str(error.value)
