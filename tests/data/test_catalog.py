"""``mtlscope.data.catalog``: declarations are checked, the data directory's resolution order, locate's one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtlscope.data import catalog
from mtlscope.data.catalog import (
    Archive,
    DataFile,
    DatasetInfo,
    MissingDataError,
    data_directory,
    data_directory_origin,
    locate,
    register_dataset,
    use_data_directory,
)


@pytest.fixture(autouse=True)
def _catalog(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(catalog, "DATASETS", dict(catalog.DATASETS))
    monkeypatch.delenv(catalog.DATA_ENV, raising=False)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: DataFile("x", ()), "needs at least one path"),
        (lambda: DataFile("x", ("../up",)), "must be a relative path below the data directory"),
        (lambda: DataFile("x", ("/abs/x",)), "must be a relative path"),
        (lambda: DataFile("x", ("a\\b",)), "must be a relative path"),
        (lambda: DataFile("x", ("x",), size=-1), "size must be a number of bytes >= 0"),
        (lambda: DataFile("x", ("x",), md5="ABC"), "md5 must be 32 lowercase hex digits"),
        (lambda: DataFile("x", ("x",), url="ftp://host/x"), "url must be an http:// or https:// address"),
        (lambda: DataFile("x", ("x",), url="https://h/x", archive="a"), "either url (fetched itself) or archive"),
        (lambda: Archive("a", "release.rar", "https://h/r"), "cannot tell the format"),
        (lambda: Archive("a", "r.tar.gz", "https://h/r", into="../x"), "must be a relative path"),
        (lambda: Archive("a", "r.tar", "https://h/r", max_bytes=0), "must be positive"),
        (
            lambda: DatasetInfo("d", "", "", "", (DataFile("x", ("x",), archive="nope"),)),
            "names archive 'nope', which is not among its archives (none)",
        ),
        (lambda: DatasetInfo("d", "", "", "", (DataFile("x", ("x",)), DataFile("x", ("y",)))), "share a key"),
    ],
)
def test_declarations_are_checked(make: object, message: str) -> None:
    with pytest.raises(ValueError) as raised:
        make()  # type: ignore[operator]
    assert message in str(raised.value)


def test_archive_format_is_told_by_the_suffix() -> None:
    assert Archive("a", "cifar-100-python.tar.gz", "https://h/a").format == "tar.gz"
    assert Archive("a", "x.tgz", "https://h/a").format == "tar.gz"
    assert Archive("a", "x.tar", "https://h/a").format == "tar"
    assert Archive("a", "img_align_celeba.zip", "https://h/a").format == "zip"
    assert Archive("a", "download", "https://h/a", format="zip").format == "zip"


def test_downloadable_and_lookups() -> None:
    archive = Archive("release", "r.tar.gz", "https://h/r")
    info = DatasetInfo(
        "d",
        "",
        "",
        "",
        (DataFile("x", ("x",), url="https://h/x"), DataFile("y", ("set/y",), archive="release")),
        archives=(archive,),
    )
    assert info.downloadable and info.archive("release") is archive and info.file("y").archive == "release"
    assert not DatasetInfo("e", "", "", "", (DataFile("x", ("x",)),)).downloadable


def test_data_directory_resolution_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert data_directory_origin() == (Path("~/.mtlscope/data").expanduser(), "default")
    monkeypatch.setenv(catalog.DATA_ENV, str(tmp_path / "env"))
    assert data_directory_origin() == (tmp_path / "env", "$MTLSCOPE_DATA")
    with use_data_directory(tmp_path / "config"):
        assert data_directory_origin() == (tmp_path / "config", "config data_dir")
        assert data_directory(tmp_path / "given") == tmp_path / "given"
        with use_data_directory(None):  # no data_dir in the config: unchanged
            assert data_directory() == tmp_path / "config"
    assert data_directory() == tmp_path / "env"
    assert data_directory("~/x") == Path("~/x").expanduser()


def test_locate_finds_the_first_layout_and_names_the_download(tmp_path: Path) -> None:
    register_dataset(
        DatasetInfo(
            "d",
            "a dataset",
            "https://example.org/d",
            "",
            (DataFile("x", ("flat/x", "Torch/raw/x")), DataFile("y", ("set/y",), archive="release")),
            archives=(Archive("release", "r.tar.gz", "https://h/r"),),
        )
    )
    (tmp_path / "Torch/raw").mkdir(parents=True)
    (tmp_path / "Torch/raw/x").write_bytes(b"x")
    assert locate("d", tmp_path, keys=("x",)) == {"x": tmp_path / "Torch/raw/x"}
    with pytest.raises(MissingDataError) as raised:
        locate("d", tmp_path)
    assert str(raised.value) == (
        f"d: missing {tmp_path / 'set/y'}; get it from https://example.org/d or run `mtlscope data download d`, "
        "or point --data-dir / MTLSCOPE_DATA to the folder that holds it"
    )
    with use_data_directory(tmp_path), pytest.raises(MissingDataError, match=str(tmp_path / "set/y")):
        locate("d")
