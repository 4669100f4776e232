"""The settings registry: ``get(name, tasks=None, **options)``, ``available()`` and ``register``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mtlscope.registry import Registry
from mtlscope.settings.setting import Setting

SETTINGS: Registry[Setting] = Registry("setting")
register = SETTINGS.register
available = SETTINGS.available
entry = SETTINGS.entry
check_options = SETTINGS.check_options


def get(name: str, tasks: Sequence[str] | None = None, **options: Any) -> Setting:
    """Build setting ``name`` with ``options``, restricted to ``tasks`` when given.

    Example: ``get("digits-mtl", tasks=["digits1"])`` is the single-task version of digits-mtl.
    """
    setting = SETTINGS.build(name, **options)
    return setting.subset(tasks) if tasks is not None else setting
