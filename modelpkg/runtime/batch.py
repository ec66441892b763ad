"""Continuous batching (issue 14): one llama.cpp context decodes up to N sequences of a loaded model together.

``BatchRunner`` has ``runner.Runner``'s interface; ``LoadOptions.n_parallel`` > 1 picks it (the runner process,
``worker``, does). Its ``Scheduler`` owns a context of its own made from the loaded model with ``n_seq_max=N``,
``kv_unified`` and ``n_ctx = N x num_ctx`` (``num_ctx`` applies per sequence, as in Ollama); the high-level
``Llama`` keeps only a minimal context (256 cells) for tokenising, so the KV cache is not allocated twice.

One thread runs the steps. A step is one ``llama_decode`` for every sequence at once: each decoding sequence
adds its last sampled token (with its own sequence id and position), then sequences still reading their prompt
share what is left of ``n_batch`` in admission order, so a long prompt is read in chunks between the others'
tokens instead of stalling them for its whole length. Each sequence that has logits in the step samples with
its own sampler chain (``llama_sampler_sample`` at its index in the batch), built exactly as llama-cpp-python's
``Llama.generate`` builds it (penalties, grammar, then greedy or top-k/typical/top-p/min-p/temperature/dist with
the request's seed; a plain greedy request takes the argmax of its logits, the same token without llama.cpp
filling a 262144-entry candidate array for it), and keeps its own stop strings (``runner.StopMatcher``),
``num_predict``, UTF-8 decoder and counters (``runner.Result``). New requests join between steps; a finished or
cancelled one leaves, its KV cells freed with ``llama_memory_seq_rm``, and its slot is free for the next step;
an empty batch clears the cache, so the next one starts at cell 0. Nothing is cached across requests: every
prompt is read from the start (``prompt_eval_count`` is the whole prompt).

Greedy answers are not always those of the one-at-a-time path. Alone in the batch a request gets exactly its
solo answer; beside others, llama.cpp computes several rows with other kernels and another order of additions,
which moves log probabilities by up to ~0.1 here, so two nearly equal candidates can swap and the answers part
from there (``bench/bench_batch.py --compare``: 56 of 100 Gemma 270M answers of 32 tokens part somewhere). The
answer depends on the batch's shape, never on what the other sequences say: the same shape with other content
beside it gives the same bits (tests/runtime/test_batch.py), since each sequence has its own KV cells, mask and
sampler.

I/O adapter: imports the runner (its values and helpers), the core's errors and ``llama_cpp``.
"""

from __future__ import annotations

import codecs
import collections
import ctypes
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from modelpkg.core.errors import InvalidInputError, ModelpkgError, RunnerError
from modelpkg.core.limits import check_num_predict
from modelpkg.runtime.runner import (
    RANDOM_SEED,
    Generation,
    LoadOptions,
    Result,
    Runner,
    SamplingOptions,
    StopMatcher,
    finish_result,
    import_llama_cpp,
    json_grammar,
    last_error_line,
    native_output_captured,
    token_logprob,
)

HELPER_CTX = 256   # the Llama object's own context: llama.cpp's smallest KV cache (tokenising needs none)
MAX_UBATCH = 512   # llama-cpp-python's default n_ubatch, as the one-at-a-time path has it


class Sink(Protocol):
    """Where a sequence's output goes: called on the scheduler's thread, so keep it short."""

    def piece(self, seq: Sequence, text: str) -> None: ...

    def end(self, seq: Sequence, error: ModelpkgError | None) -> None: ...


class Sequence:
    """One request in the scheduler: its prompt, sampler, stream state and ``result``."""

    __slots__ = ("cancelled", "decoder", "done", "first", "idx", "key", "last", "limit", "n_past", "pieces",
                 "result", "sampler", "sampling", "sink", "slot", "started", "stops", "tokens")

    def __init__(self, tokens: list[int], sampling: SamplingOptions, limit: int, sampler: Any):
        # sampler: a llama.cpp sampler chain, or None for plain greedy (the argmax of the logits)
        self.tokens = tokens
        self.sampling = sampling
        self.result = Result(prompt_tokens=len(tokens), prompt_eval_count=len(tokens), done_reason="interrupted")
        if sampling.logprobs is not None:
            self.result.logprobs = []
        self.limit = limit
        self.sampler = sampler
        self.sink: Sink | None = None
        self.key: Any = None            # the caller's name for it (the worker's request id)
        self.slot = -1                  # its sequence id in the context while it has one
        self.n_past = 0                 # its tokens in the KV cache
        self.last: int | None = None    # the token sampled last, to be decoded next step
        self.idx = -1                   # its logits' row in this step's batch (-1: none)
        self.stops = StopMatcher(sampling.stop)
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.pieces: list[str] = []
        self.started = 0.0
        self.first: float | None = None
        self.cancelled = False
        self.done = False


class Scheduler:
    """Decodes up to ``n_seq`` sequences of ``llm``'s model together, on a thread of its own."""

    def __init__(self, llm: Any, options: LoadOptions, n_seq: int,
                 fatal: Callable[[BaseException], None] | None = None):
        lib = self._lib = import_llama_cpp()
        self._llm = llm
        self.fatal = fatal  # called if the thread dies of something other than a failed decode
        self.n_seq = n_seq
        self._n_batch = max(options.n_batch, n_seq)
        # the one-at-a-time context's settings (threads, attention, rope), sized for n_seq sequences
        params = lib.llama_context_params.from_buffer_copy(llm.context_params)
        params.n_ctx = n_seq * options.n_ctx
        params.n_batch = self._n_batch
        params.n_ubatch = min(self._n_batch, MAX_UBATCH)
        params.n_seq_max = n_seq
        params.kv_unified = True
        params.embeddings = False
        with native_output_captured() as captured:
            ctx = lib.llama_init_from_model(llm.model, params)
        if not ctx:
            raise RunnerError(f"llama.cpp cannot make a context of {n_seq} x {options.n_ctx} tokens: "
                              f"{last_error_line(captured.text()) or 'no reason given'}",
                              "ask for fewer parallel sequences or a smaller num_ctx")
        self._ctx = ctx
        adapter = getattr(llm, "_lora_adapter", None)
        if adapter is not None:  # the adapter Llama applied to its own context applies to this one too
            adapters = (lib.llama_adapter_lora_p_ctypes * 1)(adapter)
            if lib.llama_set_adapters_lora(ctx, adapters, 1, (ctypes.c_float * 1)(llm.lora_scale)):
                lib.llama_free(ctx)
                raise RunnerError("llama.cpp cannot apply the ADAPTER to the batch context")
        self._memory = lib.llama_get_memory(ctx)
        self._vocab = lib.llama_model_get_vocab(llm.model)
        self._n_vocab = int(llm.n_vocab())
        self.n_ctx = min(options.n_ctx, int(lib.llama_n_ctx(ctx)) // n_seq)  # per sequence
        self._last_n = options.last_n_tokens_size
        self._batch = lib.llama_batch_init(self._n_batch, 0, 1)
        import numpy as np

        n = self._n_batch
        self._np = np
        self._token = np.ctypeslib.as_array(self._batch.token, shape=(n,))
        self._pos = np.ctypeslib.as_array(self._batch.pos, shape=(n,))
        self._logits = np.ctypeslib.as_array(self._batch.logits, shape=(n,))
        np.ctypeslib.as_array(self._batch.n_seq_id, shape=(n,))[:] = 1
        self._seq_row = [self._batch.seq_id[i] for i in range(n)]  # each token's int32[1] of sequence ids
        self._pieces: dict[int, bytes] = {}
        self._free = list(range(n_seq - 1, -1, -1))
        self._pending: collections.deque[Sequence] = collections.deque()
        self._active: list[Sequence] = []
        self._cond = threading.Condition()
        self._closed = False
        self.steps = 0  # decode calls made (tests and benchmarks read it)
        self._thread = threading.Thread(target=self._run, name="modelpkg-batch", daemon=True)
        self._thread.start()

    # ----- requests

    def prepare(self, tokens: list[int], sampling: SamplingOptions, grammar: Any = None) -> Sequence:
        """A sequence for ``tokens`` (checked by the caller to fit) with its sampler built; not started yet."""
        if not tokens:
            raise InvalidInputError("the prompt is empty", "send some text, or let the model add its BOS token")
        room = self.n_ctx - len(tokens)
        if room <= 0:
            raise InvalidInputError(f"the prompt is {len(tokens)} tokens; the context holds {self.n_ctx}",
                                    "shorten it, or raise num_ctx (--ctx N)")
        limit = sampling.max_tokens if 0 < sampling.max_tokens < room else room
        return Sequence(list(tokens), sampling, limit, self._sampler(sampling, grammar))

    def start(self, seq: Sequence, sink: Sink, key: Any = None) -> None:
        """Queue ``seq``; it joins the batch at the next step with a free slot."""
        seq.sink, seq.key = sink, key
        self.start_all([seq])

    def start_all(self, seqs: list[Sequence]) -> None:
        """Queue ``seqs`` (their sinks set) at once: those that find a slot join the same step."""
        with self._cond:
            if self._closed:
                for seq in seqs:
                    self._free_sampler(seq)
                raise RunnerError("the model was unloaded")
            self._pending.extend(seqs)
            self._cond.notify()

    def discard(self, seq: Sequence) -> None:
        """Free a prepared sequence that will not be started."""
        self._free_sampler(seq)

    def cancel(self, seq: Sequence) -> None:
        """End ``seq`` at the next step (its slot is free for the step after); its result says interrupted."""
        with self._cond:
            seq.cancelled = True
            self._cond.notify()

    @property
    def busy(self) -> int:
        """Sequences in the batch or waiting for a slot."""
        with self._cond:
            return len(self._active) + len(self._pending)

    def close(self) -> None:
        """Stop the thread, end what is in flight with an error, free the context."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify()
        if self._thread is not threading.current_thread():
            self._thread.join()
        lib = self._lib
        lib.llama_batch_free(self._batch)
        lib.llama_free(self._ctx)
        self._ctx = None

    # ----- the loop

    def _run(self) -> None:
        try:
            while self._wait_and_admit():
                try:
                    self._step()
                except (RuntimeError, ValueError, OSError, ModelpkgError) as e:
                    error = e if isinstance(e, ModelpkgError) else RunnerError(
                        f"llama.cpp failed while generating: {e}", "try a smaller num_ctx or num_batch")
                    for seq in list(self._active):
                        self._end(seq, error)
        except BaseException as e:  # a MemoryError, a failing sink: the process decides
            if self.fatal is not None:
                self.fatal(e)
            raise
        finally:
            with self._cond:
                left = list(self._active) + list(self._pending)
                self._pending.clear()
            for seq in left:
                if not seq.done:
                    self._end(seq, RunnerError("the model was unloaded while answering"))

    def _wait_and_admit(self) -> bool:
        """Wait for work; move queued sequences into free slots; end the cancelled ones. False: closed."""
        with self._cond:
            while not self._closed and not self._active and not self._pending:
                self._cond.wait()
            if self._closed:
                return False
            now = time.perf_counter()
            dropped = [seq for seq in self._pending if seq.cancelled]
            for seq in dropped:
                self._pending.remove(seq)
            while self._free and self._pending:
                seq = self._pending.popleft()
                seq.slot = self._free.pop()
                seq.started = now
                self._active.append(seq)
            cancelled = [seq for seq in self._active if seq.cancelled]
        for seq in dropped + cancelled:
            self._end(seq, None)
        return True

    def _step(self) -> None:
        """One decode for every active sequence, then one token sampled for each that has logits."""
        np = self._np
        token, pos, logits, rows = self._token, self._pos, self._logits, self._seq_row
        n = 0
        ready: list[Sequence] = []
        reading: list[Sequence] = []
        for seq in self._active:
            if seq.last is None:
                reading.append(seq)
                continue
            token[n] = seq.last
            pos[n] = seq.n_past
            rows[n][0] = seq.slot
            logits[n] = 1
            seq.n_past += 1
            seq.idx = n
            n += 1
            ready.append(seq)
        budget = self._n_batch - n
        for seq in reading:  # prompts share what is left of the batch, in the order they came
            if budget <= 0:
                break
            start = seq.n_past
            take = min(budget, len(seq.tokens) - start)
            token[n:n + take] = seq.tokens[start:start + take]
            pos[n:n + take] = np.arange(start, start + take)
            logits[n:n + take] = 0
            slot = seq.slot
            for i in range(n, n + take):
                rows[i][0] = slot
            seq.n_past += take
            n += take
            budget -= take
            if seq.n_past == len(seq.tokens):  # the prompt's last token: its logits give the first answer token
                logits[n - 1] = 1
                seq.idx = n - 1
                ready.append(seq)
        if not n:
            return
        self._batch.n_tokens = n
        lib, ctx = self._lib, self._ctx
        code = lib.llama_decode(ctx, self._batch)
        self.steps += 1
        if code != 0:
            raise RunnerError(f"llama.cpp could not decode a batch of {n} tokens (status {code})",
                              "ask for fewer parallel sequences or a smaller num_batch")
        sample, is_eog, vocab = lib.llama_sampler_sample, lib.llama_vocab_is_eog, self._vocab
        logits_at, as_array, n_vocab = lib.llama_get_logits_ith, np.ctypeslib.as_array, (self._n_vocab,)
        for seq in ready:
            if seq.sampler is None:  # plain greedy: the argmax, as llama.cpp's greedy sampler picks it
                chosen = int(as_array(logits_at(ctx, seq.idx), shape=n_vocab).argmax())
            else:
                chosen = sample(seq.sampler, ctx, seq.idx)
            if seq.first is None:
                seq.first = time.perf_counter()
                seq.result.time_to_first_token = seq.first - seq.started
            if is_eog(vocab, chosen):
                seq.result.done_reason = "stop"
                self._end(seq, None, flush=True)
            else:
                self._take(seq, chosen)

    def _take(self, seq: Sequence, chosen: int) -> None:
        result = seq.result
        result.tokens.append(chosen)
        if result.logprobs is not None:
            result.logprobs.append(token_logprob(self._lib.llama_get_logits_ith(self._ctx, seq.idx), self._n_vocab,
                                                 chosen, seq.sampling.logprobs or 0, self._llm.detokenize))
        data = self._pieces.get(chosen)
        if data is None:
            data = self._pieces[chosen] = self._llm.detokenize([chosen])
        out, stopped = seq.stops.feed(seq.decoder.decode(data))
        if out:
            seq.pieces.append(out)
            seq.sink.piece(seq, out)
        if stopped:
            result.done_reason = "stop"
            self._end(seq, None)
        elif len(result.tokens) >= seq.limit:
            result.done_reason = "length"
            self._end(seq, None, flush=True)
        else:
            seq.last = chosen

    def _end(self, seq: Sequence, error: ModelpkgError | None, flush: bool = False) -> None:
        """``seq`` leaves the batch: its KV cells and slot are freed, its result completed, its sink told."""
        if seq.done:
            return
        seq.done = True
        if flush and not seq.stops.stopped:
            tail = seq.stops.flush(seq.decoder.decode(b"", final=True))
            if tail:
                seq.pieces.append(tail)
                seq.sink.piece(seq, tail)
        if seq.slot >= 0:
            self._lib.llama_memory_seq_rm(self._memory, seq.slot, -1, -1)
        self._free_sampler(seq)
        finish_result(seq.result, seq.pieces, seq.stops, seq.started or time.perf_counter(), seq.first)
        with self._cond:
            if seq in self._active:
                self._active.remove(seq)
            if seq.slot >= 0:
                self._free.append(seq.slot)
                seq.slot = -1
            idle = not self._active
        if idle and self._ctx is not None:
            # an empty batch starts over at cell 0, as the one-at-a-time context does: where a sequence's
            # cells lie changes the order of llama.cpp's additions (see the module docstring)
            self._lib.llama_memory_clear(self._memory, True)
        if seq.sink is not None:
            seq.sink.end(seq, error)

    # ----- samplers

    def _sampler(self, sampling: SamplingOptions, grammar: Any) -> Any:
        """A sampler chain in the order ``Llama._init_sampler`` builds it, so one request samples the same
        tokens here as alone (for greedy requests: the same argmax)."""
        if (grammar is None and sampling.temperature == 0 and sampling.repeat_penalty == 1
                and sampling.frequency_penalty == 0 and sampling.presence_penalty == 0):
            # the chain would be neutral penalties, then greedy: llama.cpp fills 262144 candidates for it
            # (about 1 ms a token for Gemma on this machine); numpy's argmax over the logits picks the same
            # token (the first of the largest) in a tenth of that
            return None
        lib = self._lib
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        add = lib.llama_sampler_chain_add
        add(chain, lib.llama_sampler_init_penalties(self._n_vocab, self._last_n, sampling.repeat_penalty,
                                                    sampling.frequency_penalty, sampling.presence_penalty))
        if grammar is not None:
            rule = lib.llama_sampler_init_grammar(self._vocab, grammar._grammar.encode("utf-8"),
                                                  grammar._root.encode("utf-8"))
            if not rule:
                lib.llama_sampler_free(chain)
                raise InvalidInputError("llama.cpp cannot read the grammar made from this format")
            add(chain, rule)
        seed = sampling.seed if sampling.seed >= 0 else RANDOM_SEED
        temp = sampling.temperature
        if temp < 0:
            add(chain, lib.llama_sampler_init_dist(seed))
        elif temp == 0:
            add(chain, lib.llama_sampler_init_greedy())
        else:
            add(chain, lib.llama_sampler_init_top_k(sampling.top_k))
            add(chain, lib.llama_sampler_init_typical(sampling.typical_p, 1))
            add(chain, lib.llama_sampler_init_top_p(sampling.top_p, 1))
            add(chain, lib.llama_sampler_init_min_p(sampling.min_p, 1))
            add(chain, lib.llama_sampler_init_temp(temp))
            add(chain, lib.llama_sampler_init_dist(seed))
        return chain

    def _free_sampler(self, seq: Sequence) -> None:
        sampler, seq.sampler = seq.sampler, None
        if sampler:
            self._lib.llama_sampler_free(sampler)


# --------------------------------------------------------------------------------------------------------
# the runner


class BatchRunner(Runner):
    """``Runner`` for ``n_parallel`` > 1: ``generate`` may be called from many threads at once; up to
    ``n_parallel`` generations decode together, the rest wait for a slot. Not for embedding (``Runner``)."""

    def __init__(self, llm: Any, options: LoadOptions, load_duration: float,
                 fatal: Callable[[BaseException], None] | None = None):
        super().__init__(llm, options, load_duration)
        self.scheduler = Scheduler(llm, options, max(options.n_parallel, 1), fatal)

    @classmethod
    def sequences(cls, options: LoadOptions, embedding: bool) -> int:
        return max(options.n_parallel, 1)

    @classmethod
    def llama_kwargs(cls, options: LoadOptions, embedding: bool) -> dict[str, Any]:
        if embedding:
            raise RunnerError("continuous batching is for generation; load an embedding model with Runner")
        # the Llama object only tokenises here: a minimal context and batch (its logits buffer is
        # n_batch x n_vocab floats: 1 GiB at 512 for Gemma's 262144 tokens, left unallocated)
        return {**options.llama_kwargs(), "n_ctx": HELPER_CTX, "n_batch": 8, "n_ubatch": 8}

    @property
    def n_ctx(self) -> int:
        return self.scheduler.n_ctx

    def reset(self) -> None:
        """Nothing to forget: a sequence's KV cells are freed when it ends."""

    def prepare(self, prompt: str, sampling: SamplingOptions, *, add_bos: bool = True,
                format: Any = None) -> Sequence:
        """Check and tokenize the request and build its sampler (a refused request raises here)."""
        check_num_predict(sampling.max_tokens)
        grammar = json_grammar(format)
        tokens = self.tokenize(prompt, add_bos=add_bos)
        self.last_prompt = prompt
        self.last_prompt_tokens = list(tokens)
        return self.scheduler.prepare(tokens, sampling, grammar)

    def generate(self, prompt: str, sampling: SamplingOptions, *, add_bos: bool = True,
                 format: Any = None) -> Generation:
        seq = self.prepare(prompt, sampling, add_bos=add_bos, format=format)
        stream = _Stream()
        self.scheduler.start(seq, stream)
        return BatchGeneration(self.scheduler, seq, stream)

    def generate_all(self, prompts: list[str], sampling: SamplingOptions | list[SamplingOptions], *,
                     add_bos: bool = True, format: Any = None) -> list[Generation]:
        """``generate`` for each prompt, queued at once so that those with a slot start in the same step
        (``run --batch``; tests that need the same batch every time). ``sampling`` and ``format`` are one for
        all, or a list with one per prompt."""
        samplings = sampling if isinstance(sampling, list) else [sampling] * len(prompts)
        formats = format if isinstance(format, list) else [format] * len(prompts)
        if not len(samplings) == len(formats) == len(prompts):
            raise InvalidInputError("one sampling and one format per prompt, or one for all")
        seqs = []
        try:
            for prompt, one, form in zip(prompts, samplings, formats, strict=True):
                seqs.append(self.prepare(prompt, one, add_bos=add_bos, format=form))
        except BaseException:
            for seq in seqs:
                self.scheduler.discard(seq)
            raise
        streams = [_Stream() for _ in seqs]
        for seq, stream in zip(seqs, streams, strict=True):
            seq.sink = stream
        self.scheduler.start_all(seqs)
        return [BatchGeneration(self.scheduler, seq, stream) for seq, stream in zip(seqs, streams, strict=True)]

    def close(self) -> None:
        scheduler = getattr(self, "scheduler", None)
        if scheduler is not None:
            scheduler.close()  # its context before the model it was made from
        super().close()


_END = object()


class _Stream:
    """A sink that queues pieces for a reader on another thread."""

    def __init__(self) -> None:
        self.items: queue.SimpleQueue = queue.SimpleQueue()

    def piece(self, seq: Sequence, text: str) -> None:
        self.items.put(text)

    def end(self, seq: Sequence, error: ModelpkgError | None) -> None:
        self.items.put(_END if error is None else error)


class BatchGeneration(Generation):
    """A generation in the batch: pieces as the scheduler makes them; ``close`` cancels it."""

    def __init__(self, scheduler: Scheduler, seq: Sequence, stream: _Stream):
        self._scheduler, self._seq, self._stream = scheduler, seq, stream
        self._ended = False
        super().__init__(self._receive(), seq.result)

    def _receive(self) -> Iterator[str]:
        while not self._ended:
            item = self._stream.items.get()
            if item is _END:
                self._ended = True
            elif isinstance(item, BaseException):
                self._ended = True
                raise item
            else:
                yield item

    def close(self) -> None:
        """Stop the generation and wait for its final counts."""
        if self._ended:
            return
        self._scheduler.cancel(self._seq)
        while not self._ended:
            item = self._stream.items.get()
            self._ended = item is _END or isinstance(item, BaseException)
