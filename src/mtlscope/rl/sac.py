"""Multi-task soft actor-critic (Haarnoja et al. 2018, "Soft Actor-Critic Algorithms and Applications", with the
softlearning defaults Fifty et al. 2020 name in App. D.3): one tanh-Gaussian policy and one twin Q critic shared
by all tasks, the task given as a one-hot vector appended to the observation, and one entropy temperature
``alpha_k = exp(log_alpha_k)`` per task tuned automatically towards the target entropy ``-|A|``.

One gradient step takes one batch per task (``MultiTaskSAC.update``); the multi-task loss of each part is the sum
over tasks of the per-task losses (each a mean over its own batch):

- critic: ``L_k(Q) = 1/2 E[(Q_1(s, a) - y)^2] + 1/2 E[(Q_2(s, a) - y)^2]`` with the soft target
  ``y = r + gamma (1 - terminated) (min_i Q'_i(s', a') - alpha_k log pi(a'|s'))``, ``a' ~ pi(.|s')``, ``Q'`` the
  target critic (``soft_target``, ``critic_loss``);
- actor: ``E[alpha_k log pi(a|s) - min_i Q_i(s, a)]``, ``a ~ pi(.|s)`` reparameterized (``actor_loss``), on the
  critic just updated;
- temperature: ``-E[log_alpha_k (log pi(a|s) + target_entropy)]`` (``temperature_loss``);
- then the target critic moves by ``Q' <- (1 - tau) Q' + tau Q`` (``soft_update``), every step.

Each part has its own Adam optimizer. Every random draw (the policy's noise) comes from the generator passed in.
The critic losses of a step, as a function of the critic alone (``critic_losses`` with the step's targets fixed),
are what transference is measured on (``mtlscope.rl.loop``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from mtlscope.models.multitask import derived_seed

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0


def mlp(inputs: int, hidden: Sequence[int], outputs: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(inputs, width), nn.ReLU()]
        inputs = width
    layers.append(nn.Linear(inputs, outputs))
    return nn.Sequential(*layers)


def tanh_log_det(u: Tensor) -> Tensor:
    """``log(1 - tanh(u)^2)``, elementwise, in a form that stays finite for large ``|u|``."""
    return 2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))


class TanhGaussianPolicy(nn.Module):
    """``a = tanh(u)``, ``u ~ N(mean(x), std(x)^2)`` per action dimension (log std clipped to [-20, 2])."""

    def __init__(self, inputs: int, action_size: int, hidden: Sequence[int]) -> None:
        super().__init__()
        self.net = mlp(inputs, hidden, 2 * action_size)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mean, log_std = self.net(x).chunk(2, dim=-1)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def sample(self, x: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """A reparameterized action and its log-density (change of variables through tanh included)."""
        mean, log_std = self(x)
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
        u = mean + log_std.exp() * noise
        gaussian = (-0.5 * noise.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        return torch.tanh(u), gaussian - tanh_log_det(u).sum(-1)

    def deterministic(self, x: Tensor) -> Tensor:
        return torch.tanh(self(x)[0])


class TwinQ(nn.Module):
    """Two Q networks of (input, action), each returning [N] values."""

    def __init__(self, inputs: int, action_size: int, hidden: Sequence[int]) -> None:
        super().__init__()
        self.q1 = mlp(inputs + action_size, hidden, 1)
        self.q2 = mlp(inputs + action_size, hidden, 1)

    def forward(self, x: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        joined = torch.cat([x, action], dim=-1)
        return self.q1(joined).squeeze(-1), self.q2(joined).squeeze(-1)


def soft_target(
    reward: Tensor,
    terminated: Tensor,
    next_q1: Tensor,
    next_q2: Tensor,
    next_log_prob: Tensor,
    alpha: Tensor,
    gamma: float,
) -> Tensor:
    """``r + gamma (1 - terminated) (min(Q'_1, Q'_2) - alpha log pi(a'|s'))``."""
    return reward + gamma * (1.0 - terminated) * (torch.minimum(next_q1, next_q2) - alpha * next_log_prob)


def critic_loss(q1: Tensor, q2: Tensor, target: Tensor) -> Tensor:
    """``1/2 mean (Q_1 - y)^2 + 1/2 mean (Q_2 - y)^2`` over the last dimension."""
    return 0.5 * (q1 - target).pow(2).mean(-1) + 0.5 * (q2 - target).pow(2).mean(-1)


def actor_loss(log_prob: Tensor, q1: Tensor, q2: Tensor, alpha: Tensor) -> Tensor:
    """``mean(alpha log pi - min(Q_1, Q_2))`` over the last dimension."""
    return (alpha * log_prob - torch.minimum(q1, q2)).mean(-1)


def temperature_loss(log_alpha: Tensor, log_prob: Tensor, target_entropy: float) -> Tensor:
    """``-mean(log_alpha (log pi + target_entropy))`` over the last dimension, log pi held fixed."""
    return -(log_alpha * (log_prob.detach() + target_entropy)).mean(-1)


@torch.no_grad()
def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """``target <- (1 - tau) target + tau source``, parameter by parameter."""
    for t, s in zip(target.parameters(), source.parameters(), strict=True):
        t.mul_(1.0 - tau).add_(s, alpha=tau)


@dataclass(frozen=True)
class SACOptions:
    hidden: tuple[int, ...] = (256, 256)
    lr: float = 3e-4
    gamma: float = 0.99
    tau: float = 5e-3


@dataclass
class TaskBatch:
    """One gradient step's batches, stacked task by task: every tensor has ``K * B`` rows, task k's in the k-th
    block of ``B``; ``inputs`` are observations with the task's one-hot appended."""

    inputs: Tensor
    action: Tensor
    reward: Tensor
    next_inputs: Tensor
    terminated: Tensor
    tasks: int

    def per_task(self, values: Tensor) -> Tensor:
        """[K, B] view of [K * B] values."""
        return values.view(self.tasks, -1)


class MultiTaskSAC:
    """The shared policy and twin critic, their target critic, the per-task log temperatures and the optimizers."""

    def __init__(
        self, tasks: Sequence[str], observation_size: int, action_size: int, options: SACOptions, seed: int
    ) -> None:
        self.tasks = list(tasks)
        self.options = options
        self.observation_size, self.action_size = observation_size, action_size
        self.target_entropy = -float(action_size)
        inputs = observation_size + len(self.tasks)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derived_seed(seed, "sac", "networks"))
            self.policy = TanhGaussianPolicy(inputs, action_size, options.hidden)
            self.critic = TwinQ(inputs, action_size, options.hidden)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = nn.Parameter(torch.zeros(len(self.tasks)))
        self.policy_optimizer = torch.optim.Adam(self.policy.parameters(), lr=options.lr)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=options.lr)
        self.alpha_optimizer = torch.optim.Adam([self.log_alpha], lr=options.lr)

    def networks(self) -> nn.ModuleDict:
        """The networks as one module (what a finished run keeps as its weights)."""
        return nn.ModuleDict({"policy": self.policy, "critic": self.critic, "target_critic": self.target_critic})

    def inputs(self, observations: Tensor, task: int) -> Tensor:
        """Observations [N, obs] of task ``task`` with its one-hot appended."""
        one_hot = torch.zeros(observations.shape[0], len(self.tasks))
        one_hot[:, task] = 1.0
        return torch.cat([observations, one_hot], dim=-1)

    @torch.no_grad()
    def act(self, observation: Tensor, task: int, generator: torch.Generator | None) -> Tensor:
        """An action for one observation: sampled with ``generator``, or the deterministic ``tanh(mean)``."""
        x = self.inputs(observation.unsqueeze(0), task)
        if generator is None:
            return self.policy.deterministic(x)[0]
        return self.policy.sample(x, generator)[0][0]

    def stack(self, batches: Sequence[dict[str, Tensor]]) -> TaskBatch:
        if len(batches) != len(self.tasks):
            raise ValueError(f"expected one batch per task ({len(self.tasks)}), got {len(batches)}")
        return TaskBatch(
            inputs=torch.cat([self.inputs(b["observation"], k) for k, b in enumerate(batches)]),
            action=torch.cat([b["action"] for b in batches]),
            reward=torch.cat([b["reward"] for b in batches]),
            next_inputs=torch.cat([self.inputs(b["next_observation"], k) for k, b in enumerate(batches)]),
            terminated=torch.cat([b["terminated"] for b in batches]),
            tasks=len(batches),
        )

    def alphas(self, batch: TaskBatch) -> Tensor:
        """[K * B] temperature of each row's task (no gradient)."""
        rows = batch.reward.shape[0] // batch.tasks
        return self.log_alpha.detach().exp().repeat_interleave(rows)

    @torch.no_grad()
    def critic_targets(self, batch: TaskBatch, generator: torch.Generator) -> Tensor:
        """[K * B] soft targets ``y`` (next actions drawn with ``generator``)."""
        next_action, next_log_prob = self.policy.sample(batch.next_inputs, generator)
        next_q1, next_q2 = self.target_critic(batch.next_inputs, next_action)
        return soft_target(
            batch.reward, batch.terminated, next_q1, next_q2, next_log_prob, self.alphas(batch), self.options.gamma
        )

    def critic_losses(self, batch: TaskBatch, targets: Tensor) -> Tensor:
        """[K] critic losses of the current critic against fixed ``targets``."""
        q1, q2 = self.critic(batch.inputs, batch.action)
        return critic_loss(batch.per_task(q1), batch.per_task(q2), batch.per_task(targets))

    def update(self, batch: TaskBatch, targets: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """One gradient step of critic, actor and temperatures, then the target critic; per-task [K] values of
        ``critic_loss``, ``actor_loss``, ``alpha`` (before the step) and ``entropy`` (``-log pi`` of the batch)."""
        alpha = self.log_alpha.detach().exp()
        critic_losses = self.critic_losses(batch, targets)
        self.critic_optimizer.zero_grad(set_to_none=True)
        critic_losses.sum().backward()
        self.critic_optimizer.step()

        action, log_prob = self.policy.sample(batch.inputs, generator)
        self.critic.requires_grad_(False)
        try:
            q1, q2 = self.critic(batch.inputs, action)
        finally:
            self.critic.requires_grad_(True)
        actor_losses = actor_loss(batch.per_task(log_prob), batch.per_task(q1), batch.per_task(q2), alpha[:, None])
        self.policy_optimizer.zero_grad(set_to_none=True)
        actor_losses.sum().backward()
        self.policy_optimizer.step()

        alpha_losses = temperature_loss(self.log_alpha[:, None], batch.per_task(log_prob), self.target_entropy)
        self.alpha_optimizer.zero_grad(set_to_none=True)
        alpha_losses.sum().backward()
        self.alpha_optimizer.step()

        soft_update(self.target_critic, self.critic, self.options.tau)
        return {
            "critic_loss": critic_losses.detach(),
            "actor_loss": actor_losses.detach(),
            "alpha": alpha,
            "entropy": -batch.per_task(log_prob.detach()).mean(-1),
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy.state_dict(),
            "critic": self.critic.state_dict(),
            "target_critic": self.target_critic.state_dict(),
            "log_alpha": self.log_alpha.detach().clone(),
            "policy_optimizer": self.policy_optimizer.state_dict(),
            "critic_optimizer": self.critic_optimizer.state_dict(),
            "alpha_optimizer": self.alpha_optimizer.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        self.critic.load_state_dict(state["critic"])
        self.target_critic.load_state_dict(state["target_critic"])
        log_alpha = state["log_alpha"]
        if log_alpha.shape != self.log_alpha.shape:
            raise ValueError(f"log_alpha has shape {tuple(log_alpha.shape)}, expected {tuple(self.log_alpha.shape)}")
        with torch.no_grad():
            self.log_alpha.copy_(log_alpha)
        self.policy_optimizer.load_state_dict(state["policy_optimizer"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        self.alpha_optimizer.load_state_dict(state["alpha_optimizer"])
