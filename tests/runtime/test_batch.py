"""Continuous batching (``runtime.batch``, issue 14) on the real Gemma 3 270M: concurrent greedy answers equal
each one's answer alone, each sequence ends on its own (stop string, num_predict), keeps its own grammar, a
cancelled one frees its slot at once, embeddings of many inputs equal one by one, and the runner process
answers concurrent requests from threads. Short answers throughout: the file must stay quick on 2 cores."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

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


def same_or_near_tie(tokens: list[int], logprobs, expected: list[int], runner) -> int | None:
    """None when ``tokens`` equal ``expected``; else the index of the first difference, checked to be a near
    tie (the expected token is the runner-up within 0.5 nats), as llama.cpp's batched kernels may swap one."""
    if tokens == expected:
        return None
    at = next((i for i, (a, b) in enumerate(zip(tokens, expected, strict=False)) if a != b), None)
    assert at is not None, "one answer is a prefix of the other"
    wanted = runner.detokenize([expected[at]])
    alternatives = {t.token: t.logprob for t in logprobs[at].top}
    assert wanted in alternatives, (at, wanted, alternatives)
    assert logprobs[at].logprob - alternatives[wanted] < 0.5, (at, wanted, alternatives)
    return at


def test_eight_concurrent_greedy_answers_equal_their_solo_answers_or_differ_at_a_near_tie(batched, solo_answers):
    steps = batched.scheduler.steps
    sampling = SamplingOptions(temperature=0, max_tokens=TOKENS, logprobs=2)
    generations = batched.generate_all(PROMPTS, sampling)  # all in the same steps
    texts = [g.text() for g in generations]
    differing = {}
    for prompt, generation, text in zip(PROMPTS, generations, texts, strict=True):
        result = generation.result
        assert text == result.text and text
        assert result.eval_count == TOKENS and result.done_reason == "length"
        assert result.prompt_eval_count == result.prompt_tokens == len(batched.tokenize(prompt))
        assert 0 < result.time_to_first_token <= result.total_duration and result.eval_duration > 0
        at = same_or_near_tie(result.tokens, result.logprobs, solo_answers[prompt], batched)
        if at is not None:
            differing[prompt] = at
    assert len(differing) <= len(PROMPTS) // 2, differing
    # decoded together: one step per token for all eight (the prompts in the first), not eight times as many
    assert batched.scheduler.steps - steps == TOKENS


def test_sequences_never_mix_an_answer_does_not_depend_on_what_the_others_say(batched):
    """The same batch shape with other content beside it: bit-for-bit the same answer and log probabilities."""
    sampling = SamplingOptions(temperature=0, max_tokens=8, logprobs=1)
    ours = "Once upon a time,"
    answers = []
    for others in (["The capital of France is", "The colour of grass is", "My favourite food is"],
                   ["The capital of Spain is", "The colour of snow is", "My favourite drink is"]):
        assert [len(batched.tokenize(p)) for p in others] == [6, 6, 5]  # the same shape both times
        generations = batched.generate_all([ours, *others], sampling)
        for generation in generations:
            generation.text()
        result = generations[0].result
        answers.append((result.tokens, [(lp.token, lp.logprob) for lp in result.logprobs]))
        assert generations[1].result.tokens != generations[0].result.tokens
    assert answers[0] == answers[1]


def test_alone_in_the_batch_answers_as_the_one_at_a_time_runner(batched, solo_answers):
    for prompt in PROMPTS[:3]:
        generation = batched.generate(prompt, GREEDY)
        generation.text()
        assert generation.result.tokens == solo_answers[prompt]


def test_a_stop_string_or_num_predict_ends_one_sequence_while_the_others_go_on(batched):
    prompts = PROMPTS[:3]
    reference = batched.generate_all(prompts, GREEDY)
    texts = [g.text() for g in reference]
    stop = texts[1].split()[1]  # the answer's second word: within the steps all three share
    short, stopped, longest = batched.generate_all(prompts, [
        SamplingOptions(temperature=0, max_tokens=3),
        SamplingOptions(temperature=0, max_tokens=TOKENS, stop=(stop,)),
        GREEDY])
    assert short.text() and short.result.eval_count == 3 and short.result.done_reason == "length"
    assert short.result.tokens == reference[0].result.tokens[:3]
    text = stopped.text()
    assert stopped.result.done_reason == "stop" and stopped.result.stop_sequence == stop
    assert text == texts[1][:texts[1].index(stop)] and stopped.result.eval_count < 4
    longest.text()
    assert longest.result.done_reason == "length" and longest.result.eval_count == TOKENS
    assert longest.result.tokens[:3] == reference[2].result.tokens[:3]


def test_each_sequence_keeps_its_own_format_grammar(batched, solo):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    sampling = SamplingOptions(temperature=0, max_tokens=24)
    prompts = [PROMPTS[4], PROMPTS[1], PROMPTS[3]]
    plain = [g.text() for g in batched.generate_all(prompts, sampling)]
    constrained, free, as_json = batched.generate_all(prompts, sampling, format=[schema, None, "json"])
    assert json.loads(constrained.text())["ok"] in (True, False)
    assert as_json.text().lstrip().startswith(("{", "["))
    assert free.text() == plain[1]  # no grammar leaked into it: the same tokens as without the others'
    solo.reset()
    expected = solo.generate(PROMPTS[4], sampling, format=schema).text()
    alone = batched.generate(PROMPTS[4], sampling, format=schema)
    assert alone.text() == expected


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
        answers: dict[str, Any] = {}
        errors: list[BaseException] = []

        def ask(prompt: str) -> None:
            try:
                generation = remote.generate(prompt, SamplingOptions(temperature=0, max_tokens=TOKENS, logprobs=2))
                pieces = list(generation)
                assert "".join(pieces) == generation.result.text and generation.result.eval_count == TOKENS
                answers[prompt] = generation.result
            except BaseException as e:  # noqa: BLE001 - reported by the main thread
                errors.append(e)

        threads = [threading.Thread(target=ask, args=(p,)) for p in PROMPTS[:6]]  # 4 slots, 2 wait
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not errors and sorted(answers) == sorted(PROMPTS[:6])
        for prompt, result in answers.items():  # which others shared its steps depends on the threads' timing
            same_or_near_tie(result.tokens, result.logprobs, solo_answers[prompt], remote)
        # a client that goes away mid-stream: its slot is free for the next request at once
        going = remote.generate(PROMPTS[3], SamplingOptions(temperature=0, max_tokens=400))
        next(iter(going))
        going.close()
        assert going.result.done_reason == "interrupted" and going.result.eval_count < 400
        after = remote.generate(PROMPTS[0], GREEDY)
        after.text()
        assert after.result.tokens == solo_answers[PROMPTS[0]]
