"""Plots of analysis outputs: files written, PNG decodable, expected text in the SVG, errors on empty input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mtlscope.analysis.factors import METHOD_CHANGE_COLUMNS, method_changes
from mtlscope.analysis.grouping import Grouping, group_tasks
from mtlscope.analysis.temperature import TEMPERATURE_COLUMNS
from mtlscope.report.plots import (
    affinity_heatmap,
    grouping_diagram,
    similarity_scatter,
    smto_quadrants,
    temperature_curves,
)
from mtlscope.runs.results import RunResults

RECORD_COLUMNS = ["run_id", "step", "epoch", "task", "split", "metric", "value"]
STEPS = 12


def _results(values: dict[tuple[str, int], dict[str, dict[str, float]]]) -> RunResults:
    """Runs on tasks a+b keyed (method, seed) with constant factors per task ({task: {factor: value}}), so that
    generalization (the test accuracy at every checkpoint) and each probe value are known."""
    runs, records = [], []
    for (method, seed), tasks in values.items():
        run_id = f"{method}-{seed}"
        runs.append(
            {"run_id": run_id, "status": "completed", "variant": f"ab:{method}", "tasks": "a+b", "method": method}
            | {"seed": seed}
        )
        for task, factors in tasks.items():
            for step in range(STEPS):
                records += [
                    (run_id, step, float(step), task, "val", "accuracy", step / STEPS),
                    (run_id, step, float(step), task, "test", "accuracy", factors["generalization"]),
                    (run_id, step, float(step), task, "probe", "sharpness", factors["sharpness"]),
                ]
    return RunResults(pd.DataFrame(runs), pd.DataFrame(records, columns=RECORD_COLUMNS))


def _check(paths: list[Path], *texts: str) -> str:
    png, svg = paths
    assert png.suffix == ".png" and svg.suffix == ".svg"
    assert png.is_file() and svg.is_file()
    with Image.open(png) as image:
        image.load()
        width, height = image.size
    assert 400 <= width <= 3000 and 250 <= height <= 3000
    content = svg.read_text(encoding="utf-8")
    for text in texts:
        assert text in content, text
    return content


def test_smto_quadrants_from_method_changes(tmp_path: Path) -> None:
    base = {"a": {"generalization": 0.80, "sharpness": 10.0}, "b": {"generalization": 0.60, "sharpness": 4.0}}
    pcgrad = {"a": {"generalization": 0.90, "sharpness": 5.0}, "b": {"generalization": 0.55, "sharpness": 8.0}}
    cagrad = {"a": {"generalization": 0.81, "sharpness": 11.0}, "b": {"generalization": 0.61, "sharpness": 4.4}}
    values = {}
    for seed, noise in ((0, 0.0), (1, 0.02)):  # cagrad's small change is not significant
        for method, tasks in (("umtg", base), ("pcgrad", pcgrad), ("cagrad", cagrad)):
            values[(method, seed)] = {t: {k: v + noise for k, v in f.items()} for t, f in tasks.items()}
    changes = method_changes(_results(values))
    assert set(changes["factor"]) == {"generalization", "sharpness"}
    paths = smto_quadrants(changes, "sharpness", tmp_path / "quadrants.png")
    _check(
        paths,
        "% change in sharpness vs umtg",
        "% change in generalization vs umtg",
        "generalization improves",
        "generalization worsens",
        "pcgrad",
        "cagrad",
        "filled: significant",
    )
    significant = changes.set_index(["method", "task", "factor"])["significant"]
    assert significant[("pcgrad", "a", "generalization")] and not significant[("cagrad", "a", "generalization")]
    with pytest.raises(ValueError, match="significant_on"):
        smto_quadrants(changes, "sharpness", tmp_path / "x.png", significant_on="all")
    with pytest.raises(ValueError, match="'fim_trace' is not a factor"):
        smto_quadrants(changes, "fim_trace", tmp_path / "x.png")
    with pytest.raises(ValueError, match="empty"):
        smto_quadrants(pd.DataFrame(columns=list(METHOD_CHANGE_COLUMNS)), "sharpness", tmp_path / "x.png")


def _conflict_table() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for target, slope in (("a", 2.0), ("b", -1.0)):
        for number in range(8):
            similarity = 0.1 * number + 0.05 * rng.standard_normal()
            rows.append(
                {
                    "run_id": f"{target}-{number}",
                    "variant": "v",
                    "method": "umtg",
                    "tasks": "a+b",
                    "target": target,
                    "auxiliary": "b" if target == "a" else "a",
                    "seed": number,
                    "similarity": similarity,
                    "generalization": 0.5 + 0.2 * similarity * slope + 0.01 * rng.standard_normal(),
                    "sharpness": float(np.exp(3.0 - slope * similarity)),
                }
            )
    rows[0]["sharpness"] = np.nan  # a probe that did not measure: left out of the fit and of n
    return pd.DataFrame(rows)


def test_similarity_scatter(tmp_path: Path) -> None:
    table = _conflict_table()
    content = _check(
        similarity_scatter(table, "sharpness", tmp_path / "sharpness.png"),
        "r = ",
        "p = ",
        "a: r = ",
        "n = 7",  # target a: one NaN sharpness
        "n = 8",
        "target task",
        "similarity: mean cos(target gradient, UMTG)",
        "(log scale)",
    )
    assert "method umtg" in content
    content = _check(similarity_scatter(table, "generalization", tmp_path / "gen.png", target="b"), "b: r = ")
    assert "a: r = " not in content and "(log scale)" not in content
    with pytest.raises(ValueError, match="'c' is not a target"):
        similarity_scatter(table, "sharpness", tmp_path / "x.png", target="c")
    with pytest.raises(ValueError, match="missing column 'fim_trace'"):
        similarity_scatter(table, "fim_trace", tmp_path / "x.png")
    with pytest.raises(ValueError, match="empty"):
        similarity_scatter(table.iloc[0:0], "sharpness", tmp_path / "x.png")


def _temperature_table() -> pd.DataFrame:
    rows = []
    temperatures = [1e-5, 3e-5, 1e-4, 3e-4]
    curves = {
        ("a+b", "multi", "umtg", 1.0): [0.70, 0.75, 0.72, 0.60],
        ("a+b", "multi", "umtg", 2.0): [0.65, 0.71, 0.76, 0.70],
        ("a+b:pcgrad", "multi", "pcgrad", 1.0): [0.72, 0.74, 0.79, 0.65],
        ("single-task", "single", "umtg", 1.0): [0.68, 0.70, 0.69, 0.62],
    }
    for (variant, kind, method, scale), means in curves.items():
        for temperature, mean in zip(temperatures, means):
            for task, shift in (("a", 0.0), ("mean", 0.01)):
                row = [variant, kind, "a+b", method, scale, temperature, task, "accuracy", mean + shift, 0.01, 3]
                rows.append(dict(zip(TEMPERATURE_COLUMNS, row)))
    return pd.DataFrame(rows)


def test_temperature_curves(tmp_path: Path) -> None:
    table = _temperature_table()
    _check(
        temperature_curves(table, tmp_path / "temperature.png"),
        "temperature T = learning rate / batch size (log scale)",
        "best temperature",
        "C = 2",  # the loss scale varies between lines
        "pcgrad",
        "single-task",
        "mean over tasks",
    )
    _check(temperature_curves(table, tmp_path / "task_a.png", task="a"), "a generalization: test accuracy")
    with pytest.raises(ValueError, match="'c' is not in the table"):
        temperature_curves(table, tmp_path / "x.png", task="c")
    with pytest.raises(ValueError, match="empty"):
        temperature_curves(pd.DataFrame(columns=list(TEMPERATURE_COLUMNS)), tmp_path / "x.png")


def _affinity(tasks: list[str]) -> pd.DataFrame:
    count = len(tasks)
    values = np.random.default_rng(1).normal(0.0, 0.02, (count, count)) + 0.05 * np.eye(count)
    values[0, 1] = -0.04
    matrix = pd.DataFrame(values, index=pd.Index(tasks, name="source"), columns=pd.Index(tasks, name="target"))
    return matrix


def test_affinity_heatmap(tmp_path: Path) -> None:
    tasks = ["segment", "depth", "normal", "edges"]
    matrix = _affinity(tasks)
    matrix.iloc[2, 3] = np.nan  # a pair never measured: grey, not annotated
    content = _check(
        affinity_heatmap(matrix, tmp_path / "affinity.png"),
        *tasks,
        "source task (gradient step on)",
        "target task (loss measured)",
        "affinity Z (source → target)",
        "-0.04",  # annotated cell
    )
    assert "×1e" not in content
    tiny = affinity_heatmap(_affinity(tasks) * 1e-4, tmp_path / "tiny.png", title="Tiny steps")
    _check(tiny, "×1e-6", "Tiny steps")
    many = [f"t{i}" for i in range(14)]  # above the annotation limit: no values written in the cells
    content = _check(affinity_heatmap(_affinity(many), tmp_path / "many.png"), "t13")
    assert "-0.04" not in content
    with pytest.raises(ValueError, match="empty"):
        affinity_heatmap(pd.DataFrame(), tmp_path / "x.png")


def test_grouping_diagram(tmp_path: Path) -> None:
    tasks = ["segment", "depth", "normal", "edges", "keypoints"]
    grouping = group_tasks(_affinity(tasks), 2)
    assert 1 <= len(grouping.groups) <= 2
    title = f"Task grouping: {len(grouping.groups)} group"
    _check(
        grouping_diagram(grouping, tmp_path / "grouping.png"),
        *tasks,
        title,
        f"score {grouping.score:.3g}",
        "group 1 (",
        "serves the task",
    )
    overlapping = Grouping(
        groups=(("a", "b"), ("b", "c")),
        score=0.5,
        task_scores={"a": 0.4, "b": 0.7, "c": 0.4},
        served_by={"a": ("a", "b"), "b": ("b", "c"), "c": ("b", "c")},
        method="exhaustive",
    )
    _check(grouping_diagram(overlapping, tmp_path / "overlap.png"), "2 groups", "0.7", "served by another group")
    with pytest.raises(ValueError, match="no groups"):
        grouping_diagram(Grouping((), float("nan"), {}, {}, "exhaustive"), tmp_path / "x.png")


def test_similarity_scatter_draws_no_fit_below_five_points(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from matplotlib.axes import Axes

    lines: list[int] = []
    plot = Axes.plot

    def spy(self: Axes, *args: object, **kwargs: object) -> object:
        lines.append(len(args[0]))  # type: ignore[arg-type]
        return plot(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Axes, "plot", spy)
    table = _conflict_table()
    three = table[(table["target"] == "a") & (table["seed"] < 3)]  # 3 points on a line: r = -1.00 and p < 0.01
    content = _check(similarity_scatter(three, "generalization", tmp_path / "three.png"), "a: r = n/a")
    assert "fewer than 5 points: no fit" in content and "p = " not in content
    assert lines == []  # no least-squares line
    five = table[(table["target"] == "a") & (table["seed"] < 5)]
    content = _check(similarity_scatter(five, "generalization", tmp_path / "five.png"), "p = ", "n = 5")
    assert lines == [100]  # one fitted line (100 grid points)


def test_affinity_heatmap_says_what_grey_cells_mean(tmp_path: Path) -> None:
    from mtlscope.report.plots import NOT_MEASURED_LABEL

    tasks = ["a", "b", "c"]
    full = pd.DataFrame([[0.2, 0.1, 0.0], [0.05, 0.3, -0.1], [0.0, 0.02, 0.1]], index=tasks, columns=tasks)
    content = _check(affinity_heatmap(full, tmp_path / "full.png"))
    assert "not measured" not in content  # no grey cell, no legend for it
    gaps = full.copy()
    gaps.loc["b", "c"] = gaps.loc["c", "b"] = np.nan  # b and c never trained together
    assert NOT_MEASURED_LABEL.startswith("grey: not measured")
    _check(affinity_heatmap(gaps, tmp_path / "gaps.png"), NOT_MEASURED_LABEL)
