"""``movielens``: the recommendation encoder of Fifty et al. (2020, App. D.6) for the ``movielens`` setting.

"The model adapts the input with embeddings of the following dimensions: {uid: 40, gender: 5, age: 10, occupation:
20, zip: 20, vid: 40, title: 20, genre: 20}. The embeddings are concatenated together and fed through simple
network consisting of Dense(50), Dropout(0.05), Dense(10), Dropout(0.01) with a final task-specific projection
layer" (the projection: one ``linear`` head per task).

Inputs are the setting's float32 columns (``mtlscope.data.sources.movielens.COLUMNS``): seven categorical ids,
each looked up in an embedding table of its own with one row per possible value (``CATEGORICAL``: the ML-1M
id ranges, so the tables do not depend on the sampled pairs), and 18 genre indicators whose embedding is the mean
of the listed genres' rows (a movie of ML-1M has at least one genre). The paper names no activation; ``relu``
follows each Dense layer by default. Dropout is active in training only (the probes measure in eval mode).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated

import torch
from pydantic import Field
from torch import Tensor, nn

from mtlscope.data.sources.movielens import CATEGORICAL, COLUMNS, GENRES
from mtlscope.models.encoders import ENCODERS, Activation, Encoder, _activation, _check_sizes
from mtlscope.options import PositiveInts

#: The paper's embedding sizes (its names: uid -> user, vid -> movie).
EMBEDDING_DIMS: dict[str, int] = {
    "user": 40,
    "gender": 5,
    "age": 10,
    "occupation": 20,
    "zip": 20,
    "movie": 40,
    "title": 20,
    "genre": 20,
}


class MovieLensEncoder(Encoder):
    """Embeddings of the pair's features, concatenated, then ``Linear -> activation -> Dropout`` per hidden layer."""

    def __init__(
        self,
        input_shape: Sequence[int],
        embedding_dims: Mapping[str, int],
        hidden: Sequence[int],
        dropout: Sequence[float],
        activation: str,
    ) -> None:
        super().__init__()
        if list(input_shape) != [len(COLUMNS)]:
            raise ValueError(
                f"encoder 'movielens' needs the movielens setting's inputs ({len(COLUMNS)} columns), "
                f"got examples of shape {list(input_shape)}"
            )
        unknown = sorted(set(embedding_dims) - set(EMBEDDING_DIMS))
        if unknown:
            raise ValueError(
                f"encoder.embedding_dims: unknown feature {unknown[0]!r}; features: {', '.join(EMBEDDING_DIMS)}"
            )
        dims = {**EMBEDDING_DIMS, **{key: int(value) for key, value in embedding_dims.items()}}
        if any(value < 1 for value in dims.values()):
            raise ValueError(f"encoder.embedding_dims must be positive integers, got {dict(embedding_dims)}")
        widths = _check_sizes("encoder.hidden", hidden, allow_empty=False)
        rates = list(dropout)
        if len(rates) != len(widths) or any(not 0.0 <= rate < 1.0 for rate in rates):
            raise ValueError(
                f"encoder.dropout must give one rate in [0, 1) per hidden layer ({len(widths)}), got {rates}"
            )
        self.embeddings = nn.ModuleDict({name: nn.Embedding(size, dims[name]) for name, size in CATEGORICAL})
        self.genre = nn.Parameter(torch.randn(len(GENRES), dims["genre"]))  # nn.Embedding's N(0, 1) init
        layers: list[nn.Module] = []
        previous = sum(dims.values())
        for width, rate in zip(widths, rates):
            layers += [nn.Linear(previous, width), _activation(activation)]
            if rate > 0:
                layers.append(nn.Dropout(rate))
            previous = width
        self.layers = nn.Sequential(*layers)
        self.output_dim = previous

    def features(self, inputs: Tensor) -> Tensor:
        """The concatenated embeddings ``[batch, sum of embedding_dims]`` of ``inputs`` ``[batch, 25]``."""
        ids = inputs[:, : len(CATEGORICAL)].long()
        parts = [table(ids[:, column]) for column, table in enumerate(self.embeddings.values())]
        genres = inputs[:, len(CATEGORICAL) :]
        parts.append(genres @ self.genre / genres.sum(dim=1, keepdim=True).clamp(min=1))
        return torch.cat(parts, dim=1)

    def forward(self, inputs: Tensor) -> Tensor:
        out: Tensor = self.layers(self.features(inputs))
        return out


@ENCODERS.register(
    "movielens", "embeddings of MovieLens pair features into Dense(50)-Dropout-Dense(10)-Dropout (Fifty et al. D.6)"
)
def movielens(
    input_shape: Sequence[int],
    *,
    embedding_dims: Mapping[str, Annotated[int, Field(ge=1)]] | None = None,
    hidden: PositiveInts = (50, 10),
    dropout: Sequence[Annotated[float, Field(ge=0, lt=1)]] = (0.05, 0.01),
    activation: Activation = "relu",
) -> Encoder:
    return MovieLensEncoder(input_shape, embedding_dims or {}, hidden, dropout, activation)
