"""The methods registry: builders ``f(*, option=default, ...) -> Method``."""

from __future__ import annotations

from typing import Any

from mtlscope.methods.base import Method
from mtlscope.registry import Registry

METHODS: Registry[Method] = Registry("method")


def available() -> list[str]:
    """Names of all registered methods."""
    return METHODS.available()


def get(name: str, **options: Any) -> Method:
    """Build method ``name`` with ``options`` (bind it to tasks with ``setup(task_names)``)."""
    return METHODS.build(name, **options)
