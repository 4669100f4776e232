"""Token rows cached on disk: a second tokenization of the same texts reads the entry (identical rows, the
tokenizer not called), other texts, lengths or tokenizers get entries of their own, a damaged entry is rebuilt."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from mtlscope.data import token_cache
from mtlscope.data.token_cache import cached_tokenize, texts_digest
from mtlscope.data.tokens import load_tokenizer, tokenize

TEXTS = (("a cat sat on the mat", "the dog ran", "why"), ("it is good", "not very bad", "how old"))


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> object:
    pytest.importorskip("transformers")
    from tests.data.glue_files import write_model

    return load_tokenizer(write_model(tmp_path_factory.mktemp("model") / "m", layers=1, hidden=8))


def _same(one: object, other: object) -> bool:
    return (
        np.array_equal(one.ids, other.ids) and one.ids.dtype == other.ids.dtype
        and np.array_equal(one.lengths, other.lengths) and one.pad_id == other.pad_id
    )  # fmt: skip


def test_a_second_call_reads_the_entry(tokenizer: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = cached_tokenize(tokenizer, TEXTS, 8, tmp_path, name="t")
    assert _same(first, tokenize(tokenizer, TEXTS, 8))
    assert len(list(tmp_path.glob("t-*.npz"))) == 1 and not list(tmp_path.glob(".*tmp"))

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("tokenized again")

    monkeypatch.setattr(token_cache, "tokenize", fail)
    again = cached_tokenize(tokenizer, TEXTS, 8, tmp_path, name="t")
    assert _same(again, first)


def test_other_texts_lengths_and_tokenizers_are_other_entries(
    tokenizer: object, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from tests.data.glue_files import WORDS, write_model

    cached_tokenize(tokenizer, TEXTS, 8, tmp_path, name="t")
    changed = ((*TEXTS[0][:2], "who"), TEXTS[1])
    assert _same(cached_tokenize(tokenizer, changed, 8, tmp_path, name="t"), tokenize(tokenizer, changed, 8))
    assert _same(cached_tokenize(tokenizer, TEXTS, 4, tmp_path, name="t"), tokenize(tokenizer, TEXTS, 4))
    monkey = pytest.MonkeyPatch()
    monkey.setattr("tests.data.glue_files.WORDS", [*WORDS, "zebra"])  # another vocabulary
    try:
        other = load_tokenizer(write_model(tmp_path_factory.mktemp("other") / "m", layers=1, hidden=8))
    finally:
        monkey.undo()
    assert len(other) == len(tokenizer) + 1
    rows = cached_tokenize(other, TEXTS, 8, tmp_path, name="t")
    assert _same(rows, tokenize(other, TEXTS, 8))
    assert len(list(tmp_path.glob("t-*.npz"))) == 4  # a new entry: the tokenizer is part of the key


def test_a_damaged_entry_is_reported_and_rebuilt(
    tokenizer: object, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cached_tokenize(tokenizer, TEXTS, 8, tmp_path, name="t")
    (entry,) = tmp_path.glob("t-*.npz")
    entry.write_bytes(entry.read_bytes()[:100])
    with caplog.at_level(logging.WARNING, logger="mtlscope.data.token_cache"):
        rows = cached_tokenize(tokenizer, TEXTS, 8, tmp_path, name="t")
    assert _same(rows, tokenize(tokenizer, TEXTS, 8))
    assert len(caplog.records) == 1 and "damaged" in caplog.records[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mtlscope.data.token_cache"):
        assert _same(cached_tokenize(tokenizer, TEXTS, 8, tmp_path, name="t"), rows)
    assert not caplog.records  # rebuilt: read back without a warning


def test_an_unwritable_cache_tokenizes_without_it(
    tokenizer: object, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    with caplog.at_level(logging.WARNING, logger="mtlscope.data.token_cache"):
        rows = cached_tokenize(tokenizer, TEXTS, 8, blocked / "cache", name="t")
    assert _same(rows, tokenize(tokenizer, TEXTS, 8)) and "cannot be written" in caplog.records[0].getMessage()


def test_texts_digest_separates_texts() -> None:
    assert texts_digest((("ab", "c"),)) != texts_digest((("a", "bc"),))
    assert texts_digest((("a",), ("b",))) != texts_digest((("a", "b"),))
    assert texts_digest((("a", "b"),)) == texts_digest((["a", "b"],))
