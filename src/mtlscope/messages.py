"""Echoing user input in one-line error messages without flooding them.

An error line names the key and shows the value it rejected; a 200,000-character key or value (a pasted file,
a generated list) would make that line unreadable. ``clip`` cuts any text to ``LIMIT`` characters, ending with
``...`` and the total length; ``show`` is ``clip(repr(value))`` (for a container, computed without building its
whole ``repr``, and cut with ``...`` alone). Every message that echoes a key or a value uses them.
"""

from __future__ import annotations

import reprlib
from typing import Any

#: Characters of a key or value an error message shows.
LIMIT = 80

_REPR = reprlib.Repr()
_REPR.maxstring = LIMIT
_REPR.maxother = LIMIT
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 20
_REPR.maxlevel = 4


def clip(text: str, limit: int = LIMIT) -> str:
    """``text`` itself when it has at most ``limit`` characters, else its start, ``...`` and its length."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def show(value: Any, limit: int = LIMIT) -> str:
    """The ``repr`` of ``value`` for an error message, cut to about ``limit`` characters (see ``clip``)."""
    if isinstance(value, str):
        return repr(value) if len(value) <= limit else f"{value[:limit]!r}... ({len(value)} characters)"
    if isinstance(value, (list, tuple, dict, set, frozenset)):  # reprlib already cut long entries ("...")
        text = _REPR.repr(value)
        return text if len(text) <= limit else f"{text[:limit]}..."
    return clip(repr(value), limit)
