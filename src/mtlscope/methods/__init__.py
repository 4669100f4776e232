"""Multi-task methods: how task losses and gradients combine into the shared update (docs/methods.md).

``mtlscope.methods.get(name, **options)`` builds one; ``available()`` lists them. See docs/methods.md.
"""

from mtlscope.methods import (  # noqa: F401  (registration)
    aligned_mtl,
    cagrad,
    dwa,
    famo,
    graddrop,
    gradnorm,
    gradvac,
    imtl,
    itmtl,
    mgda,
    nash_mtl,
    pcgrad,
    rlw,
    umtg,
    uncertainty,
)
from mtlscope.methods.base import NEEDS, Combination, Lookahead, Method, StepInput
from mtlscope.methods.registry import METHODS, available, get

__all__ = ["METHODS", "NEEDS", "Combination", "Lookahead", "Method", "StepInput", "available", "get"]
