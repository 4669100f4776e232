"""The ``rl`` section of a run config: the options of a multi-task soft actor-critic run on an environment
setting (``setting: {name: metaworld}``). Validated with the rest of the config (one-line errors naming the key).

The defaults are Fifty et al.'s (App. D.3) and softlearning's: 600 environment samples per task and 600 gradient
steps of batch 128 per task per iteration (the paper's), 2 x 256 networks, Adam 3e-4, gamma 0.99, tau 5e-3
(softlearning's; the paper's networks are 6 x 400, which the ``transference-metaworld`` preset sets).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: The settings that are environments (trained by ``mtlscope.rl``), not data sets.
ENVIRONMENT_SETTINGS: tuple[str, ...] = ("metaworld",)


class TransferenceConfig(BaseModel):
    """Transference on the critic loss: every ``every_steps`` gradient steps, ``exact`` (lookahead with the critic
    optimizer simulated), ``first_order`` or ``both``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    every_steps: int = Field(default=50, ge=1)
    mode: Literal["both", "exact", "first_order"] = "both"


class RLConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Training iterations; each collects ``samples_per_iteration`` environment steps per task, then takes
    #: ``gradient_steps`` gradient steps.
    iterations: int = Field(default=100, ge=1)
    samples_per_iteration: int = Field(default=600, ge=1)
    gradient_steps: int = Field(default=600, ge=1)
    #: Transitions per task in each gradient step's batch.
    batch_size: int = Field(default=128, ge=1)
    #: Environment steps per task taken with uniformly random actions before the policy acts.
    random_samples: int = Field(default=0, ge=0)
    #: Transitions each task's replay buffer holds (oldest dropped first).
    buffer_size: int = Field(default=1_000_000, ge=1)
    #: Steps of an episode (Meta-World's are 500 at most).
    episode_steps: int = Field(default=500, ge=1, le=500)
    hidden: list[int] = Field(default_factory=lambda: [256, 256], min_length=1)
    lr: float = Field(default=3e-4, gt=0)
    gamma: float = Field(default=0.99, ge=0, le=1)
    tau: float = Field(default=5e-3, gt=0, le=1)
    #: Evaluation (deterministic policy) every ``eval_every`` iterations, ``eval_episodes`` episodes per task.
    eval_every: int = Field(default=1, ge=1)
    eval_episodes: int = Field(default=10, ge=1)
    #: Transference on the critic loss; ``null``: not measured.
    transference: TransferenceConfig | None = Field(default_factory=TransferenceConfig)

    @model_validator(mode="after")
    def _sizes(self) -> RLConfig:
        if any(width < 1 for width in self.hidden):
            raise ValueError(f"hidden: expected layer widths >= 1 (got {self.hidden})")
        if self.batch_size > self.buffer_size:
            raise ValueError(f"batch_size ({self.batch_size}) is larger than buffer_size ({self.buffer_size})")
        return self
