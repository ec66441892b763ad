"""Ollama generating (``.peers/bin/ollama-0.24``: v0.24.0, the last release with its in-process engine; newer
ones run models through a llama-server their CMake build downloads) with what modelpkg wrote, and modelpkg
generating with what Ollama wrote: Gemma 3 270M both ways through the loopback registry, and the greedy
answers of the two compared.

Ollama pulls through ``RedirectFront`` (ollama_env.py): it downloads a blob only after a redirect.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import requests
from ollama_env import Ollama, RedirectFront, check, write_modelfile

from capabilities import require_module

pytestmark = [pytest.mark.registry, pytest.mark.timeout(900)]

# Gemma's chat turns, in Go template form; no SYSTEM or MESSAGE: the two are compared on the bare turn
TEMPLATE = ("{{ range .Messages }}<start_of_turn>{{ if eq .Role \"user\" }}user{{ else }}model{{ end }}\n"
            "{{ .Content }}<end_of_turn>\n{{ end }}<start_of_turn>model\n")
PROMPT = "Name the three primary colors."
GREEDY = {"temperature": "0", "top_k": "1", "seed": "42", "num_ctx": "512", "num_predict": "24",
          "repeat_penalty": "1"}


def modelfile_text(gguf: Path) -> str:
    lines = [f"FROM {gguf}", f'TEMPLATE """{TEMPLATE}"""', 'PARAMETER stop "<end_of_turn>"']
    lines += [f"PARAMETER {key} {value}" for key, value in GREEDY.items()]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def ollama(tmp_path_factory):
    server = Ollama("ollama-0.24", tmp_path_factory.mktemp("ollama-0.24"))
    yield server
    server.stop()


@pytest.fixture
def modelfile(tmp_path, gemma_gguf) -> Path:
    return write_modelfile(tmp_path, modelfile_text(gemma_gguf))


def answer_of(ollama: Ollama, model: str, prompt: str = PROMPT) -> str:
    """``ollama run MODEL PROMPT``'s answer (stdout not a terminal: the text and a newline)."""
    return check(ollama.cli("run", model, prompt, timeout=600), f"ollama run {model}").strip()


def pushed_and_pulled_into_ollama(registry, ollama, modelfile, modelpkg, repo: str) -> tuple[str, int]:
    """modelpkg creates and pushes (``--format ollama``); Ollama 0.24 pulls it through the redirecting
    front; returns the name Ollama knows it by and how many blob GETs were redirected (none for blobs
    Ollama already has)."""
    name = f"{registry.host}/{repo}"
    created = modelpkg("create", name, "-f", str(modelfile))
    assert created.exit_code == 0, created.output
    pushed = modelpkg("push", "--format", "ollama", name)
    assert pushed.exit_code == 0, pushed.output
    front = RedirectFront(registry.host)
    try:
        via_front = f"{front.host}/{repo}"
        check(ollama.cli("pull", "--insecure", via_front), "ollama pull")
    finally:
        front.close()
    return via_front, front.redirected


def test_ollama_0_24_runs_what_modelpkg_pushed(registry, ollama, modelfile, modelpkg):
    ollama.clear()  # every blob comes through the front
    there, redirected = pushed_and_pulled_into_ollama(registry, ollama, modelfile, modelpkg, "peers/run-in-ollama:v1")
    assert redirected >= 1
    shown = check(ollama.cli("show", "--template", there), "ollama show --template")
    assert shown.rstrip("\n") == TEMPLATE.rstrip("\n")
    answer = answer_of(ollama, there)
    assert re.search(r"[A-Za-z]{3}", answer), f"ollama run answered {answer!r}"
    # v0.24.0 generated in-process: gemma3 runs on its own Go engine (its OllamaEngineRequired list)
    assert "starting ollama engine" in ollama.log()


def test_modelpkg_runs_what_ollama_0_24_created_and_pushed(registry, ollama, modelfile, modelpkg):
    check(ollama.cli("create", "peers24-created", "-f", str(modelfile), timeout=600), "ollama create")
    name = f"{registry.host}/peers/from-ollama-0.24:v1"
    check(ollama.cli("cp", "peers24-created", name), "ollama cp")
    check(ollama.cli("push", "--insecure", name, timeout=600), "ollama push")
    pulled = modelpkg("pull", name)
    assert pulled.exit_code == 0, pulled.output
    shown = json.loads(modelpkg("show", name, "--json").stdout)
    assert shown["template"] == TEMPLATE
    assert shown["parameters"]["temperature"] == 0 and shown["parameters"]["num_ctx"] == 512
    assert shown["parameters"]["stop"] == ["<end_of_turn>"]
    require_module("llama_cpp")
    answer = modelpkg("run", name, PROMPT)
    assert answer.exit_code == 0, answer.output
    assert re.search(r"[A-Za-z]{3}", answer.stdout), f"modelpkg run answered {answer.stdout!r}"


@pytest.fixture
def greedy_pair(registry, ollama, modelfile, modelpkg):
    """The same model in both (modelpkg's push, pulled by Ollama 0.24) and both answers' JSON to PROMPT."""
    require_module("llama_cpp")
    there, _ = pushed_and_pulled_into_ollama(registry, ollama, modelfile, modelpkg, "peers/greedy:v1")
    theirs = requests.post(f"{ollama.url}/api/generate", json={"model": there, "prompt": PROMPT, "stream": False},
                           timeout=600)
    assert theirs.status_code == 200, theirs.text
    ours = modelpkg("run", f"{registry.host}/peers/greedy:v1", PROMPT, "--format", "json")
    assert ours.exit_code == 0, ours.output
    return json.loads(ours.stdout), theirs.json(), answer_of(ollama, there)


def test_modelpkg_and_ollama_0_24_render_the_same_prompt_and_start_alike(greedy_pair):
    ours, theirs, their_cli = greedy_pair
    assert their_cli == theirs["response"].strip()  # `ollama run` is /api/generate with the model's options
    assert ours["prompt_eval_count"] == theirs["prompt_eval_count"]  # the same template, tokens and BOS
    assert ours["response"].split("\n")[0] == theirs["response"].split("\n")[0]


@pytest.mark.xfail(reason="the engines differ: Ollama v0.24.0 runs gemma3 on its own Go engine (ollamarunner, "
                          "flash attention on), not llama.cpp's; greedy answers of Gemma 3 270M part at a near-tie "
                          "after about ten tokens (llama.cpp itself gives a third text with flash attention on)",
                   strict=False)
def test_greedy_answers_of_modelpkg_and_ollama_0_24_are_equal(greedy_pair):
    ours, theirs, _ = greedy_pair
    assert ours["response"].strip() == theirs["response"].strip()
