"""A differential test of the API: the same requests to the real ``ollama serve`` and to ``modelpkg serve``,
over the same GGUF under the same name; every response compared by shape: status code, field names and JSON
types, error bodies, stream framing (NDJSON lines, SSE events and ``[DONE]``). Texts are not compared: the
engines differ near ties.

Requests that need no generation go to v0.34.0, the newest (it runs models only through a llama-server its
CMake build downloads, so it cannot generate here); the generating ones (``GENERATING``) go to v0.24.0
(``.peers/bin/ollama-0.24``), the last release with its in-process engine. Both pulled MODEL from modelpkg's
push.

Where Ollama's behaviour is one we choose not to copy, the case is listed in ``NOT_COPIED`` with the reason
(and in the README); where v0.24.0 is older than the v0.34 behaviour modelpkg follows, in ``OLD_0_24``; where
the difference belongs to the API issue, the case is an expected failure naming it."""

from __future__ import annotations

import json
import threading

import pytest
import requests
from ollama_env import Ollama, RedirectFront

from capabilities import require_module

pytestmark = [pytest.mark.registry, pytest.mark.timeout(600)]

MODEL = "diff:latest"
MODELFILE = "FROM {gguf}\nPARAMETER temperature 0\nPARAMETER num_ctx 512\nPARAMETER seed 1\n"
OPTIONS = {"temperature": 0, "num_predict": 6, "seed": 1, "top_k": 1}


def _modelpkg_server(root, gguf):
    from modelpkg.base import config
    from modelpkg.ops.create import create
    from modelpkg.server.app import make_server
    from modelpkg.store import Store

    store = Store(config.home())
    create(store, config.reference(MODEL), MODELFILE.format(gguf=gguf), root, resolve_name=config.reference)
    server = make_server(store, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return store, server


@pytest.fixture(scope="module")
def pushed(tmp_path_factory, gemma_gguf, registry):
    """modelpkg's server with MODEL, and MODEL pushed (``--format ollama``) to the loopback registry:
    (root folder, modelpkg's server, the pushed repository)."""
    from modelpkg.base import config
    from modelpkg.ops import models
    from modelpkg.ops.push import push

    root = tmp_path_factory.mktemp("differential")
    mp = pytest.MonkeyPatch()
    mp.setenv("MODELPKG_HOME", str(root / "home"))
    mp.setenv("MODELPKG_CONFIG_DIR", str(root / "config"))
    store, server = _modelpkg_server(root, gemma_gguf)
    pushed = config.reference(f"{registry.host}/peers/diff:latest")
    models.copy(store, config.reference(MODEL), pushed)
    push(store, pushed, format="ollama")
    yield root, server, "peers/diff:latest"
    server.shutdown()
    server.close()
    mp.undo()


def _ollama_with_model(binary: str, folder, registry, repo: str) -> Ollama:
    """``ollama serve`` of ``binary`` that pulled ``repo`` through the redirecting front as MODEL."""
    ollama = Ollama(binary, folder)
    front = RedirectFront(registry.host)
    try:
        for args in (("pull", "--insecure", f"{front.host}/{repo}"), ("cp", f"{front.host}/{repo}", MODEL)):
            done = ollama.cli(*args)
            assert done.returncode == 0, done.stderr.decode(errors="replace")
    except BaseException:
        ollama.stop()
        raise
    finally:
        front.close()
    return ollama


@pytest.fixture(scope="module")
def servers(pushed, registry):
    """(ollama url, modelpkg url), both serving MODEL from the same GGUF: Ollama v0.34.0 (the newest), which
    pulled it from modelpkg's push (it cannot create from a GGUF or run a model here)."""
    root, server, repo = pushed
    ollama = _ollama_with_model("ollama", root / "ollama", registry, repo)
    yield ollama.url, server.url
    ollama.stop()


@pytest.fixture(scope="module")
def generating_servers(pushed, registry):
    """(ollama url, modelpkg url) as ``servers``, with Ollama v0.24.0 (``.peers/bin/ollama-0.24``), the last
    release with its in-process engine: the one that generates here."""
    require_module("llama_cpp")
    root, server, repo = pushed
    ollama = _ollama_with_model("ollama-0.24", root / "ollama-0.24", registry, repo)
    yield ollama.url, server.url
    ollama.stop()


def shape(value):
    """A value's JSON shape: dict keys with their shapes, a list's first element's shape, the type name."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return "null" if value is None else type(value).__name__


def exchange(url: str, method: str, path: str, body=None, raw: bytes | None = None):
    """(status, shape of the body or of each NDJSON line, content type's main part)."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    response = requests.request(method, url + path, data=data, timeout=300,
                                headers={"Content-Type": "application/json"} if data else {})
    kind = response.headers.get("Content-Type", "").split(";")[0]
    text = response.text
    if kind == "application/x-ndjson":
        lines = [json.loads(line) for line in text.splitlines() if line.strip()]
        # framing: every line but the last is a chunk, the last one is done; compare first and last shapes
        return response.status_code, kind, [shape(lines[0]), shape(lines[-1])], [line.get("done") for line in
                                                                                lines[-1:]]
    if kind == "text/event-stream":
        data = [line[len("data:"):].strip() for line in text.splitlines() if line.startswith("data:")]
        events = [json.loads(item) for item in data if item != "[DONE]"]
        # framing: JSON events, then one ``data: [DONE]``; compare the first and last events' shapes
        return response.status_code, kind, [shape(events[0]), shape(events[-1])], data[-1:] == ["[DONE]"]
    try:
        return response.status_code, kind, shape(json.loads(text)) if text.strip() else None, None
    except ValueError:
        return response.status_code, kind, "text", None


def generate(**extra):
    return {"model": MODEL, "prompt": "The sky is", "options": OPTIONS, **extra}


def chat(**extra):
    return {"model": MODEL, "messages": [{"role": "user", "content": "Say hi."}], "options": OPTIONS, **extra}


def openai_chat(**extra):
    return {"model": MODEL, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 6,
            "temperature": 0, "seed": 1, **extra}


def openai_completion(**extra):
    return {"model": MODEL, "prompt": "The sky is", "max_tokens": 6, "temperature": 0, "seed": 1, **extra}


CASES = {
    "version": ("GET", "/api/version", None),
    "tags": ("GET", "/api/tags", None),
    "show": ("POST", "/api/show", {"model": MODEL}),
    "generate": ("POST", "/api/generate", generate(stream=False)),
    "generate-stream": ("POST", "/api/generate", generate()),
    "generate-json": ("POST", "/api/generate", generate(stream=False, format="json")),
    "generate-schema": ("POST", "/api/generate", generate(stream=False, format={
        "type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]})),
    "chat": ("POST", "/api/chat", chat(stream=False)),
    "chat-stream": ("POST", "/api/chat", chat()),
    "ps": ("GET", "/api/ps", None),
    "unknown-model": ("POST", "/api/generate", {"model": "no-such-model:latest", "prompt": "x", "stream": False}),
    "unknown-model-show": ("POST", "/api/show", {"model": "no-such-model:latest"}),
    "unknown-model-chat": ("POST", "/api/chat", {"model": "no-such-model:latest", "messages": [],
                                                 "stream": False}),
    "missing-model": ("POST", "/api/generate", {"prompt": "x", "stream": False}),
    "missing-model-show": ("POST", "/api/show", {}),
    "wrong-type": ("POST", "/api/generate", {"model": MODEL, "prompt": 5, "stream": False}),
    "wrong-type-options": ("POST", "/api/generate", generate(stream=False, options={"temperature": "hot"})),
    "delete-missing": ("DELETE", "/api/delete", {"model": "no-such-model:latest"}),
    "copy-missing": ("POST", "/api/copy", {"source": "no-such-model:latest", "destination": "x:latest"}),
    "embed": ("POST", "/api/embed", {"model": MODEL, "input": ["a", "b"]}),
    "embed-one": ("POST", "/api/embed", {"model": MODEL, "input": "a"}),
    "chat-options-wrong-type": ("POST", "/api/chat", chat(stream=False, options={"num_predict": "six"})),
    "v1-chat": ("POST", "/v1/chat/completions", openai_chat()),
    "v1-chat-stream": ("POST", "/v1/chat/completions", openai_chat(stream=True)),
    "v1-chat-stream-usage": ("POST", "/v1/chat/completions",
                             openai_chat(stream=True, stream_options={"include_usage": True})),
    "v1-completions": ("POST", "/v1/completions", openai_completion()),
    "v1-completions-stream": ("POST", "/v1/completions", openai_completion(stream=True)),
    "v1-chat-unknown-model": ("POST", "/v1/chat/completions", openai_chat(model="no-such-model:latest")),
    "v1-completions-unknown-model": ("POST", "/v1/completions", openai_completion(model="no-such-model:latest")),
    "v1-chat-wrong-type": ("POST", "/v1/chat/completions", openai_chat(temperature="hot")),
    "v1-chat-no-messages": ("POST", "/v1/chat/completions", {"model": MODEL}),
    "chat-json": ("POST", "/api/chat", chat(stream=False, format="json")),
    "chat-schema-stream": ("POST", "/api/chat", chat(format={
        "type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]})),
    "generate-raw": ("POST", "/api/generate", generate(stream=False, raw=True)),
    "v1-chat-json": ("POST", "/v1/chat/completions", openai_chat(response_format={"type": "json_object"})),
    "v1-completions-stream-usage": ("POST", "/v1/completions",
                                    openai_completion(stream=True, stream_options={"include_usage": True})),
    "chat-wrong-messages": ("POST", "/api/chat", {"model": MODEL, "messages": "hi", "stream": False}),
}
BAD_JSON = {"bad-json-generate": "/api/generate", "bad-json-chat": "/api/chat", "bad-json-show": "/api/show"}

# Differences where Ollama's behaviour is one modelpkg chooses not to copy (also in the README).
_OPTION_500 = ("an option of the wrong type is the client's error: 400 here; Ollama (v0.24 and v0.34: "
               "handleScheduleError's default) answers 500, a server fault clients may retry")
_CODE_NULL = ("OpenAI-style errors carry OpenAI's code (model_not_found, as api.openai.com answers, read by the "
              "openai SDK as err.code); Ollama's NewError leaves code null")
NOT_COPIED: dict[str, str] = {
    "wrong-type-options": _OPTION_500,
    "chat-options-wrong-type": _OPTION_500,
    "v1-chat-unknown-model": _CODE_NULL,
    "v1-completions-unknown-model": _CODE_NULL,
}
# Differences where v0.24.0, the Ollama that generates here, is older than the v0.34 behaviour modelpkg follows.
_NO_POOLING = ("v0.24's Go engine refuses to embed a GGUF without pooling_type (Gemma 3 270M's): 501; "
               "v0.34 embeds through llama-server, which pools any model, as modelpkg does")
OLD_0_24: dict[str, str] = {
    "embed": _NO_POOLING,
    "embed-one": _NO_POOLING,
    "v1-chat-stream": "v0.24's last chunk repeats role and content beside finish_reason; v0.34's Delta is all "
                      "omitempty, so its finish chunk has delta {} as OpenAI's does, and so does modelpkg's",
}
# Differences the API issue (15) owns: expected failures until it lands.
ISSUE_15: dict[str, str] = {
    "tags": "/api/tags entries lack capabilities and details.context_length/embedding_length (Ollama v0.34)",
    "show": "/api/show's model_info has 4 keys (Ollama: every GGUF key, arrays as null; "
            "general.parameter_count a number) and no tensors list",
    "missing-model": "/api/generate without a model: 400 here, Ollama answers 404",
}

# Fields modelpkg adds to an answer on purpose (Ollama's clients ignore fields they do not know), by case: the
# comparison leaves them out of modelpkg's top-level shape where Ollama has no such field (also in the README).
EXTRA_FIELDS: dict[str, dict[str, str]] = {
    "version": {"modelpkg": "modelpkg's own version and the store's id: how `modelpkg run` finds a serve of its "
                            "store (a real Ollama has no such field, so it is never taken for one)"},
}


def without_extras(case: str, ours, theirs):
    """``ours`` less the documented extra fields of ``case`` that Ollama's answer (``theirs``) lacks."""
    status, kind, body, framing = ours
    extras = EXTRA_FIELDS.get(case, {})
    if isinstance(body, dict) and isinstance(theirs[2], dict):
        body = {k: v for k, v in body.items() if k not in extras or k in theirs[2]}
    return status, kind, body, framing


def _mark(case: str):
    if case in NOT_COPIED:
        return pytest.param(case, marks=pytest.mark.xfail(reason=f"not copied: {NOT_COPIED[case]}", strict=True))
    if case in OLD_0_24:
        return pytest.param(case, marks=pytest.mark.xfail(reason=f"v0.24.0 is older: {OLD_0_24[case]}",
                                                          strict=True))
    if case in ISSUE_15:
        return pytest.param(case, marks=pytest.mark.xfail(reason=f"issue 15: {ISSUE_15[case]}", strict=True))
    return case


# Compared with Ollama v0.24.0 (generating_servers): they need an Ollama that generates.
GENERATING = {"generate", "generate-stream", "generate-json", "generate-schema", "chat", "chat-stream", "embed",
              "embed-one", "wrong-type-options", "chat-options-wrong-type", "v1-chat", "v1-chat-stream",
              "v1-chat-stream-usage", "v1-completions", "v1-completions-stream", "v1-chat-unknown-model",
              "v1-completions-unknown-model", "v1-chat-wrong-type", "v1-chat-no-messages", "chat-json",
              "chat-schema-stream", "generate-raw", "v1-chat-json", "v1-completions-stream-usage",
              "chat-wrong-messages"}


def _compare(servers, case):
    method, path, body = CASES[case]
    theirs, ours = (exchange(url, method, path, body) for url in servers)
    ours = without_extras(case, ours, theirs)
    assert ours == theirs, f"modelpkg {json.dumps(ours)}\nOllama   {json.dumps(theirs)}"


@pytest.mark.parametrize("case", [_mark(c) for c in CASES if c not in GENERATING])
def test_same_request_same_shape(servers, case):
    _compare(servers, case)


@pytest.mark.parametrize("case", [_mark(c) for c in CASES if c in GENERATING])
def test_generating_request_same_shape(generating_servers, case):
    _compare(generating_servers, case)


@pytest.mark.parametrize("case", [_mark(c) for c in BAD_JSON])
def test_bad_json_same_answer_shape(servers, case):
    theirs, ours = (exchange(url, "POST", BAD_JSON[case], raw=b"{not json") for url in servers)
    assert ours == theirs


def test_copy_and_delete_same_status_and_body(servers):
    results = []
    for url in servers:
        copied = requests.post(url + "/api/copy", json={"source": MODEL, "destination": "diff-copy:latest"}, timeout=30)
        deleted = requests.delete(url + "/api/delete", json={"model": "diff-copy:latest"}, timeout=30)
        again = requests.delete(url + "/api/delete", json={"model": "diff-copy:latest"}, timeout=30)
        results.append([(r.status_code, r.text.strip() if r.status_code == 200 else shape(r.json()))
                        for r in (copied, deleted, again)])
    assert results[1] == results[0]
