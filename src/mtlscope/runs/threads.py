"""How many torch threads a run computes with, how that count was chosen, and the record of it.

A run's thread count changes its speed, never what it computes in a way the run id should see (the run id is the
config's; the count is recorded in ``environment.json`` as ``torch_threads`` and ``torch_threads_from``):

- ``execute(..., threads=N)`` / ``mtlscope run --threads N``: N intra-op threads for that run (``"option"``);
  without it a run keeps the process's count (torch's default, all cores, unless the caller set it: ``"process"``).
- A sweep with W local worker processes gives each worker ``max(1, cores // W)`` threads (``"sweep default"``),
  where ``cores`` is the number of CPUs this process may run on (``os.sched_getaffinity``, so a ``taskset`` or a
  container's CPU set counts, not the machine's); ``--threads N`` / ``run_sweep(threads_per_worker=N)`` gives
  each worker N instead (``"option"``). Two workers on two cores thus compute with one thread each instead of
  fighting over both cores with two threads each.
- A Ray task computes with as many threads as it reserves CPUs: 1 (``"ray default"``) unless ``--threads N`` /
  ``threads_per_worker=N`` (``"option"``).
- ``workers == 1`` runs in the driver's process: it keeps the process's count unless given one (as a single run).

Only the intra-op count (``torch.set_num_threads``) is set. Inter-op threads (``torch.set_num_interop_threads``)
run independent operators concurrently, which mtlscope's eager training loop does not do; torch allows setting
them only once per process, before any parallel work, so they are left at torch's default.
"""

from __future__ import annotations

import contextlib
import numbers
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch

ThreadsFrom = Literal["process", "option", "sweep default", "ray default"]


def available_cores() -> int:
    """The number of CPUs this process may run on (its affinity set where the platform has one, else the count of
    the machine's CPUs; at least 1)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no sched_getaffinity (macOS, Windows)
        return max(1, os.cpu_count() or 1)


def sweep_default(workers: int) -> int:
    """The torch threads of each of ``workers`` local sweep workers: ``max(1, cores // workers)``."""
    return max(1, available_cores() // max(1, workers))


def check_threads(value: Any, field: str = "threads") -> int:
    """``value`` as a positive thread count, or a one-line ``ValueError`` naming ``field``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 1:
        raise ValueError(f"{field}: expected a positive integer (a number of torch threads), got {value!r:.40}")
    return int(value)


@dataclass(frozen=True)
class Threads:
    """A run's torch thread count and how it was chosen (``environment.json``'s ``torch_threads`` and
    ``torch_threads_from``)."""

    count: int
    chosen_by: ThreadsFrom

    def record(self) -> dict[str, Any]:
        return {"torch_threads": self.count, "torch_threads_from": self.chosen_by}


@contextlib.contextmanager
def using_threads(count: int | None) -> Iterator[None]:
    """Run the block with ``count`` torch threads (as they are when ``None``), restoring the previous count."""
    if count is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
