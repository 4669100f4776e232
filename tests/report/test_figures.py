"""Binned curves of probe values (known answers) and the factors-vs-loss figure."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from mtlscope.report.figures import binned_curves, factors_vs_loss
from mtlscope.runs.results import RunResults

LOSSES = [1.0, 0.1, 0.01]


def _results() -> RunResults:
    """Variant st (1 task) and mt (2 tasks), two seeds each; sharpness everywhere, similarity in mt only."""
    runs, records = [], []
    for variant, tasks in (("st", ["a"]), ("mt", ["a", "b"])):
        for seed, scale in ((0, 1.0), (1, 4.0)):
            run_id = f"{variant}-{seed}"
            runs.append(
                {
                    "run_id": run_id,
                    "status": "completed",
                    "variant": variant,
                    "tasks": "+".join(tasks),
                    "num_tasks": len(tasks),
                }
            )
            for step, loss in enumerate(LOSSES):
                base = {"run_id": run_id, "step": step, "epoch": float(step), "task": "a"}
                records += [
                    {**base, "split": "train", "metric": "loss", "value": loss},
                    {**base, "split": "test", "metric": "accuracy", "value": 0.5},
                    {**base, "split": "val", "metric": "accuracy", "value": 0.5},
                    {**base, "split": "probe", "metric": "sharpness", "value": scale * 10.0**step},
                ]
                if variant == "mt" and step != 1:  # a probe that did not measure at every checkpoint
                    records.append({**base, "split": "probe", "metric": "grad_similarity", "value": 0.25 * seed})
    return RunResults(pd.DataFrame(runs), pd.DataFrame(records))


def test_binned_probe_values_mean_std_and_log_space() -> None:
    results = _results()
    curves = binned_curves(results, "a", "accuracy", bins=2, value="sharpness")
    st = curves[curves["variant"] == "st"].sort_values("loss", ascending=False)
    # two bins with edges 1, 0.1, 0.01: the first holds loss 1 (values 1 and 4 for the two seeds), the second
    # 0.1 and 0.01 (each seed's bin average: 55 and 220); mean and sample std over seeds
    assert st["mean"].tolist() == pytest.approx([2.5, 137.5])
    assert st["std"].tolist() == pytest.approx([pd.Series([1.0, 4.0]).std(), pd.Series([55.0, 220.0]).std()])
    logs = binned_curves(results, "a", "accuracy", bins=2, value="sharpness", log_values=True)
    last = logs[(logs["variant"] == "st")].sort_values("loss")["mean"].iloc[0]
    per_seed = [(math.log10(10) + math.log10(100)) / 2, (math.log10(40) + math.log10(400)) / 2]
    assert last == pytest.approx(sum(per_seed) / 2)  # statistics of log10 values
    similarity = binned_curves(results, "a", "accuracy", bins=2, value="grad_similarity")
    assert set(similarity["variant"]) == {"mt"} and similarity["seeds"].tolist() == [2, 2]
    assert similarity["mean"].tolist() == pytest.approx([0.125, 0.125])


def test_factors_vs_loss_writes_png_and_svg_with_empty_panels(tmp_path: Path) -> None:
    paths = factors_vs_loss(
        _results(), "a", tmp_path / "factors.png", factors=["sharpness", "grad_similarity", "fim_trace"]
    )
    assert [p.name for p in paths] == ["factors.png", "factors.svg"]
    with Image.open(paths[0]) as image:
        assert image.size[0] > 600
    svg = paths[1].read_text()
    assert "no fim_trace records" in svg and "variant" in svg
