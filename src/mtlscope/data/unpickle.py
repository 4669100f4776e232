"""A restricted unpickler for the pickled datasets mtlscope reads (CIFAR's ``cifar-100-python``, the Pareto-MTL
MultiMNIST files): pickles are untrusted input, so nothing but plain containers and numpy arrays is rebuilt.

``load_pickle(path, encoding="bytes")`` reads a pickle file whose content may only be:

- what pickle opcodes build without importing anything: ``dict``, ``list``, ``tuple``, ``str``, ``bytes``,
  ``int``, ``float``, ``bool``, ``None`` (and ``set``/``frozenset``/``bytearray``);
- numpy arrays and scalars of numeric dtypes, through these globals only: ``numpy.core.multiarray._reconstruct``
  / ``numpy._core.multiarray._reconstruct`` (how every protocol up to 4 rebuilds an array), ``numpy.ndarray``,
  ``numpy.dtype``, ``numpy.core.multiarray.scalar`` / ``numpy._core.multiarray.scalar`` (numpy scalars) and
  ``numpy.core.numeric._frombuffer`` / ``numpy._core.numeric._frombuffer`` (arrays in protocol 5);
- bytes as Python 3 writes them at protocols 0-2: ``_codecs.encode(text, "latin1")`` (accepted for the latin-1
  codec only) and ``builtins.bytes()`` (no arguments only).

Any other global — ``os.system``, ``builtins.eval``, ``subprocess.Popen``, ``torch._utils._rebuild_tensor_v2``,
a copyreg extension code, a persistent id — is refused *before* anything is imported or called, with one line
(``UnsafePickleError``, a ``ValueError``)::

    cifar-100-python/train: refuses to load 'os.system' (pickles may only hold arrays, lists and dicts)

Arrays of Python objects (dtype ``object``) are refused too. A truncated or damaged file is one line
(``PickleFormatError``, a ``ValueError``) naming the file. ``encoding`` is how Python-2 ``str`` objects are
decoded: ``"bytes"`` keeps them as bytes (CIFAR's dictionaries have bytes keys, ``b"data"``), ``"latin1"`` makes
them ``str``; Python 3 pickles are unaffected. Never call ``pickle.load`` on a data file: use this.
"""

from __future__ import annotations

import copyreg
import io
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

try:  # numpy >= 2 (numpy.core is a deprecated alias there)
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]
    from numpy.core import numeric as _numeric  # type: ignore[no-redef]

ENCODINGS = ("bytes", "latin1")
WHAT_IS_ALLOWED = "pickles may only hold arrays, lists and dicts"


class UnsafePickleError(ValueError):
    """A pickle asks for a global (a function or class) that is not on the allowlist; nothing was imported."""


class PickleFormatError(ValueError):
    """A pickle file is truncated, damaged, not a pickle, or holds something other than arrays and containers."""


def _latin1_encode(text: object, encoding: object = "utf-8", *rest: object) -> bytes:
    """``_codecs.encode`` as Python 3 uses it to pickle bytes at protocols 0-2: latin-1 text to bytes only."""
    if rest or not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is accepted only as encode(text, 'latin1') (pickled bytes)")
    return text.encode("latin1")


def _empty_bytes(*args: object) -> bytes:
    """``bytes()`` as Python 3 uses it to pickle ``b''`` at protocols 0-2 (no arguments: no allocation)."""
    if args:
        raise pickle.UnpicklingError("builtins.bytes is accepted only without arguments (pickled b'')")
    return b""


#: (module, name) -> the object it stands for: the only globals a pickle may name.
ALLOWED: dict[tuple[str, str], Callable[..., Any]] = {
    ("numpy.core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy.core.multiarray", "scalar"): _multiarray.scalar,
    ("numpy._core.multiarray", "scalar"): _multiarray.scalar,
    ("numpy.core.numeric", "_frombuffer"): _numeric._frombuffer,  # type: ignore[attr-defined]
    ("numpy._core.numeric", "_frombuffer"): _numeric._frombuffer,  # type: ignore[attr-defined]
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
    ("builtins", "bytes"): _empty_bytes,
    ("__builtin__", "bytes"): _empty_bytes,
}

#: what opcodes build without a global
_PLAIN = (dict, list, tuple, str, bytes, bytearray, int, float, bool, type(None), set, frozenset)


#: the pure-Python unpickler of the ``pickle`` module (its opcodes can be replaced one by one)
_PythonUnpickler: Any = pickle._Unpickler


class RestrictedUnpickler(_PythonUnpickler):
    """The pure-Python ``pickle`` unpickler whose ``find_class`` returns only the allowlisted globals
    (``ALLOWED``) and refuses everything else without importing it. Persistent ids and copyreg extension codes
    (EXT1/EXT2/EXT4, which the unpicklers serve from a process-wide cache without asking ``find_class`` once a
    code has been loaded) are refused too. ``where`` names the file in errors."""

    dispatch: dict[int, Any] = _PythonUnpickler.dispatch.copy()

    def __init__(self, file: io.BytesIO, *, where: str, encoding: str = "bytes") -> None:
        super().__init__(file, encoding=encoding, fix_imports=False)
        self.where = where

    def _refuse_extension(self, size: int) -> None:
        code = int.from_bytes(self.read(size), "little")
        named = copyreg._inverted_registry.get(code)  # type: ignore[attr-defined]
        shown = f"{named[0]}.{named[1]}" if named else f"extension code {code}"
        raise UnsafePickleError(f"{self.where}: refuses to load {shown!r} ({WHAT_IS_ALLOWED})")

    def _name_line(self) -> str:
        line = self.readline()
        if not line.endswith(b"\n"):
            raise pickle.UnpicklingError("pickle data was truncated (in the name of a global)")
        return str(line[:-1].decode("utf-8"))

    def _load_global(self) -> None:  # GLOBAL: "module\nname\n"
        module = self._name_line()
        self.append(self.find_class(module, self._name_line()))

    def _load_inst(self) -> None:  # INST: "module\nname\n", then the class is called with the marked arguments
        module = self._name_line()
        klass = self.find_class(module, self._name_line())
        self._instantiate(klass, self.pop_mark())

    dispatch[pickle.GLOBAL[0]] = _load_global
    dispatch[pickle.INST[0]] = _load_inst
    dispatch[pickle.EXT1[0]] = lambda self: self._refuse_extension(1)
    dispatch[pickle.EXT2[0]] = lambda self: self._refuse_extension(2)
    dispatch[pickle.EXT4[0]] = lambda self: self._refuse_extension(4)

    def find_class(self, module: str, name: str) -> Any:
        found = ALLOWED.get((module, name))
        if found is None:
            shown = f"{module}.{name}"[:120]
            raise UnsafePickleError(f"{self.where}: refuses to load {shown!r} ({WHAT_IS_ALLOWED})")
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self.where}: refuses to load a persistent id ({WHAT_IS_ALLOWED})")


def _check_plain(value: object, where: str, depth: int = 0) -> None:
    """Refuse anything but containers, numbers, strings and numeric arrays (an object array carries arbitrary
    Python objects; it cannot come from the allowed globals with content other than the plain values, but a data
    file has no reason to hold one)."""
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise PickleFormatError(
                f"{where}: holds an array of Python objects (dtype {value.dtype}); {WHAT_IS_ALLOWED} of numbers"
            )
        return
    if isinstance(value, np.generic):
        if isinstance(value, np.object_) or value.dtype.hasobject:
            raise PickleFormatError(f"{where}: holds a numpy object scalar; {WHAT_IS_ALLOWED} of numbers")
        return
    if not isinstance(value, _PLAIN):
        raise PickleFormatError(f"{where}: holds a {type(value).__name__}; {WHAT_IS_ALLOWED}")
    if depth > 50:
        raise PickleFormatError(f"{where}: containers nested more than 50 deep; {WHAT_IS_ALLOWED}")
    if isinstance(value, dict):
        for key, item in value.items():
            _check_plain(key, where, depth + 1)
            _check_plain(item, where, depth + 1)
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            _check_plain(item, where, depth + 1)


def loads_pickle(data: bytes, *, where: str, encoding: str = "bytes") -> Any:
    """The object pickled in ``data`` (module docstring); errors name ``where``."""
    if encoding not in ENCODINGS:
        raise ValueError(f"load_pickle encoding {encoding!r}: expected one of {', '.join(ENCODINGS)}")
    if not data:
        raise PickleFormatError(f"{where}: empty file; expected a pickle")
    try:
        value = RestrictedUnpickler(io.BytesIO(data), where=where, encoding=encoding).load()
    except UnsafePickleError:
        raise
    except RecursionError:
        raise PickleFormatError(f"{where}: not a readable pickle (nested too deeply)") from None
    except MemoryError:
        raise PickleFormatError(f"{where}: not a readable pickle (it declares more data than fits in memory)") from None
    except Exception as error:  # what a damaged stream raises: UnpicklingError, EOFError, ValueError, TypeError...
        detail = (str(error).splitlines() or [type(error).__name__])[0][:200]
        raise PickleFormatError(
            f"{where}: not a readable pickle (truncated or damaged: {type(error).__name__}: {detail})"
        ) from None
    _check_plain(value, where)
    return value


def load_pickle(path: str | os.PathLike[str], *, encoding: str = "bytes", where: str | None = None) -> Any:
    """The object pickled in the file ``path``, rebuilt by ``RestrictedUnpickler`` (module docstring).

    The file is read whole first: a length field of a damaged file can never make the reader allocate more than
    the file's size. ``where`` (default: the path) names the file in every error.
    """
    shown = where if where is not None else str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise PickleFormatError(f"{shown}: cannot read the file ({error.strerror or error})") from None
    return loads_pickle(data, where=shown, encoding=encoding)
