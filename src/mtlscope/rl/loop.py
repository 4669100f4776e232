"""The multi-task RL loop: iterations of sampling and soft actor-critic updates on every task, with checkpoints,
transference on the critic loss and a saved state to resume from.

Iteration ``i`` (1-based): each task's environment runs ``samples_per_iteration`` steps of the current policy
(sampled actions; uniform random ones for the first ``random_samples`` steps of the task) into that task's replay
buffer, starting fresh episodes (each iteration starts a new episode, so an iteration's samples depend only on the
policy and the seed: what makes a resumed run exact); then ``gradient_steps`` gradient steps, each on one batch per
task (``MultiTaskSAC.update``). A *step* of the run is one gradient step; a checkpoint follows every
``eval_every``-th iteration and the last one (and step 0).

Transference (Fifty et al. 2020, eq. 1) is measured on the critic loss before every ``every_steps``-th gradient
step, on that step's own batches and soft targets, with ``mtlscope.probes.task_affinity``: the critic is the shared
module, the per-task critic losses the task losses, the critic's Adam optimizer simulated exactly (exact lookahead)
or to first order. The matrices are averaged and recorded by the affinity probe's own code (``AffinityProbe``), so
runs store them as supervised runs do (split ``probe``, ``affinity/<source>`` with the target in ``task``). The
measurement draws no random numbers and moves nothing: a run trains the same with or without it.

Records at a checkpoint, per task: split ``val``, the deterministic policy's ``success_rate`` (an episode
succeeds when ``info['success']`` is set at any of its steps) and ``return`` over ``eval_episodes`` episodes (the
same episodes at every checkpoint); split ``train``, the means over the gradient steps since the previous
checkpoint of ``loss`` (the critic loss), ``critic_loss``, ``actor_loss``, ``entropy`` and the temperature
``alpha``, and ``success_rate`` and ``return`` of the sampling episodes completed in that window (when any).

The saved state (at every checkpoint but the last) holds the networks, the optimizers, the log temperatures, the
replay buffers, the random generators, the transference means and the window's sums: a resumed run continues
exactly as the uninterrupted one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from mtlscope.engine.evaluation import Scores
from mtlscope.engine.trainer import Record, RecordSink, Schedule, StateSink, TrainingOutcome
from mtlscope.models.multitask import derived_seed
from mtlscope.probes.affinity import AffinityProbe, task_affinity
from mtlscope.rl.config import RLConfig
from mtlscope.rl.metaworld import MetaWorldTask, episode_generator
from mtlscope.rl.replay import ReplayBuffer
from mtlscope.rl.sac import MultiTaskSAC

#: The per-task values of a gradient step averaged over a checkpoint window.
STEP_VALUES: tuple[str, ...] = ("critic_loss", "actor_loss", "alpha", "entropy")
GENERATORS: tuple[str, ...] = ("exploration", "replay", "updates")


class SACTrainer:
    """Runs ``agent`` on ``environments`` (one per task, in the agent's task order) as ``config`` says."""

    def __init__(
        self,
        agent: MultiTaskSAC,
        environments: Sequence[MetaWorldTask],
        config: RLConfig,
        schedule: Schedule,
        *,
        seed: int,
        sink: RecordSink,
        state_sink: StateSink | None = None,
        on_step: Callable[[int], None] | None = None,
    ) -> None:
        self.agent = agent
        self.environments = list(environments)
        self.names = [env.name for env in self.environments]
        if self.names != agent.tasks:
            raise ValueError(f"environments {self.names} are not the agent's tasks {agent.tasks}")
        self.config = config
        self.schedule = schedule
        self.seed = seed
        self.sink = sink
        self.state_sink = state_sink
        self.on_step = on_step
        self.buffers = [
            ReplayBuffer(config.buffer_size, agent.observation_size, agent.action_size) for _ in self.environments
        ]
        self.generators = {name: torch.Generator().manual_seed(derived_seed(seed, "sac", name)) for name in GENERATORS}
        transference = config.transference
        self.transference = (
            AffinityProbe(transference.every_steps, transference.mode, False, "auto") if transference else None
        )
        self.step = 0
        self.iteration = 0
        self.restored = False
        self.scores: Scores = {}
        self.timing: dict[str, float] = {}
        self._new_window()

    # -- state ---------------------------------------------------------------------------------------------

    def _new_window(self) -> None:
        tasks = len(self.names)
        self.window: dict[str, Any] = {
            "steps": 0,
            "sums": {name: torch.zeros(tasks, dtype=torch.float64) for name in STEP_VALUES},
            "episodes": torch.zeros(tasks, dtype=torch.float64),
            "returns": torch.zeros(tasks, dtype=torch.float64),
            "successes": torch.zeros(tasks, dtype=torch.float64),
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "tasks": list(self.names),
            "step": self.step,
            "iteration": self.iteration,
            "agent": self.agent.state_dict(),
            "buffers": [buffer.state_dict() for buffer in self.buffers],
            "generators": {name: g.get_state() for name, g in self.generators.items()},
            "transference": self.transference.state_dict() if self.transference is not None else {},
            "window": self.window,
            "scores": self.scores,
            "timing": dict(self.timing),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if list(state["tasks"]) != self.names:
            raise ValueError(f"the state's tasks {state['tasks']} are not this run's {self.names}")
        if len(state["buffers"]) != len(self.buffers):
            raise ValueError("the state holds another number of replay buffers")
        self.agent.load_state_dict(state["agent"])
        for buffer, buffer_state in zip(self.buffers, state["buffers"], strict=True):
            buffer.load_state_dict(buffer_state)
        for name, generator in self.generators.items():
            generator.set_state(state["generators"][name])
        if self.transference is not None:
            self.transference.load_state_dict(state["transference"])
        window = state["window"]
        if set(window["sums"]) != set(STEP_VALUES):
            raise ValueError("the state's window is not this loop's")
        self.window = window
        self.scores = state["scores"]
        self.timing = dict(state["timing"])
        self.step, self.iteration = int(state["step"]), int(state["iteration"])
        self.restored = True

    # -- the loop ------------------------------------------------------------------------------------------

    def _time(self, part: str, started: float) -> None:
        self.timing[part] = self.timing.get(part, 0.0) + time.perf_counter() - started

    def run(self) -> TrainingOutcome:
        config = self.config
        if not self.restored:
            self._checkpoint(0)
        for iteration in range(self.iteration + 1, config.iterations + 1):
            started = time.perf_counter()
            self._collect(iteration)
            self._time("sample_s", started)
            for index in range(config.gradient_steps):
                step = (iteration - 1) * config.gradient_steps + index  # 0-based index of the gradient step
                bad = self._gradient_step(step)
                if bad:
                    return self._outcome("diverged", step, f"non-finite critic loss at step {step + 1}: {bad}")
                if self.on_step is not None:
                    self.on_step(step + 1)
            self.iteration = iteration
            if iteration % config.eval_every == 0 or iteration == config.iterations:
                self._checkpoint(iteration * config.gradient_steps)
        return self._outcome("completed", self.schedule.steps, "")

    def _outcome(self, status: Any, step: int, message: str) -> TrainingOutcome:
        timing = {part: round(seconds, 4) for part, seconds in self.timing.items()}
        return TrainingOutcome(status, step, message, self.scores, timing)

    def _collect(self, iteration: int) -> None:
        """``samples_per_iteration`` steps per task into its buffer, from fresh episodes."""
        config = self.config
        for task, (env, buffer) in enumerate(zip(self.environments, self.buffers, strict=True)):
            generator = episode_generator(self.seed, "collect", env.name, iteration)
            observation = env.reset(generator)
            episode_return, succeeded = 0.0, False
            for index in range(config.samples_per_iteration):
                if (iteration - 1) * config.samples_per_iteration + index < config.random_samples:
                    action = generator.uniform(-1.0, 1.0, env.action_size).astype(np.float32)
                else:
                    action = self.agent.act(torch.from_numpy(observation), task, self.generators["exploration"]).numpy()
                transition = env.step(action)
                buffer.add(observation, action, transition.reward, transition.observation, transition.terminated)
                episode_return += transition.reward
                succeeded = succeeded or transition.success
                observation = transition.observation
                if transition.terminated or env.episode_over:
                    self.window["episodes"][task] += 1
                    self.window["returns"][task] += episode_return
                    self.window["successes"][task] += float(succeeded)
                    episode_return, succeeded = 0.0, False
                    if index + 1 < config.samples_per_iteration:
                        observation = env.reset(generator)

    def _gradient_step(self, step: int) -> str:
        """One gradient step (transference first when due); the non-finite critic losses as text ('' if none)."""
        agent = self.agent
        batches = [buffer.sample(self.config.batch_size, self.generators["replay"]) for buffer in self.buffers]
        batch = agent.stack(batches)
        targets = agent.critic_targets(batch, self.generators["updates"])
        if self.transference is not None and step % self.transference.every_steps == 0:
            started = time.perf_counter()
            result = task_affinity(
                lambda: dict(zip(self.names, agent.critic_losses(batch, targets), strict=True)),
                agent.critic,
                agent.critic_optimizer,
                exact="exact" in self.transference.kinds,
                first_order="first_order" in self.transference.kinds,
            )
            self.transference.add(result)
            self._time("probe_s/transference", started)
        started = time.perf_counter()
        values = agent.update(batch, targets, self.generators["updates"])
        self._time("train_s", started)
        losses = values["critic_loss"]
        if not bool(torch.isfinite(losses).all()):
            return ", ".join(f"{name}={float(v)}" for name, v in zip(self.names, losses) if not math.isfinite(float(v)))
        for name in STEP_VALUES:
            self.window["sums"][name] += values[name].double()
        self.window["steps"] += 1
        return ""

    def _evaluate(self) -> Scores:
        """The deterministic policy's success rate and mean return per task (split ``val``)."""
        scores: Scores = {}
        for task, env in enumerate(self.environments):
            generator = episode_generator(self.seed, "evaluate", env.name)
            returns, successes = [], []
            for _ in range(self.config.eval_episodes):
                observation = env.reset(generator)
                total, succeeded = 0.0, False
                while not env.episode_over:
                    transition = env.step(self.agent.act(torch.from_numpy(observation), task, None).numpy())
                    total += transition.reward
                    succeeded = succeeded or transition.success
                    observation = transition.observation
                    if transition.terminated:
                        break
                returns.append(total)
                successes.append(float(succeeded))
            scores[(env.name, "val")] = {"success_rate": float(np.mean(successes)), "return": float(np.mean(returns))}
        return scores

    def _window_scores(self) -> Scores:
        window = self.window
        scores: Scores = {}
        if window["steps"] == 0:
            return scores
        for task, name in enumerate(self.names):
            means = {key: float(window["sums"][key][task]) / window["steps"] for key in STEP_VALUES}
            metrics = {"loss": means["critic_loss"], **means}
            episodes = float(window["episodes"][task])
            if episodes > 0:
                metrics["success_rate"] = float(window["successes"][task]) / episodes
                metrics["return"] = float(window["returns"][task]) / episodes
            scores[(name, "train")] = metrics
        return scores

    def _checkpoint(self, step: int) -> None:
        epoch = self.schedule.epoch(step)
        started = time.perf_counter()
        scores = {**self._window_scores(), **self._evaluate()}
        self._time("evaluate_s", started)
        records = [
            Record(step, epoch, task, split, metric, value)
            for (task, split), metrics in scores.items()
            for metric, value in metrics.items()
        ]
        if self.transference is not None and step > 0:
            for task, values in self.transference.report(self.names).items():
                records += [Record(step, epoch, task, "probe", metric, value) for metric, value in values.items()]
        self.sink.write(records)
        self._new_window()
        self.step, self.scores = step, scores
        if self.state_sink is not None and step < self.schedule.steps:
            self.state_sink.save_state(self.state_dict())
