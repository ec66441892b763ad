"""The runner process (``runtime.remote`` and ``runtime.worker``): the same answers as in-process, several
requests in flight on one pipe, cancellation by id, the wire format, and the GGUF shape reader."""

from __future__ import annotations

import io
import struct
import time

import pytest

from capabilities import require_module
from modelpkg.core.errors import InvalidInputError, NotFoundError, RunnerError
from modelpkg.core.limits import ModelShape
from modelpkg.runtime import wire
from modelpkg.runtime.ggufshape import available_memory, model_shape
from modelpkg.runtime.runner import LoadOptions, Runner, SamplingOptions

PROMPT = "Here is a list of three primary colors:\n1."
GREEDY = SamplingOptions(temperature=0, max_tokens=12)


@pytest.fixture(scope="module")
def options(gemma_gguf) -> LoadOptions:
    require_module("llama_cpp")
    return LoadOptions(gemma_gguf, n_ctx=1024, n_threads=2)


@pytest.fixture(scope="module")
def remote(options):
    from modelpkg.runtime.remote import RemoteRunner

    runner = RemoteRunner.load(options, label="gemma")
    yield runner
    runner.close()


@pytest.fixture(scope="module")
def local(options):
    with Runner.load(options) as runner:
        yield runner


def test_the_runner_process_answers_as_in_process(remote, local):
    assert remote.n_ctx == local.n_ctx and remote.chat_template == local.chat_template
    assert remote.tokenize("Hello <start_of_turn>") == local.tokenize("Hello <start_of_turn>")
    assert remote.detokenize([2, 9259]) == local.detokenize([2, 9259])
    messages = [{"role": "user", "content": "hi"}]
    template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
    assert remote.format_chat(messages, template) == local.format_chat(messages, template)
    local.reset()
    expected = local.generate(PROMPT, GREEDY)
    text = expected.text()
    remote.reset()
    generation = remote.generate(PROMPT, GREEDY)
    pieces = list(generation)
    assert "".join(pieces) == text and len(pieces) > 3  # streamed piece by piece
    assert generation.result.tokens == expected.result.tokens
    assert generation.result.done_reason == "length" and generation.result.eval_count == 12
    assert remote.last_prompt_tokens == local.last_prompt_tokens


def test_embeddings_cross_the_pipe_exactly(options, gemma_gguf):
    from modelpkg.runtime.remote import RemoteRunner

    with RemoteRunner.load(options, embedding=True) as remote, Runner.load(options, embedding=True) as local:
        assert remote.embed(["hello world", "sky"]) == local.embed(["hello world", "sky"])


def test_requests_in_flight_come_back_tagged(remote):
    answers = {}
    for prompt in (PROMPT, "The capital of France is"):
        remote.reset()  # each from a clean KV cache, as serve asks (a cached prefix changes greedy answers)
        answers[prompt] = remote.generate(prompt, GREEDY).text()
    remote.reset()
    first = remote.generate(PROMPT, GREEDY)  # not read yet: its pieces wait under its id
    remote.reset()                           # queued in the runner behind the first generation
    second = remote.generate("The capital of France is", GREEDY)
    assert second.text() == answers["The capital of France is"] and first.text() == answers[PROMPT]


def test_closing_a_generation_cancels_it_in_the_runner(remote):
    generation = remote.generate(PROMPT, SamplingOptions(temperature=0, max_tokens=500))
    pieces = iter(generation)
    next(pieces)
    generation.close()
    assert generation.result.done_reason == "interrupted" and generation.result.eval_count < 100
    assert remote.generate(PROMPT, GREEDY).text()  # the runner goes on


def test_errors_in_the_runner_keep_their_kind(remote):
    with pytest.raises(InvalidInputError) as e:
        remote.generate("word " * 2000, GREEDY)
    assert "the context holds 1024" in e.value.message
    with pytest.raises(InvalidInputError):
        remote.generate(PROMPT, GREEDY, format={"type": "array", "maxItems": 5000})
    with pytest.raises(RunnerError):
        remote.detokenize(["x"])
    assert remote.alive


def test_a_crash_fails_every_waiting_request_and_says_which_signal(options, monkeypatch):
    from modelpkg.runtime.remote import RemoteRunner

    monkeypatch.setenv("MODELPKG_TEST_RUNNER_FAULT", "segv:2")
    runner = RemoteRunner.load(options, label="gemma")
    try:
        first = runner.generate(PROMPT, GREEDY)
        with pytest.raises(RunnerError) as e:
            first.text()
        assert e.value.message == ("the model runner for 'gemma' stopped (signal SIGSEGV) while answering; "
                                   "it will be loaded again on the next request")
        assert not runner.alive
        with pytest.raises(RunnerError) as again:
            runner.tokenize("x")
        assert "stopped (signal SIGSEGV)" in again.value.message
    finally:
        runner.close()


def test_a_load_error_is_the_same_error_as_in_process(tmp_path):
    from modelpkg.runtime.remote import RemoteRunner

    with pytest.raises(RunnerError) as e:
        RemoteRunner.load(LoadOptions(tmp_path / "missing.gguf"))
    assert e.value.message.startswith("llama.cpp cannot load ")


def test_unloading_returns_the_memory(options):
    from modelpkg.runtime.remote import RemoteRunner

    runner = RemoteRunner.load(options)
    pid = runner.process.pid
    runner.close()
    assert runner.process.proc.returncode is not None and not runner.alive
    deadline = time.monotonic() + 10
    with pytest.raises(FileNotFoundError):
        while time.monotonic() < deadline:
            open(f"/proc/{pid}/status").close()
            time.sleep(0.05)


# ------------------------------------------------------------------------------------------------------
# the wire format


def test_frames_round_trip_and_garbage_is_refused():
    buffer = io.BytesIO()
    wire.write_frame(buffer, {"id": 1, "piece": "héllo"})
    buffer.seek(0)
    assert wire.read_frame(buffer) == {"id": 1, "piece": "héllo"}
    for bad in (b"", b"\x00\x00", struct.pack(">I", 10) + b"{}", struct.pack(">I", 2**31) + b"x",
                struct.pack(">I", 2) + b"[]", struct.pack(">I", 3) + b"\xff\xfe\x00"):
        with pytest.raises(wire.WireError):
            wire.read_frame(io.BytesIO(bad))


def test_errors_cross_as_their_kind_and_nothing_else():
    assert isinstance(wire.error_from(wire.error_value(NotFoundError("x", "h"))), NotFoundError)
    err = wire.error_from(wire.error_value(InvalidInputError("bad", "fix")))
    assert type(err) is InvalidInputError and (err.message, err.hint) == ("bad", "fix")
    for hostile in ({"type": "SystemExit", "message": "x"}, {"type": "__class__"}, "nonsense", None):
        assert type(wire.error_from(hostile)) is RunnerError
    value = wire.error_value(ZeroDivisionError("boom"))
    assert type(wire.error_from(value)) is RunnerError and "ZeroDivisionError: boom" in value["message"]


# ------------------------------------------------------------------------------------------------------
# the GGUF shape reader


def test_the_shape_of_gemma(gemma_gguf):
    assert model_shape(gemma_gguf) == ModelShape(n_layer=18, n_head_kv=1, key_length=256, value_length=256)
    assert available_memory() > 0


def _header(*kvs: bytes, n_kv: int | None = None) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, 0, len(kvs) if n_kv is None else n_kv) + b"".join(kvs)


def _kv_str(key: str, value: str) -> bytes:
    k, v = key.encode(), value.encode()
    return struct.pack("<Q", len(k)) + k + struct.pack("<I", 8) + struct.pack("<Q", len(v)) + v


def _kv_u32(key: str, value: int) -> bytes:
    k = key.encode()
    return struct.pack("<Q", len(k)) + k + struct.pack("<I", 4) + struct.pack("<I", value)


def test_hostile_or_partial_headers_give_no_estimate_quickly(tmp_path, tiny_gguf):
    assert model_shape(tiny_gguf) is None  # no block_count: no estimate, the load goes ahead
    arch = _kv_str("general.architecture", "llama")
    fields = [_kv_u32("llama.block_count", 32), _kv_u32("llama.attention.head_count", 32),
              _kv_u32("llama.attention.head_count_kv", 8), _kv_u32("llama.embedding_length", 4096)]
    good = tmp_path / "good.gguf"
    good.write_bytes(_header(arch, *fields))
    assert model_shape(good) == ModelShape(32, 8, 128, 128)
    k = b"tokenizer.ggml.tokens"
    huge_array = struct.pack("<Q", len(k)) + k + struct.pack("<IIQ", 9, 8, 2**60)
    huge_string = struct.pack("<Q", 2**62) + b"x"
    cases = {"count": _header(arch, n_kv=2**60), "array": _header(arch, huge_array, *fields),
             "string": _header(arch, huge_string), "truncated": _header(arch, *fields)[:-3],
             "magic": b"GGUX" + _header(arch)[4:], "empty": b""}
    for name, data in cases.items():
        path = tmp_path / f"{name}.gguf"
        path.write_bytes(data)
        started = time.process_time()
        assert model_shape(path) is None, name
        assert time.process_time() - started < 1.0, name
    assert model_shape(tmp_path / "missing.gguf") is None


def test_a_context_that_cannot_fit_in_memory_is_refused_before_loading(tmp_path):
    """A GGUF whose shape says 10 million layers: its KV cache cannot fit, so the load stops with a 400-class
    error before llama.cpp allocates anything (in-process and in a runner process alike)."""
    require_module("llama_cpp")
    from modelpkg.runtime.remote import RemoteRunner

    arch = _kv_str("general.architecture", "llama")
    fields = [_kv_u32("llama.block_count", 10_000_000), _kv_u32("llama.attention.head_count", 32),
              _kv_u32("llama.attention.head_count_kv", 8), _kv_u32("llama.embedding_length", 4096)]
    path = tmp_path / "huge.gguf"
    path.write_bytes(_header(arch, *fields))
    for load in (Runner.load, RemoteRunner.load):
        with pytest.raises(InvalidInputError) as e:
            load(LoadOptions(path, n_ctx=4096))
        assert e.value.message.startswith("num_ctx 4096 needs a 160000000 MiB KV cache; ")
