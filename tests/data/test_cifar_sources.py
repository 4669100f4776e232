"""The CIFAR-100 reader on tiny files in the official format (Python-2 pickles with bytes keys)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from mtlscope.data.catalog import MissingDataError, dataset_info
from mtlscope.data.sources.cifar import (
    ARCHIVE_MD5,
    cifar100_arrays,
    read_cifar100_meta,
    read_cifar100_split,
)
from mtlscope.data.unpickle import UnsafePickleError
from tests.data.pickle_files import COARSE_NAMES, COARSE_OF_FINE, cifar_meta, cifar_split, dump_python2, write_cifar100


@pytest.fixture
def folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    data, cache = tmp_path / "data", tmp_path / "cache"
    monkeypatch.setenv("MTLSCOPE_DATA", str(data))
    monkeypatch.setenv("MTLSCOPE_CACHE", str(cache))
    return data, cache


def test_the_catalog_entry_names_the_official_files() -> None:
    info = dataset_info("cifar-100")
    assert [f.paths[0] for f in info.files] == [
        "cifar-100-python/train",
        "cifar-100-python/test",
        "cifar-100-python/meta",
    ]
    assert {f.key: f.md5 for f in info.files} == {
        "train": "16019d7e3df5f24257cddd939b257f8d",
        "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
        "meta": "7973b15100ade9c7d40fb424638fde48",
    }
    assert ARCHIVE_MD5 in info.source and "cifar-100-python.tar.gz" in info.source


def test_a_split_file_is_read_as_uint8_images_and_labels(tmp_path: Path) -> None:
    content = cifar_split(3)
    dump_python2(content, tmp_path / "train")
    images, fine, coarse = read_cifar100_split(tmp_path / "train")
    assert images.dtype == np.uint8 and images.shape == (300, 3, 32, 32)
    assert fine.dtype == np.int64 and coarse.dtype == np.int64
    np.testing.assert_array_equal(images.reshape(300, 3072), content[b"data"])
    # channel-major rows: the first 1024 values are the red plane, row-major
    np.testing.assert_array_equal(images[:, 0].reshape(300, 1024), content[b"data"][:, :1024])
    np.testing.assert_array_equal(images[:, 0, 0, 0], fine)
    np.testing.assert_array_equal(coarse, COARSE_OF_FINE[fine])


def test_meta_gives_the_names(tmp_path: Path) -> None:
    dump_python2(cifar_meta(), tmp_path / "meta")
    fine_names, coarse_names = read_cifar100_meta(tmp_path / "meta")
    assert list(coarse_names) == COARSE_NAMES and fine_names[3] == "fine_03" and len(fine_names) == 100


def test_arrays_are_cached_and_decoded_once(folders: tuple[Path, Path], caplog: pytest.LogCaptureFixture) -> None:
    data, cache = folders
    write_cifar100(data, train_per_fine=2, test_per_fine=1)
    first = cifar100_arrays()
    assert first.images.shape == (300, 3, 32, 32) and isinstance(first.images, np.memmap)
    assert first.is_test.sum() == 100 and not first.is_test[:200].any()
    np.testing.assert_array_equal(first.images[:, 0, 0, 0], first.fine)
    np.testing.assert_array_equal(first.coarse, COARSE_OF_FINE[first.fine])
    entries = sorted(path.name for path in cache.glob("*.npy"))
    assert len(entries) == 2
    mtimes = [path.stat().st_mtime_ns for path in cache.glob("*.npy")]
    second = cifar100_arrays()
    assert [path.stat().st_mtime_ns for path in cache.glob("*.npy")] == mtimes
    np.testing.assert_array_equal(second.images, first.images)
    # a changed source file is a new cache entry
    dump_python2(cifar_split(1, 99), data / "cifar-100-python" / "test")
    third = cifar100_arrays()
    assert len(list(cache.glob("*.npy"))) == 4 and not np.array_equal(third.images[200:], first.images[200:])


def test_a_missing_file_is_one_line_naming_it_and_the_source(folders: tuple[Path, Path]) -> None:
    data, _ = folders
    write_cifar100(data, 1, 1)
    (data / "cifar-100-python" / "meta").unlink()
    with pytest.raises(MissingDataError) as raised:
        cifar100_arrays()
    message = str(raised.value)
    assert "\n" not in message and str(data / "cifar-100-python" / "meta") in message
    assert "cifar-100-python.tar.gz" in message


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda c: c.pop(b"fine_labels"), r"no 'fine_labels' entry"),
        (lambda c: c.__setitem__(b"data", c[b"data"][:, :100]), r"b'data' must be a uint8 array \[N, 3072\]"),
        (lambda c: c.__setitem__(b"data", c[b"data"].astype(np.float32)), r"uint8 array .* got float32"),
        (lambda c: c.__setitem__(b"fine_labels", c[b"fine_labels"][:-1]), r"99 labels for 100 images"),
        (lambda c: c.__setitem__(b"coarse_labels", [20] * 100), r"labels must be in 0\.\.19, found 20\.\.20"),
        (lambda c: c.__setitem__(b"fine_labels", ["a"] * 100), r"expected a list of 100 integer labels"),
    ],
)
def test_a_malformed_split_is_one_line(tmp_path: Path, change: object, expected: str) -> None:
    content = cifar_split(1)
    change(content)  # type: ignore[operator]
    dump_python2(content, tmp_path / "train")
    with pytest.raises(ValueError, match=rf"^{tmp_path / 'train'}: .*{expected}") as raised:
        read_cifar100_split(tmp_path / "train")
    assert "\n" not in str(raised.value)


def test_a_fine_class_under_two_coarse_classes_is_an_error(folders: tuple[Path, Path]) -> None:
    data, _ = folders
    folder = write_cifar100(data, 1, 1)
    content = cifar_split(1, 10)
    content[b"coarse_labels"][0] = (content[b"coarse_labels"][0] + 1) % 20
    dump_python2(content, folder / "test")
    with pytest.raises(
        ValueError, match=r"fine class \d+ appears under coarse classes \[\d+, \d+\]; expected exactly one"
    ):
        cifar100_arrays()


def test_a_truncated_file_is_one_line_and_nothing_is_cached(folders: tuple[Path, Path]) -> None:
    data, cache = folders
    folder = write_cifar100(data, 1, 1)
    raw = (folder / "train").read_bytes()
    (folder / "train").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=rf"^{folder / 'train'}: not a readable pickle \(truncated"):
        cifar100_arrays()
    assert not list(cache.glob("*.npy"))


def test_a_malicious_data_file_is_refused_and_nothing_runs(folders: tuple[Path, Path]) -> None:
    data, cache = folders
    folder = write_cifar100(data, 1, 1)
    marker = data / "pwned"

    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return eval, (f"open({str(marker)!r}, 'w').close()",)

    content = cifar_split(1)
    content[b"batch_label"] = Payload()  # type: ignore[assignment]
    (folder / "train").write_bytes(pickle.dumps(content, protocol=2))
    with pytest.raises(UnsafePickleError, match=rf"^{folder / 'train'}: refuses to load '__builtin__\.eval' "):
        cifar100_arrays()
    assert not marker.exists() and not list(cache.glob("*.npy"))


@pytest.mark.parametrize("bad", [[b"x"] * 20, [b"a"] * 100, "names"])
def test_malformed_meta_is_one_line(tmp_path: Path, bad: object) -> None:
    meta = cifar_meta()
    meta[b"fine_label_names"] = bad
    dump_python2(meta, tmp_path / "meta")
    with pytest.raises(ValueError, match=r"b'fine_label_names' (must be a list of 100 names|repeats a name)"):
        read_cifar100_meta(tmp_path / "meta")
