"""The one YAML reader (``mtlscope.safe_yaml``) and the shortening of echoed values (``mtlscope.messages``)."""

from __future__ import annotations

import time

import pytest
import yaml

from mtlscope.messages import clip, show
from mtlscope.safe_yaml import MAX_NODES, YAMLInputError, YAMLRefusedError, parse_yaml


def _bomb(levels: int) -> str:
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_reads_what_safe_load_reads() -> None:
    text = "a: 1\nb: [x, 2.5, true, null]\nc: {d: e}\nf: &f {g: 1}\nh: *f\n"
    assert parse_yaml(text) == yaml.safe_load(text)
    assert parse_yaml("") is None


def test_numbers_in_exponent_form_are_numbers() -> None:
    assert parse_yaml("[1e-3, 5E4, -2e+2, 1.5e-3, '1e-3', 1e3x]") == [0.001, 50000.0, -200.0, 0.0015, "1e-3", "1e3x"]


def test_an_alias_bomb_is_refused_before_it_is_built() -> None:
    assert parse_yaml(_bomb(5)) is not None  # 10^5 values: fine
    started = time.monotonic()
    with pytest.raises(YAMLRefusedError, match=rf"more than {MAX_NODES:,} values once its aliases are expanded"):
        parse_yaml(_bomb(9))  # 10^9 values
    assert time.monotonic() - started < 2


def test_recursive_aliases_and_deep_nesting_are_refused() -> None:
    with pytest.raises(YAMLRefusedError, match="recursive alias"):
        parse_yaml("a: &a [1, *a]\n")
    with pytest.raises(YAMLRefusedError, match="nested too deeply"):
        parse_yaml("[" * 100_000)


def test_duplicate_keys_are_refused_but_merged_keys_may_be_overridden() -> None:
    with pytest.raises(YAMLRefusedError, match=r"line 3, column 3: found duplicate key 'lr' \(first given at line 2\)"):
        parse_yaml("optimizer:\n  lr: 0.003\n  lr: 5.0\n")
    with pytest.raises(YAMLRefusedError, match="duplicate key 'a'"):
        parse_yaml("{a: 1, b: 2, a: 3}")
    assert parse_yaml("base: &b {x: 1, y: 2}\nrun:\n  <<: *b\n  x: 3\n") == {
        "base": {"x": 1, "y": 2},
        "run": {"x": 3, "y": 2},
    }


def test_syntax_errors_are_one_line() -> None:
    with pytest.raises(YAMLInputError, match=r"^invalid YAML at line 2, column 1: expected .,. or .\]., but") as raised:
        parse_yaml("a: [1\n")
    assert not isinstance(raised.value, YAMLRefusedError)
    with pytest.raises(YAMLInputError, match=r"character #x0000 at position 3"):
        parse_yaml("a: \x00")


def test_clip_and_show() -> None:
    assert clip("short") == "short"
    long = "v" * 200_000
    assert clip(long) == "v" * 80 + "... (200000 characters)"
    assert show(long) == repr("v" * 80) + "... (200000 characters)"
    assert show("x") == "'x'" and show(3) == "3"
    assert len(show([long, long])) < 100 and len(show({long: [1] * 10**5})) < 100
