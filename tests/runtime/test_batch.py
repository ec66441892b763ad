"""Continuous batching (``runtime.batch``, issue 14) on the real Gemma 3 270M: concurrent greedy answers equal
each one's answer alone, each sequence ends on its own (stop string, num_predict), keeps its own grammar, a
cancelled one frees its slot at once, embeddings of many inputs equal one by one, and the runner process
answers concurrent requests from threads. Short answers throughout: the file must stay quick on 2 cores."""

from __future__ import annotations

import json
import threading
import time

import pytest

from capabilities import require_module
from modelpkg.runtime.runner import LoadOptions, Runner, SamplingOptions, load_options

pytestmark = [pytest.mark.model, pytest.mark.llama]

PROMPTS = [
    "Here is a list of three primary colors:\n1.",
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "Once upon a time, in a small village,",
    "The three states of matter are",
    "To make a cup of tea, first",
    "The largest planet in the solar system is",
    "A haiku about the sea:\n",
]
TOKENS = 16
GREEDY = SamplingOptions(temperature=0, max_tokens=TOKENS)


@pytest.fixture(scope="module")
def options(gemma_gguf) -> LoadOptions:
    require_module("llama_cpp")
    return LoadOptions(gemma_gguf, n_ctx=512, n_threads=2)


@pytest.fixture(scope="module")
def solo(options):
    with Runner.load(options) as runner:
        yield runner


@pytest.fixture(scope="module")
def batched(options):
    from modelpkg.runtime.batch import BatchRunner

    with BatchRunner.load(LoadOptions(options.model_path, n_ctx=512, n_threads=2, n_parallel=8)) as runner:
        yield runner


@pytest.fixture(scope="module")
def solo_answers(solo) -> dict[str, list[int]]:
    answers = {}
    for prompt in PROMPTS:
        solo.reset()
        generation = solo.generate(prompt, GREEDY)
        generation.text()
        answers[prompt] = list(generation.result.tokens)
    return answers


def test_n_parallel_is_a_load_option_and_one_keeps_the_old_runner(options):
    assert LoadOptions(options.model_path).n_parallel == 1
    assert load_options({}, options.model_path).n_parallel == 1
    assert load_options({}, options.model_path, n_parallel=4).n_parallel == 4


def test_eight_concurrent_greedy_answers_equal_their_solo_answers(batched, solo_answers):
    steps = batched.scheduler.steps
    generations = [batched.generate(prompt, GREEDY) for prompt in PROMPTS]  # all in the batch at once
    texts = [g.text() for g in generations]
    for prompt, generation, text in zip(PROMPTS, generations, texts, strict=True):
        result = generation.result
        assert result.tokens == solo_answers[prompt], prompt
        assert text == result.text and text
        assert result.eval_count == TOKENS and result.done_reason == "length"
        assert result.prompt_eval_count == result.prompt_tokens == len(batched.tokenize(prompt))
        assert 0 < result.time_to_first_token <= result.total_duration and result.eval_duration > 0
    # decoded together: one step per token for all eight (plus the prompts' step), not eight times as many
    assert batched.scheduler.steps - steps <= TOKENS + 2


def test_alone_in_the_batch_answers_as_the_one_at_a_time_runner(batched, solo_answers):
    for prompt in PROMPTS[:3]:
        generation = batched.generate(prompt, GREEDY)
        generation.text()
        assert generation.result.tokens == solo_answers[prompt]


def test_a_stop_string_or_num_predict_ends_one_sequence_while_the_others_go_on(batched, solo, solo_answers):
    full = solo.detokenize(solo_answers[PROMPTS[1]])
    stop = full.strip().split()[1]  # a word inside the solo answer
    short = batched.generate(PROMPTS[0], SamplingOptions(temperature=0, max_tokens=3))
    stopped = batched.generate(PROMPTS[1], SamplingOptions(temperature=0, max_tokens=TOKENS, stop=(stop,)))
    longest = batched.generate(PROMPTS[2], GREEDY)
    assert short.text() and short.result.eval_count == 3 and short.result.done_reason == "length"
    assert short.result.tokens == solo_answers[PROMPTS[0]][:3]
    text = stopped.text()
    assert stopped.result.done_reason == "stop" and stopped.result.stop_sequence == stop
    assert text == full[:full.index(stop)]
    longest.text()
    assert longest.result.tokens == solo_answers[PROMPTS[2]] and longest.result.done_reason == "length"


def test_each_sequence_keeps_its_own_format_grammar(batched, solo, solo_answers):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    sampling = SamplingOptions(temperature=0, max_tokens=24)
    solo.reset()
    alone = solo.generate(PROMPTS[4], sampling, format=schema)
    expected = alone.text()
    constrained = batched.generate(PROMPTS[4], sampling, format=schema)
    free = batched.generate(PROMPTS[1], GREEDY)
    as_json = batched.generate(PROMPTS[3], sampling, format="json")
    assert constrained.text() == expected and constrained.result.tokens == alone.result.tokens
    assert json.loads(expected)["ok"] in (True, False)
    assert free.text() and free.result.tokens == solo_answers[PROMPTS[1]]  # no grammar leaked into it
    assert as_json.text().lstrip().startswith(("{", "["))


def test_a_cancelled_sequence_frees_its_slot_for_the_next_request(options):
    from modelpkg.runtime.batch import BatchRunner

    long = SamplingOptions(temperature=0, max_tokens=400)
    with BatchRunner.load(LoadOptions(options.model_path, n_ctx=512, n_threads=2, n_parallel=2)) as runner:
        first = runner.generate(PROMPTS[3], long)
        second = runner.generate(PROMPTS[5], long)
        pieces = iter(first)
        next(pieces), next(pieces)
        waiting = runner.generate(PROMPTS[1], GREEDY)  # no slot yet: both are taken
        assert runner.scheduler.busy == 3
        first.close()  # the client went away
        assert first.result.done_reason == "interrupted" and 2 <= first.result.eval_count < 400
        started = time.perf_counter()
        next(iter(waiting))  # it got the slot at once, while the second still runs
        assert time.perf_counter() - started < 5 and runner.scheduler.busy == 2
        waiting.text()
        assert waiting.result.done_reason == "length"
        second.close()
        assert runner.scheduler.busy == 0


def test_embeddings_of_many_inputs_equal_one_by_one(options):
    import numpy as np

    texts = ["hello world", "the sky is blue", "a", "Gemma is a small model from Google", "42"]
    with Runner.load(options, embedding=True) as runner:
        together, count = runner.embed(texts)
        alone = [runner.embed([text]) for text in texts]
    assert count == sum(n for _, n in alone)
    for vector, (single, _) in zip(together, alone, strict=True):
        assert np.allclose(vector, single[0], atol=1e-4)


def test_the_runner_process_answers_concurrent_requests_from_threads(options, solo_answers):
    from modelpkg.runtime.remote import RemoteRunner

    remote_options = LoadOptions(options.model_path, n_ctx=512, n_threads=2, n_parallel=4)
    with RemoteRunner.load(remote_options, label="gemma") as remote:
        assert remote.n_ctx == 512  # per sequence
        answers: dict[str, list[int]] = {}
        errors: list[BaseException] = []

        def ask(prompt: str) -> None:
            try:
                generation = remote.generate(prompt, GREEDY)
                pieces = list(generation)
                assert "".join(pieces) == generation.result.text and generation.result.eval_count == TOKENS
                answers[prompt] = generation.result.tokens
            except BaseException as e:  # noqa: BLE001 - reported by the main thread
                errors.append(e)

        threads = [threading.Thread(target=ask, args=(p,)) for p in PROMPTS[:6]]  # 4 slots, 2 wait
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not errors and answers == {p: solo_answers[p] for p in PROMPTS[:6]}
        # a client that goes away mid-stream: its slot is free for the next request at once
        going = remote.generate(PROMPTS[3], SamplingOptions(temperature=0, max_tokens=400))
        next(iter(going))
        going.close()
        assert going.result.done_reason == "interrupted" and going.result.eval_count < 400
        after = remote.generate(PROMPTS[0], GREEDY)
        after.text()
        assert after.result.tokens == solo_answers[PROMPTS[0]]
