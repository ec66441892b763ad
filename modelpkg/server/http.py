"""The server's HTTP plumbing: one exchange (``Request``), the request-body readers, the handler and the
threading server, the browser rules (allowed origins, the ``Host`` check) and errors as HTTP answers.

It knows nothing of models or of either API's routes: ``ApiServer`` hands every request to an application's
``handle``. Built on the standard library's ``http.server`` and the core's errors; imports nothing else from
``server`` (every other server module imports this one), nor ``ops``, the store or the runner.

Hostile clients are bounded here (``Limits``; README "Bounded requests"): a body that is not needed is never
read (an error answer closes the connection instead, with an unsent ``100 Continue``); a JSON body is bounded
in bytes and in values (counted at C speed before it is parsed, so ``[{},{},...]`` is never materialised);
the headers must arrive within a deadline and every later read or write within an idle timeout; and
connections are capped per client address and in all, beyond which a client gets a quick 503.
"""

from __future__ import annotations

import ctypes
import errno
import fnmatch
import functools
import io
import ipaddress
import json
import re
import select
import socket
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from modelpkg.core.errors import (
    AuthError,
    BusyError,
    InvalidInputError,
    ModelpkgError,
    NotFoundError,
    RegistryError,
    UsageError,
)

MiB = 1024 * 1024
# Browser origins allowed to call the API (Ollama's defaults): the machine itself, and the schemes of
# desktop and editor apps. Any other page a browser has open is refused, so a web site cannot make the
# browser pull, create or delete models here. More with --origins / MODELPKG_ORIGINS ("*": any).
DEFAULT_ORIGINS = (
    *(f"{scheme}://{host}{port}" for scheme in ("http", "https")
      for host in ("localhost", "127.0.0.1", "0.0.0.0", "[::1]") for port in ("", ":*")),
    "app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*")
CORS_MAX_AGE = 43200
DRAIN_LIMIT = 64 * 1024  # an unread body up to this size is skipped after a success, keeping the connection
LINGER_BYTES, LINGER_SECONDS = 1 * MiB, 1.0  # read and dropped after an early answer (see _Handler.finish)
TRIM_AFTER = 1 * MiB  # a body larger than this hands freed memory back to the system afterwards


@dataclass(frozen=True)
class Limits:
    """What one client may cost the server. Defaults here; ``serve`` reads them from ``MODELPKG_SERVE_*``."""

    header_timeout: float = 10.0  # from a connection's being ready for a request to the end of its headers
    body_timeout: float = 60.0  # idle time allowed in each read of a body and each write of an answer
    max_body: int = 16 * MiB  # a JSON body (generation and embedding routes; the others take less)
    max_json_values: int = 250_000  # arrays, objects and their elements in one JSON body
    max_connections: int = 256  # open connections in all (at most half the file-descriptor limit)
    max_client_connections: int = 32  # open connections from one address (at most half of the above)

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
    if isinstance(e, BusyError):  # every slot taken and the queue full: Ollama's 503, its text alone
        return ApiError(503, e.message, "api_error", "server_busy")
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
        self._body: _LimitedReader | _ChunkedReader | None = None
        self.extra_headers: list[tuple[str, str]] = []  # e.g. CORS headers, sent with any answer
        limits: Limits = getattr(handler.server, "limits", None) or Limits()
        self.max_body = limits.max_body  # the application may lower it per route before reading
        self.max_json_values = limits.max_json_values

    @property
    def openai(self) -> bool:
        return self.path.startswith("/v1/")

    # ----- reading

    def _length(self) -> int:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError as e:
            raise ApiError(400, "invalid Content-Length") from e
        if length < 0:
            raise ApiError(400, "invalid Content-Length")
        return length

    def _chunked(self) -> bool:
        return "chunked" in (self.headers.get("Transfer-Encoding") or "").lower()

    def has_body(self) -> bool:
        """Did the client announce a body (a Content-Length above 0, or chunks)?"""
        return self._chunked() or (self.headers.get("Content-Length") or "0").strip() not in ("0", "")

    def body_stream(self):
        """The request body as a stream (Content-Length or chunked), for blob uploads. A client waiting for
        ``100 Continue`` gets it only now, so a request answered without its body never has it sent."""
        if self._body is None:
            length = 0 if self._chunked() else self._length()
            if (self.headers.get("Expect") or "").lower() == "100-continue" and self.h.request_version >= "HTTP/1.1":
                self._send(b"HTTP/1.1 100 Continue\r\n\r\n")
            self._body = _ChunkedReader(self.h.rfile) if self._chunked() else _LimitedReader(self.h.rfile, length)
        return self._body

    def json(self) -> dict[str, Any]:
        """The body as a JSON object, within ``max_body`` bytes and ``max_json_values`` values."""
        if not self._chunked() and self._length() > self.max_body:  # refused unread, by its declared size
            raise ApiError(413, f"request body too large (the limit is {_size(self.max_body)})")
        data = self.body_stream().read(self.max_body + 1)
        body = self._parse(data)
        del data  # before the error is raised: a traceback would keep the body alive until it is answered
        if isinstance(body, ApiError):
            raise body
        return body

    def _parse(self, data: bytes) -> dict[str, Any] | ApiError:
        """The JSON object in ``data``, or the error to answer (returned: raising here would keep ``data``)."""
        if len(data) > self.max_body:
            return ApiError(413, f"request body too large (the limit is {_size(self.max_body)})")
        if not data.strip():
            return ApiError(400, "missing request body")
        if len(data) > TRIM_AFTER:
            self.h.trim_memory = True
        if json_values(data, self.max_json_values) > self.max_json_values:
            return ApiError(413, f"request body too large (more than {self.max_json_values:,} JSON values)")
        try:
            body = json.loads(data)
        except (ValueError, UnicodeDecodeError, RecursionError) as e:  # RecursionError: nested past the stack
            return ApiError(400, f"invalid JSON: {e}")
        if not isinstance(body, dict):
            return ApiError(400, "the request body must be a JSON object")
        return body

    def _settle_body(self, status: int) -> None:
        """Before an answer: a body left unread is skipped if small and the answer a success; otherwise the
        connection closes after the answer, the body never read (a refused request costs no memory)."""
        body = self._body
        if body is None and not self.has_body():
            return
        if body is None and status < 400 and not self._chunked() and self._length() <= DRAIN_LIMIT:
            body = self.body_stream()
            try:
                while body.read(DRAIN_LIMIT):
                    pass
            except ApiError:
                self.h.close_connection = True
        if body is None or not body.exhausted():
            self.h.close_connection = True
            self.h.unread_body = True

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
        self._settle_body(status)
        self.status = status
        h = self.h
        h.send_response(status)
        for key, value in self.extra_headers:
            h.send_header(key, value)
        if h.close_connection:
            h.send_header("Connection", "close")
        if content_type:
            h.send_header("Content-Type", content_type)
        if length is None:
            h.send_header("Transfer-Encoding", "chunked")
            h.send_header("Cache-Control", "no-cache")
        else:
            h.send_header("Content-Length", str(length))
        try:
            h.end_headers()
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError) as e:
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

    def write_named_event(self, name: str, obj: Any) -> None:
        """A server-sent event with an ``event:`` line, as Anthropic's and OpenAI's Responses streams send them."""
        self._chunk(f"event: {name}\ndata: {compact_json(obj)}\n\n".encode())

    def end_stream(self) -> None:
        self._send(b"0\r\n\r\n")
        self.streaming = False


# --------------------------------------------------------------------------------------------------------
# request bodies


class _LimitedReader:
    """A body of ``Content-Length`` bytes. A read that times out or breaks is an ``ApiError`` (never an
    ``OSError``, which a blob upload would report as a disk error)."""

    def __init__(self, raw, length: int):
        self.raw, self.left = raw, length

    def exhausted(self) -> bool:
        return self.left <= 0

    def read(self, n: int = -1) -> bytes:
        if self.left <= 0:
            return b""
        n = self.left if n is None or n < 0 else min(n, self.left)
        data = _read(self.raw.read, n)
        self.left -= len(data)
        if not data:
            raise ApiError(400, "the request body ended early")
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


class _ChunkedReader:
    """A ``Transfer-Encoding: chunked`` request body; read only as far as asked, so a limit holds."""

    MAX_TRAILERS = 64

    def __init__(self, raw):
        self.raw, self.left, self.done = raw, 0, False

    def exhausted(self) -> bool:
        return self.done

    def _next_chunk(self) -> None:
        line = _read(self.raw.readline, 1024)
        try:
            self.left = int(line.split(b";")[0].strip() or b"x", 16)
        except ValueError as e:
            raise ApiError(400, "invalid chunked body") from e
        if self.left < 0:
            raise ApiError(400, "invalid chunked body")
        if self.left == 0:
            for _ in range(self.MAX_TRAILERS):
                if _read(self.raw.readline, 1024) in (b"\r\n", b"\n", b""):
                    self.done = True
                    return
            raise ApiError(400, "invalid chunked body (too many trailers)")

    def read(self, n: int = -1) -> bytes:
        out = bytearray()
        while not self.done and (n is None or n < 0 or len(out) < n):
            if self.left == 0:
                self._next_chunk()
                if self.done:
                    break
            want = self.left if n is None or n < 0 else min(self.left, n - len(out))
            data = _read(self.raw.read, want)
            if not data:
                raise ApiError(400, "the request body ended early")
            out += data
            self.left -= len(data)
            if self.left == 0:
                _read(self.raw.readline, 16)
        return bytes(out)

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


def _read(method, n: int) -> bytes:
    try:
        return method(n)
    except TimeoutError as e:
        raise ApiError(408, "the request body timed out") from e
    except OSError as e:
        raise ApiError(400, f"the request body broke off: {e.strerror or e}") from e


# a JSON string (what may hold brackets and commas that are not structure); an unterminated one runs to the end,
# so the pattern always matches where it starts and scanning stays linear
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"?', re.S)


def json_values(data: bytes, limit: int) -> int:
    """How many arrays, objects and elements the JSON text ``data`` holds (counting ``[``, ``{`` and ``,``
    outside strings), at C speed and without parsing it: at most ``limit + 1`` is exact enough to refuse.
    Parsed values cost 30-200 bytes each, so the count bounds what ``json.loads`` would build."""
    rough = data.count(b"[") + data.count(b"{") + data.count(b",")  # an upper bound: strings counted too
    if rough <= limit:
        return rough
    bare = _JSON_STRING.sub(b"", data)
    return bare.count(b"[") + bare.count(b"{") + bare.count(b",")


def _size(n: int) -> str:
    return f"{n // MiB} MiB" if n % MiB == 0 else f"{n:,} bytes"


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL(None).malloc_trim  # the C library already loaded (no ldconfig run to find it)
    except (OSError, AttributeError, TypeError):  # not glibc, or no dlopen(NULL): nothing to call
        return None


def trim_memory() -> None:
    """Hand memory freed after a large request back to the system (glibc keeps freed heap pages otherwise;
    ``malloc_trim`` releases them). A no-op where there is no glibc."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


# --------------------------------------------------------------------------------------------------------
# the server


class Application(Protocol):
    """What ``ApiServer`` serves: every request goes to ``handle``; ``close`` unloads what it holds."""

    def handle(self, req: Request) -> None: ...

    def close(self) -> None: ...


class _DeadlineSocket(io.RawIOBase):
    """The connection's reading end: each read waits at most ``idle`` seconds and never past ``deadline``
    (a monotonic time; ``None``: none), so a client dripping one header byte at a time is still cut off."""

    def __init__(self, sock: socket.socket, idle: float):
        self.sock, self.idle, self.deadline = sock, idle, None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        timeout = self.idle
        if self.deadline is not None:
            timeout = min(timeout, self.deadline - time.monotonic())
            if timeout <= 0:
                raise TimeoutError("the request headers took too long")
        self.sock.settimeout(timeout)
        return self.sock.recv_into(buffer)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "modelpkg"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # http.server's own reader, replaced by one that keeps the deadlines
        self.limits: Limits = self.server.limits  # type: ignore[attr-defined]
        self.reader = _DeadlineSocket(self.connection, self.limits.header_timeout)
        self.rfile = io.BufferedReader(self.reader)
        self.unread_body = False  # the answer went out before the body was read: linger, then close
        self.trim_memory = False

    def handle_one_request(self) -> None:
        # from here to the end of the headers (the idle wait of a kept-alive connection included)
        self.reader.idle = self.limits.header_timeout
        self.reader.deadline = time.monotonic() + self.limits.header_timeout
        super().handle_one_request()

    def handle_expect_100(self) -> bool:
        return True  # ``100 Continue`` is sent when the body is first read (Request.body_stream), if ever

    def _dispatch(self, method: str) -> None:
        self.reader.idle, self.reader.deadline = self.limits.body_timeout, None
        self.connection.settimeout(self.limits.body_timeout)  # writes of the answer too
        try:
            self.server.app.handle(Request(self, method))  # type: ignore[attr-defined]
        finally:
            if self.trim_memory:
                self.trim_memory = False
                trim_memory()

    def finish(self) -> None:
        super().finish()
        if self.unread_body:
            self._linger()

    def _linger(self) -> None:
        """The answer went out with a body unread: closing now would reset the connection, and a client
        still sending could lose the answer. So end our side, then read and drop what the client sends for a
        moment (Go's ``closeWriteAndWait`` and nginx's lingering close do the same), at most LINGER_BYTES."""
        sock = self.connection
        try:
            sock.shutdown(socket.SHUT_WR)
            end, got = time.monotonic() + LINGER_SECONDS, 0
            while got < LINGER_BYTES and (left := end - time.monotonic()) > 0:
                sock.settimeout(left)
                data = sock.recv(64 * 1024)
                if not data:
                    break
                got += len(data)
        except OSError:
            pass

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


def _fd_limit() -> int | None:
    try:
        import resource
    except ImportError:  # not Unix
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


class ApiServer(ThreadingHTTPServer):
    """The HTTP server; ``app`` holds the store and the loaded models. ``close`` unloads them.

    One thread per connection, at most ``max_connections`` of them (and never more than half the process's
    file descriptors, so there is always one to accept and refuse with), at most ``max_client_connections``
    from one address (at most half of all): a connection beyond either gets a 503 at once and is closed."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 128  # socketserver's 5 drops connections a busy moment queues

    def __init__(self, address: tuple[str, int], app: Application, limits: Limits | None = None):
        self.app = app
        self.limits = limits or Limits()
        fds = _fd_limit()
        most = self.limits.max_connections
        self.max_connections = max(1, min(most, fds // 2 if fds else most))
        self.max_client_connections = max(1, min(self.limits.max_client_connections, self.max_connections // 2))
        self._lock = threading.Lock()
        self._open: Counter[str] = Counter()  # open connections per client address
        self.refused = 0  # connections answered 503 (too many)
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in str(host) else host
        return f"http://{host}:{port}"

    def get_request(self):
        try:
            return super().get_request()
        except OSError as e:
            if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                time.sleep(0.05)  # out of descriptors: wait for some to close instead of spinning on accept
            raise

    def process_request(self, request, client_address) -> None:
        address = str(client_address[0])
        with self._lock:
            full = sum(self._open.values()) >= self.max_connections or \
                self._open[address] >= self.max_client_connections
            if not full:
                self._open[address] += 1
        if full:
            self.refused += 1
            _refuse(request)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._closed(address)
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._closed(str(client_address[0]))

    def _closed(self, address: str) -> None:
        with self._lock:
            self._open[address] -= 1
            if self._open[address] <= 0:
                del self._open[address]

    def handle_error(self, request, client_address) -> None:
        error = sys.exc_info()[1]
        if not isinstance(error, OSError):  # a broken or reset connection is the client's business
            stderr_log(f"internal error on a connection from {client_address[0]}: {type(error).__name__}: {error}")

    def close(self) -> None:
        self.server_close()
        self.app.close()


_BUSY_BODY = b'{"error":"too many connections: try again later"}'
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json; charset=utf-8\r\n"
         b"Content-Length: %d\r\nRetry-After: 1\r\nConnection: close\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY))


def _refuse(sock: socket.socket) -> None:
    """A 503 on a connection over the caps, from the accepting thread: never waits on the client."""
    try:
        sock.setblocking(False)
        try:
            sock.recv(64 * 1024)  # what the request already sent, so that closing does not reset the answer away
        except OSError:
            pass
        sock.send(_BUSY)
    except OSError:
        pass


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
