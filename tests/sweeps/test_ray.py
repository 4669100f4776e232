"""The ray executor: a local Ray instance, and a `ray start --head` cluster on 127.0.0.1 joined by address
(stopped by the PID of the process that started it). Results equal the local executor's."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from mtlscope.runs import ConfigError, load, validate_config
from mtlscope.sweeps.execution import run_sweep


def _configs() -> list:
    return [
        validate_config(
            {
                "seed": seed,
                "setting": {"name": "digits-mtl", "tasks": tasks},
                "model": {"encoder": {"name": "mlp", "hidden": [16, 8]}},
                "training": {"steps": 8, "eval_every": 4, "batch_size": 16},
            }
        )
        for tasks in (["digits1"], ["digits1", "digits2"])
        for seed in (0, 1)
    ]


def _records(out: Path) -> pd.DataFrame:
    frame = load(out).records
    return frame.sort_values(["run_id", "step", "task", "split", "metric"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    out = tmp_path_factory.mktemp("local")
    run_sweep(_configs(), out, progress=False, threads_per_worker=1)
    return _records(out)


def test_local_ray_instance_gives_the_local_results(tmp_path: Path, reference: pd.DataFrame) -> None:
    result = run_sweep(_configs(), tmp_path, executor="ray", threads_per_worker=1, progress=False)
    assert result.counts["completed"] == 4 and not result.failed
    pd.testing.assert_frame_equal(_records(tmp_path), reference)
    again = run_sweep(_configs(), tmp_path, executor="ray", progress=False)  # nothing left: Ray is not even started
    assert again.skipped == 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_cluster_joined_by_address(tmp_path: Path, reference: pd.DataFrame) -> None:
    port = _free_port()
    ray_cli = str(Path(sys.executable).with_name("ray"))
    head = subprocess.Popen(
        [
            ray_cli,
            "start",
            "--head",
            "--node-ip-address=127.0.0.1",
            f"--port={port}",
            "--num-cpus=2",
            "--include-dashboard=false",
            "--block",
            "--disable-usage-stats",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        address = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the head is up when its GCS port accepts connections
            if head.poll() is not None:
                pytest.fail(f"ray start --head exited: {head.stdout.read() if head.stdout else ''}")
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.5)
        result = run_sweep(_configs(), tmp_path, executor="ray", address=address, threads_per_worker=1, progress=False)
        assert result.counts["completed"] == 4
        pd.testing.assert_frame_equal(_records(tmp_path), reference)
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # stop what we started, by its PID (its process group)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()


def test_missing_ray_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ConfigError, match=r"pip install 'mtlscope\[ray\]'"):
        run_sweep(_configs()[:1], tmp_path, executor="ray", progress=False)
