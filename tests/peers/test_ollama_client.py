"""The real ``ollama`` CLI (the newest release served) as a client of ``modelpkg serve``: ``OLLAMA_HOST``
pointed at modelpkg's server, the commands Ollama's users type work as they do against Ollama."""

from __future__ import annotations

import os
import subprocess
import threading

import pytest

from capabilities import require_module, require_peer

pytestmark = [pytest.mark.registry, pytest.mark.timeout(300)]

MODELFILE = ('FROM {gguf}\nPARAMETER temperature 0\nPARAMETER num_predict 8\nPARAMETER num_ctx 512\n'
             'SYSTEM """Be brief."""\n')


@pytest.fixture(scope="module")
def served(tmp_path_factory, gemma_gguf):
    """``modelpkg serve`` (in-process, on a free port) over a store with one model, ``base``."""
    require_module("llama_cpp")
    from modelpkg.base import config
    from modelpkg.ops.create import create
    from modelpkg.server.app import make_server
    from modelpkg.store import Store

    root = tmp_path_factory.mktemp("serve-for-ollama")
    mp = pytest.MonkeyPatch()
    mp.setenv("MODELPKG_HOME", str(root / "home"))
    mp.setenv("MODELPKG_CONFIG_DIR", str(root / "config"))
    mp.delenv("MODELPKG_REGISTRY", raising=False)
    store = Store(config.home())
    create(store, config.reference("base"), MODELFILE.format(gguf=gemma_gguf), root,
           resolve_name=config.reference)
    server = make_server(store, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.close()
    mp.undo()


@pytest.fixture
def ollama_cli(served, tmp_path):
    binary = require_peer("ollama")
    home = tmp_path / "ollama-home"
    home.mkdir()

    def run(*args: str, input: bytes | None = None, check: bool = True) -> str:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
               "OLLAMA_HOST": served.url, "NO_PROXY": "*", "no_proxy": "*"}
        result = subprocess.run([binary, *args], env=env, input=input, capture_output=True, timeout=240,
                                check=False)
        out = result.stdout.decode(errors="replace")
        if check:
            assert result.returncode == 0, f"ollama {' '.join(args)}: {out}\n{result.stderr.decode(errors='replace')}"
        return out if check else result

    return run


def test_list_show(ollama_cli):
    listed = ollama_cli("list")
    assert listed.splitlines()[0].split()[:2] == ["NAME", "ID"]
    assert any(line.startswith("base:latest") for line in listed.splitlines()[1:])
    shown = ollama_cli("show", "base")
    assert "gemma3" in shown and "parameters" in shown.lower()
    modelfile = ollama_cli("show", "--modelfile", "base")
    assert "PARAMETER temperature 0" in modelfile and "Be brief." in modelfile
    assert ollama_cli("show", "--system", "base").strip() == "Be brief."
    assert "num_ctx" in ollama_cli("show", "--parameters", "base")


def test_run_one_shot_and_piped_then_ps_and_stop(ollama_cli):
    answer = ollama_cli("run", "base", "The capital of France is")
    assert answer.strip()
    piped = ollama_cli("run", "base", input=b"The capital of France is")
    assert piped.strip() == answer.strip()  # greedy: the same text
    ps = ollama_cli("ps")
    assert ps.splitlines()[0].split()[:2] == ["NAME", "ID"] and "base:latest" in ps
    ollama_cli("stop", "base")
    assert "base:latest" not in ollama_cli("ps")


def test_cp_rm(ollama_cli):
    ollama_cli("cp", "base", "acme/copy:v1")
    assert any(line.startswith("acme/copy:v1") for line in ollama_cli("list").splitlines())
    ollama_cli("rm", "acme/copy:v1")
    assert not any(line.startswith("acme/copy:v1") for line in ollama_cli("list").splitlines())
    missing = ollama_cli("rm", "acme/never-there:v1", check=False)
    assert missing.returncode != 0 and b"not found" in missing.stderr


def test_create_from_a_modelfile(ollama_cli, gemma_gguf, tmp_path):
    path = tmp_path / "Modelfile"
    path.write_text(f"FROM {gemma_gguf}\nPARAMETER temperature 0.5\nSYSTEM You are a pirate.\n")
    ollama_cli("create", "pirate", "-f", str(path))
    assert ollama_cli("show", "--system", "pirate").strip() == "You are a pirate."
    path.write_text("FROM base\nSYSTEM Derived.\n")
    ollama_cli("create", "derived", "-f", str(path))
    assert ollama_cli("show", "--system", "derived").strip() == "Derived."
    assert "PARAMETER temperature 0" in ollama_cli("show", "--modelfile", "derived")


def test_push_and_pull_through_modelpkg_serve(ollama_cli, registry):
    name = f"{registry.host}/peers/served:v1"
    ollama_cli("cp", "base", name)
    ollama_cli("push", "--insecure", name)
    ollama_cli("rm", name)
    ollama_cli("pull", "--insecure", name)
    assert any(line.startswith(name) for line in ollama_cli("list").splitlines())
    assert "Be brief." in ollama_cli("show", "--modelfile", name)
