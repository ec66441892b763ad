"""What the Ollama and OpenAI handlers share: the store, the model cache and the log of finished generations;
looking a model up by name, draining a generation to a client, a chat turn and how it takes its tools
(``tool_plan``: a forced call's grammar), embedding texts; and every
error as the API answers it (``public_error``: no path of the server's in the text).

Built on ``http`` (its errors and ``Request``) and ``cache``; imports neither API module (they import this
one), and from below only the core, ``base.config`` (names), ``ops`` (``chat``, ``models``), the runner's
``Result`` and the store.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelpkg.base import config
from modelpkg.core.errors import InvalidInputError, ModelpkgError, NotFoundError
from modelpkg.core.reference import Reference
from modelpkg.core.tools import call_keys
from modelpkg.ops.chat import (
    GGUF_TEMPLATE,
    GO_TEMPLATE,
    AnswerSplitter,
    Session,
    conversation,
    model_capabilities,
    open_model,
    request_options,
)
from modelpkg.ops.models import ModelDetails
from modelpkg.runtime.runner import LOGPROBS, MAX_TOP_LOGPROBS, Result, TokenLogprob
from modelpkg.server.cache import ModelCache, Slot
from modelpkg.server.http import ApiError, ClientGone, Request, api_error
from modelpkg.store import Store

EVENTS_KEPT = 100
LOG = logging.getLogger("modelpkg.server")


@dataclass
class Event:
    """One finished generation (``Backend.events`` keeps the last 100: for the log and for tests)."""

    path: str
    model: str
    done_reason: str
    eval_count: int
    prompt_eval_count: int


@dataclass
class ChatCall:
    """A request of Anthropic's Messages or OpenAI's Responses API as the chat generation takes it:
    Ollama-shaped messages (``tool_calls`` on assistant messages, ``role: "tool"`` results), options, and the
    tools in OpenAI's function shape with OpenAI's ``tool_choice``."""

    messages: list[dict[str, Any]]
    options: dict[str, Any]
    tools: list[dict[str, Any]] = field(default_factory=list)
    tool_choice: Any = None  # "auto", "none", "required" or {"type": "function", "function": {"name"}}
    format: Any = None       # Ollama's: "json" or a JSON schema


@dataclass
class ToolPlan:
    """How a chat takes its tools: the tools the template sees (None: none), the ``format`` (a grammar
    forcing a call, or the request's own) and whether a call is forced."""

    tools: list[dict[str, Any]] | None
    format: Any
    forced: bool


def resolve_tool_choice(choice: Any, tools: list[dict[str, Any]] | None) -> tuple[bool, list | None]:
    """OpenAI's ``tool_choice`` -> (is a call forced, the tools the template sees): ``auto`` (or absent)
    lets the model choose, ``none`` hides the tools, ``required`` or a named function forces a call of one
    of them (those returned). Checked against ``tools``."""
    if choice is None or choice == "auto":
        return False, tools
    if choice == "none":
        return False, None
    if not tools:
        raise InvalidInputError("tool_choice needs tools")
    if choice == "required":
        return True, tools
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        chosen = [t for t in tools if t["function"]["name"] == name]
        if not chosen:
            raise InvalidInputError(f"tool_choice names {json.dumps(name)}, which is not among the tools")
        return True, chosen
    raise InvalidInputError('tool_choice must be "auto", "none", "required" or {"type": "function", '
                            '"function": {"name": ...}}')


def call_schema(tools: list[dict[str, Any]], keys: tuple[str, str], parallel: bool) -> dict[str, Any]:
    """A JSON schema that only a call of one of ``tools`` matches, in the template's call format (its
    name and arguments keys): the grammar that forces a call (a list of them when ``parallel``)."""
    name, arguments = keys
    one = [{"type": "object",
            "properties": {name: {"type": "string", "enum": [t["function"]["name"]]},
                           arguments: t["function"].get("parameters") or {"type": "object"}},
            "required": [name, arguments]} for t in tools]
    call = one[0] if len(one) == 1 else {"anyOf": one}
    return {"type": "array", "items": call, "minItems": 1} if parallel else call


def with_tool_names(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tool results named after the calls they answer (by ``tool_call_id``): Anthropic's ``tool_result`` and
    the Responses ``function_call_output`` carry only the id, a template writes ``.ToolName``. A result whose
    call is not before it is an error, as both APIs answer it."""
    names: dict[str, str] = {}
    out = []
    for m in messages:
        for call in m.get("tool_calls") or []:
            if isinstance(call, dict) and call.get("id") and isinstance(call.get("function"), dict):
                names[str(call["id"])] = str(call["function"].get("name", ""))
        if m.get("role") == "tool":
            if m.get("tool_call_id") not in names:
                raise InvalidInputError(f"no tool call with id {json.dumps(m.get('tool_call_id'))} before its result",
                                        "send the assistant's call (tool_use / function_call) before the result")
            m = {**m, "tool_name": m.get("tool_name") or names[m["tool_call_id"]]}
        out.append(m)
    return out


def answer_splitter(details: ModelDetails, loaded: Slot, generation: Any, tools: Any, think: Any) -> AnswerSplitter:
    """The splitter of a chat generation's answer (thinking, content, calls) by the template it rendered."""
    prompt = generation.prompt
    jinja = None
    if prompt.kind == GGUF_TEMPLATE:
        jinja = details.chat_template or (loaded.runner.chat_template if loaded.runner else None)
    return AnswerSplitter(details.template if prompt.kind == GO_TEMPLATE else None, jinja,
                          tools=bool(tools), think=bool(think), prompt=prompt.text)


class Backend:
    """The store and the models in memory, as both APIs use them."""

    def __init__(self, store: Store, cache: ModelCache):
        self.store = store
        self.cache = cache
        self.events: list[Event] = []  # the last generations (at most EVENTS_KEPT)
        self._events_lock = threading.Lock()
        self._capabilities: dict[Any, list[str]] = {}  # manifest digest -> capabilities

    def record(self, path: str, model: str, result: Result) -> None:
        with self._events_lock:
            self.events.append(Event(path, model, result.done_reason, result.eval_count, result.prompt_eval_count))
            del self.events[:-EVENTS_KEPT]

    # ----- errors

    def public_error(self, e: BaseException) -> ApiError:
        """``e`` as the API answers it. Library errors name files by their paths, which is right for the CLI
        but tells an API client where the store and the home folder are; here the store is ``<store>``, the
        config folder ``<config>``, the home folder ``~``, and other configured files and folders ``<path>``."""
        err = api_error(e)
        message = hide_paths(err.message, self._private_paths())
        return err if message == err.message else ApiError(err.status, message, err.kind, err.code)

    def _private_paths(self) -> list[tuple[Path | None, str]]:
        try:
            home: Path | None = Path.home()
        except (RuntimeError, KeyError):  # no HOME and no passwd entry
            home = None
        configured = (config.config_file(), config.policy_file(), config.docker_config(), config.registry_auth_file(),
                      config.xdg_runtime_dir(), config.xdg_config_home(), config.ollama_models())
        return [(self.store.root, "<store>"), (config.config_dir(), "<config>"), (home, "~"),
                *((path, "<path>") for path in configured)]

    # ----- models

    def details(self, name: str, ref: Reference) -> ModelDetails:
        try:
            return open_model(self.store, ref, pull=False)
        except NotFoundError as e:
            if self.exists(ref):
                raise  # the model is there, a blob is not: say so
            raise ApiError(404, f"model '{name}' not found", "invalid_request_error", "model_not_found") from e

    def exists(self, ref: Reference) -> bool:
        try:
            self.store.resolve(ref)
            return True
        except NotFoundError:
            return False

    # ----- generation

    def drain(self, req: Request, path: str, model: str, generation,
              emit: Callable[[str], None] | None) -> Result:
        """Drain ``generation``, handing each piece to ``emit``. A client that goes away stops it: a failed
        write when streaming, a closed connection (checked every few pieces) when not."""
        try:
            for i, piece in enumerate(generation):
                if emit is not None:
                    if piece:
                        emit(piece)
                elif i % 8 == 7 and req.client_gone():
                    raise ClientGone()
        except ClientGone:
            generation.close()
            self.record(path, model, generation.result)
            raise
        self.record(path, model, generation.result)
        return generation.result

    @staticmethod
    def chat_generation(details: ModelDetails, loaded: Slot, messages: list[dict[str, Any]],
                        options: Mapping[str, Any], fmt: Any, **values: Any):
        """Ollama's ChatHandler: the model's MESSAGEs and SYSTEM, then the request's messages; ``values``
        (``tools``, ``think``) go to the template. The session's ``last_prompt`` is the generation's
        ``prompt``."""
        session = Session(details, options, load=loaded.load)
        msgs = conversation(details.messages, messages, details.system)
        generation = session.generate(msgs, fresh=True, format=fmt, **values)
        generation.prompt = session.last_prompt
        return generation

    def tool_plan(self, model: str, details: ModelDetails, tools: list[dict[str, Any]] | None, choice: Any,
                  fmt: Any, parallel: bool = False) -> ToolPlan:
        """``tools`` and OpenAI's ``tool_choice`` for a chat: refused (Ollama's words) when the model's template
        takes no tools; a forced call (``required`` or named) is a grammar from the tools' schemas in the
        template's call format, as ``/v1/chat/completions`` forces it (``parallel``: a list of calls)."""
        tools = tools or None
        if tools and "tools" not in self.capabilities(details):
            raise ApiError(400, f"{model} does not support tools")
        forced, tools = resolve_tool_choice(choice, tools)
        if forced:
            keys = call_keys(details.template) if details.template is not None else ("name", "arguments")
            if keys is None:
                raise ApiError(400, f"the template of {model} writes no tool calls, so none can be forced")
            fmt = call_schema(tools, keys, parallel)
        return ToolPlan(tools, fmt, forced)

    def capabilities(self, details: ModelDetails) -> list[str]:
        """The model's capabilities (``model_capabilities``), its GGUF's metadata read once per manifest."""
        with self._events_lock:
            known = self._capabilities.get(details.digest)
        if known is not None:
            return list(known)
        from modelpkg.runtime import ggufmeta

        try:
            metadata = ggufmeta.read_info(details.model_path).metadata if details.model_path else {}
        except ModelpkgError:
            metadata = {}
        caps = model_capabilities(details, metadata)
        with self._events_lock:
            self._capabilities[details.digest] = caps
        return list(caps)

    # ----- embeddings

    def embed(self, details: ModelDetails, texts: list[str], options: Any, keep_alive: Any,
              truncate: bool = True) -> tuple[list[list[float]], int, float, float]:
        """Embed ``texts``: the vectors, the tokens read, the seconds spent loading and in all."""
        started = time.perf_counter()
        with self.cache.use(details, keep_alive) as loaded:
            runner = loaded.embedding_runner(Session(details, options_from(options)).parameters())
            vectors, count = runner.embed(texts, truncate=truncate) if texts else ([], 0)
            load = loaded.load_duration
        return vectors, count, load, time.perf_counter() - started


def hide_paths(text: str, paths: list[tuple[Path | None, str]]) -> str:
    """``text`` with each of ``paths`` (as given and resolved; the longest first, so the store inside the home
    folder is ``<store>``) replaced by its label where it stands as a whole path or a path's start."""
    spelled: dict[str, str] = {}
    for path, label in paths:
        if path is None:
            continue
        for form in (str(path), _resolved(path)):
            if os.path.isabs(form) and form != "/" and form not in spelled:  # "home" alone is a word
                spelled[form] = label
    for form in sorted(spelled, key=len, reverse=True):
        text = re.sub(rf"(?<![\w.~-]){re.escape(form)}(?![^/\s'\"`),;:\]])", spelled[form], text)
    return text


def _resolved(path: Path) -> str:
    try:
        return str(path.resolve())
    except (OSError, RuntimeError):
        return ""


def options_from(options: Any) -> dict[str, Any]:
    """A request's ``options`` as Ollama reads them (``request_options``); ignored names are logged, as
    Ollama's ``slog.Warn("invalid option provided")``."""
    typed, ignored = request_options(options)
    for name in ignored:
        LOG.warning("invalid option provided: %s (ignored)", name)
    return typed


def with_logprobs(options: Mapping[str, Any], wanted: bool, top: Any) -> dict[str, Any]:
    """``options`` asking the runner for token log probabilities when ``wanted``, with ``top`` alternatives
    per token (0-20, as Ollama and OpenAI allow)."""
    if top is not None and (isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= MAX_TOP_LOGPROBS):
        raise ApiError(400, f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}")  # Ollama's words
    if not wanted:
        return dict(options)
    return {**options, LOGPROBS: top or 0}


class LogprobCursor:
    """Hands out a generation's token log probabilities with the streamed pieces they belong to: a token goes
    out with the piece that carries its first byte (a piece held back for a stop string waits with them)."""

    def __init__(self, result: Result):
        self.result = result
        self.sent = 0       # entries handed out
        self.start = 0      # bytes of the answer before the next entry's token
        self.emitted = 0    # bytes of the answer sent so far

    def take(self, piece: str) -> list[TokenLogprob]:
        self.emitted += len(piece.encode())
        entries = self.result.logprobs or []
        out = []
        while self.sent < len(entries) and self.start < self.emitted:
            out.append(entries[self.sent])
            self.start += len(entries[self.sent].bytes)
            self.sent += 1
        return out


def logprob_json(entry: TokenLogprob) -> dict[str, Any]:
    """A token's log probability as Ollama's ``Logprob`` and OpenAI's chat logprobs both shape it."""
    out = {"token": entry.token, "logprob": entry.logprob, "bytes": list(entry.bytes)}
    out["top_logprobs"] = [{"token": t.token, "logprob": t.logprob, "bytes": list(t.bytes)} for t in entry.top]
    return out


def display_name(name: str) -> str:
    """``registry.ollama.ai/library/gemma3:latest`` -> ``gemma3:latest`` (Ollama's DisplayShortest)."""
    try:
        return config.reference(name).short(config.default_registry())
    except ModelpkgError:
        return name


def normalised(vector: list[float]) -> list[float]:
    """``vector`` scaled to length 1 (a truncated embedding, as Ollama's ``dimensions`` gives it)."""
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [x / norm for x in vector]
