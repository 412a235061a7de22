"""What some tests need that the machine may not have: programs (node with the npm clients of
tests/interop, caddy, systemd-analyze) and the packages a whole test module is built on.

On a developer's machine a missing prerequisite skips those tests, with the reason. In CI
(`CI=true`) it fails them: .ci/run installs every prerequisite there, so a missing one is a broken
build that would otherwise pass while testing less than it says.

    pytestmark = requires(reason_missing)        # None when the prerequisite is there
    @requires(program("systemd-analyze"))        # a program on PATH
    missing("caddy is not installed")            # inside a test or fixture: skip here, fail in CI
    if present(reason_missing): ...              # an optional part of a test (required in CI)
    schemathesis = module("schemathesis")        # a package a whole test module is built on

The marker is applied by `pytest_runtest_setup` in tests/conftest.py.
"""

from __future__ import annotations

import importlib
import os
import shutil
from types import ModuleType
from typing import NoReturn

import pytest

IN_CI = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def program(name: str, hint: str = ".ci/run installs it") -> str | None:
    """None when the program `name` is on PATH, else why the tests that run it cannot."""
    return None if shutil.which(name) else f"{name} is not installed ({hint})"


def module(name: str) -> ModuleType:
    """Import `name` for a test module built on it. Missing here: the module is skipped; in CI: the
    collection of that test module fails (its tests cannot even be defined without the package)."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        reason = f"the Python package {name} is not installed ({exc}); it is in pyproject's [test] extra"
        if IN_CI:
            pytest.fail(f"{reason} — a missing prerequisite fails the tests in CI (CI=true)", pytrace=False)
        pytest.skip(reason, allow_module_level=True)


def missing(reason: str) -> NoReturn:
    """Stop the current test because a prerequisite is missing: a skip here, a failure in CI."""
    if IN_CI:
        pytest.fail(f"{reason} — a missing prerequisite fails the tests in CI (CI=true)", pytrace=False)
    pytest.skip(reason)


def requires(reason_missing: str | None) -> pytest.MarkDecorator:
    """Marker for a test (or a module, as `pytestmark`) that needs a prerequisite; `reason_missing`
    says why it cannot run here, None when it can."""
    return pytest.mark.prerequisite(reason_missing)


def present(reason_missing: str | None) -> bool:
    """For an optional part of a test: True when the prerequisite is there; when it is missing,
    False here (the test leaves that part out) and a failure in CI."""
    if reason_missing is not None and IN_CI:
        missing(reason_missing)
    return reason_missing is None


def check(item: pytest.Item) -> None:
    """Before `item` is set up: fail it in CI when one of its `requires(...)` markers names a missing
    prerequisite; here, mark it skipped (pytest's skip marker, so the skip is reported at the test)."""
    for mark in item.iter_markers("prerequisite"):
        if mark.args and mark.args[0] is not None:
            if IN_CI:
                missing(mark.args[0])
            item.add_marker(pytest.mark.skip(reason=mark.args[0]))
