"""Tokenized text cached on disk, so a text setting tokenizes each set of texts once per tokenizer.

``cached_tokenize(tokenizer, texts, max_length, cache_dir, name=...)`` returns what ``tokenize`` returns
(``mtlscope.data.tokens.TokenRows``); it tokenizes only when ``cache_dir`` holds no valid entry for the key:
sha256 over the texts themselves (every text, in order, length-prefixed), the tokenizer's identity
(``tokenizer_identity``: class, vocabulary, special tokens, settings) and ``max_length``. Keying on the texts
rather than on file names makes an entry right whichever file, format or subset the texts came from, and a
changed file, tokenizer or length a new entry.

Entry ``<name>-<key[:16]>.npz`` (NumPy's format, no pickle): ``ids``, ``lengths``, ``pad_id`` and the full
``key``, written to a uniquely named temporary file in ``cache_dir`` and renamed into place, so an entry is
complete or absent (two processes writing the same entry write the same bytes). An entry that does not match its
key or shape (a damaged file) is reported in one log line and rebuilt; a cache directory that cannot be written
is reported in one log line and the texts are tokenized without it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mtlscope.data.fingerprint import combine
from mtlscope.data.tokens import TokenRows, tokenize, tokenizer_identity

logger = logging.getLogger(__name__)

FORMAT = 1  # of the entry; part of the key


def texts_digest(texts: Sequence[Sequence[str]]) -> str:
    """sha256 over the text columns, every text length-prefixed (so no two different lists share a digest)."""
    digest = hashlib.sha256(f"{len(texts)} columns".encode())
    for column in texts:
        digest.update(f"|{len(column)}|".encode())
        for text in column:
            data = text.encode("utf-8", "surrogatepass")
            digest.update(len(data).to_bytes(8, "little"))
            digest.update(data)
    return digest.hexdigest()


def token_key(tokenizer_id: str, texts: Sequence[Sequence[str]], max_length: int) -> str:
    """The key of an entry: the texts, the tokenizer's identity (``tokenizer_identity``) and ``max_length``."""
    return combine(
        {
            "format": FORMAT,
            "tokenizer": tokenizer_id,
            "max_length": max_length,
            "texts": texts_digest(texts),
        }
    )


def _read(path: Path, key: str, count: int, max_length: int, pad_id: int) -> TokenRows:
    """The entry at ``path``; ``ValueError`` saying what is wrong with it."""
    try:
        with np.load(path, allow_pickle=False) as entry:
            arrays = {name: entry[name] for name in ("key", "ids", "lengths", "pad_id")}
    except Exception as error:  # NumPy raises OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile...
        raise ValueError(f"unreadable ({(str(error).splitlines() or [type(error).__name__])[0][:200]})") from None
    ids, lengths = arrays["ids"], arrays["lengths"]
    if arrays["key"].tobytes().decode("ascii", "replace") != key:
        raise ValueError("its key is not this entry's")
    if ids.dtype not in (np.uint16, np.int32) or ids.shape != (count, max_length):
        raise ValueError(f"its ids are {ids.dtype} {list(ids.shape)}, expected [{count}, {max_length}]")
    if lengths.dtype != np.int32 or lengths.shape != (count,) or (count and not 0 < lengths.min() <= max_length):
        raise ValueError("its lengths are not one per text within [1, max_length]")
    if count and int(lengths.max()) > max_length:
        raise ValueError("its lengths are not one per text within [1, max_length]")
    if int(arrays["pad_id"]) != pad_id:
        raise ValueError(f"its pad id is {int(arrays['pad_id'])}, the tokenizer's is {pad_id}")
    return TokenRows(ids, lengths, pad_id)


def _write(path: Path, key: str, rows: TokenRows) -> None:
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            np.savez(
                stream,
                key=np.frombuffer(key.encode("ascii"), dtype=np.uint8),
                ids=rows.ids,
                lengths=rows.lengths,
                pad_id=np.int64(rows.pad_id),
            )
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def cached_tokenize(
    tokenizer: Any,
    texts: Sequence[Sequence[str]],
    max_length: int,
    cache_dir: str | os.PathLike[str] | None,
    *,
    name: str = "tokens",
    what: str = "texts",
    show_progress: bool = False,
    tokenizer_id: str | None = None,
) -> TokenRows:
    """``tokenize(tokenizer, texts, max_length)`` read from ``cache_dir`` when an entry is there, else computed
    and stored (module docstring); ``cache_dir=None`` tokenizes without a cache. ``tokenizer_id``: the
    tokenizer's ``tokenizer_identity``, when the caller has it (it hashes the whole vocabulary)."""
    if cache_dir is None:
        return tokenize(tokenizer, texts, max_length, what=what, show_progress=show_progress)
    key = token_key(tokenizer_id or tokenizer_identity(tokenizer), texts, max_length)
    folder = Path(cache_dir).expanduser()
    path = folder / f"{name}-{key[:16]}.npz"
    pad_id = int(tokenizer.pad_token_id)
    if path.exists():
        try:
            return _read(path, key, len(texts[0]) if texts else 0, max_length, pad_id)
        except ValueError as error:
            logger.warning("token cache entry %s is damaged (%s); tokenizing %s again", path, error, what)
    rows = tokenize(tokenizer, texts, max_length, what=what, show_progress=show_progress)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _write(path, key, rows)
    except OSError as error:
        logger.warning("token cache %s cannot be written (%s); %s tokenized without it", folder, error, what)
    return rows
