"""The model runner process: one per loaded model under ``serve``; it owns the ``llama_cpp`` objects.

Started by ``remote.RunnerProcess`` as ``python -c ... modelpkg.runtime.worker`` with the wire protocol
(``wire``) on its stdin/stdout. Its own stdout is pointed at stderr at once, so nothing llama.cpp or
llama-cpp-python prints can corrupt a frame; the server reads stderr and keeps only its tail. A data-memory
limit (RLIMIT_DATA: private writable memory; the weights are a shared read-only mapping and do not count)
makes a runaway allocation fail here: a native ``std::bad_alloc`` aborts this process, a Python
``MemoryError`` exits it with ``EXIT_OUT_OF_MEMORY``, and either way the server only loses this runner.

Two threads: the main one reads frames (a ``cancel`` is noted at once; any other request is queued) and
the engine thread answers queued requests one after another. With ``n_parallel`` 1 (the default) it holds a
``runner.Runner`` (one context, one sequence at a time): a generation streams a frame per piece on the engine
thread and checks for its cancellation between pieces. With ``n_parallel`` N > 1 it holds a
``batch.BatchRunner``: the engine thread checks a generation, answers ``started`` and hands it to the
scheduler, whose own thread decodes up to N together and sends each one's pieces and ``done`` under its id;
a ``cancel`` frees the sequence's slot at the next step. The frames are the same either way.

``MODELPKG_TEST_RUNNER_FAULT`` (``base.config.runner_fault``; tests only) is read here, in this process.

Adapter: imports the runner, the wire format, ``base.config`` and the core's errors.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import queue
import resource
import signal
import sys
import threading
from pathlib import Path
from typing import Any, BinaryIO

from modelpkg.base import config
from modelpkg.core.errors import ModelpkgError, RunnerError
from modelpkg.runtime.batch import BatchRunner, Sequence
from modelpkg.runtime.runner import LoadOptions, Runner, SamplingOptions
from modelpkg.runtime.wire import EXIT_OUT_OF_MEMORY, WireError, error_value, read_frame, write_frame


def load_options_from(value: dict[str, Any]) -> LoadOptions:
    fields = {f.name for f in dataclasses.fields(LoadOptions)}
    args = {k: v for k, v in value.items() if k in fields}
    args["model_path"] = Path(args["model_path"])
    if args.get("lora_path"):
        args["lora_path"] = Path(args["lora_path"])
    args["shard_paths"] = tuple(Path(p) for p in args.get("shard_paths") or ())
    return LoadOptions(**args)


def sampling_from(value: dict[str, Any]) -> SamplingOptions:
    fields = {f.name for f in dataclasses.fields(SamplingOptions)}
    args = {k: v for k, v in value.items() if k in fields}
    args["stop"] = tuple(args.get("stop") or ())
    return SamplingOptions(**args)


class Worker:
    def __init__(self, out: BinaryIO, fault: tuple[str, int] | None):
        self._out = out
        self._write = threading.Lock()
        self._jobs: queue.Queue[dict[str, Any]] = queue.Queue()
        self._cancelled: set[Any] = set()
        self._live: dict[Any, Sequence] = {}  # generations in the batch scheduler, by request id
        self._fault = fault
        self.runner: Runner | None = None

    def send(self, message: dict[str, Any]) -> None:
        try:
            with self._write:
                write_frame(self._out, message)
        except WireError as e:  # too big to send: the request fails, the runner goes on
            write_frame(self._out, {"id": message.get("id"), "error": error_value(RunnerError(str(e)))})
        except OSError:
            os._exit(0)  # the server is gone

    def serve(self, inp: BinaryIO) -> None:
        threading.Thread(target=self._engine, name="modelpkg-engine", daemon=True).start()
        while True:
            try:
                message = read_frame(inp)
            except WireError:
                os._exit(0)  # the server closed the pipe (or died): nothing is left to answer
            if message.get("op") == "cancel":
                target = message.get("target")
                self._cancelled.add(target)
                seq = self._live.get(target)
                if seq is not None and isinstance(self.runner, BatchRunner):
                    self.runner.scheduler.cancel(seq)
            else:
                self._jobs.put(message)

    def _engine(self) -> None:
        while True:
            message = self._jobs.get()
            rid = message.get("id")
            try:
                if rid in self._cancelled:
                    self._cancelled.discard(rid)
                    raise RunnerError("cancelled")
                self._handle(message)
            except MemoryError:
                os._exit(EXIT_OUT_OF_MEMORY)
            except ModelpkgError as e:
                self.send({"id": rid, "error": error_value(e)})
            except Exception as e:  # noqa: BLE001 - any failure of one request is that request's error
                self.send({"id": rid, "error": error_value(e)})

    def _handle(self, m: dict[str, Any]) -> None:
        op, rid = m.get("op"), m.get("id")
        if op == "load":
            options, embedding = load_options_from(m["options"]), bool(m.get("embedding"))
            if options.n_parallel > 1 and not embedding:
                self.runner = BatchRunner.load(options)
                self.runner.scheduler.fatal = _fatal
            else:
                self.runner = Runner.load(options, embedding=embedding)
            self.send({"id": rid, "ok": {"n_ctx": self.runner.n_ctx, "chat_template": self.runner.chat_template,
                                         "load_duration": self.runner.load_duration, "pid": os.getpid()}})
            return
        runner = self.runner
        if runner is None:
            raise RunnerError("no model is loaded in this runner")
        if op == "generate":
            self._generate(rid, runner, m)
            return
        if op == "tokenize":
            value: Any = runner.tokenize(str(m["text"]), bool(m.get("add_bos", True)))
        elif op == "detokenize":
            value = runner.detokenize([int(t) for t in m["tokens"]])
        elif op == "format_chat":
            value = runner.format_chat(m["messages"], m.get("template"), **(m.get("values") or {}))
        elif op == "token_text":
            value = runner.token_text(int(m["token"]))
        elif op == "reset":
            value = runner.reset()
        elif op == "embed":
            value = list(runner.embed([str(t) for t in m["texts"]], truncate=bool(m.get("truncate", True))))
        else:
            raise RunnerError(f"unknown runner request {op!r}")
        self.send({"id": rid, "ok": value})

    def _generate(self, rid: Any, runner: Runner, m: dict[str, Any]) -> None:
        if isinstance(runner, BatchRunner):
            self._start_in_batch(rid, runner, m)
            return
        generation = runner.generate(str(m["prompt"]), sampling_from(m["sampling"]),
                                     add_bos=bool(m.get("add_bos", True)), format=m.get("format"))
        self.send({"id": rid, "started": {"prompt_tokens": runner.last_prompt_tokens}})
        sent = 0  # log probabilities go with the piece that brings their tokens, as in-process
        try:
            for piece in generation:
                message: dict[str, Any] = {"id": rid, "piece": piece}
                logprobs = generation.result.logprobs
                if logprobs is not None:
                    message["logprobs"] = [dataclasses.asdict(lp) for lp in logprobs[sent:]]
                    sent = len(logprobs)
                self.send(message)
                if self._fault and len(generation.result.tokens) >= self._fault[1]:
                    cause_fault(self._fault[0])
                if rid in self._cancelled:
                    break
        finally:
            generation.close()
            self._cancelled.discard(rid)
        self.send({"id": rid, "done": dataclasses.asdict(generation.result)})

    def _start_in_batch(self, rid: Any, runner: BatchRunner, m: dict[str, Any]) -> None:
        seq = runner.prepare(str(m["prompt"]), sampling_from(m["sampling"]), add_bos=bool(m.get("add_bos", True)),
                             format=m.get("format"))
        self.send({"id": rid, "started": {"prompt_tokens": runner.last_prompt_tokens}})
        self._live[rid] = seq
        runner.scheduler.start(seq, _WireSink(self), rid)
        if rid in self._cancelled:  # a cancel that came before the sequence was known
            runner.scheduler.cancel(seq)

    def ended(self, rid: Any) -> None:
        self._live.pop(rid, None)
        self._cancelled.discard(rid)


class _WireSink:
    """Sends a batched generation's pieces and its end as frames, from the scheduler's thread."""

    def __init__(self, worker: Worker):
        self._worker = worker
        self._sent = 0  # log probabilities sent so far

    def piece(self, seq: Sequence, text: str) -> None:
        message: dict[str, Any] = {"id": seq.key, "piece": text}
        logprobs = seq.result.logprobs
        if logprobs is not None:  # log probabilities go with the piece that brings their tokens
            message["logprobs"] = [dataclasses.asdict(lp) for lp in logprobs[self._sent:]]
            self._sent = len(logprobs)
        self._worker.send(message)
        fault = self._worker._fault
        if fault and len(seq.result.tokens) >= fault[1]:
            cause_fault(fault[0])

    def end(self, seq: Sequence, error: ModelpkgError | None) -> None:
        self._worker.ended(seq.key)
        if error is not None:
            self._worker.send({"id": seq.key, "error": error_value(error)})
        else:
            self._worker.send({"id": seq.key, "done": dataclasses.asdict(seq.result)})


def _fatal(error: BaseException) -> None:
    """The scheduler's thread died: this process cannot answer any more (the server loads the model again)."""
    sys.stderr.flush()
    os._exit(EXIT_OUT_OF_MEMORY if isinstance(error, MemoryError) else 70)


def cause_fault(kind: str) -> None:
    """What a broken engine does (tests only): a real SIGSEGV, abort(), or allocation without end."""
    sys.stderr.flush()
    if kind == "segv":
        ctypes.string_at(0)  # reads address 0: the kernel sends SIGSEGV
    elif kind == "abort":
        os.abort()
    elif kind == "oom":  # malloc without end (untouched, so it costs address space, not the machine's RAM)
        libc = ctypes.CDLL(None)
        libc.malloc.restype = ctypes.c_void_p
        libc.malloc.argtypes = [ctypes.c_size_t]
        while libc.malloc(64 * 1024 * 1024):
            pass
        raise MemoryError("malloc failed")


def main(argv: list[str]) -> None:
    """``argv``: the data-memory limit in bytes (0: none)."""
    inp = os.fdopen(os.dup(0), "rb")
    out = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)  # whatever anything prints goes to the log, never into a frame
    sys.stdout = sys.stderr
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server decides when this process ends
    limit = int(argv[0]) if argv and argv[0].isdigit() else 0
    if limit > 0:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    Worker(out, config.runner_fault()).serve(inp)
