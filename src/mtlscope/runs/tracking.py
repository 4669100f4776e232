"""Experiment tracking: mirror runs into MLflow and TensorBoard (optional extras; docs/tracking.md).

A run's directory is the source of truth; trackers are views of it. ``execute(config, out, trackers=[spec, ...])``
builds one ``Tracker`` per spec (a plain, picklable dict) and passes every checkpoint's records to the run
directory first, then to the trackers (``TeeSink``). Specs:

- ``{"kind": "mlflow", "uri": URI, "experiment": "mtlscope", "tags": {...}, "artifact_location": None}``: one
  MLflow run per mtlscope run (run name = run id), params = the flattened resolved config, metrics
  ``<task>/<split>/<metric>`` at each checkpoint's step, artifacts ``config.yaml``, ``environment.json`` and
  ``summary.json`` at the end. ``uri`` is any MLflow tracking URI (``sqlite:///mlflow.db``,
  ``http://host:5000``, a ``file:`` store).
- ``{"kind": "tensorboard", "logdir": DIR}``: an event file under ``DIR/<run_id>/`` with the same scalar names.

A resumed run continues its MLflow run (found by the ``mtlscope.run_id`` tag in the experiment) and logs no
metric step twice; its TensorBoard event file is rewritten from the run directory's records, then continued.

Failure policy: a tracker that raises (server unreachable, disk full, ...) is dropped for the rest of the run with
one logged warning; the run and its directory go on unaffected. ``sync(directory, specs)`` later replays stored
runs into trackers (e.g. after copying run directories back from a cluster).

Without the extra, building a tracker raises ``TrackingError`` (a ``ValueError``) with one line saying how to
install it, before anything is written.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

import yaml

from mtlscope.engine.trainer import Record, RecordSink
from mtlscope.runs.config import RunConfig, read_yaml, validate_config
from mtlscope.runs.results import read_records
from mtlscope.runs.store import CONFIG_FILE, ENVIRONMENT_FILE, STATUS_FILE, SUMMARY_FILE, read_status

logger = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "mtlscope"
RUN_ID_TAG = "mtlscope.run_id"
STATUS_TAG = "mtlscope.status"
MESSAGE_TAG = "mtlscope.message"
#: the keys of each kind of spec: (required, optional)
SPEC_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "mlflow": (("uri",), ("experiment", "tags", "artifact_location")),
    "tensorboard": (("logdir",), ()),
}
EXTRAS = {"mlflow": ("mlflow", "mlflow"), "tensorboard": ("tensorboard", "tensorboard")}  # kind: (module, extra)

# MLflow's limits (mlflow.utils.validation); the values of older MLflow releases where they differ.
_METRICS_PER_BATCH = 1000
_PARAMS_TAGS_PER_BATCH = 100
_KEY_LENGTH = 250
_PARAM_LENGTH = 500
_TAG_LENGTH = 5000
_BAD_NAME = re.compile(r"[^\w.\- /]")

T = TypeVar("T")


class TrackingError(ValueError):
    """A tracker spec that cannot be used (unknown kind or key, missing package); the message is one line."""


class Tracker(Protocol):
    """A view of a run in an external tool. ``execute`` calls ``start``, ``write`` per checkpoint, then ``finish``."""

    def start(self, config: RunConfig, run_id: str, path: Path, resumed_at: int | None) -> None:
        """Begin (``resumed_at`` None) or continue (from its checkpoint at step ``resumed_at``) the run at ``path``."""
        ...

    def write(self, records: Sequence[Record]) -> None:
        """One checkpoint's records."""
        ...

    def finish(self, status: str, summary: Mapping[str, Any]) -> None:
        """The run ended with ``status`` (completed, diverged, failed) and ``summary`` (its summary.json)."""
        ...

    def close(self) -> None:
        """Release resources without finishing (the run was interrupted and stays resumable)."""
        ...


# -- names and values ------------------------------------------------------------------------------------------


def metric_name(record: Record) -> str:
    """``<task>/<split>/<metric>``; run-level records (task ``*``) are named ``all/...``.

    Characters MLflow rejects in names become ``_`` (the same names are used for TensorBoard).
    """
    task = "all" if record.task == "*" else record.task
    name = _BAD_NAME.sub("_", f"{task}/{record.split}/{record.metric}")
    return re.sub(r"/+", "/", name).strip("/")


def _limit(text: str, length: int) -> str:
    return text if len(text) <= length else text[: length - 3] + "..."


def flatten_config(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Dotted keys to string values: strings as they are, everything else as compact JSON (``[16, 8]``, ``null``).

    Nested mappings are flattened (``optimizer.lr``); an empty one is kept as ``{}``.
    """
    flat: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_config(value, f"{name}."))
        else:
            flat[name] = value if isinstance(value, str) else json.dumps(value)
    return flat


def run_tags(config: RunConfig, run_id: str) -> dict[str, str]:
    """The tags that identify an mtlscope run in a tracker."""
    return {
        RUN_ID_TAG: run_id,
        "mtlscope.variant": config.variant,
        "mtlscope.setting": config.setting.label,
        "mtlscope.method": str(config.method["name"]),
        "mtlscope.seed": str(config.seed),
    }


def stored_records(path: Path) -> list[Record]:
    """The records in the run directory at ``path`` (what a resumed tracker fills in from)."""
    columns = [read_records(path)[column].tolist() for column in ("step", "epoch", "task", "split", "metric", "value")]
    return [
        Record(int(step), float(epoch), str(task), str(split), str(metric), float(value))
        for step, epoch, task, split, metric, value in zip(*columns)
    ]


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _import(kind: str, module: str) -> Any:
    package, extra = EXTRAS[kind]
    try:
        return importlib.import_module(module)
    except ImportError:
        raise TrackingError(f"{package} is not installed: pip install 'mtlscope[{extra}]'") from None


# -- MLflow ------------------------------------------------------------------------------------------------------


class MlflowTracker:
    """One MLflow run per mtlscope run, through an explicit ``MlflowClient`` (no global active run)."""

    def __init__(
        self,
        uri: str,
        experiment: str = DEFAULT_EXPERIMENT,
        tags: Mapping[str, str] | None = None,
        artifact_location: str | None = None,
    ) -> None:
        tracking = _import("mlflow", "mlflow.tracking")
        self._entities = _import("mlflow", "mlflow.entities")
        self._client_class = tracking.MlflowClient
        self.uri = uri
        self.experiment = experiment
        self.tags = dict(tags or {})
        self.artifact_location = artifact_location
        self.mlflow_run_id: str | None = None
        self._client: Any = None
        self._path: Path | None = None
        self._logged: set[tuple[str, int]] = set()  # (metric, step) already in the MLflow run when it was continued
        try:
            validation = importlib.import_module("mlflow.utils.validation")
            self._param_length = int(getattr(validation, "MAX_PARAM_VAL_LENGTH", _PARAM_LENGTH))
            self._tag_length = int(getattr(validation, "MAX_TAG_VAL_LENGTH", _TAG_LENGTH))
        except ImportError:  # pragma: no cover - moved in some MLflow release
            self._param_length, self._tag_length = _PARAM_LENGTH, _TAG_LENGTH

    def __repr__(self) -> str:
        return f"mlflow tracker ({self.uri}, experiment {self.experiment!r})"

    def experiment_id(self) -> str:
        """The id of the experiment, created if missing (safe when several processes race to create it)."""
        if self._client is None:
            self._client = self._client_class(tracking_uri=self.uri)
        client = self._client
        experiment = client.get_experiment_by_name(self.experiment)
        if experiment is None:
            try:
                return str(client.create_experiment(self.experiment, artifact_location=self.artifact_location))
            except Exception:
                experiment = client.get_experiment_by_name(self.experiment)  # created meanwhile by another process
                if experiment is None:
                    raise
        if experiment.lifecycle_stage == "deleted":
            raise TrackingError(f"MLflow experiment {self.experiment!r} is deleted: restore it or choose another name")
        return str(experiment.experiment_id)

    def start(self, config: RunConfig, run_id: str, path: Path, resumed_at: int | None) -> None:
        experiment_id = self.experiment_id()
        client = self._client
        self._path = path
        existing = client.search_runs(
            [experiment_id], filter_string=f"tags.`{RUN_ID_TAG}` = '{run_id}'", order_by=["attributes.start_time DESC"]
        )
        if resumed_at is not None and existing:
            run = existing[0]
            self.mlflow_run_id = run.info.run_id
            client.update_run(run.info.run_id, status="RUNNING")
            self._logged = {
                (key, int(metric.step))
                for key in run.data.metrics
                for metric in client.get_metric_history(run.info.run_id, key)
            }
        else:  # a fresh start replaces the run, as it replaces the run directory
            for run in existing:
                client.delete_run(run.info.run_id)
            started = _started_ms(path)
            self.mlflow_run_id = client.create_run(experiment_id, start_time=started, run_name=run_id).info.run_id
            self._logged = set()
        entities = self._entities
        params = [
            entities.Param(_limit(key, _KEY_LENGTH), _limit(value, self._param_length))
            for key, value in flatten_config(config.to_dict()).items()
        ]
        tags = [
            entities.RunTag(key, _limit(str(value), self._tag_length))
            for key, value in {**self.tags, **run_tags(config, run_id), STATUS_TAG: "running"}.items()
        ]
        entries: list[Any] = [*params, *tags]
        for chunk in _chunks(entries, _PARAMS_TAGS_PER_BATCH):
            client.log_batch(
                self.mlflow_run_id,
                params=[entry for entry in chunk if isinstance(entry, entities.Param)],
                tags=[entry for entry in chunk if isinstance(entry, entities.RunTag)],
            )
        if resumed_at is not None:  # fill in what the MLflow run lacks (all of it when it is new)
            self.write(stored_records(path))

    def write(self, records: Sequence[Record]) -> None:
        timestamp = int(time.time() * 1000)
        metrics = []
        for record in records:
            key = metric_name(record)
            if (key, record.step) in self._logged:
                continue
            metrics.append(self._entities.Metric(key, float(record.value), timestamp, int(record.step)))
        for chunk in _chunks(metrics, _METRICS_PER_BATCH):
            self._client.log_batch(self.mlflow_run_id, metrics=list(chunk))

    def finish(self, status: str, summary: Mapping[str, Any]) -> None:
        client, run = self._client, self.mlflow_run_id
        message = str(summary.get("error") or summary.get("message") or "")
        tags = [  # the message is set even when empty: a resumed run's earlier failure is no longer its message
            self._entities.RunTag(STATUS_TAG, status),
            self._entities.RunTag(MESSAGE_TAG, _limit(message, self._tag_length)),
        ]
        client.log_batch(run, tags=tags)
        path = self._path
        for name in (CONFIG_FILE, ENVIRONMENT_FILE, SUMMARY_FILE):
            if path is not None and (path / name).exists():
                client.log_artifact(run, str(path / name))
        if path is None or not (path / SUMMARY_FILE).exists():
            client.log_dict(run, dict(summary), SUMMARY_FILE)
        client.set_terminated(run, status="FAILED" if status == "failed" else "FINISHED")

    def close(self) -> None:
        """Nothing to release; an interrupted run's MLflow run stays RUNNING, as its directory stays ``running``."""


def _started_ms(path: Path) -> int | None:
    """When the run at ``path`` started (its status.json), in milliseconds since the epoch."""
    try:
        return int(datetime.fromisoformat(read_status(path)["started_at"]).timestamp() * 1000)
    except (OSError, KeyError, ValueError):
        return None


# -- TensorBoard ---------------------------------------------------------------------------------------------


class TensorBoardTracker:
    """Scalars in an event file under ``logdir/<run_id>/``, flushed at every checkpoint."""

    def __init__(self, logdir: str) -> None:
        _import("tensorboard", "tensorboard")
        self._writer_class = _import("tensorboard", "torch.utils.tensorboard").SummaryWriter
        self.logdir = logdir
        self._writer: Any = None

    def __repr__(self) -> str:
        return f"tensorboard tracker ({self.logdir})"

    def start(self, config: RunConfig, run_id: str, path: Path, resumed_at: int | None) -> None:
        directory = Path(self.logdir) / run_id
        for old in directory.glob("events.out.tfevents.*"):  # an earlier attempt's: rewritten from the records
            old.unlink()
        self._writer = self._writer_class(log_dir=str(directory))
        text = yaml.safe_dump(config.to_dict(), sort_keys=False)
        self._writer.add_text("mtlscope/config", "    " + text.replace("\n", "\n    "), 0)
        if resumed_at is not None:
            self.write(stored_records(path))
        self._writer.flush()

    def write(self, records: Sequence[Record]) -> None:
        for record in records:
            self._writer.add_scalar(metric_name(record), float(record.value), int(record.step))
        self._writer.flush()

    def finish(self, status: str, summary: Mapping[str, Any]) -> None:
        message = str(summary.get("error") or summary.get("message") or "")
        step = int(summary.get("steps") or 0)
        self._writer.add_text("mtlscope/status", f"{status}: {message}" if message else status, step)
        self.close()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


# -- specs -------------------------------------------------------------------------------------------------------


def check_specs(specs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Validate tracker specs; returns them as plain dicts (picklable). Raises ``TrackingError`` (one line)."""
    checked = []
    for index, spec in enumerate(specs, start=1):
        if not isinstance(spec, Mapping):
            raise TrackingError(f"tracker {index}: expected a mapping with a 'kind', got {type(spec).__name__}")
        kind = spec.get("kind")
        if kind not in SPEC_KEYS:
            raise TrackingError(f"tracker {index}: unknown kind {kind!r}; available: {', '.join(SPEC_KEYS)}")
        required, optional = SPEC_KEYS[kind]
        where = f"tracker {index} ({kind})"
        unknown = sorted(set(spec) - {"kind", *required, *optional})
        if unknown:
            raise TrackingError(f"{where}: unknown key {unknown[0]!r}; expected {', '.join((*required, *optional))}")
        missing = [key for key in required if not spec.get(key)]
        if missing:
            raise TrackingError(f"{where}: missing {missing[0]!r}")
        plain: dict[str, Any] = {"kind": kind}
        for key in (*required, *optional):
            value = spec.get(key)
            if value is None:
                continue
            if key == "tags":
                if not isinstance(value, Mapping):
                    raise TrackingError(f"{where}: tags: expected a mapping of names to values")
                plain[key] = {str(name): str(tag) for name, tag in value.items()}
            elif isinstance(value, (str, Path)) and str(value):
                plain[key] = str(value)
            else:
                raise TrackingError(f"{where}: {key}: expected a non-empty string, got {value!r}")
        checked.append(plain)
    return checked


def build_trackers(specs: Sequence[Mapping[str, Any]]) -> list[Tracker]:
    """One tracker per spec (nothing is written or contacted yet). Raises ``TrackingError`` (one line)."""
    trackers: list[Tracker] = []
    for spec in check_specs(specs):
        options = {key: value for key, value in spec.items() if key != "kind"}
        if spec["kind"] == "mlflow":
            trackers.append(MlflowTracker(**options))
        else:
            trackers.append(TensorBoardTracker(**options))
    return trackers


def prepare_trackers(specs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Check specs and reach every tracker once: MLflow experiments are created here, before runs start in parallel.

    Returns the specs as plain dicts. Raises ``TrackingError`` (one line) for a bad spec, a missing package or a
    tracking backend that cannot be reached.
    """
    checked = check_specs(specs)
    for tracker in build_trackers(checked):
        try:
            if isinstance(tracker, MlflowTracker):
                tracker.experiment_id()
            elif isinstance(tracker, TensorBoardTracker):
                Path(tracker.logdir).mkdir(parents=True, exist_ok=True)
        except TrackingError:
            raise
        except Exception as error:
            detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise TrackingError(f"{tracker!r}: {detail}") from None
    return checked


class TeeSink:
    """Records go to the run directory first, then to every tracker.

    A tracker that raises is dropped for the rest of the run, with one warning; the directory never misses a record.
    """

    def __init__(self, sink: RecordSink, trackers: Sequence[Tracker]) -> None:
        self.sink = sink
        self.trackers = list(trackers)
        self.dropped: list[str] = []

    def _each(self, action: str, *args: Any) -> None:
        for tracker in list(self.trackers):
            try:
                getattr(tracker, action)(*args)
            except Exception as error:
                self.trackers.remove(tracker)
                self.dropped.append(repr(tracker))
                logger.warning(
                    "%r failed in %s (%s: %s); the run goes on without it (its directory keeps every record)",
                    tracker,
                    action,
                    type(error).__name__,
                    str(error).strip().splitlines()[0] if str(error).strip() else "",
                )
                with contextlib.suppress(Exception):  # already failing: the warning above says so
                    tracker.close()

    def start(self, config: RunConfig, run_id: str, path: Path, resumed_at: int | None) -> None:
        self._each("start", config, run_id, path, resumed_at)

    def write(self, records: Sequence[Record]) -> None:
        self.sink.write(records)
        self._each("write", records)

    def finish(self, status: str, summary: Mapping[str, Any]) -> None:
        self._each("finish", status, summary)

    def close(self) -> None:
        """Release every tracker without finishing (the run was interrupted)."""
        for tracker in self.trackers:
            with contextlib.suppress(Exception):  # interrupted anyway; nothing more to do
                tracker.close()


# -- replaying stored runs ---------------------------------------------------------------------------------------


def sync(directory: str | Path, specs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Replay every run stored under ``directory`` (any depth) into the trackers; returns the run ids.

    MLflow runs found by their run id are completed, never duplicated (a metric step already there is not
    logged again); TensorBoard event files are rewritten. Finished runs are finished in the trackers; unfinished
    ones are left running. Errors are raised (unlike during a run, where a failing tracker is dropped).
    """
    checked = prepare_trackers(specs)
    synced = []
    for path in sorted(status.parent for status in Path(directory).rglob(STATUS_FILE)):
        if not (path / CONFIG_FILE).exists():
            continue
        config = validate_config(read_yaml(path / CONFIG_FILE), str(path / CONFIG_FILE), imports=False)
        status = str(read_status(path)["status"])
        steps = [record.step for record in stored_records(path)]
        summary = json.loads((path / SUMMARY_FILE).read_text()) if (path / SUMMARY_FILE).exists() else {}
        for tracker in build_trackers(checked):
            tracker.start(config, path.name, path, max(steps, default=0))
            if status == "running":
                tracker.close()
            else:
                tracker.finish(status, summary)
        synced.append(path.name)
    return synced
