"""What a test needs from the machine, checked in one place: outside CI a missing capability skips the test
with the reason; under ``CI=true`` it fails it, so a CI run cannot be green with those tests unrun.

The capabilities are the ones ``.ci/setup`` installs or the CI machine provides: the docker-registry binary,
htpasswd and skopeo (apt), llama-cpp-python, the Gemma package and the API clients (pip), a tmpfs mount
(root), a non-loopback address. Every test that would skip for one of them goes through ``missing``::

    llama_cpp = require_module("llama_cpp")          # in a test, a fixture, or at module level
    skopeo = require_binary("skopeo", "apt-get install skopeo")
    if address is None:
        missing("no non-loopback IPv4 address on this machine")

Must not import modelpkg (``registry_env`` uses it, and that must not).
"""

from __future__ import annotations

import importlib
import os
import shutil
from types import ModuleType
from typing import NoReturn

import pytest

CI_ENV = "CI"


def in_ci() -> bool:
    """``CI`` set to true (what GitHub Actions, GitLab and most CI systems set), 1 or yes."""
    return os.environ.get(CI_ENV, "").strip().lower() in {"true", "1", "yes"}


def missing(reason: str) -> NoReturn:
    """Skip the test (or, at module level, the module) for ``reason``; under CI fail it instead."""
    __tracebackhide__ = True  # the skip or failure is reported at the test's line, not this one
    if in_ci():
        pytest.fail(f"{reason} (CI={os.environ[CI_ENV]}: a missing capability fails the test instead of "
                    "skipping it)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def require_module(name: str, install: str = "pip install -e .[run,test]") -> ModuleType:
    """The imported module ``name``, or ``missing`` when it cannot be imported."""
    __tracebackhide__ = True
    try:
        return importlib.import_module(name)
    except ImportError as e:
        error = e
    missing(f"{name} cannot be imported ({error}): {install}")  # outside the except: no chained traceback


def require_binary(name: str, install: str) -> str:
    """The path of the program ``name`` on PATH, or ``missing``."""
    __tracebackhide__ = True
    path = shutil.which(name)
    if path is None:
        missing(f"{name} is not installed: {install}")
    return path
