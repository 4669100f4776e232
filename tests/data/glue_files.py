"""Tiny GLUE task folders in exactly the official formats, and a tiny RoBERTa model directory, for the tests.

``write_glue(root)`` writes ``root/glue_data/<Task>/train.tsv`` and ``dev.tsv`` (MNLI: ``dev_matched.tsv``) with the
official headers and columns (CoLA without a header; MNLI's train with 12 columns, its dev with 16); each task's
rows are built from a few words so a tiny word-level tokenizer covers them. ``write_model(path)`` trains that
tokenizer on the same words (``tokenizers`` WordLevel, RoBERTa's special tokens and pair template), wraps it in
``PreTrainedTokenizerFast`` and saves it with a randomly initialized 2-layer RoBERTa (hidden size 32).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

WORDS = [
    "the", "a", "cat", "dog", "sat", "ran", "on", "mat", "is", "it", "good", "bad",
    "not", "very", "what", "why", "how", "who", "old", "new", "big", "small",
]  # fmt: skip
#: training and dev rows per task
TRAIN_ROWS = 20
DEV_ROWS = 6
HEADERS = {
    "SST-2": ["sentence", "label"],
    "MRPC": ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
    "QQP": ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
    "STS-B": ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2",
              "score"],
    "MNLI-train": ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
                   "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "label1", "gold_label"],
    "MNLI-dev": ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
                 "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "label1", "label2", "label3",
                 "label4", "label5", "gold_label"],
    "QNLI": ["index", "question", "sentence", "label"],
    "RTE": ["index", "sentence1", "sentence2", "label"],
}  # fmt: skip
MNLI_LABELS = ["entailment", "neutral", "contradiction"]
NLI_LABELS = ["entailment", "not_entailment"]


def sentence(rng: np.random.Generator, low: int = 2, high: int = 9) -> str:
    return " ".join(rng.choice(WORDS, size=int(rng.integers(low, high))))


def _rows(task: str, count: int, rng: np.random.Generator, dev: bool) -> tuple[list[list[str]], list[object]]:
    """(rows of fields, the label of each row as the setting should read it: class index or score)."""
    rows: list[list[str]] = []
    labels: list[object] = []
    for i in range(count):
        a, b = sentence(rng), sentence(rng)
        if task == "CoLA":
            label = i % 2
            rows.append(["gj04", str(label), "" if label else "*", a])
        elif task == "SST-2":
            label = i % 2
            rows.append([a, str(label)])
        elif task == "MRPC":
            label = i % 2
            rows.append([str(label), str(1000 + i), str(2000 + i), a, b])
        elif task == "QQP":
            label = i % 2
            rows.append([str(i), str(2 * i), str(2 * i + 1), a, b, str(label)])
        elif task == "STS-B":
            label = round(float(rng.uniform(0, 5)), 3)
            rows.append([str(i), "main-captions", "MSRvid", "2012test", f"{i:04d}", "none", "none", a, b, str(label)])
        elif task == "MNLI":
            label = i % 3
            name = MNLI_LABELS[label]
            parses = ["( x )", "( y )", "(ROOT x)", "(ROOT y)"]
            extra = [name] * (5 if dev else 1)
            rows.append([str(i), str(100 + i), f"{100 + i}e", "fiction", *parses, a, b, *extra, name])
        else:  # QNLI, RTE
            label = i % 2
            rows.append([str(i), a, b, NLI_LABELS[label]])
        labels.append(label)
    return rows, labels


def write_tsv(path: Path, header: list[str] | None, rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = (["\t".join(header)] if header is not None else []) + ["\t".join(row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


FOLDERS = {"cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "qqp": "QQP", "stsb": "STS-B", "mnli": "MNLI",
           "qnli": "QNLI", "rte": "RTE"}  # fmt: skip


def write_glue(root: Path, *, seed: int = 0, train_rows: int = TRAIN_ROWS, dev_rows: int = DEV_ROWS) -> dict:
    """Write the 8 task folders under ``root/glue_data``; return ``{task: {"train": (rows, labels), "dev": ...}}``
    with the fields written and the labels expected."""
    rng = np.random.default_rng(seed)
    written: dict = {}
    for task, folder in FOLDERS.items():
        written[task] = {}
        for which, count in (("train", train_rows), ("dev", dev_rows)):
            rows, labels = _rows(folder, count, rng, which == "dev")
            if folder == "CoLA":
                header = None
            elif folder == "MNLI":
                header = HEADERS["MNLI-dev" if which == "dev" else "MNLI-train"]
            else:
                header = HEADERS[folder]
            name = "dev_matched.tsv" if (folder == "MNLI" and which == "dev") else f"{which}.tsv"
            write_tsv(root / "glue_data" / folder / name, header, rows)
            written[task][which] = (rows, labels)
    return written


def write_model(path: Path, *, layers: int = 2, hidden: int = 32, max_positions: int = 64, seed: int = 0) -> Path:
    """A tokenizer trained on ``WORDS`` and a random tiny RoBERTa, saved together in ``path``."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast, RobertaConfig, RobertaModel

    backend = Tokenizer(models.WordLevel(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.train_from_iterator(
        [" ".join(WORDS)], trainers.WordLevelTrainer(special_tokens=["<s>", "<pad>", "</s>", "<unk>"])
    )
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        cls_token="<s>",
        sep_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    config = RobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=max_positions + 2,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=0,
        eos_token_id=2,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = RobertaModel(config, add_pooling_layer=False)
    tokenizer.save_pretrained(path)
    model.save_pretrained(path)
    return path


def write_saved(root: Path, tsv_root: Path, *, class_labels: bool = True) -> Path:
    """Save the tasks written by ``write_glue(tsv_root)`` with the ``datasets`` library, as
    ``load_dataset('glue', task).save_to_disk(root / 'glue_datasets' / task)`` would: the library's column names,
    ``idx``, ``ClassLabel`` labels (plain integers with ``class_labels=False``) and a ``test`` split of -1 labels."""
    import datasets

    from mtlscope.data.sources import glue as source
    from mtlscope.data.sources.glue_datasets import CLASS_NAMES, TEXT_COLUMNS, split_name

    for task, folder in FOLDERS.items():
        splits = {}
        for which in ("train", "dev"):
            name = "dev_matched.tsv" if (folder == "MNLI" and which == "dev") else f"{which}.tsv"
            read = source.read_task(tsv_root / "glue_data" / folder / name, task)
            columns: dict[str, list] = {column: list(texts) for column, texts in zip(TEXT_COLUMNS[task], read.texts)}
            columns["label"] = read.labels.tolist()
            columns["idx"] = list(range(len(read)))
            splits[split_name(task, which)] = datasets.Dataset.from_dict(columns)
        test = dict(splits[split_name(task, "dev")].to_dict())
        test["label"] = [-1] * len(test["label"])
        splits["test_matched" if task == "mnli" else "test"] = datasets.Dataset.from_dict(test)
        if task in CLASS_NAMES and class_labels:
            feature = datasets.ClassLabel(names=list(CLASS_NAMES[task]))
            splits = {
                split: data.cast_column("label", feature) if not split.startswith("test") else data
                for split, data in splits.items()
            }
        datasets.DatasetDict(splits).save_to_disk(str(root / "glue_datasets" / task))
    return root / "glue_datasets"
