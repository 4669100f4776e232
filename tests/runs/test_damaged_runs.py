"""A damaged stored run is skipped, with one warning naming the file and what is wrong; the rest loads.

One test per kind of damage (``load``, and ``mtlscope runs``/``analyze``/``report`` exit 0 with one ``warning:``
line and no traceback), and the values the store writes that must still load (``nan``, ``inf``, quoted names).
"""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from mtlscope.cli import main
from mtlscope.runs import execute, load, read_records, validate_config
from mtlscope.runs.results import DamagedRun, DamagedRunWarning


def _config(tasks: list[str], seed: int) -> dict[str, object]:
    return {
        "setting": {"name": "digits-mtl", "tasks": tasks, "options": {"digits1_size": 80}},
        "model": {"encoder": {"name": "mlp", "hidden": [8]}},
        "training": {"steps": 6, "eval_every": 3, "batch_size": 16},
        "seed": seed,
    }


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three completed runs: digits1 seeds 0 and 1, digits1+digits2 seed 0."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("stored") / "runs"
    for tasks, seed in ((["digits1"], 0), (["digits1"], 1), (["digits1", "digits2"], 0)):
        assert execute(validate_config(_config(tasks, seed)), out).status == "completed"
    return out


@pytest.fixture
def runs(stored: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "runs"
    shutil.copytree(stored, copy)
    return copy


def _victim(runs: Path) -> Path:
    """The run that gets damaged: digits1+digits2 (the two digits1 runs remain for the commands to analyse)."""
    return next(path for path in sorted(runs.iterdir()) if path.name.startswith("digits1+digits2"))


def _edit_yaml(change: Callable[[dict[str, object]], None]) -> Callable[[Path], None]:
    def edit(file: Path) -> None:
        data = yaml.safe_load(file.read_text())
        change(data)
        file.write_text(yaml.safe_dump(data, sort_keys=False))

    return edit


def _edit_json(change: Callable[[dict[str, object]], None]) -> Callable[[Path], None]:
    def edit(file: Path) -> None:
        data = json.loads(file.read_text())
        change(data)
        file.write_text(json.dumps(data))

    return edit


def _records_row(file: Path, index: int, row: str) -> None:
    """Replace data row ``index`` (0 = the first after the header) of records.csv."""
    lines = file.read_text().splitlines(keepends=True)
    lines[index + 1] = row + "\n"
    file.write_text("".join(lines))


def _set(*keys: str, value: object) -> Callable[[dict[str, object]], None]:
    def change(data: dict[str, object]) -> None:
        node: dict[str, object] = data
        for key in keys[:-1]:
            node = node[key]  # type: ignore[assignment]
        node[keys[-1]] = value

    return change


# (id, file, how it is damaged, what the warning says)
DAMAGE: list[tuple[str, str, Callable[[Path], None], str]] = [
    ("status-truncated", "status.json", lambda f: f.write_text(f.read_text()[:25]), "invalid JSON"),
    ("status-empty", "status.json", lambda f: f.write_text(""), "invalid JSON"),
    ("status-list", "status.json", lambda f: f.write_text("[1, 2]"), "expected a JSON object, got a list"),
    ("status-unknown", "status.json", _edit_json(_set("status", value="done")), "status: expected one of running"),
    ("status-steps-type", "status.json", _edit_json(_set("steps", value="many")), "steps: expected an integer"),
    ("status-not-utf8", "status.json", lambda f: f.write_bytes(b'{"status": "\xff\xfe"}'), "not UTF-8 text"),
    ("records-missing", "records.csv", lambda f: f.unlink(), "records.csv: missing"),
    ("records-binary", "records.csv", lambda f: f.write_bytes(bytes(range(256)) * 4), "not UTF-8 text"),
    ("records-binary-utf8", "records.csv", lambda f: f.write_bytes(b"\x00\x01\x02\n\x03\x04\n"), "expected the header"),
    ("records-empty", "records.csv", lambda f: f.write_text(""), "expected the header"),
    (
        "records-wrong-header",
        "records.csv",
        lambda f: f.write_text(f.read_text().replace("step,epoch,task", "step,task,epoch", 1)),
        "line 1: expected the header 'step,epoch,task,split,metric,value'",
    ),
    (
        "records-ragged-long",
        "records.csv",
        lambda f: _records_row(f, 2, "3,0.5,digits1,train,loss,0.25,extra"),
        "line 4: expected 6 fields",
    ),
    ("records-ragged-short", "records.csv", lambda f: _records_row(f, 0, "0,0.0,digits1"), "line 2: expected 6 fields"),
    ("records-blank-line", "records.csv", lambda f: _records_row(f, 1, ""), "line 3: expected 6 fields"),
    (
        "records-value-not-a-number",
        "records.csv",
        lambda f: _records_row(f, 3, "3,0.5,digits1,train,loss,abc"),
        "line 5: value: expected a number, got 'abc'",
    ),
    (
        "records-value-empty",
        "records.csv",
        lambda f: _records_row(f, 3, "3,0.5,digits1,train,loss,"),
        "line 5: value: expected a number, got ''",
    ),
    (
        "records-step-not-an-integer",
        "records.csv",
        lambda f: _records_row(f, 1, "three,0.5,digits1,train,loss,0.1"),
        "line 3: step: expected a non-negative integer, got 'three'",
    ),
    (
        "records-step-fraction",
        "records.csv",
        lambda f: _records_row(f, 1, "1.5,0.5,digits1,train,loss,0.1"),
        "line 3: step: expected a non-negative integer, got '1.5'",
    ),
    (
        "records-epoch-not-a-number",
        "records.csv",
        lambda f: _records_row(f, 1, "3,early,digits1,train,loss,0.1"),
        "line 3: epoch: expected a number, got 'early'",
    ),
    ("records-empty-task", "records.csv", lambda f: _records_row(f, 1, "3,0.5,,train,loss,0.1"), "line 3: task: empty"),
    ("summary-truncated", "summary.json", lambda f: f.write_text(f.read_text()[:40]), "invalid JSON"),
    ("summary-missing", "summary.json", lambda f: f.unlink(), "summary.json: missing"),
    ("summary-list", "summary.json", lambda f: f.write_text("[]"), "expected a JSON object, got a list"),
    ("summary-empty-object", "summary.json", lambda f: f.write_text("{}"), "empty, but status.json says"),
    (
        "summary-wall-time-type",
        "summary.json",
        _edit_json(_set("wall_time_s", value="slow")),
        "wall_time_s: expected a number, got 'slow'",
    ),
    ("summary-timing-type", "summary.json", _edit_json(_set("timing_s", value=[1])), "timing_s: expected an object"),
    (
        "summary-declarations-type",
        "summary.json",
        _edit_json(_set("task_declarations", value=[1])),
        "task_declarations: expected an object, got a list",
    ),
    (
        "summary-declared-direction",
        "summary.json",
        _edit_json(_set("task_declarations", "digits1", "higher_is_better", "accuracy", value="yes")),
        "task_declarations.digits1.higher_is_better: expected an object of metric names to booleans",
    ),
    (
        "summary-declared-primary",
        "summary.json",
        _edit_json(_set("task_declarations", "digits1", "primary_metric", value="auc")),
        "task_declarations.digits1.primary_metric: expected one of the metrics",
    ),
    ("config-missing", "config.yaml", lambda f: f.unlink(), "config.yaml: missing"),
    ("config-invalid-yaml", "config.yaml", lambda f: f.write_text("setting: [digits\n  seed: {"), "invalid YAML"),
    ("config-truncated", "config.yaml", lambda f: f.write_text(f.read_text()[:30]), "setting: expected a valid"),
    ("config-list", "config.yaml", lambda f: f.write_text("- a\n- b\n"), "expected a mapping of keys at the top level"),
    ("config-empty", "config.yaml", lambda f: f.write_text(""), "expected a mapping of keys at the top level"),
    ("config-duplicate-key", "config.yaml", lambda f: f.write_text(f.read_text() + "seed: 5\n"), "duplicate key"),
    (
        "config-alias-bomb",
        "config.yaml",
        lambda f: f.write_text(
            "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
            + "".join(
                f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
                for p, c in zip("abcdefgh", "bcdefghi")
            )
        ),
        "refused",
    ),
    ("config-not-utf8", "config.yaml", lambda f: f.write_bytes(b"seed: \xff\xfe\n"), "not a UTF-8 text file"),
    (
        "config-loss-scale",
        "config.yaml",
        _edit_yaml(_set("training", "loss_scale", value="twice")),
        "training.loss_scale: expected a positive number, 'K' or 'sqrt(K)'",
    ),
    (
        "config-loss-scale-negative",
        "config.yaml",
        _edit_yaml(_set("training", "loss_scale", value=-1)),
        "training.loss_scale",
    ),
    ("config-optimizer-number", "config.yaml", _edit_yaml(_set("optimizer", value=3)), "optimizer:"),
    ("config-tasks-number", "config.yaml", _edit_yaml(_set("setting", "tasks", value=5)), "setting.tasks:"),
    ("config-lr-text", "config.yaml", _edit_yaml(_set("optimizer", "lr", value="fast")), "optimizer.lr:"),
    ("config-seed-text", "config.yaml", _edit_yaml(_set("seed", value="zero")), "seed:"),
    ("config-unknown-method", "config.yaml", _edit_yaml(_set("method", value={"name": "nope"})), "method:"),
    # whole, well-formed files that are not what the run wrote (caught by the store's integrity record)
    (
        "records-truncated-at-a-checkpoint",
        "records.csv",
        lambda f: f.write_text("".join(f.read_text().splitlines(keepends=True)[:-4])),
        "truncated:",
    ),
    (
        "records-duplicated-rows",
        "records.csv",
        lambda f: f.write_text(f.read_text() + "".join(f.read_text().splitlines(keepends=True)[1:4])),
        "rows, ",
    ),
    (
        "records-value-changed",
        "records.csv",
        lambda f: f.write_text(f.read_text().replace(",loss,", ",loss,9", 1)),
        "changed after the run finished",
    ),
    ("environment-truncated", "environment.json", lambda f: f.write_text(f.read_text()[:10]), "invalid JSON"),
    (
        "environment-packages-type",
        "environment.json",
        _edit_json(_set("packages", value="torch")),
        "packages: expected an object",
    ),
]


def _check_cli(runs: Path, file: Path, reason: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``runs``, ``analyze`` and ``report`` exit 0, each with one ``warning:`` line naming the file."""
    report = tmp_path / "report.html"
    for argv in (["runs", str(runs)], ["analyze", str(runs)], ["report", str(runs), "--out", str(report)]):
        assert main(argv) == 0, argv
        captured = capsys.readouterr()
        lines = captured.err.splitlines()
        assert len(lines) == 1, (argv, captured.err)
        assert lines[0].startswith(f"warning: {file}") and reason in lines[0] and "Traceback" not in captured.err
        assert lines[0].endswith("; run skipped")
    page = report.read_text()
    assert "1 damaged run directory was skipped" in page and file.name in page


@pytest.mark.parametrize(("file_name", "damage", "reason"), [d[1:] for d in DAMAGE], ids=[d[0] for d in DAMAGE])
def test_a_damaged_run_is_skipped_with_one_warning_naming_the_file(
    runs: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    file_name: str,
    damage: Callable[[Path], None],
    reason: str,
) -> None:
    intact = load(runs)
    victim = _victim(runs)
    file = victim / file_name
    damage(file)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = load(runs)
    damaged = [w for w in caught if issubclass(w.category, DamagedRunWarning)]
    assert len(damaged) == 1, [str(w.message) for w in caught]
    message = str(damaged[0].message)
    assert message.startswith(str(file)) and reason in message, message
    assert "\n" not in message
    others = intact.runs[intact.runs["run_id"] != victim.name]
    assert results.runs["run_id"].tolist() == others["run_id"].tolist()
    kept = intact.records[intact.records["run_id"] != victim.name].reset_index(drop=True)
    pd.testing.assert_frame_equal(results.records, kept)
    assert results.skipped == [(str(victim), message.removesuffix("; run skipped"))]
    _check_cli(runs, file, reason, tmp_path, capsys)


def test_a_python_tag_in_a_stored_config_is_not_run(runs: Path, tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    victim = _victim(runs)
    (victim / "config.yaml").write_text(f"!!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.warns(DamagedRunWarning, match="config.yaml: invalid YAML"):
        results = load(runs)
    assert not marker.exists()
    assert victim.name not in set(results.runs["run_id"]) and len(results.runs) == 2


def test_every_run_damaged_gives_no_runs_and_says_why(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for path in runs.iterdir():
        (path / "status.json").write_text("{")
    assert main(["runs", str(runs)]) == 0
    captured = capsys.readouterr()
    assert "no runs (3 damaged runs skipped)" in captured.out and captured.err.count("warning: ") == 3
    assert main(["analyze", str(runs)]) == 2
    assert "no runs found" in capsys.readouterr().err


def test_nan_and_inf_values_written_by_the_store_load_as_numbers(runs: Path) -> None:
    victim = _victim(runs)
    # a run still running: its records are not checked against a finished run's integrity record
    _edit_json(_set("status", value="running"))(victim / "status.json")
    file = victim / "records.csv"
    _records_row(file, 0, "0,0.0,digits1,train,loss,nan")
    _records_row(file, 1, "0,0.0,digits1,train,accuracy,inf")
    _records_row(file, 2, "0,0.0,digits1,val,loss,-inf")
    with warnings.catch_warnings():
        warnings.simplefilter("error", DamagedRunWarning)
        records = read_records(victim)
        results = load(runs)
    assert records["value"].iloc[0] != records["value"].iloc[0]  # NaN
    assert records["value"].iloc[1] == float("inf") and records["value"].iloc[2] == float("-inf")
    assert records["step"].dtype == "int64" and records["value"].dtype == "float64"
    assert len(results.runs) == 3 and not results.skipped


def test_quoted_names_and_a_torn_last_line_load(runs: Path) -> None:
    victim = _victim(runs)
    file = victim / "records.csv"
    before = read_records(victim)
    _records_row(file, 0, '0,0.0,digits1,train,"loss, smoothed",0.5')
    file.write_text(file.read_text() + "9,1.0,digits1,tr")  # killed mid-write
    records = read_records(victim)
    assert records["metric"].iloc[0] == "loss, smoothed" and len(records) == len(before)
    assert records.drop(index=0).equals(before.drop(index=0))
    assert records.dtypes.equals(before.dtypes)


def test_a_numeric_string_in_a_stored_config_loads_as_a_number(runs: Path) -> None:
    """Validation as for a run config: ``lr: '0.01'`` is the number 0.01 (it crashed the loader before)."""
    victim = _victim(runs)
    _edit_yaml(_set("optimizer", "lr", value="0.01"))(victim / "config.yaml")
    with warnings.catch_warnings():
        warnings.simplefilter("error", DamagedRunWarning)
        results = load(runs)
    row = results.runs.set_index("run_id").loc[victim.name]
    assert row["lr"] == 0.01 and row["temperature"] == pytest.approx(0.01 / 16)


def test_read_records_raises_damaged_run_with_the_line(runs: Path) -> None:
    victim = _victim(runs)
    _records_row(victim / "records.csv", 4, "4,0.5,digits1,train,loss,0x")
    with pytest.raises(DamagedRun) as raised:
        read_records(victim)
    assert raised.value.file == victim / "records.csv" and raised.value.line == 6
    assert str(raised.value) == f"{victim / 'records.csv'}, line 6: value: expected a number, got '0x'"


def test_subset_keeps_the_skipped_runs_of_the_kept_ids(runs: Path) -> None:
    victim = _victim(runs)
    (victim / "status.json").write_text("")
    with pytest.warns(DamagedRunWarning):
        results = load(runs)
    assert results.subset({victim.name}).skipped == results.skipped
    kept = results.subset(set(results.runs["run_id"]))
    assert kept.skipped == [] and len(kept.runs) == 2


def test_a_stored_run_declares_its_tasks(stored: Path) -> None:
    """The summary says each task's loss, Fisher labels, primary metric and metric directions."""
    declared = load(stored).runs["task_declarations"].tolist()
    expected = {
        "loss": "cross_entropy",
        "fisher": "categorical",
        "primary_metric": "accuracy",
        "higher_is_better": {"loss": False, "accuracy": True, "macro_f1": True},
    }
    assert sorted(sorted(row) for row in declared) == [["digits1"], ["digits1"], ["digits1", "digits2"]]
    assert all(value == expected for row in declared for value in row.values())
