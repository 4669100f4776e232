"""Every Python example in the README and docs/ runs (in a temporary directory), and prints what the docs say it
prints; the user docs are self-contained (no reference to files outside the package and its docs)."""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"```(\w*)\n(.*?)```", re.DOTALL)


def examples(text: str) -> list[tuple[str, str | None]]:
    """The ``python`` blocks of a Markdown text with their stated output: the ``text`` block that comes next,
    when no other block and no heading lies between them (e.g. "prints:" and the output); else None."""
    blocks = list(FENCE.finditer(text))
    found = []
    for index, block in enumerate(blocks):
        if block.group(1) != "python":
            continue
        following = blocks[index + 1] if index + 1 < len(blocks) else None
        between = text[block.end() : following.start()] if following else ""
        stated = following is not None and following.group(1) == "text" and "\n#" not in between
        found.append((block.group(2), following.group(2) if stated and following else None))
    return found


EXAMPLES = [
    pytest.param(code, output, id=f"{path.relative_to(ROOT)}#{number}", marks=[pytest.mark.slow] if output else [])
    for path in DOCS
    for number, (code, output) in enumerate(examples(path.read_text()))
    if "register(" not in code  # sketches of how to extend mtlscope, not runnable examples
]


def _lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.strip().splitlines()]


@pytest.mark.parametrize(("code", "output"), EXAMPLES)
def test_example_runs(code: str, output: str | None, tmp_path: Path) -> None:
    cwd = os.getcwd()
    os.chdir(tmp_path)
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            exec(compile(code, "<docs example>", "exec"), {"__name__": "__docs__"})
    finally:
        os.chdir(cwd)
    if output is not None:
        assert _lines(printed.getvalue()) == _lines(output), "the example prints something else than its docs say"


def test_examples_were_found() -> None:
    assert len(EXAMPLES) >= 3
    readme = examples((ROOT / "README.md").read_text())
    assert any(output for _, output in readme), "the README's library example states its output"


def test_stated_outputs_are_found() -> None:
    text = (
        "```python\nprint(1)\n```\n\nprints:\n\n```text\n1\n```\n\n"
        "```python\nx = 1\n```\n\n## Next\n\n```text\n2\n```\n"  # a heading between: not its output
    )
    assert examples(text) == [("print(1)\n", "1\n"), ("x = 1\n", None)]


#: What user docs must not point to: the project's internal specification and files outside the repository.
OUTSIDE = re.compile(r"\.\./shared|shared/(?:SPEC|DESIGN|papers)|SPEC §|SPEC\.md|DESIGN\.md|\bthe SPEC\b|SPEC's")
USER_FILES = [
    *DOCS,
    *sorted((ROOT / "src").rglob("*.py")),
    *sorted((ROOT / "src").rglob("*.yaml")),
]


def test_user_docs_are_self_contained() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in USER_FILES
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if OUTSIDE.search(line)
    ]
    assert not found, "cite the paper and explain inline instead:\n" + "\n".join(found)


def test_the_self_containment_check_catches_references() -> None:
    for line in ("see ../shared/SPEC.md", "(SPEC §4.5)", "as the SPEC's list", "DESIGN.md contracts"):
        assert OUTSIDE.search(line), line
    for line in ("SPEC_KEYS = {}", "the shared/head ratio", "a shared encoder"):
        assert not OUTSIDE.search(line), line


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
