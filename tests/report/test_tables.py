"""LaTeX tables, ``write_table`` and the key tables of ``mtlscope analyze`` (``mtlscope.report.summary``)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mtlscope.analysis import best_temperatures, temperature_table, transfer_table
from mtlscope.report.summary import (
    AFFINITY,
    BEST_TEMPERATURES,
    FACTOR_TRANSFER,
    ITMTL_WINS,
    METHOD_CHANGES,
    TRANSFER,
    describe_effect,
    key_tables,
    one_temperature,
    signed,
    table_name,
)
from mtlscope.report.tables import escape_latex, to_latex, to_markdown, write_table
from mtlscope.runs import RunResults, execute, load, validate_config

TITLES = [TRANSFER, FACTOR_TRANSFER, METHOD_CHANGES, BEST_TEMPERATURES, AFFINITY, ITMTL_WINS]


def _frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "task_name": ["a&b", "50% $x$"],
            "delta": [0.12345, -1.5],
            "n": [2, 3],
            "significant": [True, False],
        }
    )


def test_to_latex_exact_booktabs_table() -> None:
    expected = "\n".join(
        [
            r"\begin{tabular}{lrrl}",
            r"\toprule",
            r"task\_name & delta & n & significant \\",
            r"\midrule",
            r"a\&b & 0.123 & 2 & yes \\",
            r"50\% \$x\$ & -1.50 & 3 & no \\",  # 3 significant digits
            r"\bottomrule",
            r"\end{tabular}",
            "",
        ]
    )
    assert to_latex(_frame(), digits=3) == expected


def test_to_latex_caption_label_and_default_digits() -> None:
    text = to_latex(_frame(), caption="Transfer & more_stuff", label="tab:transfer_1")
    lines = text.splitlines()
    assert lines[:4] == [
        r"\begin{table}[htbp]",
        r"\centering",
        r"\caption{Transfer \& more\_stuff}",
        r"\label{tab:transfer_1}",
    ]
    assert lines[-2:] == [r"\end{tabular}", r"\end{table}"]
    assert r"a\&b & 0.1235 & 2 & yes \\" in lines  # digits=4, as to_markdown
    assert "0.1235" in to_markdown(_frame())


def test_escape_latex_every_special_character() -> None:
    assert escape_latex("&%$#_{}~^\\") == (r"\&\%\$\#\_\{\}\textasciitilde{}\textasciicircum{}\textbackslash{}")
    assert escape_latex("a\nb") == "a b"
    assert escape_latex(3) == "3"


def test_to_latex_nan_and_numpy_scalars() -> None:
    frame = pd.DataFrame({"x": [math.nan, 1.0], "ok": pd.Series([True, False], dtype=object)})
    body = to_latex(frame, digits=2).splitlines()[4:6]
    assert body == [r"nan & yes \\", r"1 & no \\"]  # a whole number is written as one


def test_write_table_writes_csv_markdown_and_latex(tmp_path: Path) -> None:
    paths = write_table(_frame(), tmp_path / "t.csv", title="A title_")
    assert paths == [tmp_path / "t.csv", tmp_path / "t.md", tmp_path / "t.tex"]
    pd.testing.assert_frame_equal(pd.read_csv(paths[0]), _frame())
    assert paths[1].read_text() == "A title_\n\n" + to_markdown(_frame())
    assert paths[2].read_text() == to_latex(_frame(), caption="A title_")
    assert r"\caption{A title\_}" in paths[2].read_text()
    untitled = write_table(_frame(), tmp_path / "u.csv")
    assert untitled[2].read_text() == to_latex(_frame())


def test_reading_helpers() -> None:
    assert signed(0.0576) == "+0.058" and signed(-0.017) == "-0.017" and signed(0.0) == "+0.000"
    assert signed(-0.000767) == "-0.000767" and signed(12345.0) == "+1.23e+04" and signed(math.nan) == "nan"
    assert describe_effect("d1+d2", "d1", 0.058, True) == "d1+d2 helps d1 by +0.058 (significant)"
    assert describe_effect("d1+d3", "d1", -0.2, True) == "d1+d3 hurts d1 by -0.200 (significant)"
    assert describe_effect("d1+d3", "d1", -0.017, False) == "d1+d3 changes d1 by -0.017 (not significant)"
    assert table_name("IT-MTL candidate wins") == "it_mtl_candidate_wins"
    assert table_name("Task affinity and grouping") == "task_affinity_and_grouping"


def _config(tasks: list[str], seed: int, method: str = "umtg", lr: float = 0.003, **extra: object) -> dict:
    return {
        "setting": {"name": "digits-mtl", "tasks": tasks},
        "model": {"encoder": {"name": "mlp", "hidden": [32, 8]}},
        "method": {"name": method},
        "optimizer": {"name": "adam", "lr": lr},
        "training": {"steps": 20, "eval_every": 5, "batch_size": 16, **extra},
        "probes": {"min_train_loss": {}},
        "seed": seed,
    }


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> RunResults:
    """Single-task digits1 at two learning rates, digits1+digits2 with umtg (affinity and similarity probes),
    pcgrad and it_mtl (with diagnostics): 2 seeds each, 20 steps (a few seconds)."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("summary") / "runs"
    probes = {"min_train_loss": {}, "grad_similarity": {"batches": 2, "every": 1}, "affinity": {"every_steps": 5}}
    for seed in (0, 1):
        configs = [
            _config(["digits1"], seed),
            _config(["digits1"], seed, lr=0.01),
            {**_config(["digits1", "digits2"], seed), "probes": probes},
            _config(["digits1", "digits2"], seed, method="pcgrad"),
            _config(["digits1", "digits2"], seed, method="it_mtl", diagnostics_every=1),
        ]
        for config in configs:
            assert execute(validate_config(config), out).status == "completed"
    return load(out)


def test_key_tables_on_tiny_results(results: RunResults) -> None:
    entries = key_tables(results)
    assert [entry.title for entry in entries] == TITLES
    assert all(not entry.table.empty for entry in entries)
    readings = {entry.title: entry.reading for entry in entries}
    tables = {entry.title: entry.table for entry in entries}

    # two temperatures: comparisons use the one with most runs (0.003 / 16), and say so
    comparable, note = one_temperature(results)
    assert note.startswith("at T = 0.000188") and len(comparable.runs) == 8
    transfer = transfer_table(comparable)
    pd.testing.assert_frame_equal(tables[TRANSFER], transfer)
    assert set(transfer["variant"]) == {"digits1+digits2", "digits1+digits2:pcgrad", "digits1+digits2:it_mtl"}
    assert note in readings[TRANSFER]
    for row in transfer.itertuples():
        assert f"{row.variant} " in readings[TRANSFER]
        sentence = describe_effect(str(row.variant), str(row.task), float(row.delta), row.significant)
        assert sentence in readings[TRANSFER]

    factors = tables[FACTOR_TRANSFER]
    assert {"generalization", "min_train_loss"} <= set(factors["factor"])
    assert "min_train_loss" in readings[FACTOR_TRANSFER]

    changes = tables[METHOD_CHANGES]
    assert set(changes["method"]) == {"pcgrad", "it_mtl"} and set(changes["baseline"]) == {"umtg"}
    general = changes[changes["factor"] == "generalization"]
    top = general.loc[general["pct_change"].abs().idxmax()]
    assert (
        f"{top['method']} changes {top['task']}'s generalization by {top['pct_change']:+.1f}%"
        in (readings[METHOD_CHANGES])
    )

    best = tables[BEST_TEMPERATURES]  # only digits1 alone was run at two temperatures
    expected = best_temperatures(temperature_table(results))
    expected = expected[(expected["variant"] == "digits1")].reset_index(drop=True)
    pd.testing.assert_frame_equal(best.reset_index(drop=True), expected)
    assert f"digits1 alone is best at T = {float(best['temperature'].iloc[0]):.3g}" in readings[BEST_TEMPERATURES]
    assert f"{float(best['mean'].iloc[0]):.3f}" in readings[BEST_TEMPERATURES]

    affinity = tables[AFFINITY]
    assert list(affinity.columns) == ["source", "digits1", "digits2"]
    assert list(affinity["source"]) == ["digits1", "digits2"]
    assert "best grouping is" in readings[AFFINITY] and "digits1+digits2 (2 runs" in readings[AFFINITY]

    wins = tables[ITMTL_WINS]
    assert list(wins["label"]) == ["digits1", "digits2", "umtg"]
    assert set(wins["steps"]) == {40} and wins["fraction"].sum() == pytest.approx(1.0)
    top_wins = wins.loc[wins["fraction"].idxmax()]
    assert f"{top_wins['label']} at {100 * top_wins['fraction']:.1f}% of steps" in readings[ITMTL_WINS]
    assert f"({top_wins['wins']} of 40 over 2 runs)" in readings[ITMTL_WINS]


def test_key_tables_say_what_to_run_when_inputs_are_missing(results: RunResults) -> None:
    runs = results.runs[(results.runs["method"] == "umtg") & (results.runs["num_tasks"] == 2)]
    records = results.records[results.records["run_id"].isin(set(runs["run_id"]))]
    plain = RunResults(runs=runs, records=records[records["split"] != "probe"])
    entries = key_tables(plain)
    assert [entry.title for entry in entries] == TITLES
    assert all(entry.table.empty for entry in entries)
    readings = {entry.title: entry.reading for entry in entries}
    assert "No completed single-task runs" in readings[TRANSFER] and "setting.tasks=[" in readings[TRANSFER]
    assert "No probes were recorded" in readings[FACTOR_TRANSFER]
    assert "Only umtg multi-task method" in readings[METHOD_CHANGES]
    assert "one temperature" in readings[BEST_TEMPERATURES] and "optimizer.lr" in readings[BEST_TEMPERATURES]
    assert "affinity probe" in readings[AFFINITY]
    assert "method.name=it_mtl" in readings[ITMTL_WINS]
    assert list(entries[0].table.columns) == list(transfer_table(results).columns)


def test_key_tables_of_single_task_runs_only(results: RunResults) -> None:
    runs = results.runs[results.runs["num_tasks"] == 1]
    only = RunResults(runs=runs, records=results.records[results.records["run_id"].isin(set(runs["run_id"]))])
    readings = {entry.title: entry for entry in key_tables(only)}
    assert "No completed multi-task runs" in readings[TRANSFER].reading
    assert readings[TRANSFER].table.empty
    assert not readings[BEST_TEMPERATURES].table.empty  # the lr sweep of digits1 alone still has a best T


def test_one_number_format_with_four_significant_digits() -> None:
    from mtlscope.report.tables import format_number

    # the three numbers the report mixed (1.371e-05, 0.007136, -595.893) now read alike: 4 significant digits
    assert format_number(1.371e-05) == "1.371e-05"  # scientific below 0.001
    assert format_number(0.007136) == "0.007136"
    assert format_number(-595.893) == "-595.9"
    assert format_number(0.000674) == "6.740e-04"  # not 0.0007
    assert format_number(-1.3e-5) == "-1.300e-05"
    assert format_number(0.001) == "0.001000" and format_number(0.96634) == "0.9663" and format_number(12.5) == "12.50"
    assert format_number(54321.4) == "54320" and format_number(123456.7) == "1.235e+05"  # scientific from 1e5
    assert format_number(99999.5) == "1.000e+05"  # rounding up crosses into scientific
    assert format_number(0.0) == "0" and format_number(3.0) == "3" and format_number(1020.0) == "1020"
    assert format_number(float("nan")) == "nan" and format_number(float("-inf")) == "-inf"
    assert format_number(np.float32(0.25)) == "0.2500"


def test_every_table_format_uses_the_one_number_format() -> None:
    from mtlscope.report.html import table_html
    from mtlscope.report.tables import format_number

    frame = pd.DataFrame({"name": ["a", "b"], "value": [1.371e-05, -595.893], "other": [0.007136, math.nan]})
    expected = [format_number(v) for v in (1.371e-05, -595.893, 0.007136)]
    for text in (to_markdown(frame), to_latex(frame), table_html(frame)):
        for number in expected:
            assert number in text
        assert "595.893" not in text and "0.000014" not in text
    assert "<td>–</td>" in table_html(frame)  # a missing value in the report
