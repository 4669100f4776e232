"""Sweep files are counted and checked before they are expanded (issue 11, items 7, 8 and 10).

A sweep of more runs than ``max_runs`` is refused without expanding it (the limit is raised by the file's
``max_runs`` key or ``--max-runs``); a key swept in two places, or together with its parent key, is an error;
sweep, preset and protocol files are read by the safe YAML reader (alias bombs and duplicate keys refused).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from mtlscope.cli import main
from mtlscope.reproduce.preset import load_preset
from mtlscope.runs import ConfigError
from mtlscope.sweeps.protocol import load_protocol, plan_protocol
from mtlscope.sweeps.spec import DEFAULT_MAX_RUNS, count_runs, expand, load_sweep

BASE = {
    "setting": {"name": "digits-mtl", "tasks": ["digits1"]},
    "model": {"encoder": {"name": "mlp", "hidden": [8]}},
    "training": {"steps": 2},
}
BILLION = {f"model.encoder.hidden.{i}": list(range(1, 11)) for i in range(9)}  # 10^9 grid points
BOMB = "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
    f"{name}: &{name} [{', '.join([f'*{previous}'] * 10)}]\n"
    for previous, name in zip("abcdefgh", "bcdefghi", strict=True)
)


def test_a_billion_point_grid_is_counted_and_refused_before_expansion() -> None:
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"sweep\.yaml: the sweep expands to 1,000,000,000 runs, more than max_runs"):
        expand({"base": BASE, "grid": BILLION}, "sweep.yaml")
    with pytest.raises(ConfigError, match="expands to 2,000,000,000 runs"):
        expand({"base": BASE, "seeds": 2_000_000_000}, "sweep.yaml")  # a count of seeds is not expanded either
    assert time.monotonic() - started < 5
    assert count_runs({"base": BASE, "grid": BILLION, "seeds": 3}) == 3 * 10**9


def test_the_limit_is_raised_by_the_file_or_the_caller(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    grid = {"optimizer.lr": [0.001, 0.002, 0.003]}
    with pytest.raises(ConfigError, match="expands to 3 runs, more than max_runs = 2"):
        expand({"base": BASE, "grid": grid, "max_runs": 2})
    assert len(expand({"base": BASE, "grid": grid, "max_runs": 3}).configs) == 3
    assert len(expand({"base": BASE, "grid": grid, "max_runs": 2}, max_runs=3).configs) == 3
    with pytest.raises(ConfigError, match="max_runs: expected a positive integer"):
        expand({"base": BASE, "max_runs": "many"})
    assert DEFAULT_MAX_RUNS == 100_000
    file = tmp_path / "sweep.yaml"
    file.write_text(yaml.safe_dump({"base": BASE, "grid": grid}))
    assert main(["sweep", str(file), "--dry-run", "--max-runs", "2", "--out", str(tmp_path / "out")]) == 2
    assert "more than max_runs = 2" in capsys.readouterr().err
    assert main(["sweep", str(file), "--dry-run", "--max-runs", "3", "--out", str(tmp_path / "out")]) == 0
    assert len(load_sweep(file, max_runs=3).configs) == 3


def test_a_protocol_counts_its_selection_grid() -> None:
    data = {
        "base": BASE,
        "protocol": {"select": {"optimizer.lr": [0.001 * (i + 1) for i in range(1000)], "training.steps": [1, 2, 3]}},
        "grid": {"model.encoder.hidden.0": list(range(1, 101))},
    }
    with pytest.raises(ConfigError, match="expands to 300,000 runs"):
        plan_protocol(data, "p.yaml", Path("."))
    small = {"base": BASE, "protocol": {"select": {"optimizer.lr": [0.001, 0.002]}, "seeds": 1}}
    with pytest.raises(ConfigError, match="expands to 2 runs, more than max_runs = 1"):
        plan_protocol(small, "p.yaml", Path("."), max_runs=1)
    assert len(plan_protocol(small, "p.yaml", Path("."), max_runs=2).candidates) == 2


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"grid": {"optimizer.lr": [0.1]}, "zip": {"optimizer.lr": [0.2]}},
            "zip.optimizer.lr and grid.optimizer.lr: optimizer.lr is swept twice",
        ),
        (
            {"grid": {"optimizer": [{"name": "sgd"}], "optimizer.lr": [0.1]}},
            "grid.optimizer and grid.optimizer.lr: a key cannot be swept together with its parent",
        ),
        (
            {"grid": {"optimizer.lr": [0.1], "optimizer": [{"name": "sgd"}]}},
            "grid.optimizer and grid.optimizer.lr: a key cannot be swept together with its parent",
        ),
        (
            {"zip": {"method.c": [0.1]}, "grid": {"method": ["cagrad"]}},
            "grid.method and zip.method.c: a key cannot be swept together with its parent",
        ),
        ({"grid": {"seed": [1, 2]}, "seeds": 2}, "grid.seed and seeds: seed is swept twice"),
        (
            {"zip": {"setting": [{"name": "digits-mtl"}]}, "auxiliary_sets": {"target": "digits1"}},
            "zip.setting and auxiliary_sets: a key cannot be swept together with its parent",
        ),
    ],
)
def test_a_key_is_swept_in_one_place_and_never_with_its_parent(spec: dict, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        expand({"base": BASE, **spec}, "sweep.yaml")
    assert str(raised.value) == f"sweep.yaml: {message}" or message in str(raised.value), str(raised.value)


@pytest.mark.parametrize(
    "text",
    [
        BOMB + "base: {setting: {name: digits-mtl}}\n",
        "base: {setting: {name: digits-mtl}}\nseeds: 2\nseeds: 3\n",
    ],
)
def test_sweep_preset_and_protocol_files_use_the_safe_reader(tmp_path: Path, text: str) -> None:
    expected = "refused at line" if "seeds: 3" in text else "refused: the YAML document expands"
    for name, load in (("sweep.yaml", load_sweep), ("protocol.yaml", load_protocol), ("preset.yaml", load_preset)):
        file = tmp_path / name
        file.write_text(text)
        with pytest.raises(ConfigError, match=expected) as raised:
            load(file)
        assert str(raised.value).startswith(str(file))


def test_long_sweep_keys_and_values_are_cut() -> None:
    long = "k" * 200_000
    for spec in (
        {"base": BASE, long: 1},
        {"base": BASE, "grid": {long: [1]}},
        {"base": BASE, "grid": {long: []}},
        {"base": BASE, "grid": {"optimizer.lr": [long]}},
        {"base": BASE, "zip": {long: [1], "seed": [1, 2]}},
        {"base": BASE, "seeds": [long]},
    ):
        with pytest.raises(ConfigError) as raised:
            expand(spec, "sweep.yaml")
        message = str(raised.value)
        assert len(message) < 800 and ("200000 characters" in message or "k..." in message), message[:300]
