"""Import paths and plugins: what they resolve to, and one line for each way they can be wrong."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from mtlscope.imports import ImportPathError, import_plugin, module_fingerprint, resolve_path, split_path


def test_an_import_path_resolves_to_its_attribute_dotted_attributes_too(project: Callable[[str, str], Path]) -> None:
    project("nets", "class Zoo:\n    @staticmethod\n    def small():\n        return 1\n\ndef make():\n    return 2\n")
    assert resolve_path("nets:make")() == 2
    assert resolve_path("nets:Zoo.small")() == 1


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("nets", "'nets' is not an import path; expected 'package.module:attribute'"),
        ("nets:", "is not an import path"),
        ("a b:c", "is not an import path"),
        ("nosuchmodule_xyz:make", "factory 'nosuchmodule_xyz:make': module 'nosuchmodule_xyz': no module named"),
        ("nets:missing", "factory 'nets:missing': nets has no attribute 'missing'"),
        ("nets:Zoo.missing", "factory 'nets:Zoo.missing': nets:Zoo has no attribute 'missing'"),
        ("nets:VALUE", "factory 'nets:VALUE': expected a callable, got a int"),
    ],
)
def test_bad_import_paths_are_one_line(project: Callable[[str, str], Path], path: str, expected: str) -> None:
    project("nets", "VALUE = 3\nclass Zoo:\n    pass\n")
    with pytest.raises(ImportPathError) as error:
        resolve_path(path)
    assert expected in str(error.value)
    assert "\n" not in str(error.value)


def test_an_error_inside_the_users_module_is_named_not_taken_for_a_missing_module(
    project: Callable[[str, str], Path],
) -> None:
    project("broken", "import nosuchdependency_xyz\n")
    project("raising", "raise RuntimeError('bad\\nthing')\n")
    with pytest.raises(ImportPathError, match=r"importing it failed: ModuleNotFoundError: No module named 'nosuch"):
        resolve_path("broken:make")
    with pytest.raises(ImportPathError) as error:
        import_plugin("raising")
    assert str(error.value) == "plugin 'raising': importing it failed: RuntimeError: bad"


def test_split_path_and_plugin_names() -> None:
    assert split_path("pkg.data:make_setting") == ("pkg.data", "make_setting")
    with pytest.raises(ImportPathError, match=r"plugin 3: expected a module name"):
        import_plugin(3)
    with pytest.raises(ImportPathError, match=r"expected a module name like 'package.module'"):
        import_plugin("not a module")


def test_module_fingerprint_covers_the_file_and_its_package(
    project: Callable[[str, str], Path], tmp_path: Path
) -> None:
    package = tmp_path / "lab"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text("def make():\n    return 1\n")
    import importlib
    import sys

    importlib.import_module("lab.nets")
    try:
        first = module_fingerprint("lab.nets")
        assert module_fingerprint("lab.nets") == first
        (package / "__init__.py").write_text("# changed\n")
        with pytest.raises(ImportPathError, match=r"module 'lab.nets' changed on disk since this process imported it"):
            module_fingerprint("lab.nets")
        importlib.reload(sys.modules["lab"])
        importlib.reload(sys.modules["lab.nets"])
        assert module_fingerprint("lab.nets") not in (None, first)
    finally:
        sys.modules.pop("lab.nets", None)
        sys.modules.pop("lab", None)
