"""Meta-World environments (Yu et al. 2019, "Meta-World: A Benchmark and Evaluation for Multi-Task and Meta
Reinforcement Learning"; the ``metaworld`` 3.x package, MuJoCo physics) for multi-task RL runs.

One ``MetaWorldTask`` per task name (``reach-v3``, ``push-v3``, ...): a Sawyer arm environment of that task with
Meta-World's 50 goal/object variations (``metaworld.MT1(name).train_tasks``), 39-dimensional observations,
4-dimensional actions in [-1, 1] and ``info['success']``. Every episode draws its variation and its reset seed
from a numpy generator the caller seeds (``episode_generator``), so the same seed gives the same episodes.

``metaworld`` is an optional dependency (``pip install mtlscope[rl]``); it is imported only when an environment
is built or task names are checked, and its absence is one line saying how to install it.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mtlscope.models.multitask import derived_seed

#: The five Meta-World tasks of Fifty et al. 2020 (§5.1.3, Fig. 6), by their v3 names: reach, push, press button
#: top(-down), open window, close window.
PAPER_TASKS: tuple[str, ...] = (
    "reach-v3",
    "push-v3",
    "button-press-topdown-v3",
    "window-open-v3",
    "window-close-v3",
)
#: Meta-World's episode length (its environments truncate after this many steps).
EPISODE_STEPS = 500
INSTALL_HINT = "the metaworld setting needs the metaworld and mujoco packages: pip install mtlscope[rl]"


def _metaworld() -> Any:
    try:
        return importlib.import_module("metaworld")
    except ImportError:
        raise ValueError(INSTALL_HINT) from None


def available_tasks() -> tuple[str, ...]:
    """Every Meta-World v3 task name (``ValueError`` with the install line when metaworld is missing)."""
    metaworld = _metaworld()
    return tuple(sorted(metaworld.env_dict.ALL_V3_ENVIRONMENTS))


def check_tasks(names: Sequence[str]) -> tuple[str, ...]:
    """``names`` when each is a Meta-World task, at least one, none repeated; else a one-line ``ValueError``."""
    known = available_tasks()
    if not names:
        raise ValueError("expected at least one Meta-World task")
    for name in names:
        if name not in known:
            raise ValueError(f"unknown Meta-World task {str(name)[:60]!r}; available: {', '.join(known)}")
    repeated = sorted({name for name in names if list(names).count(name) > 1})
    if repeated:
        raise ValueError(f"Meta-World task {repeated[0]!r} is listed twice")
    return tuple(names)


def metaworld_version() -> str:
    """The installed metaworld package's version (recorded in a run's identity)."""
    from importlib.metadata import PackageNotFoundError, version

    _metaworld()
    try:
        return version("metaworld")
    except PackageNotFoundError:
        return "unknown"


def episode_generator(seed: int, *parts: str | int) -> np.random.Generator:
    """The numpy generator of a stream of episodes (``seed`` and names, e.g. ``("collect", task, iteration)``)."""
    return np.random.default_rng(derived_seed(seed, *(str(part) for part in parts)))


@dataclass
class Transition:
    """What one step returned: the next observation, the reward, whether the task ended (``terminated``; Meta-World
    never ends a task, only truncates its episodes) and whether it succeeded at this step."""

    observation: np.ndarray
    reward: float
    terminated: bool
    success: bool


class MetaWorldTask:
    """One Meta-World task's environment: episodes start with ``reset(generator)`` (a variation and a reset seed
    drawn from ``generator``), then ``step(action)`` until ``episode_steps`` steps (at most Meta-World's 500)."""

    def __init__(self, name: str, seed: int, episode_steps: int = EPISODE_STEPS) -> None:
        check_tasks([name])
        if not 1 <= episode_steps <= EPISODE_STEPS:
            raise ValueError(f"episode_steps: expected 1 to {EPISODE_STEPS}, got {episode_steps}")
        metaworld = _metaworld()
        benchmark = metaworld.MT1(name, seed=int(derived_seed(seed, "metaworld", name) % 2**31))
        self.name = name
        self.episode_steps = episode_steps
        self.variations = list(benchmark.train_tasks)
        self.env = benchmark.train_classes[name]()
        self.observation_size = int(self.env.observation_space.shape[0])
        self.action_size = int(self.env.action_space.shape[0])
        self.steps = 0

    def reset(self, generator: np.random.Generator) -> np.ndarray:
        """Start an episode on a variation and with a reset seed drawn from ``generator``; the first observation."""
        variation = self.variations[int(generator.integers(len(self.variations)))]
        self.env.set_task(variation)
        observation, _ = self.env.reset(seed=int(generator.integers(2**31 - 1)))
        self.steps = 0
        return np.asarray(observation, dtype=np.float32)

    def step(self, action: np.ndarray) -> Transition:
        action = np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)
        observation, reward, terminated, _, info = self.env.step(action)
        self.steps += 1
        return Transition(
            np.asarray(observation, dtype=np.float32), float(reward), bool(terminated), bool(info["success"])
        )

    @property
    def episode_over(self) -> bool:
        return self.steps >= self.episode_steps

    def close(self) -> None:
        self.env.close()
