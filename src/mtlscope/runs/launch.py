"""Running one config end to end: resolve, build, train, store (``mtlscope run``).

Everything that can fail because of the config (setting options, task names, model and method options)
is built *before* the run directory is created, so a bad config writes nothing. An exception during
training marks the run ``failed`` with the error message; a non-finite loss marks it ``diverged``.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mtlscope.engine.gradients import resolve_mode
from mtlscope.engine.loss_scale import resolve_loss_scale
from mtlscope.engine.optimizers import build_optimizer
from mtlscope.engine.trainer import Schedule, Trainer
from mtlscope.messages import clip
from mtlscope.methods.base import Method
from mtlscope.methods.registry import METHODS
from mtlscope.models.multitask import MultiTaskModel, build_model
from mtlscope.probes.base import Probe, build_probe
from mtlscope.runs.config import ConfigError, RunConfig, resolve
from mtlscope.runs.environment import describe_environment
from mtlscope.runs.store import STATUS_FILE, RunDirectory, read_state, read_status
from mtlscope.runs.tracking import TeeSink, build_trackers
from mtlscope.settings.registry import get as get_setting
from mtlscope.settings.setting import Setting


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
    loss_scale: float
    device: torch.device


def prepare(config: RunConfig, source: str = "config") -> Prepared:
    """Resolve ``config`` and build its setting, model, method, optimizer and probes (writes nothing)."""
    resolved = resolve(config, source)
    device = resolve_device(resolved.training.device)
    setting = get_setting(resolved.setting.name, tasks=resolved.setting.tasks, **resolved.setting.options)
    method_options = {k: v for k, v in resolved.method.items() if k != "name"}
    try:
        method = METHODS.build(resolved.method["name"], **method_options)
        method.setup(setting.task_names)
        model = build_model(setting, resolved.model.encoder or {}, resolved.model.head or {}, resolved.seed).to(device)
        probes = [build_probe(name, options) for name, options in resolved.probes.items()]
        resolve_mode(resolved.training.jacobian_mode, setting)
    except (KeyError, ValueError, TypeError) as error:  # a builder rejecting an option's value or type
        raise ConfigError(f"{source}: {error.args[0] if error.args else error}") from None
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
    eval_every = steps_per_epoch if training.eval_every == "epoch" else int(training.eval_every)
    return Prepared(
        config=resolved,
        setting=setting.to(device),
        model=model,
        method=method,
        optimizer=optimizer,
        probes=probes,
        schedule=Schedule(steps=steps, steps_per_epoch=steps_per_epoch, eval_every=eval_every),
        loss_scale=resolve_loss_scale(training.loss_scale, len(setting.tasks)),
        device=device,
    )


@dataclass(frozen=True)
class RunOutcome:
    run_id: str
    path: Path
    status: str
    message: str = ""
    skipped: bool = False


def execute(
    config: RunConfig,
    out: str | Path,
    *,
    force: bool = False,
    resume: bool = True,
    on_step: Callable[[int], None] | None = None,
    source: str = "config",
    trackers: Sequence[Mapping[str, Any]] = (),
) -> RunOutcome:
    """Run ``config`` into ``out/<run_id>``.

    A run already completed (or diverged) there is skipped unless ``force``; an unfinished one (killed or failed) with
    a saved training state continues from its last checkpoint when ``resume`` (the default), else starts
    over. Raises ``ConfigError`` (nothing written) for a config that cannot be built.

    ``trackers``: specs of MLflow / TensorBoard views of the run (see ``mtlscope.runs.tracking``); they get the
    records after the run directory. A bad spec or a missing package raises ``TrackingError`` (nothing written); a
    tracker failing during the run is dropped with a warning. Tracking is no part of the config or the run id.
    """
    prepared = prepare(config, source)
    tracking = build_trackers(trackers)
    run_id = prepared.config.run_id()
    path = Path(out) / run_id
    status = read_status(path)["status"] if (path / STATUS_FILE).exists() else None
    if not force and status in ("completed", "diverged"):
        return RunOutcome(run_id, path, str(status), f"already {status}", skipped=True)
    state = read_state(path) if resume and not force and status in ("running", "failed") else None
    if state is not None:
        directory = RunDirectory.reopen(path, int(state["step"]))
    else:
        directory = RunDirectory.create(path, prepared.config.to_dict(), describe_environment(prepared.device))
    sink = TeeSink(directory, tracking)
    sink.start(prepared.config, run_id, path, int(state["step"]) if state is not None else None)
    started = time.monotonic()
    base = {"run_id": run_id, "variant": prepared.config.variant, "tasks": list(prepared.setting.task_names)}
    try:
        trainer = Trainer(
            prepared.setting,
            prepared.model,
            prepared.method,
            prepared.optimizer,
            schedule=prepared.schedule,
            batch_size=prepared.config.training.batch_size,
            loss_scale=prepared.loss_scale,
            seed=prepared.config.seed,
            sink=sink,
            probes=prepared.probes,
            train_eval_limit=prepared.config.training.train_eval_limit,
            on_step=on_step,
            state_sink=directory if prepared.config.training.save_state else None,
            diagnostics_every=prepared.config.training.diagnostics_every,
            jacobian_mode=prepared.config.training.jacobian_mode,
            jacobian_chunk=prepared.config.training.jacobian_chunk,
        )
        if state is not None:
            trainer.load_state_dict(state)
        outcome = trainer.run()
    except Exception as error:  # recorded, never lost: the run is marked failed with the message
        message = f"{type(error).__name__}: {error}"
        failed = {**base, "status": "failed", "error": message, "traceback": traceback.format_exc()}
        directory.finish("failed", failed, message=message)
        sink.finish("failed", failed)
        return RunOutcome(run_id, path, "failed", message)
    except BaseException:  # interrupted (Ctrl-C, a kill signal turned into an exception): the run stays resumable
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
        "final": {
            task: {split: metrics for (name, split), metrics in outcome.final_scores.items() if name == task}
            for task in prepared.setting.task_names
        },
    }
    directory.finish(outcome.status, summary, steps=outcome.steps, message=outcome.message)
    sink.finish(outcome.status, summary)
    return RunOutcome(run_id, path, outcome.status, outcome.message)
