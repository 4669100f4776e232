"""The reader of Lin et al.'s MultiMNIST / MultiFashion pickles on tiny files in their format."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import numpy as np
import pytest

from mtlscope.data.catalog import MissingDataError, dataset_info
from mtlscope.data.sources.multimnist import multimnist_arrays, pixels_as_uint8, read_multimnist
from mtlscope.data.unpickle import UnsafePickleError
from tests.data.pickle_files import dump_python2, multimnist_content, write_multimnist


@pytest.fixture
def folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    data, cache = tmp_path / "data", tmp_path / "cache"
    monkeypatch.setenv("MTLSCOPE_DATA", str(data))
    monkeypatch.setenv("MTLSCOPE_CACHE", str(cache))
    return data, cache


def test_catalog_entries() -> None:
    assert dataset_info("multi-mnist").files[0].paths[0] == "multi_mnist.pickle"
    assert dataset_info("multi-fashion").files[0].paths[0] == "multi_fashion.pickle"
    assert dataset_info("multi-fashion-mnist").files[0].paths[0] == "multi_fashion_and_mnist.pickle"
    assert "github.com/Xi-L/ParetoMTL" in dataset_info("multi-mnist").source


@pytest.mark.parametrize("shape", [(36, 36), (1, 36, 36), (1296,)])
@pytest.mark.parametrize("scale", ["unit", "byte"])
def test_the_file_is_read_exactly(tmp_path: Path, shape: tuple[int, ...], scale: str) -> None:
    content = list(multimnist_content(train=12, test=6, scale=scale))
    expected = [np.rint(content[i] * (255 if scale == "unit" else 1)).astype(np.uint8) for i in (0, 2)]
    content[0], content[2] = content[0].reshape(12, *shape), content[2].reshape(6, *shape)
    path = tmp_path / "multi_mnist.pickle"
    path.write_bytes(pickle.dumps(tuple(content)))
    train_x, train_y, test_x, test_y = read_multimnist(path)
    assert train_x.dtype == np.uint8 and train_x.shape == (12, 36, 36) and test_x.shape == (6, 36, 36)
    np.testing.assert_array_equal(train_x, expected[0])
    np.testing.assert_array_equal(test_x, expected[1])
    assert train_y.dtype == np.int64 and train_y.shape == (12, 2)
    np.testing.assert_array_equal(train_y, content[1])
    np.testing.assert_array_equal(test_y, content[3])


def test_a_python2_pickle_is_read_too(tmp_path: Path) -> None:
    content = multimnist_content(train=6, test=6)
    dump_python2(content, tmp_path / "multi_fashion.pickle")
    train_x, train_y, _, _ = read_multimnist(tmp_path / "multi_fashion.pickle")
    np.testing.assert_array_equal(train_x, np.rint(content[0] * 255).astype(np.uint8))
    np.testing.assert_array_equal(train_y, content[1])


def test_pixel_conversion_rules(caplog: pytest.LogCaptureFixture) -> None:
    exact = np.arange(256, dtype=np.float32) / 255
    np.testing.assert_array_equal(pixels_as_uint8(exact, "f"), np.arange(256))
    np.testing.assert_array_equal(pixels_as_uint8(np.arange(256, dtype=np.int32), "f"), np.arange(256))
    with caplog.at_level(logging.INFO, logger="mtlscope.data.sources.multimnist"):
        rounded = pixels_as_uint8(np.array([0.0, 0.5, 1.0]), "f")
    assert rounded.tolist() == [0, 128, 255]  # 127.5 rounds to the even 128
    assert "rounded to the nearest (largest change 0.0020" in caplog.text
    for bad, expected in (
        (np.array([-0.1, 0.5]), r"must be in \[0, 1\] or 0\.\.255"),
        (np.array([1.5, 200.0]), "must be whole numbers"),
        (np.array([0.5, np.nan]), "1 pixels are not finite"),
        (np.array([300], dtype=np.int64), r"integer pixels must be in 0\.\.255"),
    ):
        with pytest.raises(ValueError, match=expected):
            pixels_as_uint8(bad, "f")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda c: c[:3], r"expected a pickled tuple \(trainX, trainLabel, testX, testLabel\), got 3 items"),
        (lambda c: (c[0][:, :30], *c[1:]), r"trainX: expected images \[N, 36, 36\]"),
        (lambda c: (c[0], c[1][:-1], *c[2:]), r"trainLabel: expected labels \[12, 2\]"),
        (lambda c: (*c[:3], c[3] + 5), r"testLabel: labels must be integers 0\.\.9"),
        (lambda c: (c[0], c[1], c[2][:0], c[3][:0]), r"testX: expected a non-empty image array"),
        (lambda c: {"train": c}, r"got dict"),
    ],
)
def test_a_malformed_file_is_one_line(tmp_path: Path, change: object, expected: str) -> None:
    path = tmp_path / "multi_mnist.pickle"
    path.write_bytes(pickle.dumps(change(multimnist_content(12, 6))))  # type: ignore[operator]
    with pytest.raises(ValueError, match=rf"^{path}: .*{expected}") as raised:
        read_multimnist(path)
    assert "\n" not in str(raised.value)


def test_arrays_are_cached_with_labels_and_split(folders: tuple[Path, Path]) -> None:
    data, cache = folders
    write_multimnist(data, "multi_fashion_and_mnist.pickle", train=12, test=6)
    arrays = multimnist_arrays("multi-fashion-mnist")
    content = multimnist_content(12, 6)
    assert isinstance(arrays.images, np.memmap) and arrays.images.shape == (18, 36, 36)
    np.testing.assert_array_equal(arrays.is_test, [False] * 12 + [True] * 6)
    np.testing.assert_array_equal(arrays.left, np.concatenate([content[1][:, 0], content[3][:, 0]]))
    np.testing.assert_array_equal(arrays.right, np.concatenate([content[1][:, 1], content[3][:, 1]]))
    assert len(list(cache.glob("*.npy"))) == 2
    again = multimnist_arrays("multi-fashion-mnist")
    np.testing.assert_array_equal(again.images, arrays.images)
    assert len(list(cache.glob("*.npy"))) == 2


def test_missing_truncated_and_malicious_files(folders: tuple[Path, Path]) -> None:
    data, cache = folders
    with pytest.raises(MissingDataError, match=rf"multi-mnist: missing {data / 'multi_mnist.pickle'} .*ParetoMTL"):
        multimnist_arrays("multi-mnist")
    path = write_multimnist(data)
    raw = path.read_bytes()
    path.write_bytes(raw[:-50])
    with pytest.raises(ValueError, match=rf"^{path}: not a readable pickle \(truncated"):
        multimnist_arrays("multi-mnist")
    marker = data / "pwned"

    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return exec, (f"open({str(marker)!r}, 'w').close()",)

    path.write_bytes(pickle.dumps((*multimnist_content(), Payload())))
    with pytest.raises(UnsafePickleError, match=rf"^{path}: refuses to load 'builtins\.exec'"):
        multimnist_arrays("multi-mnist")
    assert not marker.exists() and not list(cache.glob("*.npy"))
