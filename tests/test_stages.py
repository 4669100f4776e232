"""Staged presets (``mtlscope.reproduce.stages``): a later stage trains the groups of an earlier stage's grouping
(Fifty et al. Fig. 4). The derivation from known affinity matrices, strict stage specs, an end-to-end staged
preset that resumes, reuses finished runs and is reproducible from its files, and one process per directory."""

from __future__ import annotations

import copy
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from mtlscope.analysis.affinity import affinity_matrix
from mtlscope.analysis.grouping import group_tasks
from mtlscope.analysis.trajectories import checkpoint_table
from mtlscope.cli import main
from mtlscope.reproduce import load_preset, reproduce
from mtlscope.reproduce.preset import OutputSpec
from mtlscope.reproduce.stages import derive_grouping, groups_to_train, read_grouping, stage_sweep
from mtlscope.runs import ConfigError
from mtlscope.runs.locking import InUseError, hold_directory
from mtlscope.runs.results import RunResults, load
from mtlscope.sweeps.spec import expand, load_sweep

TASKS = ["digits1", "digits2", "noisy-digits"]
OPTIONS = {"digits1_size": 64, "val_size": 100, "test_size": 100}
STAGED: dict[str, Any] = {
    "name": "staged",
    "title": "A staged preset for the tests",
    "paper": "none",
    "description": "Three digits-mtl tasks with the affinity probe, then the groups of 1 and 2 splits.",
    "sweep": {
        "base": {
            "setting": {"name": "digits-mtl", "tasks": TASKS, "options": OPTIONS},
            "model": {"encoder": {"name": "mlp", "hidden": [8]}},
            "training": {"batch_size": 32, "steps": 4, "eval_every": 2},
            "probes": {"affinity": {"every_steps": 2}},
        },
        "seeds": 2,
    },
    "outputs": [{"kind": "task_grouping", "name": "grouping", "splits": [1, 2]}],
    "stages": [
        {
            "name": "groups",
            "from": {"output": "grouping", "splits": [1, 2]},
            "baselines": ["single_task"],
            "outputs": [
                {"kind": "grouping_evaluation", "name": "fig4", "reference": {"paper": {2: 3.0, 4: 1.0}}},
                {"kind": "grouping_evaluation", "name": "fig4-acc", "metric": "accuracy", "aggregate": "mean"},
            ],
        }
    ],
}


def _write(tmp_path: Path, data: dict[str, Any], name: str = "staged.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return path


def _stage(changes: dict[str, Any]) -> dict[str, Any]:
    data = copy.deepcopy(STAGED)
    data["stages"][0].update(changes)
    return data


# -- deriving the runs from a grouping ------------------------------------------------------------------------


def _affinity_results(matrix: pd.DataFrame) -> RunResults:
    """One completed multi-task run whose affinity records are ``matrix`` (A[source, target])."""
    tasks = list(matrix.columns)
    runs = pd.DataFrame([{"run_id": "r", "status": "completed", "num_tasks": len(tasks), "tasks": "+".join(tasks)}])
    records = pd.DataFrame(
        [
            {
                "run_id": "r",
                "step": 10,
                "epoch": 1.0,
                "task": target,
                "split": "probe",
                "metric": f"affinity_overall/{source}",
                "value": float(matrix.loc[source, target]),
            }
            for source in tasks
            for target in tasks
        ]
    )
    return RunResults(runs, records)


# a helps b and b helps a; c helps a much more than b does, a and b hurt c
KNOWN = pd.DataFrame(
    [[1.0, 1.0, -0.5], [1.0, 1.0, -1.0], [2.0, -1.0, 1.0]], index=["a", "b", "c"], columns=["a", "b", "c"]
)


def test_the_groups_of_a_known_affinity_matrix_are_derived_and_shared_groups_trained_once() -> None:
    # by hand (a task alone scores 0; a task's score in a group: the mean affinity onto it from the others):
    # 2 splits: {a, b} + {a, c} -> a 2 (from c), b 1, c -0.5: total 2.5, beating {a, b} + {c} (2);
    # 3 splits: {a, b} + {a, c} + {c} -> 2 + 1 + 0 = 3
    stage = _load(STAGED).stages[0]
    stage = type(stage)(**{**stage.__dict__, "splits": (2, 3), "baselines": ("single_task", "all_tasks")})
    source = OutputSpec("task_grouping", "grouping", {}, {"splits": [2, 3]})
    record = derive_grouping(stage, source, _affinity_results(KNOWN))
    budgets = {budget["splits"]: budget for budget in record["budgets"]}
    assert budgets[2]["groups"] == [["a", "b"], ["a", "c"]] and budgets[2]["score"] == pytest.approx(2.5 / 3)
    assert budgets[2]["served_by"] == {"a": ["a", "c"], "b": ["a", "b"], "c": ["a", "c"]}
    assert budgets[3]["groups"] == [["a", "b"], ["a", "c"], ["c"]] and budgets[3]["score"] == pytest.approx(1.0)
    # {a, b} and {a, c} chosen for both budgets: once; then the baselines not already there ({c} is)
    assert record["groups"] == [["a", "b"], ["a", "c"], ["c"], ["a"], ["b"], ["a", "b", "c"]]
    assert record["tasks"] == ["a", "b", "c"] and record["affinity"] == KNOWN.to_numpy().tolist()


def test_groups_to_train_matches_groups_whatever_their_task_order() -> None:
    from mtlscope.analysis.grouping_evaluation import BudgetGrouping

    budgets = [BudgetGrouping(2, (("a", "b"), ("c",))), BudgetGrouping(3, (("b", "a"), ("c",), ("a", "c")))]
    assert groups_to_train(budgets, ["a", "b", "c"]) == [("a", "b"), ("c",), ("a", "c")]
    assert groups_to_train(budgets, ["a", "b", "c"], ["all_tasks"])[-1] == ("a", "b", "c")


def _load(data: dict[str, Any], tmp: Path | None = None) -> Any:
    import tempfile

    directory = Path(tmp or tempfile.mkdtemp())
    return load_preset(_write(directory, data))


def test_a_stage_sweep_is_the_first_sweep_with_the_groups_as_tasks(tmp_path: Path) -> None:
    preset = _load(STAGED, tmp_path)
    groups = [["digits1", "digits2"], ["noisy-digits"]]
    sweep = stage_sweep(preset, preset.stages[0], groups, ["training.steps=3"])
    first = expand(preset.sweep, preset.source, preset.base_dir, ["training.steps=3"]).configs
    configs = expand(sweep, "stage").configs
    assert [config.setting.tasks for config in configs] == [groups[0], groups[0], groups[1], groups[1]]
    assert [config.seed for config in configs] == [0, 1, 0, 1]
    varying = ("setting", "seed", "identity")  # identity: the fingerprint of the tasks' data
    reference = {key: value for key, value in first[0].to_dict().items() if key not in varying}
    for config in configs:  # the same config (the override included) apart from the tasks and the seed
        mine = config.to_dict()
        assert mine["training"]["steps"] == 3
        assert mine["setting"]["options"] == first[0].to_dict()["setting"]["options"]
        assert {key: value for key, value in mine.items() if key not in varying} == reference
    changed = _load(_stage({"sweep": {"seeds": [5], "overrides": {"training.steps": 2}}}), tmp_path)
    sweep = stage_sweep(changed, changed.stages[0], groups, ["training.steps=3"])  # the command's override last
    assert [(c.seed, c.training.steps) for c in expand(sweep, "stage").configs] == [(5, 3), (5, 3)]


# -- strict stage specs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": 1}, r"stages\[0\]\.colour: unknown key; expected one of: name, description, from"),
        ({"name": "a/b"}, r"stages\[0\]\.name: expected a file stem"),
        ({"from": {"output": "grouping2"}}, r"from\.output: 'grouping2' is not an output of an earlier stage; its"),
        ({"from": {"output": "fig4"}}, r"from\.output: 'fig4' is not an output of an earlier stage"),
        ({"from": {"output": "grouping", "splits": [2, 3]}}, r"from\.splits: 3 is not a split budget that output"),
        ({"from": {"output": "grouping", "splits": 2}}, r"from\.splits: expected a non-empty list"),
        ({"from": {"output": "grouping", "split": [2]}}, r"from\.split: unknown key"),
        ({"from": "grouping"}, r"stages\[0\]\.from: expected a mapping with output"),
        ({"baselines": ["single"]}, r"baselines: expected a list of distinct values among single_task, all_tasks"),
        ({"sweep": {"base": {}}}, r"sweep\.base: a stage keeps the first stage's base config"),
        ({"sweep": {"zip": {"setting.tasks": [["digits1"]]}}}, r"sweep: the first stage's sweep sweeps setting.tasks"),
        ({"results": "best"}, r"stages\[0\]\.results: expected one of final, all"),
        ({"outputs": []}, r"stages\[0\]\.outputs: expected a non-empty list"),
        ({"outputs": [{"kind": "grouping_evaluation", "name": "grouping"}]}, r"outputs\[0\]\.name: 'grouping' is used"),
        ({"outputs": [{"kind": "grouping_evaluation", "serve": "test"}]}, r"output\.serve: expected one of"),
        ({"outputs": [{"kind": "grouping_evaluation", "reference": {"x": {"two": 1}}}]}, r"output\.reference"),
    ],
)
def test_bad_stage_specs_are_one_line_errors_naming_the_field(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    path = _write(tmp_path, _stage(change))
    with pytest.raises(ConfigError, match=message) as error:
        load_preset(path)
    assert "\n" not in str(error.value) and str(path) in str(error.value)


def test_stage_list_and_source_kind_errors(tmp_path: Path) -> None:
    for stages, message in [
        ([], r"stages: expected a non-empty list"),
        ([STAGED["stages"][0], STAGED["stages"][0]], r"stages\[1\]\.name: 'groups' is the name of an earlier stage"),
        ([{"name": "x", "outputs": [{"kind": "transfer_table"}]}], r"stages\[0\]\.from: required key is missing"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_preset(_write(tmp_path, {**STAGED, "stages": stages}))
    data = {**STAGED, "outputs": [*STAGED["outputs"], {"kind": "affinity_matrix", "name": "affinity"}]}
    data["stages"] = [{**STAGED["stages"][0], "from": {"output": "affinity"}}]
    with pytest.raises(ConfigError, match=r"'affinity' is a affinity_matrix output; a stage derives its runs from"):
        load_preset(_write(tmp_path, data))
    first = {**STAGED, "sweep": {**STAGED["sweep"], "auxiliary_sets": {"target": "digits1"}}}
    with pytest.raises(ConfigError, match=r"draws auxiliary_sets.*remove it with auxiliary_sets: null"):
        load_preset(_write(tmp_path, first))


def test_a_stage_sweep_that_cannot_expand_stops_before_anything_is_written(tmp_path: Path) -> None:
    path = _write(tmp_path, _stage({"sweep": {"seeds": 0}}))
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=r"stages\[0\] \(groups\): seeds: expected a positive count"):
        reproduce(path, out, progress=False)
    assert not out.exists()
    assert main(["reproduce", str(path), "--out", str(out)]) == 2 and not out.exists()


# -- end to end ---------------------------------------------------------------------------------------------------


def _best_validation_test_loss(records: pd.DataFrame, run_id: str, task: str) -> float:
    """An independent path: the test loss at the checkpoint with the lowest validation loss."""
    table = checkpoint_table(records, run_id, task, "loss").dropna(subset=["val", "test"])
    return float(table.loc[table["val"].idxmin(), "test"])


def test_a_staged_preset_trains_every_group_once_resumes_and_is_reproducible_from_its_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = reproduce(_write(tmp_path, STAGED), out, progress=False)
    assert not result.failed_outputs, [(o.spec.name, o.error) for o in result.failed_outputs]
    stage_dir = out / "stages" / "groups"
    record = read_grouping(stage_dir / "grouping.json")
    # the grouping is group_tasks on the affinity matrix of the first stage's runs (an independent path)
    first = load(out / "runs")
    matrix = affinity_matrix(first.records).fillna(0.0)
    budgets = {budget["splits"]: budget for budget in record["budgets"]}
    assert budgets[1]["groups"] == [TASKS]
    assert budgets[2]["groups"] == [list(group) for group in group_tasks(matrix, 2).groups]
    expected = [TASKS] + [g for g in budgets[2]["groups"] if g != TASKS]
    expected += [[task] for task in TASKS if [task] not in expected]
    assert record["groups"] == expected
    # one run per distinct group and seed; the all-task runs copied from the first stage, not trained again
    runs = load(stage_dir / "runs").runs
    assert sorted(runs["tasks"]) == sorted("+".join(group) for group in expected for _ in range(2))
    assert set(first.runs["run_id"]) <= set(runs["run_id"])
    assert "2 finished runs copied from earlier stages" in result.stages[0].log
    assert result.runs == 2 + 2 * len(expected) and result.counts == {"completed": 2 + 2 * len(expected)}
    # reproducible from the files alone: the stage's sweep file gives the same run ids
    assert sorted(load_sweep(stage_dir / "sweep.yaml").run_ids()) == sorted(runs["run_id"])
    # the Fig. 4 table: the single-task row recomputed from the records, the measured rows from the served table
    stage_runs = load(stage_dir / "runs")
    table = pd.read_csv(out / "tables" / "fig4.csv")
    served = pd.read_csv(out / "tables" / "fig4-served.csv")
    singles = stage_runs.runs[stage_runs.runs["num_tasks"] == 1]
    totals = [
        sum(_best_validation_test_loss(stage_runs.records, run.run_id, run.tasks) for run in rows.itertuples())
        for _, rows in singles.groupby("seed")
    ]
    single = table[table["grouping"] == "single-task"].iloc[0]
    assert single["splits"] == 3 and single["seeds"] == 2
    assert single["value"] == pytest.approx(np.mean(totals)) and single["std"] == pytest.approx(np.std(totals, ddof=1))
    for row in table[table["source"] == "measured"].itertuples():
        mine = served[(served["grouping"] == row.grouping) & (served["splits"] == row.splits)]
        assert row.value == pytest.approx(mine["test"].sum())  # every seed shared: the mean of the seed totals
    references = table[table["source"] == "reference"]
    assert references[["grouping", "splits", "value"]].to_dict("records") == [
        {"grouping": "paper", "splits": 2, "value": 3.0}
    ]
    assert {"fig4.png", "fig4.svg", "fig4-acc.png"} <= {path.name for path in (out / "figures").iterdir()}
    summary = (out / "summary.md").read_text()
    assert "- stage groups: from output grouping (split budgets 1, 2)" in summary
    assert "## fig4 (grouping_evaluation), stage groups" in summary

    # resuming: nothing runs again in either stage, nothing is copied again, the stage's files are the same
    records = {path: path.stat().st_mtime_ns for path in out.rglob("records.csv")}
    grouping_text = (stage_dir / "grouping.json").read_text()
    again = reproduce(_write(tmp_path, STAGED), out, progress=False)
    assert f"({2 * len(expected)} already done)" in again.stages[0].log and "copied" not in again.stages[0].log
    assert {path: path.stat().st_mtime_ns for path in out.rglob("records.csv")} == records
    assert (stage_dir / "grouping.json").read_text() == grouping_text
    assert json.loads(grouping_text)["from"] == {
        "output": "grouping",
        "kind": "task_grouping",
        "options": {"splits": [1, 2]},
        "where": {},
    }


def test_a_second_process_on_the_output_directory_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    held = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with hold_directory(out):
            held.set()
            release.wait(30)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert held.wait(30)
        with pytest.raises(InUseError, match="is in use by mtlscope pid"):
            reproduce(_write(tmp_path, STAGED), out, progress=False)
        assert sorted(path.name for path in out.iterdir()) == [".mtlscope.lock"]  # nothing else written
    finally:
        release.set()
        thread.join()


def test_a_stage_whose_source_output_fails_does_not_run_and_says_why(tmp_path: Path) -> None:
    data = copy.deepcopy(STAGED)
    del data["sweep"]["base"]["probes"]
    data["sweep"]["seeds"] = 1
    out = tmp_path / "out"
    result = reproduce(_write(tmp_path, data), out, progress=False)
    assert result.stages[0].error.startswith("its source output 'grouping' was not produced (no affinity_overall")
    failed = {output.spec.name: output.error for output in result.failed_outputs}
    assert set(failed) == {"grouping", "fig4", "fig4-acc"}
    assert failed["fig4"].startswith("stage 'groups' did not run: its source output 'grouping' was not produced")
    assert not (out / "stages").exists() and "stage groups: from output grouping" in (out / "summary.md").read_text()
    assert main(["reproduce", str(_write(tmp_path, data)), "--out", str(out)]) == 1


def test_the_dry_run_lists_the_stages(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "dry"
    assert main(["reproduce", str(_write(tmp_path, STAGED)), "--dry-run", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "then stage groups: one set of runs per distinct group of output grouping (split budgets 1, 2)" in printed
    assert "outputs: fig4 (grouping_evaluation), fig4-acc (grouping_evaluation)" in printed
    assert not out.exists()
