"""``MultiTaskModel``: a shared encoder with one head per task (Mueller et al., TMLR 2025, §2.1).

``f_{theta, phi_k} = h_{phi_k} o g_theta``. A single-task model is the same class with one head, so
single-task and multi-task runs share one code path.

Construction is seeded per part: the encoder's initial weights depend only on the seed, and each head's
only on the seed and the task name. The single-task and multi-task models of one seed therefore start
from the same encoder and the same head for every task they share.
"""

from __future__ import annotations

import numbers
import zlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mtlscope.models.components import example_inputs, make_part, representation_size
from mtlscope.models.encoders import ENCODERS
from mtlscope.models.heads import HEADS
from mtlscope.settings.setting import Setting


class MultiTaskModel(nn.Module):
    """Shared ``encoder`` (any ``nn.Module`` mapping inputs to ``[batch, features]``) and per-task ``heads`` (an
    ``nn.ModuleDict`` keyed by task name)."""

    def __init__(self, encoder: nn.Module, heads: Mapping[str, nn.Module]) -> None:
        super().__init__()
        if not heads:
            raise ValueError("a MultiTaskModel needs at least one head")
        self.encoder = encoder
        self.heads = nn.ModuleDict(dict(heads))

    @property
    def task_names(self) -> tuple[str, ...]:
        return tuple(self.heads.keys())

    def forward(self, inputs: Tensor, task: str) -> Tensor:
        """Outputs of task ``task``'s predictor on ``inputs``."""
        out: Tensor = self.heads[task](self.encoder(inputs))
        return out

    def forward_all(self, inputs: Tensor) -> dict[str, Tensor]:
        """Outputs of every head on one encoding of ``inputs`` (shared-input layout)."""
        representation = self.encoder(inputs)
        return {task: head(representation) for task, head in self.heads.items()}

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters ``theta`` of the shared encoder."""
        return self.encoder.parameters()

    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        """Parameters ``phi_k`` of task ``task``'s head."""
        if task not in self.heads:
            raise KeyError(f"model has no head {task!r}; heads: {', '.join(self.task_names)}")
        return self.heads[task].parameters()

    def predictor_parameters(self, task: str) -> list[nn.Parameter]:
        """Parameters of task ``task``'s predictor: shared encoder plus its head."""
        return [*self.shared_parameters(), *self.task_parameters(task)]


#: The largest run seed: seeds are integers in ``[0, MAX_SEED]`` (63 bits).
MAX_SEED = 2**63 - 1
_MASK_63 = 0x7FFFFFFFFFFFFFFF


def is_seed(value: object) -> bool:
    """Whether ``value`` is a valid run seed: an integer (not a bool) in ``[0, MAX_SEED]``."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and 0 <= int(value) <= MAX_SEED


def derived_seed(seed: int, *parts: str) -> int:
    """A stable 63-bit seed from ``seed`` (in ``[0, MAX_SEED]``) and names, identical across processes.

    The low 32 bits of ``seed`` are mixed with each name as ``value * 1_000_003 + crc32(name)`` modulo
    ``2**63`` (an odd multiplier: a bijection, on the low 32 bits too). torch's CPU generators keep only the
    low 32 bits of a seed, so the bits of ``seed`` above 32 are hashed with the names (numpy's
    ``SeedSequence``) and XORed in: they change the low 32 bits as well, so seeds that differ by a multiple
    of ``2**32`` give unrelated generators instead of the same ones. Seeds below ``2**32`` have no such bits:
    their derived seeds, and so their trajectories, are those of earlier versions. Raises ``ValueError``
    for a seed outside the range.
    """
    if not is_seed(seed):
        raise ValueError(f"seed must be an integer in [0, 2**63 - 1], got {seed!r}")
    names = [zlib.crc32(part.encode()) for part in parts]
    value = int(seed) & 0xFFFFFFFF
    for name in names:
        value = (value * 1_000_003 + name) & _MASK_63
    high = int(seed) >> 32
    if high:
        state = np.random.SeedSequence(high, spawn_key=names).generate_state(1, np.uint64)
        value ^= int(state[0]) & _MASK_63
    return value


def _seeded(seed: int, build: Any) -> Any:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def build_model(
    setting: Setting,
    encoder: Any,
    head: Any,
    seed: int,
    tasks: Sequence[str] | None = None,
) -> MultiTaskModel:
    """Build the model for ``setting``: a shared encoder and one head per task.

    ``encoder`` and ``head``: a spec ``{"name": ..., **options}`` of a registered part, ``{"factory":
    "package.module:function", **options}``, an ``nn.Module`` instance (deep-copied) or a factory callable
    (``mtlscope.models.components``). Each part is built from a forked RNG seeded by ``derived_seed(seed, ...)``,
    so the same seed gives the same initial weights, and the global torch RNG is left as it was. The
    representation size is the encoder's ``output_dim``, or inferred by a dry forward of two training examples.
    """
    shared: nn.Module = _seeded(
        derived_seed(seed, "encoder"),
        lambda: make_part(
            "encoder",
            encoder,
            {"input_shape": tuple(setting.input_shape)},
            lambda name, **options: ENCODERS.build(name, setting.input_shape, **options),
        ),
    )
    first = setting.tasks[0].train
    examples = example_inputs(getattr(first, "inputs", None), setting.input_shape)
    size = representation_size(shared, examples, "encoder")
    names = list(tasks) if tasks is not None else list(setting.task_names)
    heads = {
        name: _seeded(
            derived_seed(seed, "head", name),
            lambda name=name: make_part(
                "head",
                head,
                {"input_dim": size, "output_size": setting.task(name).output_size},
                lambda registered, **options: HEADS.build(registered, size, setting.task(name).output_size, **options),
            ),
        )
        for name in names
    }
    return MultiTaskModel(shared, heads)
