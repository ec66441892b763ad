"""Every foundation command through click's runner, with a temporary MODELPKG_HOME."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from modelpkg.cli.app import cli


@pytest.fixture
def run(home):
    runner = CliRunner()

    def invoke(*args, input=None):
        return runner.invoke(cli, list(args), input=input, catch_exceptions=False)

    return invoke


@pytest.fixture
def modelfile(tiny_gguf):
    path = tiny_gguf.parent / "Modelfile"
    path.write_text(
        "FROM ./tiny.gguf\n"
        'TEMPLATE """{{ if .System }}<s>{{ .System }}</s>{{ end }}{{ .Prompt }}"""\n'
        "SYSTEM You are terse.\n"
        "PARAMETER temperature 0.2\n"
        "PARAMETER stop <end>\n"
        "PARAMETER stop </s>\n"
        "PARAMETER num_ctx 128\n"
        "LICENSE MIT\n"
        "MESSAGE user hi\n"
        "MESSAGE assistant hello\n"
    )
    return path


def test_create_list_show_rm(run, modelfile):
    result = run("create", "tiny", "-f", str(modelfile))
    assert result.exit_code == 0, result.output
    listed = json.loads(run("list", "--json").stdout)
    assert [m["name"] for m in listed] == ["tiny:latest"]
    assert listed[0]["size"] > 0 and len(listed[0]["id"]) == 12
    table = run("list").stdout
    assert table.splitlines()[0].split() == ["NAME", "ID", "SIZE", "MODIFIED"]
    shown = json.loads(run("show", "tiny", "--json").stdout)
    assert shown["name"] == "tiny:latest"
    assert shown["parameters"] == {"temperature": 0.2, "stop": ["<end>", "</s>"], "num_ctx": 128}
    assert shown["system"] == "You are terse."
    assert shown["template"] == "{{ if .System }}<s>{{ .System }}</s>{{ end }}{{ .Prompt }}"
    assert shown["license"] == "MIT"
    assert shown["messages"] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert shown["config"]["config"]["format"] == "gguf"
    assert shown["context_length"] == 256  # recorded on the weights layer at create time
    assert shown["layers"][0]["annotations"]["dev.modelpkg.context_length"] == "256"
    assert [layer["annotations"]["dev.modelpkg.role"] for layer in shown["layers"]] == [
        "model", "template", "system", "params", "messages", "license"]
    assert run("show", "tiny", "--system").stdout == "You are terse.\n"
    assert "temperature" in run("show", "tiny", "--parameters").stdout
    assert run("rm", "tiny").exit_code == 0
    assert json.loads(run("list", "--json").stdout) == []


def test_show_modelfile_recreates_the_model(run, modelfile, home):
    run("create", "tiny", "-f", str(modelfile))
    text = run("show", "tiny", "--modelfile").stdout
    recreated = modelfile.parent / "Recreated"
    recreated.write_text(text)
    assert run("create", "copy", "-f", str(recreated)).exit_code == 0
    a, b = (json.loads(run("show", n, "--json").stdout) for n in ("tiny", "copy"))
    for key in ("parameters", "template", "system", "license", "messages", "layers"):
        assert a[key] == b[key], key


def test_create_from_a_model_in_the_store_inherits_and_overrides(run, modelfile, tmp_path):
    run("create", "base", "-f", str(modelfile))
    child = tmp_path / "Child"
    child.write_text("FROM base\nSYSTEM Be verbose.\nPARAMETER stop <x>\nPARAMETER top_k 5\n")
    assert run("create", "child", "-f", str(child)).exit_code == 0
    shown = json.loads(run("show", "child", "--json").stdout)
    assert shown["system"] == "Be verbose."
    assert shown["parameters"] == {"temperature": 0.2, "stop": ["<x>"], "num_ctx": 128, "top_k": 5}
    base = json.loads(run("show", "base", "--json").stdout)
    assert shown["template"] == base["template"] and shown["messages"] == base["messages"]
    assert shown["layers"][0]["digest"] == base["layers"][0]["digest"]  # the weights are shared


def test_cp_shares_blobs(run, modelfile):
    run("create", "tiny", "-f", str(modelfile))
    assert run("cp", "tiny", "localhost:5000/acme/tiny:v1").exit_code == 0
    names = sorted(m["name"] for m in json.loads(run("list", "--json").stdout))
    assert names == ["localhost:5000/acme/tiny:v1", "tiny:latest"]
    ids = {m["digest"] for m in json.loads(run("list", "--json").stdout)}
    assert len(ids) == 1


def test_gc_dry_run_and_verify(run, modelfile, home):
    run("create", "tiny", "-f", str(modelfile))
    (home / "blobs" / "sha256" / ("f" * 64)).write_bytes(b"stray")
    plan = json.loads(run("gc", "--grace", "0", "--dry-run", "--json").stdout)
    assert plan["dry_run"] and [b["digest"] for b in plan["blobs"]] == ["sha256:" + "f" * 64]
    result = run("verify")
    assert result.exit_code == 5  # the stray file's content does not match its name
    assert "failed verification" in result.stderr
    assert run("gc", "--grace", "0").exit_code == 0
    assert run("verify").exit_code == 0
    assert run("verify", "tiny", "--json").exit_code == 0


@pytest.mark.parametrize("args, code, message", [
    (("show", "missing"), 4, "model not found: registry.ollama.ai/library/missing:latest"),
    (("rm", "missing"), 4, "model not found"),
    (("show", "Bad"), 3, "must be lowercase"),
    (("create", "x", "-f", "/nonexistent/Modelfile"), 4, "Modelfile not found"),
    (("gc", "--grace", "soon"), 2, "invalid duration"),
])
def test_errors_are_one_line_with_an_exit_code(run, args, code, message):
    result = run(*args)
    assert result.exit_code == code
    assert result.stderr.startswith("Error: ") and message in result.stderr
    assert "Traceback" not in result.output + result.stderr


@pytest.mark.parametrize("body, message", [
    ("FROM ./missing.gguf\n", "file not found"),
    ("FROM ./Modelfile\n", "not a GGUF file"),
    ("FROM ./tiny.gguf\nPARAMETER temperature hot\n", "temperature"),
    ("FROM ./tiny.gguf\nPARAMETER bogus 1\n", "unknown parameter 'bogus'"),
    ("FROM ./tiny.gguf\nFOO bar\n", "line 2"),
    ('FROM ./tiny.gguf\nTEMPLATE "{{ if .System }}"\n', "TEMPLATE does not parse"),
    ("FROM nosuchmodel\n", "no model nosuchmodel:latest in the store"),
    ("PARAMETER temperature 1\n", "no FROM line"),
])
def test_bad_modelfiles_leave_the_store_as_it_was(run, tiny_gguf, home, body, message):
    path = tiny_gguf.parent / "Modelfile"
    path.write_text(body)
    result = run("create", "x", "-f", str(path))
    assert result.exit_code != 0
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert json.loads(run("list", "--json").stdout) == []


def test_python_dash_m_and_fast_start(home):
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "modelpkg", "list"], capture_output=True,
                         text=True, env={**os.environ, "MODELPKG_HOME": str(home)}, timeout=60)
    assert out.returncode == 0
    heavy = {"requests", "numpy", "gguf", "llama_cpp", "urllib3"}
    imported = {line.split("|")[-1].strip().split(".")[0] for line in out.stderr.splitlines() if "|" in line}
    assert not heavy & imported


def test_help_has_examples(run):
    for command in ("create", "list", "show", "rm", "cp", "gc", "verify"):
        assert "Examples:" in run(command, "--help").stdout


def test_link_hard_links_instead_of_copying(run, tiny_gguf, home):
    path = tiny_gguf.parent / "Modelfile"
    path.write_text("FROM ./tiny.gguf\n")
    assert run("create", "linked", "-f", str(path), "--link").exit_code == 0
    digest = json.loads(run("show", "linked", "--json").stdout)["layers"][0]["digest"].split(":")[1]
    assert os.stat(home / "blobs" / "sha256" / digest).st_ino == os.stat(tiny_gguf).st_ino
    assert run("create", "copied", "-f", str(path)).exit_code == 0  # same content: the blob is reused
    assert run("verify", "linked").exit_code == 0


def test_create_from_a_folder_with_one_gguf(run, tiny_gguf, tmp_path):
    path = tmp_path / "Modelfile"
    path.write_text(f"FROM {tiny_gguf.parent}\n")
    assert run("create", "fromdir", "-f", str(path)).exit_code == 0
    (tiny_gguf.parent / "second.gguf").write_bytes(tiny_gguf.read_bytes())
    result = run("create", "fromdir2", "-f", str(path))
    assert result.exit_code == 3 and "holds 2 .gguf files" in result.stderr
