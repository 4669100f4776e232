"""Every Python example in the README and docs/ runs (in a temporary directory)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)
EXAMPLES = [
    pytest.param(block, id=f"{path.relative_to(ROOT)}#{number}")
    for path in DOCS
    for number, block in enumerate(BLOCK.findall(path.read_text()))
    if "register(" not in block  # sketches of how to extend mtlscope, not runnable examples
]


@pytest.mark.parametrize("code", EXAMPLES)
def test_example_runs(code: str, tmp_path: Path) -> None:
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        exec(compile(code, "<docs example>", "exec"), {"__name__": "__docs__"})
    finally:
        os.chdir(cwd)


def test_examples_were_found() -> None:
    assert len(EXAMPLES) >= 3


METHOD_LINE = re.compile(r"`(method: \{[^`]*\})`|^\s*(method: \{.*\})\s*$", re.MULTILINE)
METHOD_EXAMPLES = sorted(
    {a or b for path in DOCS for a, b in METHOD_LINE.findall(path.read_text())} - {"method: {name: ..., <options>}"}
)


@pytest.mark.parametrize("line", METHOD_EXAMPLES)
def test_method_config_examples_build(line: str) -> None:
    import yaml

    from mtlscope.runs import validate_config
    from mtlscope.runs.launch import prepare

    method = yaml.safe_load(line)["method"]
    config = validate_config({"setting": {"name": "digits-mtl"}, "method": method}, line)
    assert prepare(config).method.name == method["name"]


def test_every_method_has_a_config_example() -> None:
    from mtlscope import methods

    named = {re.search(r"name: ([a-z_]+)", line).group(1) for line in METHOD_EXAMPLES}  # type: ignore[union-attr]
    assert set(methods.available()) <= named
