"""Who may write where: a lock per results directory and per run, so two drivers never write into one run.

- ``hold_directory(out)``: held by a sweep driver (``mtlscope sweep`` / ``reproduce``, ``run_sweep``) for as long as
  it runs, on ``<out>/.mtlscope.lock``.
- ``hold_run(path)``: held by whoever executes the run at ``path`` (``execute``, in the driver's process or in a
  worker), on ``<out>/<run_id>/.lock``. Nobody else writes into a run whose lock is held.

The locks are ``fcntl.flock`` locks on lock files that record the holder's PID and host. The operating system
releases them when the holder's process ends, however it ends (``kill -9`` included), so a lock is never stale;
the lock files themselves stay (removing one while another process waits on it would let two processes hold
"the" lock). A lock already held elsewhere raises ``InUseError`` with one line naming the holder, e.g.
``sweep-out is in use by mtlscope pid 1234 on node7; wait for it or pass --wait``, or, with ``wait=True``, is
waited for (one log line says so). Within one process the locks are re-entrant for the thread that holds them
(a CLI command holds the directory, then ``run_sweep`` takes it again); another thread of the same process gets
``InUseError`` like another process would.

``flock`` works on local filesystems and, on Linux, on NFS (emulated with POSIX locks since 2.6.12).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mtlscope.runs.config import ConfigError

DIRECTORY_LOCK_FILE = ".mtlscope.lock"
RUN_LOCK_FILE = ".lock"
POLL_S = 0.2

logger = logging.getLogger(__name__)


class InUseError(RuntimeError):
    """A results directory or run is locked by another process (or thread); the message is one line."""


@dataclass
class _Held:
    thread: int
    count: int
    descriptor: int


_held: dict[str, _Held] = {}
_guard = threading.Lock()


def holder(lock: Path) -> str:
    """Who holds ``lock``, as written in its lock file: ``pid 1234 on HOST`` (never trusted beyond display)."""
    for _ in range(5):  # the holder writes its name just after taking the lock: an empty file is read again
        try:
            data = json.loads(lock.read_text()[:1000])
            pid, host = data["pid"], data["host"]
            if isinstance(pid, int) and isinstance(host, str):
                return f"pid {pid} on {host[:100]}"
        except (OSError, ValueError, KeyError, TypeError):
            pass
        time.sleep(0.02)
    return "another process"


def _in_use(what: Path, lock: Path) -> InUseError:
    return InUseError(f"{what} is in use by mtlscope {holder(lock)}; wait for it or pass --wait")


def _try_flock(descriptor: int) -> bool:
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextlib.contextmanager
def hold(lock: Path, what: Path, *, wait: bool = False) -> Iterator[None]:
    """Hold the lock file ``lock`` (guarding ``what``) for the ``with`` block; see the module docstring."""
    key = str(lock.resolve())
    me = threading.get_ident()
    with _guard:
        held = _held.get(key)
        if held is not None and held.thread == me:
            held.count += 1
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield
        finally:
            with _guard:
                _held[key].count -= 1
        return
    descriptor = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        told = False
        while True:
            with _guard:
                free_here = key not in _held
                if free_here and _try_flock(descriptor):
                    _held[key] = _Held(me, 1, descriptor)
                    break
            if not wait:
                raise _in_use(what, lock)
            if not told:
                logger.warning("%s is in use by mtlscope %s; waiting for it", what, holder(lock))
                told = True
            time.sleep(POLL_S)
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}) + "\n"
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, record.encode(), 0)
        try:
            yield
        finally:
            with _guard:
                _held.pop(key, None)
            fcntl.flock(descriptor, fcntl.LOCK_UN)
    finally:
        os.close(descriptor)


def _directory(path: Path, name: str) -> Path:
    """``path``, created if missing; a ``ConfigError`` when it exists and is not a directory."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{path}: exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # a parent is a file, no permission, ...
        raise ConfigError(f"{path}: cannot create the directory ({error.strerror or error})") from None
    return path / name


@contextlib.contextmanager
def hold_directory(out: str | Path, *, wait: bool = False) -> Iterator[None]:
    """Hold the results directory ``out`` (created if missing) as its one sweep driver."""
    out = Path(out)
    with hold(_directory(out, DIRECTORY_LOCK_FILE), out, wait=wait):
        yield


@contextlib.contextmanager
def hold_run(path: str | Path, *, wait: bool = False) -> Iterator[None]:
    """Hold the run directory ``path`` (created if missing) as the one process writing into it."""
    path = Path(path)
    with hold(_directory(path, RUN_LOCK_FILE), path, wait=wait):
        yield
