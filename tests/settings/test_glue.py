"""The glue setting and the roberta encoder on tiny GLUE folders in the official formats and a tiny RoBERTa."""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mtlscope.data.catalog import MissingDataError
from mtlscope.data.sources import glue as source
from mtlscope.data.tokens import INSTALL_TEXT, MissingTextDependency, import_transformers
from mtlscope.settings.glue import TASKS, held_out
from tests.data.glue_files import DEV_ROWS, FOLDERS, HEADERS, TRAIN_ROWS, write_glue, write_tsv


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("glue") / "data"
    return {"root": root, "written": write_glue(root)}


@pytest.fixture(scope="module")
def model_dir(files: dict) -> Path:
    pytest.importorskip("transformers")
    from tests.data.glue_files import write_model

    return write_model(files["root"] / "roberta-base")


@pytest.fixture
def data_env(files: dict, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MTLSCOPE_DATA", str(files["root"]))
    monkeypatch.setenv("MTLSCOPE_CACHE", str(files["root"].parent / "cache"))  # the token cache
    return files["root"]


def _path(root: Path, task: str, which: str) -> Path:
    name = "dev_matched.tsv" if (task == "mnli" and which == "dev") else f"{which}.tsv"
    return root / "glue_data" / FOLDERS[task] / name


# --- reading the files (no transformers needed) ---

STSB_HEADER = HEADERS["STS-B"]


@pytest.mark.parametrize("task", TASKS)
def test_every_task_file_reads_its_texts_and_labels(files: dict, task: str) -> None:
    for which in ("train", "dev"):
        rows, labels = files["written"][task][which]
        read = source.read_task(_path(files["root"], task, which), task)
        assert len(read) == len(rows)
        pair = task not in ("cola", "sst2")
        assert len(read.texts) == (2 if pair else 1)
        if task == "stsb":
            assert read.labels.dtype == np.float32
            np.testing.assert_allclose(read.labels, np.asarray(labels, dtype=np.float32))
            assert float(read.labels.min()) >= 0 and float(read.labels.max()) <= 5
        else:
            assert read.labels.dtype == np.int64
            assert read.labels.tolist() == labels
        first = rows[0]
        column = {"cola": 3, "sst2": 0, "mrpc": 3, "qqp": 3, "stsb": 7, "mnli": 8, "qnli": 1, "rte": 1}[task]
        assert read.texts[0][0] == first[column]
        if pair:
            assert read.texts[1][0] == first[column + 1]
        assert read.lines[0] == (1 if task == "cola" else 2)


def test_label_mappings_follow_the_datasets_library() -> None:
    assert source.FORMATS["mnli"].labels == ("entailment", "neutral", "contradiction")
    assert source.FORMATS["rte"].labels == source.FORMATS["qnli"].labels == ("entailment", "not_entailment")
    assert source.FORMATS["stsb"].labels is None and source.FORMATS["stsb"].output_size == 1
    assert {task: source.FORMATS[task].output_size for task in TASKS} == {
        "cola": 2, "sst2": 2, "mrpc": 2, "qqp": 2, "stsb": 1, "mnli": 3, "qnli": 2, "rte": 2
    }  # fmt: skip


def test_mnli_strings_become_class_indices(tmp_path: Path) -> None:
    header = ["index", "promptID", "pairID", "genre", "s1b", "s2b", "s1p", "s2p", "sentence1", "sentence2", "label1",
              "gold_label"]  # fmt: skip
    rows = [["0", "1", "1e", "g", "", "", "", "", "a", "b", "x", label] for label in
            ("contradiction", "entailment", "neutral")]  # fmt: skip
    path = tmp_path / "train.tsv"
    write_tsv(path, header, rows)
    assert source.read_task(path, "mnli").labels.tolist() == [2, 0, 1]


@pytest.mark.parametrize(
    ("task", "header", "row", "message"),
    [
        (
            "cola",
            None,
            ["gj04", "1", "", "a cat", "extra"],
            r"line 1: expected 4 tab-separated columns \(CoLA\), got 5",
        ),
        ("cola", None, ["gj04", "2", "", "a cat"], r"line 1: label '2' in column 'label'; expected one of 0, 1"),
        ("sst2", ["sentence", "label"], ["a cat"], r"line 2: expected 2 tab-separated columns \(SST-2\), got 1"),
        (
            "rte",
            ["index", "sentence1", "sentence2", "label"],
            ["0", "a", "b", "yes"],
            r"line 2: label 'yes' in column 'label'; expected one of entailment, not_entailment",
        ),
        (
            "stsb",
            STSB_HEADER,
            ["0", "g", "f", "y", "o", "s", "s", "a", "b", "5.5"],
            r"line 2: score '5.5' in column 'score'; expected a number in \[0, 5\]",
        ),
        (
            "stsb",
            STSB_HEADER,
            ["0", "g", "f", "y", "o", "s", "s", "a", "b", "high"],
            r"line 2: score 'high'",
        ),
        (
            "qnli",
            ["index", "question", "text", "label"],
            ["0", "a", "b", "entailment"],
            r"line 1: expected the QNLI header naming the columns question, sentence, label",
        ),
    ],
)
def test_malformed_rows_are_one_line_naming_file_and_line(
    tmp_path: Path, task: str, header: list[str] | None, row: list[str], message: str
) -> None:
    path = tmp_path / "train.tsv"
    good = {"cola": ["gj04", "1", "", "the cat"]}.get(task)
    write_tsv(path, header, [row] if good is None else [row, good])
    with pytest.raises(ValueError, match=rf"^{path}.* {message}") as error:
        source.read_task(path, task)
    assert "\n" not in str(error.value)


def test_empty_and_non_utf8_files(tmp_path: Path) -> None:
    path = tmp_path / "dev.tsv"
    path.write_text("sentence\tlabel\n")
    with pytest.raises(ValueError, match=r"dev.tsv: no examples"):
        source.read_task(path, "sst2")
    path.write_bytes(b"sentence\tlabel\nbad \xff byte\t1\n")
    with pytest.raises(ValueError, match=r"dev.tsv line 2: not UTF-8 text \(byte 0xff\)"):
        source.read_task(path, "sst2")


def test_missing_file_is_the_catalogs_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mtlscope import settings

    monkeypatch.setenv("MTLSCOPE_DATA", str(tmp_path / "nothing"))
    with pytest.raises(MissingDataError, match=r"^glue: missing .*glue_data/CoLA/train.tsv \(or glue/CoLA/train.tsv"):
        settings.get("glue")


def test_validation_split_is_seeded_disjoint_and_independent_of_the_other_tasks() -> None:
    train, val = held_out(20, 0.1, 0, "rte")
    assert len(val) == 2 and len(train) == 18
    assert sorted([*train.tolist(), *val.tolist()]) == list(range(20))
    again = held_out(20, 0.1, 0, "rte")
    assert np.array_equal(again[1], val) and np.array_equal(again[0], train)
    assert not np.array_equal(held_out(20, 0.1, 1, "rte")[0], train)
    assert not np.array_equal(held_out(20, 0.1, 0, "qnli")[0], train)  # each task its own draw
    assert len(held_out(3, 0.9, 0, "rte")[0]) == 1  # at least one training example stays
    with pytest.raises(ValueError, match="'rte': the training file has 1 example"):
        held_out(1, 0.1, 0, "rte")


def test_without_transformers_the_message_is_one_install_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # import fails as if it were not installed
    with pytest.raises(MissingTextDependency, match=re.escape(INSTALL_TEXT)) as error:
        import_transformers()
    assert "\n" not in str(error.value) and isinstance(error.value, ValueError)


# --- the setting and the encoder (tiny RoBERTa) ---


@pytest.fixture(scope="module")
def built(files: dict, model_dir: Path) -> object:
    from mtlscope import settings

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MTLSCOPE_DATA", str(files["root"]))
        patch.setenv("MTLSCOPE_CACHE", str(files["root"].parent / "cache"))
        return settings.get("glue", max_length=16)


def test_setting_tasks_shapes_splits_and_labels(built: object, files: dict) -> None:
    setting = built
    assert setting.task_names == TASKS and setting.layout == "multi-input"
    assert setting.input_shape == (32,)
    val = round(0.1 * TRAIN_ROWS)
    for task in TASKS:
        t = setting.task(task)
        assert (len(t.train), len(t.val), len(t.test)) == (TRAIN_ROWS - val, val, DEV_ROWS)
        assert t.output_size == source.FORMATS[task].output_size
        train_rows, val_rows = held_out(TRAIN_ROWS, 0.1, 0, task)
        labels = files["written"][task]["train"][1]
        expected = np.asarray(labels, dtype=np.float32 if task == "stsb" else np.int64)
        np.testing.assert_allclose(t.train.dataset.targets.numpy(), expected[train_rows])
        np.testing.assert_allclose(t.val.dataset.targets.numpy(), expected[val_rows])
        dev = np.asarray(files["written"][task]["dev"][1], dtype=expected.dtype)
        np.testing.assert_allclose(t.test.dataset.targets.numpy(), dev)
    assert setting.task("stsb").loss.name == "mse" and setting.task("mnli").loss.name == "cross_entropy"
    assert setting.task("cola").primary_metric == "mcc" and setting.task("stsb").primary_metric == "pearson"
    assert set(setting.task("mrpc").metric_names) == {"loss", "accuracy", "f1"}
    assert set(setting.task("stsb").metric_names) == {"loss", "pearson", "spearman"}


def test_rows_are_the_tokenizers_ids_padded_then_the_mask(built: object, files: dict, model_dir: Path) -> None:
    from mtlscope.data.tokens import load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    setting = built
    rows, _ = files["written"]["mrpc"]["dev"]
    row, _ = setting.task("mrpc").test.dataset[0]
    assert row.dtype == torch.int64 and row.shape == (32,)
    ids = tokenizer(rows[0][3], rows[0][4], truncation=True, max_length=16)["input_ids"]
    n = len(ids)
    assert row[:n].tolist() == ids and ids[0] == tokenizer.cls_token_id
    assert (row[n:16] == tokenizer.pad_token_id).all()
    assert row[16:].tolist() == [1] * n + [0] * (16 - n)


def test_truncation_to_max_length(files: dict, model_dir: Path) -> None:
    from mtlscope.data.tokens import load_tokenizer, tokenize

    tokenizer = load_tokenizer(model_dir)
    long = " ".join(["cat"] * 40)
    tokens = tokenize(tokenizer, ([long, "a dog"], ["the mat is big", "ran"]), 8)
    assert tokens.lengths.tolist()[0] == 8 and tokens.ids[0, -1] == tokenizer.sep_token_id
    short = tokenizer("a dog", "ran")["input_ids"]
    assert tokens.lengths[1] == len(short) and tokens.ids[1, : len(short)].tolist() == short


def test_options_change_the_split_deterministically(data_env: Path, model_dir: Path) -> None:
    from mtlscope import settings

    one = settings.get("glue", max_length=16, split_seed=1, train_size=5, val_size=1, test_size=2)
    again = settings.get("glue", max_length=16, split_seed=1, train_size=5, val_size=1, test_size=2)
    assert one.fingerprint() == again.fingerprint()
    rte = one.task("rte")
    assert (len(rte.train), len(rte.val), len(rte.test)) == (5, 1, 2)
    train_rows, _ = held_out(TRAIN_ROWS, 0.1, 1, "rte")
    full = source.read_task(_path(data_env, "rte", "train"), "rte")
    assert rte.train.dataset.targets.tolist() == full.labels[train_rows[:5]].tolist()
    other = settings.get("glue", max_length=16, split_seed=0, train_size=5, val_size=1, test_size=2)
    assert other.fingerprint() != one.fingerprint()


def test_a_bad_model_directory_is_one_line(data_env: Path, tmp_path: Path) -> None:
    from mtlscope import settings

    with pytest.raises(ValueError, match=r"tokenizer: .*nowhere is not a folder"):
        settings.get("glue", model_dir=str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"^tokenizer: cannot load a tokenizer from .*empty") as error:
        settings.get("glue", model_dir=str(tmp_path / "empty"))
    assert "\n" not in str(error.value)


def test_encoder_trims_to_the_longest_sequence_and_ignores_padding(model_dir: Path) -> None:
    from mtlscope.models.text import RobertaEncoder, split_rows

    encoder = RobertaEncoder(model_dir)
    assert encoder.output_dim == 32
    ids = torch.tensor([[0, 5, 6, 7, 2, 1, 1, 1], [0, 8, 2, 1, 1, 1, 1, 1]])
    mask = (ids != 1).long()
    rows = torch.cat([ids, mask], dim=1).float()
    trimmed_ids, trimmed_mask = split_rows(rows)
    assert trimmed_ids.tolist() == ids[:, :5].tolist() and trimmed_mask.tolist() == mask[:, :5].tolist()
    encoder.eval()
    with torch.no_grad():
        both = encoder(rows)
        alone = [encoder(torch.cat([ids[i : i + 1, :5], mask[i : i + 1, :5]], dim=1).float()) for i in range(2)]
        direct = encoder.model(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]
    assert both.shape == (2, 32)
    torch.testing.assert_close(both, torch.cat(alone), atol=1e-5, rtol=1e-5)  # padding never leaks
    torch.testing.assert_close(both, direct, atol=1e-5, rtol=1e-5)  # the first token's final hidden state
    with pytest.raises(ValueError, match="token id 99 is outside the model's vocabulary"):
        encoder(torch.tensor([[0, 99, 2, 1, 1, 1]]).float())


def test_dropout_is_on_in_training_and_off_in_probes(model_dir: Path) -> None:
    from mtlscope.models.text import RobertaEncoder
    from mtlscope.probes.base import probe_mode

    encoder = RobertaEncoder(model_dir)
    assert encoder.training and encoder.model.config.hidden_dropout_prob > 0
    rows = torch.tensor([[0, 5, 6, 7, 2, 1, 1, 1, 1, 1]]).float()
    with torch.no_grad():
        assert not torch.equal(encoder(rows), encoder(rows))  # dropout active while training
        with probe_mode(encoder):
            assert torch.equal(encoder(rows), encoder(rows))
        assert encoder.training


def test_encoder_rejects_inputs_that_are_not_token_rows(model_dir: Path) -> None:
    from mtlscope.models.encoders import ENCODERS

    with pytest.raises(ValueError, match=r"needs token rows \[2 \* max_length\]"):
        ENCODERS.build("roberta", (1, 28, 28), path=str(model_dir))


def test_metric_values_against_hand_computed_ones(built: object) -> None:
    setting = built
    # MRPC F1 of class 1: predictions 1,1,0,0,1 against 1,0,0,1,1 -> tp 2, fp 1, fn 1 -> F1 2/3
    outputs = torch.tensor([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    targets = torch.tensor([1, 0, 0, 1, 1])
    scores = setting.task("mrpc").scores(outputs, targets)
    assert scores["f1"] == pytest.approx(2 / 3) and scores["accuracy"] == pytest.approx(3 / 5)
    assert setting.task("qqp").scores(outputs, targets)["f1"] == pytest.approx(2 / 3)
    # CoLA Matthews: tp 2, tn 1, fp 1, fn 1 -> (2*1 - 1*1) / sqrt(3*3*2*2) = 1/6
    assert setting.task("cola").scores(outputs, targets)["mcc"] == pytest.approx(1 / 6)
    # STS-B: Pearson of (1, 2, 3, 5) and (1, 3, 2, 5); Spearman of their ranks (1,2,3,4) and (1,3,2,4) = 0.8
    predicted = torch.tensor([[1.0], [2.0], [3.0], [5.0]])
    gold = torch.tensor([1.0, 3.0, 2.0, 5.0])
    x, y = predicted.squeeze(1).double(), gold.double()
    pearson = float(
        ((x - x.mean()) * (y - y.mean())).sum() / math.sqrt(((x - x.mean()) ** 2).sum() * ((y - y.mean()) ** 2).sum())
    )
    scores = setting.task("stsb").scores(predicted, gold)
    assert scores["pearson"] == pytest.approx(pearson) and pearson == pytest.approx(7.75 / 8.75)
    assert scores["spearman"] == pytest.approx(0.8)
    assert scores["loss"] == pytest.approx(float(((x - y) ** 2).mean()))


def test_short_training_run_with_every_probe(data_env: Path, model_dir: Path, tmp_path: Path) -> None:
    import mtlscope

    config = {
        "setting": {"name": "glue", "tasks": ["cola", "stsb"], "options": {"max_length": 16, "train_size": 8}},
        "optimizer": {"name": "adam", "lr": 1e-3},
        "training": {"steps": 2, "eval_every": 2, "batch_size": 4},
        "probes": {
            "min_train_loss": {},
            "sharpness": {"subset": 4, "iterations": 1, "batch_size": 2, "every": 1},
            "fim_trace": {"subset": 4, "batch_size": 2, "every": 1},
            "grad_cov_trace": {"subset": 4, "small_batch": 2, "large_batch": 4, "every": 1},
            "grad_similarity": {"batches": 1, "every": 1},
            "affinity": {"every_steps": 2},
        },
        "seed": 0,
    }
    result = mtlscope.execute(mtlscope.validate_config(config), tmp_path / "runs")
    assert result.status == "completed"
    records = mtlscope.load(tmp_path / "runs").records
    assert set(records["task"]) >= {"cola", "stsb"}
    assert {"mcc", "pearson", "spearman", "loss"} <= set(records["metric"])
    probed = records[records["split"] == "probe"]
    assert {"min_train_loss", "sharpness", "fim_trace", "fim_trace_per_example", "grad_cov_trace",
            "grad_similarity"} <= set(probed["metric"])  # fmt: skip
    assert any(metric.startswith("affinity") for metric in probed["metric"])
    fim = probed[probed["metric"] == "fim_empirical"]
    assert set(fim["task"]) == {"cola", "stsb"} and (fim["value"] == 0).all()  # labels sampled from the model
    assert np.isfinite(probed["value"].astype(float)).all()
