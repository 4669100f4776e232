"""Variants that share a method (two ``it_mtl`` candidate sets, as in the itmtl-table2 presets) stay apart in
the key tables, their readings and the preset outputs: nothing is grouped by method alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mtlscope.report.summary import ITMTL_WINS, METHOD_CHANGES, key_tables
from mtlscope.reproduce.outputs import build_output
from mtlscope.runs import RunResults, execute, load, validate_config

VARIANTS = {
    "MTL": {"name": "umtg"},
    "IT-MTL": {"name": "it_mtl", "candidates": ["singles", "umtg"]},
    "IT-PCGrad": {"name": "it_mtl", "candidates": ["umtg", "pcgrad"]},
}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> RunResults:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("variants") / "runs"
    for name, method in VARIANTS.items():
        for seed in (0, 1):
            config = {
                "name": name,
                "setting": {"name": "digits-mtl", "tasks": ["digits1", "digits2"]},
                "model": {"encoder": {"name": "mlp", "hidden": [32, 8]}},
                "method": method,
                "optimizer": {"name": "adam", "lr": 0.003},
                "training": {"steps": 12, "eval_every": 4, "batch_size": 16, "diagnostics_every": 1},
                "seed": seed,
            }
            assert execute(validate_config(config), out).status == "completed"
    return load(out)


def test_method_changes_entry_has_one_row_per_variant(results: RunResults) -> None:
    entry = {e.title: e for e in key_tables(results)}[METHOD_CHANGES]
    general = entry.table[entry.table["factor"] == "generalization"]
    assert sorted(general["variant"].unique()) == ["IT-MTL", "IT-PCGrad"]
    assert len(general) == 4  # 2 variants x 2 tasks, not 2 method rows averaging both variants
    for variant in ("IT-MTL", "IT-PCGrad"):
        assert f"{variant} (it_mtl) changes" in entry.reading


def test_candidate_wins_entry_and_output_keep_variants_apart(results: RunResults, tmp_path: Path) -> None:
    entry = {e.title: e for e in key_tables(results)}[ITMTL_WINS]
    table = entry.table
    assert set(table["variant"]) == {"IT-MTL", "IT-PCGrad"}
    assert sorted(table.loc[table["variant"] == "IT-MTL", "label"]) == ["digits1", "digits2", "umtg"]
    assert sorted(table.loc[table["variant"] == "IT-PCGrad", "label"]) == ["pcgrad", "umtg"]
    assert set(table["steps"]) == {24}  # 12 steps x 2 seeds of one variant
    assert "IT-MTL on digits1+digits2 chose" in entry.reading and "IT-PCGrad on digits1+digits2 chose" in entry.reading

    produced = build_output("candidate_wins", results, tmp_path, "wins", {})
    assert produced.table is not None
    per_variant = produced.table.groupby("variant")["fraction"].sum()
    assert per_variant.to_dict() == pytest.approx({"IT-MTL": 1.0, "IT-PCGrad": 1.0})


def test_report_keeps_variants_apart_and_fits_its_inventory(results: RunResults, tmp_path: Path) -> None:
    import re

    from mtlscope.report.html import INVENTORY_COLUMNS, write_report

    page = write_report(results, tmp_path / "report.html").read_text()
    inventory = page[page.index('<section id="inventory">') :]
    header = re.findall(r"<th>([^<]+)</th>", inventory[: inventory.index("</thead>")])
    assert header == [c for c in INVENTORY_COLUMNS if c in results.runs]  # no optimizer, planned_steps columns
    assert "<td>12/12</td>" in inventory  # steps done/planned in one column
    assert '<div class="inventory"><div class="table">' in page  # scrolls within its box when wider than the page
    # generic report: what cannot be drawn is one list in the last section, nothing of it before
    sections = re.findall(r'<section id="([^"]+)">', page)
    assert sections == ["overview", "tables", "figures", "inventory", "not-shown"]
    body, last = page[: page.index('<section id="not-shown">')], page[page.index('<section id="not-shown">') :]
    assert "Needs " not in body and 'class="missing"' not in body
    assert last.count("<li>") == len(set(re.findall(r"<li><b>([^<]+)</b>", last)))  # each listed once
    assert "IT-MTL (it_mtl) changes" in page and "IT-PCGrad (it_mtl) changes" in page


def test_affinity_entry_uses_one_variant() -> None:
    """Two umtg variants on one task set (e.g. two loss scales): the entry shows one variant's matrix, not the
    mean of both."""
    import pandas as pd

    from mtlscope.report.summary import AFFINITY

    runs, records = [], []
    for variant, value in (("C=1", 0.2), ("C=2", -0.4)):
        for seed in (0, 1):
            run_id = f"{variant}-{seed}"
            runs.append(
                {
                    "run_id": run_id,
                    "status": "completed",
                    "variant": variant,
                    "tasks": "a+b",
                    "num_tasks": 2,
                    "method": "umtg",
                    "seed": seed,
                    "temperature": 0.001,
                }
            )
            for source in "ab":
                for target in "ab":
                    records.append((run_id, 10, 1.0, target, "probe", f"affinity_overall/{source}", value))
    columns = ["run_id", "step", "epoch", "task", "split", "metric", "value"]
    results = RunResults(pd.DataFrame(runs), pd.DataFrame(records, columns=columns))
    entry = {e.title: e for e in key_tables(results)}[AFFINITY]
    assert entry.table.set_index("source").to_numpy().tolist() == [[0.2, 0.2], [0.2, 0.2]]  # not 0.2 and -0.4 mixed
    assert entry.reading.startswith("In C=1 on a+b (2 runs; 1 other variant on these tasks)")


def test_affinity_heatmap_runs_are_one_variant_per_task_set() -> None:
    """The heatmap combines task sets (a+b, a+c) but never variants: umtg's runs, not umtg's mixed with pcgrad's."""
    import pandas as pd

    from mtlscope.analysis import affinity_matrix
    from mtlscope.report.summary import affinity_runs

    runs, records = [], []
    for variant, method, tasks, value in (
        ("a+b", "umtg", "ab", 0.2),
        ("a+b:pcgrad", "pcgrad", "ab", -0.4),
        ("a+c", "umtg", "ac", 0.1),
    ):
        for seed in (0, 1):
            run_id = f"{variant}-{seed}"
            runs.append(
                {
                    "run_id": run_id,
                    "status": "completed",
                    "variant": variant,
                    "tasks": "+".join(tasks),
                    "num_tasks": 2,
                    "method": method,
                    "seed": seed,
                }
            )
            for source in tasks:
                for target in tasks:
                    records.append((run_id, 10, 1.0, target, "probe", f"affinity_overall/{source}", value))
    columns = ["run_id", "step", "epoch", "task", "split", "metric", "value"]
    results = RunResults(pd.DataFrame(runs), pd.DataFrame(records, columns=columns))
    chosen, left_out = affinity_runs(results)
    assert sorted(chosen["variant"].unique()) == ["a+b", "a+c"] and left_out == 1
    matrix = affinity_matrix(results.records[results.records["run_id"].isin(set(chosen["run_id"]))])
    assert matrix.loc["a", "b"] == pytest.approx(0.2) and matrix.loc["a", "c"] == pytest.approx(0.1)
