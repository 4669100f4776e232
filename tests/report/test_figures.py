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


def _phase_results(losses: list[float]) -> RunResults:
    """A single-task and a multi-task run of task a (seed 0) with the same checkpoint losses."""
    runs, records = [], []
    for variant, tasks in (("st", ["a"]), ("mt", ["a", "b"])):
        run_id = f"{variant}-0"
        runs.append({"run_id": run_id, "status": "completed", "variant": variant, "tasks": "+".join(tasks)})
        runs[-1].update(num_tasks=len(tasks), seed=0, method="umtg")
        for step, loss in enumerate(losses):
            base = {"run_id": run_id, "step": step, "epoch": float(step), "task": "a"}
            records += [
                {**base, "split": "train", "metric": "loss", "value": loss},
                {**base, "split": "test", "metric": "accuracy", "value": 1 - loss / 3},
                {**base, "split": "val", "metric": "accuracy", "value": 1 - loss / 3},
                {**base, "split": "probe", "metric": "sharpness", "value": loss},
            ]
    return RunResults(pd.DataFrame(runs), pd.DataFrame(records))


# checkpoints every epoch: the loss falls from 2.3 to 0.15 before the first one (no checkpoint in bins 2-5)
EPOCHS = [2.3, *(0.15 * 0.75**k for k in range(25))]
LOGGED = [2.3 * 0.8**k for k in range(40)]  # the same range, with checkpoints all along


def _svg_text(draw: object, tmp_path: Path) -> str:
    import matplotlib.pyplot as plt

    with plt.rc_context({"svg.fonttype": "none"}):  # text as text, to be searched
        paths = draw(tmp_path / "figure.png")  # type: ignore[operator]
    return next(p for p in paths if p.suffix == ".svg").read_text()


def test_figures_note_an_early_phase_without_checkpoints(tmp_path: Path) -> None:
    from mtlscope.report.figures import generalization_vs_loss

    sparse = _phase_results(EPOCHS)
    text = _svg_text(lambda path: generalization_vs_loss(sparse, "a", path), tmp_path)
    assert "Note: early phase: 0 checkpoints in loss bins 2–5" in text and "eval_every: log" in text
    panel = _svg_text(lambda path: factors_vs_loss(sparse, "a", path, factors=["sharpness"]), tmp_path)
    assert "early phase: 0 checkpoints in loss bins 2–5" in panel
    dense = _phase_results(LOGGED)
    assert "Note:" not in _svg_text(lambda path: generalization_vs_loss(dense, "a", path), tmp_path)
    assert "Note:" not in _svg_text(lambda path: factors_vs_loss(dense, "a", path, factors=["sharpness"]), tmp_path)


def test_preset_outputs_carry_the_phase_notes(tmp_path: Path) -> None:
    from mtlscope.reproduce.outputs import build_output

    sparse = _phase_results(EPOCHS)
    early = build_output("phase_table", sparse, tmp_path, "early", {"task": "a", "phase": "early"})
    assert len(early.notes) == 1 and early.notes[0].startswith("early phase: 0 checkpoints in loss bins 2–5")
    assert early.table is not None and early.table.loc[0, "note"].startswith("early phase: 0 checkpoints of the run")
    figure = build_output("generalization_vs_loss", sparse, tmp_path, "fig1", {"task": "a"})
    assert figure.notes == early.notes
    factors = build_output("factors_vs_loss", sparse, tmp_path, "fig3", {"task": "a", "factors": ["sharpness"]})
    assert factors.notes == [f"sharpness: {early.notes[0]}"]
    dense = _phase_results(LOGGED)
    assert build_output("phase_table", dense, tmp_path, "early", {"task": "a", "phase": "early"}).notes == []
