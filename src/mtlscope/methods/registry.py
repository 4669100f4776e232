"""The methods registry: builders ``f(task_names, *, option=default, ...) -> Method``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mtlscope.methods.base import Method
from mtlscope.registry import Registry

METHODS: Registry[Method] = Registry("method")


def available() -> list[str]:
    """Names of all registered methods."""
    return METHODS.available()


def get(name: str, task_names: Sequence[str], **options: Any) -> Method:
    """Build method ``name`` for the tasks ``task_names`` with ``options``."""
    return METHODS.build(name, tuple(task_names), **options)
