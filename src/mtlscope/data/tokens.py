"""Text as token rows: a tokenizer from a local model directory, and a Dataset of fixed-width token rows.

Text settings hold every example as one row of ``2 * max_length`` integers, ``[input_ids | attention_mask]``:
the token ids padded on the right with the tokenizer's pad id, then the mask (1 for a token, 0 for padding).
The engine batches rows as it batches any input (the data layer turns inputs into float32, which holds every
id below 2**24 exactly); the text encoder (``mtlscope.models.text``) splits a batch's rows back into ids and mask
and trims both to the batch's longest sequence, so the padding of a batch is dynamic — as long as its longest
example, never ``max_length`` — without a collate hook in the data layer or the engine.

``transformers`` is optional (``pip install 'mtlscope[text]'``): ``import_transformers()`` imports it on first
use and raises ``MissingTextDependency`` (a ``ValueError``: one line) without it, so mtlscope imports and every
non-text feature works without it. ``load_tokenizer(path)`` reads a tokenizer from a local directory only
(``local_files_only=True``: nothing is downloaded). ``tokenize(tokenizer, texts, max_length)`` tokenizes single
sentences or sentence pairs (truncated to ``max_length`` tokens, longest first), ``TokenRows`` holds the result
compactly (uint16 ids when the vocabulary allows, int32 otherwise; lengths instead of masks) and
``TokenDataset`` serves its rows with targets.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from mtlscope.data.fingerprint import combine, tensor_digest
from mtlscope.progress import Progress

#: How to install the optional text dependencies (the message of ``MissingTextDependency``).
INSTALL_TEXT = "pip install 'mtlscope[text]'"
#: Texts tokenized at a time.
CHUNK = 4096
#: The largest id float32 inputs hold exactly.
MAX_EXACT_ID = 2**24


class MissingTextDependency(ValueError):
    """``transformers`` is not installed; the message is one line saying how to install it."""


def import_transformers() -> ModuleType:
    """The ``transformers`` module, imported on first use; ``MissingTextDependency`` when it is not installed."""
    try:
        import transformers
    except ImportError as error:
        raise MissingTextDependency(
            f"text settings and encoders need the transformers library ({error.msg}); install it with {INSTALL_TEXT}"
        ) from None
    return transformers


def check_model_directory(path: str | os.PathLike[str], what: str) -> Path:
    """``path`` as a folder that exists (``ValueError`` naming ``what`` otherwise)."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ValueError(f"{what}: {folder} is not a folder (expected a local model directory with config.json)")
    return folder


def load_tokenizer(path: str | os.PathLike[str]) -> Any:
    """The tokenizer saved in the local directory ``path`` (``AutoTokenizer``, ``local_files_only=True``); one
    ``ValueError`` line when there is none or it has no pad token."""
    folder = check_model_directory(path, "tokenizer")
    transformers = import_transformers()
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as error:  # transformers raises OSError, ValueError, KeyError... for a folder it cannot read
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise ValueError(
            f"tokenizer: cannot load a tokenizer from {folder} ({type(error).__name__}: {first})"
        ) from None
    if tokenizer.pad_token_id is None:
        raise ValueError(f"tokenizer in {folder} has no pad token; text rows are padded with it")
    return tokenizer


def tokenizer_identity(tokenizer: Any) -> str:
    """sha256 of what decides a tokenizer's output: its class, vocabulary, special tokens and settings. The
    truncation and padding state a fast tokenizer keeps from its last call (``max_length``, set per call) is left
    out, so the identity is the same before and after the tokenizer is used."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        state.pop("truncation", None)
        state.pop("padding", None)
        described = json.dumps(state, sort_keys=True)
    else:
        described = repr(sorted(tokenizer.get_vocab().items()))
    return combine(
        {
            "class": type(tokenizer).__name__,
            "tokenizer": described,
            "special": {str(k): str(v) for k, v in tokenizer.special_tokens_map.items()},
            "pad": int(tokenizer.pad_token_id),
        }
    )


@dataclass(frozen=True)
class TokenRows:
    """Token ids ``[N, max_length]`` (right-padded with ``pad_id``) and the number of tokens of each row."""

    ids: np.ndarray
    lengths: np.ndarray
    pad_id: int

    @property
    def max_length(self) -> int:
        return int(self.ids.shape[1])

    def __len__(self) -> int:
        return len(self.lengths)

    def rows(self, index: Sequence[int] | np.ndarray) -> Tensor:
        """int64 ``[len(index), 2 * max_length]``: ``[input_ids | attention_mask]`` of the chosen rows."""
        chosen = np.asarray(index, dtype=np.int64)
        ids = torch.from_numpy(self.ids[chosen].astype(np.int64))
        positions = torch.arange(self.max_length)
        mask = (positions[None, :] < torch.from_numpy(self.lengths[chosen].astype(np.int64))[:, None]).to(torch.int64)
        return torch.cat([ids, mask], dim=1)

    def select(self, index: np.ndarray) -> TokenRows:
        return TokenRows(self.ids[index], self.lengths[index], self.pad_id)

    def digest(self) -> str:
        return combine(
            {
                "ids": tensor_digest(torch.from_numpy(np.ascontiguousarray(self.ids).astype(np.int64))),
                "lengths": tensor_digest(torch.from_numpy(np.ascontiguousarray(self.lengths).astype(np.int64))),
                "pad": self.pad_id,
            }
        )


def tokenize(
    tokenizer: Any,
    texts: Sequence[Sequence[str]],
    max_length: int,
    *,
    what: str = "texts",
    show_progress: bool = False,
) -> TokenRows:
    """Tokenize one text per example (``texts = (sentences,)``) or a pair (``(first, second)``), with the
    tokenizer's special tokens, truncated to ``max_length`` tokens (longest first), padded with its pad id."""
    if len(texts) not in (1, 2) or any(len(column) != len(texts[0]) for column in texts):
        raise ValueError(f"{what}: expected one or two text columns of equal length")
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2 (the special tokens), got {max_length}")
    count = len(texts[0])
    vocabulary = len(tokenizer)
    dtype = np.uint16 if vocabulary <= np.iinfo(np.uint16).max + 1 else np.int32
    if vocabulary > MAX_EXACT_ID:
        raise ValueError(f"tokenizer has {vocabulary} tokens; text rows hold ids below {MAX_EXACT_ID} exactly")
    pad = int(tokenizer.pad_token_id)
    ids = np.full((count, max_length), pad, dtype=dtype)
    lengths = np.zeros(count, dtype=np.int32)
    with Progress(count, f"tokenizing {what}", unit="example", enabled=show_progress) as progress:
        for start in range(0, count, CHUNK):
            stop = min(start + CHUNK, count)
            columns = [list(column[start:stop]) for column in texts]
            encoded = tokenizer(*columns, truncation=True, max_length=max_length)["input_ids"]
            for offset, row in enumerate(encoded):
                ids[start + offset, : len(row)] = row
                lengths[start + offset] = len(row)
            progress.advance(stop - start)
    return TokenRows(ids, lengths, pad)


class TokenDataset(Dataset):
    """Items ``(row, target)``: ``row`` int64 ``[2 * max_length]`` = ``[input_ids | attention_mask]`` (module
    docstring), ``target`` a class index (int64) or a score (float32). ``__getitems__`` reads a batch at once."""

    def __init__(self, tokens: TokenRows, targets: np.ndarray) -> None:
        if len(targets) != len(tokens):
            raise ValueError(f"TokenDataset: {len(tokens)} token rows but {len(targets)} targets")
        self.tokens = tokens
        self.targets = torch.from_numpy(np.ascontiguousarray(targets))

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.tokens.rows([index])[0], self.targets[index]

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[Tensor, Tensor]]:
        rows = self.tokens.rows(list(indices))
        targets = self.targets[torch.as_tensor(list(indices), dtype=torch.int64)]
        return list(zip(rows, targets))

    def fingerprint(self) -> str:
        return combine({"tokens": self.tokens.digest(), "targets": tensor_digest(self.targets)})
