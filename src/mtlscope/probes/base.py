"""The probe registry (Mueller et al., TMLR 2025, §4 and App. B): ``PROBES`` and ``build_probe``.

A probe is built once per run (``build_probe(name, options)``) and called by the trainer at checkpoints. The
contract it implements — ``Probe``, ``ProbeContext``, ``StepContext``, ``ProbeValues`` and ``probe_mode`` —
lives next to the trainer in ``mtlscope.engine.hooks`` and is re-exported here. Every probe takes the common
option ``every``: it measures at every ``every``-th checkpoint (counted from step 0) and always at the last
one. Without it, the trainer plans the spacing from the probe's estimated ``cost`` so that the probes stay
within about 25% of the training (``mtlscope.engine.probe_budget``), never below ``default_every``: 1 for the
free ``min_train_loss``, 10 for the probes that cost hundreds of training steps per measurement
(docs/probes.md, "Schedule" and "Cost").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mtlscope.engine.hooks import Probe, ProbeContext, ProbeValues, StepContext, probe_mode
from mtlscope.options import PositiveInt
from mtlscope.registry import Registry

__all__ = ["PROBES", "Probe", "ProbeContext", "ProbeValues", "StepContext", "build_probe", "probe_mode"]

#: Probes by name. Every probe also takes the common option ``every`` (default: planned by the trainer).
PROBES: Registry[Probe] = Registry("probe", common={"every": (PositiveInt | None, None)})


def build_probe(name: str, options: Mapping[str, Any]) -> Probe:
    """Build the registered probe ``name`` with its options and the common option ``every``."""
    common, _ = PROBES.split_common(options)
    probe = PROBES.build(name, **options)
    if common.get("every") is not None:
        probe.every = int(common["every"])
    return probe
