"""The real Ollama (``.peers/bin/ollama``, v0.34.0, the newest release served) against what modelpkg writes
and reads: registry pushes both ways, ``ollama create``'s blob digests, and Ollama's models folder both ways.
It cannot run a model here (since v0.30 it runs them through a llama-server its CMake build downloads), so
nothing here asks it to generate: test_ollama_run.py does that with v0.24.0 (``.peers/bin/ollama-0.24``).

Ollama pulls through ``RedirectFront`` (ollama_env.py): it downloads a blob only after a redirect.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ollama_env import Ollama, RedirectFront, check, write_modelfile

from capabilities import require_module

pytestmark = [pytest.mark.registry, pytest.mark.timeout(600)]

TEMPLATE = ("{{ if .System }}<start_of_turn>user\n{{ .System }}<end_of_turn>\n{{ end }}"
            "{{ range .Messages }}<start_of_turn>{{ if eq .Role \"user\" }}user{{ else }}model{{ end }}\n"
            "{{ .Content }}<end_of_turn>\n{{ end }}<start_of_turn>model\n")
SYSTEM = "You answer in one short sentence."
LICENSE = "Gemma Terms of Use (test copy)"


def modelfile_text(gguf: Path) -> str:
    return (f"FROM {gguf}\n"
            f'TEMPLATE """{TEMPLATE}"""\n'
            f'SYSTEM """{SYSTEM}"""\n'
            "PARAMETER temperature 0\n"
            "PARAMETER num_ctx 512\n"
            'PARAMETER stop "<end_of_turn>"\n'
            "PARAMETER top_k 1\n"
            "PARAMETER num_predict 16\n"
            "MESSAGE user Hello\n"
            "MESSAGE assistant Hi there.\n"
            f'LICENSE """{LICENSE}"""\n')


@pytest.fixture(scope="module")
def ollama(tmp_path_factory):
    server = Ollama("ollama", tmp_path_factory.mktemp("ollama"))
    yield server
    server.stop()


@pytest.fixture
def modelfile(tmp_path, gemma_gguf) -> Path:
    return write_modelfile(tmp_path, modelfile_text(gemma_gguf))


def ollama_manifest(models: Path, host: str, namespace: str, name: str, tag: str) -> dict:
    return json.loads((models / "manifests" / host / namespace / name / tag).read_text())


def layer_digests(manifest: dict) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for layer in manifest["layers"]:
        out.setdefault(layer["mediaType"], []).append(layer["digest"])
    return out


def pulled_into_ollama(registry, ollama, modelfile, modelpkg, repo: str) -> str:
    """modelpkg creates and pushes (``--format ollama``), Ollama pulls it through a redirecting front;
    returns the name Ollama knows it by."""
    name = f"{registry.host}/{repo}"
    assert modelpkg("create", name, "-f", str(modelfile)).exit_code == 0
    assert modelpkg("push", "--format", "ollama", name).exit_code == 0
    front = RedirectFront(registry.host)
    try:
        via_front = f"{front.host}/{repo}"
        check(ollama.cli("pull", "--insecure", via_front), "ollama pull")
    finally:
        front.close()
    return via_front


def test_ollama_pulls_what_modelpkg_pushed_in_ollamas_format(registry, ollama, modelfile, modelpkg):
    name = f"{registry.host}/peers/gemma-out:v1"
    assert modelpkg("create", name, "-f", str(modelfile)).exit_code == 0
    pushed = modelpkg("push", "--format", "ollama", name)
    assert pushed.exit_code == 0, pushed.stderr

    front = RedirectFront(registry.host)
    try:
        via_front = f"{front.host}/peers/gemma-out:v1"
        check(ollama.cli("pull", "--insecure", via_front), "ollama pull")
        assert front.redirected >= 1  # each blob came through the redirect, as from a CDN
        assert via_front.replace(":v1", "") in check(ollama.cli("list"), "ollama list")
        shown = check(ollama.cli("show", "--modelfile", via_front), "ollama show --modelfile")
        assert f'TEMPLATE """{TEMPLATE}"""' in shown
        assert f"SYSTEM {SYSTEM}" in shown or f'SYSTEM """{SYSTEM}"""' in shown
        assert "PARAMETER temperature 0" in shown and "PARAMETER num_ctx 512" in shown
        assert 'PARAMETER stop <end_of_turn>' in shown or 'PARAMETER stop "<end_of_turn>"' in shown
        assert "MESSAGE user Hello" in shown and "MESSAGE assistant Hi there." in shown
        assert LICENSE in shown
        assert check(ollama.cli("show", "--template", via_front), "show --template").rstrip("\n") == \
            TEMPLATE.rstrip("\n")
        assert check(ollama.cli("show", "--system", via_front), "show --system").strip() == SYSTEM
        # what Ollama stored is exactly what modelpkg pushed
        host, repo = via_front.split("/", 1)
        stored = ollama_manifest(ollama.models, host, *repo.replace(":", "/").split("/"))
        raw = modelpkg("show", name, "--json")
        assert raw.exit_code == 0
    finally:
        front.close()
    assert stored["config"]["mediaType"] == "application/vnd.docker.container.image.v1+json"
    assert {"application/vnd.ollama.image.model", "application/vnd.ollama.image.template",
            "application/vnd.ollama.image.system", "application/vnd.ollama.image.params",
            "application/vnd.ollama.image.messages",
            "application/vnd.ollama.image.license"} <= set(layer_digests(stored))


def from_model(modelfile: Path, model: str) -> Path:
    """The same Modelfile, FROM a model Ollama has instead of the GGUF: Ollama v0.34's ``create`` from a GGUF
    needs the llama-quantize its CMake build downloads; from a model it does not."""
    text = modelfile.read_text()
    path = modelfile.with_name("Modelfile.from-model")
    path.write_text(f"FROM {model}\n" + text.split("\n", 1)[1])
    return path


def test_ollama_create_gives_the_blob_digests_modelpkg_pushes(registry, ollama, modelfile, modelpkg, peer_run,
                                                              tiny_gguf, tmp_path):
    # the weights reach Ollama without any of the Modelfile's other layers: a bare GGUF model, pulled
    bare = tmp_path / "bare" / "Modelfile"
    bare.parent.mkdir()
    bare.write_text(f"FROM {modelfile.read_text().split(chr(10), 1)[0].split(' ', 1)[1]}\n")
    there = pulled_into_ollama(registry, ollama, bare, modelpkg, "peers/bare:v1")
    check(ollama.cli("create", "peers-create", "-f", str(from_model(modelfile, there))), "ollama create")
    theirs = ollama_manifest(ollama.models, "registry.ollama.ai", "library", "peers-create", "latest")

    name = f"{registry.host}/peers/gemma-digests:v1"
    assert modelpkg("create", name, "-f", str(modelfile)).exit_code == 0
    assert modelpkg("push", "--format", "ollama", name).exit_code == 0
    ours = json.loads(peer_run("crane", "manifest", "--insecure", name).stdout)
    assert layer_digests(ours) == layer_digests(theirs)
    assert [layer["mediaType"] for layer in ours["layers"]] == [layer["mediaType"] for layer in theirs["layers"]]


def test_modelpkg_pulls_what_ollama_pushed(registry, ollama, modelfile, modelpkg):
    there = pulled_into_ollama(registry, ollama, modelfile, modelpkg, "peers/to-ollama:v1")
    assert modelpkg("rm", f"{registry.host}/peers/to-ollama:v1").exit_code == 0
    name = f"{registry.host}/peers/from-ollama:v1"
    check(ollama.cli("cp", there, name), "ollama cp")
    check(ollama.cli("push", "--insecure", name), "ollama push")
    pulled = modelpkg("pull", name)
    assert pulled.exit_code == 0, pulled.stderr
    shown = json.loads(modelpkg("show", name, "--json").stdout)
    assert shown["template"] == TEMPLATE
    assert shown["system"] == SYSTEM
    assert shown["parameters"]["temperature"] == 0 and shown["parameters"]["num_ctx"] == 512
    assert shown["parameters"]["stop"] == ["<end_of_turn>"]
    assert [m["content"] for m in shown["messages"]] == ["Hello", "Hi there."]
    assert shown["license"] == [LICENSE] or shown["license"] == LICENSE
    require_module("llama_cpp")
    answer = modelpkg("run", name, "--num-predict", "8", "Say hello.")
    assert answer.exit_code == 0, answer.stderr
    assert answer.stdout.strip()


def test_import_ollama_of_what_ollama_pulled_and_export_ollama_back(registry, ollama, modelfile, modelpkg):
    there = pulled_into_ollama(registry, ollama, modelfile, modelpkg, "peers/import:v1")
    assert modelpkg("rm", f"{registry.host}/peers/import:v1").exit_code == 0
    imported = modelpkg("import-ollama", "--models", str(ollama.models), there, "--json")
    assert imported.exit_code == 0, imported.stderr
    assert modelpkg("cp", there, "peers-import").exit_code == 0
    shown = json.loads(modelpkg("show", "peers-import", "--json").stdout)
    assert shown["template"] == TEMPLATE and shown["system"] == SYSTEM
    assert modelpkg("verify", "peers-import").exit_code == 0

    # export-ollama: a model made by modelpkg appears in the real Ollama
    assert modelpkg("cp", "peers-import", "peers-exported").exit_code == 0
    exported = modelpkg("export-ollama", "peers-exported", "--models", str(ollama.models), "--as",
                        "acme/peers-exported:v2")
    assert exported.exit_code == 0, exported.stderr
    listed = check(ollama.cli("list"), "ollama list")
    assert "acme/peers-exported:v2" in listed
    shown = check(ollama.cli("show", "--modelfile", "acme/peers-exported:v2"), "ollama show")
    assert f'TEMPLATE """{TEMPLATE}"""' in shown and "MESSAGE user Hello" in shown
    check(ollama.cli("rm", "acme/peers-exported:v2"), "ollama rm")


def test_import_ollama_of_what_ollama_created(registry, ollama, modelfile, modelpkg, tmp_path):
    bare = tmp_path / "bare" / "Modelfile"
    bare.parent.mkdir()
    bare.write_text(f"FROM {modelfile.read_text().split(chr(10), 1)[0].split(' ', 1)[1]}\n")
    there = pulled_into_ollama(registry, ollama, bare, modelpkg, "peers/bare-import:v1")
    check(ollama.cli("create", "peers-created", "-f", str(from_model(modelfile, there))), "ollama create")
    imported = modelpkg("import-ollama", "--models", str(ollama.models), "peers-created")
    assert imported.exit_code == 0, imported.stderr
    shown = json.loads(modelpkg("show", "peers-created", "--json").stdout)
    assert shown["template"] == TEMPLATE and shown["system"] == SYSTEM
    assert [m["content"] for m in shown["messages"]] == ["Hello", "Hi there."]
    assert modelpkg("verify", "peers-created").exit_code == 0
