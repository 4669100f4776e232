"""``mtlscope.data.download``: verified, atomic downloads from a local HTTP server on 127.0.0.1, safe archive
extraction, and the lock; nothing partial is ever left behind."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import random
import socket
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mtlscope.data import catalog
from mtlscope.data.catalog import Archive, DataFile, DatasetInfo, MissingDataError, locate, register_dataset
from mtlscope.data.check import check_dataset
from mtlscope.data.download import ArchiveError, DownloadError, download_dataset, extract_archive, fetch


class _Server:
    """Files served by a ``http.server`` thread; ``behaviour[path]``: ``"truncate"`` (announces the whole length,
    sends half and closes), ``"reset"`` (sends half, then resets the connection), ``"error"`` (HTTP 500)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.behaviour: dict[str, str] = {}
        self.requests: list[str] = []
        served = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                served.requests.append(self.path)
                body = served.files.get(self.path)
                behaviour = served.behaviour.get(self.path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                if behaviour == "error":
                    self.send_error(500, "Internal Server Error")
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if behaviour in ("truncate", "reset"):
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    if behaviour == "reset":  # an RST instead of a FIN
                        self.connection.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                        )
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"


@pytest.fixture
def server() -> Iterator[_Server]:
    served = _Server()
    served.thread.start()
    try:
        yield served
    finally:
        served.httpd.shutdown()
        served.httpd.server_close()


@pytest.fixture(autouse=True)
def _catalog(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(catalog, "DATASETS", dict(catalog.DATASETS))
    monkeypatch.setenv(catalog.DATA_ENV, str(tmp_path / "data"))


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def listing(folder: Path) -> list[str]:
    """Every file and folder under ``folder`` (hidden ones too), relative."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def tar_bytes(members: dict[str, bytes], *, gz: bool = True, extra: list[tarfile.TarInfo] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if gz else "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra or []:
            tar.addfile(info)
    return buffer.getvalue()


def zip_bytes(members: dict[str, bytes], *, symlink: str | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as bundle:
        for name, data in members.items():
            bundle.writestr(name, data)
        if symlink is not None:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (0o120777 << 16) | 0
            bundle.writestr(info, "/etc/passwd")
    return buffer.getvalue()


# -- fetch -------------------------------------------------------------------------------------------------

PAYLOAD = bytes(range(256)) * 4000  # ~1 MiB: more than one chunk


def test_fetch_writes_the_verified_file(server: _Server, tmp_path: Path) -> None:
    server.files["/a.bin"] = PAYLOAD
    target = tmp_path / "out" / "a.bin"
    fetch(server.url("/a.bin"), target, size=len(PAYLOAD), md5=md5(PAYLOAD), progress=False)
    assert target.read_bytes() == PAYLOAD
    assert listing(tmp_path / "out") == ["a.bin"]


@pytest.mark.parametrize(
    ("behaviour", "size", "checksum", "expected"),
    [
        (None, None, "0" * 32, "wrong checksum (md5 "),
        (None, len(PAYLOAD) + 1, None, f"the server sends {len(PAYLOAD)} bytes, expected {len(PAYLOAD) + 1}"),
        ("truncate", None, None, f"truncated transfer ({len(PAYLOAD) // 2} of {len(PAYLOAD)} bytes)"),
        ("reset", None, None, "bytes"),
        ("error", None, None, "HTTP error 500"),
    ],
)
def test_fetch_failures_leave_nothing_and_keep_the_previous_file(
    server: _Server, tmp_path: Path, behaviour: str | None, size: int | None, checksum: str | None, expected: str
) -> None:
    server.files["/a.bin"] = PAYLOAD
    if behaviour:
        server.behaviour["/a.bin"] = behaviour
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "a.bin").write_bytes(b"previous")
    with pytest.raises(DownloadError) as raised:
        fetch(server.url("/a.bin"), folder / "a.bin", size=size, md5=checksum, progress=False)
    message = str(raised.value)
    assert "\n" not in message and expected in message and server.url("/a.bin") in message
    assert listing(folder) == ["a.bin"]  # no temporary file left
    assert (folder / "a.bin").read_bytes() == b"previous"


def test_fetch_404_and_refused_schemes(server: _Server, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match=r"HTTP error 404 \(Not Found\)"):
        fetch(server.url("/nothing"), tmp_path / "x", progress=False)
    with pytest.raises(DownloadError, match="only http:// and https://"):
        fetch(f"file://{tmp_path}/x", tmp_path / "y", progress=False)
    assert listing(tmp_path) == []


def test_fetch_refuses_more_bytes_than_the_known_size_without_content_length(tmp_path: Path) -> None:
    """A server that sends no length and too much: stopped at the known size, nothing kept."""

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"x" * 5000)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/f"
        with pytest.raises(DownloadError, match="more than the expected 100 bytes"):
            fetch(url, tmp_path / "f", size=100, progress=False)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert listing(tmp_path) == []


def test_fetch_interrupted_leaves_nothing(server: _Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C in the middle of a transfer (after the first chunk is written): the temporary file is removed and
    the interrupt goes on."""
    from mtlscope.progress import Progress

    server.files["/a.bin"] = PAYLOAD * 3
    reached: list[int] = []

    def interrupt(self: Progress, done: int, *, timed: bool = True) -> None:
        reached.append(done)
        if done > 0:
            assert len(listing(tmp_path)) == 1  # the temporary file, being written
            raise KeyboardInterrupt

    monkeypatch.setattr(Progress, "advance_to", interrupt)
    with pytest.raises(KeyboardInterrupt):
        fetch(server.url("/a.bin"), tmp_path / "a.bin", progress=False)
    assert reached[-1] > 0 and listing(tmp_path) == []


# -- extraction --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["tar", "tar.gz", "zip"])
def test_extract_archive_writes_the_members(tmp_path: Path, form: str) -> None:
    members = {"set/train": b"train data", "set/sub/test": b"test", "./top": b"t"}
    archive = tmp_path / f"a.{form}"
    archive.write_bytes(zip_bytes(members) if form == "zip" else tar_bytes(members, gz=form == "tar.gz"))
    into = tmp_path / "into"
    extracted = extract_archive(archive, into, format=form)
    assert sorted(str(p.relative_to(into)) for p in extracted) == ["set/sub/test", "set/train", "top"]
    assert (into / "set" / "train").read_bytes() == b"train data"
    assert listing(into) == ["set", "set/sub", "set/sub/test", "set/train", "top"]  # no staging folder left
    assert (into / "top").stat().st_mode & 0o777 == 0o644


def _symlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    return info


def _device(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.CHRTYPE
    return info


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda: tar_bytes({"ok": b"1", "../escape": b"x"}), "points outside the folder"),
        (lambda: tar_bytes({"ok": b"1", "a/../../escape": b"x"}), "points outside the folder"),
        (lambda: tar_bytes({"/etc/evil": b"x"}), "is not a relative path"),
        (lambda: tar_bytes({"ok": b"1"}, extra=[_symlink("link", "/etc/passwd")]), "is a symbolic link"),
        (lambda: tar_bytes({"ok": b"1"}, extra=[_device("dev")]), "is a special file"),
        (lambda: zip_bytes({"ok": b"1", "../escape": b"x"}), "points outside the folder"),
        (lambda: zip_bytes({"ok": b"1"}, symlink="link"), "is a symbolic link"),
        (lambda: tar_bytes({"ok": b"1", "again": b"2", "ok ": b"3"} | {"./ok": b"4"}), "appears twice"),
        (lambda: b"not an archive at all", "not a valid"),
        (lambda: tar_bytes({"big": random.Random(0).randbytes(5000)})[:-3000], "not a valid"),
    ],
)
def test_extract_archive_refuses_unsafe_or_damaged_archives(tmp_path: Path, make: object, expected: str) -> None:
    for form in ("tar.gz", "zip"):
        data = make()  # type: ignore[operator]
        if (form == "zip") != data.startswith(b"PK") and data != b"not an archive at all":
            continue
        archive = tmp_path / f"a.{form}"
        archive.write_bytes(data)
        into = tmp_path / "into"
        into.mkdir(exist_ok=True)
        with pytest.raises(ArchiveError) as raised:
            extract_archive(archive, into, format=form)
        assert expected in str(raised.value) and "\n" not in str(raised.value)
        assert listing(into) == []  # nothing extracted, not even the members before the bad one
        assert not (tmp_path / "escape").exists() and not (tmp_path / "link").exists()


def test_extract_archive_size_and_member_limits(tmp_path: Path) -> None:
    for form, data in (
        ("tar.gz", tar_bytes({"a": b"x" * 600, "b": b"y" * 600})),
        ("zip", zip_bytes({"a": b"x" * 600, "b": b"y" * 600})),
    ):
        archive = tmp_path / f"a.{form}"
        archive.write_bytes(data)
        with pytest.raises(ArchiveError, match="extracts to more than 1000 bytes"):
            extract_archive(archive, tmp_path / form, format=form, max_bytes=1000)
        with pytest.raises(ArchiveError, match="more than 1 members"):
            extract_archive(archive, tmp_path / form, format=form, max_members=1)
        assert listing(tmp_path / form) == []
        assert len(extract_archive(archive, tmp_path / form, format=form, max_bytes=1200, max_members=2)) == 2


# -- a whole dataset ---------------------------------------------------------------------------------------

FILE_A = b"first file " * 100
FILE_B = b"second file " * 50
TRAIN = b"train member " * 40
TEST = b"test member " * 30


def _register(server: _Server, *, archive_bytes: bytes | None = None, bad_md5: bool = False) -> DatasetInfo:
    server.files["/a.bin"] = FILE_A
    server.files["/b.bin"] = FILE_B
    archive = (
        archive_bytes if archive_bytes is not None else tar_bytes({"fake-set/train": TRAIN, "fake-set/test": TEST})
    )
    server.files["/fake-set.tar.gz"] = archive
    return register_dataset(
        DatasetInfo(
            name="fake-set",
            description="a fake dataset",
            source="the test server",
            reference="none",
            files=(
                DataFile(
                    "a",
                    ("fake/a.bin", "alt/a.bin"),
                    len(FILE_A),
                    "0" * 32 if bad_md5 else md5(FILE_A),
                    server.url("/a.bin"),
                ),
                DataFile("b", ("fake/b.bin",), len(FILE_B), md5(FILE_B), server.url("/b.bin")),
                DataFile("train", ("fake-set/train",), len(TRAIN), md5(TRAIN), archive="release"),
                DataFile("test", ("fake-set/test",), len(TEST), md5(TEST), archive="release"),
            ),
            archives=(
                Archive("release", "fake-set.tar.gz", server.url("/fake-set.tar.gz"), len(archive), md5(archive)),
            ),
        )
    )


def test_download_dataset_fetches_extracts_verifies_then_skips(server: _Server, tmp_path: Path) -> None:
    _register(server)
    root = tmp_path / "data"
    with pytest.raises(MissingDataError):
        locate("fake-set")
    lines: list[str] = []
    assert download_dataset("fake-set", progress=False, report=lines.append)
    assert [line.split()[:2] for line in lines] == [
        ["downloaded", "a"],
        ["downloaded", "b"],
        ["extracted", "train"],
        ["extracted", "test"],
    ]
    assert locate("fake-set") == {
        "a": root / "fake/a.bin",
        "b": root / "fake/b.bin",
        "train": root / "fake-set/train",
        "test": root / "fake-set/test",
    }
    assert (root / "fake-set/train").read_bytes() == TRAIN
    assert all(check.ok for check in check_dataset("fake-set"))
    assert listing(root) == [
        ".mtlscope-download-fake-set.lock",
        "fake",
        "fake-set",
        "fake-set/test",
        "fake-set/train",
        "fake/a.bin",
        "fake/b.bin",
    ]  # the archive is removed after extraction, no temporary files
    requests = len(server.requests)
    lines.clear()
    assert download_dataset("fake-set", progress=False, report=lines.append)  # again: everything is present
    assert [line.split()[0] for line in lines] == ["present"] * 4
    assert len(server.requests) == requests


def test_download_dataset_resumes_and_replaces_only_what_is_wrong(server: _Server, tmp_path: Path) -> None:
    _register(server)
    root = tmp_path / "data"
    (root / "alt").mkdir(parents=True)
    (root / "alt/a.bin").write_bytes(FILE_A)  # present in the second layout: kept
    (root / "fake").mkdir()
    (root / "fake/b.bin").write_bytes(b"damaged")
    (root / "fake/.b.bin.x1y2.part").write_bytes(b"left by a killed download")
    lines: list[str] = []
    assert download_dataset("fake-set", progress=False, report=lines.append)
    assert lines[0].split()[:3] == ["present", "a", str(root / "alt/a.bin")]
    assert lines[1].split()[:2] == ["downloaded", "b"] and "replaced a file with wrong size" in lines[1]
    assert server.requests.count("/a.bin") == 0
    assert (root / "fake/b.bin").read_bytes() == FILE_B
    assert not (root / "fake/.b.bin.x1y2.part").exists()


def test_download_dataset_wrong_checksum_is_one_line_and_nothing_left(server: _Server, tmp_path: Path) -> None:
    _register(server, bad_md5=True)
    lines: list[str] = []
    assert not download_dataset("fake-set", progress=False, report=lines.append)
    assert lines[0].startswith("failed") and "wrong checksum" in lines[0] and "\n" not in lines[0]
    assert [line.split()[0] for line in lines[1:]] == ["downloaded", "extracted", "extracted"]
    assert not (tmp_path / "data/fake/a.bin").exists()
    assert [p.name for p in (tmp_path / "data/fake").iterdir()] == ["b.bin"]


def test_download_dataset_refuses_a_malicious_archive(server: _Server, tmp_path: Path) -> None:
    evil = tar_bytes({"fake-set/train": TRAIN, "../../outside": b"owned", "fake-set/test": TEST})
    _register(server, archive_bytes=evil)
    lines: list[str] = []
    assert not download_dataset("fake-set", progress=False, report=lines.append)
    failed = [line for line in lines if line.startswith("failed")]
    assert len(failed) == 2 and all("points outside the folder" in line for line in failed)
    assert not (tmp_path / "outside").exists() and not (tmp_path.parent / "outside").exists()
    assert not (tmp_path / "data/fake-set").exists()
    assert listing(tmp_path / "data") == [
        ".mtlscope-download-fake-set.lock",
        "fake",
        "fake-set.tar.gz",  # verified download kept for the next try; its extraction left nothing
        "fake/a.bin",
        "fake/b.bin",
    ]


def test_download_dataset_without_url_names_the_source(tmp_path: Path) -> None:
    register_dataset(
        DatasetInfo("manual", "by hand", "https://example.org/manual", "none", (DataFile("x", ("manual/x",)),))
    )
    lines: list[str] = []
    assert not download_dataset("manual", progress=False, report=lines.append)
    assert lines == [
        f"not available  x  {tmp_path / 'data/manual/x'} (missing; no download: get it from https://example.org/manual)"
    ]


def test_download_dataset_is_locked_against_a_second_download(server: _Server, tmp_path: Path) -> None:
    from mtlscope.runs.locking import InUseError, hold

    _register(server)
    root = tmp_path / "data"
    root.mkdir()
    entered = threading.Event()
    release = threading.Event()

    def other() -> None:  # another thread holds the dataset's download lock (as another process would)
        with hold(root / ".mtlscope-download-fake-set.lock", root):
            entered.set()
            release.wait(10)

    thread = threading.Thread(target=other)
    thread.start()
    try:
        assert entered.wait(10)
        with pytest.raises(InUseError, match="download of fake-set"):
            download_dataset("fake-set", progress=False, report=lambda line: None)
    finally:
        release.set()
        thread.join()
    assert server.requests == []
    assert download_dataset("fake-set", progress=False, report=lambda line: None)


def test_locate_never_downloads(server: _Server) -> None:
    _register(server)
    with pytest.raises(MissingDataError) as raised:
        locate("fake-set")
    assert "mtlscope data download fake-set" in str(raised.value)
    assert server.requests == []
    assert os.environ[catalog.DATA_ENV]  # the test's data directory, which stays empty
    assert not Path(os.environ[catalog.DATA_ENV]).exists()


def test_fetch_onto_a_folder_is_one_line_and_leaves_nothing(server: _Server, tmp_path: Path) -> None:
    server.files["/a.bin"] = PAYLOAD
    (tmp_path / "a.bin").mkdir()
    with pytest.raises(DownloadError, match=r"a.bin: cannot write it \(Is a directory\); nothing kept"):
        fetch(server.url("/a.bin"), tmp_path / "a.bin", progress=False)
    assert listing(tmp_path) == ["a.bin"]
