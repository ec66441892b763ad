"""The capability checks: a missing capability skips outside CI and fails under ``CI=true``, and every skip in
the suite goes through them (a new ``pytest.skip`` elsewhere would let CI pass with the test unrun)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import capabilities
from capabilities import missing, require_binary, require_module

TESTS = Path(__file__).resolve().parent
DIRECT_SKIP = re.compile(r"pytest\.(skip\(|importorskip\(|mark\.skip\b|mark\.skipif\b)")


@pytest.mark.parametrize("value", ["", "false", "0", "no"])
def test_outside_ci_a_missing_capability_skips_with_the_reason(monkeypatch, value):
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.skip.Exception, match="no frobnicator here"):
        missing("no frobnicator here")


@pytest.mark.parametrize("value", ["true", "TRUE", "1", "yes"])
def test_under_ci_a_missing_capability_fails(monkeypatch, value):
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.fail.Exception, match="no frobnicator here"):
        missing("no frobnicator here")


def test_a_missing_module_or_program_goes_through_missing(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"no_such_module_here cannot be imported .*pip install x"):
        require_module("no_such_module_here", "pip install x")
    with pytest.raises(pytest.fail.Exception, match="no-such-program-here is not installed: apt-get install y"):
        require_binary("no-such-program-here", "apt-get install y")
    monkeypatch.delenv("CI")
    assert require_module("json").dumps([]) == "[]"
    assert Path(require_binary("sh", "")).name == "sh"


def test_every_skip_in_the_suite_goes_through_the_capability_checks():
    direct = [f"{path.relative_to(TESTS)}:{number}: {line.strip()}"
              for path in sorted(TESTS.rglob("*.py")) if path not in (Path(capabilities.__file__), Path(__file__))
              for number, line in enumerate(path.read_text().splitlines(), 1) if DIRECT_SKIP.search(line)]
    assert direct == []


def test_a_missing_peer_goes_through_missing(monkeypatch, tmp_path):
    monkeypatch.setenv(capabilities.PEERS_ENV, str(tmp_path))
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"cosign v2\.6\.5 is not built in .*bash \.ci/peers"):
        capabilities.require_peer("cosign2")
    (tmp_path / "cosign2").write_text("#!/bin/sh\n")
    (tmp_path / "cosign2").chmod(0o755)
    assert capabilities.require_peer("cosign2") == str(tmp_path / "cosign2")
