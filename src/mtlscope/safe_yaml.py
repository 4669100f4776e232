"""The one YAML reader of mtlscope: configs, sweep files, presets, stored configs and ``key=value`` overrides.

``parse_yaml(text)`` is ``yaml.safe_load`` (no Python objects) with three guards and one YAML 1.2 rule:

- **Size**: the document's size with every alias expanded is counted on the composed node graph, before any
  value is built; past ``MAX_NODES`` values (a "billion laughs" alias bomb: a few lines that expand to 10^9
  values) or for a recursive alias the document is refused.
- **Nesting**: a document nested too deeply for the parser is refused instead of crashing it.
- **Duplicate keys**: a mapping that gives a key twice is refused (plain YAML keeps the last one silently).
  Keys brought in by a merge (``<<: *defaults``) may be overridden, as YAML intends.
- Numbers in exponent form without a dot (``1e-3``, ``5E4``) are numbers, as in YAML 1.2 and JSON (PyYAML's
  YAML 1.1 would read them as strings).

Errors are ``YAMLInputError`` (a ``ValueError``; ``YAMLRefusedError`` for well-formed YAML a guard refuses) with
one line naming the line and column; the caller adds the file name.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

from mtlscope.messages import show

#: Most values (scalars, lists and mappings, aliases expanded) a YAML document may hold.
MAX_NODES = 1_000_000

_MERGE_TAG = "tag:yaml.org,2002:merge"
_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")


class YAMLInputError(ValueError):
    """YAML that cannot be read, is too large once its aliases are expanded, or repeats a key."""


class YAMLRefusedError(YAMLInputError):
    """Well-formed YAML refused by a guard: too large once expanded, nested too deeply, or a duplicate key."""


class _DuplicateKeyError(yaml.constructor.ConstructorError):
    pass


def _where(mark: Any) -> str:
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""


class _Loader(yaml.SafeLoader):
    """``SafeLoader`` that counts the expanded document before building it and refuses duplicate keys."""

    def compose_document(self) -> Node | None:
        node: Node | None = super().compose_document()
        _check_size(node)
        return node

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, MappingNode):
            first: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE_TAG:
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    earlier = first.setdefault(key, key_node)
                except TypeError:  # an unhashable key: the base class says so
                    continue
                if earlier is not key_node:
                    raise _DuplicateKeyError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"found duplicate key {show(key)} (first given at line {earlier.start_mark.line + 1})",
                        key_node.start_mark,
                    )
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return mapping


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789"))


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _check_size(root: Node | None) -> None:
    """Refuse a node graph whose tree (every alias expanded) has more than ``MAX_NODES`` nodes, or a cycle.

    Sizes are memoised per node, so the count costs one pass over the graph, not over its expansion.
    """
    if root is None:
        return
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            open_nodes.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in _children(node))
            if sizes[key] > MAX_NODES:
                raise YAMLRefusedError(
                    f"refused: the YAML document expands to more than {MAX_NODES:,} values once its aliases are "
                    f"expanded{_where(node.start_mark)}"
                )
            continue
        if key in sizes:
            continue
        if key in open_nodes:
            raise YAMLRefusedError(f"refused: a recursive alias{_where(node.start_mark)}")
        open_nodes.add(key)
        stack.append((node, True))
        stack += [(child, False) for child in _children(node) if id(child) not in sizes]


def parse_yaml(text: str) -> Any:
    """The value of the YAML document ``text`` (module docstring); ``YAMLInputError`` with one line otherwise."""
    try:
        return yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader: no Python objects
    except _DuplicateKeyError as error:
        raise YAMLRefusedError(f"refused{_where(error.problem_mark)}: {error.problem}") from None
    except yaml.MarkedYAMLError as error:
        problem = " ".join(str(error.problem or "invalid YAML").split())
        raise YAMLInputError(f"invalid YAML{_where(error.problem_mark)}: {problem}") from None
    except yaml.reader.ReaderError as error:
        code = ord(error.character) if isinstance(error.character, str) else int(error.character)
        raise YAMLInputError(
            f"invalid YAML: character #x{code:04x} at position {error.position} is not allowed in YAML text"
        ) from None
    except yaml.YAMLError as error:
        raise YAMLInputError(f"invalid YAML: {' '.join(str(error).split())}") from None
    except RecursionError:
        raise YAMLRefusedError("refused: the YAML document is nested too deeply") from None
