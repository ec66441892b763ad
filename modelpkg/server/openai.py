"""OpenAI's API (``/v1/*``, as Ollama's ``openai/openai.go`` serves it): models, chat completions,
completions and embeddings, with the translations of OpenAI's fields (options, ``response_format``,
messages, ``tools``, ``tool_choice`` -- a forced call is a grammar from the tools' schemas --,
``reasoning_effort``) into Ollama's, server-sent event streams and OpenAI's usage counts.

Built on ``http``, ``cache`` and ``backend``; never imports ``ollama`` or ``app`` (``app`` routes here), nor the
CLI.
"""

from __future__ import annotations

import base64
import json
import struct
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import unquote

from modelpkg.base import config
from modelpkg.core.errors import InvalidInputError, NotFoundError
from modelpkg.core.thinking import THINK_LEVELS
from modelpkg.ops.chat import Session, chat_messages, check_tools, with_call_ids
from modelpkg.ops.models import ModelDetails
from modelpkg.runtime.runner import Result, TokenLogprob, sampling_options
from modelpkg.server.backend import (
    Backend,
    LogprobCursor,
    answer_splitter,
    display_name,
    logprob_json,
    normalised,
    options_from,
    with_logprobs,
)
from modelpkg.server.cache import Slot
from modelpkg.server.http import ApiError, Request
from modelpkg.store import RefEntry

Route = Callable[[Request], None]
MODELS_PREFIX = "/v1/models/"  # GET /v1/models/{id}: the id may hold '/' and ':' (host:port/namespace/name:tag)

# --------------------------------------------------------------------------------------------------------
# OpenAI's fields as Ollama's

def openai_options(body: Mapping[str, Any]) -> dict[str, Any]:
    """OpenAI request fields -> Ollama options (``openai/openai.go``: only what the client set)."""
    out: dict[str, Any] = {}
    for src, dst in (("temperature", "temperature"), ("top_p", "top_p"), ("seed", "seed"),
                     ("frequency_penalty", "frequency_penalty"), ("presence_penalty", "presence_penalty")):
        if body.get(src) is not None:
            out[dst] = body[src]
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if limit is not None:
        out["num_predict"] = limit
    stop = body.get("stop")
    if stop is not None:
        out["stop"] = [stop] if isinstance(stop, str) else stop
    return options_from(out)


def openai_format(body: Mapping[str, Any]) -> Any:
    """``response_format`` -> Ollama's ``format``: ``json_object`` is any JSON, ``json_schema`` its schema."""
    fmt = body.get("response_format")
    if not isinstance(fmt, dict):
        return None
    if fmt.get("type") == "json_object":
        return "json"
    if fmt.get("type") == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema")
        return schema if isinstance(schema, dict) else "json"
    return None


def openai_messages(messages: Any) -> list[dict[str, Any]]:
    """OpenAI messages -> Ollama's, as Ollama's ``openai/openai.go`` maps them: content a string or a list of
    ``{"type": "text"}`` parts; ``developer`` is ``system``; an assistant's ``tool_calls`` (arguments a JSON
    string) and ``reasoning`` (or ``reasoning_content``, as other servers name it) kept; a ``tool`` message's
    ``tool_call_id`` also names its function (``tool_name``), looked up in the calls before it."""
    if not isinstance(messages, list):
        raise InvalidInputError("messages must be a list")
    out = []
    names: dict[str, str] = {}
    for m in messages:
        if not isinstance(m, dict):
            raise InvalidInputError("each message must be an object")
        content = m.get("content")
        if isinstance(content, list):
            parts = []
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text":
                    raise InvalidInputError("only text content parts are supported")
                parts.append(str(part.get("text", "")))
            content = "\n".join(parts)
        role = "system" if m.get("role") == "developer" else m.get("role")
        message: dict[str, Any] = {"role": role, "content": "" if content is None else content}
        thinking = m.get("reasoning", m.get("reasoning_content"))
        if thinking:
            message["thinking"] = thinking
        if m.get("tool_calls"):
            message["tool_calls"] = m["tool_calls"]
            for call in m["tool_calls"] if isinstance(m["tool_calls"], list) else []:
                if isinstance(call, dict) and isinstance(call.get("function"), dict) and call.get("id"):
                    names[str(call["id"])] = str(call["function"].get("name", ""))
        if role == "tool" and m.get("tool_call_id"):
            message["tool_call_id"] = str(m["tool_call_id"])
            if message["tool_call_id"] in names:
                message["tool_name"] = names[message["tool_call_id"]]
        out.append(message)
    return chat_messages(out)


def openai_think(body: Mapping[str, Any]) -> Any:
    """``reasoning_effort`` (or ``reasoning.effort``) -> Ollama's ``think``: a level, ``"none"`` is false."""
    effort = body.get("reasoning_effort")
    if effort is None and isinstance(body.get("reasoning"), dict):
        effort = body["reasoning"].get("effort")
    if effort is None:
        return None
    if effort == "none":
        return False
    if effort not in THINK_LEVELS:
        raise InvalidInputError(f"invalid reasoning_effort {json.dumps(effort)}",
                                "use one of \"high\", \"medium\", \"low\", \"none\"")
    return effort


def openai_calls(calls: list[dict[str, Any]], streamed: bool = False) -> list[dict[str, Any]]:
    """Ollama's calls (with ids) as OpenAI's: arguments as a JSON string; ``index`` in a stream's deltas."""
    out = []
    for i, c in enumerate(calls):
        call = {"id": c["id"], "type": "function",
                "function": {"name": c["function"]["name"], "arguments": json.dumps(c["function"]["arguments"])}}
        out.append({"index": i, **call} if streamed else call)
    return out


def chat_logprobs_options(body: Mapping[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """Chat's ``logprobs`` (bool) and ``top_logprobs`` (0-20; OpenAI wants ``logprobs`` true with it)."""
    top = body.get("top_logprobs")
    if top and not body.get("logprobs"):
        raise ApiError(400, "logprobs must be true when top_logprobs is set")
    return with_logprobs(options, bool(body.get("logprobs")), top)


def completion_logprobs_options(body: Mapping[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """The legacy completions' integer ``logprobs``: that many alternatives per token (OpenAI allows 0-5)."""
    top = body.get("logprobs")
    return with_logprobs(options, top is not None, top)


class LegacyLogprobs:
    """``/v1/completions``' logprobs: ``tokens``, ``token_logprobs``, ``top_logprobs`` (token -> logprob) and
    ``text_offset`` (characters from the start of the prompt, as OpenAI and llama-cpp-python count them)."""

    def __init__(self, prompt: str):
        self.offset = len(prompt)
        self.answer = b""

    def shape(self, entries: list[TokenLogprob]) -> dict[str, Any]:
        offsets = []
        for entry in entries:
            offsets.append(self.offset + len(self.answer.decode("utf-8", errors="ignore")))
            self.answer += bytes(entry.bytes)
        return {"tokens": [e.token for e in entries], "token_logprobs": [e.logprob for e in entries],
                "top_logprobs": [{t.token: t.logprob for t in e.top} for e in entries], "text_offset": offsets}


def model_json(entry: RefEntry) -> dict[str, Any]:
    """A model as OpenAI's list and retrieve show it."""
    return {"id": display_name(entry.name), "object": "model", "created": int(entry.modified), "owned_by": "library"}


def finish_reason(result: Result, calls: bool = False) -> str:
    if calls:
        return "tool_calls"
    return "length" if result.done_reason == "length" else "stop"


def base64_floats(vector: list[float]) -> str:
    """OpenAI's ``encoding_format: base64``: little-endian float32s."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


# --------------------------------------------------------------------------------------------------------
# the handlers


class OpenAIApi:
    """The ``/v1`` handlers, over the store and the model cache that ``backend`` holds."""

    def __init__(self, backend: Backend):
        self.backend = backend
        self.store = backend.store
        self.cache = backend.cache

    def routes(self) -> dict[tuple[str, str], Route]:
        return {
            ("GET", "/v1/models"): self.models,
            ("POST", "/v1/chat/completions"): self.chat,
            ("POST", "/v1/completions"): self.completions,
            ("POST", "/v1/embeddings"): self.embeddings,
        }

    def models(self, req: Request) -> None:
        data = [model_json(e) for e in self.store.refs()]
        req.send_json({"object": "list", "data": sorted(data, key=lambda m: m["id"])})

    def model(self, req: Request) -> None:
        """``GET /v1/models/{id}``: one model as the list shows it; 404 in OpenAI's shape."""
        name = unquote(req.path[len(MODELS_PREFIX):])
        try:
            entry = self.store.resolve(config.reference(name))
        except (NotFoundError, InvalidInputError) as e:
            raise ApiError(404, f"model '{name}' not found", "invalid_request_error", "model_not_found") from e
        req.send_json(model_json(entry))

    def _model(self, body: Mapping[str, Any]) -> tuple[str, ModelDetails]:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise ApiError(400, "model is required")
        return model, self.backend.details(model, config.reference(model))

    def chat(self, req: Request) -> None:
        body = req.json()
        model, details = self._model(body)
        if body.get("n", 1) not in (1, None):
            raise ApiError(400, "n must be 1")
        caps = self.backend.capabilities(details)
        plan = self.backend.tool_plan(model, details, check_tools(body.get("tools")), body.get("tool_choice"),
                                      openai_format(body), parallel=body.get("parallel_tool_calls") is True)
        tools = plan.tools
        think = openai_think(body)
        if "thinking" in caps:
            think = True if think is None else think
        elif think:
            raise ApiError(400, f"{json.dumps(model)} does not support thinking")
        if plan.forced:
            think = False  # the grammar holds from the first token: no room for thinking
        messages = openai_messages(body.get("messages"))
        single = body.get("parallel_tool_calls") is False
        options = chat_logprobs_options(body, openai_options(body))

        def start(loaded: Slot):
            generation = self.backend.chat_generation(details, loaded, messages, options, plan.format,
                                                      tools=tools, think=think)
            return generation, answer_splitter(details, loaded, generation, tools, think), single

        self._complete(req, body, model, details, "chat.completion", start)

    def completions(self, req: Request) -> None:
        body = req.json()
        model, details = self._model(body)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise ApiError(400, "prompt must be a string")
        suffix = body.get("suffix") or ""
        if not isinstance(suffix, str):
            raise ApiError(400, "suffix must be a string")
        if suffix and "insert" not in self.backend.capabilities(details):
            raise ApiError(400, f"{model} does not support insert")

        options = completion_logprobs_options(body, openai_options(body))

        def start(loaded: Slot):
            session = Session(details, options, load=loaded.load)
            if not suffix:
                return session.request(prompt=prompt, format=openai_format(body))
            text = session.insert_prompt(prompt, suffix)  # Ollama's OpenAI layer sends suffix to generate
            runner = session.runner()
            runner.reset()
            return runner.generate(text, sampling_options(session.parameters()), format=openai_format(body))

        self._complete(req, body, model, details, "text_completion", start, prompt)

    def _complete(self, req: Request, body: Mapping[str, Any], model: str, details: ModelDetails, kind: str,
                  start: Callable[[Slot], Any], prompt: str = "") -> None:
        """Run ``start``'s generation in the loaded model; answer it whole, or as a stream of chunks. For a
        chat, ``start`` also gives the splitter of thinking and tool calls (and whether one call only)."""
        chat = kind == "chat.completion"
        ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        stream = bool(body.get("stream"))
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        head = {"id": ident, "object": kind + (".chunk" if chat and stream else ""), "created": created,
                "model": model, "system_fingerprint": "fp_modelpkg"}

        legacy = LegacyLogprobs(prompt)
        # Ollama's /v1/completions (v0.24 to v0.34) puts a zero usage on every chunk when usage is asked for, and
        # the real usage on a last chunk without choices; its chat puts usage on that last chunk only
        zero_usage = ({"usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}
                      if include_usage and not chat else {})

        def with_shaped(shaped: dict | None) -> dict[str, Any]:
            # a choice has "logprobs" only when they were asked for, as Ollama's (omitempty) choices do
            return {} if shaped is None else {"logprobs": shaped}

        def choice(text: str, reason: str | None, thinking: str = "", calls: list | None = None,
                   logprobs: list[TokenLogprob] | None = None) -> dict[str, Any]:
            if chat:
                message: dict[str, Any] = {"role": "assistant", "content": text}
                if thinking:
                    message["reasoning"] = thinking  # Ollama's OpenAI layer's name for it
                if calls:
                    message["tool_calls"] = openai_calls(calls, streamed=stream)
                shaped = None if logprobs is None else {"content": [logprob_json(e) for e in logprobs],
                                                        "refusal": None}
                return {"index": 0, "delta" if stream else "message": message, **with_shaped(shaped),
                        "finish_reason": reason}
            shaped = None if logprobs is None else legacy.shape(logprobs)
            return {"index": 0, "text": text, **with_shaped(shaped), "finish_reason": reason}

        with self.cache.use(details, body.get("keep_alive")) as loaded:
            started = start(loaded)
            generation, splitter, single = started if chat else (started, None, False)
            cursor = LogprobCursor(generation.result)
            pending: list[TokenLogprob] = []  # log probabilities of pieces the splitter still holds

            def emit(piece: str) -> None:
                thinking, text = splitter.feed(piece) if splitter else ("", piece)
                wanted = generation.result.logprobs is not None
                if wanted:
                    pending.extend(cursor.take(piece))
                if thinking or text:
                    req.write_event({**head, "choices": [choice(text, None, thinking,
                                                                logprobs=list(pending) if wanted else None)],
                                     **zero_usage})
                    pending.clear()

            if stream:
                req.start_stream("text/event-stream")
            result = self.backend.drain(req, "/v1/" + ("chat/completions" if chat else "completions"), model,
                                        generation, emit if stream else None)
        thinking, text, calls = "", "" if stream else result.text, []
        if splitter is not None:
            thinking, text = ("", "") if stream else splitter.feed(result.text)
            more_thinking, more_text, calls = splitter.finish()
            thinking, text, calls = thinking + more_thinking, text + more_text, with_call_ids(calls[:1] if single
                                                                                              else calls)
        usage = {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.eval_count,
                 "total_tokens": result.prompt_tokens + result.eval_count}
        reason = finish_reason(result, bool(calls))
        if not stream:
            req.send_json({**head, "choices": [choice(text, reason, thinking, calls, result.logprobs)],
                           "usage": usage})
            return
        if thinking or text or calls or pending:
            req.write_event({**head, "choices": [choice(text, None, thinking, calls,
                                                        list(pending) if result.logprobs is not None else None)],
                             **zero_usage})
        final = {**head, "choices": [choice("", reason)], **zero_usage}
        if chat:
            final["choices"][0]["delta"] = {}
        req.write_event(final)
        if include_usage:
            req.write_event({**head, "choices": [], "usage": usage})
        req.write_raw_event("[DONE]")
        req.end_stream()

    def embeddings(self, req: Request) -> None:
        body = req.json()
        model, details = self._model(body)
        texts = body.get("input")
        texts = [texts] if isinstance(texts, str) else texts
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise ApiError(400, "input must be a string or a list of strings (token arrays are not supported)")
        vectors, count, *_ = self.backend.embed(details, texts, None, body.get("keep_alive"))
        dims = body.get("dimensions")
        if isinstance(dims, int) and dims > 0:
            vectors = [normalised(v[:dims]) for v in vectors]
        b64 = body.get("encoding_format") == "base64"
        data = [{"object": "embedding", "index": i, "embedding": base64_floats(v) if b64 else v}
                for i, v in enumerate(vectors)]
        req.send_json({"object": "list", "data": data, "model": model,
                       "usage": {"prompt_tokens": count, "total_tokens": count}})
