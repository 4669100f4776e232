"""GLUE saved to disk with the ``datasets`` library: one saved ``DatasetDict`` per task, read strictly.

Files, in the data directory: ``glue_datasets/<task>/`` for each task name of ``mtlscope.data.sources.glue``
(``cola``, ``sst2``, ``mrpc``, ``qqp``, ``stsb``, ``mnli``, ``qnli``, ``rte``: the ``datasets`` library's
``glue`` configuration names), each the folder ``DatasetDict.save_to_disk`` writes (``dataset_dict.json`` and a
folder per split)::

    from datasets import load_dataset
    for task in ["cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte"]:
        load_dataset("glue", task).save_to_disk(f"{data_dir}/glue_datasets/{task}")

The splits and columns are those of the library's ``glue`` configurations: ``train`` (the paper's train and
validation) and ``validation`` (MNLI: ``validation_matched``; the paper's test); text in ``sentence`` (CoLA,
SST-2), ``sentence1``/``sentence2`` (MRPC, STS-B, RTE), ``question1``/``question2`` (QQP),
``premise``/``hypothesis`` (MNLI), ``question``/``sentence`` (QNLI); ``label`` a class index (a ``ClassLabel``
whose names, when the column has them, must be the library's, so classes are numbered as in the TSV path) or
STS-B's score in [0, 5]. Other columns (``idx``) and splits (``test``) are not read. The ``test`` splits carry
``-1`` labels (GLUE's test labels are not public): a ``-1`` in a split that is read is reported as such.

``read_saved_task(folder, task)`` returns ``{"train": TaskFile, "dev": TaskFile}`` exactly as ``read_task``
reads the TSV files (``TaskFile.lines`` holds row indices here); every problem is one ``ValueError`` line naming
the folder, the split, the row or column and what was expected. ``datasets`` is optional (``pip install
'mtlscope[text]'``): it is imported on first use, and without it the message is one line saying how to install it.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from mtlscope.data.catalog import DataFile, DatasetInfo, register_dataset
from mtlscope.data.sources.glue import FORMATS, TASKS, TaskFile
from mtlscope.data.tokens import INSTALL_TEXT, MissingTextDependency

#: The folder of the saved tasks in the data directory.
FOLDER = "glue_datasets"
#: The text columns of each task in the ``datasets`` library's ``glue`` configurations (in the TSV path's order).
TEXT_COLUMNS: dict[str, tuple[str, ...]] = {
    "cola": ("sentence",),
    "sst2": ("sentence",),
    "mrpc": ("sentence1", "sentence2"),
    "qqp": ("question1", "question2"),
    "stsb": ("sentence1", "sentence2"),
    "mnli": ("premise", "hypothesis"),
    "qnli": ("question", "sentence"),
    "rte": ("sentence1", "sentence2"),
}
#: The ``ClassLabel`` names of each classification task in the library (index = the TSV path's class index).
CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "cola": ("unacceptable", "acceptable"),
    "sst2": ("negative", "positive"),
    "mrpc": ("not_equivalent", "equivalent"),
    "qqp": ("not_duplicate", "duplicate"),
    "mnli": ("entailment", "neutral", "contradiction"),
    "qnli": ("entailment", "not_entailment"),
    "rte": ("entailment", "not_entailment"),
}
LABEL = "label"
#: The label GLUE's test splits carry (hidden labels).
HIDDEN_LABEL = -1


def split_name(task: str, which: str) -> str:
    """The split holding ``which`` (``train`` or ``dev``) of ``task``: ``train``, ``validation``,
    ``validation_matched`` (MNLI)."""
    if which == "train":
        return "train"
    return "validation_matched" if task == "mnli" else "validation"


INFO = register_dataset(
    DatasetInfo(
        name="glue-datasets",
        description="GLUE saved with the datasets library: one saved DatasetDict per task (read when the TSV "
        "folders are absent)",
        source=(
            "the datasets library: load_dataset('glue', task).save_to_disk('glue_datasets/<task>') for each of "
            + ", ".join(TASKS)
        ),
        reference="Wang et al. GLUE: A Multi-Task Benchmark and Analysis Platform for Natural Language "
        "Understanding. BlackboxNLP 2018",
        files=tuple(DataFile(task, (f"{FOLDER}/{task}/dataset_dict.json",)) for task in TASKS),
    )
)


def import_datasets() -> ModuleType:
    """The ``datasets`` module, imported on first use; ``MissingTextDependency`` (one line) without it."""
    try:
        import datasets  # type: ignore[import-untyped]
    except ImportError as error:
        raise MissingTextDependency(
            f"GLUE saved with the datasets library needs that library ({error.msg}); install it with {INSTALL_TEXT}"
        ) from None
    return datasets


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]


def read_saved_task(folder: str | os.PathLike[str], task: str) -> dict[str, TaskFile]:
    """The ``train`` and ``dev`` files of ``task`` from the saved ``DatasetDict`` in ``folder`` (or its
    ``dataset_dict.json``), as ``read_task`` reads the TSV files (module docstring); one ``ValueError`` line else."""
    if task not in FORMATS:
        raise ValueError(f"unknown GLUE task {task!r}; the tasks are {', '.join(TASKS)}")
    path = Path(folder)
    if path.name == "dataset_dict.json":
        path = path.parent
    datasets = import_datasets()
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as error:  # the library raises FileNotFoundError, ValueError, JSON and Arrow errors
        raise ValueError(
            f"{path}: cannot load a dataset saved with the datasets library ({type(error).__name__}: "
            f"{_first_line(error)})"
        ) from None
    wanted = (split_name(task, "train"), split_name(task, "dev"))
    if not isinstance(loaded, datasets.DatasetDict):
        raise ValueError(
            f"{path}: expected a DatasetDict with the splits {', '.join(wanted)} (load_dataset('glue', {task!r})"
            f".save_to_disk), got a single {type(loaded).__name__}"
        )
    read: dict[str, TaskFile] = {}
    for which, split in zip(("train", "dev"), wanted):
        if split not in loaded:
            raise ValueError(
                f"{path}: no split {split!r} (found {', '.join(loaded) or 'none'}); expected the splits of "
                f"load_dataset('glue', {task!r})"
            )
        read[which] = _read_split(loaded[split], f"{path} split {split!r}", task)
    return read


def _read_split(dataset: Any, where: str, task: str) -> TaskFile:
    fmt = FORMATS[task]
    columns = (*TEXT_COLUMNS[task], LABEL)
    absent = [name for name in columns if name not in dataset.column_names]
    if absent:
        raise ValueError(
            f"{where}: no column {absent[0]!r}; expected the columns {', '.join(columns)} of the datasets library's "
            f"glue {task!r} (found {', '.join(dataset.column_names)})"
        )
    if len(dataset) == 0:
        raise ValueError(f"{where}: no examples")
    feature = dataset.features[LABEL]
    names = getattr(feature, "names", None)
    if fmt.labels is not None and names is not None and tuple(names) != CLASS_NAMES[task]:
        raise ValueError(
            f"{where}: column 'label' has the classes {', '.join(names)}; expected {', '.join(CLASS_NAMES[task])} "
            "(in that order, as the datasets library's glue)"
        )
    values = dataset.select_columns(list(columns)).to_dict()
    labels = _labels(values[LABEL], where, task)
    texts = []
    for name in TEXT_COLUMNS[task]:
        column = values[name]
        bad = next((row for row, text in enumerate(column) if not isinstance(text, str)), None)
        if bad is not None:
            raise ValueError(f"{where} row {bad}: column {name!r} is {column[bad]!r}; expected text")
        texts.append(tuple(column))
    return TaskFile(tuple(texts), labels, np.arange(len(labels), dtype=np.int64))


def _labels(column: list[Any], where: str, task: str) -> np.ndarray:
    fmt = FORMATS[task]
    missing = next((row for row, value in enumerate(column) if value is None), None)
    if missing is not None:
        raise ValueError(f"{where} row {missing}: column 'label' is empty; expected a label")
    values = np.asarray(column)
    hidden = np.flatnonzero(values == HIDDEN_LABEL)
    if len(hidden):
        raise ValueError(
            f"{where} row {hidden[0]}: label -1 (GLUE's hidden test labels); the train and validation splits "
            "need their labels (the test split is not read)"
        )
    if fmt.labels is not None:
        classes = len(fmt.labels)
        if values.dtype.kind not in "iu":
            raise ValueError(f"{where}: column 'label' holds {values.dtype} values; expected class indices")
        outside = np.flatnonzero((values < 0) | (values >= classes))
        if len(outside):
            row = outside[0]
            raise ValueError(
                f"{where} row {row}: label {values[row]}; expected a class index 0-{classes - 1} "
                f"({', '.join(CLASS_NAMES[task])})"
            )
        return values.astype(np.int64)
    low, high = fmt.score_range or (-np.inf, np.inf)
    if values.dtype.kind not in "iuf":
        raise ValueError(f"{where}: column 'label' holds {values.dtype} values; expected scores in [{low:g}, {high:g}]")
    scores = values.astype(np.float64)
    outside = np.flatnonzero(~((scores >= low) & (scores <= high)))
    if len(outside):
        row = outside[0]
        raise ValueError(f"{where} row {row}: score {float(scores[row]):g}; expected a number in [{low:g}, {high:g}]")
    return scores.astype(np.float32)
