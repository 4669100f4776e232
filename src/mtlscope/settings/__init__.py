"""Multi-task settings: tasks, data splits and layouts (Mueller et al., TMLR 2025, §2.1).

``mtlscope.settings.get(name, tasks=None, **options)`` builds a registered setting, optionally restricted
to a subset of its tasks; ``available()`` lists the names.
"""

from mtlscope.settings import digits_attributes, digits_mtl, synthetic  # noqa: F401  (registration)
from mtlscope.settings.registry import SETTINGS as SETTINGS_REGISTRY
from mtlscope.settings.registry import available, check_options, entry, get, register
from mtlscope.settings.setting import LAYOUTS, Layout, Setting
from mtlscope.settings.task import SPLITS, Split, Task

__all__ = [
    "LAYOUTS",
    "SETTINGS_REGISTRY",
    "SPLITS",
    "Layout",
    "Setting",
    "Split",
    "Task",
    "available",
    "check_options",
    "entry",
    "get",
    "register",
]
