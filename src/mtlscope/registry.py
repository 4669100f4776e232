"""A small registry of named builders whose keyword-only arguments are their options.

Every pluggable part of mtlscope (settings, encoders, heads, methods, probes) is registered here under a
name. A builder declares each option as a keyword-only parameter with a default and an annotation saying what
it accepts, ranges included (``rho: PositiveFloat = 1e-3``; see ``mtlscope.options``). ``check_options``
validates given options against those declarations — unknown and missing options, types and ranges — so a
config error is one line naming the option and what it expects, raised when the config is loaded, before
anything runs. Options shared by every entry of a registry (a probe's ``every``) are declared once as the
registry's ``common`` options.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from mtlscope.messages import clip, show
from mtlscope.options import OptionType

T = TypeVar("T")


class OptionError(ValueError):
    """An unknown, missing or invalid option of a registered component.

    ``key`` is the option's name, ``problem`` what is wrong with it (without the key), so a config can name the
    full key (``probes.sharpness.rho: expected a number > 0 (got -1)``); ``str()`` names the component.
    """

    def __init__(self, key: str, problem: str, message: str) -> None:
        super().__init__(message)
        self.key, self.problem = key, problem


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    builder: Callable[..., T]
    description: str
    common: Mapping[str, tuple[Any, Any]] = field(default_factory=dict)

    def options(self) -> dict[str, Any]:
        """Option names with their defaults (``inspect.Parameter.empty`` when required), common ones included."""
        own = {
            name: parameter.default
            for name, parameter in inspect.signature(self.builder).parameters.items()
            if parameter.kind is inspect.Parameter.KEYWORD_ONLY
        }
        return {**own, **{name: default for name, (_, default) in self.common.items()}}

    def option_types(self) -> dict[str, OptionType]:
        """The validator of every option, from the builder's annotations (``TypeError`` if one is missing)."""
        common = {name: _option_type(annotation) for name, (annotation, _) in self.common.items()}
        return {**_builder_option_types(self.builder), **common}


@functools.cache
def _builder_option_types(builder: Callable[..., Any]) -> dict[str, OptionType]:
    hints = typing.get_type_hints(builder, include_extras=True)
    types: dict[str, OptionType] = {}
    for name, parameter in inspect.signature(builder).parameters.items():
        if parameter.kind is not inspect.Parameter.KEYWORD_ONLY:
            continue
        if name not in hints:
            raise TypeError(f"option {name!r} of {builder.__module__}.{builder.__qualname__} has no annotation")
        types[name] = _option_type(hints[name])
    return types


_TYPES: dict[int, tuple[Any, OptionType]] = {}


def _option_type(annotation: Any) -> OptionType:
    """One ``OptionType`` per annotation object (building a pydantic validator is not free)."""
    cached = _TYPES.get(id(annotation))
    if cached is None or cached[0] is not annotation:
        cached = _TYPES[id(annotation)] = (annotation, OptionType(annotation))
    return cached[1]


def _origin(builder: Callable[..., Any]) -> str:
    """``module:qualname`` of a builder: what makes a second registration the same one."""
    module = getattr(builder, "__module__", None) or "?"
    return f"{module}:{getattr(builder, '__qualname__', type(builder).__name__)}"


class Registry(Generic[T]):
    """Named builders of one kind of component (``kind`` names it in error messages).

    ``common``: options every entry takes besides its builder's, as ``{name: (annotation, default)}``; they are
    validated like the builder's and left for the caller to apply (``split_common``).
    """

    def __init__(self, kind: str, common: Mapping[str, tuple[Any, Any]] | None = None) -> None:
        self.kind = kind
        self.common: dict[str, tuple[Any, Any]] = dict(common or {})
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, description: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator registering ``builder(*, option=default, ...)`` under ``name``.

        Registering a name again from the same source (the same module and qualified name of the builder: a
        notebook cell run again, ``importlib.reload``) replaces the entry; a different builder under a name
        already taken is a ``ValueError`` naming both.
        """

        def decorate(builder: Callable[..., T]) -> Callable[..., T]:
            previous = self._entries.get(name)
            if previous is not None and _origin(previous.builder) != _origin(builder):
                raise ValueError(
                    f"{self.kind} {name!r} is already registered by {_origin(previous.builder)}; "
                    f"cannot register {_origin(builder)} under the same name"
                )
            self._entries[name] = Entry(name, builder, description, self.common)
            return builder

        return decorate

    def available(self) -> list[str]:
        return sorted(self._entries)

    def entry(self, name: str) -> Entry[T]:
        if not isinstance(name, str) or name not in self._entries:
            raise KeyError(f"unknown {self.kind} {show(name)}; available: {', '.join(self.available())}")
        return self._entries[name]

    def check_options(self, name: str, options: Mapping[str, Any]) -> None:
        """Raise ``KeyError`` for an unknown name and ``OptionError`` for an unknown, missing or invalid option."""
        entry = self.entry(name)
        known = entry.options()
        types = entry.option_types()
        context = f"{self.kind} {name!r}"
        for key, value in options.items():
            if key not in known:
                listed = ", ".join(sorted(known)) or "none"
                shown = clip(str(key))
                raise OptionError(
                    shown,
                    f"unknown option of {context}; options: {listed}",
                    f"{context} has no option {show(key)}; options: {listed}",
                )
            try:
                types[key].check(value)
            except ValueError as error:
                raise OptionError(key, str(error), f"{self.kind}.{key}: {error} ({context})") from None
        missing = [key for key, default in known.items() if default is inspect.Parameter.empty and key not in options]
        if missing:
            raise OptionError(
                missing[0], f"required option of {context} is missing", f"{context} needs option {missing[0]!r}"
            )

    def split_common(self, options: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(common options, the builder's options)`` of ``options``."""
        common = {key: value for key, value in options.items() if key in self.common}
        return common, {key: value for key, value in options.items() if key not in self.common}

    def build(self, name: str, *args: Any, **options: Any) -> T:
        """``builder(*args, **options)`` after checking the options (common options are not passed on)."""
        self.check_options(name, options)
        _, own = self.split_common(options)
        return self.entry(name).builder(*args, **own)

    def build_spec(self, spec: str | Mapping[str, Any]) -> T:
        """Build a component given as its ``name`` or as ``{"name": ..., **options}`` (options checked)."""
        if isinstance(spec, str):
            return self.build(spec)
        options = dict(spec)
        name = options.pop("name", None)
        if not isinstance(name, str):
            available = ", ".join(self.available())
            raise ValueError(f"a {self.kind} given as a mapping needs a 'name'; available: {available}")
        return self.build(name, **options)
