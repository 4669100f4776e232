"""Running one config end to end: resolve, build, train, store (``mtlscope run``).

Everything that can fail because of the config (setting options, task names, model and method options)
is built *before* the run directory is created, so a bad config writes nothing. An exception during
training marks the run ``failed`` (the error and its traceback in ``summary.json``) and ``execute`` raises
``RunFailed`` with that exception as its cause, unless called with ``on_failure="return"`` (sweeps, the CLI and
the demo record the failed outcome and go on); a non-finite loss marks the run ``diverged`` (a result, returned).
A completed run keeps its final weights (``mtlscope.runs.weights``).

``execute`` holds the run's lock (``mtlscope.runs.locking``) for the whole run, decides from what is on disk
whether to skip, resume or start over (``mtlscope.runs.store``: a damaged completed run or an unusable saved
state starts over, with one logged line), and never lets a stored file decide anything without checking it.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from mtlscope.engine.gradients import resolve_mode
from mtlscope.engine.gramian import resolve_gradient_path
from mtlscope.engine.loss_scale import resolve_loss_scale
from mtlscope.engine.lr_schedules import LearningRate, build_learning_rate
from mtlscope.engine.optimizers import build_optimizer
from mtlscope.engine.trainer import Record, RecordSink, Schedule, StateSink, Trainer
from mtlscope.imports import describe
from mtlscope.messages import clip
from mtlscope.methods.base import Method
from mtlscope.methods.registry import METHODS
from mtlscope.models.multitask import MultiTaskModel, build_model
from mtlscope.probes.base import Probe, build_probe
from mtlscope.runs.config import ConfigError, RunConfig, resolve_with_setting, validate_config
from mtlscope.runs.environment import describe_environment
from mtlscope.runs.locking import hold_run
from mtlscope.runs.store import (
    FINISHED,
    STATE_FILE,
    RunDirectory,
    SavedState,
    StoreError,
    brief,
    damage,
    read_state,
    read_status,
    stored_status,
)
from mtlscope.runs.threads import Threads, check_threads, using_threads
from mtlscope.runs.tracking import TeeSink, Tracker, build_trackers
from mtlscope.runs.weights import BestCheckpoint, cpu_copy, save_weights
from mtlscope.settings.setting import Setting

logger = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is a ``ConfigError``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("training.device: 'cuda' was asked for but no CUDA device is available")
    return torch.device(name)


@dataclass
class Prepared:
    """Everything a run needs, built from a resolved config."""

    config: RunConfig
    setting: Setting
    model: MultiTaskModel
    method: Method
    optimizer: torch.optim.Optimizer
    probes: list[Probe]
    schedule: Schedule
    learning_rate: LearningRate
    loss_scale: float
    device: torch.device
    best: BestCheckpoint | None = None  # keeps the best validation checkpoint (``training.keep_best``)

    def trainer(self, sink: RecordSink, state_sink: StateSink | None, on_step: Callable[[int], None] | None) -> Trainer:
        """The training loop of this run (an environment run's ``EnvironmentRun.trainer`` is its own loop)."""
        return _trainer(self, sink, state_sink, on_step)


def prepare(config: RunConfig, source: str = "config", *, objects: Mapping[str, Any] | None = None) -> Prepared:
    """Resolve ``config`` and build its setting, model, method, optimizer and probes (writes nothing).

    ``objects``: the Python setting, encoder and head of a config made by ``with_objects`` (``execute``'s
    ``setting=``, ``encoder=``, ``head=``)."""
    if config.setting.is_environment:  # the one place where runs of environments and of data part ways
        from mtlscope.rl.run import prepare_environment_run

        return prepare_environment_run(config, source)  # type: ignore[return-value]
    objects = dict(objects or {})
    resolved, setting = resolve_with_setting(config, source, objects=objects)
    device = resolve_device(resolved.training.device)
    method_options = {k: v for k, v in resolved.method.items() if k != "name"}
    encoder: Any = resolved.model.encoder or {}
    head: Any = resolved.model.head or {}
    encoder = objects["encoder"] if encoder.get("object") is not None and "encoder" in objects else encoder
    head = objects["head"] if head.get("object") is not None and "head" in objects else head
    try:
        method = METHODS.build(resolved.method["name"], **method_options)
        method.setup(setting.task_names)
        model = build_model(setting, encoder, head, resolved.seed).to(device)
        probes = [build_probe(name, options) for name, options in resolved.probes.items()]
        resolve_mode(resolved.training.jacobian_mode, setting)
        shared = list(model.shared_parameters())
        resolve_gradient_path(
            resolved.training.gradient_path,
            method,
            len(setting.task_names),
            sum(p.numel() for p in shared),
            shared[0].element_size() if shared else 4,
            resolved.training.jacobian_budget_mb,
            resolved.training.jacobian_mode,
        )
    except (KeyError, ValueError, TypeError) as error:  # a builder rejecting an option's value or type
        raise ConfigError(f"{source}: {clip(str(error.args[0] if error.args else error), 400)}") from None
    except (RuntimeError, MemoryError) as error:  # e.g. an encoder too large to allocate
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"{source}: model: cannot build the model on {device} ({clip(reason, 200)})") from None
    optimizer_config = resolved.optimizer
    optimizer = build_optimizer(
        model.parameters(),
        optimizer_config.name,
        optimizer_config.lr,
        momentum=optimizer_config.momentum,
        nesterov=optimizer_config.nesterov,
        weight_decay=optimizer_config.weight_decay,
        betas=optimizer_config.betas,
        eps=optimizer_config.eps,
    )
    training = resolved.training
    steps_per_epoch = setting.steps_per_epoch(training.batch_size)
    steps = training.steps if training.steps is not None else (training.epochs or 1) * steps_per_epoch
    if training.eval_every == "log":
        schedule = Schedule(steps, steps_per_epoch, checkpoints_per_decade=training.checkpoints_per_decade)
    else:
        eval_every = steps_per_epoch if training.eval_every == "epoch" else int(training.eval_every)
        schedule = Schedule(steps=steps, steps_per_epoch=steps_per_epoch, eval_every=eval_every)
    learning_rate = build_learning_rate(
        optimizer_config.lr, optimizer_config.schedule, steps=steps, steps_per_epoch=steps_per_epoch
    )
    return Prepared(
        config=resolved,
        setting=setting.to(device),
        model=model,
        method=method,
        optimizer=optimizer,
        probes=probes,
        schedule=schedule,
        learning_rate=learning_rate,
        loss_scale=resolve_loss_scale(training.loss_scale, len(setting.tasks)),
        device=device,
        best=BestCheckpoint(setting) if training.keep_best else None,
    )


@dataclass(frozen=True)
class RunOutcome:
    run_id: str
    path: Path
    status: str
    message: str = ""
    skipped: bool = False


class RunFailed(RuntimeError):
    """``execute``: the run failed. ``__cause__`` is the exception raised during training (none when the run's
    records on disk were found changed); the run directory is kept, marked ``failed``, with the error and its
    traceback in ``summary.json``, and running the config again resumes it. ``outcome`` is the failed
    ``RunOutcome`` that ``execute(..., on_failure="return")`` returns instead."""

    def __init__(self, outcome: RunOutcome) -> None:
        first = outcome.message.strip().splitlines()[0] if outcome.message.strip() else "no message"
        super().__init__(f"{outcome.path}: run failed ({clip(first, 300)})")
        self.outcome = outcome

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.outcome,))


OnFailure = Literal["raise", "return"]


class _Discard:
    """The record sink of a trainer that only tries a saved state on."""

    def write(self, records: Sequence[Record]) -> None:
        pass


def _trainer(
    prepared: Prepared, sink: RecordSink, state_sink: StateSink | None, on_step: Callable[[int], None] | None
) -> Trainer:
    config = prepared.config
    return Trainer(
        prepared.setting,
        prepared.model,
        prepared.method,
        prepared.optimizer,
        schedule=prepared.schedule,
        batch_size=config.training.batch_size,
        loss_scale=prepared.loss_scale,
        seed=config.seed,
        sink=sink,
        probes=prepared.probes,
        train_eval_limit=config.training.train_eval_limit,
        on_step=on_step,
        state_sink=state_sink if config.training.save_state else None,
        diagnostics_every=config.training.diagnostics_every,
        jacobian_mode=config.training.jacobian_mode,
        jacobian_chunk=config.training.jacobian_chunk,
        gradient_path=config.training.gradient_path,
        jacobian_budget_mb=config.training.jacobian_budget_mb,
        lr_at=prepared.learning_rate.lr_at,
        checkpoint_hooks=[prepared.best] if prepared.best is not None else [],
        autocast=config.training.autocast,
    )


def _check_scores(scores: Any) -> None:
    if not isinstance(scores, dict):
        raise TypeError(f"scores is a {type(scores).__name__}, not a mapping")
    for key, metrics in scores.items():
        if not (isinstance(key, tuple) and len(key) == 2 and all(isinstance(part, str) for part in key)):
            raise TypeError(f"scores key {str(key)[:40]!r} is not a (task, split) pair")
        if not isinstance(metrics, dict) or not all(isinstance(value, int | float) for value in metrics.values()):
            raise TypeError(f"scores of {key} are not numbers by metric")


def _unfit_state(prepared: Prepared, state: SavedState) -> str | None:
    """Why ``state`` cannot continue the run ``prepared`` builds (``None`` when it can). Tried on ``prepared``'s
    objects, which hold the state afterwards (build them again when it does not fit)."""
    if state.step >= prepared.schedule.steps:
        return f"{STATE_FILE} is at step {state.step}, not before the last step {prepared.schedule.steps}"
    try:
        _check_scores(state.trainer.get("scores"))
        prepared.trainer(_Discard(), None, None).load_state_dict(state.trainer)
    except Exception as error:  # any mismatch (keys, shapes, types) means the state is not this run's
        return f"{STATE_FILE} does not fit this run ({brief(error)})"
    return None


def _restart(path: Path, problem: str) -> None:
    logger.warning("%s: %s; restarting the run from step 0", path, problem)


def with_objects(
    config: RunConfig | Mapping[str, Any], *, setting: Any = None, encoder: Any = None, head: Any = None
) -> RunConfig:
    """``config`` (a ``RunConfig`` or a mapping) with the given Python objects in place of its setting, encoder or
    head, recorded as ``{object: label}`` (see ``execute``); a mapping may leave ``setting`` out then."""
    from mtlscope.settings.setting import Setting

    data = config.to_dict() if isinstance(config, RunConfig) else json.loads(json.dumps(dict(config), default=str))
    if setting is not None:
        if not isinstance(setting, Setting):
            raise ConfigError(f"setting=: expected a mtlscope Setting, got a {type(setting).__name__}")
        previous = data.get("setting")
        tasks = previous.get("tasks") if isinstance(previous, dict) else None
        data["setting"] = {"object": f"Setting {setting.name!r}", **({"tasks": tasks} if tasks else {})}
    for part, value in (("encoder", encoder), ("head", head)):
        if value is None:
            continue
        if not (isinstance(value, torch.nn.Module) or callable(value)):
            raise ConfigError(
                f"{part}=: expected an nn.Module or a factory returning one, got a {type(value).__name__}"
            )
        kind = "instance" if isinstance(value, torch.nn.Module) else "factory"
        model = data.get("model")
        data["model"] = {**(model if isinstance(model, dict) else {}), part: {"object": f"{describe(value)} ({kind})"}}
    return validate_config(data)


def execute(
    config: RunConfig | Mapping[str, Any],
    out: str | Path,
    *,
    setting: Any = None,
    encoder: Any = None,
    head: Any = None,
    force: bool = False,
    resume: bool = True,
    restart_failed: bool = False,
    wait: bool = False,
    on_step: Callable[[int], None] | None = None,
    source: str = "config",
    trackers: Sequence[Mapping[str, Any]] = (),
    on_failure: OnFailure = "raise",
    threads: int | Threads | None = None,
) -> RunOutcome:
    """Run ``config`` into ``out/<run_id>``, holding the run's lock (``mtlscope.runs.locking``).

    A run already completed (or diverged) there is skipped unless ``force``, or unless ``store.damage`` finds it
    damaged (records truncated or changed, summary or config missing...): then it runs again from step 0, with one
    logged line saying why. An unfinished one (killed or failed) with a saved training state continues from its
    last checkpoint when ``resume`` (the default; a failed one starts over with ``restart_failed``), else starts
    over. A saved state that cannot be loaded safely or does not fit the run or its records (empty, garbage, not a
    training state, records deleted) is never used: the run starts over from step 0, with one logged line.

    Raises ``ConfigError`` (nothing written) for a config that cannot be built, and ``InUseError`` (nothing
    touched) when another process holds the run's lock, unless ``wait`` (then it waits for that process).

    A run that fails (an exception during training) is marked ``failed`` in its directory, with the error and its
    traceback in ``summary.json``; then ``execute`` raises ``RunFailed`` (the exception chained as its cause), or
    with ``on_failure="return"`` returns the failed ``RunOutcome`` (what sweeps do, to record it and go on). A
    diverged run is a result: its outcome is returned either way.

    ``trackers``: specs of MLflow / TensorBoard views of the run (see ``mtlscope.runs.tracking``); they get the
    records after the run directory. A bad spec or a missing package raises ``TrackingError`` (nothing written); a
    tracker failing during the run is dropped with a warning. Tracking is no part of the config or the run id.

    ``setting``, ``encoder``, ``head``: Python objects used instead of the config's (a ``Setting``; an
    ``nn.Module`` instance, deep-copied so it is never trained, or a factory called with ``input_shape`` /
    ``output_size`` like an import path's); ``config`` may then be a mapping without ``setting``. The run id covers
    them (the setting's data fingerprint; a module's class source and initial weights; a factory's source). They
    exist only in this process: sweep workers, Ray and ``mtlscope run`` need import paths or plugins.

    ``threads``: the torch (intra-op) threads of this run, set for its duration and restored afterwards (default:
    the process's count, torch's default unless the caller set it); recorded in ``environment.json``
    (``torch_threads``, ``torch_threads_from``), no part of the config or the run id (``mtlscope.runs.threads``).
    A value that is not a positive integer is a ``ValueError`` (one line).
    """
    if on_failure not in ("raise", "return"):
        raise ValueError(f"on_failure: expected 'raise' or 'return', got {str(on_failure)[:40]!r}")
    chosen = threads if isinstance(threads, Threads) else None
    if threads is not None and chosen is None:
        chosen = Threads(check_threads(threads), "option")
    with using_threads(chosen.count if chosen is not None else None):
        return _execute(
            config,
            out,
            objects={
                key: value
                for key, value in (("setting", setting), ("encoder", encoder), ("head", head))
                if value is not None
            },
            force=force,
            resume=resume,
            restart_failed=restart_failed,
            wait=wait,
            on_step=on_step,
            source=source,
            trackers=trackers,
            on_failure=on_failure,
            threads_from=chosen.chosen_by if chosen is not None else "process",
        )


def _execute(
    config: RunConfig | Mapping[str, Any],
    out: str | Path,
    *,
    objects: dict[str, Any],
    force: bool,
    resume: bool,
    restart_failed: bool,
    wait: bool,
    on_step: Callable[[int], None] | None,
    source: str,
    trackers: Sequence[Mapping[str, Any]],
    on_failure: OnFailure,
    threads_from: str,
) -> RunOutcome:
    """``execute`` with its threads set (``threads_from``: how their count was chosen, for ``environment.json``)."""
    if objects or not isinstance(config, RunConfig):
        config = with_objects(config, **objects)
    prepared = prepare(config, source, objects=objects)
    tracking = build_trackers(trackers)
    path = Path(out) / prepared.config.run_id()
    with hold_run(path, wait=wait):
        status = stored_status(path)
        if not force and status in FINISHED:
            problem = damage(path)
            if problem is None:
                return RunOutcome(path.name, path, str(status), f"already {status}", skipped=True)
            logger.warning("%s: %s; running it again from step 0", path, problem)
        resuming = resume and not force and status in ("running", "failed")
        if restart_failed and status == "failed":
            resuming = False
        state, tried = _resumable_state(path, prepared) if resuming else (None, False)
        if state is not None:
            try:
                environment = describe_environment(prepared.device, threads_from)
                directory = RunDirectory.reopen(path, state, prepared.config.to_dict(), environment)
            except StoreError as error:
                _restart(path, str(error))
                state = None
        if state is None:
            prepared = (
                prepare(config, source, objects=objects) if tried else prepared
            )  # a state tried on it may have changed it
            directory = RunDirectory.create(
                path, prepared.config.to_dict(), describe_environment(prepared.device, threads_from)
            )
        outcome, cause = _train(prepared, directory, tracking, state, on_step)
    if outcome.status == "failed" and on_failure == "raise":
        raise RunFailed(outcome) from cause
    return outcome


def _resumable_state(path: Path, prepared: Prepared) -> tuple[SavedState | None, bool]:
    """The saved state of the run at ``path`` if it can continue the run (a logged line says why not), and whether
    a state was tried on ``prepared``'s objects."""
    try:
        state = read_state(path)
    except StoreError as error:
        _restart(path, str(error))
        return None, False
    if state is None:
        return None, False
    problem = _unfit_state(prepared, state)
    if problem is not None:
        _restart(path, problem)
        return None, True
    return state, True


def _train(
    prepared: Prepared,
    directory: RunDirectory,
    tracking: Sequence[Tracker],
    state: SavedState | None,
    on_step: Callable[[int], None] | None,
) -> tuple[RunOutcome, Exception | None]:
    """Train and finish the run directory; the outcome, and the exception the training raised if it failed."""
    path = directory.path
    run_id = path.name
    sink = TeeSink(directory, tracking)
    sink.start(prepared.config, run_id, path, state.step if state is not None else None)
    started = time.monotonic()
    base = {
        "run_id": run_id,
        "variant": prepared.config.variant,
        "tasks": list(prepared.setting.task_names),
        "task_declarations": {task.name: task.declaration() for task in prepared.setting.tasks},
    }
    try:
        trainer = prepared.trainer(sink, directory, on_step)
        if state is not None:
            trainer.load_state_dict(state.trainer)
        outcome = trainer.run()
        weights = _save_weights(prepared, path, outcome.status, outcome.steps)
    except Exception as error:  # recorded, never lost: the run is marked failed with the message
        message = f"{type(error).__name__}: {error}"
        failed = {**base, "status": "failed", "error": message, "traceback": traceback.format_exc()}
        directory.finish("failed", failed, message=message)
        sink.finish("failed", failed)
        return RunOutcome(run_id, path, "failed", message), error
    except BaseException:  # interrupted (Ctrl-C, a kill signal turned into an exception): the run stays resumable
        directory.close()
        sink.close()
        raise
    summary = {
        **base,
        "status": outcome.status,
        "steps": outcome.steps,
        "planned_steps": prepared.schedule.steps,
        "loss_scale": prepared.loss_scale,
        "wall_time_s": round(time.monotonic() - started, 3),
        "message": outcome.message,
        "timing_s": outcome.timing,
        "probe_schedule": outcome.probe_schedule,
        "final": {
            task: {split: metrics for (name, split), metrics in outcome.final_scores.items() if name == task}
            for task in prepared.setting.task_names
        },
        "weights": weights,
    }
    status = directory.finish(outcome.status, summary, steps=outcome.steps, message=outcome.message)
    if status != outcome.status:  # the records on disk were not what the run wrote
        message = str(read_status(path).get("message", ""))
        sink.finish(status, {**summary, "status": status, "message": message})
        return RunOutcome(run_id, path, status, message), None
    sink.finish(outcome.status, summary)
    return RunOutcome(run_id, path, outcome.status, outcome.message), None


def _save_weights(prepared: Prepared, path: Path, status: str, steps: int) -> dict[str, Any]:
    """Write the weights a finished run keeps (final ones when completed, the best checkpoint's when kept); the
    summary's ``weights`` entry."""
    weights: dict[str, Any] = {}
    if status == "completed":
        weights["final"] = save_weights(path, "final", cpu_copy(prepared.model), steps)
    best = prepared.best
    if best is not None and best.step is not None:
        weights["best"] = {**save_weights(path, "best", best.weights, best.step), **best.record()}
    return weights
