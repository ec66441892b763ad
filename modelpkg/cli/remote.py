"""Talking to a running ``modelpkg serve`` from the command line: ``ps`` and ``stop`` ask it, and ``run`` hands
its generations to it so the model stays warm between runs (Ollama's client/server split).

- **Where.** ``MODELPKG_HOST``, else ``OLLAMA_HOST``, else ``127.0.0.1:11434``, in Ollama's forms
  (``host``, ``host:port``, ``:port``, ``http(s)://host:port``; ``0.0.0.0`` means this machine).
  ``MODELPKG_SERVE_TOKEN`` is sent as the bearer token.
- **Which.** ``run`` uses a server only when its ``/api/version`` says it is modelpkg (a ``modelpkg`` field)
  and names this store's random id (``Store.store_id``), and it accepts the token (if it wants one): a real
  Ollama on 11434, a modelpkg serve of another store, or one whose token we lack, is never used; then
  ``run`` works in-process as before.
- **How.** ``RemoteSession`` is a ``chat.Session`` whose turns go to ``/api/chat`` (streamed NDJSON): the
  server renders the prompt with the same ``Session`` code, so the REPL, one-shot and ``--batch`` answer
  as they do in-process. The session's own system prompt is sent as a system message when it is not the
  model's; the model's MESSAGE history and SYSTEM are the server's to add.

The standard library's HTTP client (no proxies: the server is this machine's or named directly); every
failure is a ``ModelpkgError``. CLI layer: imports ``base.config``, ``chat`` and the runner's ``Result``.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from modelpkg.base import config
from modelpkg.core.errors import InvalidInputError, ModelpkgError, NotFoundError, RunnerError, UsageError
from modelpkg.ops.chat import Session, check_messages, prompt_kind
from modelpkg.ops.models import ModelDetails
from modelpkg.runtime.runner import Generation, Result

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 11434
PROBE_TIMEOUT = 2.0      # seconds for /api/version: a server that does not answer by then is not used
REQUEST_TIMEOUT = 600.0  # seconds a generation may wait for its next line (a long prompt on a slow CPU)
NS = 1_000_000_000


def serve_url(host: str | None = None) -> str:
    """Ollama's ``OLLAMA_HOST`` forms -> a base URL (``http://127.0.0.1:11434``)."""
    text = (host if host is not None else config.serve_host() or "").strip().rstrip("/")
    scheme = "http"
    if "://" in text:
        scheme, text = text.split("://", 1)
        if scheme not in ("http", "https"):
            raise UsageError(f"MODELPKG_HOST {host!r}: the scheme must be http or https")
    name, port = text, ""
    if text.startswith("["):                        # [::1]:11434
        name, _, rest = text[1:].partition("]")
        port = rest.lstrip(":")
    elif text.count(":") == 1:
        name, port = text.split(":")
    name = name or DEFAULT_HOST
    if name in ("0.0.0.0", "::"):
        name = DEFAULT_HOST
    if port and not port.isdigit():
        raise UsageError(f"MODELPKG_HOST {text!r}: the port must be a number")
    port = port or (str(DEFAULT_PORT) if scheme == "http" else "443")
    return f"{scheme}://{'[' + name + ']' if ':' in name else name}:{port}"


class ServeClient:
    """Requests to one server. Errors are ``ModelpkgError``s: not found, a refused request, no server."""

    def __init__(self, url: str, token: str | None = None):
        self.url = url
        self.token = token
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def _request(self, method: str, path: str, body: Any = None, timeout: float = REQUEST_TIMEOUT):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            return self._opener.open(req, timeout=timeout)
        except urllib.error.HTTPError as e:
            raise _http_error(e, self.url) from e
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise RunnerError(f"cannot reach modelpkg serve at {self.url}: {reason}",
                              "start it with 'modelpkg serve', or set MODELPKG_HOST to where it listens") from e

    def json(self, method: str, path: str, body: Any = None, timeout: float = REQUEST_TIMEOUT) -> Any:
        with self._request(method, path, body, timeout) as answer:
            return _parse(answer.read(), self.url)

    def lines(self, path: str, body: Any) -> Iterator[dict[str, Any]]:
        """A streamed NDJSON answer, line by line; an ``error`` line is raised. Closing stops the server's work."""
        answer = self._request("POST", path, body)
        try:
            for raw in answer:
                if not raw.strip():
                    continue
                line = _parse(raw, self.url)
                if isinstance(line, dict) and line.get("error"):
                    raise RunnerError(f"modelpkg serve: {line['error']}")
                yield line
        finally:
            answer.close()

    def identity(self) -> dict[str, Any] | None:
        """``/api/version``'s ``modelpkg`` object (version, store id), or None: no server, or not modelpkg."""
        try:
            answer = self.json("GET", "/api/version", timeout=PROBE_TIMEOUT)
        except ModelpkgError:
            return None
        ident = answer.get("modelpkg") if isinstance(answer, dict) else None
        return ident if isinstance(ident, dict) else None


def _parse(data: bytes, url: str) -> Any:
    try:
        return json.loads(data)
    except ValueError as e:
        raise RunnerError(f"{url} answered something that is not JSON", "is MODELPKG_HOST a modelpkg serve?") from e


def _http_error(e: urllib.error.HTTPError, url: str) -> ModelpkgError:
    try:
        message = json.loads(e.read(64 * 1024)).get("error")
    except (ValueError, AttributeError, OSError):
        message = None
    text = message if isinstance(message, str) else f"HTTP {e.code} from {url}"
    if e.code == 404:
        return NotFoundError(text)
    if e.code == 401:
        return UsageError(f"modelpkg serve at {url}: {text}", "set MODELPKG_SERVE_TOKEN to the server's token")
    if e.code == 400:
        return InvalidInputError(text)
    return RunnerError(f"modelpkg serve: {text}")


def find_serve(store) -> ServeClient | None:
    """The running serve of this very store, or None (no server there, not modelpkg, or another store)."""
    try:
        url = serve_url()
        mine = store.store_id()
    except ModelpkgError:
        return None
    client = ServeClient(url, config.serve_token())
    ident = client.identity()
    if ident is None or ident.get("store_id") != mine:
        return None
    try:
        client.json("GET", "/api/ps", timeout=PROBE_TIMEOUT)  # /api/version is open; this one needs the token
    except ModelpkgError:
        return None  # a token is wanted and not given (or wrong): answer in-process rather than fail
    return client


# --------------------------------------------------------------------------------------------------------
# run's session, answered by the server


class RemoteRunner:
    """What ``run`` asks of a loaded model, for one in a server: its load time (from the last answer) and its
    GGUF's chat template (read from the shared store's weights)."""

    def __init__(self, details: ModelDetails):
        self.details = details
        self.load_duration = 0.0
        self._template: str | bool | None = False

    @property
    def chat_template(self) -> str | None:
        if self._template is False:
            from modelpkg.runtime.ggufmeta import read_info

            try:
                self._template = read_info(self.details.model_path).chat_template
            except ModelpkgError:
                self._template = None
        return self._template  # type: ignore[return-value]

    def close(self) -> None:
        pass


class RemoteSession(Session):
    """A ``Session`` whose generations run in a server: the same conversation, options and answers."""

    def __init__(self, details: ModelDetails, client: ServeClient, overrides: Mapping[str, Any] | None = None, *,
                 system: str | None = None):
        super().__init__(details, overrides, system=system)
        self.client = client
        self._remote = RemoteRunner(details)
        self.pieces: deque[tuple[bool, str]] = deque()  # (is thinking, text) of the pieces not yet split
        self.last_thinking = ""  # the last answer's whole thinking

    def runner(self, extra: Mapping[str, Any] | None = None) -> RemoteRunner:  # type: ignore[override]
        """Load the model in the server now (an empty chat, as ``ollama run`` does), so a model that does not
        load fails before any input is read."""
        if self._runner is None:
            answer = self.client.json("POST", "/api/chat", {"model": self.details.name, "messages": [],
                                                            "options": self.parameters_sent(extra)})
            self._remote.load_duration = answer.get("load_duration", 0) / NS if isinstance(answer, dict) else 0.0
            self._runner = self._remote  # type: ignore[assignment]
        return self._remote

    def close(self) -> None:
        self._runner = None  # the model stays loaded in the server: that is the point

    def kind(self) -> str:
        return prompt_kind(self.details.template, self.jinja_template(self._remote))  # type: ignore[arg-type]

    def parameters_sent(self, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The options to send: the command line's and the session's (the server adds the model's)."""
        return {**self.user_parameters(), **(extra or {})}

    def _turns(self, turns: Sequence[Mapping[str, Any]], system: str | None) -> list[dict[str, Any]]:
        """The messages to send: the server adds the model's MESSAGEs and SYSTEM, so only a system prompt of
        this session's own (``--system``, ``/set system``, a batch line's) goes with the turns."""
        out = [dict(m) for m in turns]
        if system is not None and system != self.details.system and not (out and out[0].get("role") == "system"):
            out.insert(0, {"role": "system", "content": system})
        return out

    def send(self, text: str) -> Generation:
        user = {"role": "user", "content": text}
        think = self.thinking()
        generation = self._chat(self._turns([*self.turns, user], self.system), None, think=think)
        return Generation(self._record(generation, user, bool(think)), generation.result)

    def splitter(self) -> RemoteSplitter:  # type: ignore[override]
        """The server splits the thinking off already: this hands back its pieces as it marked them."""
        return RemoteSplitter(self)

    def request(self, *, prompt: str | None = None, messages: Any = None, system: str | None = None,
                options: Mapping[str, Any] | None = None, fresh: bool = True, format: Any = None,
                think: Any = None) -> Generation:
        if (prompt is None) == (messages is None):
            raise InvalidInputError("give either a prompt or messages")
        if prompt is not None and not isinstance(prompt, str):
            raise InvalidInputError("prompt must be a string")
        if system is not None and not isinstance(system, str):
            raise InvalidInputError("system must be a string")
        turns = [{"role": "user", "content": prompt}] if prompt is not None else check_messages(messages)
        return self._chat(self._turns(turns, system if system is not None else self.system), options, format,
                          think=think)

    def _chat(self, messages: list[dict[str, Any]], extra: Mapping[str, Any] | None, fmt: Any = None,
              think: Any = None) -> Generation:
        self.runner()
        body: dict[str, Any] = {"model": self.details.name, "messages": messages, "stream": True,
                                "options": self.parameters_sent(extra)}
        if fmt is not None:
            body["format"] = fmt
        if think is not None:
            body["think"] = think
        self.pieces.clear()
        self.last_thinking = ""
        result = Result(done_reason="interrupted")
        return Generation(self._pieces(self.client.lines("/api/chat", body), result), result)

    def _pieces(self, lines: Iterator[dict[str, Any]], result: Result) -> Iterator[str]:
        """The answer's pieces as the server streams them: its thinking too (marked in ``pieces`` for the
        splitter), while ``result.text`` is the content alone."""
        texts: list[str] = []
        thoughts: list[str] = []
        try:
            for line in lines:
                message = line.get("message") or {}
                thinking = message.get("thinking") or ""
                if thinking:
                    thoughts.append(thinking)
                    self.last_thinking = "".join(thoughts)
                    self.pieces.append((True, thinking))
                    yield thinking
                piece = message.get("content") or ""
                if piece:
                    texts.append(piece)
                    self.pieces.append((False, piece))
                    yield piece
                if line.get("done"):
                    _fill(result, line)
                    self._remote.load_duration = line.get("load_duration", 0) / NS
        finally:
            lines.close()  # type: ignore[attr-defined]  # a closed connection stops the server's generation
            result.text = "".join(texts)


class RemoteSplitter:
    """``AnswerSplitter``'s interface over a server's answer, whose thinking the server has split already:
    a streamed piece is thinking or content as its line said; the whole answer (``result.text``, the content
    alone) comes back with the answer's thinking."""

    def __init__(self, session: RemoteSession):
        self.session = session

    def feed(self, piece: str) -> tuple[str, str]:
        marks = self.session.pieces
        if marks and marks[0][1] == piece:
            thinking, _ = marks.popleft()
            return (piece, "") if thinking else ("", piece)
        marks.clear()
        return self.session.last_thinking, piece

    def finish(self) -> tuple[str, str, list]:
        return "", "", []


def _fill(result: Result, line: Mapping[str, Any]) -> None:
    """A final ``/api/chat`` line's counters into ``result`` (durations from ns to seconds)."""
    result.done_reason = str(line.get("done_reason") or "stop")
    result.prompt_eval_count = int(line.get("prompt_eval_count") or 0)
    result.prompt_tokens = result.prompt_eval_count
    result.eval_count = int(line.get("eval_count") or 0)
    result.prompt_eval_duration = (line.get("prompt_eval_duration") or 0) / NS
    result.eval_duration = (line.get("eval_duration") or 0) / NS
    load = (line.get("load_duration") or 0) / NS
    result.total_duration = max((line.get("total_duration") or 0) / NS - load, 0.0)
