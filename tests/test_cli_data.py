"""``mtlscope data`` (list, check, download), ``--data-dir`` and the ``data_dir`` config key, and a missing data
file as one line: with a fake file-backed setting (a plugin module written here) and fake datasets."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
import uuid
from pathlib import Path

import numpy as np
import pytest

from mtlscope.cli import main
from mtlscope.data import catalog
from mtlscope.data.catalog import DataFile, DatasetInfo, register_dataset

#: A setting whose only data file is ``fake-points/points.npy`` of the data directory (a [60, 3] array: inputs,
#: and the class in the last column), located when the setting is built.
PLUGIN = """
import numpy as np

from mtlscope.data.catalog import DataFile, DatasetInfo, locate, register_dataset
from mtlscope.settings import TaskSpec, from_arrays

register_dataset(
    DatasetInfo(
        "fake-points", "points from a file", "the test", "none", (DataFile("points", ("fake-points/points.npy",)),)
    )
)


def build():
    points = np.load(locate("fake-points")["points"])
    x, y = points[:, :2].astype(np.float32), points[:, 2].astype(np.int64)
    rows = {"train": slice(0, 40), "val": slice(40, 50), "test": slice(50, 60)}
    tasks = [TaskSpec("a", 2, loss="cross_entropy", metrics=["accuracy"])]
    return from_arrays(
        "fake-points",
        tasks,
        {"a": {split: (x[r], y[r]) for split, r in rows.items()}},
        default_model={"encoder": {"name": "mlp", "hidden": [4]}, "head": {"name": "linear"}},
    )
"""


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(catalog, "DATASETS", dict(catalog.DATASETS))
    monkeypatch.setenv(catalog.DATA_ENV, str(tmp_path / "env-data"))
    monkeypatch.setenv(catalog.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The module name of the fake setting's plugin, importable from the current directory."""
    name = f"fake_points_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def write_points(root: Path, seed: int = 0) -> Path:
    generator = np.random.default_rng(seed)
    x = generator.standard_normal((60, 2))
    points = np.concatenate([x, (x[:, :1] > 0).astype(float)], axis=1)
    path = root / "fake-points" / "points.npy"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, points)
    return path


def write_config(tmp_path: Path, plugin: str, extra: str = "") -> Path:
    config = tmp_path / "c.yaml"
    config.write_text(f"setting: {{factory: '{plugin}:build'}}\ntraining: {{steps: 2, batch_size: 8}}\n{extra}")
    return config


# -- a missing data file is one line -----------------------------------------------------------------------


def test_run_with_a_missing_data_file_is_one_line_and_writes_nothing(
    tmp_path: Path, plugin: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, plugin)
    out = tmp_path / "out"
    assert main(["run", str(config), "--out", str(out), "--quiet"]) == 2
    captured = capsys.readouterr()
    expected = tmp_path / "env-data" / "fake-points" / "points.npy"
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert captured.err.startswith(f"error: {config}: setting: fake-points: missing {expected}; get it from the test")
    assert not out.exists()
    # with --data-dir, the expected path is there
    assert main(["run", str(config), "--out", str(out), "--data-dir", "elsewhere", "--quiet"]) == 2
    assert f"missing {tmp_path / 'elsewhere' / 'fake-points' / 'points.npy'}" in capsys.readouterr().err
    assert not out.exists()


def test_sweep_with_a_missing_data_file_is_one_line(
    tmp_path: Path, plugin: str, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = tmp_path / "s.yaml"
    base = {"setting": {"factory": f"{plugin}:build"}, "training": {"steps": 2, "batch_size": 8}}
    sweep.write_text(json.dumps({"base": base, "seeds": 2}))
    assert main(["sweep", str(sweep), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fake-points: missing" in err and "Traceback" not in err


# -- data_dir and --data-dir -------------------------------------------------------------------------------


def _run_ids(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.is_dir())


def test_data_dir_key_and_option_find_the_data_and_keep_the_run_id(
    tmp_path: Path, plugin: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import yaml

    write_points(tmp_path / "env-data")
    write_points(tmp_path / "mine")  # the same data in another folder
    write_points(tmp_path / "other", seed=1)  # other data
    config = write_config(tmp_path, plugin)
    assert main(["run", str(config), "--out", "a", "--quiet"]) == 0  # $MTLSCOPE_DATA
    keyed = write_config(tmp_path, plugin, "data_dir: mine\n")
    assert main(["run", str(keyed), "--out", "b", "--quiet"]) == 0
    assert main(["run", str(config), "--out", "c", "--data-dir", "mine", "--quiet"]) == 0
    assert main(["run", str(keyed), "--out", "d", "--data-dir", "other", "--quiet"]) == 0  # --data-dir wins
    capsys.readouterr()
    (same,) = _run_ids(tmp_path / "a")
    assert _run_ids(tmp_path / "b") == _run_ids(tmp_path / "c") == [same]  # where the data are is not the run id
    (changed,) = _run_ids(tmp_path / "d")
    assert changed != same  # other data, another data fingerprint
    stored = yaml.safe_load((tmp_path / "b" / same / "config.yaml").read_text())
    assert stored["data_dir"] == str(tmp_path / "mine")  # made absolute, for workers elsewhere
    assert "data_dir" not in yaml.safe_load((tmp_path / "a" / same / "config.yaml").read_text())
    assert yaml.safe_load((tmp_path / "d" / changed / "config.yaml").read_text())["data_dir"] == str(tmp_path / "other")
    import os

    assert os.environ[catalog.DATA_ENV] == str(tmp_path / "env-data")  # --data-dir set it for the command only


def test_sweep_workers_read_the_data_dir(tmp_path: Path, plugin: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Worker processes (spawned) see --data-dir: the runs complete with the data in that folder only."""
    write_points(tmp_path / "mine")
    sweep = tmp_path / "s.yaml"
    base = {"setting": {"factory": f"{plugin}:build"}, "training": {"steps": 2, "batch_size": 8}}
    sweep.write_text(json.dumps({"base": base, "seeds": 2}))
    argv = ["sweep", str(sweep), "--out", "out", "--workers", "2", "--data-dir", "mine", "--quiet"]
    assert main(argv) == 0
    assert "2 completed" in capsys.readouterr().out


def test_ray_tasks_get_the_drivers_data_directories(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    from mtlscope.sweeps import execution, ray_executor

    environment = ray_executor.worker_environment()
    assert environment == {catalog.DATA_ENV: str(tmp_path / "env-data"), catalog.CACHE_ENV: str(tmp_path / "cache")}
    monkeypatch.delenv(catalog.DATA_ENV)
    monkeypatch.setattr(execution, "_run_one", lambda *args: os.environ.get(catalog.DATA_ENV))
    assert ray_executor._task(1, [], environment, {}, "out") == str(tmp_path / "env-data")


def test_data_dir_key_is_checked(tmp_path: Path, plugin: str, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, plugin, "data_dir: ' '\n")
    assert main(["run", str(config), "--quiet"]) == 2
    assert "data_dir: expected a folder path" in capsys.readouterr().err
    (tmp_path / "afile").write_text("x")
    assert main(["run", str(write_config(tmp_path, plugin)), "--data-dir", "afile", "--quiet"]) == 2
    assert "--data-dir is not a directory" in capsys.readouterr().err


# -- mtlscope data -----------------------------------------------------------------------------------------

A = b"file a " * 10
B = b"file b " * 20


def _fake(url: str | None = None) -> None:
    register_dataset(
        DatasetInfo(
            "fake-set",
            "a fake dataset",
            "https://example.org/fake",
            "Nobody 2024",
            (
                DataFile("a", ("fake/a.bin", "Fake/raw/a.bin"), len(A), hashlib.md5(A).hexdigest(), url),
                DataFile("b", ("fake/b.bin",), len(B), hashlib.md5(B).hexdigest()),
                DataFile("images", ("fake/images",)),
            ),
        )
    )


def test_data_lists_every_dataset_and_what_is_found(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fake()
    register_dataset(DatasetInfo("other-set", "another", "somewhere", "", (DataFile("x", ("o/x",)),)))
    root = tmp_path / "d"
    (root / "Fake/raw").mkdir(parents=True)
    (root / "Fake/raw/a.bin").write_bytes(A)  # the second layout
    (root / "fake/images").mkdir(parents=True)
    assert main(["data", "--data-dir", "d"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"data directory: {root} (--data-dir)"
    assert out[1].split() == ["dataset", "files", "status", "description"]
    rows = {line.split()[0]: line.split() for line in out[2:]}  # the built-in datasets are listed too
    assert {"celeba", "cifar-100", "fashion-mnist", "mnist"} <= set(rows)
    assert " ".join(rows["fake-set"]) == "fake-set 1/3 empty folder: images; missing: b a fake dataset"
    assert rows["other-set"] == ["other-set", "0/1", "missing:", "x", "another"]
    assert main(["data", "-v"]) == 0
    verbose = capsys.readouterr().out
    assert f"data directory: {tmp_path / 'env-data'} ($MTLSCOPE_DATA)" in verbose
    missing_a = next(line for line in verbose.splitlines() if line.split()[:2] == ["missing", "a"])
    assert missing_a.endswith(
        f"{tmp_path / 'env-data/fake/a.bin'} (also looked for {tmp_path / 'env-data/Fake/raw/a.bin'})"
    )
    assert "from: https://example.org/fake (Nobody 2024)" in verbose


def test_data_check_lines_and_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fake()
    root = tmp_path / "env-data"
    (root / "fake/images").mkdir(parents=True)
    (root / "fake/a.bin").write_bytes(A[:-1] + b"X")  # right size, wrong content
    (root / "fake/b.bin").write_bytes(B[:10])
    assert main(["data", "check", "fake-set"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0:2] for line in lines[1:4]] == [["wrong", "checksum"], ["wrong", "size"], ["empty", "folder"]]
    assert f"(md5 {hashlib.md5(A[:-1] + b'X').hexdigest()}, expected {hashlib.md5(A).hexdigest()})" in lines[1]
    assert f"(10 bytes, expected {len(B)})" in lines[2]
    assert lines[-1] == "fake-set: 3 of 3 files not ok"
    (root / "fake/a.bin").write_bytes(A)
    (root / "fake/b.bin").write_bytes(B)
    (root / "fake/images/0001.png").write_bytes(b"png")
    assert main(["data", "check", "fake-set", "--quiet"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[1:4]] == ["ok", "ok", "ok"]
    assert "md5 ok" in lines[1] and "folder, 1 entries" in lines[3]
    assert lines[-1] == "fake-set: all 3 files ok"
    (root / "fake/b.bin").unlink()
    assert main(["data", "check", "fake-set"]) == 1
    assert capsys.readouterr().out.splitlines()[2].startswith(f"missing        b       {root / 'fake/b.bin'}")


def test_data_unknown_dataset_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    _fake()
    for action in ("check", "download"):
        assert main(["data", action, "nope"]) == 2
        err = capsys.readouterr().err
        assert (
            err.startswith("error: unknown dataset 'nope'; available: ") and "fake-set" in err and err.count("\n") == 1
        )


def test_data_download_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(A)))
            self.end_headers()
            self.wfile.write(A)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        _fake(f"http://127.0.0.1:{httpd.server_address[1]}/a.bin")
        root = tmp_path / "dl"
        assert main(["data", "download", "fake-set", "--data-dir", "dl", "--quiet"]) == 1  # b and images: by hand
        lines = capsys.readouterr().out.splitlines()
        assert lines[0] == f"fake-set -> {root} (--data-dir):"
        assert lines[1].split()[:3] == ["downloaded", "a", str(root / "fake/a.bin")]
        assert lines[2].startswith("not available") and "get it from https://example.org/fake" in lines[2]
        assert lines[-1].startswith("fake-set: not complete")
        assert (root / "fake/a.bin").read_bytes() == A
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_ctrl_c_in_data_is_one_line_and_exit_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import mtlscope.cli as cli

    def interrupted(args: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_cmd_data", interrupted)
    assert main(["data", "check", "x"]) == 130
    assert capsys.readouterr().err == "interrupted; run the same command to resume\n"


def test_data_with_the_real_families_lists_them(capsys: pytest.CaptureFixture[str]) -> None:
    """Every family module of ``mtlscope.data.sources`` is imported by the command (whatever is merged)."""
    import pkgutil

    import mtlscope.data.sources as sources

    assert main(["data"]) == 0
    out = capsys.readouterr().out
    for module in pkgutil.iter_modules(sources.__path__):
        __import__(f"mtlscope.data.sources.{module.name}")
    for name in catalog.DATASETS:
        assert f"\n{name} " in out
