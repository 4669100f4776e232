"""MNIST, Fashion-MNIST and notMNIST files: catalog entries, IDX in both layouts, notMNIST folders and IDX."""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import numpy as np
import pytest

from mtlscope.data.catalog import DATASETS, MissingDataError
from mtlscope.data.sources.mnist import idx_split
from mtlscope.data.sources.notmnist import find_notmnist, folder_pool, notmnist_pools
from tests.data.tiny_mnist import idx_bytes, write_idx_dataset, write_notmnist_folder


@pytest.fixture(autouse=True)
def _dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MTLSCOPE_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("MTLSCOPE_CACHE", str(tmp_path / "cache"))


def test_catalog_entries_name_official_files_sizes_and_checksums() -> None:
    fashion, mnist = DATASETS["fashion-mnist"], DATASETS["mnist"]
    assert fashion.file("train_images").paths == (
        "fashion-mnist/train-images-idx3-ubyte.gz",
        "fashion-mnist/train-images-idx3-ubyte",
        "FashionMNIST/raw/train-images-idx3-ubyte.gz",
        "FashionMNIST/raw/train-images-idx3-ubyte",
    )
    assert fashion.file("train_images").md5 == "8d4fb7e6c68d591d4c3dfef9ec88bf0d"
    assert fashion.file("test_labels").size == 5148
    assert mnist.file("test_labels").md5 == "ec29112dd5afa0611ce80d1b7f02629c"
    assert mnist.file("train_images").url == "https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz"
    assert mnist.file("train_labels").paths[2] == "MNIST/raw/train-labels-idx1-ubyte.gz"
    assert {"notmnist-idx", "notmnist-large", "notmnist-small"} <= set(DATASETS)


@pytest.mark.parametrize(
    ("dataset", "folder", "gz"),
    [
        ("fashion-mnist", "fashion-mnist", True),
        ("fashion-mnist", "FashionMNIST/raw", False),
        ("fashion-mnist", "FashionMNIST/raw", True),
        ("mnist", "mnist", False),
        ("mnist", "MNIST/raw", True),
    ],
)
def test_idx_files_in_both_layouts_gzipped_or_raw(tmp_path: Path, dataset: str, folder: str, gz: bool) -> None:
    written = write_idx_dataset(tmp_path / "data" / folder, gz=gz)
    for split in ("train", "test"):
        pool = idx_split(dataset, split)
        assert pool.rows.dtype == np.uint8 and pool.rows.shape == (len(written[f"{split}_labels"]), 28, 28)
        assert pool.labels.dtype == np.int64
        np.testing.assert_array_equal(pool.labels, written[f"{split}_labels"])
        np.testing.assert_array_equal(pool.images(np.array([3, 1])), written[f"{split}_images"][[3, 1]])
        assert isinstance(pool.rows, np.memmap)  # decoded once into the image cache


def test_missing_idx_file_is_one_line_naming_the_expected_path(tmp_path: Path) -> None:
    write_idx_dataset(tmp_path / "data" / "fashion-mnist")
    (tmp_path / "data" / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    idx_split("fashion-mnist", "train")  # the train files alone are enough for the train split
    with pytest.raises(MissingDataError) as error:
        idx_split("fashion-mnist", "test")
    message = str(error.value)
    assert "\n" not in message
    assert str(tmp_path / "data" / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz") in message
    assert "FashionMNIST/raw/t10k-labels-idx1-ubyte.gz" in message


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("truncate", "damaged gzip stream"),
        ("labels_out_of_range", "label 12 out of range; expected 0..9"),
        ("label_count", "9 labels for 10 images"),
        ("image_shape", "expected uint8 images [N, 28, 28]"),
        ("not_idx", "not an IDX file"),
    ],
)
def test_truncated_or_malformed_files_are_one_line_naming_the_file(tmp_path: Path, damage: str, expected: str) -> None:
    folder = tmp_path / "data" / "mnist"
    write_idx_dataset(folder, test=10)
    images, labels = folder / "t10k-images-idx3-ubyte.gz", folder / "t10k-labels-idx1-ubyte.gz"
    if damage == "truncate":
        images.write_bytes(images.read_bytes()[:-100])
    elif damage == "labels_out_of_range":
        labels.write_bytes(gzip.compress(idx_bytes(np.full(10, 12, dtype=np.uint8))))
    elif damage == "label_count":
        labels.write_bytes(gzip.compress(idx_bytes(np.zeros(9, dtype=np.uint8))))
    elif damage == "image_shape":
        images.write_bytes(gzip.compress(idx_bytes(np.zeros((10, 28, 27), dtype=np.uint8))))
    else:
        images.write_bytes(gzip.compress(b"<html>not found</html>"))
    with pytest.raises(ValueError) as error:
        idx_split("mnist", "test")
    message = str(error.value)
    assert expected in message and "\n" not in message
    assert str(labels if "label" in damage else images) in message


def test_notmnist_folder_skips_unreadable_files_and_reports_them_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "data" / "notMNIST_small"
    written = write_notmnist_folder(folder, per_letter=3, unreadable=2)
    with caplog.at_level(logging.WARNING, logger="mtlscope.data.sources.notmnist"):
        pool = folder_pool(folder)
        again = folder_pool(folder)  # from the cache: no decoding, no second report
    reports = [record.getMessage() for record in caplog.records if "unreadable" in record.getMessage()]
    assert reports == [f"{folder}: skipped 2 unreadable file(s) of 32 (e.g. A/broken0.png)"]
    assert len(pool) == 30 and len(again) == 30
    np.testing.assert_array_equal(pool.labels, np.repeat(np.arange(10), 3))  # A=0 ... J=9
    np.testing.assert_array_equal(pool.images(np.arange(30)), written)
    assert pool.key == again.key


def test_notmnist_forms_auto_prefers_idx_then_large_then_small(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with pytest.raises(MissingDataError) as error:
        find_notmnist()
    assert "notMNIST_large" in str(error.value) and "notMNIST_small" in str(error.value)
    assert "\n" not in str(error.value)
    write_notmnist_folder(data / "notMNIST_small", per_letter=2, unreadable=0)
    assert find_notmnist() == "small"
    train, test = notmnist_pools()
    assert test is None and len(train) == 20
    write_idx_dataset(data / "notmnist", train=30, test=12)
    assert find_notmnist() == "idx" and find_notmnist("small") == "small"
    train, test = notmnist_pools()
    assert test is not None and (len(train), len(test)) == (30, 12)
    with pytest.raises(MissingDataError, match="notMNIST_large"):
        find_notmnist("large")


def test_notmnist_folder_errors(tmp_path: Path) -> None:
    folder = tmp_path / "data" / "notMNIST_small"
    write_notmnist_folder(folder, per_letter=1, unreadable=0)
    (folder / "K").mkdir()
    with pytest.raises(ValueError, match="unexpected letter folder K; notMNIST has the letters A-J"):
        folder_pool(folder)
    (folder / "K").rmdir()
    from PIL import Image

    Image.fromarray(np.zeros((20, 28), dtype=np.uint8), mode="L").save(folder / "C" / "wide.png")
    with pytest.raises(ValueError, match=r"wide.png: a 28x20 image; expected 28x28"):
        folder_pool(folder)
    (folder / "C" / "wide.png").unlink()
    for png in (folder / "E").iterdir():
        png.unlink()
    (folder / "E").rmdir()
    with pytest.raises(ValueError, match="no letter folder E"):
        folder_pool(folder)
