"""The glue setting from GLUE saved with the ``datasets`` library: the same rows as the TSV folders give identical
tensors; strict checks of the saved copy (columns, classes, label ranges, hidden test labels, splits)."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mtlscope.data.catalog import MissingDataError
from mtlscope.data.sources import glue as source
from mtlscope.data.sources.glue_datasets import read_saved_task
from mtlscope.data.tokens import INSTALL_TEXT, MissingTextDependency
from mtlscope.settings.glue import TASKS
from tests.data.glue_files import FOLDERS, write_glue, write_saved

datasets = pytest.importorskip("datasets")


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``tsv``: the TSV folders and the model; ``saved``: the saved copy of the same rows and the same model."""
    pytest.importorskip("transformers")
    from tests.data.glue_files import write_model

    base = tmp_path_factory.mktemp("glue-datasets")
    tsv, saved = base / "tsv", base / "saved"
    write_glue(tsv)
    write_model(tsv / "roberta-base")
    write_saved(saved, tsv)
    shutil.copytree(tsv / "roberta-base", saved / "roberta-base")
    return {"tsv": tsv, "saved": saved}


def _tsv(root: Path, task: str, which: str) -> Path:
    name = "dev_matched.tsv" if (task == "mnli" and which == "dev") else f"{which}.tsv"
    return root / "glue_data" / FOLDERS[task] / name


@pytest.mark.parametrize("task", TASKS)
def test_a_saved_task_reads_as_its_tsv_files(roots: dict[str, Path], task: str) -> None:
    saved = read_saved_task(roots["saved"] / "glue_datasets" / task, task)
    for which in ("train", "dev"):
        tsv = source.read_task(_tsv(roots["tsv"], task, which), task)
        assert saved[which].texts == tsv.texts
        assert saved[which].labels.dtype == tsv.labels.dtype
        np.testing.assert_array_equal(saved[which].labels, tsv.labels)


def _build(root: Path, monkeypatch: pytest.MonkeyPatch, **options: object) -> object:
    from mtlscope import settings

    monkeypatch.setenv("MTLSCOPE_DATA", str(root))
    monkeypatch.setenv("MTLSCOPE_CACHE", str(root / "cache"))  # each copy its own token cache
    return settings.get("glue", max_length=16, **options)


def test_the_saved_copy_gives_identical_tensors(roots: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from_tsv = _build(roots["tsv"], monkeypatch, split_seed=3)
    from_saved = _build(roots["saved"], monkeypatch, split_seed=3)  # no TSV folders there: the saved copy
    explicit = _build(roots["saved"], monkeypatch, split_seed=3, data_format="datasets")
    for task in TASKS:
        for split in ("train", "val", "test"):
            ours = getattr(from_tsv.task(task), split).dataset
            theirs = getattr(from_saved.task(task), split).dataset
            rows = list(range(len(ours)))
            assert len(theirs) == len(ours)
            assert torch.equal(theirs.tokens.rows(rows), ours.tokens.rows(rows))
            assert torch.equal(theirs.targets, ours.targets) and theirs.targets.dtype == ours.targets.dtype
    assert from_saved.fingerprint() == from_tsv.fingerprint() == explicit.fingerprint()


def test_token_rows_are_cached(roots: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mtlscope.data import token_cache

    monkeypatch.setenv("MTLSCOPE_DATA", str(roots["tsv"]))
    monkeypatch.setenv("MTLSCOPE_CACHE", str(tmp_path / "cache"))
    from mtlscope import settings

    first = settings.get("glue", max_length=12, train_size=5)
    assert len(list((tmp_path / "cache").glob("glue-*.npz"))) == 3 * len(TASKS)  # a split of a task per entry

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("tokenized again")

    monkeypatch.setattr(token_cache, "tokenize", fail)
    assert settings.get("glue", max_length=12, train_size=5).fingerprint() == first.fingerprint()
    with pytest.raises(AssertionError, match="tokenized again"):
        settings.get("glue", max_length=12, train_size=5, cache_tokens=False)


def test_plain_integer_labels_read_as_class_labels(tmp_path: Path, roots: dict[str, Path]) -> None:
    write_saved(tmp_path, roots["tsv"], class_labels=False)
    for task in ("mnli", "rte"):
        plain = read_saved_task(tmp_path / "glue_datasets" / task, task)
        tsv = source.read_task(_tsv(roots["tsv"], task, "train"), task)
        np.testing.assert_array_equal(plain["train"].labels, tsv.labels)


def test_the_format_option_picks_the_files(roots: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(MissingDataError, match=r"^glue-datasets: missing .*glue_datasets/cola/dataset_dict.json"):
        _build(roots["tsv"], monkeypatch, data_format="datasets")
    with pytest.raises(MissingDataError, match=r"^glue: missing .*glue_data/CoLA/train.tsv"):
        _build(roots["saved"], monkeypatch, data_format="tsv")


def test_nothing_there_is_one_line_naming_both_layouts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(MissingDataError) as error:
        _build(tmp_path / "nothing", monkeypatch)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"glue: missing {tmp_path / 'nothing' / 'glue_data'}")
    assert f"a copy saved with the datasets library in {tmp_path / 'nothing' / 'glue_datasets'}/<task>" in message


def _save(folder: Path, splits: dict[str, dict[str, list]], label: object = None) -> Path:
    built = {name: datasets.Dataset.from_dict(columns) for name, columns in splits.items()}
    if label is not None:
        built = {name: data.cast_column("label", label) for name, data in built.items()}
    datasets.DatasetDict(built).save_to_disk(str(folder))
    return folder


RTE = {"sentence1": ["a cat", "the dog"], "sentence2": ["it sat", "ran"], "label": [0, 1], "idx": [0, 1]}


def _rte(**changes: list) -> dict[str, dict[str, list]]:
    return {"train": {**RTE, **changes}, "validation": dict(RTE)}


@pytest.mark.parametrize(
    ("splits", "task", "message"),
    [
        (_rte(label=[0, -1]), "rte", r"split 'train' row 1: label -1 \(GLUE's hidden test labels\)"),
        (_rte(label=[0, 2]), "rte", r"split 'train' row 1: label 2; expected a class index 0-1 \(entailment, "),
        (_rte(label=[0.5, 1.0]), "rte", r"split 'train': column 'label' holds float64 values; expected class"),
        (_rte(label=[0, None]), "rte", r"split 'train' row 1: column 'label' is empty"),
        (_rte(sentence2=["it sat", None]), "rte", r"split 'train' row 1: column 'sentence2' is None; expected text"),
        (
            {"train": {k: v for k, v in RTE.items() if k != "sentence2"}, "validation": RTE},
            "rte",
            r"split 'train': no column 'sentence2'; expected the columns sentence1, sentence2, label",
        ),
        ({"train": RTE, "test": RTE}, "rte", r"no split 'validation' \(found train, test\)"),
        ({"train": RTE, "validation": RTE}, "mnli", r"no column 'premise'"),
        (
            {"train": {**RTE, "label": [1.5, 5.5]}, "validation": {**RTE, "label": [1.0, 2.0]}},
            "stsb",
            r"split 'train' row 1: score 5.5; expected a number in \[0, 5\]",
        ),
        (
            {"train": {**RTE, "label": [1.5, 2.0]}, "validation": {**RTE, "label": [1.0, -1.0]}},
            "stsb",
            r"split 'validation' row 1: label -1 \(GLUE's hidden test labels\)",
        ),
    ],
)
def test_bad_saved_tasks_are_one_line_naming_folder_split_and_row(
    tmp_path: Path, splits: dict[str, dict[str, list]], task: str, message: str
) -> None:
    folder = _save(tmp_path / task, splits)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(folder))}[: ].*{message}") as error:
        read_saved_task(folder, task)
    assert "\n" not in str(error.value)


def test_an_empty_split_is_one_line(tmp_path: Path) -> None:
    empty = datasets.Dataset.from_dict(RTE).filter(lambda row: False)
    datasets.DatasetDict(train=empty, validation=datasets.Dataset.from_dict(RTE)).save_to_disk(str(tmp_path / "e"))
    with pytest.raises(ValueError, match=r"e split 'train': no examples$"):
        read_saved_task(tmp_path / "e", "rte")


def test_other_class_names_and_other_shapes_of_folder(tmp_path: Path) -> None:
    swapped = datasets.ClassLabel(names=["not_entailment", "entailment"])
    folder = _save(tmp_path / "rte", _rte(), label=swapped)
    with pytest.raises(ValueError, match=r"has the classes not_entailment, entailment; expected entailment, not_en"):
        read_saved_task(folder, "rte")
    single = tmp_path / "single"
    datasets.Dataset.from_dict(RTE).save_to_disk(str(single))
    with pytest.raises(ValueError, match=r"expected a DatasetDict with the splits train, validation .*got a single"):
        read_saved_task(single, "rte")
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "dataset_dict.json").write_text("{not json")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(garbage))}: cannot load a dataset saved with the datas"):
        read_saved_task(garbage / "dataset_dict.json", "rte")


def test_without_the_datasets_library_the_message_is_one_install_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails as if it were not installed
    with pytest.raises(MissingTextDependency, match=re.escape(INSTALL_TEXT)) as error:
        read_saved_task(tmp_path, "rte")
    assert "\n" not in str(error.value)
