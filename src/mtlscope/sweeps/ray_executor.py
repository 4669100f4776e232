"""The ``ray`` executor of sweeps: each run is a Ray task on a local Ray instance or an existing cluster.

``run_sweep(configs, out, executor="ray", address=None)`` starts a fresh local Ray instance (``address=None``;
never one left behind by an earlier ``ray start``) or
connects to a running cluster (``address="HOST:PORT"``, e.g. the one ``ray start --head`` printed), submits
one task per run to do (``num_cpus=threads`` each: the task sets torch to that many threads) and collects
the outcomes as they finish. A task calls ``mtlscope.runs.execute`` exactly as a local worker does, so the
skipping, resuming and failure recording are the same; Ray retries a task whose worker process dies
(``max_retries``), and the retry resumes the run from its last checkpoint.

Where results land: every task writes its run directory under ``out`` *on the machine that runs it*. On one
machine, or with ``out`` on a filesystem shared by the cluster (NFS, a mounted bucket), the results are all
in ``out`` when the sweep ends. Without shared storage, copy the run directories back (``rsync -a
node:OUT/ OUT/``): each run's directory is self-contained and runs never share files, so copies from several
machines merge without conflicts, and ``mtlscope sweep`` again on the driver skips what is complete.

Where data are read: a task sets the driver's ``MTLSCOPE_DATA`` and ``MTLSCOPE_CACHE`` (``mtlscope.data.catalog``;
``--data-dir`` sets the first) in its worker, as a local worker process inherits them, and a config's own
``data_dir`` travels with the config; on a cluster these folders must exist on every node (a shared filesystem).

Ray is an optional extra: ``pip install 'mtlscope[ray]'``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from mtlscope.data.catalog import CACHE_ENV, DATA_ENV
from mtlscope.imports import worker_paths
from mtlscope.runs.config import ConfigError
from mtlscope.runs.launch import RunOutcome
from mtlscope.runs.threads import Threads

RAY_MISSING = "the ray executor needs Ray: pip install 'mtlscope[ray]'"
MAX_RETRIES = 2


class SweepBook(Protocol):
    """The bookkeeping of one sweep (``mtlscope.sweeps.execution``): what the executor reads and reports."""

    out: Any
    runs: list[Any]
    trackers: list[dict[str, Any]]
    threads: Threads | None

    def arguments(self, index: int) -> tuple[Any, ...]: ...

    def record(self, index: int, outcome: RunOutcome) -> None: ...

    def fail(self, index: int, message: str) -> None: ...


def import_ray() -> Any:
    """The ``ray`` module, or a ``ConfigError`` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(RAY_MISSING) from None
    return ray


def worker_environment() -> dict[str, str]:
    """The driver's data and cache directories (``MTLSCOPE_DATA``, ``MTLSCOPE_CACHE``), where set, for its tasks."""
    import os

    return {name: os.environ[name] for name in (DATA_ENV, CACHE_ENV) if os.environ.get(name)}


def _task(
    threads: int, paths: list[str], environment: dict[str, str], data: dict[str, Any], out: str, *options: Any
) -> RunOutcome:
    """One run inside a Ray worker (torch threads pinned to the task's CPUs, the driver's import path in front of
    the worker's, so the config's plugins and import paths import there, the driver's data directories in its
    environment); ``options``: ``_run_one``'s others."""
    import os

    import torch

    from mtlscope.imports import use_paths
    from mtlscope.sweeps.execution import _run_one

    use_paths(paths)
    os.environ.update(environment)
    torch.set_num_threads(threads)
    return _run_one(data, out, *options)


def run_on_ray(book: SweepBook, indices: Sequence[int], address: str | None, threads: Threads) -> None:
    """Run ``indices`` of ``book.runs`` as Ray tasks with ``threads`` CPUs and torch threads each (recorded in the
    runs' ``environment.json``), recording each outcome in ``book`` as it finishes."""
    book.threads = threads
    ray = import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(
            # "local": always a fresh instance, never a stale cluster left in /tmp/ray by an earlier `ray start`
            address=address or "local",
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
            ignore_reinit_error=True,
        )
    try:
        task = ray.remote(num_cpus=threads.count, max_retries=MAX_RETRIES, retry_exceptions=False)(_task)
        out = str(book.out.resolve())
        paths = worker_paths()
        environment = worker_environment()
        pending = {}
        for index in indices:
            data, _, *options = book.arguments(index)
            pending[task.remote(threads.count, paths, environment, data, out, *options)] = index
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for reference in ready:
                index = pending.pop(reference)
                try:
                    outcome = ray.get(reference)
                except Exception as error:  # the task raised outside execute, or its worker died beyond retries
                    book.fail(index, f"{type(error).__name__}: {error}".splitlines()[0])
                else:
                    book.record(index, outcome)
    finally:
        if started_here:
            ray.shutdown()
