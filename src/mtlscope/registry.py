"""A small registry of named builders whose keyword-only arguments are their options.

Every pluggable part of mtlscope (settings, encoders, heads, methods, probes) is registered here under a
name; option names are checked against the builder's signature so a typo in a config is a one-line
error listing what exists.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    builder: Callable[..., T]
    description: str

    def options(self) -> dict[str, Any]:
        """Option names with their defaults (``inspect.Parameter.empty`` when required)."""
        return {
            name: parameter.default
            for name, parameter in inspect.signature(self.builder).parameters.items()
            if parameter.kind is inspect.Parameter.KEYWORD_ONLY
        }


class Registry(Generic[T]):
    """Named builders of one kind of component (``kind`` names it in error messages)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, description: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator registering ``builder(*, option=default, ...)`` under ``name``."""

        def decorate(builder: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = Entry(name, builder, description)
            return builder

        return decorate

    def available(self) -> list[str]:
        return sorted(self._entries)

    def entry(self, name: str) -> Entry[T]:
        if name not in self._entries:
            raise KeyError(f"unknown {self.kind} {name!r}; available: {', '.join(self.available())}")
        return self._entries[name]

    def check_options(self, name: str, options: Mapping[str, Any]) -> None:
        """Raise ``KeyError``/``ValueError`` for an unknown name or option, naming what exists."""
        known = self.entry(name).options()
        for key in options:
            if key not in known:
                listed = ", ".join(sorted(known)) or "none"
                raise ValueError(f"{self.kind} {name!r} has no option {key!r}; options: {listed}")
        missing = [key for key, default in known.items() if default is inspect.Parameter.empty]
        missing = [key for key in missing if key not in options]
        if missing:
            raise ValueError(f"{self.kind} {name!r} needs option {missing[0]!r}")

    def build(self, name: str, *args: Any, **options: Any) -> T:
        """``builder(*args, **options)`` after checking the options."""
        self.check_options(name, options)
        return self.entry(name).builder(*args, **options)
