"""Probes run by the trainer at checkpoints (SPEC §4 common rules)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from mtlscope.probes import build_probe
from mtlscope.runs import ConfigError, execute, load, validate_config

AFFINITY_METRICS = ("affinity", "affinity_overall", "affinity_first_order", "affinity_first_order_overall")

PROBES = {
    "sharpness": {"subset": 64, "iterations": 3, "batch_size": 32, "every": 1},
    "fim_trace": {"subset": 64, "every": 1},
    "grad_cov_trace": {"subset": 64, "large_batch": 32, "small_batch": 8, "every": 1},
    "min_train_loss": {},
    "grad_similarity": {"batches": 4, "every": 1},
    "affinity": {"every_steps": 3},
}


def _config(tasks: list[str], probes: dict | None = None, **training: object) -> dict:
    return {
        "setting": {"name": "digits-mtl", "tasks": tasks},
        "model": {"encoder": {"name": "mlp", "hidden": [32, 8]}},
        "training": {"steps": 20, "eval_every": 10, "batch_size": 16, **training},
        "probes": probes or {},
    }


def _records(path: Path) -> pd.DataFrame:
    return load(path).records.drop(columns="run_id")


def test_probes_leave_training_unchanged_and_record_every_task(tmp_path: Path) -> None:
    plain = execute(validate_config(_config(["digits1", "noisy-digits"])), tmp_path / "plain")
    probed = execute(validate_config(_config(["digits1", "noisy-digits"], PROBES)), tmp_path / "probed")
    without = _records(plain.path.parent)
    records = _records(probed.path.parent)
    pd.testing.assert_frame_equal(records[records["split"] != "probe"].reset_index(drop=True), without)
    probes = records[records["split"] == "probe"]
    expected = {
        "sharpness",
        "fim_trace",
        "fim_trace_per_example",
        "fim_empirical",
        "grad_cov_trace",
        "grad_norm_sq",
        "noise_scale",
        "min_train_loss",
        "grad_similarity",
    }
    pairs = {f"{kind}/{source}" for kind in AFFINITY_METRICS for source in ("digits1", "noisy-digits")}
    for task in ("digits1", "noisy-digits"):
        rows = probes[probes["task"] == task]
        assert set(rows["metric"]) == expected | pairs
        assert sorted(rows["step"].unique()) == [0, 10, 20]
        # affinities are reported from the first checkpoint after a measured step: steps 0, 3, 6, 9 by 10
        assert sorted(rows[rows["metric"] == "affinity/digits1"]["step"]) == [10, 20]
        assert all(math.isfinite(v) for v in rows["value"])
        assert (rows[rows["metric"] == "sharpness"]["value"] >= 0).all()
        assert (rows[rows["metric"] == "fim_trace"]["value"] > 0).all()
        assert (rows[rows["metric"] == "fim_empirical"]["value"] == 0).all()
        assert (rows[rows["metric"] == "grad_similarity"]["value"].abs() <= 1).all()


def test_probe_schedule_every_and_timing(tmp_path: Path) -> None:
    probes = {"min_train_loss": {"every": 2}, "grad_similarity": {"batches": 2, "every": 3}}
    outcome = execute(validate_config(_config(["digits1", "digits2"], probes, steps=45, eval_every=5)), tmp_path)
    records = _records(outcome.path.parent)
    steps = records[records["split"] == "probe"].groupby("metric")["step"].unique()
    # every n-th checkpoint counted from step 0, and always the last one
    assert sorted(steps["min_train_loss"]) == [0, 10, 20, 30, 40, 45]
    assert sorted(steps["grad_similarity"]) == [0, 15, 30, 45]
    timing = load(outcome.path.parent).runs.iloc[0]["timing_s"]
    assert set(timing) == {"train_s", "evaluate_s", "probe_s/min_train_loss", "probe_s/grad_similarity"}
    assert all(seconds >= 0 for seconds in timing.values()) and timing["train_s"] > 0
    with pytest.raises(ConfigError, match="every"):
        validate_config(_config(["digits1"], {"min_train_loss": {"every": 0}}))
    # defaults: the free probe at every checkpoint, the costly ones at every 10th
    assert build_probe("min_train_loss", {}).every == 1
    assert build_probe("sharpness", {}).every == 10 and build_probe("sharpness", {"every": 2}).every == 2


def test_single_and_multi_task_runs_measure_the_same_predictor_at_initialization(tmp_path: Path) -> None:
    single = execute(validate_config(_config(["digits1"], PROBES)), tmp_path / "st")
    multi = execute(validate_config(_config(["digits1", "digits2"], PROBES)), tmp_path / "mt")
    a = _records(single.path.parent)
    b = _records(multi.path.parent)

    def at_start(frame: pd.DataFrame) -> pd.Series:
        rows = frame[(frame["split"] == "probe") & (frame["task"] == "digits1") & (frame["step"] == 0)]
        return rows.set_index("metric")["value"].sort_index()

    single_values, multi_values = at_start(a), at_start(b)
    assert set(multi_values.index) - set(single_values.index) == {"grad_similarity"}  # multi-task runs only
    pd.testing.assert_series_equal(single_values, multi_values[single_values.index])


def test_shared_parameters_option_and_bad_options(tmp_path: Path) -> None:
    measured = ("sharpness", "fim_trace", "grad_cov_trace")  # the probes of a task predictor's parameters
    shared = {name: {**PROBES[name], "parameters": "shared"} for name in measured}
    outcome = execute(validate_config(_config(["digits1"], shared, steps=10)), tmp_path / "shared")
    predictor = execute(validate_config(_config(["digits1"], PROBES, steps=10)), tmp_path / "predictor")
    a = _records(outcome.path.parent)
    b = _records(predictor.path.parent)
    fim_shared = a[(a["metric"] == "fim_trace_per_example") & (a["step"] == 0)]["value"].iloc[0]
    fim_all = b[(b["metric"] == "fim_trace_per_example") & (b["step"] == 0)]["value"].iloc[0]
    assert 0 < fim_shared < fim_all  # a sum of squared gradient entries over fewer parameters
    with pytest.raises(ConfigError, match="parameters"):
        execute(validate_config(_config(["digits1"], {"sharpness": {"parameters": "heads"}})), tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    with pytest.raises(ConfigError, match=r"probes\.sharpness\.radius: unknown option of probe 'sharpness'"):
        validate_config(_config(["digits1"], {"sharpness": {"radius": 0.1}}))
