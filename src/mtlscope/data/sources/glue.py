"""GLUE (Wang et al., 2018): the original task folders of tab-separated files, read strictly.

Files, in the data directory (the layout ``download_glue_data.py`` of the GLUE authors writes, ``glue_data/``; the
task folders directly in the data directory are found too):

- ``glue_data/CoLA/train.tsv``, ``dev.tsv``: no header; 4 columns ``source  label  original_label  sentence``,
  label ``0`` (unacceptable) or ``1`` (acceptable);
- ``glue_data/SST-2/{train,dev}.tsv``: header ``sentence  label``, label ``0`` (negative) or ``1`` (positive);
- ``glue_data/MRPC/{train,dev}.tsv``: header ``Quality  #1 ID  #2 ID  #1 String  #2 String``, label (``Quality``)
  ``0`` or ``1`` (paraphrase);
- ``glue_data/QQP/{train,dev}.tsv``: header ``id  qid1  qid2  question1  question2  is_duplicate``, label ``0``/``1``;
- ``glue_data/STS-B/{train,dev}.tsv``: header of 10 columns ending ``sentence1  sentence2  score``, the score a
  real number in [0, 5];
- ``glue_data/MNLI/train.tsv`` (12 columns) and ``dev_matched.tsv`` (16 columns): text in ``sentence1`` and
  ``sentence2``, label ``gold_label`` (the last column), ``entailment``, ``neutral`` or ``contradiction``;
- ``glue_data/QNLI/{train,dev}.tsv``: header ``index  question  sentence  label``, label ``entailment`` or
  ``not_entailment``;
- ``glue_data/RTE/{train,dev}.tsv``: header ``index  sentence1  sentence2  label``, label as QNLI.

The columns are those of the GLUE processors of HuggingFace ``transformers`` (text columns and label by position
there; by header name here, so MNLI's 12- and 16-column files read alike). Fields are split on tabs with no
quote processing (as those processors' ``csv.reader(..., quotechar=None)``); the files are UTF-8 (a byte-order
mark is skipped). Class labels are numbered as the ``datasets`` library's ``glue`` configurations do: MNLI
entailment 0, neutral 1, contradiction 2; QNLI and RTE entailment 0, not_entailment 1; the 0/1 tasks as written.

``read_task(path, task)`` returns the texts and labels of one file; every problem is one ``ValueError`` line
naming the file, the line and what was expected (a wrong number of columns, a bad label, a missing header). Unlike
``transformers``' QQP processor, which skips rows with too few columns, no row is skipped silently. WNLI is left
out (Mueller et al., TMLR 2025, App. A, footnote 9). There is no official download address in the catalog (the
GLUE site's links have moved over the years): download the data with the GLUE authors' script or from the GLUE
site, then ``mtlscope data`` shows what is found.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mtlscope.data.catalog import DataFile, DatasetInfo, register_dataset


@dataclass(frozen=True)
class TaskFormat:
    """How one GLUE task's files are laid out: its folder, dev file name, header (None: CoLA's headerless files,
    read by ``columns``), text and label columns, and the label values (None: a real-valued score)."""

    name: str
    folder: str
    dev_file: str
    text_columns: tuple[str, ...]
    label_column: str
    labels: tuple[str, ...] | None
    #: headerless files only: the column names, by position
    columns: tuple[str, ...] | None = None
    #: the real-valued label's range (STS-B)
    score_range: tuple[float, float] | None = None

    @property
    def has_header(self) -> bool:
        return self.columns is None

    @property
    def output_size(self) -> int:
        return 1 if self.labels is None else len(self.labels)


FORMATS: dict[str, TaskFormat] = {
    "cola": TaskFormat(
        "cola", "CoLA", "dev.tsv", ("sentence",), "label", ("0", "1"),
        columns=("source", "label", "original_label", "sentence"),
    ),
    "sst2": TaskFormat("sst2", "SST-2", "dev.tsv", ("sentence",), "label", ("0", "1")),
    "mrpc": TaskFormat("mrpc", "MRPC", "dev.tsv", ("#1 String", "#2 String"), "Quality", ("0", "1")),
    "qqp": TaskFormat("qqp", "QQP", "dev.tsv", ("question1", "question2"), "is_duplicate", ("0", "1")),
    "stsb": TaskFormat("stsb", "STS-B", "dev.tsv", ("sentence1", "sentence2"), "score", None, score_range=(0.0, 5.0)),
    "mnli": TaskFormat(
        "mnli", "MNLI", "dev_matched.tsv", ("sentence1", "sentence2"), "gold_label",
        ("entailment", "neutral", "contradiction"),
    ),
    "qnli": TaskFormat("qnli", "QNLI", "dev.tsv", ("question", "sentence"), "label", ("entailment", "not_entailment")),
    "rte": TaskFormat("rte", "RTE", "dev.tsv", ("sentence1", "sentence2"), "label", ("entailment", "not_entailment")),
}  # fmt: skip
#: The 8 tasks, in the order of the GLUE paper's table (WNLI left out).
TASKS: tuple[str, ...] = tuple(FORMATS)
#: The files of each task: ``train`` (the paper's train and validation) and ``dev`` (the paper's test).
FILES: tuple[str, ...] = ("train", "dev")

SOURCE = (
    "the GLUE benchmark, https://gluebenchmark.com/tasks (the task folders as the GLUE authors' "
    "download_glue_data.py writes them, under glue_data/)"
)


def file_key(task: str, which: str) -> str:
    """The catalog key of a task's file: ``cola_train``, ``mnli_dev``."""
    return f"{task}_{which}"


def _paths(fmt: TaskFormat, which: str) -> tuple[str, ...]:
    name = "train.tsv" if which == "train" else fmt.dev_file
    return (f"glue_data/{fmt.folder}/{name}", f"glue/{fmt.folder}/{name}", f"{fmt.folder}/{name}")


INFO = register_dataset(
    DatasetInfo(
        name="glue",
        description="GLUE: the task folders (TSV) of CoLA, SST-2, MRPC, QQP, STS-B, MNLI, QNLI and RTE",
        source=SOURCE,
        reference="Wang et al. GLUE: A Multi-Task Benchmark and Analysis Platform for Natural Language "
        "Understanding. BlackboxNLP 2018",
        files=tuple(
            DataFile(file_key(task, which), _paths(fmt, which)) for task, fmt in FORMATS.items() for which in FILES
        ),
    )
)


#: The model directory of GLUE's encoder (Mueller et al. 2025, App. A): RoBERTa-base, weights and tokenizer.
ROBERTA_BASE = register_dataset(
    DatasetInfo(
        name="roberta-base",
        description="RoBERTa-base weights and tokenizer, a transformers model directory (the encoder of GLUE)",
        source=(
            "the Hugging Face Hub, https://huggingface.co/FacebookAI/roberta-base (save it with "
            "AutoModel/AutoTokenizer.save_pretrained into roberta-base/, or copy the repository's files there)"
        ),
        reference="Liu et al. RoBERTa: A Robustly Optimized BERT Pretraining Approach, 2019",
        files=(
            DataFile("config", ("roberta-base/config.json",)),
            DataFile("weights", ("roberta-base/model.safetensors", "roberta-base/pytorch_model.bin")),
            DataFile("tokenizer", ("roberta-base/tokenizer.json", "roberta-base/vocab.json")),
        ),
    )
)


@dataclass(frozen=True)
class TaskFile:
    """One file of a task, read: the texts (one tuple per text column: one for single sentences, two for pairs)
    and the labels (int64 class indices, or float32 scores for STS-B), one per row, in file order."""

    texts: tuple[tuple[str, ...], ...]
    labels: np.ndarray
    #: the line number of each row in the file (for messages)
    lines: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def _text_lines(path: Path) -> list[str]:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ValueError(f"{path}: cannot read the file ({error.strerror or error})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ValueError(f"{path} line {line}: not UTF-8 text (byte 0x{data[error.start]:02x})") from None
    lines = [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]
    while lines and not lines[-1].strip():  # the files end with a newline
        lines.pop()
    return lines


def read_task(path: str | os.PathLike[str], task: str) -> TaskFile:
    """Read one GLUE file of ``task`` (module docstring for the formats); ``ValueError``, one line naming the file,
    the line and what was expected, for anything else. An empty file (no rows) is an error too."""
    if task not in FORMATS:
        raise ValueError(f"unknown GLUE task {task!r}; the tasks are {', '.join(TASKS)}")
    fmt = FORMATS[task]
    path = Path(path)
    lines = _text_lines(path)
    first_row = 1
    if fmt.columns is None:
        if not lines:
            raise ValueError(f"{path}: empty file; expected a header line naming the columns")
        header = tuple(lines[0].split("\t"))
        wanted = (*fmt.text_columns, fmt.label_column)
        absent = [name for name in wanted if name not in header]
        if absent or len(set(header)) != len(header):
            raise ValueError(
                f"{path} line 1: expected the {fmt.folder} header naming the columns {', '.join(wanted)} "
                f"(tab-separated), got {lines[0][:120]!r}"
            )
        columns = header
        first_row = 2
    else:
        columns = fmt.columns
    text_at = [columns.index(name) for name in fmt.text_columns]
    label_at = columns.index(fmt.label_column)
    rows = lines[first_row - 1 :]
    if not rows:
        raise ValueError(f"{path}: no examples (expected one tab-separated line per example)")
    texts: list[list[str]] = [[] for _ in text_at]
    labels = np.empty(len(rows), dtype=np.float32 if fmt.labels is None else np.int64)
    index = {value: i for i, value in enumerate(fmt.labels or ())}
    for position, row in enumerate(rows):
        number = first_row + position
        fields = row.split("\t")
        if len(fields) != len(columns):
            raise ValueError(
                f"{path} line {number}: expected {len(columns)} tab-separated columns ({fmt.folder}), got {len(fields)}"
            )
        value = fields[label_at]
        if fmt.labels is not None:
            if value not in index:
                raise ValueError(
                    f"{path} line {number}: label {value[:40]!r} in column {fmt.label_column!r}; expected one of "
                    f"{', '.join(fmt.labels)}"
                )
            labels[position] = index[value]
        else:
            low, high = fmt.score_range or (-math.inf, math.inf)
            try:
                score = float(value)
            except ValueError:
                score = math.nan
            if not low <= score <= high:
                raise ValueError(
                    f"{path} line {number}: score {value[:40]!r} in column {fmt.label_column!r}; expected a number "
                    f"in [{low:g}, {high:g}]"
                )
            labels[position] = score
        for slot, column in enumerate(text_at):
            texts[slot].append(fields[column])
    numbers = np.arange(first_row, first_row + len(rows), dtype=np.int64)
    return TaskFile(tuple(tuple(column) for column in texts), labels, numbers)
