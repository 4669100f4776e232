"""Import paths and plugins: how user code reaches a config, the CLI, sweep workers and Ray workers.

- ``resolve_path("package.module:factory")`` imports ``package.module`` and returns its attribute ``factory``
  (a dotted attribute such as ``models:Nets.small`` is followed). Only the module the path names is imported;
  every failure is one ``ImportPathError`` line saying what was wrong: a malformed path, a module that does not
  exist, an exception raised while the module is imported (its type and message, and the module named), a
  missing attribute, or (``callable_=True``) an attribute that is not callable.
- ``import_plugin("package.module")`` imports a module for what it registers (``@ENCODERS.register(...)`` and the
  other registry decorators), with the same one-line errors.
- ``module_fingerprint(name)``: sha256 of the source of a user module, the run id's ``identity.sources`` entry
  (see ``mtlscope.runs.config``): the module's file and the ``__init__.py`` of each package above it. Modules
  of mtlscope itself are not fingerprinted (the mtlscope version covers them). A module without a source file
  (``__main__`` of a notebook or of ``python -``, built-in modules) is fingerprinted by the source, or else the
  compiled code, of the objects the config uses from it (``object_fingerprint``).
- ``worker_paths()``: the ``sys.path`` entries of this process (the current directory first, as ``python -m``
  sees it) that sweep workers put in front of theirs, so a module importable here is importable there.

"User module" here means any module a config names (a factory's module, a plugin) or whose builder a config
uses by name, other than mtlscope's own modules: site-packages modules named in a config are fingerprinted too
(cheap, and a changed installed package then gives a new run id); the modules they import in turn are not.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mtlscope.messages import clip

_MODULE = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"
_PATH = re.compile(rf"^({_MODULE}):({_MODULE})$")
_MODULE_NAME = re.compile(rf"^{_MODULE}$")


class ImportPathError(ValueError):
    """A bad import path or plugin module; the message is one line naming it and what was wrong."""


def is_import_path(value: object) -> bool:
    """Whether ``value`` is written like ``package.module:attribute`` (not whether it imports)."""
    return isinstance(value, str) and _PATH.match(value) is not None


def split_path(path: object) -> tuple[str, str]:
    """``(module, attribute)`` of ``package.module:attribute``; ``ImportPathError`` for anything else."""
    if not isinstance(path, str) or _PATH.match(path) is None:
        raise ImportPathError(
            f"{clip(repr(path))} is not an import path; expected 'package.module:attribute' (e.g. 'mymodels:make_cnn')"
        )
    module, _, attribute = path.partition(":")
    return module, attribute


def import_module(name: str, *, what: str = "module") -> Any:
    """Import module ``name``: a missing module and an error raised inside it are different one-line errors."""
    if not isinstance(name, str) or _MODULE_NAME.match(name) is None:
        raise ImportPathError(f"{what} {clip(repr(name))}: expected a module name like 'package.module'")
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        missing = error.name or name
        if name == missing or name.startswith(f"{missing}."):
            raise ImportPathError(
                f"{what} {name!r}: no module named {missing!r} (is its directory the current one or on PYTHONPATH?)"
            ) from None
        raise ImportPathError(f"{what} {name!r}: importing it failed: {_brief(error)}") from None
    except Exception as error:  # the user's module raised while it was imported: name it and what it raised
        raise ImportPathError(f"{what} {name!r}: importing it failed: {_brief(error)}") from None


def resolve_path(path: object, *, what: str = "factory", callable_: bool = True) -> Any:
    """The object ``package.module:attribute`` names (see the module docstring for the errors)."""
    module_name, attribute = split_path(path)
    value = import_module(module_name, what=f"{what} {path!r}: module")
    for index, part in enumerate(attribute.split(".")):
        if not hasattr(value, part):
            where = module_name if index == 0 else f"{module_name}:{'.'.join(attribute.split('.')[:index])}"
            raise ImportPathError(f"{what} {path!r}: {where} has no attribute {part!r}")
        value = getattr(value, part)
    if callable_ and not callable(value):
        raise ImportPathError(f"{what} {path!r}: expected a callable, got a {type(value).__name__}")
    return value


def import_plugin(name: object) -> Any:
    """Import the plugin module ``name`` (for the components it registers)."""
    if not isinstance(name, str):
        raise ImportPathError(f"plugin {clip(repr(name))}: expected a module name like 'package.module'")
    return import_module(name, what="plugin")


def _brief(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {clip(text, 200)}" if text else type(error).__name__


# -- fingerprints ---------------------------------------------------------------------------------------------


def is_own_module(name: str) -> bool:
    """Whether ``name`` is a module of mtlscope itself (covered by the mtlscope version, not fingerprinted)."""
    return name == "mtlscope" or name.startswith("mtlscope.")


def _source_files(name: str) -> list[Path]:
    """The module's file and the ``__init__.py`` of every package above it (those that have files)."""
    parts = name.split(".")
    files: list[Path] = []
    for depth in range(1, len(parts) + 1):
        module = sys.modules.get(".".join(parts[:depth]))
        file = getattr(module, "__file__", None)
        if isinstance(file, str) and os.path.isfile(file):
            files.append(Path(file))
    return files


#: The fingerprint first seen for each imported module, with the module's spec (a new one after a reload).
_SEEN: dict[str, tuple[object, str]] = {}


def module_fingerprint(name: str) -> str | None:
    """sha256 of the source files of the imported module ``name`` (see ``_source_files``); ``None`` when the
    module has no source file of its own (``__main__`` of a notebook).

    A module whose files changed after this process first fingerprinted it (and that was not reloaded since) runs
    code its files no longer hold: that is an ``ImportPathError`` asking for ``importlib.reload`` or a new process,
    never a run id naming code that did not run.
    """
    module = sys.modules.get(name)
    own = getattr(module, "__file__", None)
    if module is None or not (isinstance(own, str) and os.path.isfile(own)):
        return None
    digest = hashlib.sha256()
    for file in _source_files(name):
        digest.update(f"{file.name}\0".encode())
        digest.update(file.read_bytes())
    fingerprint = digest.hexdigest()
    spec = getattr(module, "__spec__", None) or module
    seen = _SEEN.get(name)
    if seen is not None and seen[0] is spec and seen[1] != fingerprint:
        raise ImportPathError(
            f"module {name!r} changed on disk since this process imported it; reload it (importlib.reload) or start "
            "a new process, so that the run uses the code its run id covers"
        )
    _SEEN[name] = (spec, fingerprint)
    return fingerprint


def object_fingerprint(value: Any) -> str:
    """sha256 of what defines a Python object a run uses: its module's source when that module has a file,
    else its own source (``inspect.getsource``), else its compiled code; for an instance, its class's."""
    target = value if inspect.isfunction(value) or inspect.isclass(value) or inspect.ismethod(value) else type(value)
    module = getattr(target, "__module__", None)
    if isinstance(module, str) and module in sys.modules:
        fingerprint = module_fingerprint(module)
        if fingerprint is not None:
            return hashlib.sha256(f"{module}:{getattr(target, '__qualname__', '')}|{fingerprint}".encode()).hexdigest()
    try:
        text = inspect.getsource(target)
    except (OSError, TypeError):
        code = getattr(getattr(target, "__func__", target), "__code__", None)
        text = repr((code.co_code, code.co_consts, code.co_names)) if code is not None else repr(target)
    return hashlib.sha256(text.encode()).hexdigest()


def describe(value: Callable[..., Any] | Any) -> str:
    """``module:qualname`` of a function or class (of an instance's class)."""
    target = value if inspect.isfunction(value) or inspect.isclass(value) or inspect.ismethod(value) else type(value)
    return f"{getattr(target, '__module__', '?')}:{getattr(target, '__qualname__', type(target).__name__)}"


def importable_elsewhere(module: str) -> bool:
    """Whether a fresh process can import ``module`` by name (not ``__main__``, not a module without a file)."""
    if module in ("__main__", "__mp_main__", "builtins") or module.startswith("<"):
        return False
    return module_fingerprint(module) is not None or module in sys.builtin_module_names


def worker_paths() -> list[str]:
    """This process's import path for workers: the current directory first (as ``python -m`` has it), then the
    absolute ``sys.path`` entries (an empty entry means the current directory)."""
    paths = [os.getcwd()]
    for entry in sys.path:
        absolute = os.path.abspath(entry) if entry else os.getcwd()
        if absolute not in paths:
            paths.append(absolute)
    return paths


def use_paths(paths: list[str]) -> None:
    """Put ``paths`` (from ``worker_paths`` of the driver) in front of this process's ``sys.path``."""
    for entry in reversed(paths):
        if entry not in sys.path:
            sys.path.insert(0, entry)
