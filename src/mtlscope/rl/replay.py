"""A replay buffer of one task's transitions (first in, first out once full), sampled uniformly with replacement
from a seeded generator. Its ``state_dict`` holds the stored transitions (tensors only), so a saved run state
restores it exactly."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

FIELDS: tuple[str, ...] = ("observation", "action", "reward", "next_observation", "terminated")


class ReplayBuffer:
    def __init__(self, capacity: int, observation_size: int, action_size: int) -> None:
        if capacity < 1:
            raise ValueError(f"replay capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        sizes = {
            "observation": observation_size,
            "action": action_size,
            "reward": 1,
            "next_observation": observation_size,
            "terminated": 1,
        }
        # storage grows (doubling) up to the capacity, so a large capacity costs memory only once it is filled
        self.data = {name: torch.zeros(min(capacity, 1024), size) for name, size in sizes.items()}
        self.size = 0
        self.position = 0

    def __len__(self) -> int:
        return self.size

    def add(self, observation: Any, action: Any, reward: float, next_observation: Any, terminated: bool) -> None:
        row = self.position
        allocated = self.data["reward"].shape[0]
        if row >= allocated:
            grown = min(self.capacity, 2 * allocated)
            self.data = {
                name: torch.cat([v, v.new_zeros(grown - allocated, v.shape[1])]) for name, v in self.data.items()
            }
        self.data["observation"][row] = torch.as_tensor(observation, dtype=torch.float32)
        self.data["action"][row] = torch.as_tensor(action, dtype=torch.float32)
        self.data["reward"][row, 0] = float(reward)
        self.data["next_observation"][row] = torch.as_tensor(next_observation, dtype=torch.float32)
        self.data["terminated"][row, 0] = float(terminated)
        self.position = (self.position + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int, generator: torch.Generator) -> dict[str, Tensor]:
        """``batch_size`` transitions drawn uniformly with replacement; rewards and flags as [B] vectors."""
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        rows = torch.randint(self.size, (batch_size,), generator=generator)
        batch = {name: values[rows] for name, values in self.data.items()}
        batch["reward"] = batch["reward"].squeeze(1)
        batch["terminated"] = batch["terminated"].squeeze(1)
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "position": self.position,
            "data": {name: values[: self.size].clone() for name, values in self.data.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        size, position = int(state["size"]), int(state["position"])
        if not (0 <= size <= self.capacity and 0 <= position < self.capacity):
            raise ValueError(f"replay state of size {size} does not fit a buffer of capacity {self.capacity}")
        allocated = min(self.capacity, max(1024, size))
        data = {}
        for name, values in self.data.items():
            stored = state["data"][name]
            if stored.shape != (size, values.shape[1]):
                raise ValueError(
                    f"replay state: {name} has shape {tuple(stored.shape)}, expected {(size, values.shape[1])}"
                )
            data[name] = torch.cat([stored.float(), stored.new_zeros(allocated - size, values.shape[1])])
        self.data = data
        self.size, self.position = size, position
