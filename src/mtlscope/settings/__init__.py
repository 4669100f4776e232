"""Multi-task settings: tasks, data splits and layouts (Mueller et al., TMLR 2025, §2.1).

``mtlscope.settings.get(name, tasks=None, **options)`` builds a registered setting, optionally restricted
to a subset of its tasks; ``available()`` lists the names. ``from_arrays`` and ``from_datasets`` build a setting
from your own data (``TaskSpec`` declares each task); the built-in settings are built with them.
"""

from mtlscope.data.datasets import DatasetSplit
from mtlscope.settings import (  # noqa: F401  (registration)
    celeba,
    cifar100,
    dense,
    digits_attributes,
    digits_mtl,
    fashion_mtl,
    glue,
    mnists,
    movielens,
    multi_mnist,
    synthetic,
    taskonomy,
)
from mtlscope.settings.constructors import TaskSpec, from_arrays, from_datasets
from mtlscope.settings.registry import SETTINGS as SETTINGS_REGISTRY
from mtlscope.settings.registry import available, check_options, entry, get, register
from mtlscope.settings.setting import LAYOUTS, Layout, Setting
from mtlscope.settings.task import SPLITS, Split, SplitData, Task

__all__ = [
    "LAYOUTS",
    "SETTINGS_REGISTRY",
    "SPLITS",
    "DatasetSplit",
    "Layout",
    "Setting",
    "Split",
    "SplitData",
    "Task",
    "TaskSpec",
    "available",
    "check_options",
    "entry",
    "from_arrays",
    "from_datasets",
    "get",
    "register",
]
