"""Trajectory probes taken at checkpoints (SPEC §4). ``PROBES.available()`` lists them."""

from mtlscope.probes import min_train_loss  # noqa: F401  (registration)
from mtlscope.probes.base import PROBES, Probe, ProbeContext, ProbeValues

__all__ = ["PROBES", "Probe", "ProbeContext", "ProbeValues"]
