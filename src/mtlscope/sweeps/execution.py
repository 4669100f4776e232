"""Running a sweep: many run configs into one results directory, in-process or on a local process pool.

``run_sweep(configs, out, workers=N)`` runs every config with ``mtlscope.runs.execute`` into ``out/<run_id>``:

- Configs are resolved first (a bad one raises ``ConfigError``, one line, before anything is written) and
  deduplicated by their resolved run id: a repeated config runs once and is counted in
  ``SweepResult.duplicates``.
- Runs already completed or diverged in ``out`` are skipped, unless ``store.damage`` finds them damaged (records
  truncated, duplicated or changed, summary or config missing): those run again from step 0. Unfinished ones
  (killed, failed) resume from their last checkpoint, so re-running an interrupted sweep finishes it with the
  records an uninterrupted sweep would have written. ``force`` (run ids) runs those runs again from scratch;
  ``restart_failed`` starts failed runs over instead of resuming them.
- One driver per results directory: the sweep holds ``out/.mtlscope.lock`` while it runs, and each run's
  ``execute`` holds the run's own lock (``mtlscope.runs.locking``). A second sweep on the same ``out`` raises
  ``InUseError`` naming the holder's PID (nothing written), or waits for it with ``wait=True``. A run whose lock
  another process holds (e.g. an ``mtlscope run`` of the same config) is not touched: it is reported as failed
  in this sweep's result, with the holder in the message, unless ``wait``.
- ``workers == 1`` runs in this process, in config order. ``workers > 1`` uses a ``spawn`` process pool with
  at most ``workers`` runs in flight, submitted in config order; each worker computes with
  ``threads_per_worker`` torch threads (default ``max(1, cores // workers)``, ``cores`` the CPUs this process
  may run on and ``workers`` capped at the number of runs to do; ``mtlscope.runs.threads``), recorded in each
  run's ``environment.json``, and exits by itself (within 0.1 s) if the driver dies, so an orphan never keeps
  writing into a run that a re-run of the sweep resumes. Each run writes only its own directory; the driver
  writes into a run (to mark it failed after its worker died) only while holding the run's lock.
- ``executor="ray"``: one Ray task per run on a local Ray instance or a cluster at ``address``
  (``mtlscope.sweeps.ray_executor``); the same ``execute`` in every task, so the same skipping and resuming.
- A run that diverges or raises is recorded (``execute`` with ``on_failure="return"``) and the sweep goes on. An
  exception that escapes ``execute`` (e.g. the run in use by another process) is recorded as that run failing. A
  worker process that dies (killed, out of memory) breaks the pool: a fresh pool first retries the runs that were
  in flight, each alone (resuming from its checkpoint), then goes on with the rest. A run whose worker dies again
  while it runs alone is recorded as failed (its directory's status too), and a later re-run of the sweep retries
  it.

The results do not depend on ``workers``: every run is seeded by its config alone (same thread count per
run assumed; pass ``threads_per_worker`` to pin it).

Test-only fault injection (never set it outside tests): the environment variable ``MTLSCOPE_SWEEP_TEST_FAULT``
holds comma-separated ``<kind>:<run_id>[@<step>]`` entries. ``kind`` is ``exit`` (the worker process ends at
once with ``os._exit``, as if killed; ignored in-process, i.e. with ``workers == 1``) or ``raise`` (a
``RuntimeError``). With ``@<step>`` the fault happens at that training step, inside ``execute``; without, just
before ``execute`` is called, so the exception escapes it.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mtlscope.imports import use_paths, worker_paths
from mtlscope.progress import Progress
from mtlscope.runs.config import ConfigError, RunConfig, cached_settings, in_process_only, resolve, validate_config
from mtlscope.runs.launch import RunOutcome, execute
from mtlscope.runs.locking import InUseError, hold_directory, hold_run
from mtlscope.runs.store import FINISHED, STATUS_FILE, damage, now, read_status, stored_status, write_atomic
from mtlscope.runs.threads import Threads, check_threads, sweep_default
from mtlscope.runs.tracking import prepare_trackers

FAULT_ENV = "MTLSCOPE_SWEEP_TEST_FAULT"
FAULT_EXIT_CODE = 70
WORKER_DIED = "the worker process died while running this run (killed or crashed), also when retried alone"
RESULT_STATUSES: tuple[str, ...] = ("completed", "diverged", "failed")
EXECUTORS: tuple[str, ...] = ("local", "ray")

_in_worker = False


@dataclass(frozen=True)
class SweepResult:
    """What a sweep did: one outcome per distinct run, in config order.

    ``counts`` maps completed / diverged / failed to the number of runs (skipped ones included);
    ``skipped`` counts the runs already completed or diverged before the sweep; ``duplicates`` the configs
    dropped as repeats of an earlier one; ``retried`` the runs set aside and retried because a worker died.
    """

    outcomes: list[RunOutcome]
    counts: dict[str, int]
    skipped: int
    elapsed_s: float
    duplicates: int = 0
    retried: int = 0

    @property
    def failed(self) -> list[RunOutcome]:
        return [outcome for outcome in self.outcomes if outcome.status == "failed"]


def unique_runs(configs: Sequence[RunConfig]) -> tuple[list[tuple[str, RunConfig]], int]:
    """Resolve ``configs`` and keep the first of each run id: ``([(run_id, resolved config)], duplicates)``.

    Raises ``ConfigError`` (one line naming the config's position) for a config whose setting cannot be built.
    """
    runs: dict[str, RunConfig] = {}
    duplicates = 0
    with cached_settings():
        for index, config in enumerate(configs):
            resolved = resolve(config, f"sweep config {index + 1}")
            run_id = resolved.run_id()
            if run_id in runs:
                duplicates += 1
            else:
                runs[run_id] = resolved
    return list(runs.items()), duplicates


def check_reachable(runs: Sequence[tuple[str, RunConfig]]) -> None:
    """``ConfigError`` (one line) when a run uses something only this process has (a Python object, a component
    defined in ``__main__``): worker processes could not rebuild it."""
    for index, (_, config) in enumerate(runs):
        problem = in_process_only(config)
        if problem is not None:
            raise ConfigError(
                f"sweep config {index + 1}: {problem}, so worker processes cannot run it; give it by import path "
                "or put it in a module listed under plugins (or run with workers=1)"
            )


# -- the worker side -----------------------------------------------------------------------------------------


def _init_worker(threads: int, parent: int, paths: Sequence[str] = ()) -> None:
    """Pool initializer: the driver's import path (``mtlscope.imports.worker_paths``), torch threads once, and a
    watchdog that ends this worker when the driver is gone."""
    global _in_worker
    _in_worker = True
    use_paths(list(paths))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the driver, which stops the workers
    torch.set_num_threads(threads)
    threading.Thread(target=_watch_parent, args=(parent,), name="mtlscope-sweep-watchdog", daemon=True).start()


def _watch_parent(parent: int) -> None:
    while True:
        if os.getppid() != parent:  # the driver died (killed): stop rather than write on as an orphan
            os._exit(1)
        time.sleep(0.1)


def _faults(run_id: str) -> list[tuple[str, int | None]]:
    """Test-only: the faults ``MTLSCOPE_SWEEP_TEST_FAULT`` injects into ``run_id`` (see the module docstring)."""
    faults: list[tuple[str, int | None]] = []
    for entry in os.environ.get(FAULT_ENV, "").split(","):
        kind, _, target = entry.strip().partition(":")
        target_id, _, step = target.partition("@")
        if target_id == run_id and kind in ("exit", "raise"):
            faults.append((kind, int(step) if step else None))
    return faults


def _inject(kind: str, run_id: str) -> None:
    if kind == "exit" and _in_worker:
        os._exit(FAULT_EXIT_CODE)
    if kind == "raise":
        raise RuntimeError(f"test fault injected into {run_id} ({FAULT_ENV})")


def _run_one(
    data: dict[str, Any],
    out: str,
    trackers: Sequence[dict[str, Any]] = (),
    force: bool = False,
    restart_failed: bool = False,
    wait: bool = False,
    threads: Sequence[Any] | None = None,
) -> RunOutcome:
    """Run one config, given as a plain dict (re-validated here, in the worker), with tracker specs (plain dicts),
    ``execute``'s ``force``, ``restart_failed`` and ``wait``, and ``threads`` as ``(count, chosen_by)`` (``None``:
    the process's count)."""
    config = validate_config(data, "sweep run")
    faults = _faults(config.run_id()) if FAULT_ENV in os.environ else []
    on_step: Callable[[int], None] | None = None
    for kind, step in faults:
        if step is None:
            _inject(kind, config.run_id())
    if any(step is not None for _, step in faults):

        def on_step(current: int) -> None:
            for kind, step in faults:
                if step == current:
                    _inject(kind, config.run_id())

    return execute(
        config,
        out,
        force=force,
        restart_failed=restart_failed,
        wait=wait,
        on_step=on_step,
        trackers=trackers,
        on_failure="return",  # a failed run is recorded, and the sweep goes on
        threads=Threads(int(threads[0]), threads[1]) if threads is not None else None,
    )


# -- the driver side -----------------------------------------------------------------------------------------


@contextlib.contextmanager
def _main_without_missing_file() -> Iterator[None]:
    """A ``spawn`` worker runs the driver's main script again from ``__main__.__file__``; a driver fed from stdin
    has ``__file__ == "<stdin>"``, no file, and every worker would die trying. While the pool runs, such a
    ``__file__`` is hidden (workers then skip the main script; components reach them by plugins and import
    paths)."""
    main = sys.modules.get("__main__")
    file = getattr(main, "__file__", None)
    hide = main is not None and isinstance(file, str) and not os.path.isfile(file)
    if hide:
        del main.__file__  # type: ignore[union-attr]
    try:
        yield
    finally:
        if hide:
            main.__file__ = file  # type: ignore[union-attr]


def _already_done(path: Path, run_id: str) -> RunOutcome | None:
    """The skipped outcome of a run already completed or diverged at ``path``, and whole (what ``execute`` would
    say); ``None`` for a run to do, a damaged one included (``execute`` says what is wrong and redoes it)."""
    status = stored_status(path)
    if status in FINISHED and damage(path) is None:
        return RunOutcome(run_id, path, str(status), f"already {status}", skipped=True)
    return None


def _mark_failed(path: Path, message: str) -> None:
    """Record ``message`` in the directory of a run left ``running`` by an error outside ``execute`` (only when no
    other process holds the run: a run in use elsewhere is not touched)."""
    if not (path / STATUS_FILE).exists():
        return
    try:
        with hold_run(path):
            status = read_status(path)
            if isinstance(status, dict) and status.get("status") == "running":
                status.update(status="failed", updated_at=now(), message=message)
                write_atomic(path / STATUS_FILE, json.dumps(status, indent=2))
    except (OSError, ValueError, InUseError):
        return


class _Sweep:
    """The bookkeeping of one ``run_sweep`` call: outcomes by run index, the progress bar."""

    def __init__(
        self,
        runs: list[tuple[str, RunConfig]],
        out: Path,
        bar: Progress,
        trackers: Sequence[dict[str, Any]] = (),
        *,
        force: Collection[str] = (),
        restart_failed: bool = False,
        wait: bool = False,
    ) -> None:
        self.runs = runs
        self.out = out
        self.bar = bar
        self.trackers = list(trackers)
        self.force = set(force)
        self.restart_failed = restart_failed
        self.wait = wait
        self.outcomes: dict[int, RunOutcome] = {}
        self.retried = 0
        self.threads: Threads | None = None  # the runs' threads, set by the executor before they start

    def arguments(self, index: int) -> tuple[Any, ...]:
        """``_run_one``'s arguments for run ``index`` (plain data: they go to worker processes)."""
        run_id, config = self.runs[index]
        threads = (self.threads.count, self.threads.chosen_by) if self.threads is not None else None
        return (
            config.to_dict(),
            str(self.out),
            self.trackers,
            run_id in self.force,
            self.restart_failed,
            self.wait,
            threads,
        )

    def record(self, index: int, outcome: RunOutcome) -> None:
        self.outcomes[index] = outcome
        counts = Counter(recorded.status for recorded in self.outcomes.values())
        skipped = sum(recorded.skipped for recorded in self.outcomes.values())
        noted = [(counts.get(status, 0), status) for status in RESULT_STATUSES] + [(skipped, "already done")]
        self.bar.note(", ".join(f"{count} {label}" for count, label in noted if count))
        self.bar.advance(1, timed=not outcome.skipped)

    def fail(self, index: int, message: str) -> None:
        run_id = self.runs[index][0]
        path = self.out / run_id
        _mark_failed(path, message)
        self.record(index, RunOutcome(run_id, path, "failed", message))

    def run_here(self, indices: Sequence[int], threads: int | None) -> None:
        """Run ``indices`` one after another in this process (each run sets ``threads`` and restores the count)."""
        self.threads = Threads(threads, "option") if threads is not None else None
        for index in indices:
            try:
                outcome = _run_one(*self.arguments(index))
            except Exception as error:  # escaped execute: recorded, and the sweep goes on
                self.fail(index, f"{type(error).__name__}: {error}")
            else:
                self.record(index, outcome)

    def run_pool(self, indices: Sequence[int], workers: int, threads: Threads) -> None:
        """Run ``indices`` on a pool of ``workers`` processes, at most ``workers`` runs in flight, in order.

        A dead worker breaks the pool. Its runs in flight then are retried first, each alone on a fresh pool (so
        a second death is that run's own: it is recorded as failed); the other runs follow as before.
        """
        self.threads = threads
        with _main_without_missing_file():
            self._run_pools(indices, workers, threads.count)

    def _run_pools(self, indices: Sequence[int], workers: int, threads: int) -> None:
        pending: deque[tuple[int, bool]] = deque((index, False) for index in indices)  # (run index, alone)
        context = multiprocessing.get_context("spawn")
        while pending:
            pool = ProcessPoolExecutor(
                max_workers=min(workers, len(pending)),
                mp_context=context,
                initializer=_init_worker,
                initargs=(threads, os.getpid(), worker_paths()),
            )
            try:
                died = self._drain(pool, pending, workers)
            except BaseException:  # interrupted (Ctrl-C): stop the workers now; their runs resume next time
                _terminate(pool)
                raise
            pool.shutdown(wait=True, cancel_futures=True)  # a broken pool's workers are all gone after this
            for index, alone in sorted(died, reverse=True):
                if alone:
                    self.fail(index, WORKER_DIED)
                else:
                    self.retried += 1
                    pending.appendleft((index, True))

    def _drain(
        self, pool: ProcessPoolExecutor, pending: deque[tuple[int, bool]], workers: int
    ) -> list[tuple[int, bool]]:
        """Feed ``pool`` from ``pending`` until it is empty or the pool breaks; returns the runs whose worker died."""
        in_flight: dict[Future[RunOutcome], tuple[int, bool]] = {}
        died: list[tuple[int, bool]] = []
        broken = False
        while (pending and not broken) or in_flight:
            while pending and not broken and len(in_flight) < workers:
                index, alone = pending[0]
                if in_flight and (alone or any(single for _, single in in_flight.values())):
                    break  # a run retried after a worker died runs alone
                pending.popleft()
                try:
                    future = pool.submit(_run_one, *self.arguments(index))
                    in_flight[future] = (index, alone)
                except BrokenProcessPool:
                    pending.appendleft((index, alone))
                    broken = True
            if not in_flight:
                break
            done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in sorted(done, key=lambda future: in_flight[future]):
                index, alone = item = in_flight.pop(future)
                try:
                    outcome = future.result()
                except BrokenProcessPool:
                    died.append(item)
                    broken = True
                except Exception as error:  # escaped execute in the worker: recorded, and the sweep goes on
                    self.fail(index, f"{type(error).__name__}: {error}")
                else:
                    self.record(index, outcome)
        return died


def _terminate(pool: ProcessPoolExecutor) -> None:
    """Stop ``pool``'s workers at once (a killed run resumes from its checkpoint on the next sweep)."""
    processes = getattr(pool, "_processes", None) or {}
    for process in list(processes.values()):
        if process.is_alive():
            process.terminate()
    pool.shutdown(wait=False, cancel_futures=True)


def run_sweep(
    configs: Sequence[RunConfig],
    out: str | Path,
    *,
    workers: int = 1,
    progress: bool = True,
    threads_per_worker: int | None = None,
    trackers: Sequence[Mapping[str, Any]] = (),
    executor: str = "local",
    address: str | None = None,
    force: Collection[str] = (),
    restart_failed: bool = False,
    wait: bool = False,
) -> SweepResult:
    """Run every config into ``out/<run_id>`` (see the module docstring); returns the outcomes in config order.

    ``workers == 1`` runs in this process (torch threads are left as they are unless ``threads_per_worker``
    is given); more use a local ``spawn`` process pool, each worker with ``threads_per_worker`` torch threads
    (default ``max(1, cores // workers)``; ``mtlscope.runs.threads``). ``progress`` shows the runs done on stderr
    (``mtlscope.progress``: a bar on a terminal, plain lines in a log).
    Raises ``ConfigError`` for a config that cannot be resolved (nothing is written) and ``ValueError`` (one line)
    for ``workers`` or ``threads_per_worker`` not a positive integer.

    ``executor="ray"`` runs each run as a Ray task (``mtlscope.sweeps.ray_executor``) on a local Ray instance, or
    on the cluster at ``address``, with ``threads_per_worker`` (default 1) CPUs and torch threads per run;
    ``workers`` does not apply (Ray schedules by the cluster's CPUs).

    ``trackers``: tracker specs passed unchanged to every run's ``execute`` (see ``mtlscope.runs.tracking``). They
    are checked and their backends reached (MLflow experiments created) here first: a bad spec, a missing package
    or an unreachable backend raises ``TrackingError`` before any run starts.

    ``force``: run ids to run again from scratch (ids not among the configs are ignored); ``restart_failed``: failed
    runs start over instead of resuming; ``wait``: wait for another driver holding ``out`` (or another process
    holding a run) instead of raising ``InUseError`` (for ``out``, before anything is written).
    """
    if workers < 1:
        raise ValueError(f"workers: expected a positive integer, got {workers}")
    if executor not in EXECUTORS:
        raise ValueError(f"executor: expected one of {', '.join(EXECUTORS)}, got {executor!r}")
    if executor == "ray":
        from mtlscope.sweeps.ray_executor import import_ray

        import_ray()  # a missing Ray is a one-line error before anything is written
    if threads_per_worker is not None:
        threads_per_worker = check_threads(threads_per_worker, "threads_per_worker")
    started = time.monotonic()
    out = Path(out)
    runs, duplicates = unique_runs(configs)
    if executor == "ray" or workers > 1:
        check_reachable(runs)
    specs = prepare_trackers(trackers) if trackers else []
    forced = set(force)
    with hold_directory(out, wait=wait), Progress(len(runs), "sweep", unit="run", enabled=progress) as bar:
        sweep = _Sweep(runs, out, bar, specs, force=forced, restart_failed=restart_failed, wait=wait)
        to_run = []
        for index, (run_id, _) in enumerate(runs):
            done = None if run_id in forced else _already_done(out / run_id, run_id)
            if done is not None:
                sweep.record(index, done)
            else:
                to_run.append(index)
        if executor == "ray" and to_run:
            from mtlscope.sweeps.ray_executor import run_on_ray

            ray_threads = Threads(threads_per_worker, "option") if threads_per_worker else Threads(1, "ray default")
            run_on_ray(sweep, to_run, address, ray_threads)
        elif workers == 1 or not to_run:
            sweep.run_here(to_run, threads_per_worker)
        else:
            pool_size = min(workers, len(to_run))
            threads = (
                Threads(threads_per_worker, "option")
                if threads_per_worker is not None
                else Threads(sweep_default(pool_size), "sweep default")
            )
            sweep.run_pool(to_run, pool_size, threads)
    outcomes = [sweep.outcomes[index] for index in range(len(runs))]
    counts = Counter(outcome.status for outcome in outcomes)
    return SweepResult(
        outcomes=outcomes,
        counts={status: counts.get(status, 0) for status in RESULT_STATUSES} | dict(counts),
        skipped=sum(outcome.skipped for outcome in outcomes),
        elapsed_s=round(time.monotonic() - started, 3),
        duplicates=duplicates,
        retried=sweep.retried,
    )
