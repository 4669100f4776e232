"""Counting host round-trips: the tensor calls that bring a value to Python or the CPU (a device sync on a GPU).

A training step on a GPU is fast only if Python never waits for the device. These calls make it wait, on a GPU:

- reading a value: ``Tensor.item``, ``.tolist``, ``.numpy``, ``.cpu``, ``bool(t)``, ``float(t)``, ``int(t)``,
  ``operator.index(t)`` (Python control flow on a tensor, ``if t:``, is ``bool(t)``);
- operators whose output size depends on values: ``nonzero``, ``argwhere``, ``masked_select``, ``unique``,
  ``unique_consecutive``, and indexing with a boolean mask.

``HostSyncCounter`` is a ``TorchFunctionMode`` that counts them while it is active, by the calling source line
outside torch, so it works on CPU, where nothing actually waits: what it counts on CPU is what would wait on a GPU.
A call is listed under the first frame outside torch (the line that called torch); calls that torch makes itself
(e.g. Adam reading its step counter, which torch keeps on the CPU by design unless ``capturable``) are counted
apart, in ``from_torch``, so ``own`` is what the calling code does.

The plain training step (``umtg``, diagnostics off) makes exactly one: the finiteness check of the task losses
(``mtlscope.engine.step``); ``tests/engine/test_host_syncs.py`` holds it to that. See docs/user-guide.md
("GPU readiness") for what each method's own solver adds.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

#: Tensor methods that return a value to Python or copy to the host.
READS: frozenset[str] = frozenset(
    {"item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__", "__complex__"}
)
#: Operators whose output shape depends on the values (the device must finish first).
DATA_DEPENDENT: frozenset[str] = frozenset({"nonzero", "argwhere", "masked_select", "unique", "unique_consecutive"})

_TORCH = str(Path(torch.__file__).parent)
_HERE = str(Path(__file__))


class HostSyncCounter(TorchFunctionMode):
    """Counts host round-trips while active (``with HostSyncCounter() as counter: ...``): ``calls`` and
    ``from_torch`` (``Counter``s of ``(name, "file:line")``: made by the calling code, made inside torch), ``own``
    and ``total`` (their counts)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[tuple[str, str]] = Counter()
        self.from_torch: Counter[tuple[str, str]] = Counter()

    @property
    def own(self) -> int:
        return sum(self.calls.values())

    @property
    def total(self) -> int:
        return self.own + sum(self.from_torch.values())

    def __torch_function__(
        self, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        name = getattr(func, "__name__", "")
        if name in READS or name in DATA_DEPENDENT or _is_mask_index(name, args):
            where, inside_torch = _caller()
            (self.from_torch if inside_torch else self.calls)[(name, where)] += 1
        return func(*args, **(kwargs or {}))


def _is_mask_index(name: str, args: tuple[Any, ...]) -> bool:
    if name != "__getitem__" or len(args) < 2:
        return False
    index = args[1]
    parts = index if isinstance(index, tuple) else (index,)
    return any(isinstance(part, Tensor) and part.dtype == torch.bool for part in parts)


def _caller() -> tuple[str, bool]:
    """``file:line`` of the first frame outside torch and this module, and whether a torch frame came first."""
    frame = sys._getframe(2)
    inside_torch = False
    while frame is not None:
        filename = frame.f_code.co_filename
        if filename.startswith(_TORCH):
            inside_torch = True
        elif filename != _HERE:
            return f"{filename}:{frame.f_lineno}", inside_torch
        frame = frame.f_back  # type: ignore[assignment]
    return "?", inside_torch
