"""Multi-task methods: how task losses and gradients combine into the shared update (SPEC §5).

``mtlscope.methods.get(name, task_names, **options)`` builds one; ``available()`` lists them.
"""

from mtlscope.methods import umtg  # noqa: F401  (registration)
from mtlscope.methods.base import NEEDS, Combination, Lookahead, Method, StepInput
from mtlscope.methods.registry import METHODS, available, get

__all__ = ["METHODS", "NEEDS", "Combination", "Lookahead", "Method", "StepInput", "available", "get"]
