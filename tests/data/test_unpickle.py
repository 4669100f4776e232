"""The restricted unpickler: every way a pickle can name a global is refused before anything is imported or run;
numpy arrays and plain containers round-trip; damaged files are one line; no plain pickle.load in src."""

from __future__ import annotations

import copyreg
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mtlscope.data.unpickle import PickleFormatError, UnsafePickleError, load_pickle, loads_pickle
from tests.data.pickle_files import Python2Pickler, dump_python2

SRC = Path(__file__).resolve().parents[2] / "src"


class Reduces:
    """An object whose pickle calls ``function(*args)`` when loaded (REDUCE after GLOBAL / STACK_GLOBAL)."""

    def __init__(self, function: object, *args: object) -> None:
        self.function, self.args = function, args

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return self.function, self.args


def payloads(marker: Path) -> dict[str, object]:
    """Objects whose unpickling would create ``marker``."""
    code = f"open({str(marker)!r}, 'w').close()"
    return {
        "os.system": Reduces(os.system, f"touch {marker}"),
        "builtins.eval": Reduces(eval, code),
        "builtins.exec": Reduces(exec, code),
        "subprocess.call": Reduces(subprocess.call, ["touch", str(marker)]),
        "subprocess.Popen": Reduces(subprocess.Popen, ["touch", str(marker)]),
        # a numpy array whose state is rebuilt by calling exec: the globals inside an array's pickle are checked too
        "inside a list": [np.zeros(2), Reduces(exec, code)],
    }


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
@pytest.mark.parametrize("payload", ["os.system", "builtins.eval", "builtins.exec", "subprocess.call",
                                     "subprocess.Popen", "inside a list"])  # fmt: skip
def test_a_global_in_reduce_is_refused_and_never_runs(tmp_path: Path, protocol: int, payload: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "train"
    path.write_bytes(pickle.dumps(payloads(marker)[payload], protocol=protocol))
    with pytest.raises(UnsafePickleError) as raised:
        load_pickle(path)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: refuses to load '")
    assert message.endswith("(pickles may only hold arrays, lists and dicts)")
    assert not marker.exists()
    # the control: the plain pickle module does run it (so the test would fail if the unpickler did not refuse)
    if payload == "builtins.eval":
        pickle.loads(path.read_bytes())
        assert marker.exists()


def test_the_refused_name_is_the_global_asked_for(tmp_path: Path) -> None:
    data = pickle.dumps(Reduces(eval, "1"), protocol=4)
    with pytest.raises(UnsafePickleError, match=r"^cifar-100-python/train: refuses to load 'builtins\.eval' "):
        loads_pickle(data, where="cifar-100-python/train")


def _opcode_pickles(module: str, name: str, argument: str) -> dict[str, bytes]:
    """Hand-written pickles naming ``module.name`` through each opcode that can: GLOBAL, STACK_GLOBAL, INST, OBJ,
    EXT1 (after registering an extension code), and a persistent id."""
    arg = argument.encode()
    return {
        "GLOBAL+REDUCE": b"c" + f"{module}\n{name}\n".encode() + b"(V" + arg + b"\ntR.",
        "STACK_GLOBAL": b"\x80\x04\x8c" + bytes([len(module)]) + module.encode() + b"\x8c" + bytes([len(name)])
        + name.encode() + b"\x93\x8c" + bytes([len(arg)]) + arg + b"\x85R.",
        "INST": b"(V" + arg + b"\ni" + f"{module}\n{name}\n".encode() + b".",
        "OBJ": b"(c" + f"{module}\n{name}\n".encode() + b"V" + arg + b"\no.",
        "EXT1": b"\x80\x02\x82\xf0(V" + arg + b"\ntR.",
        "PERSID": b"P" + arg + b"\n.",
    }  # fmt: skip


@pytest.mark.parametrize("opcode", ["GLOBAL+REDUCE", "STACK_GLOBAL", "INST", "OBJ", "EXT1", "PERSID"])
@pytest.mark.parametrize("target", ["os.system", "builtins.eval", "subprocess.getoutput"])
def test_every_opcode_that_names_a_global_is_refused(tmp_path: Path, opcode: str, target: str) -> None:
    marker = tmp_path / "pwned"
    module, name = target.rsplit(".", 1)
    command = f"open({str(marker)!r}, 'w').close()" if name == "eval" else f"touch {marker}"
    data = _opcode_pickles(module, name, command)[opcode]
    copyreg.add_extension(module, name, 240)
    try:
        if opcode != "PERSID":  # the control: these bytes are a working exploit for the plain pickle module
            pickle.loads(data)
            assert marker.exists()
            marker.unlink()
        with pytest.raises(UnsafePickleError, match="refuses to load"):
            loads_pickle(data, where="f")
    finally:
        copyreg.remove_extension(module, name, 240)
    assert not marker.exists()


def test_a_refused_module_is_never_imported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "imported"
    (tmp_path / "evil_pickle_module_xyz.py").write_text(f"open({str(marker)!r}, 'w').close()\nrun = print\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for data in _opcode_pickles("evil_pickle_module_xyz", "run", "x").values():
        with pytest.raises(UnsafePickleError):
            loads_pickle(data, where="f")
    assert not marker.exists()
    assert "evil_pickle_module_xyz" not in sys.modules


def test_torch_tensors_are_refused() -> None:
    torch = pytest.importorskip("torch")
    data = pickle.dumps({"weights": torch.ones(3)}, protocol=2)
    with pytest.raises(UnsafePickleError, match=r"refuses to load 'torch\."):
        loads_pickle(data, where="f")


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
@pytest.mark.parametrize("dtype", ["uint8", "int16", ">i4", "int64", "float32", "<f8", "bool", "complex64"])
def test_numpy_arrays_round_trip(protocol: int, dtype: str) -> None:
    array = (np.arange(24) % 7).astype(dtype).reshape(2, 3, 4)
    content = {
        b"data": array,
        "fortran": np.asfortranarray(array),
        "view": array[:, 1],
        "scalar": array.reshape(-1)[5],
        "plain": [1, -2.5, True, None, "é", b"\x00\xff", (3, 4), {"nested": [b""]}],
    }
    data = pickle.dumps(content, protocol=protocol)
    loaded = loads_pickle(data, where="f")
    expected = pickle.loads(data, encoding="bytes")  # the independent path: the plain pickle module
    assert loaded.keys() == expected.keys()
    for key in (b"data", "fortran", "view"):
        assert loaded[key].dtype == expected[key].dtype
        assert loaded[key].shape == array[:, 1].shape if key == "view" else array.shape
        np.testing.assert_array_equal(loaded[key], expected[key])
    assert loaded["scalar"] == expected["scalar"] and type(loaded["scalar"]) is type(expected["scalar"])
    assert loaded["plain"] == expected["plain"]


@pytest.mark.parametrize("encoding", ["bytes", "latin1"])
def test_python2_pickles_with_bytes_or_latin1_strings(tmp_path: Path, encoding: str) -> None:
    array = np.arange(3072, dtype=np.uint8).reshape(1, 3072)
    path = tmp_path / "test"
    dump_python2({b"data": array, b"fine_labels": [3], b"names": [b"apple"]}, path)
    loaded = load_pickle(path, encoding=encoding)
    key = b"data" if encoding == "bytes" else "data"
    np.testing.assert_array_equal(loaded[key], array)
    assert loaded[key].dtype == np.uint8
    names = loaded[b"names" if encoding == "bytes" else "names"]
    assert names == ([b"apple"] if encoding == "bytes" else ["apple"])
    assert Python2Pickler is not None


def test_an_array_of_python_objects_is_refused() -> None:
    data = pickle.dumps({"x": np.array([1, "a"], dtype=object)}, protocol=4)
    with pytest.raises(PickleFormatError, match=r"^f: holds an array of Python objects \(dtype object\)"):
        loads_pickle(data, where="f")


def test_codecs_encode_is_accepted_for_latin1_only() -> None:
    good = b"\x80\x02c_codecs\nencode\nX\x02\x00\x00\x00abX\x06\x00\x00\x00latin1\x86R."
    assert loads_pickle(good, where="f") == b"ab"
    for codec in (b"zlib", b"utf-8"):
        bad = good.replace(b"X\x06\x00\x00\x00latin1", b"X" + bytes([len(codec), 0, 0, 0]) + codec)
        with pytest.raises(PickleFormatError, match="accepted only as encode"):
            loads_pickle(bad, where="f")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "empty file"),
        (b"this is not a pickle", "not a readable pickle"),
        (b"\x80\x05\x95\xff\xff\xff\xff\xff\xff\x00\x00", "not a readable pickle"),  # a frame longer than the file
        (b"\x80\x02B\xff\xff\xff\x7f", "not a readable pickle"),  # BINBYTES declaring 2 GiB: never allocated
        (b"(" * 200_000 + b".", "not a readable pickle"),
    ],
)
def test_garbage_is_one_line(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "meta"
    path.write_bytes(content)
    with pytest.raises(PickleFormatError) as raised:
        load_pickle(path)
    assert str(raised.value).startswith(f"{path}: {expected}")
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("cut", [1, 10, 100, 1000, -1])
def test_a_truncated_pickle_is_one_line(tmp_path: Path, cut: int) -> None:
    data = pickle.dumps({b"data": np.arange(2000, dtype=np.uint8)}, protocol=2)
    path = tmp_path / "train"
    path.write_bytes(data[:cut])
    with pytest.raises(PickleFormatError, match=rf"^{re.escape(str(path))}: not a readable pickle \(truncated"):
        load_pickle(path)


def test_a_missing_file_and_a_bad_encoding() -> None:
    with pytest.raises(PickleFormatError, match=r"nowhere/train: cannot read the file \(No such file"):
        load_pickle("nowhere/train")
    with pytest.raises(ValueError, match="encoding 'ascii'"):
        loads_pickle(b"N.", where="f", encoding="ascii")


def test_src_never_calls_pickle_load_or_torch_load_without_weights_only() -> None:
    offenders = []
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        for match in re.finditer(r"\b(pickle|cPickle|_pickle|dill|joblib)\.(load|loads)\(|\bUnpickler\(", text):
            if path.name != "unpickle.py":
                offenders.append(f"{path.relative_to(SRC)}: {match.group(0)}")
        for match in re.finditer(r"\btorch\.load\(", text):
            call = text[match.start() : text.find(")\n", match.start()) + 1]
            if "weights_only=True" not in call:
                offenders.append(f"{path.relative_to(SRC)}: {call[:80]}")
        if re.search(r"allow_pickle\s*=\s*True", text):
            offenders.append(f"{path.relative_to(SRC)}: allow_pickle=True")
    assert offenders == []
