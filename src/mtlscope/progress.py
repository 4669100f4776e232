"""Progress of long commands (``mtlscope run``, ``sweep``, ``reproduce``, ``demo``) on stderr.

``Progress(total, "sweep", unit="run")`` shows how far a loop has got, in one of three ways:

- stderr is a terminal: a tqdm bar, redrawn in place;
- stderr is a file or a pipe (a log, a batch job): plain lines, one each time another tenth of the total is
  done or at most every ``every_s`` seconds (30) while something moves, and one at the end, e.g.
  ``sweep: 12/40 runs (3 failed), ETA 2 min 10 s`` — no carriage returns, no bar characters;
- ``enabled=False`` (the commands' ``--quiet``): nothing.

The ETA is the time per item so far (items counted with ``advance(..., timed=False)``, e.g. runs already
done before a sweep started, do not count) times the items left.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, TextIO

#: Plain lines: one per this fraction of the total at least, and at most every ``every_s`` seconds otherwise.
LINE_FRACTION = 0.1
LINE_EVERY_S = 30.0


def format_duration(seconds: float) -> str:
    """``42 s``, ``3 min 20 s``, ``2 h 05 min``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class Progress:
    """Progress of ``total`` items of ``unit`` labelled ``desc`` (module docstring); a context manager."""

    def __init__(
        self,
        total: int,
        desc: str,
        *,
        unit: str = "step",
        enabled: bool = True,
        stream: TextIO | None = None,
        every_s: float = LINE_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = total
        self.desc = desc
        self.unit = unit
        self.done = 0
        self._stream = stream if stream is not None else sys.stderr
        self._every_s = every_s
        self._clock = clock
        self._started = clock()
        self._untimed = 0
        self._note = ""
        self._closed = False
        self._bar: Any = None
        self._plain = False
        if enabled:
            if _is_terminal(self._stream):
                from tqdm import tqdm

                self._bar = tqdm(total=total, desc=desc, unit=unit, file=self._stream, dynamic_ncols=True)
            else:
                self._plain = True
        self._last_line_at = self._started
        self._last_line_done = 0

    def advance(self, n: int = 1, *, timed: bool = True) -> None:
        """``n`` more items done; ``timed=False`` for items that took no work (left out of the ETA)."""
        self.done += n
        if not timed:
            self._untimed += n
        if self._bar is not None:
            self._bar.update(n)
        elif self._plain:
            self._maybe_line()

    def advance_to(self, done: int, *, timed: bool = True) -> None:
        """``done`` items done in all (e.g. the training step reached)."""
        if done > self.done:
            self.advance(done - self.done, timed=timed)

    def note(self, text: str) -> None:
        """A short note shown with the progress (e.g. ``3 failed``)."""
        self._note = text
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)

    def eta_s(self) -> float | None:
        """Seconds left at the rate so far; ``None`` before a timed item is done."""
        timed = self.done - self._untimed
        if timed <= 0:
            return None
        return (self._clock() - self._started) / timed * max(self.total - self.done, 0)

    def line(self) -> str:
        """The plain progress line, e.g. ``sweep: 12/40 runs (3 failed), ETA 2 min 10 s``."""
        unit = self.unit if self.total == 1 else f"{self.unit}s"
        text = f"{self.desc}: {self.done}/{self.total} {unit}"
        if self._note:
            text += f" ({self._note})"
        if self.done >= self.total:
            return f"{text}, finished in {format_duration(self._clock() - self._started)}"
        eta = self.eta_s()
        return f"{text}, ETA {format_duration(eta)}" if eta is not None else text

    def _maybe_line(self) -> None:
        now = self._clock()
        step = max(1, round(self.total * LINE_FRACTION))
        due = self.done // step > self._last_line_done // step or now - self._last_line_at >= self._every_s
        if due and self.done > self._last_line_done:
            self._print_line(now)

    def _print_line(self, now: float) -> None:
        print(self.line(), file=self._stream, flush=True)
        self._last_line_at = now
        self._last_line_done = self.done

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self._plain and self.done != self._last_line_done:
            self._print_line(self._clock())

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if kind is None:
            self.close()
        elif self._bar is not None:  # interrupted or failed: end the bar's line, print no final line
            self._closed = True
            self._bar.close()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or a stand-in without isatty
        return False
