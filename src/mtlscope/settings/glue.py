"""``glue``: 8 GLUE tasks (WNLI left out) with a RoBERTa encoder and a linear head per task (multi-input layout).

The GLUE setting of Mueller et al. (TMLR 2025, §2.2 and App. A): CoLA, SST-2, MRPC, QQP, STS-B, MNLI, QNLI and RTE
(task names ``cola``, ``sst2``, ``mrpc``, ``qqp``, ``stsb``, ``mnli``, ``qnli``, ``rte``), a pretrained
RoBERTa-base with linear task heads on the first token's representation. Seven classification tasks trained with
cross-entropy and STS-B a regression (1 output, mean squared error on the 0-5 score).

Data: the original GLUE task folders (``mtlscope.data.sources.glue`` for the files and their formats) or a copy
saved with the ``datasets`` library, one saved ``DatasetDict`` per task (``mtlscope.data.sources.glue_datasets``):
``data_format`` ``"tsv"`` or ``"datasets"`` picks one, the default (None) the TSV folders when they are there and
the saved copy otherwise. Both give the same texts, labels and splits (the same rows give identical tensors). Splits as
the paper: a validation slice held out from each task's official training file (``val_fraction`` of it, drawn
with ``split_seed``), the rest for training, and the official dev set (MNLI: ``dev_matched``) as the test set —
GLUE's test labels are not public. The paper does not give the slice's size; 10% is our default. ``train_size``,
``val_size`` and ``test_size`` keep at most that many examples of each task's split (CPU-sized subsets: the first
of the seeded training and validation orders, the first dev rows in file order); the split itself does not
depend on them.

Text: tokenized at build with the tokenizer of ``model_dir`` (a local model directory, never downloaded; default:
the ``roberta-base`` folder of the data directory), sentence pairs as the tokenizer joins them, truncated to
``max_length`` tokens (default 128), each example one row ``[input_ids | attention_mask]``
(``mtlscope.data.tokens``): the ``roberta`` encoder trims a batch to its longest sequence (dynamic padding).
Token rows are cached (``mtlscope.data.token_cache``, in ``cache_directory()``: ``$MTLSCOPE_CACHE``, else
``~/.cache/mtlscope``), keyed by the texts, the tokenizer and ``max_length``: each split of each task is
tokenized once (a few hundred thousand examples a minute on a CPU core with a fast tokenizer; a progress line
shows it for large files) and read back on every later build; ``cache_tokens=False`` tokenizes without the
cache. Metrics: accuracy for every classifier
(primary), F1 of the positive class for MRPC and QQP, Matthews correlation for CoLA (primary), Pearson (primary)
and Spearman correlation for STS-B.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Literal

import numpy as np
from pydantic import Field

from mtlscope.data.catalog import MissingDataError, cache_directory, data_directory, locate
from mtlscope.data.sources import glue as source
from mtlscope.data.sources import glue_datasets
from mtlscope.data.token_cache import cached_tokenize
from mtlscope.data.tokens import TokenDataset, load_tokenizer, tokenizer_identity
from mtlscope.metrics import resolve_metric
from mtlscope.options import NonNegativeInt, PositiveInt
from mtlscope.settings.constructors import TaskSpec, from_datasets
from mtlscope.settings.registry import register
from mtlscope.settings.setting import Setting

TASKS: tuple[str, ...] = source.TASKS
#: Metrics of each task; the first is the primary one.
METRICS: dict[str, tuple[str, ...]] = {
    "cola": ("mcc", "accuracy"),
    "sst2": ("accuracy",),
    "mrpc": ("accuracy", "f1"),
    "qqp": ("accuracy", "f1"),
    "stsb": ("pearson", "spearman"),
    "mnli": ("accuracy",),
    "qnli": ("accuracy",),
    "rte": ("accuracy",),
}
DESCRIPTIONS: dict[str, str] = {
    "cola": "CoLA: grammatical acceptability of a sentence (1 = acceptable)",
    "sst2": "SST-2: sentiment of a movie-review sentence (1 = positive)",
    "mrpc": "MRPC: whether two sentences are paraphrases (1 = paraphrase)",
    "qqp": "QQP: whether two Quora questions are duplicates (1 = duplicate)",
    "stsb": "STS-B: semantic similarity of two sentences, a score in [0, 5]",
    "mnli": "MNLI: entailment (0), neutral (1) or contradiction (2) of a premise and a hypothesis (matched dev)",
    "qnli": "QNLI: whether a sentence answers a question (0 = entailment, 1 = not_entailment)",
    "rte": "RTE: whether a sentence entails another (0 = entailment, 1 = not_entailment)",
}
DEFAULT_VAL_FRACTION = 0.1
REFERENCE = (
    "Wang et al. GLUE: A Multi-Task Benchmark and Analysis Platform for Natural Language Understanding, 2018; "
    "Liu et al. RoBERTa, 2019; Mueller et al. Can Optimization Trajectories Explain Multi-Task Transfer? TMLR 2025 "
    "(App. A)"
)


def held_out(count: int, val_fraction: float, seed: int, task: str) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, validation rows) of a training file of ``count`` rows: a seeded permutation, its first
    ``round(val_fraction * count)`` rows (at least 1, leaving at least 1) for validation. The generator depends on
    ``seed`` and the task, so a task's split is the same whichever tasks are built with it."""
    if count < 2:
        raise ValueError(f"glue task {task!r}: the training file has {count} example(s); at least 2 are needed")
    size = min(max(1, round(val_fraction * count)), count - 1)
    task_number = TASKS.index(task)
    order = np.random.default_rng([seed, task_number]).permutation(count)
    return order[size:], order[:size]


def task_reader(
    data_format: Literal["tsv", "datasets"] | None, data_dir: str | None
) -> Callable[[str], tuple[source.TaskFile, source.TaskFile]]:
    """``read(task) -> (train file, dev file)`` from the TSV folders (``"tsv"``), the saved copy (``"datasets"``)
    or, with None, the TSV folders when they are found and the saved copy otherwise; the catalog's one line when
    the chosen files are missing (with None: the TSV line, naming the saved copy's folder as the alternative)."""
    if data_format is None:
        try:
            locate("glue", data_dir)
            data_format = "tsv"
        except MissingDataError as tsv_missing:
            try:
                locate("glue-datasets", data_dir)
            except MissingDataError:
                saved = data_directory(data_dir) / glue_datasets.FOLDER
                alternative = f" (or a copy saved with the datasets library in {saved}/<task>); get it from"
                message = str(tsv_missing).replace("; get it from", alternative, 1)
                raise MissingDataError(message) from None
            data_format = "datasets"
    if data_format == "tsv":
        paths = locate("glue", data_dir)

        def read_tsv(task: str) -> tuple[source.TaskFile, source.TaskFile]:
            train = source.read_task(paths[source.file_key(task, "train")], task)
            return train, source.read_task(paths[source.file_key(task, "dev")], task)

        return read_tsv
    folders = locate("glue-datasets", data_dir)

    def read_saved(task: str) -> tuple[source.TaskFile, source.TaskFile]:
        files = glue_datasets.read_saved_task(folders[task], task)
        return files["train"], files["dev"]

    return read_saved


@register("glue", "GLUE: 8 text tasks (no WNLI), RoBERTa encoder; validation held out from train, dev as test")
def glue(
    *,
    model_dir: str | None = None,
    max_length: Annotated[int, Field(ge=2, le=4096)] = 128,
    val_fraction: Annotated[float, Field(gt=0, lt=1)] = DEFAULT_VAL_FRACTION,
    split_seed: NonNegativeInt = 0,
    train_size: PositiveInt | None = None,
    val_size: PositiveInt | None = None,
    test_size: PositiveInt | None = None,
    data_format: Literal["tsv", "datasets"] | None = None,
    cache_tokens: bool = True,
    data_dir: str | None = None,
) -> Setting:
    read_files = task_reader(data_format, data_dir)
    # lazily: mtlscope imports without the text extra; the default model lives in the data directory too
    from mtlscope.models.text import default_model_directory

    folder = model_dir if model_dir is not None else default_model_directory()
    tokenizer = load_tokenizer(folder)
    tokenizer_id = tokenizer_identity(tokenizer) if cache_tokens else None
    data: dict[str, dict[str, TokenDataset]] = {}
    specs = []
    for task in TASKS:
        fmt = source.FORMATS[task]
        train_file, dev_file = read_files(task)
        train_rows, val_rows = held_out(len(train_file), val_fraction, split_seed, task)
        chosen = {
            "train": (train_file, train_rows[:train_size]),
            "val": (train_file, val_rows[:val_size]),
            "test": (dev_file, np.arange(len(dev_file))[:test_size]),
        }
        data[task] = {}
        for split, (read, rows) in chosen.items():
            texts = tuple(tuple(column[i] for i in rows) for column in read.texts)
            tokens = cached_tokenize(
                tokenizer,
                texts,
                max_length,
                cache_directory() if cache_tokens else None,
                name=f"glue-{task}-{split}",
                what=f"glue {task} {split}",
                show_progress=len(rows) > 50_000,
                tokenizer_id=tokenizer_id,
            )
            data[task][split] = TokenDataset(tokens, read.labels[rows])
        loss = "cross_entropy" if fmt.labels is not None else "mse"
        specs.append(
            TaskSpec(
                task,
                fmt.output_size,
                loss=loss,
                metrics=[resolve_metric(name) for name in METRICS[task]],
                primary_metric=METRICS[task][0],
                description=DESCRIPTIONS[task],
            )
        )
    return from_datasets(
        "glue",
        specs,
        data,
        layout="multi-input",
        default_model={"encoder": {"name": "roberta", "path": model_dir}, "head": {"name": "linear"}},
        description=f"GLUE: {len(TASKS)} tasks (WNLI left out), token rows of max_length {max_length}",
        reference=REFERENCE,
        options={
            "model_dir": model_dir,
            "max_length": max_length,
            "val_fraction": val_fraction,
            "split_seed": split_seed,
            "train_size": train_size,
            "val_size": val_size,
            "test_size": test_size,
            "data_format": data_format,
            "cache_tokens": cache_tokens,
            "data_dir": data_dir,
        },
    )
