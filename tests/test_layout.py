"""How the tests are laid out: a test file never imports another test file (nor conftest.py);
what tests share lives in modules of their own, named after what they hold (tests/builders.py,
tests/readers.py, tests/processes.py, ...), never `helpers`/`utils`."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
VAGUE_NAMES = ("helpers", "helper", "utils", "util", "misc", "common")


def imported_modules(source: str) -> list[str]:
    """Every module `source` imports, as dotted names (`from tests import x` counts as `tests.x`;
    a relative import as `.x`)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            found.append(base)
            found.extend(f"{base}.{alias.name}" if base != "." * node.level else base + alias.name
                         for alias in node.names)
    return found


def shared_test_code(module: str) -> bool:
    """A module a test file must not import: another test file or conftest.py."""
    last = module.rsplit(".", 1)[-1]
    inside_tests = module.startswith(("tests.", ".")) or module == "tests"
    return inside_tests and (last.startswith("test_") or last == "conftest")


def test_the_check_finds_imports_of_test_files():
    sources = {
        "from tests.test_workspaces import make_workspace": True,
        "from tests import test_workspaces": True,
        "import tests.test_workspaces": True,
        "from .test_workspaces import join": True,
        "from tests.conftest import register": True,
        "from tests.builders import register": False,
        "import test_helpers_outside_tests_folder": False,
    }
    for source, caught in sources.items():
        assert any(shared_test_code(m) for m in imported_modules(source)) is caught, source


def test_no_test_file_imports_another_test_file():
    offenders = []
    for path in sorted(TESTS.rglob("*.py")):
        if "node_modules" in path.parts:
            continue
        bad = sorted({m for m in imported_modules(path.read_text(encoding="utf-8")) if shared_test_code(m)})
        if bad:
            offenders.append(f"{path.relative_to(TESTS.parent)} imports {', '.join(bad)}")
    assert not offenders, ("move what tests share into a module of its own (tests/builders.py, tests/readers.py, "
                           "tests/processes.py, ...) or a fixture in tests/conftest.py:\n" + "\n".join(offenders))


def test_shared_modules_are_named_after_what_they_hold():
    vague = [p.name for p in TESTS.glob("*.py") if any(word in p.stem.split("_") for word in VAGUE_NAMES)]
    assert not vague, f"name these after what they hold: {vague}"
