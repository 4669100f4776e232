"""The text encoder ``roberta``: a pretrained transformer from a local directory, represented by its first token.

``RobertaEncoder(path)`` loads ``transformers.AutoModel.from_pretrained(path, local_files_only=True,
add_pooling_layer=False)`` — RoBERTa-base for GLUE (Mueller et al., TMLR 2025, App. A), any encoder-only model of
``transformers`` whose forward takes ``input_ids`` and ``attention_mask`` — and never downloads anything. The
representation of an example is the final hidden state of its first token (``<s>``, RoBERTa's [CLS]); the
setting's heads (``linear``) sit on it, as in BERT fine-tuning (Devlin et al., 2019).

Inputs are the text settings' token rows (``mtlscope.data.tokens``): ``[batch, 2 * max_length]``,
``[input_ids | attention_mask]``, float or integer. The encoder splits them and trims both halves to the batch's
longest sequence before the transformer runs: the padding is dynamic. Padding is masked, so an example's
representation does not depend on the rest of its batch (up to floating-point rounding). Dropout is the model's
own (its config's ``hidden_dropout_prob`` and ``attention_probs_dropout_prob``), active in training mode only:
evaluation and the probes (``probe_mode``) run the model in eval mode. ``path=None`` is the ``roberta-base``
folder of the data directory (the catalog's ``roberta-base`` entry: ``mtlscope data`` lists it).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import Tensor

from mtlscope.data.catalog import locate
from mtlscope.data.sources.glue import ROBERTA_BASE
from mtlscope.data.tokens import check_model_directory, import_transformers
from mtlscope.models.encoders import ENCODERS, Encoder


def default_model_directory() -> str:
    """The ``roberta-base`` folder of the data directory (``MissingDataError``, one line, when a file is missing)."""
    return str(locate(ROBERTA_BASE.name)["config"].parent)


def split_rows(inputs: Tensor) -> tuple[Tensor, Tensor]:
    """``(input_ids, attention_mask)``, int64, of token rows ``[batch, 2 * max_length]``, trimmed to the batch's
    longest sequence (``ValueError`` for rows that are not token rows)."""
    if inputs.dim() != 2 or inputs.shape[1] % 2 != 0 or inputs.shape[1] < 2:
        raise ValueError(
            f"text encoder: expected token rows [batch, 2 * max_length] ([input_ids | attention_mask]), got shape "
            f"{list(inputs.shape)}"
        )
    width = inputs.shape[1] // 2
    ids = inputs[:, :width].to(torch.int64)
    mask = inputs[:, width:].to(torch.int64)
    longest = max(int(mask.sum(dim=1).max()), 1) if len(inputs) else 1
    return ids[:, :longest], mask[:, :longest]


class RobertaEncoder(Encoder):
    """A ``transformers`` encoder from a local directory; representation: the first token's final hidden state."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__()
        folder = check_model_directory(path, "encoder 'roberta' path")
        transformers = import_transformers()
        logging = transformers.utils.logging
        verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
        logging.set_verbosity_error()  # no load report for the pooler we leave out
        logging.disable_progress_bar()
        try:
            self.model = transformers.AutoModel.from_pretrained(
                str(folder), local_files_only=True, add_pooling_layer=False
            )
        except Exception as error:  # OSError, ValueError, TypeError... for a folder it cannot read
            first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
            raise ValueError(
                f"encoder 'roberta': cannot load a model from {folder} ({type(error).__name__}: {first})"
            ) from None
        finally:
            logging.set_verbosity(verbosity)
            if bars:
                logging.enable_progress_bar()
        self.model.train()  # from_pretrained returns it in eval mode; the trainer sets the mode from here on
        self.path = str(folder)
        self.vocab_size = int(self.model.config.vocab_size)
        self.output_dim = int(self.model.config.hidden_size)

    def forward(self, inputs: Tensor) -> Tensor:
        ids, mask = split_rows(inputs)
        low, high = (int(value) for value in torch.aminmax(ids)) if ids.numel() else (0, 0)
        if low < 0 or high >= self.vocab_size:
            bad = low if low < 0 else high
            raise ValueError(
                f"encoder 'roberta': token id {bad} is outside the model's vocabulary of {self.vocab_size} "
                f"({self.path}); tokenize with the tokenizer of the same model directory"
            )
        hidden: Tensor = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        return hidden[:, 0]


@ENCODERS.register(
    "roberta", "transformers encoder (RoBERTa) from a local directory; first-token representation (GLUE's default)"
)
def roberta(input_shape: Sequence[int], *, path: str | None = None) -> Encoder:
    if len(input_shape) != 1 or input_shape[0] % 2 != 0:
        raise ValueError(
            f"encoder 'roberta' needs token rows [2 * max_length] (a text setting such as glue), got inputs of shape "
            f"{list(input_shape)}"
        )
    return RobertaEncoder(path if path is not None else default_model_directory())
