"""An environment setting's run (``setting: {name: metaworld}``): resolving its config and building what
``mtlscope.runs.launch`` runs, the multi-task soft actor-critic loop of ``mtlscope.rl.loop``.

``mtlscope.runs.launch.prepare`` hands a config whose setting is an environment (``SettingConfig.is_environment``)
to ``prepare_environment_run``; the rest of a run (run directory, records, lock, resume, summary, final weights)
is the same as for any run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from mtlscope.engine.trainer import RecordSink, Schedule, StateSink
from mtlscope.messages import clip
from mtlscope.rl.config import RLConfig
from mtlscope.rl.loop import SACTrainer
from mtlscope.rl.metaworld import PAPER_TASKS, MetaWorldTask, check_tasks, metaworld_version
from mtlscope.rl.sac import MultiTaskSAC, SACOptions

if TYPE_CHECKING:
    from mtlscope.runs.config import RunConfig

#: What each task of an environment run declares (``Task.declaration``'s fields).
DIRECTIONS: dict[str, bool] = {
    "success_rate": True,
    "return": True,
    "loss": False,
    "critic_loss": False,
    "actor_loss": False,
}


@dataclass(frozen=True)
class EnvironmentTask:
    name: str

    def declaration(self) -> dict[str, Any]:
        return {"loss": "sac_critic", "fisher": None, "primary_metric": "success_rate", "higher_is_better": DIRECTIONS}


@dataclass(frozen=True)
class EnvironmentTasks:
    """The tasks of an environment run, as a run's summary lists them."""

    tasks: tuple[EnvironmentTask, ...]

    @property
    def task_names(self) -> list[str]:
        return [task.name for task in self.tasks]


def resolve_environment(config: RunConfig, source: str = "config") -> RunConfig:
    """``config`` with its task list (default: Fifty et al.'s five tasks) and identity filled in; ``ConfigError``
    (one line) for unknown tasks or a missing metaworld package."""
    from mtlscope.runs.config import ConfigError, _version, validate_config

    tasks = config.setting.tasks or list(PAPER_TASKS)
    try:
        check_tasks(tasks)
        version = metaworld_version()
    except ValueError as error:
        raise ConfigError(f"{source}: setting.tasks: {clip(str(error), 2000)}") from None
    data = config.to_dict()
    data["setting"]["tasks"] = list(tasks)
    data["identity"] = {"mtlscope": _version(), "sources": {}, "environment": {"metaworld": version}}
    return validate_config(data, source)


@dataclass
class EnvironmentRun:
    """What ``mtlscope.runs.launch`` needs of a prepared run: the resolved config, the tasks, the networks
    (``model``: what a finished run keeps), the schedule in gradient steps, and ``trainer``."""

    config: RunConfig
    setting: EnvironmentTasks
    agent: MultiTaskSAC
    environments: list[MetaWorldTask]
    schedule: Schedule
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    loss_scale: float = 1.0
    best: None = None

    @property
    def model(self) -> nn.Module:
        return self.agent.networks()

    @property
    def rl(self) -> RLConfig:
        assert self.config.rl is not None
        return self.config.rl

    def trainer(
        self, sink: RecordSink, state_sink: StateSink | None, on_step: Callable[[int], None] | None
    ) -> SACTrainer:
        return SACTrainer(
            self.agent,
            self.environments,
            self.rl,
            self.schedule,
            seed=self.config.seed,
            sink=sink,
            state_sink=state_sink,
            on_step=on_step,
        )


def schedule_of(rl: RLConfig) -> Schedule:
    return Schedule(
        steps=rl.iterations * rl.gradient_steps,
        steps_per_epoch=rl.gradient_steps,
        eval_every=rl.eval_every * rl.gradient_steps,
    )


def prepare_environment_run(config: RunConfig, source: str = "config") -> EnvironmentRun:
    """Resolve ``config`` and build its environments and agent (writes nothing)."""
    from mtlscope.runs.config import ConfigError

    resolved = resolve_environment(config, source)
    rl = resolved.rl
    assert rl is not None and resolved.setting.tasks is not None
    names = list(resolved.setting.tasks)
    try:
        environments = [MetaWorldTask(name, resolved.seed, rl.episode_steps) for name in names]
    except ValueError as error:
        raise ConfigError(f"{source}: setting: {clip(str(error), 400)}") from None
    options = SACOptions(hidden=tuple(rl.hidden), lr=rl.lr, gamma=rl.gamma, tau=rl.tau)
    first = environments[0]
    agent = MultiTaskSAC(names, first.observation_size, first.action_size, options, resolved.seed)
    return EnvironmentRun(
        config=resolved,
        setting=EnvironmentTasks(tuple(EnvironmentTask(name) for name in names)),
        agent=agent,
        environments=environments,
        schedule=schedule_of(rl),
    )
