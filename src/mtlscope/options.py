"""The declared types of component options: strict validation and a description in words.

Every registered builder (``mtlscope.registry``) declares what each keyword option accepts in its annotation:
the type (``float``, ``int``, ``bool``, ``str``, a ``Literal`` of choices, a list, a mapping, a ``TypedDict``, a
union) and, with ``Annotated[..., Field(...)]`` (pydantic), its range. The aliases below name the common
ranges, e.g. ``rho: PositiveFloat = 1e-3`` or ``batch_size: PositiveInt = 16``.

``OptionType(annotation)`` validates a value *strictly* — a string is not a number, a bool is not an integer
(an integer is a number) — and ``describe(annotation)`` says what is accepted ("a number > 0", "a non-empty list
of integers >= 1", "one of 'min', 'median', 'rmse'"), so an error reads
``probes.sharpness.rho: expected a number > 0 (got -1)``.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import Field, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo
from typing_extensions import is_typeddict

from mtlscope.messages import show

PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegativeFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
UnitInterval = Annotated[float, Field(ge=0, le=1)]
PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
#: A non-empty list of positive integers (layer widths, block counts).
PositiveInts = Annotated[Sequence[PositiveInt], Field(min_length=1)]

_NOUNS: dict[Any, tuple[str, str]] = {
    float: ("a number", "numbers"),
    int: ("an integer", "integers"),
    bool: ("true or false", "booleans"),
    str: ("a string", "strings"),
    type(None): ("null", "nulls"),
}


class OptionType:
    """A validator of one option's declared ``annotation`` (``ValueError`` from ``check`` says what it expects)."""

    def __init__(self, annotation: Any) -> None:
        self.annotation = annotation
        self.description = describe(annotation)
        self._adapter: TypeAdapter[Any] = TypeAdapter(annotation)

    def accepts(self, value: Any) -> bool:
        try:
            self._adapter.validate_python(value, strict=True)
        except ValidationError:
            return False
        return True

    def check(self, value: Any) -> None:
        """Raise ``ValueError("expected <description> (got <value>)")`` unless ``value`` fits the annotation."""
        if not self.accepts(value):
            raise ValueError(f"expected {self.description} (got {show(value)})")


def describe(annotation: Any, plural: bool = False) -> str:
    """What ``annotation`` accepts, in words (``TypeError`` for an annotation it cannot describe)."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _ranged(args[0], args[1:], plural)
    if annotation in _NOUNS:
        return _NOUNS[annotation][plural]
    if annotation is Any:
        return "any values" if plural else "any value"
    if origin is Literal:
        return ("values among " if plural else "one of ") + ", ".join(repr(arg) for arg in args)
    if origin in (Union, types.UnionType):
        named = [describe(arg, plural) for arg in args if arg is not type(None)]
        if type(None) in args:
            named.append("null")
        return " or ".join(named)
    if origin in (list, tuple, Sequence, typing.Sequence) or annotation in (list, tuple):
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return ("lists" if plural else "a list") + " of " + ", ".join(describe(arg) for arg in args)
        element = describe(args[0], plural=True) if args else "values"
        return ("lists of " if plural else "a list of ") + element
    if origin in (dict, Mapping, typing.Mapping):
        keys = "names" if not args or args[0] is str else describe(args[0], plural=True)
        values = describe(args[1], plural=True) if args else "values"
        return ("mappings" if plural else "a mapping") + f" of {keys} to {values}"
    if is_typeddict(annotation):
        hints = typing.get_type_hints(annotation, include_extras=True)
        keys = ", ".join(f"{key} ({describe(hint)})" for key, hint in hints.items())
        return ("mappings" if plural else "a mapping") + f" with the optional keys {keys}"
    raise TypeError(f"cannot describe the option type {annotation!r}")


def _ranged(base: Any, metadata: tuple[Any, ...], plural: bool) -> str:
    """``base`` described with the bounds and lengths declared in ``metadata`` (``Field(...)`` or annotated-types)."""
    constraints: list[Any] = []
    for item in metadata:
        constraints += item.metadata if isinstance(item, FieldInfo) else [item]
    bounds: dict[str, Any] = {}
    finite = False
    for constraint in constraints:
        if isinstance(constraint, annotated_types.Interval):
            bounds.update({k: v for k, v in vars(constraint).items() if v is not None})
        for name in ("gt", "ge", "lt", "le", "min_length", "max_length"):
            if hasattr(constraint, name) and not isinstance(constraint, annotated_types.Interval):
                bounds[name] = getattr(constraint, name)
        if getattr(constraint, "allow_inf_nan", True) is False:
            finite = True
    if get_origin(base) in (list, tuple, Sequence, typing.Sequence, dict, Mapping, typing.Mapping):
        text = describe(base, plural)
        if bounds.get("min_length") == 1 and "max_length" not in bounds:
            return text.replace("lists", "non-empty lists", 1) if plural else text.replace("a ", "a non-empty ", 1)
        if "min_length" in bounds or "max_length" in bounds:
            length = f"{bounds.get('min_length', 0)} to {bounds.get('max_length', 'any number of')} entries"
            return f"{text} ({length})"
        return text
    noun = describe(base, plural)
    lower = (">", bounds["gt"]) if "gt" in bounds else (">=", bounds["ge"]) if "ge" in bounds else None
    upper = ("<", bounds["lt"]) if "lt" in bounds else ("<=", bounds["le"]) if "le" in bounds else None
    if lower is None and upper is None:
        if finite and base is float:
            return "finite numbers" if plural else "a finite number"
        return noun
    if lower is not None and upper is not None:
        left = "(" if lower[0] == ">" else "["
        right = ")" if upper[0] == "<" else "]"
        return f"{noun} in {left}{_number(lower[1])}, {_number(upper[1])}{right}"
    op, value = lower or upper  # type: ignore[misc]
    return f"{noun} {op} {_number(value)}"


def _number(value: Any) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
