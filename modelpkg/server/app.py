"""``modelpkg serve``: Ollama's HTTP API and OpenAI's ``/v1`` API over the store, for the tools people use.

What Ollama's server does (``server/routes.go``, ``openai/openai.go``; reference/ollama-behaviour.md §5),
on the standard library's ``ThreadingHTTPServer`` (one thread per connection):

- **Models** come from the store (``models.list_models``/``describe``/``copy``/``remove``, ``create``,
  ``pull``, ``push``); progress is streamed as Ollama's NDJSON status lines.
- **Generation** goes through ``chat.Session`` (prompt path, conversation, option precedence, truncation)
  and the runner's loop (stop strings, token counts, timings): the same answers ``modelpkg run`` gives.
- **Loaded models** (``ModelCache``) stay in memory for ``keep_alive`` (default 5 minutes; Go durations
  or seconds; 0 unloads after the request; negative keeps it forever); a reaper thread unloads expired
  ones. Each loaded model has ``parallel`` slots (``serve --parallel``, ``MODELPKG_NUM_PARALLEL``,
  ``OLLAMA_NUM_PARALLEL``; default 4): that many requests decode together, each in a sequence of its own;
  the rest wait in a bounded queue (``MODELPKG_MAX_QUEUE``/``OLLAMA_MAX_QUEUE``, 512), beyond which 503.
- **Reproducible answers.** Each request starts from a clean KV cache (as ``run --batch`` does), so a
  request gives the same answer streamed or not, alone or in a queue. Ollama reuses a cached prompt
  prefix instead: faster on long chats, but llama.cpp's numbers then differ slightly and a greedy answer
  can depend on the request before it.
- **Streams** are chunked: NDJSON for Ollama, server-sent events (``data: ...``, ``data: [DONE]``) for
  OpenAI. A client that goes away (a write fails) stops its generation at the next token.
- **Errors** are Ollama's ``{"error": "..."}`` with its status codes (unknown model: 404; bad JSON: 400),
  and OpenAI's ``{"error": {"message", "type", "param", "code"}}`` under ``/v1``.

- **Bounds** (``http.Limits``, from ``MODELPKG_SERVE_*``): routes that only name or describe a model take
  JSON bodies of at most 1 MiB, generation and embedding routes ``max_body`` (16 MiB); a refused request's
  body is never read. A server on a non-loopback address without a token is open to anyone who can reach
  it: ``exposure_warning`` says so, and ``serve`` prints it.

The rooms: ``http`` (requests, answers, the server, browser rules), ``cache`` (models in memory),
``backend`` (what both APIs share), ``ollama`` (``/api``), ``openai`` (``/v1``). This module is the top of
them: ``App`` checks each request (browser rules, the bearer token) and routes it; ``make_server`` binds it.
Imported by the CLI's ``serve`` command; never imports the CLI.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable

from modelpkg.base import config
from modelpkg.core.errors import ModelpkgError
from modelpkg.server import anthropic
from modelpkg.server.anthropic import AnthropicApi
from modelpkg.server.backend import Backend, Event
from modelpkg.server.cache import DEFAULT_KEEP_ALIVE, DEFAULT_MAX_QUEUE, MAX_LOADED, ModelCache
from modelpkg.server.http import (
    DEFAULT_ORIGINS,
    ApiError,
    ApiServer,
    ApiServerV6,
    ClientGone,
    Limits,
    MiB,
    Request,
    check_browser,
)
from modelpkg.server.ollama import OllamaApi
from modelpkg.server.openai import MODELS_PREFIX, OpenAIApi
from modelpkg.server.responses import ResponsesApi
from modelpkg.store import Store

# asked before any token is given: is a server there, and which one
OPEN_ROUTES = (("HEAD", "/"), ("GET", "/api/version"))
# routes whose JSON names or describes a model (a Modelfile, a few fields) take less than generation and
# embedding routes, which carry prompts, conversations and batches (Limits.max_body)
SMALL_BODY, SMALL_BODY_ROUTES = 1 * MiB, frozenset(
    {"/api/show", "/api/copy", "/api/delete", "/api/pull", "/api/push", "/api/create"})


class App:
    """The API: routes requests to handlers that use the store and the model cache."""

    def __init__(self, store: Store, *, token: str | None = None, keep_alive: float | None = DEFAULT_KEEP_ALIVE,
                 max_loaded: int = MAX_LOADED, log: Callable[[str], None] | None = None,
                 origins: tuple[str, ...] = (), loopback_only: bool = False, parallel: int | None = None,
                 max_queue: int = DEFAULT_MAX_QUEUE):
        self.token = token or None
        self.origins = DEFAULT_ORIGINS + tuple(origins)
        self.loopback_only = loopback_only  # bound to a loopback address: check Host (DNS rebinding)
        self.log = log or (lambda line: None)
        self.backend = Backend(store, ModelCache(keep_alive, max_loaded=max_loaded, parallel=parallel,
                                                 max_queue=max_queue))
        self.ollama = OllamaApi(self.backend)
        self.openai = OpenAIApi(self.backend)
        self.routes: dict[tuple[str, str], Callable[[Request], None]] = {
            **self.ollama.routes(), **self.openai.routes(), **AnthropicApi(self.backend).routes(),
            **ResponsesApi(self.backend).routes()}

    @property
    def store(self) -> Store:
        return self.backend.store

    @property
    def cache(self) -> ModelCache:
        return self.backend.cache

    @property
    def events(self) -> list[Event]:
        """The last generations (at most 100)."""
        return self.backend.events

    def close(self) -> None:
        self.cache.close()

    def handle(self, req: Request) -> None:
        started = time.perf_counter()
        status = 200
        try:
            check_browser(req, self.origins, self.loopback_only)
            if req.method == "OPTIONS":
                req.send_empty(204)  # a CORS preflight (an allowed origin's headers are added) or a probe
                self.log(f"{req.method} {req.path} 204 {time.perf_counter() - started:.3f}s")
                return
            if self.token and not self._authorised(req):
                raise ApiError(401, "unauthorized: a valid 'Authorization: Bearer <token>' header is required",
                               "authentication_error", "invalid_api_key")
            route = self._route(req)
            if req.path in SMALL_BODY_ROUTES:
                req.max_body = min(req.max_body, SMALL_BODY)
            route(req)
            status = req.status
        except ClientGone:
            status = 499
        except Exception as e:  # noqa: BLE001 - every failure becomes an HTTP answer, never a traceback
            err = self.backend.public_error(e)
            status = err.status
            if not isinstance(e, (ApiError, ModelpkgError)) and config.debug():
                import traceback

                traceback.print_exception(e)
            if anthropic.is_anthropic(req.path):
                anthropic.send_error(req, err)  # Anthropic's clients read their own error shape
            else:
                req.send_error_answer(err)
            del err  # the error's traceback holds this frame: a cycle that would keep the request's body alive
        self.log(f"{req.method} {req.path} {status} {time.perf_counter() - started:.3f}s")

    def _route(self, req: Request) -> Callable[[Request], None]:
        route = self.routes.get((req.method, req.path))
        if route is None and req.path.startswith("/api/blobs/") and req.method in ("HEAD", "POST"):
            route = self.ollama.blob
        if route is None and req.path.startswith(MODELS_PREFIX) and req.method == "GET":
            route = self.openai.model
        if route is None:
            known = any(path == req.path for _, path in self.routes)
            raise ApiError(405 if known else 404, "method not allowed" if known else "404 page not found")
        return route

    def _authorised(self, req: Request) -> bool:
        if (req.method, req.path) in OPEN_ROUTES:
            return True
        header = req.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer":
            given = req.headers.get("x-api-key", "")  # Anthropic's clients send the key there
        return bool(given) and hmac.compare_digest(given.strip().encode(), self.token.encode())


def make_server(store: Store, host: str = "127.0.0.1", port: int = 11434, *, token: str | None = None,
                keep_alive: float | None = DEFAULT_KEEP_ALIVE, max_loaded: int = MAX_LOADED,
                log: Callable[[str], None] | None = None, origins: tuple[str, ...] = (),
                limits: Limits | None = None, parallel: int | None = None,
                max_queue: int | None = None) -> ApiServer:
    """Bind the API (``serve_forever`` runs it; ``shutdown`` then ``close`` stop it). ``limits``: what one
    client may cost (default: ``Limits`` with the ``MODELPKG_SERVE_*`` settings). ``parallel``: slots per
    loaded model (default ``MODELPKG_NUM_PARALLEL``/``OLLAMA_NUM_PARALLEL``, else chosen per model);
    ``max_queue``: requests that may wait for a slot (default ``MODELPKG_MAX_QUEUE``/``OLLAMA_MAX_QUEUE``,
    else 512)."""
    from modelpkg.registry.client import is_loopback

    limits = limits or Limits(**config.serve_limits())
    parallel = parallel if parallel is not None else config.num_parallel()
    max_queue = max_queue if max_queue is not None else config.max_queue()
    app = App(store, token=token, keep_alive=keep_alive, max_loaded=max_loaded, log=log, origins=origins,
              loopback_only=is_loopback(host), parallel=parallel,
              max_queue=DEFAULT_MAX_QUEUE if max_queue is None else max_queue)
    try:
        return (ApiServerV6 if ":" in host else ApiServer)((host, port), app, limits)
    except OSError:
        app.close()
        raise


def exposure_warning(host: str, token: str | None) -> str | None:
    """The warning for a server anyone on the network can use: a non-loopback address and no token."""
    from modelpkg.registry.client import is_loopback

    if token or is_loopback(host):
        return None
    return (f"WARNING: listening on {host} without a token: anyone who can reach this address can list, pull, "
            "create, copy and delete models and run them on this machine (Ollama servers open like this are "
            "found and used by strangers by the hundred thousand). Set a token with --token TOKEN or "
            "MODELPKG_SERVE_TOKEN (clients send 'Authorization: Bearer TOKEN'), or listen on 127.0.0.1 and put "
            "a proxy in front.")
