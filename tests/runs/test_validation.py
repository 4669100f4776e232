"""Bad input is refused when the config is read: one line naming the key, exit 2, nothing written (issue 11).

Covers the options of every registered component (declared types and ranges), inputs that used to give
tracebacks (binary files, betas, an encoder too large to allocate, a manifest entry without a config, ``--out``
on a file), resource blow-ups (YAML alias bombs, huge batch sizes) and silently accepted input (duplicate YAML
keys, empty overrides), and the shortening of echoed keys and values.
"""

from __future__ import annotations

import inspect
import json
import time
from pathlib import Path

import pytest

from mtlscope.cli import main
from mtlscope.methods.registry import METHODS
from mtlscope.models.encoders import ENCODERS
from mtlscope.models.heads import HEADS
from mtlscope.probes.base import PROBES
from mtlscope.registry import OptionError, Registry
from mtlscope.reproduce.outputs import OUTPUTS
from mtlscope.runs.config import ConfigError, apply_overrides, load_config, validate_config
from mtlscope.settings.registry import SETTINGS

BASE = "setting:\n  name: digits-mtl\n  tasks: [digits1]\ntraining: {steps: 2}\n"
BOMB = "".join(
    f"{name}: &{name} [{', '.join([f'*{previous}'] * 10)}]\n"
    for previous, name in zip("abcdefgh", "bcdefghi", strict=True)
)
BOMB = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + BOMB  # 10^9 strings once expanded


def _run(
    tmp_path: Path, text: str | bytes, *overrides: str, capsys: pytest.CaptureFixture[str], names_file: bool = True
) -> str:
    """``mtlscope run`` on a config with ``text``: asserts exit 2, one line (naming the file), nothing written."""
    config = tmp_path / "config.yaml"
    config.write_bytes(text if isinstance(text, bytes) else text.encode())
    out = tmp_path / "out"
    assert main(["run", str(config), *overrides, "--out", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert (str(config) in lines[0]) == names_file
    assert not out.exists()
    return lines[0]


# -- item 4: every registered component's options, checked when the config is loaded --------------------------

ISSUE_EXAMPLES = {
    "rho x": ("probes: {sharpness: {rho: x}}", "probes.sharpness.rho: expected a number > 0 (got 'x')"),
    "rho -1": ("probes: {sharpness: {rho: -1}}", "probes.sharpness.rho: expected a number > 0 (got -1)"),
    "fim batch -3": (
        "probes: {fim_trace: {batch_size: -3}}",
        "probes.fim_trace.batch_size: expected an integer >= 1 (got -3)",
    ),
    "sharpness batch x": (
        "probes: {sharpness: {batch_size: x}}",
        "probes.sharpness.batch_size: expected an integer >= 1 (got 'x')",
    ),
    "iterations 0": (
        "probes: {sharpness: {iterations: 0}}",
        "probes.sharpness.iterations: expected an integer >= 1 (got 0)",
    ),
    "hidden abc": (
        "model: {encoder: {name: mlp, hidden: abc}}",
        "model.encoder.hidden: expected a non-empty list of integers >= 1 (got 'abc')",
    ),
    "every 0": ("probes: {sharpness: {every: 0}}", "probes.sharpness.every: expected an integer >= 1 or null (got 0)"),
    "bool as int": (
        "method: {name: nash_mtl, optim_niter: true}",
        "method.optim_niter: expected an integer >= 1 (got True)",
    ),
    "head hidden": ("model: {head: {name: mlp, hidden: [8, x]}}", "model.head.hidden: expected a list of integers"),
    "setting option": (
        "setting: {name: synthetic, options: {relatedness: 2}}",
        "setting.options.relatedness: expected a number in [-1, 1] (got 2)",
    ),
    "method choice": (
        "method: {name: mgda, solver: newton}",
        "method.solver: expected one of 'exact', 'frank_wolfe' (got 'newton')",
    ),
    "unknown probe": ("probes: {sharpnes: {}}", "probes.sharpnes: unknown probe; available: affinity"),
}


@pytest.mark.parametrize("case", sorted(ISSUE_EXAMPLES))
def test_component_options_are_checked_when_the_config_is_loaded(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text, expected = ISSUE_EXAMPLES[case]
    text = (text if text.startswith("setting:") else BASE + text) + "\n"
    config = tmp_path / "c.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError) as raised:
        load_config(config)  # refused while loading, before any run is prepared
    assert str(raised.value).startswith(f"{config}: {expected}")
    assert expected in _run(tmp_path, text, capsys=capsys)


def _registries() -> list[Registry[object]]:
    return [PROBES, METHODS, ENCODERS, HEADS, SETTINGS, OUTPUTS]  # type: ignore[list-item]


def test_every_registered_option_has_a_checkable_declared_type() -> None:
    """Every keyword option of every builder is annotated with a type the validator handles and describes, and
    its default satisfies it; probes also declare the common ``every``."""
    checked = 0
    for registry in _registries():
        for name in registry.available():
            entry = registry.entry(name)
            defaults = entry.options()
            types = entry.option_types()  # TypeError for an option without an annotation
            assert set(types) == set(defaults), (registry.kind, name)
            for option, option_type in types.items():
                assert option_type.description, (registry.kind, name, option)
                default = defaults[option]
                if default is not inspect.Parameter.empty:
                    assert option_type.accepts(default), (registry.kind, name, option, default)
                checked += 1
    assert checked > 100
    assert "every" in PROBES.entry("sharpness").option_types()


@pytest.mark.parametrize(
    ("registry", "name", "options", "message"),
    [
        (PROBES, "sharpness", {"rho": 0.0}, "expected a number > 0"),
        (PROBES, "sharpness", {"rho": float("inf")}, "expected a number > 0"),
        (PROBES, "grad_cov_trace", {"small_batch": 0}, "expected an integer >= 1"),
        (PROBES, "affinity", {"mode": "fast"}, "expected one of 'both', 'exact', 'first_order'"),
        (PROBES, "grad_similarity", {"batches": 2.5}, "expected an integer >= 1"),
        (METHODS, "cagrad", {"rescale": 3}, "expected an integer in [0, 2]"),
        (METHODS, "gradvac", {"beta": 1.5}, "expected a number in [0, 1]"),
        (METHODS, "umtg", {"weights": {"a": -1}}, "expected a mapping of names to numbers >= 0 or null"),
        (METHODS, "uw", {"lr": "0.1"}, "expected a number > 0"),
        (ENCODERS, "mlp", {"dropout": 1.0}, "expected a number in [0, 1)"),
        (ENCODERS, "lenet", {"kernel_size": 0}, "expected an integer >= 1"),
        (SETTINGS, "synthetic", {"train_size": 0}, "expected an integer >= 1"),
        (SETTINGS, "digits-mtl", {"split_seed": -1}, "expected an integer >= 0"),
    ],
)
def test_declared_ranges_are_enforced(
    registry: Registry[object], name: str, options: dict[str, object], message: str
) -> None:
    with pytest.raises(OptionError) as raised:
        registry.check_options(name, options)
    assert message in str(raised.value)
    assert raised.value.key == next(iter(options))


def test_a_number_may_be_an_integer_and_1e_3_is_a_number(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(BASE + "probes: {sharpness: {rho: 1e-3, batch_size: 16}, fim_trace: {every: 2}}\n")
    assert load_config(config).probes["sharpness"]["rho"] == 0.001
    PROBES.check_options("sharpness", {"rho": 1})


# -- item 6: tracebacks become one line ------------------------------------------------------------------------


def test_binary_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = _run(tmp_path, b"\x89PNG\r\n\x1a\n\x00\xff\xfe", capsys=capsys)
    assert "not a UTF-8 text file" in line


def test_binary_sweep_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = tmp_path / "sweep.yaml"
    sweep.write_bytes(b"\xff\xfe\x00binary")
    assert main(["sweep", str(sweep), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a UTF-8 text file" in err[0] and str(sweep) in err[0]
    assert not (tmp_path / "out").exists()


def test_betas_out_of_range(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = _run(tmp_path, BASE + "optimizer: {betas: [1.5, 2]}\n", capsys=capsys)
    assert "optimizer.betas.0: expected a value < 1 (got 1.5)" in line


def test_encoder_too_large_to_allocate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = _run(tmp_path, BASE + "model: {encoder: {name: mlp, hidden: [1000000000000]}}\n", capsys=capsys)
    assert "model: cannot build the model" in line


def test_setting_too_large_to_allocate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = "setting: {name: synthetic, options: {train_size: 1000000000000, dim: 1000}}\ntraining: {steps: 1}\n"
    assert "setting: cannot build the setting" in _run(tmp_path, text, capsys=capsys)


def test_manifest_entry_without_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "sweep.json").write_text(json.dumps({"sweeps": ["s"], "runs": [{"run_id": "x"}]}))
    assert main(["sweep-status", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "runs[0]: expected a mapping with the run's config" in err[0]


@pytest.mark.parametrize("command", ["run", "sweep", "reproduce", "demo", "analyze"])
@pytest.mark.parametrize("inside", [False, True])
def test_out_pointing_at_a_file(command: str, inside: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = tmp_path / "taken"
    file.write_text("not a directory")
    out = file / "sub" if inside else file
    config = tmp_path / "c.yaml"
    config.write_text(BASE)
    sweep = tmp_path / "s.yaml"
    sweep.write_text(f"base: {config.name}\nseeds: 1\n")
    results = tmp_path / "results"
    results.mkdir()
    argv = {
        "run": ["run", str(config)],
        "sweep": ["sweep", str(sweep)],
        "reproduce": ["reproduce", "main-fig1-mini"],
        "demo": ["demo"],
        "analyze": ["analyze", str(results)],
    }[command]
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--out" in err[0] and ("is a file" in err[0] or "is not a directory" in err[0])
    assert file.read_text() == "not a directory"


# -- item 7: resource blow-ups ---------------------------------------------------------------------------------


def test_alias_bomb_config_is_refused_before_expansion(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    line = _run(tmp_path, BASE + BOMB, capsys=capsys)
    assert time.monotonic() - started < 10
    assert "refused" in line and "aliases are expanded at line" in line


def test_alias_bomb_in_an_override_value(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bomb = "{" + BOMB.replace("\n", ", ").rstrip(", ") + "}"
    config = tmp_path / "c.yaml"
    config.write_text(BASE)
    with pytest.raises(ConfigError, match="refused"):
        apply_overrides({}, [f"probes={bomb}"])
    assert main(["run", str(config), f"probes={bomb}", "--out", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()


def test_huge_batch_size_is_refused_before_the_run_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = _run(tmp_path, BASE, "training.batch_size=1000000000", capsys=capsys)
    assert "training.batch_size: expected at most 150" in line and "(got 1000000000)" in line


# -- item 8: silently accepted input is an error ---------------------------------------------------------------


def test_duplicate_keys_in_a_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = _run(tmp_path, BASE + "optimizer:\n  lr: 0.003\n  lr: 5.0\n", capsys=capsys)
    assert "refused at line 7, column 3: found duplicate key 'lr' (first given at line 6)" in line


def test_duplicate_keys_in_an_override_value() -> None:
    with pytest.raises(ConfigError, match="duplicate key 'lr'"):
        apply_overrides({}, ["optimizer={lr: 0.1, lr: 0.2}"])


def test_empty_override_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = _run(tmp_path, BASE, "training.epochs=", capsys=capsys, names_file=False)
    assert "override 'training.epochs=': expected a value after '='" in line
    assert apply_overrides({}, ["training.epochs=null"]) == {"training": {"epochs": None}}


# -- item 10: echoed keys and values are cut --------------------------------------------------------------------


def test_long_keys_and_values_are_cut_in_messages(tmp_path: Path) -> None:
    long = "k" * 200_000
    base = {"setting": {"name": "digits-mtl", "tasks": ["digits1"]}}
    cases = [
        lambda: validate_config({**base, long: 1}),
        lambda: validate_config({**base, "optimizer": {long: 1}}),
        lambda: validate_config({**base, "probes": {long: {}}}),
        lambda: validate_config({**base, "probes": {"sharpness": {long: 1}}}),
        lambda: validate_config({**base, "probes": {"sharpness": {"rho": long}}}),
        lambda: validate_config({**base, "training": {"batch_size": long}}),
        lambda: validate_config({**base, "method": {"name": long}}),
        lambda: apply_overrides({}, [long]),
        lambda: apply_overrides({}, [long + "="]),
        lambda: validate_config(apply_overrides(base, [f"{long}=1"])),
        lambda: validate_config(apply_overrides(base, [f"optimizer.lr={long}"])),
        lambda: METHODS.check_options("umtg", {long: 1}),
        lambda: METHODS.check_options("umtg", {"weights": long}),
        lambda: METHODS.entry(long),
    ]
    for case in cases:
        with pytest.raises((ConfigError, OptionError, KeyError)) as raised:
            case()
        message = str(raised.value.args[0])
        assert len(message) < 500, message[:300]
        assert "200000 characters" in message or "..." in message, message


@pytest.mark.parametrize("option", ["large_batch", "subset"])
def test_grad_cov_trace_sizes_must_hold_two_small_batches(
    option: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = BASE + f"probes:\n  grad_cov_trace: {{small_batch: 16, {option}: 20}}\n"
    line = _run(tmp_path, text, capsys=capsys)
    assert f"probes.grad_cov_trace.{option}: expected at least 2 x small_batch = 32 (got 20)" in line
