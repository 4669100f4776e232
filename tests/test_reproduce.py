"""Paper presets and ``mtlscope reproduce``: every shipped preset is valid; a reproduction writes its outputs,
report and summary from the right runs, resumes, and records what it could not produce."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from mtlscope.cli import main
from mtlscope.reproduce import OUTPUTS, available_presets, load_preset, reproduce
from mtlscope.reproduce.runner import check_data, check_settings, select_runs
from mtlscope.rl.config import ENVIRONMENT_SETTINGS
from mtlscope.runs import ConfigError
from mtlscope.runs.results import RunResults
from mtlscope.settings import SETTINGS_REGISTRY
from mtlscope.sweeps import protocol
from mtlscope.sweeps.spec import expand

PRESETS = available_presets()
MINIS = [name for name in PRESETS if name.endswith("-mini")]


def test_every_figure_family_has_a_mini_and_a_full_preset() -> None:
    assert len(MINIS) >= 10
    for name in MINIS:
        preset = load_preset(name)
        assert preset.full == name.removesuffix("-mini")
        assert preset.full in PRESETS, f"{name}: its full preset {preset.full} is missing"
        full = load_preset(preset.full)
        assert full.mini == name
        assert {spec.kind for spec in preset.outputs} <= {spec.kind for spec in full.outputs}


@pytest.mark.parametrize("name", MINIS)
def test_mini_presets_expand_on_the_embedded_settings(name: str) -> None:
    preset = load_preset(name)
    assert set(preset.settings) <= {*SETTINGS_REGISTRY.available(), *ENVIRONMENT_SETTINGS}
    check_settings(preset)  # runnable here
    if preset.has_protocol:
        plan = protocol.plan_protocol(preset.sweep, preset.source, preset.base_dir)
        configs = [candidate.config for candidate in plan.candidates]
    else:
        configs = list(expand(preset.sweep, preset.source, preset.base_dir).configs)
    assert configs and len({config.run_id() for config in configs}) == len(configs)
    assert all(spec.kind in OUTPUTS.available() for spec in preset.outputs)


@pytest.mark.parametrize("name", [name for name in PRESETS if not name.endswith("-mini")])
def test_full_presets_name_the_setting_they_wait_for(name: str) -> None:
    preset = load_preset(name)
    available = {*SETTINGS_REGISTRY.available(), *ENVIRONMENT_SETTINGS}
    missing = [setting for setting in preset.settings if setting not in available]
    if not missing:
        pytest.skip(f"{name}: its settings exist")
    with pytest.raises(ConfigError, match=rf"needs the setting '{missing[0]}'.*run {preset.mini} for its analogue"):
        check_settings(preset)
    assert main(["reproduce", name, "--dry-run"]) == 2


#: The full presets whose settings are real-data settings: without their data files they stop with the catalog's
#: one line (temperature-fig3 with cityscapes' line). Environment settings (metaworld) read no data files.
REAL_DATA_PRESETS = [
    name
    for name in PRESETS
    if not name.endswith("-mini") and load_preset(name).sweep["base"]["setting"]["name"] not in ENVIRONMENT_SETTINGS
]


@pytest.mark.parametrize("name", REAL_DATA_PRESETS)
def test_full_presets_without_data_stop_with_one_line_before_writing(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Passes once the settings are merged (skipped before): an empty data directory gives the catalog's
    MissingDataError as one line (expected path, `mtlscope data`), exit code 2, and no output directory."""
    preset = load_preset(name)
    available = {*SETTINGS_REGISTRY.available(), *ENVIRONMENT_SETTINGS}
    missing = [setting for setting in preset.settings if setting not in available]
    if missing:
        pytest.skip(f"{name}: needs {', '.join(missing)} (the real-data settings)")
    monkeypatch.setenv("MTLSCOPE_DATA", str(tmp_path / "no-data"))
    monkeypatch.setenv("MTLSCOPE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ConfigError, match=rf"^{name}: .*missing {re.escape(str(tmp_path / 'no-data'))}.*mtlscope data"):
        check_data(preset)
    out = tmp_path / "out"
    assert main(["reproduce", name, "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "missing" in error and "mtlscope data" in error
    assert not out.exists()


def test_a_preset_whose_data_is_missing_stops_with_the_catalogs_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A setting that locates its files in the catalog (as the real-data settings do) and a preset using it."""
    import numpy as np

    from mtlscope.data import catalog
    from mtlscope.settings import TaskSpec, from_arrays, register

    info = catalog.DatasetInfo(
        "test-squares",
        "test data",
        "https://example.org/squares",
        "none",
        (catalog.DataFile("values", ("squares/values.npy",)),),
    )
    monkeypatch.setitem(catalog.DATASETS, info.name, info)
    monkeypatch.setattr(SETTINGS_REGISTRY, "_entries", dict(SETTINGS_REGISTRY._entries))  # registered for this test

    @register("test-squares", "a setting reading its data from the data directory")
    def squares() -> object:
        values = np.load(catalog.locate("test-squares")["values"])
        x = values.reshape(-1, 1).astype("float32")
        y = (values > values.mean()).astype("int64")
        return from_arrays(
            "test-squares",
            [TaskSpec("big", 2, loss="cross_entropy")],
            {"big": {s: (x, y) for s in ("train", "val", "test")}},
        )

    preset = {
        **TINY,
        "sweep": {"base": {"setting": {"name": "test-squares"}, "training": {"steps": 2, "batch_size": 4}}},
    }
    preset["outputs"] = [{"kind": "transfer_table"}]
    path = _write(tmp_path, preset)
    monkeypatch.setenv("MTLSCOPE_DATA", str(tmp_path / "data"))
    expected = (
        f"tiny: test-squares: missing {tmp_path / 'data' / 'squares' / 'values.npy'}; get it from "
        "https://example.org/squares"
    )
    with pytest.raises(ConfigError) as caught:
        reproduce(path, tmp_path / "out", progress=False)
    assert str(caught.value).startswith(expected) and "`mtlscope data`" in str(caught.value)
    assert "\n" not in str(caught.value) and not (tmp_path / "out").exists()
    assert main(["reproduce", str(path), "--out", str(tmp_path / "cli-out")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {caught.value}"]
    assert not (tmp_path / "cli-out").exists()
    (tmp_path / "data" / "squares").mkdir(parents=True)
    np.save(tmp_path / "data" / "squares" / "values.npy", np.arange(16.0))
    check_data(load_preset(path))  # found: no error


TINY = {
    "name": "tiny",
    "title": "A tiny preset for the tests",
    "paper": "none",
    "reproduces": ["nothing"],
    "description": "Two variants of digits-mtl, two learning rates, two seeds.",
    "sweep": {
        "base": {
            "setting": {"name": "digits-mtl", "tasks": ["digits1"], "options": {"digits1_size": 64}},
            "model": {"encoder": {"name": "mlp", "hidden": [16]}},
            "training": {"batch_size": 64, "epochs": 3},
        },
        "zip": {"setting.tasks": [["digits1"], ["digits1", "digits2"]]},
        "protocol": {"select": {"optimizer.lr": [0.001, 0.01]}, "seeds": 2},
    },
    "outputs": [
        {"kind": "transfer_table"},
        {"kind": "generalization_vs_loss", "name": "fig1", "task": "digits1"},
        {"kind": "learning_curves", "name": "curves", "where": {"tasks": "digits1+digits2"}},
        {"kind": "generalization_table", "by": ["variant", "lr"]},
        {"kind": "smto_quadrants"},  # one method only: cannot be produced, and says so
    ],
}


def _write(tmp_path: Path, data: dict[str, object], name: str = "tiny.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_reproduce_writes_outputs_report_and_summary_from_the_final_runs(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = reproduce(_write(tmp_path, TINY), out, progress=False)
    assert result.runs == 6  # 2 variants x 2 learning rates, then seed 1 of each variant (seed 0 reused)
    assert result.counts == {"completed": 6}
    final = pd.read_csv(out / "runs" / "final.csv")
    tables = {path.name for path in (out / "tables").iterdir()}
    assert {"transfer_table.csv", "transfer_table.md", "transfer_table.tex", "curves.csv"} <= tables
    assert {"fig1.png", "fig1.svg", "curves.png"} <= {path.name for path in (out / "figures").iterdir()}
    generalization = pd.read_csv(out / "tables" / "generalization_table.csv")
    # only the final runs are analysed: each variant at its chosen learning rate, 2 seeds
    assert generalization["n"].tolist() == [2, 2, 2]
    chosen = final.groupby("variant")["optimizer.lr"].first()
    for row in generalization.itertuples():
        assert row.lr == pytest.approx(chosen[row.variant])
    curves = pd.read_csv(out / "tables" / "curves.csv")
    assert curves["variant"].tolist() == ["digits1+digits2"]  # the where filter
    assert [output.spec.kind for output in result.failed_outputs] == ["smto_quadrants"]
    summary = (out / "summary.md").read_text()
    assert "# tiny: A tiny preset for the tests" in summary
    assert "## smto_quadrants (smto_quadrants)\n\nNot produced:" in summary
    assert "| task | variant | st_mean |" in summary
    _check_report_leads_with_the_outputs((out / "report.html").read_text())

    again = reproduce(_write(tmp_path, TINY), out, progress=False)
    lines = again.log.splitlines()  # nothing runs again: both stages were done
    assert "selection 4 runs: 4 completed, 0 diverged, 0 failed (4 already done)" in lines[0]
    assert "final 4 runs: 4 completed, 0 diverged, 0 failed (4 already done)" in again.log


def _check_report_leads_with_the_outputs(page: str) -> None:
    """The preset report: the preset's outputs first, in the preset's order; what cannot be drawn listed once,
    in one list, in the last section; no warning boxes in between."""
    sections = re.findall(r'<section id="([^"]+)"><h2>', page)
    assert sections[0] == "preset" and sections[-1] == "not-shown"
    assert sections[1:-1] == ["overview", "tables", "figures", "inventory"]
    first = page[page.index('<section id="preset">') : page.index('<section id="overview">')]
    headings = re.findall(r"<h3>([^<]+)</h3>", first)
    assert headings == [
        "transfer_table (transfer_table)",
        "fig1 (generalization_vs_loss)",
        "curves (learning_curves)",
        "generalization_table (generalization_table)",
    ]
    assert first.count("<img ") == 2 and first.count("<table") == 3  # fig1, curves (+ its table), 2 tables
    last = page[page.index('<section id="not-shown">') :]
    assert page.count("Preset output smto_quadrants (smto_quadrants)") == 1
    assert "Preset output smto_quadrants (smto_quadrants)" in last
    assert last.count("<ul") == 1 and "Key table: Method changes" in last
    assert "Method changes" not in page[: page.index('<section id="not-shown">')]  # shown once, at the end
    assert 'class="missing"' not in page[: page.index('<section id="not-shown">')]


def test_reproduce_cli_exit_codes_and_dry_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reproduce", "--list"]) == 0
    listed = capsys.readouterr().out
    assert all(f"{name}:" in listed for name in PRESETS)
    assert main(["reproduce", "main-fig1-mini", "--dry-run", "--out", str(tmp_path / "x")]) == 0
    dry = capsys.readouterr().out
    assert "protocol with 9 selection runs of 3 variants" in dry and "outputs: generalization_vs_loss" in dry
    assert not (tmp_path / "x").exists()
    assert main(["reproduce", "no-such-preset"]) == 2
    assert "no-such-preset: unknown preset; available: " in capsys.readouterr().err
    data = {**TINY, "outputs": [{"kind": "transfer_table"}, {"kind": "smto_quadrants"}]}
    path = _write(tmp_path, data)
    assert main(["reproduce", str(path), "--out", str(tmp_path / "cli")]) == 1  # an output was not produced
    assert "not produced: smto_quadrants" in capsys.readouterr().out
    assert main(["reproduce", str(path), "--workers", "0"]) == 2
    capsys.readouterr()
    bad = tmp_path / "bad-override"
    assert main(["reproduce", "main-fig1-mini", "training.batch_size=abc", "--out", str(bad)]) == 2
    assert "training.batch_size" in capsys.readouterr().err
    assert not bad.exists()  # nothing written, not even the directory's lock file


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": 1}, "colour: unknown key; expected one of: name, title"),
        ({"title": ""}, "title: expected a non-empty string"),
        ({"results": "best"}, "results: expected one of final, all"),
        ({"outputs": []}, "outputs: expected a non-empty list"),
        ({"outputs": [{"kind": "histogram"}]}, "outputs\\[0\\]: unknown output 'histogram'; available: affinity"),
        ({"outputs": [{"kind": "transfer_table", "tops": 3}]}, "outputs\\[0\\]: output 'transfer_table' has no option"),
        ({"outputs": [{"kind": "generalization_vs_loss"}]}, "output 'generalization_vs_loss' needs option 'task'"),
        ({"outputs": [{"kind": "transfer_table"}, {"kind": "transfer_table"}]}, "outputs\\[1\\]\\.name: 'transfer"),
        ({"outputs": [{"kind": "transfer_table", "where": [1]}]}, "outputs\\[0\\]\\.where: expected a mapping"),
        ({"sweep": [1]}, "sweep: expected a sweep mapping"),
    ],
)
def test_bad_presets_are_one_line_errors(tmp_path: Path, change: dict[str, object], message: str) -> None:
    path = _write(tmp_path, {**TINY, **change})
    with pytest.raises(ConfigError, match=message) as error:
        load_preset(path)
    assert "\n" not in str(error.value) and str(path) in str(error.value)


def test_missing_required_key_and_missing_file(tmp_path: Path) -> None:
    data = {key: value for key, value in TINY.items() if key != "paper"}
    with pytest.raises(ConfigError, match="paper: required key is missing"):
        load_preset(_write(tmp_path, data))
    with pytest.raises(ConfigError, match=r"nope\.yaml: no such preset file"):
        load_preset(tmp_path / "nope.yaml")


def test_select_runs_matches_numbers_as_numbers_and_text_as_text() -> None:
    runs = pd.DataFrame({"run_id": ["a", "b", "c"], "lr": [0.001, 0.01, 0.001], "method": ["umtg", "pcgrad", "pcgrad"]})
    records = pd.DataFrame({"run_id": ["a", "b", "c", "c"], "value": [1, 2, 3, 4]})
    results = RunResults(runs=runs, records=records)
    assert select_runs(results, {"lr": [1e-3]}).runs["run_id"].tolist() == ["a", "c"]
    chosen = select_runs(results, {"lr": [0.001], "method": ["pcgrad"]})
    assert chosen.runs["run_id"].tolist() == ["c"] and chosen.records["value"].tolist() == [3, 4]
    assert select_runs(results, {"method": ["umtg", "pcgrad"]}).runs["run_id"].tolist() == ["a", "b", "c"]
    with pytest.raises(ValueError, match="where: 'optimizer' is not a column"):
        select_runs(results, {"optimizer": ["adam"]})


@pytest.mark.slow
@pytest.mark.parametrize("name", MINIS)
def test_every_mini_preset_produces_every_output(name: str, tmp_path: Path) -> None:
    """Each mini preset end to end with 2 epochs per run and cheap probes: every run completes and every output
    is produced."""
    cheap = {
        "sharpness": ["subset=128", "iterations=3"],
        "fim_trace": ["subset=128"],
        "grad_cov_trace": ["subset=256", "large_batch=128"],
        "grad_similarity": ["batches=5"],
    }
    probes = load_preset(name).sweep["base"].get("probes") or {}
    overrides = ["training.epochs=2", *(f"probes.{p}.{o}" for p in probes if p in cheap for o in cheap[p])]
    if load_preset(name).sweep["base"]["setting"]["name"] in ENVIRONMENT_SETTINGS:  # a few environment steps
        tiny = "iterations=2 samples_per_iteration=20 gradient_steps=3 batch_size=8 episode_steps=10 hidden=[16]"
        tiny += " eval_episodes=1 transference.every_steps=1"
        overrides = [f"rl.{option}" for option in tiny.split()]
    result = reproduce(name, tmp_path / name, overrides=overrides, progress=False)
    assert set(result.counts) == {"completed"}, result.counts
    assert not result.failed_outputs, [(o.spec.name, o.error) for o in result.failed_outputs]
    assert (tmp_path / name / "report.html").is_file() and (tmp_path / name / "summary.md").is_file()


def test_reproduce_on_a_local_ray_instance_equals_the_local_executor(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    path = _write(tmp_path, {**TINY, "outputs": [{"kind": "transfer_table"}, {"kind": "generalization_table"}]})
    local = reproduce(path, tmp_path / "local", progress=False, threads_per_worker=1)
    on_ray = reproduce(path, tmp_path / "ray", progress=False, executor="ray", threads_per_worker=1)
    assert on_ray.counts == local.counts == {"completed": 6}
    for table in ("transfer_table.csv", "generalization_table.csv"):
        pd.testing.assert_frame_equal(
            pd.read_csv(tmp_path / "ray" / "tables" / table), pd.read_csv(tmp_path / "local" / "tables" / table)
        )


def test_fashion_cpu_preset_expands_on_the_real_fashion_mnist_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Passes once fashion-mtl is merged and the real Fashion-MNIST files are at hand (skipped otherwise): the
    data check finds the files, and the preset expands into its 9 runs (3 variants x 3 seeds)."""
    import os

    from mtlscope.data import catalog

    real = Path(os.environ.get("MTLSCOPE_FASHION_MNIST_DIR", "/work/shared/data/fashion-mnist"))
    if "fashion-mtl" not in SETTINGS_REGISTRY.available() or "fashion-mnist" not in catalog.DATASETS:
        pytest.skip("needs the fashion-mtl setting (the real-data settings)")
    if not real.is_dir():
        pytest.skip(f"no Fashion-MNIST files at {real}")
    data = tmp_path / "data"
    for entry in catalog.dataset_info("fashion-mnist").files:  # each file where the catalog expects it first
        stem = Path(entry.paths[0]).name.removesuffix(".gz")
        found = [real / name for name in (stem + ".gz", stem) if (real / name).is_file()]
        if not found:
            pytest.skip(f"no file for {entry.key} in {real}")
        target = data / entry.paths[0]  # gzipped or not: read_idx tells by the first bytes
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(found[0])
    monkeypatch.setenv("MTLSCOPE_DATA", str(data))
    monkeypatch.setenv("MTLSCOPE_CACHE", str(tmp_path / "cache"))
    preset = load_preset("main-fig1-fashion-cpu")
    check_data(preset)
    configs = list(expand(preset.sweep, preset.source, preset.base_dir).configs)
    assert len({config.run_id() for config in configs}) == len(configs) == 9
    assert {config.training.eval_every for config in configs} == {"log"}


def test_normalized_affinity_output_blanks_and_notes_a_nonpositive_self_affinity(tmp_path: Path) -> None:
    """Fig. 6's normalization on a run whose task 'b' has a negative self-affinity: b's column is NaN with a note
    naming b and its value (never divided by the negative number), the other columns divided by their diagonal."""
    from mtlscope.reproduce.outputs import affinity_matrix

    raw = {("a", "a"): 0.2, ("b", "a"): 0.1, ("a", "b"): -0.03, ("b", "b"): -0.01}
    records = pd.DataFrame(
        [
            {"run_id": "r", "step": 4, "epoch": 1.0, "task": target, "split": "probe"}
            | {"metric": f"affinity_overall/{source}", "value": value}
            for (source, target), value in raw.items()
        ]
    )
    runs = pd.DataFrame({"run_id": ["r"], "status": ["completed"], "num_tasks": [2]})
    produced = affinity_matrix(RunResults(runs=runs, records=records), tmp_path, "normalized", normalize=True)
    assert produced.table is not None
    table = produced.table.set_index("source")
    assert table["b"].isna().all()
    assert table["a"].tolist() == [1.0, 0.5]
    assert produced.notes == [
        "target columns left blank (NaN): their self-affinity is <= 0, no scale to normalize by (b -0.01); "
        "see the raw matrix"
    ]
    assert (tmp_path / "figures" / "normalized.png").is_file()
    plain = affinity_matrix(RunResults(runs=runs, records=records), tmp_path, "raw")
    assert plain.notes == [] and plain.table is not None and plain.table.set_index("source").loc["b", "b"] == -0.01
