"""Task heads ``h_phi_k`` mapping the shared representation to task outputs (Mueller et al., TMLR 2025, §2.1)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from pydantic import Field
from torch import nn

from mtlscope.options import PositiveInt
from mtlscope.registry import Registry

HEADS: Registry[nn.Module] = Registry("head")


@HEADS.register("linear", "one linear layer")
def linear(input_dim: int, output_size: int) -> nn.Module:
    return nn.Linear(input_dim, output_size)


@HEADS.register("mlp", "Linear -> ReLU per entry of hidden, then a linear output layer")
def mlp(input_dim: int, output_size: int, *, hidden: Sequence[PositiveInt] = (64,)) -> nn.Module:
    widths = list(hidden)
    if any(int(w) != w or w < 1 for w in widths):
        raise ValueError(f"head.hidden must be a list of positive integers, got {widths}")
    layers: list[nn.Module] = []
    previous = input_dim
    for width in widths:
        layers += [nn.Linear(previous, int(width)), nn.ReLU()]
        previous = int(width)
    layers.append(nn.Linear(previous, output_size))
    return nn.Sequential(*layers)


@HEADS.register("multilenet", "Linear(hidden) -> ReLU -> Dropout(p) -> Linear: the multi-task LeNet's task head")
def multilenet(
    input_dim: int,
    output_size: int,
    *,
    hidden: PositiveInt = 50,
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.5,
) -> nn.Module:
    """The two-layer task head of the multi-task LeNet (Mueller et al. 2022, App. A.3; Sener & Koltun 2018's
    MultiLeNet: ``Linear(50) -> ReLU -> Dropout -> Linear``); the softmax is in the loss."""
    return nn.Sequential(nn.Linear(input_dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, output_size))
