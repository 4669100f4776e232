"""The training loop (Mueller et al. 2025, App. A): steps, checkpoints, probes and divergence, for any method and probe.

At step 0, every ``eval_every`` steps (or at log-spaced steps, ``Schedule.checkpoints_per_decade``) and at the last
step, the trainer records for every task the metrics on train (the full training set, or its first
``train_eval_limit`` examples), val and test, the optimizer's learning rate (that of the next update), the batch
size and the temperature lr/B (split ``optim``), and the values of the run's probes (split ``probe``; each probe at
every ``probe.every``-th checkpoint and at the last). Probes that observe steps (``probe.observes_steps``) also see
every step's batch before its update. Probes run with the model in eval mode. Per-step diagnostics (split ``step``;
see ``mtlscope.engine.step``) are kept in memory and written with the next checkpoint. Records go to a
``RecordSink`` as soon as a checkpoint is complete; then the caller's ``CheckpointHook``s see the checkpoint (e.g.
to keep the best weights); after them, the whole training state goes to the ``StateSink`` (if any), so a run can
resume from its last checkpoint and continue exactly as if it had not stopped.

Learning rate: with a schedule ``lr_at`` (a function of the 0-based step index; ``mtlscope.engine.lr_schedules``),
the trainer sets every parameter group's learning rate to ``lr_at(s)`` before step ``s`` (before step-observing
probes see the step) and at the checkpoint after ``s`` steps, so the optimizer always holds the learning rate of
its next update — what lookahead simulations (IT-MTL, the affinity probe) and the records read. Without one, the
optimizer's learning rate is left as it is.

Precision: with ``autocast="bf16"`` (``training.autocast``) the model's forward passes inside training steps run
under bfloat16 autocast (``mtlscope.engine.precision``); checkpoints and probes always run in float32.

Randomness: every stream is seeded from the run seed — model initialization, one batch stream per task,
the method generator, one generator per probe — and torch's global generator (used by dropout) is seeded
at the start of training; all of them are part of the saved state.

A non-finite task loss (at a step or at a checkpoint) ends the run with status ``diverged``; the records
written so far stay. The loop never branches on the method or the probes it runs.

Probes without an explicit ``every`` (``every_steps``) get a cost-aware spacing that keeps the probes within
about 25% of the training work (``mtlscope.engine.probe_budget``); the plan is in ``probe_plan`` and the outcome.

The trainer also times its parts (``timing``: seconds in training steps, checkpoint evaluation and each
probe), reported in the run summary so the cost of a probe schedule can be read off any run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Protocol

import torch

from mtlscope.engine.evaluation import Scores, evaluate
from mtlscope.engine.gramian import DEFAULT_JACOBIAN_BUDGET_MB
from mtlscope.engine.hooks import Probe, ProbeContext, StepContext
from mtlscope.engine.precision import TrainingAutocast
from mtlscope.engine.probe_budget import plan_probe_schedule, warn_sparsest
from mtlscope.engine.sampling import Batch, BatchSampler
from mtlscope.engine.step import TrainingStep
from mtlscope.methods.base import Method
from mtlscope.models.multitask import MultiTaskModel, derived_seed
from mtlscope.settings.setting import Setting


class Record(NamedTuple):
    """One row of a run's long records table."""

    step: int
    epoch: float
    task: str
    split: str
    metric: str
    value: float


RECORD_COLUMNS: tuple[str, ...] = Record._fields


class RecordSink(Protocol):
    def write(self, records: Sequence[Record]) -> None: ...


class StateSink(Protocol):
    def save_state(self, state: dict[str, Any]) -> None: ...


class CheckpointHook(Protocol):
    """What the trainer's caller keeps across checkpoints (e.g. the best validation checkpoint's weights): it sees
    every checkpoint's scores with the model as it is at that step (it must not change the model), and its state
    (``state_dict``, under ``name``) is part of the training state, so a resumed run continues it exactly."""

    name: str

    def at_checkpoint(self, step: int, scores: Scores, model: MultiTaskModel) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class ListSink:
    """Keeps records in memory (tests, notebooks)."""

    def __init__(self) -> None:
        self.records: list[Record] = []

    def write(self, records: Sequence[Record]) -> None:
        self.records.extend(records)


def log_spaced_steps(steps: int, per_decade: int) -> tuple[int, ...]:
    """The checkpoint steps of a log-spaced schedule: step 0, the nearest integer to ``10 ** (j / per_decade)``
    for j = 0, 1, 2, ... while it is at most ``steps``, and ``steps`` itself; sorted, each once.

    ``per_decade`` checkpoints per factor of 10 in steps (fewer in the first decade, where several powers round
    to the same integer): e.g. ``log_spaced_steps(100, 5)`` is ``(0, 1, 2, 3, 4, 6, 10, 16, 25, 40, 63, 100)``.
    Dense at the start of training, where the loss falls fastest, and about uniform in log training loss where
    the loss falls as a power of the step."""
    if min(steps, per_decade) < 1:
        raise ValueError(f"log-spaced steps need steps >= 1 and per_decade >= 1, got {steps} and {per_decade}")
    chosen = {0, steps}
    j = 0
    while (step := round(10 ** (j / per_decade))) <= steps:
        chosen.add(step)
        j += 1
    return tuple(sorted(chosen))


@dataclass(frozen=True)
class Schedule:
    """How long to train and when to take checkpoints (in optimizer steps).

    Checkpoints are at step 0, at the last step and either every ``eval_every`` steps or, with
    ``checkpoints_per_decade``, at the log-spaced steps of ``log_spaced_steps`` (give exactly one of the two)."""

    steps: int
    steps_per_epoch: int
    eval_every: int | None = None
    checkpoints_per_decade: int | None = None
    _log_steps: dict[int, int] = field(init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        if (self.eval_every is None) == (self.checkpoints_per_decade is None):
            raise ValueError(f"a schedule needs exactly one of eval_every and checkpoints_per_decade, got {self}")
        interval = self.eval_every if self.eval_every is not None else self.checkpoints_per_decade
        if min(self.steps, self.steps_per_epoch, interval or 0) < 1:
            raise ValueError(f"schedule values must be >= 1, got {self}")
        if self.checkpoints_per_decade is not None:
            steps = log_spaced_steps(self.steps, self.checkpoints_per_decade)
            self._log_steps.update({step: index for index, step in enumerate(steps)})

    def is_checkpoint(self, step: int) -> bool:
        if self.eval_every is None:
            return step in self._log_steps
        return step == 0 or step == self.steps or step % self.eval_every == 0

    def checkpoint_index(self, step: int) -> int:
        """The number of regular checkpoints before ``step`` (0 at step 0): ``step // eval_every``, or the index
        of ``step`` among the log-spaced steps. Probes run at every ``probe.every``-th index."""
        if self.eval_every is None:
            return self._log_steps[step]
        return step // self.eval_every

    def regular_checkpoints(self) -> int:
        """The number of checkpoint indices before the last checkpoint (they are 0, 1, ..., this - 1)."""
        return len({self.checkpoint_index(step) for step in self.checkpoint_steps() if step != self.steps})

    def checkpoint_steps(self) -> tuple[int, ...]:
        """Every checkpoint step, in order."""
        if self.eval_every is None:
            return tuple(self._log_steps)
        return tuple(sorted({*range(0, self.steps + 1, self.eval_every), self.steps}))

    def epoch(self, step: int) -> float:
        return step / self.steps_per_epoch


@dataclass
class TrainingOutcome:
    status: Literal["completed", "diverged"]
    steps: int
    message: str = ""
    final_scores: Scores = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)
    probe_schedule: dict[str, dict[str, object]] = field(default_factory=dict)


class Trainer:
    """Trains ``model`` on ``setting`` with ``method`` and ``optimizer`` according to ``schedule``."""

    def __init__(
        self,
        setting: Setting,
        model: MultiTaskModel,
        method: Method,
        optimizer: torch.optim.Optimizer,
        *,
        schedule: Schedule,
        batch_size: int,
        loss_scale: float,
        seed: int,
        sink: RecordSink,
        probes: Sequence[Probe] = (),
        train_eval_limit: int | None = None,
        on_step: Callable[[int], None] | None = None,
        state_sink: StateSink | None = None,
        diagnostics_every: int | None = None,
        jacobian_mode: str = "auto",
        jacobian_chunk: int | None = None,
        gradient_path: str = "auto",
        jacobian_budget_mb: float = DEFAULT_JACOBIAN_BUDGET_MB,
        lr_at: Callable[[int], float] | None = None,
        checkpoint_hooks: Sequence[CheckpointHook] = (),
        autocast: str = "off",
    ) -> None:
        self.setting = setting
        self.model = model
        self.method = method
        self.optimizer = optimizer
        self.schedule = schedule
        self.batch_size = batch_size
        self.loss_scale = loss_scale
        self.seed = seed
        self.sink = sink
        self.probes = list(probes)
        # probes without an explicit spacing get the cost-aware one (mtlscope.engine.probe_budget)
        self.probe_plan = plan_probe_schedule(
            self.probes,
            steps=schedule.steps,
            regular_checkpoints=schedule.regular_checkpoints(),
            setting=setting,
            batch_size=batch_size,
        )
        self.step_probes = [probe for probe in self.probes if probe.observes_steps]
        self.train_eval_limit = train_eval_limit
        self.on_step = on_step
        self.state_sink = state_sink
        self.lr_at = lr_at
        self.checkpoint_hooks = list(checkpoint_hooks)
        method.setup(setting.task_names)
        self.sampler = BatchSampler(setting, batch_size, seed)
        self.method_generator = torch.Generator().manual_seed(derived_seed(seed, "method"))
        self.step_fn = TrainingStep(
            model,
            setting,
            method,
            optimizer,
            loss_scale,
            self.method_generator,
            steps_per_epoch=schedule.steps_per_epoch,
            jacobian_mode=jacobian_mode,
            jacobian_chunk=jacobian_chunk,
            diagnostics_every=diagnostics_every,
            gradient_path=gradient_path,
            jacobian_budget_mb=jacobian_budget_mb,
        )
        self.autocast = TrainingAutocast(model, autocast)  # training steps only: probes and evaluation stay float32
        self.probe_generators = {
            probe.name: torch.Generator().manual_seed(derived_seed(seed, "probe", probe.name)) for probe in self.probes
        }
        self.step = 0
        self.restored = False
        self.scores: Scores = {}
        self.pending: list[Record] = []
        self.timing: dict[str, float] = {}

    def _time(self, part: str, started: float) -> None:
        self.timing[part] = self.timing.get(part, 0.0) + time.perf_counter() - started

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue training exactly from the current step."""
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "method": self.method.state_dict(),
            "sampler": self.sampler.state_dict(),
            "method_generator": self.method_generator.get_state(),
            "probe_generators": {name: g.get_state() for name, g in self.probe_generators.items()},
            "probes": {probe.name: probe.state_dict() for probe in self.probes},
            "hooks": {hook.name: hook.state_dict() for hook in self.checkpoint_hooks},
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "scores": self.scores,
            "timing": dict(self.timing),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict``; ``run`` then continues after ``state["step"]``."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.method.load_state_dict(state["method"])
        self.sampler.load_state_dict(state["sampler"])
        self.method_generator.set_state(state["method_generator"])
        for name, generator_state in state["probe_generators"].items():
            self.probe_generators[name].set_state(generator_state)
        for probe in self.probes:
            probe.load_state_dict(state["probes"].get(probe.name, {}))
        for hook in self.checkpoint_hooks:  # a state without a hook's own is not this run's: KeyError
            hook.load_state_dict(state["hooks"][hook.name])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.scores = state["scores"]
        self.timing = dict(state.get("timing", {}))
        self.step = int(state["step"])
        self.restored = True

    def run(self) -> TrainingOutcome:
        """Train from the current step (0, or the restored one) to the end of the schedule."""
        warn_sparsest(self.probe_plan, self.schedule.regular_checkpoints())
        self.model.train()
        if not self.restored:
            torch.manual_seed(derived_seed(self.seed, "dropout"))
            scores = self._checkpoint(0)
            diverged = self._non_finite_train_loss(scores, 0)
            if diverged:
                return self._outcome("diverged", 0, diverged, scores)
        scores = self.scores
        for step in range(self.step + 1, self.schedule.steps + 1):
            batch = self.sampler.next()
            self._set_lr(step - 1)
            if self.step_probes:
                self._observe_step(batch, step - 1)
            started = time.perf_counter()
            with self.autocast.training_step():
                result = self.step_fn(batch, step - 1)
            self._time("train_s", started)
            if result.diagnostics:
                self.pending += self._diagnostic_records(step - 1, result.diagnostics)
            if not result.finite:
                bad = [
                    f"{task}={float(value)}"
                    for task, value in zip(self.setting.task_names, result.losses)
                    if not math.isfinite(float(value))
                ]
                self.sink.write(self.pending)
                self.pending = []
                return self._outcome(
                    "diverged", step - 1, f"non-finite training loss at step {step}: {', '.join(bad)}", scores
                )
            if self.on_step is not None:
                self.on_step(step)
            if self.schedule.is_checkpoint(step):
                scores = self._checkpoint(step)
                diverged = self._non_finite_train_loss(scores, step)
                if diverged:
                    return self._outcome("diverged", step, diverged, scores)
        return self._outcome("completed", self.schedule.steps, "", scores)

    def _outcome(
        self, status: Literal["completed", "diverged"], step: int, message: str, scores: Scores
    ) -> TrainingOutcome:
        timing = {part: round(seconds, 4) for part, seconds in self.timing.items()}
        plan = {planned.name: planned.as_dict() for planned in self.probe_plan}
        return TrainingOutcome(status, step, message, scores, timing, plan)

    def _observe_step(self, batch: Batch, step: int) -> None:
        """Let step-observing probes see the batch and the state before the update (model in eval mode)."""
        self.model.eval()
        try:
            for probe in self.step_probes:
                started = time.perf_counter()
                context = StepContext(
                    model=self.model,
                    setting=self.setting,
                    batch=batch,
                    step=step,
                    optimizer=self.optimizer,
                    loss_scale=self.loss_scale,
                    generator=self.probe_generators[probe.name],
                )
                probe.before_step(context)
                self._time(f"probe_s/{probe.name}", started)
        finally:
            self.model.train()

    def _set_lr(self, step: int) -> None:
        """Give every parameter group the learning rate of optimizer step ``step`` (0-based), if scheduled."""
        if self.lr_at is None:
            return
        lr = self.lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def _probe_due(self, probe: Probe, step: int) -> bool:
        return step == self.schedule.steps or self.schedule.checkpoint_index(step) % probe.every == 0

    def _non_finite_train_loss(self, scores: Scores, step: int) -> str:
        bad = [
            f"{task}={scores[(task, 'train')]['loss']}"
            for task in self.setting.task_names
            if not math.isfinite(scores[(task, "train")]["loss"])
        ]
        return f"non-finite full training loss at step {step}: {', '.join(bad)}" if bad else ""

    def _diagnostic_records(self, step: int, diagnostics: dict[str, float]) -> list[Record]:
        """``name/task`` keys become per-task records, plain names run-level records (task ``*``)."""
        epoch = self.schedule.epoch(step)
        records = []
        for key, value in diagnostics.items():
            metric, _, task = key.partition("/")
            records.append(Record(step, epoch, task or "*", "step", metric, float(value)))
        return records

    def _checkpoint(self, step: int) -> Scores:
        self._set_lr(step)
        epoch = self.schedule.epoch(step)
        started = time.perf_counter()
        scores = evaluate(self.model, self.setting, train_limit=self.train_eval_limit)
        self._time("evaluate_s", started)
        records = [
            Record(step, epoch, task, split, metric, value)
            for (task, split), metrics in scores.items()
            for metric, value in metrics.items()
        ]
        lr = float(self.optimizer.param_groups[0]["lr"])
        for task in self.setting.task_names:
            records += [
                Record(step, epoch, task, "optim", "lr", lr),
                Record(step, epoch, task, "optim", "batch_size", float(self.batch_size)),
                Record(step, epoch, task, "optim", "temperature", lr / self.batch_size),
            ]
        self.model.eval()
        for probe in self.probes:
            if not self._probe_due(probe, step):
                continue
            started = time.perf_counter()
            context = ProbeContext(
                model=self.model,
                setting=self.setting,
                step=step,
                epoch=epoch,
                scores=scores,
                optimizer=self.optimizer,
                loss_scale=self.loss_scale,
                batch_size=self.batch_size,
                generator=self.probe_generators[probe.name],
            )
            for task, values in probe(context).items():
                records += [Record(step, epoch, task, "probe", metric, value) for metric, value in values.items()]
            self._time(f"probe_s/{probe.name}", started)
        self.model.train()
        self.sink.write([*self.pending, *records])
        self.pending = []
        for hook in self.checkpoint_hooks:
            hook.at_checkpoint(step, scores, self.model)
        self.step, self.scores = step, scores
        if self.state_sink is not None and step < self.schedule.steps:
            self.state_sink.save_state(self.state_dict())
        return scores
