"""The server's HTTP plumbing: one exchange (``Request``), the request-body readers, the handler and the
threading server, the browser rules (allowed origins, the ``Host`` check) and errors as HTTP answers.

It knows nothing of models or of either API's routes: ``ApiServer`` hands every request to an application's
``handle``. Built on the standard library's ``http.server`` and the core's errors; imports nothing else from
``server`` (every other server module imports this one), nor ``ops``, the store or the runner.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import json
import select
import socket
import sys
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from modelpkg.core.errors import AuthError, InvalidInputError, ModelpkgError, NotFoundError, RegistryError, UsageError

MAX_BODY = 64 * 1024 * 1024  # a request body larger than this is refused (blobs are streamed instead)
# Browser origins allowed to call the API (Ollama's defaults): the machine itself, and the schemes of
# desktop and editor apps. Any other page a browser has open is refused, so a web site cannot make the
# browser pull, create or delete models here. More with --origins / MODELPKG_ORIGINS ("*": any).
DEFAULT_ORIGINS = (
    *(f"{scheme}://{host}{port}" for scheme in ("http", "https")
      for host in ("localhost", "127.0.0.1", "0.0.0.0", "[::1]") for port in ("", ":*")),
    "app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*")
CORS_MAX_AGE = 43200

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
# Go's wire formats


def compact_json(obj: Any) -> str:
    """JSON as Go's encoder writes it: no spaces, UTF-8 kept."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def iso_time(when: float | None = None) -> str:
    """RFC 3339 in UTC with a ``Z``, as Go marshals ``time.Time``."""
    moment = datetime.now(timezone.utc) if when is None else datetime.fromtimestamp(when, timezone.utc)
    return moment.isoformat().replace("+00:00", "Z")


def stderr_log(line: str) -> None:
    print(f"[modelpkg] {iso_time()} | {line}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------------
# one exchange


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
        self.send_bytes(status, compact_json(obj).encode(), "application/json; charset=utf-8")

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
        self._chunk(compact_json(obj).encode() + b"\n")

    def write_event(self, obj: Any) -> None:
        self.write_raw_event(compact_json(obj))

    def write_raw_event(self, text: str) -> None:
        self._chunk(f"data: {text}\n\n".encode())

    def end_stream(self) -> None:
        self._send(b"0\r\n\r\n")
        self.streaming = False


# --------------------------------------------------------------------------------------------------------
# request bodies


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


# --------------------------------------------------------------------------------------------------------
# the server


class Application(Protocol):
    """What ``ApiServer`` serves: every request goes to ``handle``; ``close`` unloads what it holds."""

    def handle(self, req: Request) -> None: ...

    def close(self) -> None: ...


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "modelpkg"
    sys_version = ""

    def _dispatch(self, method: str) -> None:
        self.server.app.handle(Request(self, method))  # type: ignore[attr-defined]

    # http.server's names for the methods
    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_OPTIONS(self) -> None:
        self._dispatch("OPTIONS")

    def log_message(self, format: str, *args: Any) -> None:  # the application logs each request instead
        pass


class ApiServer(ThreadingHTTPServer):
    """The HTTP server; ``app`` holds the store and the loaded models. ``close`` unloads them."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], app: Application):
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


class ApiServerV6(ApiServer):
    """``ApiServer`` on an IPv6 address."""

    address_family = socket.AF_INET6


# --------------------------------------------------------------------------------------------------------
# what a browser may do


def check_browser(req: Request, origins: tuple[str, ...], loopback_only: bool) -> None:
    """Refuse what a browser would send on behalf of a web page we do not trust: an ``Origin`` outside
    ``origins``, and, on a loopback server, a ``Host`` that is not this machine (DNS rebinding: a page
    whose own name resolves to 127.0.0.1). Allowed origins get CORS headers."""
    if loopback_only and not local_host_header(req.headers.get("Host", "")):
        raise ApiError(403, "forbidden: the Host header does not name this machine")
    origin = req.headers.get("Origin")
    if origin is None:
        return
    if not origin_allowed(origin, origins):
        raise ApiError(403, f"forbidden: origin {origin[:100]!r} is not allowed "
                            "(allow it with: modelpkg serve --origins ORIGIN, or MODELPKG_ORIGINS)")
    req.extra_headers += [("Access-Control-Allow-Origin", origin), ("Vary", "Origin")]
    if req.method == "OPTIONS":
        asked = req.headers.get("Access-Control-Request-Headers", "")
        req.extra_headers += [
            ("Access-Control-Allow-Methods", "GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS"),
            ("Access-Control-Allow-Headers", asked[:1000] or "Authorization, Content-Type"),
            ("Access-Control-Max-Age", str(CORS_MAX_AGE))]


def origin_allowed(origin: str, patterns: tuple[str, ...]) -> bool:
    """``origin`` (scheme://host[:port]) matches one of ``patterns`` (``*`` matches any run of characters)."""
    origin = origin.strip().lower()
    return any(fnmatch.fnmatchcase(origin, pattern.strip().lower()) for pattern in patterns)


def local_host_header(value: str) -> bool:
    """Does a ``Host`` header name this machine? localhost (and *.localhost, *.local, *.internal), this
    machine's name, or an IP address that is loopback, private, link-local or unspecified (Ollama's rule)."""
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
