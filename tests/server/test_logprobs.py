"""Token log probabilities on ``modelpkg serve``: OpenAI's ``logprobs``/``top_logprobs`` on chat completions, the
legacy integer ``logprobs`` on completions, and Ollama's ``logprobs``/``top_logprobs`` on generate and chat,
through the official ``openai`` and ``ollama`` clients against Gemma 3 270M on loopback.

The numbers are checked against llama-cpp-python's own ``create_completion(logprobs=...)`` on a model loaded with
``logits_all=True`` (an independent computation from the logits matrix), and the shapes against each other:
a stream's pieces carry exactly the tokens of the whole answer.
"""

from __future__ import annotations

import math

import pytest

from capabilities import require_module
from serve_helpers import serving

openai = require_module("openai")
ollama = require_module("ollama")
httpx = require_module("httpx")

BASE = "gemma3-base"
CHAT = "gemma3-chat"
PROMPT = "Here is a list of three primary colors:\n1."
GREEDY = {"temperature": 0, "num_predict": 8}


@pytest.fixture(scope="module")
def served(tmp_path_factory, gemma_gguf):
    with serving(tmp_path_factory, gemma_gguf) as server:
        yield server


@pytest.fixture(scope="module")
def oai(served):
    return openai.OpenAI(base_url=served.url + "/v1", api_key="unused", timeout=120, max_retries=0)


@pytest.fixture(scope="module")
def client(served):
    return ollama.Client(host=served.url, timeout=120)


def check_entries(entries, top: int) -> None:
    """Each token: a log probability <= 0 whose bytes are the token (where the client keeps them: the ollama
    package's types have no ``bytes``); greedy decoding chose the likeliest."""
    assert entries
    for e in entries:
        assert e["logprob"] <= 0
        assert "bytes" not in e or bytes(e["bytes"]).decode("utf-8", errors="replace") == e["token"]
        assert len(e["top_logprobs"]) == top
        if top:
            best = e["top_logprobs"]
            assert [b["logprob"] for b in best] == sorted((b["logprob"] for b in best), reverse=True)
            assert best[0]["token"] == e["token"] and best[0]["logprob"] == pytest.approx(e["logprob"])
            assert sum(math.exp(b["logprob"]) for b in best) <= 1 + 1e-6


def test_legacy_completions_logprobs_match_llama_cpp_python(oai, gemma_gguf):
    llama_cpp = require_module("llama_cpp")
    answer = oai.completions.create(model=BASE, prompt=PROMPT, max_tokens=6, temperature=0, logprobs=3)
    choice = answer.choices[0]
    lp = choice.logprobs
    assert "".join(lp.tokens) == choice.text and len(lp.tokens) == answer.usage.completion_tokens == 6
    assert lp.text_offset[0] == len(PROMPT) and lp.text_offset == sorted(lp.text_offset)
    assert all(len(top) <= 3 and top[token] == pytest.approx(value)
               for token, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True))
    llm = llama_cpp.Llama(model_path=str(gemma_gguf), n_ctx=512, logits_all=True, verbose=False)
    try:
        reference = llm.create_completion(PROMPT, max_tokens=6, temperature=0, logprobs=3)["choices"][0]
    finally:
        llm.close()
    assert reference["text"] == choice.text
    assert lp.token_logprobs == pytest.approx(reference["logprobs"]["token_logprobs"], abs=2e-3)
    assert lp.text_offset == reference["logprobs"]["text_offset"]


def test_chat_completions_logprobs_whole_and_streamed(oai):
    messages = [{"role": "user", "content": "Name three primary colors."}]
    whole = oai.chat.completions.create(model=CHAT, messages=messages, max_tokens=8, temperature=0,
                                        logprobs=True, top_logprobs=3)
    content = [e.model_dump() for e in whole.choices[0].logprobs.content]
    check_entries(content, 3)
    assert "".join(e["token"] for e in content) == whole.choices[0].message.content
    assert len(content) == whole.usage.completion_tokens
    chunks = list(oai.chat.completions.create(model=CHAT, messages=messages, max_tokens=8, temperature=0,
                                              logprobs=True, top_logprobs=3, stream=True))
    streamed = [e.model_dump() for c in chunks if c.choices and c.choices[0].logprobs
                for e in c.choices[0].logprobs.content]
    assert streamed == content
    for c in chunks:  # each piece carries the tokens whose text it brings
        if c.choices and c.choices[0].delta.content:
            assert "".join(e.token for e in c.choices[0].logprobs.content) == c.choices[0].delta.content
    plain = oai.chat.completions.create(model=CHAT, messages=messages, max_tokens=8, temperature=0)
    assert plain.choices[0].logprobs is None and plain.choices[0].message.content == whole.choices[0].message.content
    only_chosen = oai.chat.completions.create(model=CHAT, messages=messages, max_tokens=8, temperature=0,
                                              logprobs=True)
    check_entries([e.model_dump() for e in only_chosen.choices[0].logprobs.content], 0)


def test_ollama_generate_and_chat_logprobs(client, oai, served):
    whole = client.generate(BASE, PROMPT, options=GREEDY, logprobs=True, top_logprobs=2)
    entries = [e.model_dump() for e in whole.logprobs]
    check_entries(entries, 2)
    assert "".join(e["token"] for e in entries) == whole.response and len(entries) == whole.eval_count
    parts = list(client.generate(BASE, PROMPT, options=GREEDY, logprobs=True, top_logprobs=2, stream=True))
    assert [e.model_dump() for p in parts for e in (p.logprobs or [])] == entries
    # the same numbers the OpenAI layer gives for the same prompt
    legacy = oai.completions.create(model=BASE, prompt=PROMPT, max_tokens=8, temperature=0, logprobs=2)
    assert legacy.choices[0].logprobs.token_logprobs == [e["logprob"] for e in entries]
    assert client.generate(BASE, PROMPT, options=GREEDY).logprobs is None
    raw = httpx.post(served.url + "/api/generate", timeout=120, json={
        "model": BASE, "prompt": PROMPT, "options": GREEDY, "logprobs": True, "top_logprobs": 2,
        "stream": False}).json()["logprobs"]
    check_entries(raw, 2)
    assert [(e["token"], e["logprob"]) for e in raw] == [(e["token"], e["logprob"]) for e in entries]
    assert all(set(t) == {"token", "logprob", "bytes"} for e in raw for t in e["top_logprobs"])
    chat = client.chat(CHAT, [{"role": "user", "content": "Hi"}], options=GREEDY, logprobs=True)
    check_entries([e.model_dump() for e in chat.logprobs], 0)
    assert "".join(e.token for e in chat.logprobs) == chat.message.content


def test_tokens_cut_by_a_stop_string_are_left_out(client):
    free = client.generate(BASE, PROMPT, options=GREEDY, logprobs=True)
    stop = free.response.split()[1]  # a word from inside the free answer
    cut = client.generate(BASE, PROMPT, options={**GREEDY, "stop": [stop]}, logprobs=True)
    assert cut.response == free.response[:free.response.index(stop)]
    tokens = "".join(e.token for e in cut.logprobs)
    assert tokens.startswith(cut.response) and len(tokens) < len(cut.response) + len(stop)
    assert len(cut.logprobs) < len(free.logprobs)


def test_bad_logprobs_requests(served, oai):
    for top in (21, -1, "3"):
        answer = httpx.post(served.url + "/api/generate", json={"model": BASE, "prompt": "x", "logprobs": True,
                                                                "top_logprobs": top, "stream": False})
        assert answer.status_code == 400 and answer.json()["error"] == "top_logprobs must be between 0 and 20"
    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": "x"}], top_logprobs=2)
    assert "logprobs must be true" in e.value.message
    with pytest.raises(openai.BadRequestError):
        oai.completions.create(model=BASE, prompt="x", logprobs=30)


def test_retrieve_a_model(oai, served):
    model = oai.models.retrieve(CHAT)
    assert model.id == "gemma3-chat:latest" and model.object == "model" and model.owned_by == "library"
    listed = {m.id: m for m in oai.models.list()}
    assert listed[model.id] == model
    assert oai.models.retrieve("registry.ollama.ai/library/gemma3-chat:latest") == model
    with pytest.raises(openai.NotFoundError) as e:
        oai.models.retrieve("no-such-model")
    assert e.value.body == {"message": "model 'no-such-model' not found", "type": "invalid_request_error",
                            "param": None, "code": "model_not_found"}
    assert httpx.get(served.url + "/v1/models/Bad..Name").status_code == 404
    assert httpx.post(served.url + "/v1/models/" + CHAT).status_code == 404  # retrieve is GET only
