"""The papers' LeNets: lenet5 (FashionMTL) and multilenet (MNISTS, with dropout)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mtlscope.models import ENCODERS, HEADS
from mtlscope.runs import execute, load, validate_config
from tests.data.tiny_mnist import write_idx_dataset


def test_lenet5_is_lenet5() -> None:
    encoder = ENCODERS.build("lenet5", (1, 28, 28))
    shapes = [tuple(p.shape) for p in encoder.parameters()]
    assert shapes == [(6, 1, 5, 5), (6,), (16, 6, 5, 5), (16,), (120, 400), (120,), (84, 120), (84,)]
    assert encoder.output_dim == 84 and encoder(torch.zeros(3, 1, 28, 28)).shape == (3, 84)
    assert isinstance(encoder.last_shared_layer(), torch.nn.Linear)
    assert encoder.last_shared_layer().out_features == 84
    with pytest.raises(ValueError, match="at least 12x12"):
        ENCODERS.build("lenet5", (1, 8, 8))
    with pytest.raises(ValueError, match="two positive integers"):
        ENCODERS.build("lenet5", (1, 28, 28), channels=[6, 16, 32])


def test_multilenet_layers_and_dropout_only_in_training() -> None:
    encoder = ENCODERS.build("multilenet", (1, 28, 28))
    shapes = [tuple(p.shape) for p in encoder.parameters()]
    assert shapes == [(10, 1, 5, 5), (10,), (20, 10, 5, 5), (20,), (50, 320), (50,)]
    head = HEADS.build("multilenet", 50, 10)
    assert [tuple(p.shape) for p in head.parameters()] == [(50, 50), (50,), (10, 50), (10,)]
    assert [
        m.p for m in [*encoder.modules(), *head.modules()] if isinstance(m, torch.nn.modules.dropout._DropoutNd)
    ] == [
        0.5,
        0.5,
        0.5,
    ]
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    encoder.eval()
    assert torch.equal(encoder(x), encoder(x))
    encoder.train()
    torch.manual_seed(0)
    assert not torch.equal(encoder(x), encoder(x))


def _probes(tmp_path: Path, dropout: float) -> pd.DataFrame:
    config = {
        "setting": {
            "name": "mnists",
            "tasks": ["mnist", "fashion"],
            "options": {"train_size": 32, "val_size": 8, "test_size": 8},
        },
        "model": {
            "encoder": {"name": "multilenet", "dropout": dropout, "channels": [4, 8], "hidden": 16},
            "head": {"name": "multilenet", "dropout": dropout, "hidden": 8},
        },
        "training": {"steps": 2, "eval_every": 2, "batch_size": 8},
        "probes": {
            "sharpness": {"subset": 16, "iterations": 2, "batch_size": 8, "every": 1},
            "fim_trace": {"subset": 16, "every": 1},
            "grad_cov_trace": {"subset": 32, "large_batch": 16, "small_batch": 4, "every": 1},
        },
    }
    outcome = execute(validate_config(config), tmp_path / f"p{dropout}")
    records = load(outcome.path.parent).records
    return records[(records["split"] == "probe") & (records["step"] == 0)].sort_values(["task", "metric"])


def test_probes_run_with_dropout_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Dropout has no parameters: at step 0 a p = 0.5 model and a p = 0 model are the same function in eval mode,
    so every probe value must agree exactly (it would not if a probe ran with dropout on)."""
    monkeypatch.setenv("MTLSCOPE_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("MTLSCOPE_CACHE", str(tmp_path / "cache"))
    write_idx_dataset(tmp_path / "data" / "mnist", train=40, test=10)
    write_idx_dataset(tmp_path / "data" / "fashion-mnist", train=40, test=10, seed=1)
    with_dropout, again, without = _probes(tmp_path, 0.5), _probes(tmp_path / "again", 0.5), _probes(tmp_path, 0.0)
    assert set(with_dropout["metric"]) >= {"sharpness", "fim_trace", "grad_cov_trace"}
    assert len(with_dropout) >= 6
    np.testing.assert_array_equal(with_dropout["value"].to_numpy(), again["value"].to_numpy())
    np.testing.assert_array_equal(with_dropout["value"].to_numpy(), without["value"].to_numpy())
