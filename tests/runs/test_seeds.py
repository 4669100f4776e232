"""Run seeds: every seed in [0, 2**63 - 1] gives its own generators (no aliasing), others are refused."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mtlscope.models.multitask import derived_seed
from mtlscope.runs import ConfigError, execute, validate_config
from mtlscope.runs.store import RECORDS_FILE
from mtlscope.sweeps.protocol import parse_protocol
from mtlscope.sweeps.spec import expand

CONFIG = {
    "setting": {"name": "digits-mtl", "tasks": ["digits1", "digits2"]},
    "model": {"encoder": {"name": "mlp", "hidden": [8], "dropout": 0.2}},
    "training": {"steps": 6, "batch_size": 16, "eval_every": 3},
}

# derived_seed of seeds below 2**32, as they were when the seed was masked to 32 bits: the trajectories of
# these seeds (and every documented number) must not change.
PINNED = {
    0: [580179152, 2817793020062027, 2918456300252137, 3613304983504042, 1582905952, 2458513353],
    1: [581179155, 2818793026062036, 2919456306252146, 3614304989504051, 1583905955, 2459513356],
    7: [587179173, 2824793062062090, 2925456342252200, 3620305025504105, 1589905973, 2465513374],
    123456789: [
        123457739549519,
        3556511055753087624,
        3556611719033277734,
        3557306567716529639,
        123458742276319,
        123459617883720,
    ],
    2**32 - 1: [
        4294980760081037,
        6127885497974016962,
        6127986161254207072,
        6128681009937458977,
        4294981762807837,
        4294982638415238,
    ],
}
PARTS = [("encoder",), ("head", "digit"), ("data", "shared-input"), ("probe", "sharpness"), ("method",), ("dropout",)]


@pytest.mark.parametrize("seed", sorted(PINNED))
def test_derived_seeds_below_2_to_the_32_are_unchanged(seed: int) -> None:
    assert [derived_seed(seed, *parts) for parts in PARTS] == PINNED[seed]


@pytest.mark.parametrize("seed", [2**32, 2**32 + 7, 2**40, 2**63 - 1])
def test_large_seeds_do_not_alias_seeds_below_2_to_the_32(seed: int) -> None:
    for parts in PARTS:
        derived = derived_seed(seed, *parts)
        assert 0 <= derived < 2**63
        # torch's CPU generators use only the low 32 bits of a seed: those must differ
        assert derived % 2**32 != derived_seed(seed % 2**32, *parts) % 2**32
        draws = [torch.rand(4, generator=torch.Generator().manual_seed(derived_seed(s, *parts))) for s in (seed, 0)]
        assert not torch.equal(*draws)


def test_derived_seed_refuses_seeds_outside_the_range() -> None:
    for seed in (-1, 2**63, True, 1.0):
        with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*63 - 1\]"):
            derived_seed(seed, "encoder")  # type: ignore[arg-type]


def test_seed_2_to_the_32_gives_other_records_than_seed_0(tmp_path: Path) -> None:
    zero = execute(validate_config({**CONFIG, "seed": 0}), tmp_path)
    large = execute(validate_config({**CONFIG, "seed": 2**32}), tmp_path)
    assert zero.path != large.path
    assert (zero.path / RECORDS_FILE).read_text() != (large.path / RECORDS_FILE).read_text()


def test_run_config_accepts_the_largest_seed_and_refuses_2_to_the_63() -> None:
    assert validate_config({**CONFIG, "seed": 2**63 - 1}).seed == 2**63 - 1
    with pytest.raises(ConfigError, match="seed: expected a value <= 9223372036854775807"):
        validate_config({**CONFIG, "seed": 2**63})


def test_cli_refuses_seed_2_to_the_63_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("setting:\n  name: digits-mtl\n  tasks: [digits1]\nseed: 9223372036854775808\n")
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "mtlscope.cli", "run", str(config), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "seed" in lines[0] and str(config) in lines[0], result.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    ("sweep", "message"),
    [
        ({"seeds": [0, 2**63]}, r"seeds: expected a positive count or a non-empty list of seeds in \[0, 2\*\*63 - 1\]"),
        ({"seeds": 2**63 + 1}, "seeds: expected a positive count"),
        ({"grid": {"seed": [2**63]}}, "seed: expected a value <="),
        (
            {"auxiliary_sets": {"target": "digits1", "seed": 2**63}},
            r"auxiliary_sets\.seed: expected an integer in \[0, 2\*\*63 - 1\]",
        ),
    ],
)
def test_sweep_files_refuse_seeds_outside_the_range(sweep: dict, message: str) -> None:
    base = {"setting": {"name": "digits-mtl", "tasks": ["digits1", "digits2"]}}
    with pytest.raises(ConfigError, match=message):
        expand({"base": base, **sweep})


@pytest.mark.parametrize(
    ("protocol", "message"),
    [
        ({"selection_seed": 2**63}, r"protocol\.selection_seed: expected an integer in \[0, 2\*\*63 - 1\]"),
        ({"seeds": [1, 2**63]}, r"protocol\.seeds: .*distinct seeds in \[0, 2\*\*63 - 1\]"),
    ],
)
def test_protocols_refuse_seeds_outside_the_range(protocol: dict, message: str) -> None:
    data = {"base": {"setting": {"name": "digits-mtl", "tasks": ["digits1"]}}}
    with pytest.raises(ConfigError, match=message):
        parse_protocol({"select": {"optimizer.lr": [0.1]}, **protocol}, data, "sweep.yaml")
