"""``modelpkg serve`` through the real clients: the official ``ollama`` package and the ``openai`` package.

One server per module (a thread on a free loopback port) over a store holding Gemma 3 270M as the base and
the chat example models; greedy decoding and small ``num_predict`` keep it fast. Pure helpers (keep_alive,
Go durations, create's JSON fields) are tested without a model.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from pathlib import Path

import pytest

from capabilities import require_module
from modelpkg.core.errors import InvalidInputError
from modelpkg.server.app import make_server
from modelpkg.server.cache import parse_keep_alive
from modelpkg.server.http import DEFAULT_ORIGINS, local_host_header, origin_allowed
from modelpkg.server.ollama import modelfile_from_fields
from modelpkg.server.openai import openai_format, openai_messages, openai_options

ollama = require_module("ollama")
openai = require_module("openai")
httpx = require_module("httpx")

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "Modelfile.examples"
BASE = "gemma3-base"
CHAT = "gemma3-chat"
PRIMARY = "Here is a list of three primary colors:\n1."
FAST = {"temperature": 0, "num_predict": 8}


# ------------------------------------------------------------------------------------------------------
# pure helpers


def test_keep_alive_values():
    assert parse_keep_alive(None) == 300
    assert parse_keep_alive("") == 300
    assert parse_keep_alive(0) == 0
    assert parse_keep_alive("0") == 0
    assert parse_keep_alive(30) == 30
    assert parse_keep_alive("5m") == 300
    assert parse_keep_alive("1h30m") == 5400
    assert parse_keep_alive("1.5s") == 1.5
    assert parse_keep_alive("300ms") == pytest.approx(0.3)
    assert parse_keep_alive(-1) is None
    assert parse_keep_alive("-1m") is None
    for bad in ("5x", "m", True, [1]):
        with pytest.raises(InvalidInputError):
            parse_keep_alive(bad)


def test_create_fields_become_a_modelfile():
    from modelpkg.core import modelfile as mf
    from modelpkg.core.digest import Digest

    text = modelfile_from_fields(
        {"from": "gemma3-base", "system": "Be brief.\nVery.", "template": "{{ .Prompt }}",
         "parameters": {"temperature": 0, "stop": ["a", "b"]}, "license": ["MIT", "x"],
         "messages": [{"role": "user", "content": "hi"}]})
    parsed = mf.parse(text)
    assert parsed.system == "Be brief.\nVery."
    assert parsed.parameters() == {"temperature": 0.0, "stop": ["a", "b"]}
    assert [i.value for i in parsed.instructions if i.keyword == "license"] == ["MIT", "x"]
    digest = "sha256:" + "a" * 64
    text = modelfile_from_fields({"files": {"m.gguf": digest}, "adapters": {"a.gguf": digest}})
    assert [i.value for i in mf.parse(text).instructions] == [digest, digest]  # by digest, never a store path
    assert Digest.parse(digest).hex in text
    with pytest.raises(InvalidInputError):
        modelfile_from_fields({"system": "x"})


def test_openai_fields_map_to_ollama_options():
    assert openai_options({"temperature": 0, "max_tokens": 5, "stop": "x", "seed": 3}) == \
        {"temperature": 0.0, "num_predict": 5, "stop": ["x"], "seed": 3}
    assert openai_options({"max_completion_tokens": 7})["num_predict"] == 7
    assert openai_format({"response_format": {"type": "json_object"}}) == "json"
    assert openai_messages([{"role": "developer", "content": [{"type": "text", "text": "a"}]}]) == \
        [{"role": "system", "content": "a"}]


# ------------------------------------------------------------------------------------------------------
# a server over the real model


@pytest.fixture(scope="module")
def served(tmp_path_factory, gemma_gguf):
    require_module("llama_cpp")
    from modelpkg.base import config
    from modelpkg.ops.create import create
    from modelpkg.store import Store

    root = tmp_path_factory.mktemp("serve")
    folder = root / "examples"
    folder.mkdir()
    os.symlink(gemma_gguf, folder / "gemma3-270m-q4_k_m.gguf")
    mp = pytest.MonkeyPatch()
    mp.setenv("MODELPKG_HOME", str(root / "home"))
    mp.setenv("MODELPKG_CONFIG_DIR", str(root / "config"))
    mp.delenv("MODELPKG_REGISTRY", raising=False)
    store = Store(config.home())
    for name in (BASE, CHAT):
        source = EXAMPLES / f"{name}.Modelfile"
        (folder / source.name).write_text(source.read_text())
        create(store, config.reference(name), source.read_text(), folder, resolve_name=config.reference)
    server = make_server(store, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.close()
    mp.undo()


@pytest.fixture(scope="module")
def client(served):
    return ollama.Client(host=served.url, timeout=120)


@pytest.fixture(scope="module")
def oai(served):
    return openai.OpenAI(base_url=served.url + "/v1", api_key="unused", timeout=120, max_retries=0)


def test_root_and_version(served):
    assert httpx.head(served.url + "/").status_code == 200
    assert httpx.get(served.url + "/").text == "Ollama is running"
    assert httpx.get(served.url + "/api/version").json()["version"]


def test_list_and_show(client):
    names = {m.model for m in client.list().models}
    assert {f"{BASE}:latest", f"{CHAT}:latest"} <= names
    model = next(m for m in client.list().models if m.model == f"{BASE}:latest")
    assert model.size > 200_000_000 and len(model.digest) == 64 and model.details.format == "gguf"
    shown = client.show(CHAT)
    assert "<start_of_turn>" in shown.template
    assert "temperature" in shown.parameters and '"<end_of_turn>"' in shown.parameters
    assert shown.modelfile.count("FROM ") >= 1 and shown.capabilities == ["completion"]
    assert shown.details.family == "gemma3"


def test_generate_streamed_and_not(client):
    whole = client.generate(BASE, PRIMARY, options=FAST, stream=False)
    assert whole.done and whole.done_reason == "length" and whole.eval_count == 8
    assert whole.response.strip()
    for key in ("total_duration", "prompt_eval_count", "prompt_eval_duration", "eval_duration", "load_duration"):
        assert getattr(whole, key) is not None, key
    assert whole.prompt_eval_count > 0 and whole.total_duration >= whole.eval_duration > 0
    assert whole.context and len(whole.context) >= whole.prompt_eval_count
    parts = list(client.generate(BASE, PRIMARY, options=FAST, stream=True))
    assert all(not p.done for p in parts[:-1]) and parts[-1].done and parts[-1].eval_count == 8
    assert "".join(p.response for p in parts) == whole.response


def test_generate_overrides(client):
    plain = client.generate(BASE, "The capital of France is", options=FAST).response
    templated = client.generate(BASE, "The capital of France is", template="Question: {{ .Prompt }}\nAnswer:",
                                options=FAST).response
    assert templated != plain
    raw = client.generate(BASE, "The capital of France is", raw=True, options=FAST).response
    assert raw == plain  # the base model's template is the prompt itself
    first = client.generate(BASE, "One, two,", options={"temperature": 0, "num_predict": 4})
    more = client.generate(BASE, " five,", context=first.context, options={"temperature": 0, "num_predict": 4})
    assert more.done and more.response
    stopped = client.generate(BASE, PRIMARY, options={"temperature": 0, "num_predict": 40, "stop": ["2."]})
    assert "2." not in stopped.response and stopped.done_reason == "stop"


def test_format_json(client):
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    answer = client.generate(BASE, "The capital of France, as JSON:", format=schema,
                             options={"temperature": 0, "num_predict": 30})
    city = json.loads(answer.response)
    assert isinstance(city, dict) and isinstance(city["city"], str)
    # Two example turns make the 270M model answer briefly: with the grammar the answer is one JSON object and
    # the turn ends there; without it the model runs on past the object into other text.
    shots = [{"role": "user", "content": "Name a fruit as JSON."},
             {"role": "assistant", "content": '{"fruit": "apple"}'},
             {"role": "user", "content": "Name an animal as JSON."},
             {"role": "assistant", "content": '{"animal": "cat"}'}]
    answer = client.chat(CHAT, [*shots, {"role": "user", "content": "Name a color as JSON."}], format="json",
                         options={"temperature": 0, "num_predict": 64})
    assert answer.done_reason == "stop", answer.message.content
    color = json.loads(answer.message.content)
    assert isinstance(color, dict) and isinstance(color["color"], str) and color["color"].strip()


def test_chat_streamed_and_not(client):
    messages = [{"role": "user", "content": "What color is the sky?"}]
    whole = client.chat(CHAT, messages, options={"temperature": 0, "num_predict": 16})
    assert whole.message.role == "assistant" and whole.message.content.strip()
    assert whole.done and whole.eval_count <= 16 and whole.prompt_eval_count > 10
    parts = list(client.chat(CHAT, messages, options={"temperature": 0, "num_predict": 16}, stream=True))
    assert parts[-1].done and parts[-1].done_reason in ("stop", "length")
    assert "".join(p.message.content for p in parts) == whole.message.content
    with_system = client.chat(CHAT, [{"role": "system", "content": "Answer in French."}, *messages],
                              options={"temperature": 0, "num_predict": 16})
    assert with_system.message.content != whole.message.content


def test_embed(client):
    out = client.embed(BASE, ["hello world", "the sky is blue"])
    assert len(out.embeddings) == 2 and len(out.embeddings[0]) == 640
    assert math.isclose(sum(x * x for x in out.embeddings[0]), 1.0, rel_tol=1e-4)
    assert out.prompt_eval_count > 0
    assert len(client.embed(BASE, "hi", dimensions=64).embeddings[0]) == 64
    single = client.embeddings(BASE, "hello world").embedding
    assert single == pytest.approx(out.embeddings[0], abs=1e-5)
    assert list(client.embeddings(BASE, "").embedding) == []


def test_ps_and_keep_alive(client, served):
    client.generate(BASE, "Hi", options=FAST, keep_alive="10m")
    loaded = {m.model: m for m in client.ps().models}
    slots = served.app.cache.loaded()[0][0].parallel  # num_ctx 4096 for each of the loaded model's slots
    assert f"{BASE}:latest" in loaded and loaded[f"{BASE}:latest"].context_length == 4096 * slots
    client.generate(BASE, "Hi", options=FAST, keep_alive=0)
    assert f"{BASE}:latest" not in {m.model for m in client.ps().models}
    assert client.generate(BASE, "", keep_alive="1m").done_reason == "load"
    assert f"{BASE}:latest" in {m.model for m in client.ps().models}
    assert client.generate(BASE, "", keep_alive=0).done_reason == "unload"
    assert f"{BASE}:latest" not in {m.model for m in client.ps().models}
    client.generate(BASE, "Hi", options=FAST, keep_alive=1)  # the reaper unloads it a second later
    deadline = time.time() + 10
    while f"{BASE}:latest" in {m.model for m in client.ps().models} and time.time() < deadline:
        time.sleep(0.2)
    assert f"{BASE}:latest" not in {m.model for m in client.ps().models}


def test_two_names_of_one_model_share_one_load(client, served):
    client.copy(BASE, "gpt-alias")
    try:
        first = client.generate(BASE, "Hi", options=FAST, keep_alive="10m")
        digest = next(m for m in client.list().models if m.model == f"{BASE}:latest").digest
        aliased = client.generate("gpt-alias", "Hi", options=FAST, keep_alive="10m")
        assert aliased.response == first.response
        assert aliased.load_duration < 0.05e9  # no second load: the alias found the model in memory
        in_memory = [m for m in client.ps().models if m.digest == digest]
        assert len(in_memory) == 1 and in_memory[0].model == "gpt-alias:latest"  # the name last asked for
        assert client.generate(BASE, "", keep_alive=0).done_reason == "unload"  # stops it under any name
        assert not [m for m in client.ps().models if m.digest == digest]
    finally:
        client.delete("gpt-alias")


def test_least_recently_used_model_makes_room(client, served):
    cache = served.app.cache
    saved, cache.max_loaded = cache.max_loaded, 1
    try:
        client.generate(BASE, "Hi", options=FAST)
        client.chat(CHAT, [{"role": "user", "content": "Hi"}], options=FAST)
        assert [m.model for m in client.ps().models] == [f"{CHAT}:latest"]
    finally:
        cache.max_loaded = saved


def test_concurrent_requests_are_queued(client):
    expected = client.generate(BASE, PRIMARY, options=FAST).response
    results: list[str] = []

    def one():
        results.append(ollama.Client(host=client._client.base_url.__str__(), timeout=120)
                       .generate(BASE, PRIMARY, options=FAST).response)

    threads = [threading.Thread(target=one) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [expected] * 3


def test_disconnecting_client_stops_generation(client, served):
    before = len(served.app.events)
    stream = client.generate(BASE, "Once upon a time", options={"temperature": 0, "num_predict": 400}, stream=True)
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()  # closes the HTTP response mid-stream
    deadline = time.time() + 30
    while len(served.app.events) == before and time.time() < deadline:
        time.sleep(0.1)
    event = served.app.events[-1]
    assert event.done_reason == "interrupted" and event.eval_count < 400


def test_client_gone_stops_a_whole_answer_too(served):
    before = len(served.app.events)
    impatient = ollama.Client(host=served.url, timeout=0.5)
    with pytest.raises(httpx.TimeoutException):  # the client gives up and closes the connection
        impatient.generate(BASE, "Once upon a time", options={"temperature": 0, "num_predict": 400})
    deadline = time.time() + 30
    while len(served.app.events) == before and time.time() < deadline:
        time.sleep(0.1)
    event = served.app.events[-1]
    assert event.done_reason == "interrupted" and event.eval_count < 400


def test_errors(client, oai, served):
    with pytest.raises(ollama.ResponseError) as e:
        client.generate("no-such-model", "hi")
    assert e.value.status_code == 404 and e.value.error == "model 'no-such-model' not found"
    with pytest.raises(ollama.ResponseError) as e:
        list(client.chat("no-such-model", [{"role": "user", "content": "hi"}], stream=True))
    assert e.value.status_code == 404
    for call in (lambda: client.show("nope"), lambda: client.delete("nope"), lambda: client.copy("nope", "x"),
                 lambda: client.embed("nope", "x")):
        with pytest.raises(ollama.ResponseError) as e:
            call()
        assert e.value.status_code == 404
    bad = httpx.post(served.url + "/api/generate", content=b"{not json")
    assert bad.status_code == 400 and "error" in bad.json()
    bad = httpx.post(served.url + "/api/chat", json={"model": BASE, "messages": [{"role": "x"}]})
    assert bad.status_code == 400 and isinstance(bad.json()["error"], str)
    bad = httpx.post(served.url + "/v1/chat/completions", content=b"[")
    assert bad.status_code == 400 and set(bad.json()["error"]) >= {"message", "type", "code"}
    with pytest.raises(openai.NotFoundError) as e:
        oai.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["message"] == "model 'nope' not found"
    with pytest.raises(ollama.ResponseError) as e:
        client.generate(BASE, "hi", options={"temperature": "warm"})  # an unknown name is ignored, as Ollama does
    assert e.value.status_code == 400
    assert httpx.get(served.url + "/api/nothing").status_code == 404


def test_copy_create_delete(client, served):
    client.copy(BASE, "copied:v1")
    assert "copied:v1" in {m.model for m in client.list().models}
    parts = list(client.create("brief", from_=BASE, system="Be brief.", parameters={"num_predict": 3},
                               stream=True))
    assert parts[-1].status == "success"
    shown = client.show("brief")
    assert "num_predict" in shown.parameters
    assert client.generate("brief", PRIMARY, options={"temperature": 0}).eval_count <= 3
    made = httpx.post(served.url + "/api/create", json={"model": "fromtext", "stream": False,
                                                        "modelfile": f"FROM {BASE}\nPARAMETER top_k 7\n"})
    assert made.status_code == 200 and made.json() == {"status": "success"}
    assert "top_k" in client.show("fromtext").parameters
    bad = httpx.post(served.url + "/api/create", json={"model": "bad", "modelfile": "FRM x"})
    assert bad.status_code == 400
    for name in ("copied:v1", "brief", "fromtext"):
        assert client.delete(name).status == "success"
    assert not {"copied:v1", "brief:latest", "fromtext:latest"} & {m.model for m in client.list().models}


def test_create_from_uploaded_blob(client, served, gemma_gguf):
    digest = client.create_blob(gemma_gguf)
    assert httpx.head(f"{served.url}/api/blobs/{digest}").status_code == 200
    assert httpx.head(f"{served.url}/api/blobs/sha256:{'0' * 64}").status_code == 404
    assert client.create("uploaded", files={"model.gguf": digest}, stream=False).status == "success"
    assert client.show("uploaded").details.family == "gemma3"
    client.delete("uploaded")


@pytest.mark.registry
def test_push_and_pull(client, registry):
    name = f"{registry.host}/serve/gemma:v1"
    client.copy(BASE, name)
    pushed = list(client.push(name, insecure=True, stream=True))
    assert pushed[-1].status == "success"
    assert any(p.digest and p.total for p in pushed)
    client.delete(name)
    pulled = list(client.pull(name, insecure=True, stream=True))
    assert pulled[0].status == "pulling manifest" and pulled[-1].status == "success"
    assert any(p.completed == p.total and p.total for p in pulled)
    assert client.pull(name, insecure=True, stream=False).status == "success"
    assert client.generate(name, PRIMARY, options=FAST).eval_count == 8
    client.delete(name)
    with pytest.raises(ollama.ResponseError):
        client.pull(f"{registry.host}/serve/missing:v1", insecure=True)


def test_openai_models_and_chat(oai):
    ids = {m.id for m in oai.models.list().data}
    assert f"{BASE}:latest" in ids
    answer = oai.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": "What color is grass?"}],
                                         temperature=0, max_tokens=12)
    assert answer.object == "chat.completion" and answer.choices[0].message.content.strip()
    assert answer.choices[0].finish_reason in ("stop", "length")
    assert answer.usage.completion_tokens <= 12 and answer.usage.total_tokens > answer.usage.completion_tokens
    question = [{"role": "user", "content": "What color is grass?"}]
    chunks = list(oai.chat.completions.create(model=CHAT, messages=question, temperature=0, max_tokens=12,
                                              stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == answer.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == answer.usage.completion_tokens
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)


def test_openai_completions_and_embeddings(oai, client):
    done = oai.completions.create(model=BASE, prompt=PRIMARY, max_tokens=8, temperature=0)
    assert done.choices[0].text == client.generate(BASE, PRIMARY, options=FAST).response
    assert done.usage.completion_tokens == 8 and done.choices[0].finish_reason == "length"
    streamed = "".join(c.choices[0].text for c in oai.completions.create(model=BASE, prompt=PRIMARY, max_tokens=8,
                                                                         temperature=0, stream=True) if c.choices)
    assert streamed == done.choices[0].text
    emb = oai.embeddings.create(model=BASE, input=["hello world", "sky"])  # the SDK asks for base64
    assert len(emb.data) == 2 and len(emb.data[0].embedding) == 640
    assert emb.data[0].embedding == pytest.approx(client.embed(BASE, "hello world").embeddings[0], abs=1e-4)
    floats = oai.embeddings.create(model=BASE, input="sky", encoding_format="float")
    assert len(floats.data[0].embedding) == 640


def test_bearer_token(served):
    server = make_server(served.app.store, "127.0.0.1", 0, token="s3cret")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert httpx.head(server.url + "/").status_code == 200
        assert httpx.get(server.url + "/api/version").status_code == 200
        with pytest.raises(ollama.ResponseError) as e:
            ollama.Client(host=server.url).list()
        assert e.value.status_code == 401
        with pytest.raises(ollama.ResponseError):
            ollama.Client(host=server.url, headers={"Authorization": "Bearer wrong"}).list()
        good = ollama.Client(host=server.url, headers={"Authorization": "Bearer s3cret"})
        assert good.list().models
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).models.list()
        assert openai.OpenAI(base_url=server.url + "/v1", api_key="s3cret").models.list().data
    finally:
        server.shutdown()
        server.close()


def test_serve_command_runs_and_stops_on_ctrl_c(tmp_path):
    import re
    import signal
    import subprocess
    import sys

    env = {**os.environ, "MODELPKG_HOME": str(tmp_path / "home"), "MODELPKG_CONFIG_DIR": str(tmp_path / "cfg"),
           "MODELPKG_SERVE_TOKEN": "t0k"}
    # SIGINT restored in the child: a test runner started with it ignored would pass that on.
    proc = subprocess.Popen([sys.executable, "-m", "modelpkg", "serve", "--port", "0"], env=env,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        line = proc.stderr.readline()
        url = re.search(r"http://[\d.]+:\d+", line).group(0)
        assert "bearer token" in line
        assert httpx.head(url + "/").status_code == 200
        assert httpx.get(url + "/api/tags").status_code == 401
        assert httpx.get(url + "/api/tags", headers={"Authorization": "Bearer t0k"}).json() == {"models": []}
        busy = subprocess.run([sys.executable, "-m", "modelpkg", "serve", "--port", url.rsplit(":", 1)[1]],
                              env=env, capture_output=True, text=True, timeout=30)
        assert busy.returncode == 2 and "cannot listen" in busy.stderr and "Traceback" not in busy.stderr
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    proc = subprocess.Popen([sys.executable, "-m", "modelpkg", "serve", "--port", "0"], env=env,
                            stderr=subprocess.PIPE, text=True)
    assert "listening" in proc.stderr.readline()
    proc.terminate()
    assert proc.wait(timeout=10) == 0 and "stopping" in proc.stderr.read()


def test_serve_command_help():
    from click.testing import CliRunner

    from modelpkg.cli.app import cli

    result = CliRunner().invoke(cli, ["serve", "--help"])
    assert result.exit_code == 0 and "Examples" in result.output and "--token" in result.output


# ------------------------------------------------------------------------------------------------------
# browsers: origins (CORS) and Host (DNS rebinding)


def test_origin_and_host_rules_as_pure_functions():
    assert origin_allowed("http://localhost:3000", DEFAULT_ORIGINS)
    assert origin_allowed("https://127.0.0.1", DEFAULT_ORIGINS)
    assert origin_allowed("app://obsidian.md", DEFAULT_ORIGINS)
    assert origin_allowed("vscode-webview://abc", DEFAULT_ORIGINS)
    assert not origin_allowed("https://evil.example", DEFAULT_ORIGINS)
    assert not origin_allowed("http://localhost.evil.example", DEFAULT_ORIGINS)
    assert not origin_allowed("null", DEFAULT_ORIGINS)
    assert origin_allowed("chrome-extension://abcdef", ("chrome-extension://*",))
    assert origin_allowed("https://anything.example", ("*",))
    for good in ("127.0.0.1:11434", "localhost", "LOCALHOST:1", "[::1]:11434", "10.0.0.5:11434",
                 "192.168.1.2", "myapp.localhost:80", "box.local", "0.0.0.0:11434", ""):
        assert local_host_header(good), good
    for bad in ("evil.example", "evil.example:11434", "8.8.8.8", "localhost.evil.example", "[2606:4700::1111]:1"):
        assert not local_host_header(bad), bad


def _raw(url: str, method: str, path: str, headers: dict, body: bytes | None = None):
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.putrequest(method, path, skip_host="Host" in headers)
        for key, value in headers.items():
            conn.putheader(key, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def test_a_web_page_of_another_origin_cannot_use_the_api(served):
    before = sorted(m.model for m in ollama.Client(host=served.url).list().models)
    # what a page on evil.example can make a browser send without a preflight: a text/plain POST
    status, headers, body = _raw(served.url, "POST", "/api/copy",
                                 {"Origin": "https://evil.example", "Content-Type": "text/plain"},
                                 json.dumps({"source": BASE, "destination": "stolen"}).encode())
    assert status == 403 and "origin" in json.loads(body)["error"]
    assert "Access-Control-Allow-Origin" not in headers
    assert sorted(m.model for m in ollama.Client(host=served.url).list().models) == before
    status, headers, _ = _raw(served.url, "OPTIONS", "/api/chat", {
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert status == 403 and "Access-Control-Allow-Origin" not in headers


def test_this_machines_pages_get_cors_headers_and_preflights_pass(served):
    status, headers, body = _raw(served.url, "GET", "/api/tags", {"Origin": "http://localhost:5173"})
    assert status == 200 and json.loads(body)["models"]
    assert headers["Access-Control-Allow-Origin"] == "http://localhost:5173" and headers["Vary"] == "Origin"
    status, headers, _ = _raw(served.url, "OPTIONS", "/v1/chat/completions", {
        "Origin": "http://127.0.0.1:3000", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, x-stainless-lang"})
    assert status == 204
    assert headers["Access-Control-Allow-Origin"] == "http://127.0.0.1:3000"
    assert "POST" in headers["Access-Control-Allow-Methods"]
    assert headers["Access-Control-Allow-Headers"] == "authorization, content-type, x-stainless-lang"


def test_dns_rebinding_is_refused_on_a_loopback_server(served):
    status, _, body = _raw(served.url, "GET", "/api/tags", {"Host": "rebind.evil.example:11434"})
    assert status == 403 and "Host" in json.loads(body)["error"]
    assert _raw(served.url, "GET", "/api/tags", {"Host": "localhost:11434"})[0] == 200


def test_more_origins_and_a_token_with_preflight(served):
    server = make_server(served.app.store, "127.0.0.1", 0, token="s3cret",
                            origins=("https://chat.example.com",))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        origin = {"Origin": "https://chat.example.com"}
        # browsers send no Authorization on a preflight: it must pass without the token
        assert _raw(server.url, "OPTIONS", "/api/chat", {**origin, "Access-Control-Request-Method": "POST"})[0] == 204
        assert _raw(server.url, "GET", "/api/tags", origin)[0] == 401
        status, headers, _ = _raw(server.url, "GET", "/api/tags", {**origin, "Authorization": "Bearer s3cret"})
        assert status == 200 and headers["Access-Control-Allow-Origin"] == "https://chat.example.com"
        assert _raw(server.url, "GET", "/api/tags", {"Origin": "https://other.example",
                                                     "Authorization": "Bearer s3cret"})[0] == 403
    finally:
        server.shutdown()
        server.close()
