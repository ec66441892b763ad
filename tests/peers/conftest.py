"""Fixtures for the tests against the real peers (``.ci/peers`` builds them into ``.peers/bin``).

``peer_run(name, *args)`` runs a peer with a private ``HOME`` and ``DOCKER_CONFIG`` (no credentials or
settings of this machine's user leak in) and returns the CompletedProcess; ``modelpkg(*args)`` runs
modelpkg's CLI in-process on the test's store, as the other suites do.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from capabilities import require_peer

sys.path.append(str(Path(__file__).parent))  # ollama_env; appended: "conftest" must stay tests/conftest.py
PEER_TIMEOUT = 120


@pytest.fixture
def peer_home(tmp_path) -> Path:
    folder = tmp_path / "peer-home"
    (folder / ".docker").mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def peer_run(peer_home):
    """``peer_run("crane", "manifest", ref, env={...}, check=True, input=None)``: the finished process."""

    def run(name: str, *args: str, env: dict | None = None, check: bool = True, input: bytes | None = None,
            cwd: Path | None = None, timeout: float = PEER_TIMEOUT) -> subprocess.CompletedProcess:
        binary = require_peer(name)
        full = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(peer_home),
                "DOCKER_CONFIG": str(peer_home / ".docker"), "NO_PROXY": "*", "no_proxy": "*",
                **(env or {})}
        result = subprocess.run([binary, *args], env=full, input=input, capture_output=True, cwd=cwd,
                                timeout=timeout, check=False)
        if check and result.returncode != 0:
            pytest.fail(f"{name} {' '.join(args)} exited {result.returncode}:\n"
                        f"{result.stdout.decode(errors='replace')}\n{result.stderr.decode(errors='replace')}",
                        pytrace=False)
        return result

    return run


@pytest.fixture
def modelpkg(home):
    """modelpkg's CLI in-process on the test's store: ``modelpkg("pull", name)`` -> click's Result."""
    from modelpkg.cli.app import cli

    def run(*args: str, input: str | None = None):
        return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)

    return run
