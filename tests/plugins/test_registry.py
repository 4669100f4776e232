"""Registering a name again: the same source replaces it quietly, a different builder is an error naming both."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

import pytest

from mtlscope.registry import Registry


def test_the_same_builder_registered_again_replaces_the_entry() -> None:
    registry: Registry[int] = Registry("encoder")
    namespace: dict[str, object] = {"registry": registry}
    cell = "@registry.register('cnn', 'first')\ndef make():\n    return 1\n"
    exec(cell, namespace)  # a notebook cell ...
    exec(cell.replace("'first'", "'second'").replace("return 1", "return 2"), namespace)  # ... run again, edited
    assert registry.build("cnn") == 2
    assert registry.entry("cnn").description == "second"


def test_a_different_builder_under_a_taken_name_is_an_error_naming_both() -> None:
    registry: Registry[int] = Registry("encoder")

    @registry.register("cnn", "")
    def make() -> int:
        return 1

    def other() -> int:
        return 2

    with pytest.raises(ValueError) as error:
        registry.register("cnn", "")(other)
    origin = f"{__name__}:test_a_different_builder_under_a_taken_name_is_an_error_naming_both.<locals>"
    assert str(error.value) == (
        f"encoder 'cnn' is already registered by {origin}.make; cannot register {origin}.other under the same name"
    )
    assert registry.build("cnn") == 1


def test_reloading_a_plugin_module_registers_it_again_quietly(project: Callable[[str, str], Path]) -> None:
    from mtlscope.models.encoders import ENCODERS

    source = "from mtlscope.models.encoders import ENCODERS, mlp\n\n"
    project("myenc", source + "ENCODERS.register('mine', 'x')(lambda shape, **o: mlp(shape))\n")
    module = importlib.import_module("myenc")
    importlib.reload(module)
    assert "mine" in ENCODERS.available()
