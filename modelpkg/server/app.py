"""``modelpkg serve``: Ollama's HTTP API and OpenAI's ``/v1`` API over the store, for the tools people use.

What Ollama's server does (``server/routes.go``, ``openai/openai.go``; reference/ollama-behaviour.md §5),
on the standard library's ``ThreadingHTTPServer`` (one thread per connection):

- **Models** come from the store (``models.list_models``/``describe``/``copy``/``remove``, ``create``,
  ``pull``, ``push``); progress is streamed as Ollama's NDJSON status lines.
- **Generation** goes through ``chat.Session`` (prompt path, conversation, option precedence, truncation)
  and the runner's loop (stop strings, token counts, timings): the same answers ``modelpkg run`` gives.
- **Loaded models** (``ModelCache``) stay in memory for ``keep_alive`` (default 5 minutes; Go durations
  or seconds; 0 unloads after the request; negative keeps it forever); a reaper thread unloads expired
  ones. One lock per loaded model queues its requests, so two generations never share a context.
- **Reproducible answers.** Each request starts from a clean KV cache (as ``run --batch`` does), so a
  request gives the same answer streamed or not, alone or in a queue. Ollama reuses a cached prompt
  prefix instead: faster on long chats, but llama.cpp's numbers then differ slightly and a greedy answer
  can depend on the request before it.
- **Streams** are chunked: NDJSON for Ollama, server-sent events (``data: ...``, ``data: [DONE]``) for
  OpenAI. A client that goes away (a write fails) stops its generation at the next token.
- **Errors** are Ollama's ``{"error": "..."}`` with its status codes (unknown model: 404; bad JSON: 400),
  and OpenAI's ``{"error": {"message", "type", "param", "code"}}`` under ``/v1``.

Orchestration: imports the core, the store, ``models``, ``chat``, ``create``/``pull``/``push`` (when
called) and the runner adapter; never the CLI.
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import json
import math
import queue
import re
import select
import socket
import struct
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from modelpkg import __version__

from modelpkg.base import config
from modelpkg.core import modelfile as mf
from modelpkg.ops.chat import Session, check_messages, conversation, open_model, typed_options
from modelpkg.core.digest import Digest
from modelpkg.core.errors import (
    AuthError,
    InvalidInputError,
    ModelpkgError,
    NotFoundError,
    RegistryError,
    UsageError,
)
from modelpkg.ops.models import ModelDetails, describe, modelfile_for
from modelpkg.core.progress import Progress
from modelpkg.core.reference import Reference
from modelpkg.runtime.runner import LoadOptions, Result, Runner, load_options, sampling_options
from modelpkg.store import Store

DEFAULT_KEEP_ALIVE = 300.0   # seconds: Ollama's OLLAMA_KEEP_ALIVE default, 5m
MAX_LOADED = 3               # models in memory at once (Ollama's OLLAMA_MAX_LOADED_MODELS on a CPU)
MAX_BODY = 64 * 1024 * 1024  # a request body larger than this is refused (blobs are streamed instead)
# Browser origins allowed to call the API (Ollama's defaults): the machine itself, and the schemes of
# desktop and editor apps. Any other page a browser has open is refused, so a web site cannot make the
# browser pull, create or delete models here. More with --origins / MODELPKG_ORIGINS ("*": any).
DEFAULT_ORIGINS = tuple(f"{scheme}://{host}{port}" for scheme in ("http", "https")
                        for host in ("localhost", "127.0.0.1", "0.0.0.0", "[::1]") for port in ("", ":*")) + (
    "app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*")
CORS_MAX_AGE = 43200
FOREVER = None               # keep_alive < 0

# --------------------------------------------------------------------------------------------------------
# pure helpers

_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_GO_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_go_duration(text: str) -> float:
    """Go's ``time.ParseDuration`` (``"1h30m"``, ``"-5m"``, ``"300ms"``, ``"0"``) -> seconds."""
    s = text.strip()
    sign = -1.0 if s.startswith("-") else 1.0
    s = s.lstrip("+-")
    if s == "0":
        return 0.0
    pos, total = 0, 0.0
    while pos < len(s):
        m = _GO_PART.match(s, pos)
        if not m:
            raise InvalidInputError(f"invalid duration {text!r}", 'use seconds (300) or a Go duration ("5m", "1h")')
        total += float(m.group(1)) * _GO_UNITS[m.group(2)]
        pos = m.end()
    if not s:
        raise InvalidInputError(f"invalid duration {text!r}", 'use seconds (300) or a Go duration ("5m", "1h")')
    return sign * total


def parse_keep_alive(value: Any, default: float | None = DEFAULT_KEEP_ALIVE) -> float | None:
    """Ollama's ``keep_alive``: a number of seconds or a Go duration string; negative keeps the model
    loaded forever (None); 0 unloads it after the request; absent gives ``default``."""
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise InvalidInputError("keep_alive must be a number of seconds or a duration string")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        try:
            seconds = float(value)
        except ValueError:
            seconds = parse_go_duration(value)
    else:
        raise InvalidInputError("keep_alive must be a number of seconds or a duration string")
    return FOREVER if seconds < 0 else seconds


def display_name(name: str) -> str:
    """``registry.ollama.ai/library/gemma3:latest`` -> ``gemma3:latest`` (Ollama's DisplayShortest)."""
    try:
        return config.reference(name).short(config.default_registry())
    except ModelpkgError:
        return name


def iso_time(when: float | None = None) -> str:
    """RFC 3339 in UTC with a ``Z``, as Go marshals ``time.Time``."""
    moment = datetime.now(timezone.utc) if when is None else datetime.fromtimestamp(when, timezone.utc)
    return moment.isoformat().replace("+00:00", "Z")


def parameters_text(parameters: Mapping[str, Any]) -> str:
    """``/api/show``'s ``parameters``: one ``name value`` line per value, as Ollama prints them."""
    lines = []
    for name in sorted(parameters):
        value = parameters[name]
        for item in value if isinstance(value, list) else [value]:
            shown = json.dumps(item) if isinstance(item, str) else mf.format_parameter_value(item)
            lines.append(f"{name:<30} {shown}")
    return "\n".join(lines)


def modelfile_from_fields(body: Mapping[str, Any], blob_path: Callable[[Digest], Path]) -> str:
    """An ``/api/create`` request's JSON fields (``from``, ``files``, ``adapters``, ``template``, ``system``,
    ``parameters``, ``messages``, ``license``) as Modelfile text, for ``create``."""
    items: list[mf.Instruction] = []
    files, adapters = body.get("files") or {}, body.get("adapters") or {}
    if not isinstance(files, dict) or not isinstance(adapters, dict):
        raise InvalidInputError("files and adapters must map file names to sha256 digests")
    if body.get("from"):
        if not isinstance(body["from"], str):
            raise InvalidInputError("from must be a model name")
        items.append(mf.Instruction("from", body["from"]))
    elif files:
        ggufs = [d for name, d in files.items() if str(name).lower().endswith(".gguf")] or list(files.values())
        if len(ggufs) != 1:
            raise InvalidInputError("give one GGUF file in files", "safetensors folders are not supported")
        items.append(mf.Instruction("from", str(blob_path(Digest.parse(ggufs[0])))))
    else:
        raise InvalidInputError("neither 'from' nor 'files' was specified")
    items += [mf.Instruction("adapter", str(blob_path(Digest.parse(d)))) for d in adapters.values()]
    for key in ("template", "system"):
        if body.get(key) is not None:
            if not isinstance(body[key], str):
                raise InvalidInputError(f"{key} must be a string")
            items.append(mf.Instruction(key, body[key]))
    parameters = body.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidInputError("parameters must be an object of parameter names to values")
    for name, value in typed_options(parameters).items():
        for item in value if isinstance(value, list) else [value]:
            items.append(mf.Instruction("parameter", mf.format_parameter_value(item), name))
    licenses = body.get("license") or []
    for text in [licenses] if isinstance(licenses, str) else licenses:
        items.append(mf.Instruction("license", str(text)))
    for m in body.get("messages") or []:
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise InvalidInputError("messages must be {\"role\", \"content\"} objects")
        items.append(mf.Instruction("message", m["content"], str(m.get("role", ""))))
    return mf.format(mf.Modelfile(tuple(items)))


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
    return typed_options(out)


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
    """OpenAI messages (content a string or a list of ``{"type": "text"}`` parts) -> Ollama's."""
    if not isinstance(messages, list):
        raise InvalidInputError("messages must be a list")
    out = []
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
        out.append({"role": role, "content": "" if content is None else content})
    return check_messages(out)


def finish_reason(result: Result) -> str:
    return "length" if result.done_reason == "length" else "stop"


def base64_floats(vector: list[float]) -> str:
    """OpenAI's ``encoding_format: base64``: little-endian float32s."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


# --------------------------------------------------------------------------------------------------------
# errors as HTTP answers


class ApiError(Exception):
    """An answer other than 200: Ollama's status code and message."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.code = status, message, kind, code


class ClientGone(Exception):
    """The client closed the connection while an answer was streaming."""


def api_error(e: Exception) -> ApiError:
    if isinstance(e, ApiError):
        return e
    if isinstance(e, NotFoundError):
        return ApiError(404, e.message, "invalid_request_error", "model_not_found")
    if isinstance(e, (InvalidInputError, UsageError)):
        return ApiError(400, e.message)
    if isinstance(e, AuthError):
        return ApiError(401, e.message, "authentication_error")
    if isinstance(e, RegistryError):
        return ApiError(e.status if e.status in (401, 403, 404) else 500, e.message, "api_error")
    if isinstance(e, ModelpkgError):
        return ApiError(500, e.message + (f" ({e.hint})" if e.hint else ""), "api_error")
    return ApiError(500, f"{type(e).__name__}: {e}", "api_error")


# --------------------------------------------------------------------------------------------------------
# loaded models


@dataclass(eq=False)
class Loaded:
    """One model in memory: its generation runner, its embedding runner, the lock that queues requests."""

    name: str
    details: ModelDetails
    lock: threading.Lock = field(default_factory=threading.Lock)
    runner: Runner | None = None
    embedder: Runner | None = None
    expires: float | None = 0.0  # monotonic deadline; None = never
    users: int = 0
    last_used: float = 0.0
    n_ctx: int = 0               # the loaded context (read by /api/ps without touching a runner)
    load_duration: float = 0.0   # seconds spent loading during the current request

    def load(self, wanted: LoadOptions) -> Runner:
        """``Session``'s loader: the loaded runner, reloaded when the load-time options changed."""
        if self.runner is not None and self.runner.options != wanted:
            self.runner.close()
            self.runner = None
        if self.runner is None:
            self.runner = Runner.load(wanted)
            self.n_ctx = self.runner.n_ctx
            self.load_duration += self.runner.load_duration
        return self.runner

    def embedding_runner(self, params: Mapping[str, Any]) -> Runner:
        wanted = load_options(params, self.details.model_path, self.details.adapter_paths, self.details.context_length)
        if self.embedder is not None and self.embedder.options != wanted:
            self.embedder.close()
            self.embedder = None
        if self.embedder is None:
            self.embedder = Runner.load(wanted, embedding=True)
            self.n_ctx = self.n_ctx or self.embedder.n_ctx
            self.load_duration += self.embedder.load_duration
        return self.embedder

    @property
    def in_memory(self) -> bool:
        return self.runner is not None or self.embedder is not None

    def close(self) -> None:
        runners = (self.runner, self.embedder)
        self.runner = self.embedder = None  # first, so a concurrent /api/ps no longer lists it
        self.n_ctx = 0
        for runner in runners:
            if runner is not None:
                runner.close()


class ModelCache:
    """The models in memory, by manifest digest: two names of one model (``cp``, e.g. an alias for an
    OpenAI client) share one load, as Ollama's scheduler shares one runner per model file. ``use`` queues
    a request on its model's lock; after it the model stays for its keep_alive, and the reaper unloads it
    when that has passed and nobody uses it. At most ``max_loaded`` models stay in memory: loading one
    more first unloads the least recently used idle one (Ollama's scheduler does the same when its limit
    is reached)."""

    def __init__(self, default_keep_alive: float | None = DEFAULT_KEEP_ALIVE, clock=time.monotonic,
                 max_loaded: int = MAX_LOADED):
        self.default_keep_alive = default_keep_alive
        self.max_loaded = max_loaded
        self._clock = clock
        self._entries: dict[str, Loaded] = {}
        self._retired: list[Loaded] = []  # replaced by a newer model of their name; closed when free
        self._guard = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._reaper = threading.Thread(target=self._reap_loop, name="modelpkg-reaper", daemon=True)
        self._reaper.start()

    @contextlib.contextmanager
    def use(self, details: ModelDetails, keep_alive: Any) -> Iterator[Loaded]:
        seconds = parse_keep_alive(keep_alive, self.default_keep_alive)
        key = str(details.digest)
        with self._guard:
            for other_key, other in list(self._entries.items()):
                if other.name == details.name and other_key != key:
                    # the name now points at another model: the old one goes when free
                    other.expires = 0.0
                    self._retired.append(other)
                    del self._entries[other_key]
            entry = self._entries.get(key)
            if entry is None:
                entry = Loaded(details.name, details)
                self._entries[key] = entry
            entry.name = details.name  # /api/ps shows the name it was last asked for
            entry.users += 1
        try:
            with entry.lock:
                entry.load_duration = 0.0
                if not entry.in_memory:
                    self._make_room(entry)
                try:
                    yield entry
                finally:
                    entry.last_used = self._clock()
                    entry.expires = None if seconds is FOREVER else self._clock() + seconds
                    if seconds == 0:
                        entry.close()
        finally:
            with self._guard:
                entry.users -= 1
                if not entry.in_memory and entry.users == 0 and self._entries.get(key) is entry:
                    del self._entries[key]
            self._wake.set()

    def _make_room(self, newcomer: Loaded) -> None:
        """Unload idle models, least recently used first, until ``newcomer`` fits under ``max_loaded``."""
        with self._guard:
            others = [e for e in self._entries.values() if e is not newcomer and e.in_memory]
        for entry in sorted(others, key=lambda e: e.last_used):
            if len(others) < self.max_loaded:
                return
            if entry.users == 0 and entry.lock.acquire(blocking=False):
                try:
                    entry.close()
                    others.remove(entry)
                finally:
                    entry.lock.release()

    def loaded(self) -> list[tuple[Loaded, float | None]]:
        """The models in memory and their expiry as a wall-clock time (None: never)."""
        now_mono, now = self._clock(), time.time()
        with self._guard:
            entries = [e for e in self._entries.values() if e.in_memory]
        return [(e, None if e.expires is None else now + (e.expires - now_mono)) for e in entries]

    def unload(self, name: str, digest: Digest | None = None) -> None:
        """Drop the model last asked for as ``name`` (deleted or replaced), or the model ``digest`` (keep_alive
        0, whatever name loaded it), once its current requests end."""
        with self._guard:
            found = [(k, e) for k, e in self._entries.items()
                     if e.name == name or digest is not None and k == str(digest)]
        for key, entry in found:
            with entry.lock:
                entry.close()
            with self._guard:
                if entry.users == 0 and self._entries.get(key) is entry:
                    del self._entries[key]

    def reap(self) -> None:
        """Unload every model whose keep_alive has passed (and that no request is using)."""
        now = self._clock()
        with self._guard:
            expired = [e for e in self._entries.values() if e.expires is not None and e.expires <= now and e.users == 0]
            retired = [e for e in self._retired if e.users == 0]
        for entry in retired:
            if entry.lock.acquire(blocking=False):
                try:
                    entry.close()
                    with self._guard:
                        self._retired.remove(entry)
                finally:
                    entry.lock.release()
        for entry in expired:
            if entry.lock.acquire(blocking=False):
                try:
                    if entry.users == 0 and entry.expires is not None and entry.expires <= self._clock():
                        entry.close()
                        with self._guard:
                            key = str(entry.details.digest)
                            if entry.users == 0 and self._entries.get(key) is entry:
                                del self._entries[key]
                finally:
                    entry.lock.release()

    def _reap_loop(self) -> None:
        while not self._closed:
            self.reap()
            with self._guard:
                deadlines = [e.expires for e in self._entries.values() if e.expires is not None]
                if self._retired:
                    deadlines.append(self._clock() + 1.0)
            wait = min(deadlines) - self._clock() if deadlines else 60.0
            self._wake.wait(timeout=min(max(wait, 0.05), 60.0))
            self._wake.clear()

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        with self._guard:
            entries = list(self._entries.values()) + self._retired
            self._entries.clear()
            self._retired.clear()
        for entry in entries:
            with entry.lock:
                entry.close()


# --------------------------------------------------------------------------------------------------------
# progress of pull, push and create as Ollama's status lines


class StatusLines(Progress):
    """Turns progress events into Ollama's ``{"status", "digest", "total", "completed"}`` objects on a
    queue (the work runs in another thread; the handler streams the queue)."""

    def __init__(self, out: queue.Queue):
        self.out = out
        self._tasks: dict[str, list] = {}  # task -> [label, total, completed, last sent]
        self._lock = threading.Lock()

    def start(self, task: str, total: int | None, label: str = "") -> None:
        with self._lock:
            self._tasks[task] = [label or task, total, 0, 0.0]
        self._send(task, force=True)

    def advance(self, task: str, amount: int) -> None:
        with self._lock:
            if task not in self._tasks:
                self._tasks[task] = [task, None, 0, 0.0]
            self._tasks[task][2] += amount
        self._send(task)

    def finish(self, task: str, status: str = "done") -> None:
        with self._lock:
            state = self._tasks.get(task)
            if state and state[1] is not None:
                state[2] = state[1]
        self._send(task, force=True)

    def message(self, text: str) -> None:
        self.out.put({"status": text})

    def _send(self, task: str, force: bool = False) -> None:
        with self._lock:
            label, total, completed, last = self._tasks[task]
            now = time.monotonic()
            if not force and now - last < 0.1:
                return
            self._tasks[task][3] = now
        line = {"status": label, "digest": task}
        if total is not None:
            line.update(total=total, completed=completed)
        self.out.put(line)


# --------------------------------------------------------------------------------------------------------
# the application


@dataclass
class Event:
    """One finished generation (``App.events`` keeps the last 100: for the log and for tests)."""

    path: str
    model: str
    done_reason: str
    eval_count: int
    prompt_eval_count: int


class App:
    """The API: routes requests to handlers that use the store and the model cache."""

    def __init__(self, store: Store, *, token: str | None = None, keep_alive: float | None = DEFAULT_KEEP_ALIVE,
                 max_loaded: int = MAX_LOADED, log: Callable[[str], None] | None = None,
                 origins: tuple[str, ...] = (), loopback_only: bool = False):
        self.store = store
        self.token = token or None
        self.origins = DEFAULT_ORIGINS + tuple(origins)
        self.loopback_only = loopback_only  # bound to a loopback address: check Host (DNS rebinding)
        self.cache = ModelCache(keep_alive, max_loaded=max_loaded)
        self.log = log or (lambda line: None)
        self.events: list[Event] = []  # the last generations (at most 100)
        self._events_lock = threading.Lock()
        self.routes: dict[tuple[str, str], Callable[[Request], None]] = {
            ("GET", "/"): self.root, ("HEAD", "/"): self.root,
            ("GET", "/api/version"): self.version, ("HEAD", "/api/version"): self.version,
            ("GET", "/api/tags"): self.tags, ("HEAD", "/api/tags"): self.tags,
            ("GET", "/api/ps"): self.ps,
            ("POST", "/api/show"): self.show,
            ("POST", "/api/copy"): self.copy,
            ("DELETE", "/api/delete"): self.delete,
            ("POST", "/api/pull"): self.pull,
            ("POST", "/api/push"): self.push,
            ("POST", "/api/create"): self.create,
            ("POST", "/api/generate"): self.generate,
            ("POST", "/api/chat"): self.chat,
            ("POST", "/api/embed"): self.embed,
            ("POST", "/api/embeddings"): self.embeddings,
            ("GET", "/v1/models"): self.v1_models,
            ("POST", "/v1/chat/completions"): self.v1_chat,
            ("POST", "/v1/completions"): self.v1_completions,
            ("POST", "/v1/embeddings"): self.v1_embeddings,
        }

    def close(self) -> None:
        self.cache.close()

    # ----- dispatch

    def handle(self, req: Request) -> None:
        started = time.perf_counter()
        status = 200
        try:
            self._check_browser(req)
            if req.method == "OPTIONS":
                req.send_empty(204)  # a CORS preflight (an allowed origin's headers are added) or a probe
                self.log(f"{req.method} {req.path} 204 {time.perf_counter() - started:.3f}s")
                return
            if self.token and not self._authorised(req):
                raise ApiError(401, "unauthorized: a valid 'Authorization: Bearer <token>' header is required",
                               "authentication_error", "invalid_api_key")
            route = self.routes.get((req.method, req.path))
            if route is None and req.path.startswith("/api/blobs/") and req.method in ("HEAD", "POST"):
                route = self.blob
            if route is None:
                known = any(path == req.path for _, path in self.routes)
                raise ApiError(405 if known else 404, "method not allowed" if known else "404 page not found")
            route(req)
            status = req.status
        except ClientGone:
            status = 499
        except Exception as e:  # noqa: BLE001 - every failure becomes an HTTP answer, never a traceback
            err = api_error(e)
            status = err.status
            if not isinstance(e, (ApiError, ModelpkgError)) and config.debug():
                import traceback

                traceback.print_exception(e)
            req.send_error_answer(err)
        self.log(f"{req.method} {req.path} {status} {time.perf_counter() - started:.3f}s")

    def _check_browser(self, req: Request) -> None:
        """Refuse what a browser would send on behalf of a web page we do not trust: an ``Origin`` outside
        the allowed list, and, on a loopback server, a ``Host`` that is not this machine (DNS rebinding:
        a page whose own name resolves to 127.0.0.1). Allowed origins get CORS headers."""
        if self.loopback_only and not local_host_header(req.headers.get("Host", "")):
            raise ApiError(403, "forbidden: the Host header does not name this machine")
        origin = req.headers.get("Origin")
        if origin is None:
            return
        if not origin_allowed(origin, self.origins):
            raise ApiError(403, f"forbidden: origin {origin[:100]!r} is not allowed "
                                "(allow it with: modelpkg serve --origins ORIGIN, or MODELPKG_ORIGINS)")
        req.extra_headers += [("Access-Control-Allow-Origin", origin), ("Vary", "Origin")]
        if req.method == "OPTIONS":
            asked = req.headers.get("Access-Control-Request-Headers", "")
            req.extra_headers += [
                ("Access-Control-Allow-Methods", "GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS"),
                ("Access-Control-Allow-Headers", asked[:1000] or "Authorization, Content-Type"),
                ("Access-Control-Max-Age", str(CORS_MAX_AGE))]

    def _authorised(self, req: Request) -> bool:
        if (req.method, req.path) in (("HEAD", "/"), ("GET", "/api/version")):
            return True
        header = req.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.token.encode())

    def record(self, path: str, model: str, result: Result) -> None:
        with self._events_lock:
            self.events.append(Event(path, model, result.done_reason, result.eval_count, result.prompt_eval_count))
            del self.events[:-100]

    # ----- models

    def reference(self, body: Mapping[str, Any], key: str = "model") -> tuple[str, Reference]:
        name = body.get(key) or body.get("name")
        if not isinstance(name, str) or not name:
            raise ApiError(400, "model is required")
        return name, config.reference(name)

    def details(self, name: str, ref: Reference) -> ModelDetails:
        try:
            return open_model(self.store, ref, pull=False)
        except NotFoundError as e:
            if self._exists(ref):
                raise  # the model is there, a blob is not: say so
            raise ApiError(404, f"model '{name}' not found", "invalid_request_error", "model_not_found") from e

    def _exists(self, ref: Reference) -> bool:
        try:
            self.store.resolve(ref)
            return True
        except NotFoundError:
            return False

    def _model_details_json(self, details: ModelDetails) -> dict[str, Any]:
        family = details.architecture or ""
        return {"parent_model": "", "format": "gguf", "family": family, "families": [family] if family else None,
                "parameter_size": details.parameters_size, "quantization_level": details.quantization}

    def root(self, req: Request) -> None:
        req.send_text("Ollama is running")

    def version(self, req: Request) -> None:
        req.send_json({"version": __version__})

    def tags(self, req: Request) -> None:
        models = []
        for entry in self.store.refs():
            try:
                details = describe(self.store, config.reference(entry.name))
                size, info = details.size, self._model_details_json(details)
            except ModelpkgError:
                size, info = entry.size, {}
            short = display_name(entry.name)
            models.append({"name": short, "model": short, "modified_at": iso_time(entry.modified),
                           "size": size, "digest": entry.digest.hex, "details": info})
        req.send_json({"models": sorted(models, key=lambda m: m["name"])})

    def ps(self, req: Request) -> None:
        models = []
        for entry, expires in self.cache.loaded():
            details, short = entry.details, display_name(entry.name)
            models.append({"name": short, "model": short, "size": details.size, "digest": details.digest.hex,
                           "details": self._model_details_json(details),
                           "expires_at": iso_time(expires) if expires is not None else "2318-11-25T00:00:00Z",
                           "size_vram": 0, "context_length": entry.n_ctx})
        req.send_json({"models": models})

    def show(self, req: Request) -> None:
        body = req.json()
        name, ref = self.reference(body)
        try:
            details = describe(self.store, ref)
        except NotFoundError as e:
            raise ApiError(404, f"model '{name}' not found") from e
        entry = self.store.resolve(ref)
        arch = details.architecture or "general"
        info: dict[str, Any] = {"general.architecture": details.architecture,
                                "general.parameter_count": None, "general.quantization": details.quantization}
        if details.context_length:
            info[f"{arch}.context_length"] = details.context_length
        answer = {"modelfile": modelfile_for(details, display_name(details.name)),
                  "parameters": parameters_text(details.parameters),
                  "template": details.template if details.template is not None else "{{ .Prompt }}",
                  "details": self._model_details_json(details), "model_info": info,
                  "capabilities": ["completion"], "modified_at": iso_time(entry.modified)}
        if details.system is not None:
            answer["system"] = details.system
        if details.licenses:
            answer["license"] = "\n\n".join(details.licenses)
        if details.messages:
            answer["messages"] = list(details.messages)
        req.send_json(answer)

    def copy(self, req: Request) -> None:
        from modelpkg.ops.models import copy

        body = req.json()
        src, dst = body.get("source"), body.get("destination")
        if not isinstance(src, str) or not src or not isinstance(dst, str) or not dst:
            raise ApiError(400, "source and destination are required")
        source = config.reference(src)
        if not self._exists(source):
            raise ApiError(404, f"model '{src}' not found")
        copy(self.store, source, config.reference(dst))
        req.send_empty()

    def delete(self, req: Request) -> None:
        from modelpkg.ops.models import remove

        body = req.json()
        name, ref = self.reference(body)
        if not self._exists(ref):
            raise ApiError(404, f"model '{name}' not found")
        full = self.store.resolve(ref).name
        self.cache.unload(full)
        remove(self.store, [ref])
        req.send_empty()

    # ----- pull, push, create: progress lines from a worker thread

    def _progress_job(self, req: Request, body: Mapping[str, Any], work: Callable[[Progress], None]) -> None:
        lines: queue.Queue = queue.Queue()
        progress = StatusLines(lines)
        done = object()
        failure: list[BaseException] = []

        def run() -> None:
            try:
                work(progress)
            except BaseException as e:  # noqa: BLE001 - handed to the request thread
                failure.append(e)
            finally:
                lines.put(done)

        worker = threading.Thread(target=run, name="modelpkg-job", daemon=True)
        worker.start()
        if body.get("stream") is False:
            worker.join()
            if failure:
                raise failure[0]
            req.send_json({"status": "success"})
            return
        req.start_stream("application/x-ndjson")
        while True:
            item = lines.get()
            if item is done:
                break
            req.write_json_line(item)  # a client that goes away leaves the work running, as Ollama's does
        if failure:
            req.write_json_line({"error": api_error(failure[0]).message})
        req.end_stream()

    def pull(self, req: Request) -> None:
        from modelpkg.ops.pull import pull

        body = req.json()
        _, ref = self.reference(body)
        insecure = bool(body.get("insecure"))
        self._progress_job(req, body, lambda p: pull(self.store, ref, progress=p, insecure=insecure))

    def push(self, req: Request) -> None:
        from modelpkg.ops.push import push

        body = req.json()
        name, ref = self.reference(body)
        if not self._exists(ref):
            raise ApiError(404, f"model '{name}' not found")
        insecure = bool(body.get("insecure"))

        def work(progress: Progress) -> None:
            progress.message("retrieving manifest")
            push(self.store, ref, progress=progress, insecure=insecure)

        self._progress_job(req, body, work)

    def create(self, req: Request) -> None:
        from modelpkg.ops.create import create

        body = req.json()
        _, ref = self.reference(body)
        if body.get("quantize"):
            raise ApiError(400, "quantize is not supported", "invalid_request_error")
        text = body.get("modelfile")
        if text is not None and not isinstance(text, str):
            raise ApiError(400, "modelfile must be a string")
        if text is None:
            text = modelfile_from_fields(body, self.store.blob_path)
        else:
            mf.parse(text)  # a Modelfile that does not parse is a 400 before anything streams
        self.store.init()
        base = self.store.root

        def work(progress: Progress) -> None:
            progress.message("parsing modelfile")
            create(self.store, ref, text, base, link=True, progress=progress, resolve_name=config.reference)
            self.cache.unload(str(ref))
            progress.message("success")

        self._progress_job(req, body, work)

    def blob(self, req: Request) -> None:
        """``HEAD``/``POST /api/blobs/sha256:<hex>``: does the store have it; upload it (checked)."""
        try:
            digest = Digest.parse(req.path.rsplit("/", 1)[1])
        except InvalidInputError as e:
            raise ApiError(400, e.message) from e
        if req.method == "HEAD":
            if not self.store.has_blob(digest):
                raise ApiError(404, "blob not found")
            req.send_empty()
            return
        from modelpkg.base import fsutil

        with self.store.session() as pins:
            tmp = self.store.temp_path("upload")
            try:
                actual, _ = fsutil.copy_and_hash(req.body_stream(), tmp)
                if actual != digest:
                    raise ApiError(400, f"digest mismatch, expected {str(digest)!r}, got {str(actual)!r}")
                self.store.commit_temp(tmp, digest, pins)
            finally:
                tmp.unlink(missing_ok=True)
        req.send_empty(201)

    # ----- generation

    def _generation(self, req: Request, path: str, model: str, generation,
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

    def _stats(self, result: Result, load_duration: float) -> dict[str, Any]:
        ns = 1_000_000_000
        return {"done_reason": result.done_reason, "total_duration": int((result.total_duration + load_duration) * ns),
                "load_duration": int(load_duration * ns), "prompt_eval_count": result.prompt_eval_count,
                "prompt_eval_duration": int(result.prompt_eval_duration * ns), "eval_count": result.eval_count,
                "eval_duration": int(result.eval_duration * ns)}

    @staticmethod
    def _unsupported(body: Mapping[str, Any], model: str) -> None:
        if body.get("images") or any(isinstance(m, dict) and m.get("images") for m in body.get("messages") or []):
            raise ApiError(400, f"{model} does not support images")
        if body.get("tools"):
            raise ApiError(400, f"{model} does not support tools")
        if body.get("think"):
            raise ApiError(400, f"\"{model}\" does not support thinking")
        if body.get("suffix"):
            raise ApiError(400, f"{model} does not support insert")

    def _load_only(self, req: Request, details: ModelDetails, model: str, keep_alive: Any, chat: bool) -> None:
        """An empty prompt loads the model (or, with keep_alive 0, unloads it), as ``ollama run``/``stop``."""
        seconds = parse_keep_alive(keep_alive, self.cache.default_keep_alive)
        if seconds == 0:
            self.cache.unload(details.name, details.digest)
            reason = "unload"
        else:
            with self.cache.use(details, keep_alive) as loaded:
                loaded.load(load_options(Session(details).parameters(), details.model_path,
                                         details.adapter_paths, details.context_length))
            reason = "load"
        answer = {"model": model, "created_at": iso_time(), "done": True, "done_reason": reason}
        if chat:
            answer["message"] = {"role": "assistant", "content": ""}
        else:
            answer["response"] = ""
        req.send_json(answer)

    def generate(self, req: Request) -> None:
        body = req.json()
        model, ref = self.reference(body)
        details = self.details(model, ref)
        self._unsupported(body, model)
        prompt, context = body.get("prompt") or "", body.get("context") or []
        if not isinstance(prompt, str) or not isinstance(context, list):
            raise ApiError(400, "prompt must be a string and context a list of tokens")
        if not prompt and not context:
            self._load_only(req, details, model, body.get("keep_alive"), chat=False)
            return
        if body.get("template"):
            details = replace(details, template=str(body["template"]))
        options = typed_options(body.get("options"))
        system = body.get("system")
        if system is not None and not isinstance(system, str):
            raise ApiError(400, "system must be a string")
        stream = body.get("stream", True) is not False
        with self.cache.use(details, body.get("keep_alive")) as loaded:
            session = Session(details, options, load=loaded.load)
            fmt = body.get("format")
            if body.get("raw") or context:
                runner = session.runner()
                sampling = sampling_options(session.parameters())
                if body.get("raw"):
                    text, bos = prompt, True
                else:  # Ollama: the earlier context's text, then this prompt rendered without the MESSAGEs
                    turns = [{"role": "user", "content": prompt}]
                    built = session.build_prompt(conversation([], turns, system or details.system), runner)
                    text, bos = runner.detokenize(context) + built.text, False
                runner.reset()
                generation = runner.generate(text, sampling, add_bos=bos, format=fmt)
            else:
                generation = session.request(prompt=prompt, system=system, format=fmt)
            runner = session.loaded
            created = iso_time()
            emit = None
            if stream:
                req.start_stream("application/x-ndjson")

                def emit(piece: str) -> None:
                    req.write_json_line({"model": model, "created_at": iso_time(), "response": piece, "done": False})

            result = self._generation(req, "/api/generate", model, generation, emit)
            final = {"model": model, "created_at": created if not stream else iso_time(),
                     "response": "" if stream else result.text, "done": True,
                     **self._stats(result, loaded.load_duration),
                     "context": list(runner.last_prompt_tokens) + list(result.tokens)}
        if stream:
            req.write_json_line(final)
            req.end_stream()
        else:
            req.send_json(final)

    @staticmethod
    def _chat_generation(details: ModelDetails, loaded: Loaded, messages: list[dict[str, Any]],
                         options: Mapping[str, Any], fmt: Any):
        """Ollama's ChatHandler: the model's MESSAGEs and SYSTEM, then the request's messages."""
        session = Session(details, options, load=loaded.load)
        msgs = conversation(details.messages, messages, details.system)
        return session.generate(msgs, fresh=True, format=fmt)

    def chat(self, req: Request) -> None:
        body = req.json()
        model, ref = self.reference(body)
        details = self.details(model, ref)
        self._unsupported(body, model)
        raw_messages = body.get("messages") or []
        if not raw_messages:
            self._load_only(req, details, model, body.get("keep_alive"), chat=True)
            return
        messages = check_messages([{"role": m.get("role"), "content": m.get("content") or ""}
                                   if isinstance(m, dict) else m for m in raw_messages])
        options = typed_options(body.get("options"))
        stream = body.get("stream", True) is not False
        with self.cache.use(details, body.get("keep_alive")) as loaded:
            generation = self._chat_generation(details, loaded, messages, options, body.get("format"))
            emit = None
            if stream:
                req.start_stream("application/x-ndjson")

                def emit(piece: str) -> None:
                    req.write_json_line({"model": model, "created_at": iso_time(),
                                         "message": {"role": "assistant", "content": piece}, "done": False})

            result = self._generation(req, "/api/chat", model, generation, emit)
            final = {"model": model, "created_at": iso_time(),
                     "message": {"role": "assistant", "content": "" if stream else result.text}, "done": True,
                     **self._stats(result, loaded.load_duration)}
        if stream:
            req.write_json_line(final)
            req.end_stream()
        else:
            req.send_json(final)

    # ----- embeddings

    def _embed(self, details: ModelDetails, texts: list[str], options: Any, keep_alive: Any,
               truncate: bool = True) -> tuple[list[list[float]], int, float, float]:
        started = time.perf_counter()
        with self.cache.use(details, keep_alive) as loaded:
            runner = loaded.embedding_runner(Session(details, typed_options(options)).parameters())
            vectors, count = runner.embed(texts, truncate=truncate) if texts else ([], 0)
            load = loaded.load_duration
        return vectors, count, load, time.perf_counter() - started

    def embed(self, req: Request) -> None:
        body = req.json()
        model, ref = self.reference(body)
        details = self.details(model, ref)
        texts = body.get("input", "")
        texts = [texts] if isinstance(texts, str) else texts
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise ApiError(400, "input must be a string or a list of strings")
        texts = [t for t in texts if t] if len(texts) == 1 and not texts[0] else texts
        vectors, count, load, total = self._embed(details, texts, body.get("options"), body.get("keep_alive"),
                                                  body.get("truncate", True) is not False)
        dims = body.get("dimensions")
        if isinstance(dims, int) and dims > 0:
            vectors = [_normalised(v[:dims]) for v in vectors]
        ns = 1_000_000_000
        req.send_json({"model": model, "embeddings": vectors, "total_duration": int(total * ns),
                       "load_duration": int(load * ns), "prompt_eval_count": count})

    def embeddings(self, req: Request) -> None:
        body = req.json()
        model, ref = self.reference(body)
        details = self.details(model, ref)
        prompt = body.get("prompt") or ""
        if not isinstance(prompt, str):
            raise ApiError(400, "prompt must be a string")
        vectors, *_ = self._embed(details, [prompt] if prompt else [], body.get("options"), body.get("keep_alive"))
        req.send_json({"embedding": vectors[0] if vectors else []})

    # ----- OpenAI

    def v1_models(self, req: Request) -> None:
        data = [{"id": display_name(e.name), "object": "model", "created": int(e.modified), "owned_by": "library"}
                for e in self.store.refs()]
        req.send_json({"object": "list", "data": sorted(data, key=lambda m: m["id"])})

    def _openai_model(self, body: Mapping[str, Any]) -> tuple[str, ModelDetails]:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise ApiError(400, "model is required")
        return model, self.details(model, config.reference(model))

    def v1_chat(self, req: Request) -> None:
        body = req.json()
        model, details = self._openai_model(body)
        if body.get("tools"):
            raise ApiError(400, f"{model} does not support tools")
        if body.get("n", 1) not in (1, None):
            raise ApiError(400, "n must be 1")
        messages = openai_messages(body.get("messages"))
        self._openai_run(req, body, model, details, "chat.completion",
                         lambda loaded: self._chat_generation(details, loaded, messages, openai_options(body),
                                                              openai_format(body)))

    def v1_completions(self, req: Request) -> None:
        body = req.json()
        model, details = self._openai_model(body)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise ApiError(400, "prompt must be a string")
        if body.get("suffix"):
            raise ApiError(400, f"{model} does not support insert")

        def start(loaded: Loaded):
            return Session(details, openai_options(body), load=loaded.load).request(
                prompt=prompt, format=openai_format(body))

        self._openai_run(req, body, model, details, "text_completion", start)

    def _openai_run(self, req: Request, body: Mapping[str, Any], model: str, details: ModelDetails, kind: str,
                    start: Callable[[Loaded], Any]) -> None:
        chat = kind == "chat.completion"
        ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        stream = bool(body.get("stream"))
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        head = {"id": ident, "object": kind + (".chunk" if chat and stream else ""), "created": created,
                "model": model, "system_fingerprint": "fp_modelpkg"}

        def choice(text: str, reason: str | None) -> dict[str, Any]:
            if chat:
                key = "delta" if stream else "message"
                return {"index": 0, key: {"role": "assistant", "content": text}, "finish_reason": reason}
            return {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}

        with self.cache.use(details, body.get("keep_alive")) as loaded:
            generation = start(loaded)
            emit = None
            if stream:
                req.start_stream("text/event-stream")

                def emit(piece: str) -> None:
                    req.write_event({**head, "choices": [choice(piece, None)]})

            result = self._generation(req, "/v1/" + ("chat/completions" if chat else "completions"), model,
                                      generation, emit)
        usage = {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.eval_count,
                 "total_tokens": result.prompt_tokens + result.eval_count}
        if not stream:
            req.send_json({**head, "choices": [choice(result.text, finish_reason(result))], "usage": usage})
            return
        final = {**head, "choices": [choice("", finish_reason(result))]}
        if chat:
            final["choices"][0]["delta"] = {}
        req.write_event(final)
        if include_usage:
            req.write_event({**head, "choices": [], "usage": usage})
        req.write_raw_event("[DONE]")
        req.end_stream()

    def v1_embeddings(self, req: Request) -> None:
        body = req.json()
        model, details = self._openai_model(body)
        texts = body.get("input")
        texts = [texts] if isinstance(texts, str) else texts
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise ApiError(400, "input must be a string or a list of strings (token arrays are not supported)")
        vectors, count, *_ = self._embed(details, texts, None, body.get("keep_alive"))
        dims = body.get("dimensions")
        if isinstance(dims, int) and dims > 0:
            vectors = [_normalised(v[:dims]) for v in vectors]
        b64 = body.get("encoding_format") == "base64"
        data = [{"object": "embedding", "index": i, "embedding": base64_floats(v) if b64 else v}
                for i, v in enumerate(vectors)]
        req.send_json({"object": "list", "data": data, "model": model,
                       "usage": {"prompt_tokens": count, "total_tokens": count}})


def _compact(obj: Any) -> str:
    """JSON as Go's encoder writes it: no spaces, UTF-8 kept."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def _normalised(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [x / norm for x in vector]


# --------------------------------------------------------------------------------------------------------
# HTTP plumbing


class Request:
    """One HTTP exchange: the parsed request and the ways to answer it (whole, or streamed in chunks)."""

    def __init__(self, handler: BaseHTTPRequestHandler, method: str):
        self.h = handler
        self.method = method
        self.path = handler.path.split("?", 1)[0].rstrip("/") or "/"
        self.headers = handler.headers
        self.status = 200
        self.streaming = False
        self._body_read = False
        self.extra_headers: list[tuple[str, str]] = []  # e.g. CORS headers, sent with any answer

    @property
    def openai(self) -> bool:
        return self.path.startswith("/v1/")

    # ----- reading

    def _length(self) -> int:
        try:
            return int(self.headers.get("Content-Length") or 0)
        except ValueError as e:
            raise ApiError(400, "invalid Content-Length") from e

    def body_stream(self):
        """The request body as a stream (Content-Length or chunked), for blob uploads."""
        self._body_read = True
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            return _ChunkedReader(self.h.rfile)
        return _LimitedReader(self.h.rfile, self._length())

    def json(self) -> dict[str, Any]:
        stream = self.body_stream()
        data = stream.read(MAX_BODY + 1)
        if len(data) > MAX_BODY:
            raise ApiError(413, "request body too large")
        if not data.strip():
            raise ApiError(400, "missing request body")
        try:
            body = json.loads(data)
        except (ValueError, UnicodeDecodeError, RecursionError) as e:  # RecursionError: nested past the stack
            raise ApiError(400, f"invalid JSON: {e}") from e
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        return body

    def drain(self) -> None:
        if not self._body_read:
            try:
                self.body_stream().read()
            except (OSError, ValueError):
                self.h.close_connection = True

    def client_gone(self) -> bool:
        """Has the client closed its connection? (Readable with nothing to read: end of stream.)"""
        sock = self.h.connection
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    # ----- answering

    def _send(self, data: bytes) -> None:
        try:
            self.h.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError) as e:
            self.h.close_connection = True
            raise ClientGone() from e

    def _head(self, status: int, content_type: str | None, length: int | None) -> None:
        self.drain()
        self.status = status
        h = self.h
        h.send_response(status)
        for key, value in self.extra_headers:
            h.send_header(key, value)
        if content_type:
            h.send_header("Content-Type", content_type)
        if length is None:
            h.send_header("Transfer-Encoding", "chunked")
            h.send_header("Cache-Control", "no-cache")
        else:
            h.send_header("Content-Length", str(length))
        try:
            h.end_headers()
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError) as e:
            h.close_connection = True
            raise ClientGone() from e

    def send_bytes(self, status: int, data: bytes, content_type: str | None) -> None:
        self._head(status, content_type, len(data))
        if self.method != "HEAD":
            self._send(data)

    def send_json(self, obj: Any, status: int = 200) -> None:
        self.send_bytes(status, _compact(obj).encode(), "application/json; charset=utf-8")

    def send_text(self, text: str) -> None:
        self.send_bytes(200, text.encode(), "text/plain; charset=utf-8")

    def send_empty(self, status: int = 200) -> None:
        self.send_bytes(status, b"", None)

    def send_error_answer(self, err: ApiError) -> None:
        if self.openai:
            obj = {"error": {"message": err.message, "type": err.kind, "param": None, "code": err.code}}
        else:
            obj = {"error": err.message}
        try:
            if self.streaming:  # the headers are gone: the error is the stream's last item, as Ollama does
                if self.openai:
                    self.write_event(obj)
                else:
                    self.write_json_line(obj)
                self.end_stream()
            else:
                self.send_json(obj, err.status)
        except ClientGone:
            pass

    def start_stream(self, content_type: str) -> None:
        self._head(200, content_type, None)
        self.streaming = True

    def _chunk(self, data: bytes) -> None:
        self._send(b"%x\r\n%s\r\n" % (len(data), data))

    def write_json_line(self, obj: Any) -> None:
        self._chunk(_compact(obj).encode() + b"\n")

    def write_event(self, obj: Any) -> None:
        self.write_raw_event(_compact(obj))

    def write_raw_event(self, text: str) -> None:
        self._chunk(f"data: {text}\n\n".encode())

    def end_stream(self) -> None:
        self._send(b"0\r\n\r\n")
        self.streaming = False


class _LimitedReader:
    def __init__(self, raw, length: int):
        self.raw, self.left = raw, length

    def read(self, n: int = -1) -> bytes:
        if self.left <= 0:
            return b""
        n = self.left if n is None or n < 0 else min(n, self.left)
        data = self.raw.read(n)
        self.left -= len(data)
        if not data:
            self.left = 0
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


class _ChunkedReader:
    """A ``Transfer-Encoding: chunked`` request body."""

    def __init__(self, raw):
        self.raw, self.left, self.done = raw, 0, False

    def read(self, n: int = -1) -> bytes:
        out = bytearray()
        while not self.done and (n is None or n < 0 or len(out) < n):
            if self.left == 0:
                line = self.raw.readline(1024)
                try:
                    self.left = int(line.split(b";")[0].strip() or b"0", 16)
                except ValueError as e:
                    raise ApiError(400, "invalid chunked body") from e
                if self.left == 0:
                    while self.raw.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    self.done = True
                    break
            want = self.left if n is None or n < 0 else min(self.left, n - len(out))
            data = self.raw.read(want)
            if not data:
                raise ApiError(400, "the request body ended early")
            out += data
            self.left -= len(data)
            if self.left == 0:
                self.raw.readline(16)
        return bytes(out)

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "modelpkg"
    sys_version = ""

    def _dispatch(self, method: str) -> None:
        self.server.app.handle(Request(self, method))  # type: ignore[attr-defined]

    def do_GET(self) -> None:  # noqa: N802 - http.server's names
        self._dispatch("GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch("HEAD")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch("DELETE")

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch("PUT")

    def do_OPTIONS(self) -> None:  # noqa: N802
        self._dispatch("OPTIONS")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the App logs each request instead
        pass


class ApiServer(ThreadingHTTPServer):
    """The HTTP server; ``app`` holds the store and the loaded models. ``close`` unloads them."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], app: App):
        self.app = app
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in str(host) else host
        return f"http://{host}:{port}"

    def close(self) -> None:
        self.server_close()
        self.app.close()


def make_server(store: Store, host: str = "127.0.0.1", port: int = 11434, *, token: str | None = None,
                keep_alive: float | None = DEFAULT_KEEP_ALIVE, max_loaded: int = MAX_LOADED,
                log: Callable[[str], None] | None = None, origins: tuple[str, ...] = ()) -> ApiServer:
    """Bind the API (``serve_forever`` runs it; ``shutdown`` then ``close`` stop it)."""
    from modelpkg.registry.client import is_loopback

    app = App(store, token=token, keep_alive=keep_alive, max_loaded=max_loaded, log=log, origins=origins,
              loopback_only=is_loopback(host))
    if ":" in host:
        class _V6(ApiServer):
            address_family = socket.AF_INET6
        return _V6((host, port), app)
    try:
        return ApiServer((host, port), app)
    except OSError:
        app.close()
        raise


def origin_allowed(origin: str, patterns: tuple[str, ...]) -> bool:
    """``origin`` (scheme://host[:port]) matches one of ``patterns`` (``*`` matches any run of characters)."""
    import fnmatch

    origin = origin.strip().lower()
    return any(fnmatch.fnmatchcase(origin, pattern.strip().lower()) for pattern in patterns)


def local_host_header(value: str) -> bool:
    """Does a ``Host`` header name this machine? localhost (and *.localhost, *.local, *.internal), this
    machine's name, or an IP address that is loopback, private, link-local or unspecified (Ollama's rule)."""
    import ipaddress

    host = value.strip().lower()
    if host.startswith("["):
        host = host[1:].split("]", 1)[0]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    if host in ("", "localhost") or host == socket.gethostname().lower():
        return True
    if host.rsplit(".", 1)[-1] in ("localhost", "local", "internal"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_private or address.is_link_local or address.is_unspecified


def stderr_log(line: str) -> None:
    print(f"[modelpkg] {iso_time()} | {line}", file=sys.stderr, flush=True)


__all__ = ["ApiServer", "App", "ModelCache", "make_server", "parse_keep_alive", "parse_go_duration",
           "modelfile_from_fields", "openai_options"]
