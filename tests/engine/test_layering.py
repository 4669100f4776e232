"""Architecture: the engine sits below the probes. The trainer's hook contract lives in ``mtlscope.engine.hooks``;
no module under ``mtlscope/engine`` may import ``mtlscope.probes`` (the probes implement the contract, the
engine only calls it)."""

from __future__ import annotations

import ast
from pathlib import Path

import mtlscope.engine

ENGINE = Path(mtlscope.engine.__file__).parent
FORBIDDEN = "mtlscope.probes"


def imported_modules(source: str, module: str) -> set[str]:
    """Every module an import statement of ``source`` names (relative imports resolved against ``module``)."""
    found: set[str] = set()
    package = module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{anchor}.{base}" if base else anchor
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def forbidden_imports(source: str, module: str) -> set[str]:
    return {name for name in imported_modules(source, module) if name == FORBIDDEN or name.startswith(FORBIDDEN + ".")}


def test_the_detector_sees_every_form_of_import() -> None:
    # The check below would pass vacuously if the detector missed an import form.
    assert forbidden_imports("from mtlscope.probes.base import Probe", "mtlscope.engine.trainer")
    assert forbidden_imports("import mtlscope.probes", "mtlscope.engine.trainer")
    assert forbidden_imports("from mtlscope import probes", "mtlscope.engine.trainer")
    assert forbidden_imports("def f():\n    from ..probes import base\n", "mtlscope.engine.trainer")
    assert not forbidden_imports("from mtlscope.engine.hooks import Probe", "mtlscope.engine.trainer")
    assert not forbidden_imports("from mtlscope.probesque import x", "mtlscope.engine.trainer")


def test_no_engine_module_imports_the_probes() -> None:
    modules = sorted(ENGINE.rglob("*.py"))
    assert len(modules) >= 10
    offenders = {
        path.name: sorted(forbidden_imports(path.read_text(), f"mtlscope.engine.{path.stem}"))
        for path in modules
        if forbidden_imports(path.read_text(), f"mtlscope.engine.{path.stem}")
    }
    assert offenders == {}


def test_the_contract_is_one_object_under_both_names() -> None:
    from mtlscope.engine import hooks
    from mtlscope.probes import base

    for name in ("Probe", "ProbeContext", "StepContext", "ProbeValues", "probe_mode"):
        assert getattr(base, name) is getattr(hooks, name)
