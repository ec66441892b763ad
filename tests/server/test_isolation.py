"""The engine cannot take the server down: each model runs in a runner process of its own.

Real Gemma 3 270M, real HTTP to ``make_server`` on loopback. The runner's test-only fault switch
(``MODELPKG_TEST_RUNNER_FAULT=segv|abort|oom[:tokens]``, read in the runner process when it starts) makes it
crash mid-generation: only the requests on that model fail, with one clear error; ``/api/tags`` and the other
model keep answering during and after; the next request loads the model again. The schemas that killed the
old server (``maxItems``/``maxLength`` 5000, ``minItems`` 10,000,000) get a clean 400 from the bounds, and
with the bounds switched off ``maxItems``/``maxLength`` 5000 crash only the runner (``minItems`` 10,000,000
does not crash llama-cpp-python 0.3.36: it spends about 11 s building a 170 MB grammar, which the bound
on the grammar's size refuses).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from capabilities import require_module
from serve_helpers import serving

httpx = require_module("httpx")

REPO = Path(__file__).resolve().parents[2]
BASE = "gemma3-base"
OTHER = "gemma3-other"      # the same weights, another model: a runner process of its own
PROMPT = "Here is a list of three primary colors:\n1."
FAST = {"temperature": 0, "num_predict": 8}
LONG = {"temperature": 0, "num_predict": 48}
CRASHED = "the model runner for '"
SCHEMAS = {
    "maxItems": {"type": "array", "items": {"type": "string"}, "maxItems": 5000},
    "maxLength": {"type": "string", "maxLength": 5000},
    "minItems": {"type": "array", "items": {"type": "string"}, "minItems": 10000000},
}


@pytest.fixture(scope="module")
def served(tmp_path_factory, gemma_gguf):
    weights = "FROM ./gemma3-270m-q4_k_m.gguf\n"
    with serving(tmp_path_factory, gemma_gguf, names=(),
                 modelfiles={BASE: weights, OTHER: weights + "PARAMETER top_k 20\n"}) as server:
        yield server


def generate(served, model: str, options=None, **extra) -> httpx.Response:
    body = {"model": model, "prompt": PROMPT, "stream": False, "options": options or FAST, **extra}
    return httpx.post(served.url + "/api/generate", json=body, timeout=300)


def unload(served, model: str) -> None:
    assert generate(served, model, keep_alive=0, prompt="").status_code == 200


def runner_pids(served) -> set[int]:
    pids = set()
    for loaded, _ in served.app.cache.loaded():
        for runner in (loaded.runner, loaded.embedder):
            if runner is not None and runner.alive:
                pids.add(runner.process.pid)
    return pids


def tags_keep_answering(served, stop: threading.Event, answers: list[int]) -> None:
    while not stop.is_set():
        answers.append(httpx.get(served.url + "/api/tags", timeout=30).status_code)
        time.sleep(0.05)


@pytest.mark.parametrize(("fault", "signal_text"), [("segv", "signal SIGSEGV"), ("abort", "signal SIGABRT"),
                                                   ("oom", "out of memory: its limit is 3072 MiB")])
def test_a_crash_in_the_runner_fails_only_its_model(served, monkeypatch, fault, signal_text):
    expected = generate(served, BASE).json()["response"]
    assert generate(served, OTHER).status_code == 200  # loaded before the fault is switched on: unaffected
    unload(served, BASE)
    other_pids = runner_pids(served)
    assert len(other_pids) == 1
    monkeypatch.setenv("MODELPKG_TEST_RUNNER_FAULT", f"{fault}:4")
    monkeypatch.setenv("MODELPKG_RUNNER_MEMORY_MB", "3072")

    stop, tags = threading.Event(), []
    watcher = threading.Thread(target=tags_keep_answering, args=(served, stop, tags))
    other: list[httpx.Response] = []
    neighbour = threading.Thread(target=lambda: other.append(generate(served, OTHER, LONG)))
    watcher.start()
    neighbour.start()
    try:
        crashed = generate(served, BASE, LONG)
        assert crashed.status_code == 500, crashed.text
        message = crashed.json()["error"]
        assert message == (f"the model runner for '{BASE}:latest' stopped ({signal_text}) while answering; "
                           "it will be loaded again on the next request")
        # a streamed request crashes the same way: its stream ends with the error line
        with httpx.stream("POST", served.url + "/api/generate", timeout=300,
                          json={"model": BASE, "prompt": PROMPT, "options": LONG}) as streamed:
            lines = [line for line in streamed.iter_lines() if line]
        assert streamed.status_code == 200
        crashed_at = time.perf_counter()
        assert '"response"' in lines[0] and CRASHED in lines[-1] and signal_text in lines[-1]
        assert httpx.get(served.url + "/api/tags", timeout=30).status_code == 200

        monkeypatch.delenv("MODELPKG_TEST_RUNNER_FAULT")
        again = generate(served, BASE)
        recovery = time.perf_counter() - crashed_at
    finally:
        neighbour.join(timeout=300)
        stop.set()
        watcher.join(timeout=60)
    assert again.status_code == 200 and again.json()["response"] == expected
    assert again.json()["load_duration"] > 0  # loaded again, in a new runner process
    assert other and other[0].status_code == 200 and other[0].json()["eval_count"] > 8
    assert other_pids <= runner_pids(served)  # the other model's runner never stopped
    assert tags and set(tags) == {200}
    print(f"\n{fault}: crash -> the next answer (a fresh load + 8 tokens) in {recovery:.2f} s; "
          f"/api/tags answered {len(tags)} times meanwhile")


@pytest.mark.parametrize("keyword", sorted(SCHEMAS))
def test_the_schemas_that_crashed_the_old_server_are_refused(served, keyword):
    answer = generate(served, BASE, format=SCHEMAS[keyword])
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error.startswith(f"format: {keyword} ") and "more than this server allows (500)" in error
    chat = httpx.post(served.url + "/v1/chat/completions", timeout=300, json={
        "model": BASE, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMAS[keyword]}}})
    assert chat.status_code == 400 and keyword in chat.json()["error"]["message"]
    assert generate(served, BASE).status_code == 200


def test_a_bound_within_the_limit_still_constrains_the_answer(served):
    answer = generate(served, BASE, {"temperature": 0, "num_predict": 40},
                      format={"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 3})
    assert answer.status_code == 200, answer.text
    assert answer.json()["response"].lstrip().startswith("[")


@pytest.mark.parametrize("keyword", ["maxItems", "maxLength"])
def test_with_the_bounds_off_the_crash_stays_in_the_runner(served, monkeypatch, keyword):
    monkeypatch.setenv("MODELPKG_GRAMMAR_MAX_REPEAT", "0")
    monkeypatch.setenv("MODELPKG_GRAMMAR_MAX_BYTES", "0")
    monkeypatch.setenv("MODELPKG_RUNNER_MEMORY_MB", "3072")
    unload(served, BASE)
    assert generate(served, BASE).status_code == 200
    pids = runner_pids(served)
    crashed = generate(served, BASE, format=SCHEMAS[keyword])
    # one-request runners crash in llama.cpp's grammar sampler; the batching runner (serve's default of 4
    # slots) builds its sampler with llama_sampler_init_grammar itself, which may refuse the grammar instead
    if crashed.status_code == 400:
        assert crashed.json()["error"] == "llama.cpp cannot read the grammar made from this format"
    else:
        assert crashed.status_code == 500, crashed.text
        assert crashed.json()["error"].startswith(CRASHED + f"{BASE}:latest' stopped (")
    assert httpx.get(served.url + "/api/tags", timeout=30).status_code == 200
    again = generate(served, BASE)
    assert again.status_code == 200
    assert not pids & runner_pids(served) or len(pids) > 1  # the crashed runner was replaced
    for loaded, _ in served.app.cache.loaded():
        if loaded.runner is not None:
            assert loaded.runner.process.log_bytes >= 0 and len(loaded.runner.process.log_tail()) <= 64 * 1024


def test_a_disconnected_stream_cancels_its_generation_in_the_runner(served):
    body = {"model": BASE, "prompt": PROMPT, "options": {"temperature": 0, "num_predict": 400}}
    with httpx.stream("POST", served.url + "/api/generate", json=body, timeout=300) as streamed:
        for _ in zip(range(3), streamed.iter_lines(), strict=False):
            pass
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        events = [e for e in served.app.events if e.path == "/api/generate"]
        if events and events[-1].done_reason == "interrupted":
            break
        time.sleep(0.05)
    assert events[-1].done_reason == "interrupted" and events[-1].eval_count < 400
    assert generate(served, BASE).status_code == 200


def test_unloading_kills_the_runner_process(served):
    assert generate(served, BASE).status_code == 200
    pids = runner_pids(served)
    unload(served, BASE)
    unload(served, OTHER)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not runner_pids(served)


def test_a_prompt_longer_than_the_context_is_a_400(served):
    answer = generate(served, BASE, {"num_ctx": 256, "num_predict": 4}, raw=True, prompt="word " * 600)
    assert answer.status_code == 400 and "the context holds" in answer.json()["error"]
    too_many = generate(served, BASE, {"num_predict": -5})
    assert too_many.status_code == 400 and "num_predict" in too_many.json()["error"]
