"""What Ollama accepts, modelpkg accepts: the exact requests of LangChain, LlamaIndex and Ollama's own docs,
``raw``, ``/api/show``'s ``model_info`` and ``capabilities``, full digests in progress, ``/api/version``,
thinking and ``suffix`` -- over a real server with the real Gemma weights behind TEMPLATEs of our own.
"""

from __future__ import annotations

import json
import logging

import pytest

from capabilities import require_module
from modelpkg import __version__
from modelpkg.core.errors import InvalidInputError
from modelpkg.ops.chat import request_options

httpx = require_module("httpx")
ollama = require_module("ollama")

BASE, THINKER, FILLER = "base", "thinker", "filler"
FAST = {"temperature": 0, "num_predict": 4}
# a thinking template as Ollama's library writes them: .Thinking of past turns between tags, and the prompt
# opened with the tag when thinking is on
THINKING_TEMPLATE = """{{- if .IsThinkSet }}level={{ .ThinkLevel }}
{{ end }}{{- range .Messages }}<|{{ .Role }}|>
{{- if and (eq .Role "assistant") .Thinking }}<think>{{ .Thinking }}</think>{{ end }}{{ .Content }}
{{ end }}<|assistant|>{{ if .Think }}<think>{{ end }}"""
# Ollama's TestExecuteWithSuffix template
SUFFIX_TEMPLATE = """{{- if .Suffix }}<PRE> {{ .Prompt }} <SUF>{{ .Suffix }} <MID>
{{- else }}{{ .Prompt }}
{{- end }}"""


def test_request_options_read_as_ollamas_from_map():
    typed, ignored = request_options({"temperature": None, "mirostat": 1, "penalize_newline": True, "bogus": "x",
                                      "num_predict": 5.7, "top_p": 1, "stop": ["a"], "use_mmap": None})
    assert typed == {"num_predict": 5, "top_p": 1.0, "stop": ["a"]}
    assert ignored == ["mirostat", "penalize_newline", "bogus"]
    assert request_options(None) == ({}, [])
    for wrong in ({"temperature": "warm"}, {"top_k": True}, {"stop": [1]}, {"use_mmap": 1}):
        with pytest.raises(InvalidInputError, match=next(iter(wrong))):
            request_options(wrong)
    with pytest.raises(InvalidInputError):
        request_options([1])


@pytest.fixture(scope="module")
def server(compat_server):
    return compat_server({BASE: "PARAMETER num_ctx 2048\n",
                          THINKER: f'TEMPLATE """{THINKING_TEMPLATE}"""\nPARAMETER num_ctx 2048\n',
                          FILLER: f'TEMPLATE """{SUFFIX_TEMPLATE}"""\nPARAMETER num_ctx 2048\n'})


def post(server, path, body):
    return httpx.post(server.url + path, json=body, timeout=120)


def test_langchain_embeddings_all_null_options(server, caplog):
    # langchain_ollama.OllamaEmbeddings sends every option it knows, the unset ones as null
    options = dict.fromkeys(("mirostat", "mirostat_eta", "mirostat_tau", "num_ctx", "num_gpu", "num_thread",
                             "repeat_last_n", "repeat_penalty", "temperature", "stop", "tfs_z", "top_k", "top_p"))
    with caplog.at_level(logging.WARNING, logger="modelpkg.server"):
        answer = post(server, "/api/embed", {"model": BASE, "input": ["hello"], "options": options,
                                             "keep_alive": None})
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["embeddings"][0]) == 640
    # null is unset, not unknown: only the names Ollama no longer has are logged
    assert {r.getMessage() for r in caplog.records} == {
        f"invalid option provided: {n} (ignored)" for n in ("mirostat", "mirostat_eta", "mirostat_tau", "tfs_z")}


def test_llamaindex_temperature_null(server):
    # llama_index.llms.ollama.Ollama: temperature None unless set, num_ctx its context_window
    answer = post(server, "/api/chat", {"model": BASE, "messages": [{"role": "user", "content": "Hi"}],
                                        "stream": False, "options": {"temperature": None, "num_ctx": 2048,
                                                                     "num_predict": 4}})
    assert answer.status_code == 200, answer.text
    assert answer.json()["done"] and answer.json()["eval_count"] <= 4


def test_ollamas_documented_generate_with_options(server, caplog):
    # docs/api.md "Generate request (With options)", as Ollama documents it
    body = {"model": BASE, "prompt": "Why is the sky blue?", "stream": False,
            "options": {"num_keep": 5, "seed": 42, "num_predict": 100, "top_k": 20, "top_p": 0.9, "min_p": 0.0,
                        "typical_p": 0.7, "repeat_last_n": 33, "temperature": 0.8, "repeat_penalty": 1.2,
                        "presence_penalty": 1.5, "frequency_penalty": 1.0, "penalize_newline": True,
                        "stop": ["\n", "user:"], "numa": False, "num_ctx": 1024, "num_batch": 2, "num_gpu": 1,
                        "main_gpu": 0, "use_mmap": True, "num_thread": 8}}
    with caplog.at_level(logging.WARNING, logger="modelpkg.server"):
        answer = post(server, "/api/generate", body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["done"] and answer.json()["eval_count"] <= 100
    assert {r.getMessage() for r in caplog.records} == {
        "invalid option provided: penalize_newline (ignored)", "invalid option provided: numa (ignored)"}


def test_wrong_option_types_stay_a_clear_400(server):
    for options, word in (({"temperature": "warm"}, "temperature"), ({"stop": [1, 2]}, "stop"),
                          ({"use_mmap": "yes"}, "use_mmap")):
        answer = post(server, "/api/generate", {"model": BASE, "prompt": "Hi", "options": options})
        assert answer.status_code == 400 and word in answer.json()["error"], answer.text
    answer = post(server, "/v1/chat/completions", {"model": BASE, "messages": [{"role": "user", "content": "x"}],
                                                   "temperature": "hot"})
    assert answer.status_code == 400 and "temperature" in answer.json()["error"]["message"]


def test_create_parameters_as_ollama_reads_them(server):
    client = ollama.Client(host=server.url, timeout=120)
    done = client.create("lenient", from_=BASE, stream=False,
                         parameters={"temperature": None, "mirostat": 2, "num_predict": 3, "stop": ["x"]})
    assert done.status == "success"
    shown = client.show("lenient").parameters
    assert "num_predict" in shown and "mirostat" not in shown and "temperature" not in shown
    bad = post(server, "/api/create", {"model": "bad", "from": BASE, "parameters": {"top_k": "many"}})
    assert bad.status_code == 400 and "top_k" in bad.json()["error"]
    client.delete("lenient")


def test_raw_as_ollama_has_it(server):
    for extra in ({"system": "Be brief."}, {"template": "{{ .Prompt }}!"}, {"context": [1, 2]}):
        answer = post(server, "/api/generate", {"model": BASE, "prompt": "Hi", "raw": True, **extra})
        assert answer.status_code == 400, extra
        assert answer.json()["error"] == "raw mode does not support template, system, or context"
    raw = post(server, "/api/generate", {"model": BASE, "prompt": "Hi", "raw": True, "stream": False,
                                         "options": FAST}).json()
    assert raw["done"] and "context" not in raw
    cooked = post(server, "/api/generate", {"model": BASE, "prompt": "Hi", "stream": False, "options": FAST}).json()
    assert cooked["context"] and raw["response"] == cooked["response"]  # the base model's template is the prompt
    streamed = [json.loads(line) for line in httpx.post(
        server.url + "/api/generate", json={"model": BASE, "prompt": "Hi", "raw": True, "options": FAST},
        timeout=120).text.splitlines()]
    assert streamed[-1]["done"] and "context" not in streamed[-1]


def test_show_model_info_is_the_ggufs_metadata(server):
    info = post(server, "/api/show", {"model": BASE}).json()["model_info"]
    assert info["general.architecture"] == "gemma3" and info["gemma3.embedding_length"] == 640
    assert info["gemma3.context_length"] == 32768 and info["gemma3.block_count"] == 18
    assert info["general.parameter_count"] == 268_098_176  # the tensors' elements, as Ollama counts them
    assert info["tokenizer.ggml.tokens"] == [] and info["tokenizer.ggml.scores"] == []  # long arrays emptied
    assert info["general.tags"] == [] or len(info["general.tags"]) <= 5
    assert "general.name" not in info and "tokenizer.chat_template" not in info
    assert info["tokenizer.ggml.bos_token_id"] == 2 and info["general.file_type"] == 15
    verbose = post(server, "/api/show", {"model": BASE, "verbose": True}).json()["model_info"]
    assert len(verbose["tokenizer.ggml.tokens"]) == 262_144 and verbose["tokenizer.ggml.tokens"][:3] == \
        ["<pad>", "<eos>", "<bos>"]
    assert len(verbose["tokenizer.ggml.scores"]) == 262_144
    assert set(verbose) == set(info)
    assert ollama.Client(host=server.url).show(BASE).modelinfo["general.parameter_count"] == 268_098_176


def test_version_is_ollamas_with_modelpkgs_beside_it(server):
    answer = httpx.get(server.url + "/api/version").json()
    major, minor, _ = (int(x) for x in answer["version"].split("."))
    assert (major, minor) >= (0, 14)  # what clients gate tools, thinking and logprobs on
    assert answer["modelpkg"]["version"] == __version__


@pytest.mark.registry
def test_pull_and_push_progress_carry_full_digests(server, registry):
    client = ollama.Client(host=server.url, timeout=120)
    name = f"{registry.host}/compat/digests:v1"
    client.copy(BASE, name)
    pushed = [p for p in client.push(name, insecure=True, stream=True) if p.digest]
    client.delete(name)
    pulled = [p for p in client.pull(name, insecure=True, stream=True) if p.digest]
    for lines in (pushed, pulled):
        assert lines and all(p.digest.startswith("sha256:") and len(p.digest) == 71 for p in lines)
        assert all(p.status.split()[-1] == p.digest[7:19] for p in lines)  # "pulling 3f8eb4da87fa"
    client.delete(name)


# ------------------------------------------------------------------------------------------------------
# capabilities, thinking, suffix, images


def render_only(server, path, body):
    answer = post(server, path, {**body, "_debug_render_only": True})
    assert answer.status_code == 200, answer.text
    return answer.json()["debug_info"]["rendered_template"]


def raw_answer(server, prompt, num_predict=12):
    return post(server, "/api/generate", {"model": BASE, "prompt": prompt, "raw": True, "stream": False,
                                          "options": {"temperature": 0, "num_predict": num_predict}}).json()["response"]


def test_capabilities_as_ollama_derives_them(server):
    client = ollama.Client(host=server.url)
    assert client.show(BASE).capabilities == ["completion"]
    assert client.show(THINKER).capabilities == ["completion", "thinking"]
    assert client.show(FILLER).capabilities == ["completion", "insert"]


def test_thinking_split_by_the_templates_tags(server):
    hi = [{"role": "user", "content": "Hi"}]
    assert render_only(server, "/api/chat", {"model": THINKER, "messages": hi, "think": True}) == \
        "level=medium\n<|user|>Hi\n<|assistant|><think>"
    assert render_only(server, "/api/chat", {"model": THINKER, "messages": hi, "think": "high"}).startswith(
        "level=high\n")
    # a thinking model thinks unless told not to, as Ollama's ChatHandler sets think
    assert render_only(server, "/api/chat", {"model": THINKER, "messages": hi}).endswith("<think>")
    assert render_only(server, "/api/chat", {"model": THINKER, "messages": hi, "think": False}) == \
        "level=\n<|user|>Hi\n<|assistant|>"
    # the prompt ends inside the opening tag: what the model writes is thinking until it closes the tag
    expected = raw_answer(server, "level=medium\n<|user|>Hi\n<|assistant|><think>")
    client = ollama.Client(host=server.url, timeout=120)
    options = {"temperature": 0, "num_predict": 12}
    whole = client.chat(THINKER, hi, think=True, options=options)
    assert "</think>" not in expected and whole.message.thinking == expected.lstrip()
    assert whole.message.content == ""
    parts = list(client.chat(THINKER, hi, think=True, options=options, stream=True))
    assert "".join(p.message.thinking or "" for p in parts) == whole.message.thinking
    generated = client.generate(THINKER, "Hi", think=True, options=options)
    assert generated.thinking and generated.response == ""
    # past turns' thinking goes back into the prompt between the tags
    history = [*hi, {"role": "assistant", "content": "Hello.", "thinking": "be kind"}, *hi]
    assert "<|assistant|><think>be kind</think>Hello.\n" in render_only(
        server, "/api/chat", {"model": THINKER, "messages": history, "think": False})


def test_thinking_errors_as_ollamas(server):
    hi = [{"role": "user", "content": "Hi"}]
    refused = post(server, "/api/chat", {"model": BASE, "messages": hi, "think": True})
    assert refused.status_code == 400 and refused.json()["error"] == '"base" does not support thinking'
    refused = post(server, "/api/generate", {"model": BASE, "prompt": "Hi", "think": "low"})
    assert refused.status_code == 400 and refused.json()["error"] == '"base" does not support thinking'
    assert post(server, "/api/chat", {"model": BASE, "messages": hi, "think": False, "stream": False,
                                      "options": FAST}).status_code == 200
    bad = post(server, "/api/chat", {"model": THINKER, "messages": hi, "think": "extreme"})
    assert bad.status_code == 400 and "invalid think value" in bad.json()["error"]


def test_openai_reasoning(server):
    oai = require_module("openai").OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=120)
    hi = [{"role": "user", "content": "Hi"}]
    thought = oai.chat.completions.create(model=THINKER, messages=hi, reasoning_effort="low", temperature=0,
                                          max_tokens=12)
    assert thought.choices[0].message.model_extra["reasoning"] and thought.choices[0].message.content == ""
    plain = oai.chat.completions.create(model=THINKER, messages=hi, reasoning_effort="none", temperature=0,
                                        max_tokens=4)
    assert "reasoning" not in (plain.choices[0].message.model_extra or {})
    chunks = list(oai.chat.completions.create(model=THINKER, messages=hi, reasoning_effort="low", temperature=0,
                                              max_tokens=12, stream=True))
    streamed = "".join((c.choices[0].delta.model_extra or {}).get("reasoning", "") for c in chunks if c.choices)
    assert streamed == thought.choices[0].message.model_extra["reasoning"]
    from modelpkg.server.openai import openai_messages

    assert openai_messages([{"role": "assistant", "content": "a", "reasoning_content": "r"}])[0]["thinking"] == "r"
    assert openai_messages([{"role": "assistant", "content": "a", "reasoning": "r"}])[0]["thinking"] == "r"


def test_suffix_renders_as_ollamas_template_tests_show(server):
    body = {"model": FILLER, "prompt": "def add(", "suffix": "return x"}
    assert render_only(server, "/api/generate", body) == "<PRE> def add( <SUF>return x <MID>"
    assert render_only(server, "/api/generate", {"model": FILLER, "prompt": "hello"}) == "hello"
    filled = post(server, "/api/generate", {**body, "stream": False, "options": FAST}).json()
    assert filled["done"] and filled["eval_count"] <= 4
    assert filled["response"] == raw_answer(server, "<PRE> def add( <SUF>return x <MID>", 4)
    refused = post(server, "/api/generate", {"model": BASE, "prompt": "def add(", "suffix": "return x"})
    assert refused.status_code == 400 and refused.json()["error"] == "base does not support insert"
    oai = require_module("openai").OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=120)
    done = oai.completions.create(model=FILLER, prompt="def add(", suffix="return x", temperature=0, max_tokens=4)
    assert done.choices[0].text == filled["response"]
    with pytest.raises(require_module("openai").BadRequestError, match="does not support insert"):
        oai.completions.create(model=BASE, prompt="def add(", suffix="return x")


def test_images_name_the_missing_capability(server):
    refused = post(server, "/api/generate", {"model": BASE, "prompt": "What is this?", "images": ["aGk="]})
    assert refused.status_code == 400 and refused.json()["error"] == "base does not support vision"
    refused = post(server, "/api/chat", {"model": BASE, "messages": [
        {"role": "user", "content": "What is this?", "images": ["aGk="]}]})
    assert refused.status_code == 400 and refused.json()["error"] == "base does not support vision"


# ------------------------------------------------------------------------------------------------------
# run --think, --hidethinking, /set think (the same store, in-process)


def run_cli(*args):
    from click.testing import CliRunner

    from modelpkg.cli.app import cli

    return CliRunner().invoke(cli, list(args))


def test_run_think_flags(server):
    expected = raw_answer(server, "level=medium\n<|user|>Hi\n<|assistant|><think>", 8).lstrip()
    greedy = ("--temperature", "0", "--num-predict", "8")
    shown = run_cli("run", THINKER, "Hi", "--think", *greedy)
    assert shown.exit_code == 0, shown.output
    assert shown.output == f"Thinking...\n{expected}\n...done thinking.\n\n"
    hidden = run_cli("run", THINKER, "Hi", "--think", "--hidethinking", *greedy)
    assert hidden.exit_code == 0 and hidden.output == "\n"
    as_json = json.loads(run_cli("run", THINKER, "Hi", "--think=high", "--format", "json", *greedy).output)
    assert as_json["response"] == "" and as_json["thinking"]
    off = run_cli("run", THINKER, "Hi", "--think=false", *greedy)
    assert off.exit_code == 0 and "Thinking..." not in off.output and off.output.strip()
    refused = run_cli("run", BASE, "Hi", "--think")
    assert refused.exit_code != 0 and '"base" does not support thinking' in refused.output
    bad = run_cli("run", THINKER, "Hi", "--think=extreme")
    assert bad.exit_code != 0 and "invalid think value" in bad.output


def test_repl_set_think(server):
    import io

    from modelpkg.base import config
    from modelpkg.cli.run import Repl
    from modelpkg.ops.chat import Session, open_model
    from modelpkg.store import Store

    details = open_model(Store(config.home()), config.reference(THINKER), pull=False)
    session = Session(details, {"temperature": 0, "num_predict": 8})
    out = io.StringIO()
    lines = iter(["/set nothink", "Hi", "/set think high", "Hi", "/set think extreme"])

    def read(_prompt: str) -> str:
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    try:
        Repl(session, THINKER, out=out, err=out, read=read).run()
    finally:
        session.close()
    text = out.getvalue()
    assert "Set 'nothink' mode." in text and "Set 'think' mode to 'high'." in text
    assert text.count("Thinking...") == 1 and "invalid think value" in text
    assert session.turns[3].get("thinking") and session.turns[3]["content"] == ""  # the turn keeps it apart
    assert "thinking" not in session.turns[1] and session.turns[1]["content"]
