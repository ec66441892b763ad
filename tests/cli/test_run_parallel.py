"""``modelpkg run --batch FILE --parallel N``: the lines answered N at a time by one runner process loaded with
``n_parallel = N``, the records in input order and, but for the texts (a greedy answer decoded beside others
may tip at a near tie), the very records ``--parallel 1`` gives. Real model, real files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from capabilities import require_module
from modelpkg.cli.app import cli

EXAMPLES = Path(__file__).resolve().parents[2] / "Modelfile.examples"
PROMPTS = ["Here is a list of three primary colors:\n1.", "The capital of France is", "Once upon a time,",
           "def fibonacci(n):", "The three states of matter are", "My favourite food is",
           "To make a cup of tea, first", "The largest planet in the solar system"]
TIMES = ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration", "created_at")


@pytest.fixture(scope="module")
def env(tmp_path_factory, gemma_gguf):
    require_module("llama_cpp")
    root = tmp_path_factory.mktemp("run-parallel")
    folder = root / "examples"
    folder.mkdir()
    os.symlink(gemma_gguf, folder / "gemma3-270m-q4_k_m.gguf")
    variables = {"MODELPKG_HOME": str(root / "home"), "MODELPKG_CONFIG_DIR": str(root / "config"),
                 "MODELPKG_REGISTRY": None}
    (folder / "base.Modelfile").write_text((EXAMPLES / "gemma3-base.Modelfile").read_text())
    result = CliRunner().invoke(cli, ["create", "gemma3-base", "-f", str(folder / "base.Modelfile")], env=variables)
    assert result.exit_code == 0, result.output
    return variables


def batch(env, source: Path, *args: str):
    result = CliRunner().invoke(cli, ["run", "gemma3-base", "--local", "--batch", str(source), *args], env=env,
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()], result.stderr


@pytest.mark.model
def test_parallel_batch_answers_in_input_order_as_the_serial_one_does(env, tmp_path):
    lines = [json.dumps({"id": i, "prompt": p, "options": {"num_predict": 6 + i}}) for i, p in enumerate(PROMPTS)]
    lines.insert(3, "not JSON")
    source = tmp_path / "prompts.jsonl"
    source.write_text("\n".join(lines) + "\n")
    serial, _ = batch(env, source)
    parallel, stderr = batch(env, source, "--parallel", "4")
    assert [r["line"] for r in parallel] == list(range(1, len(lines) + 1))  # input order
    # the same records but for the texts: decoded beside others, a greedy answer may tip at a near tie
    # (README, "Serving many requests at once"; tests/runtime/test_batch.py checks each such difference)
    strip = [{k: v for k, v in r.items() if k not in (*TIMES, "response")} for r in serial]
    assert [{k: v for k, v in r.items() if k not in (*TIMES, "response")} for r in parallel] == strip
    assert all(r["response"] for r in parallel if "id" in r)
    assert [r.get("eval_count") for r in parallel if "id" in r] == [6 + i for i in range(len(PROMPTS))]
    assert "error" in parallel[3] and "9 request(s), 8 answered, 1 failed" in stderr
    assert sum(r["load_duration"] > 0 for r in parallel if "id" in r) == 1  # one runner, loaded once


def test_parallel_is_for_batch():
    result = CliRunner().invoke(cli, ["run", "gemma3-base", "hi", "--parallel", "2"])
    assert result.exit_code == 2 and "--parallel is for --batch" in result.output
