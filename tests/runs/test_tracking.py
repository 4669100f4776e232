"""Tracking: MLflow (real sqlite backend; a real ``mlflow server`` in a slow test) and TensorBoard event files."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mtlscope.engine.trainer import Record
from mtlscope.runs import RunFailed, execute, load, read_records, validate_config
from mtlscope.runs.store import RECORDS_FILE, read_status
from mtlscope.runs.tracking import (
    MlflowTracker,
    TeeSink,
    TrackingError,
    build_trackers,
    check_specs,
    flatten_config,
    metric_name,
    sync,
)
from mtlscope.sweeps import run_sweep

mlflow_tracking = pytest.importorskip("mlflow.tracking")
event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

CONFIG = {
    "setting": {"name": "digits-mtl", "tasks": ["digits1", "digits2"]},
    "model": {"encoder": {"name": "mlp", "hidden": [16, 8]}},
    "training": {"steps": 6, "eval_every": 3, "diagnostics_every": 2},
}
ACCURACY = "digits1/test/accuracy"


class Stop(BaseException):
    """Stands in for a kill: not an Exception, so the run is not marked failed."""


def _raise_at(step: int, error: BaseException) -> Any:
    def on_step(current: int) -> None:
        if current == step:
            raise error

    return on_step


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One sqlite backend for the module (creating its tables takes a while); each test uses its own experiment."""
    return tmp_path_factory.mktemp("mlflow") / "mlflow.db"


@pytest.fixture
def mlflow_spec(database: Path, tmp_path: Path, request: pytest.FixtureRequest) -> dict[str, Any]:
    return {
        "kind": "mlflow",
        "uri": f"sqlite:///{database}",
        "experiment": request.node.name,
        "artifact_location": str(tmp_path / "artifacts"),
        "tags": {"sweep": "tracking-test"},
    }


def client(spec: dict[str, Any]) -> Any:
    return mlflow_tracking.MlflowClient(tracking_uri=spec["uri"])


def mlflow_runs(spec: dict[str, Any]) -> list[Any]:
    experiment = client(spec).get_experiment_by_name(spec["experiment"])
    return list(client(spec).search_runs([experiment.experiment_id])) if experiment else []


def history(spec: dict[str, Any], run: Any, key: str = ACCURACY) -> list[tuple[int, float]]:
    return sorted((metric.step, metric.value) for metric in client(spec).get_metric_history(run.info.run_id, key))


def stored(path: Path, key: str = ACCURACY) -> list[tuple[int, float]]:
    task, split, metric = key.split("/")
    frame = read_records(path)
    rows = frame[(frame["task"] == task) & (frame["split"] == split) & (frame["metric"] == metric)]
    return sorted(zip(rows["step"].tolist(), rows["value"].tolist()))


def all_histories(spec: dict[str, Any], run: Any) -> dict[str, list[tuple[int, float]]]:
    return {key: history(spec, run, key) for key in run.data.metrics}


def all_stored(path: Path) -> dict[str, list[tuple[int, float]]]:
    histories: dict[str, list[tuple[int, float]]] = {}
    for step, epoch, task, split, metric, value in read_records(path).itertuples(index=False):
        histories.setdefault(metric_name(Record(step, epoch, task, split, metric, value)), []).append((step, value))
    return {key: sorted(values) for key, values in histories.items()}


# -- MLflow --------------------------------------------------------------------------------------------------------


def test_mlflow_run_has_params_tags_metrics_and_artifacts(tmp_path: Path, mlflow_spec: dict[str, Any]) -> None:
    config = validate_config(CONFIG)
    outcome = execute(config, tmp_path / "out", trackers=[mlflow_spec])
    assert outcome.status == "completed"
    (run,) = mlflow_runs(mlflow_spec)
    assert run.info.status == "FINISHED" and run.info.run_name == outcome.run_id
    assert run.data.params["optimizer.lr"] == "0.001"
    assert run.data.params["model.encoder.hidden"] == "[16, 8]"
    assert run.data.params["setting.tasks"] == '["digits1", "digits2"]'
    tags = run.data.tags
    assert tags["mtlscope.run_id"] == outcome.run_id and tags["mtlscope.variant"] == "digits1+digits2"
    assert (tags["mtlscope.method"], tags["mtlscope.seed"], tags["sweep"]) == ("umtg", "0", "tracking-test")
    assert tags["mtlscope.status"] == "completed"
    assert [step for step, _ in history(mlflow_spec, run)] == [0, 3, 6]
    assert history(mlflow_spec, run) == stored(outcome.path)
    assert all_histories(mlflow_spec, run) == all_stored(outcome.path)  # every record, per-step diagnostics too
    assert "all/step/update_norm" in run.data.metrics and "digits1_digits2/step/cosine" in run.data.metrics
    artifacts = {artifact.path for artifact in client(mlflow_spec).list_artifacts(run.info.run_id)}
    assert artifacts == {"config.yaml", "environment.json", "summary.json"}
    local = Path(client(mlflow_spec).download_artifacts(run.info.run_id, "summary.json", str(tmp_path)))
    assert json.loads(local.read_text()) == json.loads((outcome.path / "summary.json").read_text())


def test_tracking_does_not_change_the_run(tmp_path: Path, mlflow_spec: dict[str, Any]) -> None:
    tracked = execute(validate_config(CONFIG), tmp_path / "tracked", trackers=[mlflow_spec])
    plain = execute(validate_config(CONFIG), tmp_path / "plain")
    assert tracked.run_id == plain.run_id
    assert (tracked.path / RECORDS_FILE).read_text() == (plain.path / RECORDS_FILE).read_text()


def test_resumed_run_continues_the_same_mlflow_run(tmp_path: Path, mlflow_spec: dict[str, Any]) -> None:
    config = validate_config(CONFIG)
    with pytest.raises(Stop):
        execute(config, tmp_path, trackers=[mlflow_spec], on_step=_raise_at(5, Stop()))
    (interrupted,) = mlflow_runs(mlflow_spec)
    assert interrupted.info.status == "RUNNING"
    assert [step for step, _ in history(mlflow_spec, interrupted)] == [0, 3]
    outcome = execute(config, tmp_path, trackers=[mlflow_spec])
    assert outcome.status == "completed"
    (run,) = mlflow_runs(mlflow_spec)
    assert run.info.run_id == interrupted.info.run_id and run.info.status == "FINISHED"
    assert history(mlflow_spec, run) == stored(outcome.path)
    assert all_histories(mlflow_spec, run) == all_stored(outcome.path)  # no metric step twice, none missing


def test_resume_fills_in_what_an_untracked_attempt_did(tmp_path: Path, mlflow_spec: dict[str, Any]) -> None:
    config = validate_config(CONFIG)
    with pytest.raises(Stop):
        execute(config, tmp_path, on_step=_raise_at(4, Stop()))
    outcome = execute(config, tmp_path, trackers=[mlflow_spec])
    (run,) = mlflow_runs(mlflow_spec)
    assert all_histories(mlflow_spec, run) == all_stored(outcome.path)


def test_fresh_start_replaces_the_mlflow_run(tmp_path: Path, mlflow_spec: dict[str, Any]) -> None:
    config = validate_config(CONFIG)
    first = execute(config, tmp_path, trackers=[mlflow_spec])
    (old,) = mlflow_runs(mlflow_spec)
    execute(config, tmp_path, trackers=[mlflow_spec], force=True)
    (new,) = mlflow_runs(mlflow_spec)  # the earlier one is deleted (MLflow's soft delete)
    assert new.info.run_id != old.info.run_id
    assert history(mlflow_spec, new) == stored(first.path)


def test_failed_run_is_failed_in_mlflow(tmp_path: Path, mlflow_spec: dict[str, Any]) -> None:
    with pytest.raises(RunFailed) as failed:
        execute(validate_config(CONFIG), tmp_path, trackers=[mlflow_spec], on_step=_raise_at(4, RuntimeError("boom")))
    assert failed.value.outcome.status == "failed"
    (run,) = mlflow_runs(mlflow_spec)
    assert run.info.status == "FAILED"
    assert run.data.tags["mtlscope.status"] == "failed" and run.data.tags["mtlscope.message"] == "RuntimeError: boom"
    assert [step for step, _ in history(mlflow_spec, run)] == [0, 3]
    artifacts = {artifact.path for artifact in client(mlflow_spec).list_artifacts(run.info.run_id)}
    assert "summary.json" in artifacts
    rerun = execute(validate_config(CONFIG), tmp_path, trackers=[mlflow_spec])  # resumes from its checkpoint
    (resumed,) = mlflow_runs(mlflow_spec)
    assert rerun.status == "completed" and resumed.info.run_id == run.info.run_id
    assert resumed.info.status == "FINISHED" and resumed.data.tags["mtlscope.message"] == ""
    assert all_histories(mlflow_spec, resumed) == all_stored(rerun.path)


def test_non_finite_values_are_logged(tmp_path: Path, mlflow_spec: dict[str, Any]) -> None:
    tracker = MlflowTracker(mlflow_spec["uri"], mlflow_spec["experiment"], None, mlflow_spec["artifact_location"])
    tracker.start(validate_config(CONFIG), "fake-run", tmp_path, None)
    tracker.write(
        [Record(0, 0.0, "digits1", "train", "loss", math.nan), Record(1, 0.0, "digits1", "train", "loss", 2.0)]
    )
    tracker.finish("diverged", {"message": "non-finite training loss"})
    (run,) = mlflow_runs(mlflow_spec)
    values = history(mlflow_spec, run, "digits1/train/loss")
    assert run.info.status == "FINISHED" and math.isnan(values[0][1]) and values[1] == (1, 2.0)
    assert run.data.tags["mtlscope.status"] == "diverged"


def test_long_param_values_are_shortened(tmp_path: Path, mlflow_spec: dict[str, Any]) -> None:
    config = validate_config({**CONFIG, "name": "x" * 100})
    tracker = MlflowTracker(mlflow_spec["uri"], mlflow_spec["experiment"], None, mlflow_spec["artifact_location"])
    tracker._param_length = 40  # as MLflow < 2.3 (500) would for a long value
    tracker.start(config, "fake-run", tmp_path, None)
    (run,) = mlflow_runs(mlflow_spec)
    assert run.data.params["name"] == "x" * 37 + "..."


def test_sync_replays_stored_runs(tmp_path: Path, mlflow_spec: dict[str, Any]) -> None:
    outcome = execute(validate_config(CONFIG), tmp_path / "out")
    assert sync(tmp_path / "out", [mlflow_spec, {"kind": "tensorboard", "logdir": str(tmp_path / "tb")}]) == [
        outcome.run_id
    ]
    assert sync(tmp_path / "out", [mlflow_spec]) == [outcome.run_id]  # again: nothing duplicated
    (run,) = mlflow_runs(mlflow_spec)
    assert run.info.status == "FINISHED" and all_histories(mlflow_spec, run) == all_stored(outcome.path)
    assert scalars(tmp_path / "tb" / outcome.run_id) == as_float32(all_stored(outcome.path))


def test_sweep_passes_trackers_to_every_run(tmp_path: Path, mlflow_spec: dict[str, Any]) -> None:
    configs = [validate_config({**CONFIG, "seed": seed}) for seed in (0, 1)]
    result = run_sweep(configs, tmp_path / "out", progress=False, trackers=[mlflow_spec])
    runs = {run.data.tags["mtlscope.run_id"]: run for run in mlflow_runs(mlflow_spec)}
    assert set(runs) == {outcome.run_id for outcome in result.outcomes}
    for outcome in result.outcomes:
        assert history(mlflow_spec, runs[outcome.run_id]) == stored(outcome.path)


@pytest.mark.slow
def test_sweep_workers_track_into_one_database(tmp_path: Path, mlflow_spec: dict[str, Any]) -> None:
    configs = [validate_config({**CONFIG, "seed": seed}) for seed in (0, 1)]
    specs = [mlflow_spec, {"kind": "tensorboard", "logdir": str(tmp_path / "tb")}]
    result = run_sweep(configs, tmp_path / "out", workers=2, threads_per_worker=1, progress=False, trackers=specs)
    assert result.counts["completed"] == 2
    runs = {run.data.tags["mtlscope.run_id"]: run for run in mlflow_runs(mlflow_spec)}
    for outcome in result.outcomes:
        assert all_histories(mlflow_spec, runs[outcome.run_id]) == all_stored(outcome.path)
        assert scalars(tmp_path / "tb" / outcome.run_id) == as_float32(all_stored(outcome.path))


# -- TensorBoard ---------------------------------------------------------------------------------------------------


def scalars(directory: Path) -> dict[str, list[tuple[int, float]]]:
    """The scalars of the event files in ``directory``, read back with TensorBoard's reader (float64 values)."""
    accumulator = event_accumulator.EventAccumulator(str(directory), size_guidance={event_accumulator.SCALARS: 0})
    accumulator.Reload()
    return {
        tag: sorted((event.step, event.value) for event in accumulator.Scalars(tag))
        for tag in accumulator.Tags()["scalars"]
    }


def as_float32(histories: dict[str, list[tuple[int, float]]]) -> dict[str, list[tuple[int, float]]]:
    import numpy as np

    return {key: [(step, float(np.float32(value))) for step, value in values] for key, values in histories.items()}


def test_tensorboard_scalars_equal_the_records(tmp_path: Path) -> None:
    spec = {"kind": "tensorboard", "logdir": str(tmp_path / "tb")}
    outcome = execute(validate_config(CONFIG), tmp_path / "out", trackers=[spec])
    events = tmp_path / "tb" / outcome.run_id
    assert len(list(events.glob("events.out.tfevents.*"))) == 1
    read = scalars(events)
    assert [step for step, _ in read[ACCURACY]] == [0, 3, 6]
    assert read == as_float32(all_stored(outcome.path))  # TensorBoard stores scalars as float32


def test_tensorboard_resume_rewrites_then_continues(tmp_path: Path) -> None:
    spec = {"kind": "tensorboard", "logdir": str(tmp_path / "tb")}
    config = validate_config(CONFIG)
    with pytest.raises(Stop):
        execute(config, tmp_path / "out", trackers=[spec], on_step=_raise_at(5, Stop()))
    outcome = execute(config, tmp_path / "out", trackers=[spec])
    events = tmp_path / "tb" / outcome.run_id
    assert len(list(events.glob("events.out.tfevents.*"))) == 1
    assert scalars(events) == as_float32(all_stored(outcome.path))


# -- specs, failures, missing packages -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"kind": "wandb"}, "tracker 1: unknown kind 'wandb'; available: mlflow, tensorboard"),
        ({"kind": "mlflow", "url": "x"}, "tracker 1 (mlflow): unknown key 'url'; expected uri, experiment, tags"),
        ({"kind": "mlflow"}, "tracker 1 (mlflow): missing 'uri'"),
        ({"kind": "mlflow", "uri": "x", "tags": ["a"]}, "tracker 1 (mlflow): tags: expected a mapping"),
        ({"kind": "tensorboard", "logdir": 3}, "tracker 1 (tensorboard): logdir: expected a non-empty string"),
        ("mlflow", "tracker 1: expected a mapping with a 'kind', got str"),
    ],
)
def test_bad_specs_are_one_line_errors(spec: Any, message: str) -> None:
    with pytest.raises(TrackingError, match="^" + message.replace("(", r"\(").replace(")", r"\)")) as error:
        check_specs([spec])
    assert "\n" not in str(error.value)


def test_specs_are_plain_dicts(tmp_path: Path) -> None:
    spec = {"kind": "tensorboard", "logdir": tmp_path}
    assert check_specs([spec]) == [{"kind": "tensorboard", "logdir": str(tmp_path)}]


@pytest.mark.parametrize(
    ("kind", "module", "spec"),
    [
        ("mlflow", "mlflow", {"kind": "mlflow", "uri": "sqlite:///x.db"}),
        ("tensorboard", "tensorboard", {"kind": "tensorboard", "logdir": "tb"}),
    ],
)
def test_missing_package_is_a_one_line_error_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, module: str, spec: dict[str, Any]
) -> None:
    for name in [name for name in sys.modules if name == module or name.startswith(f"{module}.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, module, None)  # "import mlflow" now raises ImportError
    with pytest.raises(TrackingError) as error:
        build_trackers([spec])
    assert str(error.value) == f"{kind} is not installed: pip install 'mtlscope[{kind}]'"
    with pytest.raises(TrackingError):
        execute(validate_config(CONFIG), tmp_path / "out", trackers=[spec])
    assert not (tmp_path / "out").exists()


class Broken:
    """A tracker that fails at its second checkpoint."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __repr__(self) -> str:
        return "broken tracker"

    def start(self, *args: Any) -> None:
        self.calls.append("start")

    def write(self, records: Any) -> None:
        self.calls.append("write")
        if self.calls.count("write") == 2:
            raise ConnectionError("tracking server went away")

    def finish(self, *args: Any) -> None:
        self.calls.append("finish")

    def close(self) -> None:
        self.calls.append("close")


def test_a_failing_tracker_is_dropped_with_one_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    broken = Broken()
    monkeypatch.setattr("mtlscope.runs.launch.build_trackers", lambda specs: [broken] if specs else [])
    with caplog.at_level(logging.WARNING, logger="mtlscope.runs.tracking"):
        outcome = execute(validate_config(CONFIG), tmp_path / "out", trackers=[{"kind": "mlflow", "uri": "x"}])
        reference = execute(validate_config(CONFIG), tmp_path / "reference")
    assert outcome.status == "completed"
    assert (outcome.path / RECORDS_FILE).read_text() == (reference.path / RECORDS_FILE).read_text()
    assert broken.calls == ["start", "write", "write", "close"]  # dropped: no more writes, no finish
    (warning,) = [record for record in caplog.records if record.name == "mtlscope.runs.tracking"]
    assert "broken tracker failed in write (ConnectionError: tracking server went away)" in warning.getMessage()


def test_tee_sink_writes_the_directory_first() -> None:
    order: list[str] = []

    class Sink:
        def write(self, records: Any) -> None:
            order.append("directory")

    class Tracker(Broken):
        def write(self, records: Any) -> None:
            order.append("tracker")

    TeeSink(Sink(), [Tracker()]).write([])
    assert order == ["directory", "tracker"]


def test_names_and_params() -> None:
    assert metric_name(Record(3, 0.1, "*", "step", "update_norm", 1.0)) == "all/step/update_norm"
    assert metric_name(Record(3, 0.1, "digits1|digits2", "step", "cosine", 1.0)) == "digits1_digits2/step/cosine"
    assert metric_name(Record(3, 0.1, "a", "probe", "affinity/b", 1.0)) == "a/probe/affinity/b"
    flat = flatten_config({"a": {"b": 1, "c": [1, 2], "d": {}}, "e": None, "f": "x", "g": True})
    assert flat == {"a.b": "1", "a.c": "[1, 2]", "a.d": "{}", "e": "null", "f": "x", "g": "true"}


# -- a real MLflow tracking server -----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    """``mlflow server`` on 127.0.0.1 (its own process group, stopped by its id)."""
    port = _free_port()
    executable = Path(sys.executable).with_name("mlflow")
    command = [
        str(executable) if executable.exists() else "mlflow",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{tmp_path / 'server.db'}",
        "--artifacts-destination",
        str(tmp_path / "server-artifacts"),
    ]
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115  (closed in finally)
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    server = subprocess.Popen(
        command, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "mlflow server did not answer within 90 s"
            time.sleep(0.2)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and the workers it started
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


@pytest.mark.slow
def test_mlflow_server(tmp_path: Path, mlflow_server: str) -> None:
    spec = {"kind": "mlflow", "uri": mlflow_server, "experiment": "served", "tags": {"sweep": "served"}}
    outcome = execute(validate_config(CONFIG), tmp_path / "out", trackers=[spec])
    assert outcome.status == "completed"
    (run,) = mlflow_runs(spec)
    assert run.info.status == "FINISHED" and run.data.tags["sweep"] == "served"
    assert run.data.params["optimizer.lr"] == "0.001"
    assert all_histories(spec, run) == all_stored(outcome.path)
    artifacts = {artifact.path for artifact in client(spec).list_artifacts(run.info.run_id)}
    assert artifacts == {"config.yaml", "environment.json", "summary.json"}
    assert read_status(outcome.path)["status"] == "completed"
    assert len(load(tmp_path / "out").runs) == 1
