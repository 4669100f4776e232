"""Files read from disk are data, never code: a malicious ``state.pt``, weights file or a YAML tag in any file the
project reads runs nothing and gives a clean restart, error or warning.

Run directories travel between machines (rsync from cluster nodes), so every reader is covered: the saved state
(``torch.load``), the weights (``load_model``: safetensors), configs, overrides, sweep and preset files
(``yaml.safe_load``), a stored ``config.yaml``, and the sweep manifest (``json``). A planted payload would create
a marker file; the marker must never appear.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import pickle
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from mtlscope.cli import main
from mtlscope.runs import WeightsError, execute, load, load_model, validate_config
from mtlscope.runs.results import DamagedRunWarning
from mtlscope.runs.store import CONFIG_FILE, RECORDS_FILE, STATE_FILE, SUMMARY_FILE, damage, read_status
from mtlscope.sweeps import run_sweep, sweep_status

CONFIG = {
    "setting": {"name": "digits-mtl", "tasks": ["digits1", "digits2"]},
    "model": {"encoder": {"name": "mlp", "hidden": [16, 8]}},
    "training": {"steps": 10, "eval_every": 5},
}
OTHER = {**CONFIG, "seed": 1}


class Plant:
    """Unpickling this opens (creates) ``marker`` for writing: what an attacker's payload would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def yaml_payload(marker: Path) -> str:
    return f'!!python/object/apply:builtins.open ["{marker}", "w"]'


class Stop(BaseException):
    """Stands in for a kill."""


def stop_at(step: int) -> Any:
    def on_step(current: int) -> None:
        if current == step:
            raise Stop

    return on_step


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("reference")
    for config in (CONFIG, OTHER):
        assert execute(validate_config(config), out).status == "completed"
    return out


def interrupted_run(out: Path) -> Path:
    """A run killed after its step-5 checkpoint: status running, with a state.pt."""
    with pytest.raises(Stop):
        execute(validate_config(CONFIG), out, on_step=stop_at(7))
    (path,) = [p for p in out.iterdir() if p.is_dir()]
    assert read_status(path)["status"] == "running" and (path / STATE_FILE).exists()
    return path


def plant_state(path: Path, marker: Path, kind: str) -> None:
    if kind == "pickle":  # a plain pickle: torch.load(weights_only=False) unpickles it to read a "magic number"
        (path / STATE_FILE).write_bytes(pickle.dumps(Plant(marker)))
    else:  # a torch zip archive whose pickle holds the payload beside a plausible state
        torch.save({"trainer": {"step": 5, "scores": Plant(marker)}, "records_rows": 0}, path / STATE_FILE)


def assert_restarted_cleanly(path: Path, reference: Path, marker: Path) -> None:
    assert not marker.exists(), "the planted state.pt ran code"
    assert read_status(path)["status"] == "completed"
    assert (path / RECORDS_FILE).read_text() == (reference / path.name / RECORDS_FILE).read_text()
    assert not (path / STATE_FILE).exists()


def restart_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "restarting the run from step 0" in line]


@pytest.mark.parametrize("kind", ["pickle", "torch"])
def test_malicious_state_with_execute(
    tmp_path: Path, reference: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    marker = tmp_path / "marker"
    path = interrupted_run(tmp_path / "out")
    plant_state(path, marker, kind)
    with caplog.at_level(logging.WARNING):
        outcome = execute(validate_config(CONFIG), tmp_path / "out")
    assert outcome.status == "completed" and not outcome.skipped
    assert_restarted_cleanly(path, reference, marker)
    (line,) = restart_lines(caplog.text)
    assert f"{STATE_FILE} unreadable" in line and str(path) in line


def test_malicious_state_with_the_run_command(
    tmp_path: Path, reference: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "marker"
    path = interrupted_run(tmp_path / "out")
    plant_state(path, marker, "torch")
    file = tmp_path / "config.yaml"
    file.write_text(yaml.safe_dump(CONFIG))
    with caplog.at_level(logging.WARNING):
        assert main(["run", str(file), "--out", str(tmp_path / "out")]) == 0
    assert "completed" in capsys.readouterr().out
    assert_restarted_cleanly(path, reference, marker)
    assert len(restart_lines(caplog.text)) == 1


@pytest.mark.parametrize("workers", [1, 2])
def test_malicious_state_in_a_sweep(
    tmp_path: Path,
    reference: Path,
    workers: int,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    marker = tmp_path / "marker"
    path = interrupted_run(tmp_path / "out")
    plant_state(path, marker, "pickle")
    configs = [validate_config(CONFIG), validate_config(OTHER)]
    with caplog.at_level(logging.WARNING):
        result = run_sweep(configs, tmp_path / "out", workers=workers, progress=False, threads_per_worker=1)
    assert result.counts["completed"] == 2 and result.skipped == 0
    assert_restarted_cleanly(path, reference, marker)
    # in a worker process the line goes to its stderr, in-process to the logging system
    assert len(restart_lines(caplog.text + capfd.readouterr().err)) == 1


def test_every_saved_state_loads_without_code(tmp_path: Path) -> None:
    """What resuming needs is in the safe format: the resumed run equals the uninterrupted one."""
    path = interrupted_run(tmp_path / "out")
    data = torch.load(path / STATE_FILE, weights_only=True)  # raises if the state holds anything but data
    assert data["trainer"]["step"] == 5
    steps: list[int] = []
    assert execute(validate_config(CONFIG), tmp_path / "out", on_step=steps.append).status == "completed"
    assert steps[0] == 6  # resumed after the step-5 checkpoint


@pytest.mark.parametrize("kind", ["pickle", "torch"])
def test_malicious_weights_file_never_runs(tmp_path: Path, reference: Path, kind: str) -> None:
    """A pickle planted as ``model.safetensors`` (its sha256 recorded too, as a thorough attacker would) is refused
    by ``load_model`` with one line, and its payload never runs."""
    marker = tmp_path / "marker"
    source = next(path for path in sorted(reference.iterdir()) if path.is_dir())
    run = Path(shutil.copytree(source, tmp_path / source.name))
    if kind == "pickle":
        payload = pickle.dumps(Plant(marker))
    else:  # what torch.save writes: a zip archive whose pickle holds the payload
        buffer = io.BytesIO()
        torch.save({"encoder.net.0.weight": Plant(marker)}, buffer)
        payload = buffer.getvalue()
    (run / "model.safetensors").write_bytes(payload)
    summary = json.loads((run / SUMMARY_FILE).read_text())
    summary["weights"]["final"]["sha256"] = hashlib.sha256(payload).hexdigest()
    (run / SUMMARY_FILE).write_text(json.dumps(summary))
    with pytest.raises(WeightsError) as error:
        load_model(run)
    assert "model.safetensors: not a safetensors weights file" in str(error.value) and "\n" not in str(error.value)
    assert not marker.exists()


# -- YAML tags ---------------------------------------------------------------------------------------------------


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err


def test_yaml_tags_in_config_override_sweep_and_preset_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "marker"
    out = tmp_path / "out"
    evil = tmp_path / "evil.yaml"
    evil.write_text(f"setting: {{name: synthetic}}\nseed: {yaml_payload(marker)}\n")
    assert main(["run", str(evil), "--out", str(out)]) == 2
    assert "invalid YAML" in one_error_line(capsys)

    good = tmp_path / "good.yaml"
    good.write_text("setting: {name: synthetic}\n")
    assert main(["run", str(good), f"seed={yaml_payload(marker)}", "--out", str(out)]) == 2
    assert "seed" in one_error_line(capsys)

    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"name: evil\nbase: {{setting: {{name: synthetic}}}}\nseeds: {yaml_payload(marker)}\n")
    assert main(["sweep", str(sweep), "--out", str(out)]) == 2
    assert "invalid YAML" in one_error_line(capsys)

    based = tmp_path / "based.yaml"
    based.write_text("name: based\nbase: evil.yaml\nseeds: 1\n")  # the base config is the tagged file
    assert main(["sweep", str(based), "--out", str(out)]) == 2
    assert "invalid YAML" in one_error_line(capsys)

    preset = tmp_path / "preset.yaml"
    preset.write_text(f"name: evil\ntitle: {yaml_payload(marker)}\n")
    assert main(["reproduce", str(preset), "--out", str(out)]) == 2
    assert "invalid YAML" in one_error_line(capsys)

    assert not marker.exists()
    assert not out.exists()


def test_yaml_tag_in_a_stored_config(tmp_path: Path, reference: Path, caplog: pytest.LogCaptureFixture) -> None:
    marker = tmp_path / "marker"
    out = tmp_path / "out"
    outcome = execute(validate_config(CONFIG), out)
    (outcome.path / CONFIG_FILE).write_text(f"seed: {yaml_payload(marker)}\n")
    # the run is damaged (its config cannot be read safely): sweep-status says so, a re-run repairs it
    assert "config.yaml unreadable" in str(damage(outcome.path))
    status = sweep_status([validate_config(CONFIG)], out)
    assert status.counts["damaged"] == 1
    with caplog.at_level(logging.WARNING):
        again = execute(validate_config(CONFIG), out)
    assert again.status == "completed" and not again.skipped
    assert "config.yaml unreadable" in caplog.text and "running it again" in caplog.text
    assert (outcome.path / CONFIG_FILE).read_text() == (reference / outcome.path.name / CONFIG_FILE).read_text()
    # readers of stored runs never construct Python objects from it (the loader skips or rejects the file)
    (outcome.path / CONFIG_FILE).write_text(f"seed: {yaml_payload(marker)}\n")
    with pytest.warns(DamagedRunWarning, match="config.yaml: invalid YAML"):
        results = load(out)
    assert results.runs.empty and len(results.skipped) == 1
    assert not marker.exists()


def test_yaml_tag_in_a_sweep_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "marker"
    out = tmp_path / "out"
    out.mkdir()
    entry = {"run_id": "evil", "config": {**CONFIG, "seed": yaml_payload(marker)}}
    (out / "sweep.json").write_text(json.dumps({"sweeps": ["evil"], "runs": [entry]}))
    assert main(["sweep-status", str(out)]) == 2
    assert "seed" in one_error_line(capsys)
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"name": "good", "base": CONFIG, "seeds": 1}))
    assert main(["sweep", str(sweep), "--out", str(out)]) == 0  # the stored entry is kept as data
    assert "1 completed" in capsys.readouterr().out
    assert json.loads((out / "sweep.json").read_text())["runs"][0] == entry
    assert not marker.exists()
