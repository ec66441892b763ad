"""The server's side of a model runner process: ``RunnerProcess`` (the process and its pipe) and
``RemoteRunner``, a proxy with ``runner.Runner``'s interface, so ``serve``'s handlers do not change.

Why a process per model (Ollama's and LM Studio's design): llama.cpp runs hostile input (grammars from
request schemas, prompts, GGUF files) in native code, where a bug is a SIGSEGV, an abort or an allocation
without end. In a runner process that costs the requests on that model one clear ``RunnerError`` (the
model loads again on the next request); the server goes on answering. Killing the process unloads the
model and gives its memory back to the system at once.

Why ``subprocess`` with a pipe and not ``multiprocessing``: the server is threaded, so ``fork`` is unsafe;
``spawn`` would re-import the server's ``__main__`` (the CLI, pytest) and speak pickle, which the server
must not read from a process that may be compromised. A plain ``python -c`` child starts clean, speaks the
JSON frames of ``wire`` on stdin/stdout, and its stderr (llama.cpp's log: a crashing grammar printed
hundreds of MB of it) is drained by a thread that keeps only the last ``LOG_TAIL`` bytes.

The protocol is multiplexed: every request has an id, a reader thread routes answers to the request that
waits for them, several may be in flight, and a generation is cancelled by id (a client that disconnects).
When the process ends unasked, every request still waiting gets the same error naming the signal.

I/O adapter: imports the core's errors, ``base.config`` and ``wire``; never ``llama_cpp`` (the worker does).
"""

from __future__ import annotations

import dataclasses
import itertools
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from modelpkg.base import config
from modelpkg.core.errors import RunnerError
from modelpkg.runtime.ggufshape import available_memory
from modelpkg.runtime.runner import (
    Generation,
    LoadOptions,
    Result,
    SamplingOptions,
    TokenLogprob,
    check_request_format,
)
from modelpkg.runtime.wire import EXIT_OUT_OF_MEMORY, WireError, error_from, read_frame, write_frame

PACKAGE_ROOT = Path(__file__).resolve().parents[2]
BOOT = "import sys; sys.path.insert(0, sys.argv[1]); from modelpkg.runtime.worker import main; main(sys.argv[2:])"
LOG_TAIL = 64 * 1024
MIB = 1024 * 1024
MIN_MEMORY = 1024 * MIB
_STOPPED = object()  # queued to a waiting request when the process is gone


def memory_limit() -> int:
    """The runner's data-memory limit: ``MODELPKG_RUNNER_MEMORY_MB``, else the memory available now (at
    least 1 GiB), so a runaway allocation fails in the runner before the kernel's OOM killer picks."""
    mb = config.runner_memory_mb()
    if mb is not None:
        return max(mb, 0) * MIB
    return max(available_memory() or 0, MIN_MEMORY)


class RunnerProcess:
    """One runner process. ``call`` sends a request and waits for its answer; ``stream`` for a generation."""

    def __init__(self, label: str, limit: int | None = None):
        self.label = label
        self.limit = memory_limit() if limit is None else limit
        self.proc = subprocess.Popen(
            [sys.executable, "-c", BOOT, str(PACKAGE_ROOT), str(self.limit)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        self.stopped: str | None = None   # why it ended, once it has
        self.log_bytes = 0                # how much it printed in all (only the tail is kept)
        self._tail = bytearray()
        self._ids = itertools.count(1)
        self._pending: dict[int, queue.Queue] = {}
        self._lock = threading.Lock()
        self._closing = False
        threading.Thread(target=self._read_answers, name=f"runner-{self.proc.pid}", daemon=True).start()
        threading.Thread(target=self._read_log, name=f"runner-log-{self.proc.pid}", daemon=True).start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.stopped is None

    def log_tail(self) -> str:
        return bytes(self._tail).decode("utf-8", errors="replace")

    # ----- requests

    def send(self, op: str, **args: Any) -> tuple[int, queue.Queue]:
        with self._lock:
            if self.stopped is not None:
                raise self.error()
            rid = next(self._ids)
            answers: queue.Queue = queue.Queue()
            self._pending[rid] = answers
            try:
                write_frame(self.proc.stdin, {"id": rid, "op": op, **args})
            except (OSError, ValueError):  # the process is gone; the reader says why
                answers.put(_STOPPED)
        return rid, answers

    def cancel(self, rid: int) -> None:
        with self._lock:
            if self.stopped is None:
                try:
                    write_frame(self.proc.stdin, {"id": 0, "op": "cancel", "target": rid})
                except (OSError, ValueError):
                    pass

    def done(self, rid: int) -> None:
        with self._lock:
            self._pending.pop(rid, None)

    def answer(self, answers: queue.Queue) -> dict[str, Any]:
        message = answers.get()
        if message is _STOPPED:
            self._wait_stopped()
            raise self.error()
        if "error" in message:
            raise error_from(message["error"])
        return message

    def call(self, op: str, **args: Any) -> Any:
        rid, answers = self.send(op, **args)
        try:
            return self.answer(answers).get("ok")
        finally:
            self.done(rid)

    def error(self) -> RunnerError:
        return RunnerError(f"the model runner for '{self.label}' stopped ({self.stopped or 'unexpectedly'}) while "
                           "answering; it will be loaded again on the next request", "")

    # ----- the process

    def _read_answers(self) -> None:
        try:
            while True:
                message = read_frame(self.proc.stdout)
                with self._lock:
                    answers = self._pending.get(message.get("id"))
                if answers is not None:
                    answers.put(message)
        except (WireError, OSError, ValueError):
            pass
        finally:
            _close_quietly(self.proc.stdout)
        code = self.proc.wait()
        with self._lock:
            self.stopped = "unloaded" if self._closing else self._reason(code)
            waiting = list(self._pending.values())
        for answers in waiting:
            answers.put(_STOPPED)

    def _reason(self, code: int) -> str:
        if code < 0:
            try:
                return f"signal {signal.Signals(-code).name}"
            except ValueError:
                return f"signal {-code}"
        if code == EXIT_OUT_OF_MEMORY:
            return f"out of memory: its limit is {self.limit // MIB} MiB"
        return f"exit status {code}"

    def _wait_stopped(self) -> None:
        deadline = time.monotonic() + 10
        while self.stopped is None and time.monotonic() < deadline:
            time.sleep(0.01)

    def _read_log(self) -> None:
        stream = self.proc.stderr
        try:
            while True:
                chunk = stream.read1(65536) if hasattr(stream, "read1") else stream.read(65536)
                if not chunk:
                    return
                self.log_bytes += len(chunk)
                self._tail += chunk
                del self._tail[:-LOG_TAIL]
        except (OSError, ValueError):
            return
        finally:
            _close_quietly(stream)

    def close(self) -> None:
        """Kill the process (its memory goes back to the system) and wait for it."""
        with self._lock:
            self._closing = True
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        _close_quietly(self.proc.stdin)


class RemoteGeneration(Generation):
    """A generation in a runner process: pieces as they come, ``result`` complete at the end."""

    def __init__(self, process: RunnerProcess, rid: int, answers: queue.Queue, result: Result):
        self._process, self._rid, self._answers = process, rid, answers
        self._finished = False
        super().__init__(self._receive(), result)

    def _receive(self) -> Iterator[str]:
        while not self._finished:
            try:
                message = self._process.answer(self._answers)
            except BaseException:
                self._end()
                raise
            if "piece" in message:
                piece = message["piece"]
                self.result.text += piece
                if message.get("logprobs") is not None:
                    self.result.logprobs = (self.result.logprobs or []) + [
                        _logprob_from(v) for v in message["logprobs"]]
                yield piece
            elif "done" in message:
                self._set_result(message["done"])
                self._end()

    def _set_result(self, value: dict[str, Any]) -> None:
        for f in dataclasses.fields(Result):
            if f.name in value:
                setattr(self.result, f.name, value[f.name])
        if self.result.logprobs is not None:  # JSON objects back into TokenLogprob values
            self.result.logprobs = [_logprob_from(v) for v in self.result.logprobs]

    def _end(self) -> None:
        self._finished = True
        self._process.done(self._rid)

    def close(self) -> None:
        """Stop the generation in the runner and wait for its final counts."""
        if self._finished:
            return
        self._process.cancel(self._rid)
        try:
            for _ in self._receive():
                pass
        except RunnerError:
            pass


class RemoteRunner:
    """A model loaded in a runner process of its own; the interface of ``runner.Runner``."""

    def __init__(self, process: RunnerProcess, options: LoadOptions, info: dict[str, Any], load_duration: float):
        self._process = process
        self.options = options
        self.load_duration = load_duration
        self._n_ctx = int(info.get("n_ctx") or 0)
        self._chat_template = info.get("chat_template")
        self.last_prompt: str | None = None
        self.last_prompt_tokens: list[int] = []

    @classmethod
    def load(cls, options: LoadOptions, *, embedding: bool = False, label: str = "",
             limit: int | None = None) -> RemoteRunner:
        """Start a runner process and load the model in it (the time counts both)."""
        started = time.perf_counter()
        process = RunnerProcess(label or options.model_path.name, limit)
        try:
            info = process.call("load", options=_jsonable(options), embedding=embedding)
        except BaseException:
            process.close()
            raise
        return cls(process, options, info or {}, time.perf_counter() - started)

    @property
    def process(self) -> RunnerProcess:
        return self._process

    @property
    def alive(self) -> bool:
        return self._process.alive

    @property
    def n_ctx(self) -> int:
        return self._n_ctx

    @property
    def chat_template(self) -> str | None:
        return self._chat_template

    def tokenize(self, text: str, add_bos: bool = True) -> list[int]:
        return list(self._process.call("tokenize", text=text, add_bos=add_bos))

    def detokenize(self, tokens: Sequence[int]) -> str:
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
            raise RunnerError("cannot read the context tokens: they must be integers")
        return str(self._process.call("detokenize", tokens=list(tokens)))

    def format_chat(self, messages: list[dict[str, Any]], template: str | None = None, **values: Any) -> str:
        """``Runner.format_chat`` in the runner; ``values`` (``tools``, ``enable_thinking``) go with it."""
        return str(self._process.call("format_chat", messages=messages, template=template, values=values))

    def token_text(self, token: int) -> str:
        return str(self._process.call("token_text", token=int(token)))

    def reset(self) -> None:
        self._process.call("reset")

    def embed(self, texts: Sequence[str], *, truncate: bool = True) -> tuple[list[list[float]], int]:
        vectors, count = self._process.call("embed", texts=list(texts), truncate=truncate)
        return vectors, int(count)

    def generate(self, prompt: str, sampling: SamplingOptions, *, add_bos: bool = True,
                 format: Any = None) -> Generation:
        """Start a generation in the runner; returns once its prompt is checked and its grammar built (a
        refused request raises here, before any answer is sent), streaming piece by piece after that."""
        check_request_format(format)  # the bounds, here too: a refused schema never reaches the runner
        self.last_prompt = prompt
        rid, answers = self._process.send("generate", prompt=prompt, sampling=dataclasses.asdict(sampling),
                                          add_bos=add_bos, format=format)
        try:
            started = self._process.answer(answers)["started"]
        except BaseException:
            self._process.done(rid)
            raise
        self.last_prompt_tokens = list(started.get("prompt_tokens") or [])
        return RemoteGeneration(self._process, rid, answers, Result(prompt_tokens=len(self.last_prompt_tokens)))

    def close(self) -> None:
        self._process.close()

    def __enter__(self) -> RemoteRunner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _logprob_from(value: dict[str, Any]) -> TokenLogprob:
    return TokenLogprob(str(value["token"]), float(value["logprob"]), tuple(value.get("bytes") or ()),
                        tuple(_logprob_from(t) for t in value.get("top") or ()))


def _close_quietly(stream: Any) -> None:
    try:
        stream.close()
    except (OSError, ValueError):
        pass


def _jsonable(options: LoadOptions) -> dict[str, Any]:
    value = dataclasses.asdict(options)
    return {k: str(v) if isinstance(v, Path) else [str(p) for p in v] if isinstance(v, tuple) else v
            for k, v in value.items()}
