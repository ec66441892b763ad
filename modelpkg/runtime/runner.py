"""Run a GGUF model with llama.cpp, through llama-cpp-python: the one module that touches ``llama_cpp``.

Two halves:

- Pure option mapping: Ollama's parameter names and defaults (``api.DefaultOptions``) become
  ``LoadOptions`` (what ``Llama(...)`` takes, fixed for a loaded model) and ``SamplingOptions`` (what each
  request takes). The mapping follows Ollama's llama-server command line and request fields
  (reference/ollama-behaviour.md section 5); it imports nothing heavy and is unit-tested without a model.
- ``Runner``: the adapter. It imports ``llama_cpp`` only in ``Runner.load`` (so ``modelpkg list`` starts
  fast), loads the weights straight from the store's blob file (no copy), tokenizes prompts with special
  tokens parsed (a rendered template's ``<start_of_turn>`` becomes one token, as llama-server does), and
  streams text. Every llama_cpp failure (and a missing llama-cpp-python) becomes a ``RunnerError``.

The generation loop drives ``Llama.generate`` itself instead of ``create_completion``: it needs exact token
counts and timings for ``--verbose``/``--format json``, holds back text that may be the start of a stop
string while streaming, and ends a turn on any end-of-generation token (EOS, EOT, ...), as
``create_completion`` does. With the same settings it yields the same tokens (tests check the text).

What a request may build is bounded before llama.cpp sees it (``core.limits``): the schema in ``format``
and the grammar it becomes, ``num_predict``, a prompt longer than the context (refused, not truncated), and
a ``num_ctx`` whose KV cache cannot fit in the memory available (estimated from the GGUF's shape,
``ggufshape``). ``serve`` runs this class in a runner process per model (``remote``, ``worker``).

I/O adapter: imports the core (errors, limits), ``base.config`` (the grammar bounds) and ``ggufshape``.
"""

from __future__ import annotations

import codecs
import contextlib
import io
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelpkg.base import config
from modelpkg.core.errors import InvalidInputError, RunnerError
from modelpkg.core.limits import (
    GrammarLimits,
    check_context_memory,
    check_format,
    check_grammar_size,
    check_num_predict,
)

INSTALL_HINT = ("install it with: pip install 'modelpkg[run]' "
                "(this builds llama.cpp from source: about 5 minutes on 2 cores)")
RANDOM_SEED = 0xFFFFFFFF  # LLAMA_DEFAULT_SEED: llama.cpp's sampler then seeds itself at random

# Ollama api.DefaultOptions (api/types.go), by Ollama name. num_ctx: Ollama picks 4096 on small machines;
# it is capped by the model's trained context length (see load_options).
DEFAULTS: dict[str, Any] = {
    "num_ctx": 4096,
    "num_batch": 512,
    "num_gpu": -1,
    "num_thread": 0,
    "repeat_last_n": 64,
    "seed": -1,
    "num_predict": -1,
    "temperature": 0.8,
    "top_k": 40,
    "top_p": 0.9,
    "min_p": 0.0,
    "typical_p": 1.0,
    "repeat_penalty": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "stop": [],
}

# Parameters fixed when the model is loaded (changing one reloads it, as Ollama restarts its runner).
LOAD_PARAMETERS = frozenset({"num_ctx", "num_batch", "num_thread", "num_gpu", "main_gpu", "use_mmap",
                             "repeat_last_n"})
# Accepted and ignored: there is no context shift (num_keep) and no draft model (draft_num_predict).
IGNORED_PARAMETERS = frozenset({"num_keep", "draft_num_predict"})
# The options key (never a Modelfile parameter: the request fields set it) that asks for token log
# probabilities: its value is the number of top alternatives per token (0: only the chosen token's).
LOGPROBS = "logprobs"
MAX_TOP_LOGPROBS = 20  # Ollama's and OpenAI's limit


@dataclass(frozen=True)
class LoadOptions:
    """What ``llama_cpp.Llama(...)`` is given. ``n_threads=None`` lets llama-cpp-python choose."""

    model_path: Path
    n_ctx: int = 4096
    n_batch: int = 512
    n_threads: int | None = None
    n_gpu_layers: int = -1
    main_gpu: int = 0
    use_mmap: bool = True
    last_n_tokens_size: int = 64
    lora_path: Path | None = None
    shard_paths: tuple[Path, ...] = ()  # a split GGUF: every shard in order (model_path is the first)
    # sequences decoded together (issue 14; serve --parallel): 1 is one request at a time (``Runner``), more
    # is ``batch.BatchRunner``'s continuous batching with ``n_ctx`` tokens per sequence, N x n_ctx in all
    n_parallel: int = 1

    def llama_kwargs(self) -> dict[str, Any]:
        return {
            "model_path": str(self.model_path),
            "n_ctx": self.n_ctx,
            "n_batch": self.n_batch,
            "n_threads": self.n_threads,
            "n_gpu_layers": self.n_gpu_layers,
            "main_gpu": self.main_gpu,
            "use_mmap": self.use_mmap,
            "last_n_tokens_size": self.last_n_tokens_size,
            "lora_path": str(self.lora_path) if self.lora_path else None,
        }


@dataclass(frozen=True)
class SamplingOptions:
    """One request's sampling settings. ``max_tokens <= 0``: until an end token or the context is full."""

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.9
    min_p: float = 0.0
    typical_p: float = 1.0
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    max_tokens: int = -1
    stop: tuple[str, ...] = ()
    seed: int = -1
    # Not a Modelfile parameter: the servers set it (``LOGPROBS``) from a request's logprobs fields. None: no
    # log probabilities; n >= 0: each generated token's, with the n likeliest tokens at its position.
    logprobs: int | None = None

    def generate_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``Llama.generate`` (its names: ``temp``, not ``temperature``)."""
        return {"temp": self.temperature, "top_k": self.top_k, "top_p": self.top_p, "min_p": self.min_p,
                "typical_p": self.typical_p, "repeat_penalty": self.repeat_penalty,
                "presence_penalty": self.presence_penalty, "frequency_penalty": self.frequency_penalty}


def effective_parameters(*layers: Mapping[str, Any] | None) -> dict[str, Any]:
    """Ollama's precedence: defaults, then each layer in turn (model params, CLI, session); later wins."""
    merged = dict(DEFAULTS)
    for layer in layers:
        for name, value in (layer or {}).items():
            merged[name] = list(value) if isinstance(value, (list, tuple)) else value
    return merged


def load_options(params: Mapping[str, Any], model_path: Path, adapter_paths: Sequence[Path] = (),
                 context_length: int | None = None, shard_paths: Sequence[Path] = (),
                 n_parallel: int = 1) -> LoadOptions:
    """The load-time half of ``params`` (merged with ``effective_parameters``) for one model file;
    ``n_parallel`` is the server's setting (``--parallel``), not a Modelfile parameter."""
    if len(adapter_paths) > 1:
        raise RunnerError(f"this model has {len(adapter_paths)} ADAPTER layers; llama.cpp here applies one",
                          "merge the adapters into one, or create a model with a single ADAPTER")
    n_ctx = int(params.get("num_ctx", DEFAULTS["num_ctx"]))
    if n_ctx <= 0:
        raise RunnerError(f"num_ctx must be positive, not {n_ctx}", "set PARAMETER num_ctx 4096, say")
    if context_length and n_ctx > context_length:
        n_ctx = context_length  # Ollama caps it too ("requested context size too large for model")
    threads = int(params.get("num_thread", 0))
    mmap = params.get("use_mmap")
    main_gpu = params.get("main_gpu")
    return LoadOptions(
        model_path=Path(model_path),
        n_ctx=n_ctx,
        n_batch=max(int(params.get("num_batch", DEFAULTS["num_batch"])), 1),
        n_threads=threads if threads > 0 else None,
        # Ollama: -1 = let the runner decide; llama-cpp-python: -1 = offload every layer the build can
        n_gpu_layers=int(params.get("num_gpu", DEFAULTS["num_gpu"])),
        main_gpu=int(main_gpu) if main_gpu is not None else 0,
        use_mmap=True if mmap is None else bool(mmap),
        last_n_tokens_size=int(params.get("repeat_last_n", DEFAULTS["repeat_last_n"])),
        lora_path=Path(adapter_paths[0]) if adapter_paths else None,
        shard_paths=tuple(Path(p) for p in shard_paths),
        n_parallel=max(int(n_parallel), 1),
    )


def sampling_options(params: Mapping[str, Any]) -> SamplingOptions:
    """The per-request half of ``params``. ``num_predict`` -1 (or -2, Ollama's fill-context) means no cap."""
    stop = params.get("stop") or []
    if isinstance(stop, str):
        stop = [stop]
    seed = int(params.get("seed", -1))
    return SamplingOptions(
        temperature=float(params.get("temperature", DEFAULTS["temperature"])),
        top_k=int(params.get("top_k", DEFAULTS["top_k"])),
        top_p=float(params.get("top_p", DEFAULTS["top_p"])),
        min_p=float(params.get("min_p", DEFAULTS["min_p"])),
        typical_p=float(params.get("typical_p", DEFAULTS["typical_p"])),
        repeat_penalty=float(params.get("repeat_penalty", DEFAULTS["repeat_penalty"])),
        presence_penalty=float(params.get("presence_penalty", DEFAULTS["presence_penalty"])),
        frequency_penalty=float(params.get("frequency_penalty", DEFAULTS["frequency_penalty"])),
        max_tokens=int(params.get("num_predict", DEFAULTS["num_predict"])),
        stop=tuple(str(s) for s in stop if str(s)),
        seed=seed if seed >= 0 else -1,
        logprobs=None if params.get(LOGPROBS) is None else min(max(int(params[LOGPROBS]), 0), MAX_TOP_LOGPROBS),
    )


# --------------------------------------------------------------------------------------------------------
# the adapter


@dataclass(frozen=True)
class TokenLogprob:
    """A token's log probability (natural log) and its bytes; for a generated token, ``top`` holds the
    likeliest tokens at its position, most likely first (Ollama's ``Logprob``, OpenAI's logprobs ``content``)."""

    token: str
    logprob: float
    bytes: tuple[int, ...]
    top: tuple[TokenLogprob, ...] = ()


@dataclass
class Result:
    """What one generation produced, with Ollama's counters (durations in seconds here)."""

    text: str = ""
    done_reason: str = ""          # "stop" (end token or stop string), "length", "interrupted"
    prompt_tokens: int = 0         # tokens in the prompt
    prompt_eval_count: int = 0     # of which evaluated now (the rest were still in the KV cache)
    eval_count: int = 0            # tokens generated (the end token not counted)
    prompt_eval_duration: float = 0.0
    eval_duration: float = 0.0
    total_duration: float = 0.0
    time_to_first_token: float = 0.0
    tokens: list[int] = field(default_factory=list, repr=False)
    stop_sequence: str | None = None  # the stop string that ended the answer (Anthropic's stop_sequence)
    # per generated token when SamplingOptions.logprobs asked for them (tokens cut by a stop string left out)
    logprobs: list[TokenLogprob] | None = None


class Generation:
    """A stream of text pieces; ``result`` is complete once the stream ends (or is closed early)."""

    def __init__(self, pieces: Iterator[str], result: Result):
        self._pieces = pieces
        self.result = result

    def __iter__(self) -> Iterator[str]:
        return self._pieces

    def close(self) -> None:
        close = getattr(self._pieces, "close", None)
        if close:
            close()

    def text(self) -> str:
        """Consume the rest of the stream; the whole answer."""
        for _ in self._pieces:
            pass
        return self.result.text


class Runner:
    """A model loaded into llama.cpp. Build it with ``Runner.load``; one conversation at a time."""

    def __init__(self, llm: Any, options: LoadOptions, load_duration: float):
        self._llm = llm
        self.options = options
        self.load_duration = load_duration
        self.last_prompt: str | None = None        # the exact text of the last prompt sent (for tests, /show)
        self.last_prompt_tokens: list[int] = []

    @classmethod
    def load(cls, options: LoadOptions, *, embedding: bool = False) -> Runner:
        """Load the weights; ``embedding=True`` gives a context for ``embed`` (a second instance, as
        Ollama's server runs embedding requests)."""
        llama_cpp = import_llama_cpp()
        started = time.perf_counter()
        check_memory(options, cls.sequences(options, embedding))
        extra = {"embedding": True} if embedding else {}
        from modelpkg.runtime.splits import loading

        with native_output_captured() as captured:
            try:
                with loading(options.shard_paths):  # a split GGUF: its shards, straight from the blobs
                    llm = llama_cpp.Llama(**cls.llama_kwargs(options, embedding), **extra, verbose=False)
            except (ValueError, RuntimeError, OSError) as e:
                detail = last_error_line(captured.text()) or str(e)
                raise RunnerError(f"llama.cpp cannot load {options.model_path}: {detail}",
                                  _load_hint(options)) from e
        try:
            return cls(llm, options, time.perf_counter() - started)
        except BaseException:
            llm.close()
            raise

    @classmethod
    def sequences(cls, options: LoadOptions, embedding: bool) -> int:
        """How many sequences of ``options.n_ctx`` tokens the KV cache holds (one: a request at a time)."""
        return 1

    @classmethod
    def llama_kwargs(cls, options: LoadOptions, embedding: bool) -> dict[str, Any]:
        return options.llama_kwargs()

    # ----- facts about the model

    @property
    def n_ctx(self) -> int:
        """The usable context. llama.cpp pads the context it allocates (to a multiple of 256), while
        llama-cpp-python sizes its token buffer by the n_ctx it was given: the smaller one is the limit."""
        llm = self._llm
        return min(int(llm.n_ctx()), len(llm.input_ids))

    @property
    def chat_template(self) -> str | None:
        """The GGUF's own Jinja template (``tokenizer.chat_template``), if it carries one."""
        value = (self._llm.metadata or {}).get("tokenizer.chat_template")
        return value if isinstance(value, str) and value.strip() else None

    def token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self._llm._model.token_get_text(token)

    # ----- prompts

    def tokenize(self, text: str, add_bos: bool = True) -> list[int]:
        """Tokens of ``text``, special tokens parsed; BOS prepended when the model wants one (and not doubled)."""
        try:
            tokens = self._llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)
        except RuntimeError as e:
            raise RunnerError(f"cannot tokenize the prompt: {e}") from e
        bos = self._llm.token_bos()
        if len(tokens) >= 2 and tokens[0] == tokens[1] == bos:
            tokens = tokens[1:]  # the rendered text began with the BOS text already
        return tokens

    def detokenize(self, tokens: Sequence[int]) -> str:
        """The text of ``tokens`` (an Ollama ``context`` handed back by a client)."""
        try:
            return self._llm.detokenize(list(tokens), special=True).decode("utf-8", errors="replace")
        except (RuntimeError, ValueError, TypeError) as e:
            raise RunnerError(f"cannot read the context tokens: {e}") from e

    def format_chat(self, messages: list[dict[str, Any]], template: str | None = None, **values: Any) -> str:
        """Render ``messages`` with a Jinja chat template (the GGUF's by default), the way llama-cpp-python's
        chat formatting does (``Jinja2ChatFormatter``: bos/eos tokens, ``add_generation_prompt``); ``values``
        (``tools``, ``enable_thinking``) reach the template as variables, as llama.cpp passes them."""
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        template = template or self.chat_template
        if template is None:
            raise RunnerError("this model has no chat template")
        llm = self._llm
        try:
            formatter = Jinja2ChatFormatter(template=template, eos_token=self.token_text(llm.token_eos()),
                                            bos_token=self.token_text(llm.token_bos()))
            return formatter(messages=messages, **values).prompt
        except Exception as e:
            raise RunnerError(f"the model's chat template failed: {type(e).__name__}: {e}",
                              "give the model a TEMPLATE in its Modelfile") from e

    # ----- generation

    def reset(self) -> None:
        """Forget the KV cache (the next prompt is evaluated from scratch)."""
        self._llm.reset()

    def generate(self, prompt: str, sampling: SamplingOptions, *, add_bos: bool = True,
                 format: Any = None) -> Generation:
        """Stream the continuation of ``prompt`` (special tokens parsed). ``format`` ``"json"`` (any JSON
        value) or a JSON schema object constrains the output with a llama.cpp grammar (Ollama's format)."""
        check_num_predict(sampling.max_tokens)
        grammar = json_grammar(format)
        tokens = self.tokenize(prompt, add_bos=add_bos)
        self.last_prompt = prompt
        self.last_prompt_tokens = list(tokens)
        if len(tokens) >= self.n_ctx:
            # refused, not cut: Ollama's runner cuts a long prompt's start silently (keeping num_keep), which
            # answers a question the client did not ask; /api/chat drops whole old turns first (ops.chat)
            raise InvalidInputError(f"the prompt is {len(tokens)} tokens; the context holds {self.n_ctx}",
                                    "shorten it, or raise num_ctx (--ctx N)")
        result = Result(prompt_tokens=len(tokens))
        return Generation(self._stream(tokens, sampling, result, grammar), result)

    def embed(self, texts: Sequence[str], *, truncate: bool = True) -> tuple[list[list[float]], int]:
        """One vector per text and the number of tokens read; L2-normalised, as Ollama's /api/embed gives
        them. A model without pooling of its own (a decoder such as Gemma) gets the mean of its token
        vectors. Needs a runner loaded with ``embedding=True``."""
        llm = self._llm
        try:
            groups, count = self._embedding_groups(texts, truncate)
            out = []
            for group in groups:  # each group is one decode, one sequence id per text
                out += self._embed_group(group)
        except RuntimeError as e:
            raise RunnerError(f"llama.cpp failed while embedding: {e}") from e
        finally:
            if llm is not None:
                llm._ctx.kv_cache_clear()
                llm.reset()
        return out, count

    def _embedding_groups(self, texts: Sequence[str], truncate: bool) -> tuple[list[list[list[int]]], int]:
        """The texts' tokens (as llama-cpp-python's ``Llama.embed`` reads them), in groups that fit one batch."""
        llm = self._llm
        n_batch, n_seq = llm.n_batch, max(int(llm.context_params.n_seq_max), 1)
        groups: list[list[list[int]]] = [[]]
        size = count = 0
        for text in texts:
            tokens = llm.tokenize(str(text).encode("utf-8"))
            if truncate:
                tokens = tokens[:n_batch]
            if len(tokens) > n_batch:
                raise RunnerError(f"cannot embed the input: it is {len(tokens)} tokens; a batch holds {n_batch}",
                                  "shorten it, or pass truncate=true")
            if groups[-1] and (size + len(tokens) > n_batch or len(groups[-1]) >= n_seq):
                groups.append([])
                size = 0
            groups[-1].append(tokens)
            size += len(tokens)
            count += len(tokens)
        return [g for g in groups if g], count

    def _embed_group(self, group: list[list[int]]) -> list[list[float]]:
        """One decode of several sequences; L2-normalised vectors (the mean of the token vectors when the
        model does not pool). Llama.embed (0.3.36) reads the second text's token vectors from the wrong
        offset when it does not pool, so this reads them itself."""
        import llama_cpp
        import numpy as np

        llm = self._llm
        llm._ctx.kv_cache_clear()
        llm._batch.reset()
        for seq, tokens in enumerate(group):
            llm._batch.add_sequence(tokens, seq, True)
        llm._ctx.decode(llm._batch)
        n_embd = llm.n_embd()
        vectors = []
        if llm.pooling_type() == llama_cpp.LLAMA_POOLING_TYPE_NONE:
            rows = np.ctypeslib.as_array(llama_cpp.llama_get_embeddings(llm.ctx),
                                         shape=(sum(map(len, group)), n_embd))
            start = 0
            for tokens in group:
                vectors.append(rows[start:start + len(tokens)].astype(np.float64).mean(axis=0))
                start += len(tokens)
        else:
            for seq in range(len(group)):
                pointer = llama_cpp.llama_get_embeddings_seq(llm.ctx, seq)
                vectors.append(np.ctypeslib.as_array(pointer, shape=(n_embd,)).astype(np.float64))
        out = []
        for vector in vectors:
            norm = float(np.sqrt((vector * vector).sum())) or 1.0
            out.append((vector / norm).tolist())
        return out

    def _stream(self, tokens: list[int], sampling: SamplingOptions, result: Result,
                grammar: Any = None) -> Iterator[str]:
        llm = self._llm
        room = self.n_ctx - len(tokens)
        limit = sampling.max_tokens if 0 < sampling.max_tokens < room else room
        result.prompt_eval_count = len(tokens) - self._cached_prefix(tokens)
        stops = StopMatcher(sampling.stop)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        is_end = self._end_of_generation()
        pieces: list[str] = []
        started = time.perf_counter()
        first = None
        result.done_reason = "interrupted"
        if sampling.logprobs is not None:
            result.logprobs = []
        llm.set_seed(sampling.seed if sampling.seed >= 0 else RANDOM_SEED)
        try:
            for token in llm.generate(tokens, **sampling.generate_kwargs(), grammar=grammar):
                if first is None:
                    first = time.perf_counter()
                    result.time_to_first_token = first - started
                if is_end(token):
                    result.done_reason = "stop"
                    break
                result.tokens.append(token)
                if result.logprobs is not None:
                    result.logprobs.append(self._logprob(token, sampling.logprobs))
                out, stopped = stops.feed(decoder.decode(llm.detokenize([token])))
                if out:
                    pieces.append(out)
                    yield out
                if stopped:
                    result.done_reason = "stop"
                    break
                if len(result.tokens) >= limit:
                    result.done_reason = "length"
                    break
            if not stops.stopped:
                tail = stops.flush(decoder.decode(b"", final=True))
                if tail:
                    pieces.append(tail)
                    yield tail
        except (RuntimeError, ValueError, OSError) as e:
            raise RunnerError(f"llama.cpp failed while generating: {e}", "try a smaller num_ctx or num_batch") from e
        finally:
            finish_result(result, pieces, stops, started, first)

    def _logprob(self, token: int, top: int) -> TokenLogprob:
        """``token``'s log probability under the logits it was just sampled from (the last evaluated
        position), with the ``top`` likeliest."""
        llm = self._llm
        return token_logprob(llm._ctx.get_logits_ith(-1), llm.n_vocab(), token, top, llm.detokenize)

    def _cached_prefix(self, tokens: list[int]) -> int:
        """How many leading prompt tokens llama-cpp-python will reuse from its KV cache (it re-evaluates at
        least one, so the logits are fresh)."""
        llm = self._llm
        n = 0
        for a, b in zip(llm._input_ids, tokens, strict=False):  # the common prefix of the two
            if a != b:
                break
            n += 1
        return max(n - 1, 0) if n == len(tokens) else n

    def _end_of_generation(self):
        """A predicate: does this token end a turn (EOS, EOT, EOM, ...)? llama.cpp's own list (``is_eog``)."""
        import llama_cpp

        llm = self._llm
        vocab = getattr(getattr(llm, "_model", None), "vocab", None)
        if vocab is not None and hasattr(llama_cpp, "llama_vocab_is_eog"):
            return lambda token: bool(llama_cpp.llama_vocab_is_eog(vocab, token))
        eos = llm.token_eos()
        return lambda token: token == eos

    def close(self) -> None:
        llm, self._llm = self._llm, None
        if llm is not None:
            llm.close()

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def finish_result(result: Result, pieces: list[str], stops: StopMatcher, started: float,
                  first: float | None) -> None:
    """A generation's counters once it has ended (its tokens are in ``result.tokens``): text, the stop string,
    log probabilities cut where a stop string cut the text, and the durations (``started``: before its prompt
    was evaluated; ``first``: when its first token was sampled)."""
    end = time.perf_counter()
    result.text = "".join(pieces)
    result.stop_sequence = stops.matched
    if result.logprobs and stops.matched is not None:
        result.logprobs = _within(result.logprobs, len(result.text.encode()))
    result.eval_count = len(result.tokens)
    result.prompt_eval_duration = (first or end) - started
    result.eval_duration = end - first if first is not None else 0.0
    result.total_duration = end - started


def token_logprob(logits_pointer: Any, n_vocab: int, token: int, top: int,
                  detokenize: Callable[[list[int]], bytes]) -> TokenLogprob:
    """``token``'s log probability under the logits at ``logits_pointer`` (raw logits, before the sampler's
    temperature, top-k or grammar), with the ``top`` likeliest tokens at that position."""
    import numpy as np

    logits = np.ctypeslib.as_array(logits_pointer, shape=(n_vocab,))
    peak = float(logits.max())
    logprobs = logits - (peak + math.log(float(np.exp(logits - peak).sum())))

    def entry(i: int) -> TokenLogprob:
        data = detokenize([i])
        return TokenLogprob(data.decode("utf-8", errors="replace"), float(logprobs[i]), tuple(data))

    best: tuple[TokenLogprob, ...] = ()
    top = min(top, len(logprobs) - 1)
    if top > 0:
        ids = np.argpartition(-logprobs, top)[:top]
        best = tuple(entry(int(i)) for i in sorted(ids, key=lambda i: -logprobs[i]))
    chosen = entry(token)
    return TokenLogprob(chosen.token, chosen.logprob, chosen.bytes, best)


def _within(entries: list[TokenLogprob], size: int) -> list[TokenLogprob]:
    """The entries whose token begins inside the first ``size`` bytes of the answer (a stop string cut the rest)."""
    kept, start = [], 0
    for entry in entries:
        if start >= size:
            break
        kept.append(entry)
        start += len(entry.bytes)
    return kept


class StopMatcher:
    """Cuts the stream at the first stop string, holding back text that may be the start of one."""

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.pending = ""
        self.stopped = False
        self.matched: str | None = None  # the stop string found

    def feed(self, text: str) -> tuple[str, bool]:
        if not self.stops:
            return text, False
        self.pending += text
        hits = [(i, n, s) for n, (i, s) in enumerate((self.pending.find(s), s) for s in self.stops) if i >= 0]
        if hits:
            at, _, self.matched = min(hits)
            out, self.pending, self.stopped = self.pending[:at], "", True
            return out, True
        keep = self._partial_suffix()
        cut = len(self.pending) - keep
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out, False

    def _partial_suffix(self) -> int:
        best = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(self.pending)), best, -1):
                if self.pending.endswith(stop[:n]):
                    best = n
                    break
        return best

    def flush(self, text: str) -> str:
        if self.stopped:
            return ""
        out, _ = self.feed(text) if text else ("", False)
        if self.stopped:
            return out
        out, self.pending = out + self.pending, ""
        return out


def grammar_limits() -> GrammarLimits:
    """The bounds on ``format`` in force: ``core.limits``' defaults, or the operator's settings."""
    defaults = GrammarLimits()
    repeat, size = config.grammar_max_repeat(), config.grammar_max_bytes()
    return GrammarLimits(
        max_repeat=defaults.max_repeat if repeat is None else repeat,
        max_total_repeat=defaults.max_total_repeat if repeat is None else (4 * repeat if repeat > 0 else 0),
        max_grammar_bytes=defaults.max_grammar_bytes if size is None else size)


def check_request_format(format: Any) -> None:
    """Refuse a ``format`` that is neither "json" nor a schema, or a schema past the bounds (a 400)."""
    if format is None or format == "" or format == "json":
        return
    if not isinstance(format, dict):
        raise InvalidInputError(f"format must be \"json\" or a JSON schema object, not {json.dumps(format)[:200]}")
    check_format(format, grammar_limits())


def json_grammar(format: Any) -> Any:
    """A llama.cpp grammar for Ollama's ``format``: None or "" (free text), "json", or a JSON schema (whose
    size and grammar are bounded first: ``core.limits``)."""
    if format is None or format == "":
        return None
    check_request_format(format)
    import_llama_cpp()
    from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar, json_schema_to_gbnf

    try:
        if format == "json":
            return LlamaGrammar.from_string(JSON_GBNF, verbose=False)
        gbnf = json_schema_to_gbnf(json.dumps(format))
    except (ValueError, RuntimeError, TypeError, KeyError, RecursionError) as e:
        raise InvalidInputError(f"cannot turn the JSON schema into a grammar: {str(e)[:300]}") from e
    check_grammar_size(gbnf, grammar_limits())
    try:
        return LlamaGrammar.from_string(gbnf, verbose=False)
    except (ValueError, RuntimeError, TypeError, KeyError) as e:
        raise InvalidInputError(f"cannot turn the JSON schema into a grammar: {str(e)[:300]}") from e


def check_memory(options: LoadOptions, n_seq: int = 1) -> None:
    """Refuse a context whose KV cache cannot fit in the memory available now (no estimate: no check)."""
    from modelpkg.runtime.ggufshape import available_memory, model_shape

    shape = model_shape(options.model_path)
    available = available_memory()
    if shape is not None and available is not None:
        check_context_memory(shape, options.n_ctx, n_seq, available)


def import_llama_cpp():
    """``import llama_cpp``, or a RunnerError that says how to install it."""
    try:
        import llama_cpp
    except ImportError as e:
        raise RunnerError("running models needs llama-cpp-python, which is not installed", INSTALL_HINT) from e
    except (OSError, RuntimeError) as e:  # installed, but its shared library does not load
        raise RunnerError(f"llama-cpp-python is installed but its llama.cpp library does not load: {e}",
                          "reinstall it: pip install --force-reinstall --no-cache-dir 'modelpkg[run]'") from e
    return llama_cpp


def _load_hint(options: LoadOptions) -> str:
    if options.lora_path:
        return "check that the ADAPTER was made for this base model (same architecture and size)"
    return "the file may be damaged, or an architecture this llama-cpp-python does not know; try upgrading it"


class _Captured:
    def __init__(self, file, python: io.StringIO):
        self._file = file
        self._python = python

    def text(self) -> str:
        try:
            self._file.seek(0)
            native = self._file.read().decode("utf-8", errors="replace")
        except (OSError, ValueError):
            native = ""
        return native + self._python.getvalue()


@contextlib.contextmanager
def native_output_captured() -> Iterator[_Captured]:
    """Keep llama.cpp's chatter (written straight to file descriptor 2, or through its Python log hook to
    ``sys.stderr``) off the user's terminal while loading; the text is kept for the error message."""
    python = io.StringIO()
    with tempfile.TemporaryFile() as file:
        captured = _Captured(file, python)
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError):
            saved = None
        if saved is not None:
            os.dup2(file.fileno(), 2)
        try:
            with contextlib.redirect_stderr(python):
                yield captured
        finally:
            if saved is not None:
                os.dup2(saved, 2)
                os.close(saved)


def last_error_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower() or "failed" in line.lower()]
    return (errors or lines or [""])[-1][:300]

