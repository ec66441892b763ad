"""Every Modelfile in Modelfile.examples/ parses, round-trips through format, and creates a model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from modelpkg.cli.app import cli
from modelpkg.core import modelfile as mf

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "Modelfile.examples").glob("*.Modelfile"))


def test_there_are_examples():
    assert len(EXAMPLES) >= 4


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_parses_and_round_trips(path):
    parsed = mf.parse(path.read_text())
    parsed.parameters()
    assert mf.parse(mf.format(parsed)) == parsed


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_creates(path, home, tmp_path, gemma_gguf):
    folder = tmp_path / "examples"
    folder.mkdir()
    (folder / path.name).write_text(path.read_text())
    from_value = mf.parse(path.read_text()).from_
    target = folder / from_value
    if from_value.endswith(".gguf"):
        os.symlink(gemma_gguf, target)
    result = CliRunner().invoke(cli, ["create", path.stem, "-f", str(folder / path.name)])
    assert result.exit_code == 0, result.output
    shown = json.loads(CliRunner().invoke(cli, ["show", path.stem, "--json"]).stdout)
    assert shown["architecture"] == "gemma3"
