"""``serve`` against hostile HTTP clients: huge bodies, JSON that explodes when parsed, slow clients, many
connections, and a server open to the network without a token.

The server runs in its own process (a small script over ``make_server``, or ``python -m modelpkg serve``),
so that its memory is its own: VmRSS and VmHWM are read from ``/proc/PID/status``. Clients are raw sockets on
loopback; an attacker's connections come from 127.0.0.2, so that they have an address of their own (Linux
routes all of 127/8 to the loopback interface). Every loop is bounded by a count or a deadline.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from capabilities import missing
from modelpkg.core.errors import UsageError
from modelpkg.server.http import Limits, json_values

REPO = Path(__file__).resolve().parents[2]
TOKEN = "s3cret"
MiB = 1024 * 1024
HUGE = 300 * MiB  # declared, never meant to be read

SERVER = """
import sys
from pathlib import Path
from modelpkg.server.app import make_server
from modelpkg.store import Store

server = make_server(Store(Path(sys.argv[1])).init(), "127.0.0.1", 0, token=sys.argv[2] or None)
print(server.server_address[1], flush=True)
server.serve_forever(poll_interval=0.2)
"""


class Served:
    """A server process on a free loopback port."""

    def __init__(self, tmp: Path, *, token: str | None = TOKEN, env: dict[str, str] | None = None,
                 fd_limit: int | None = None):
        if not Path("/proc/self/status").exists():
            missing("no /proc: the server's memory cannot be read")
        environ = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
        environ.pop("MODELPKG_SERVE_TOKEN", None)

        def limit_fds() -> None:
            import resource

            resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, fd_limit))

        self.proc = subprocess.Popen([sys.executable, "-c", SERVER, str(tmp / "store"), token or ""], env=environ,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     preexec_fn=limit_fds if fd_limit else None)
        line = self.proc.stdout.readline()
        if not line.strip().isdigit():
            self.proc.kill()
            raise AssertionError(f"the server did not start: {line!r} {self.proc.stderr.read()[-2000:]}")
        self.port = int(line)

    def status(self, key: str) -> int:
        """A ``/proc/PID/status`` figure (VmRSS, VmHWM) of the server, in bytes."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        raise AssertionError(f"no {key} in /proc/{self.proc.pid}/status")

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def served(tmp_path):
    server = Served(tmp_path)
    yield server
    server.close()


def connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))


def head(method: str, path: str, length: int, *, token: str | None = TOKEN, extra: str = "",
         host: str = "127.0.0.1") -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{auth}{extra}"
            f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n").encode()


def answer_status(data: bytes) -> int:
    match = re.match(rb"HTTP/1\.1 (\d{3}) ", data)
    assert match, data[:200]
    return int(match.group(1))


def complete(data: bytes) -> bool:
    """Does ``data`` hold a whole answer (headers and a Content-Length body)?"""
    top, sep, body = data.partition(b"\r\n\r\n")
    length = re.search(rb"(?i)content-length: (\d+)", top)
    return bool(sep) and length is not None and len(body) >= int(length.group(1))


def send_huge(port: int, first: bytes, total: int, filler: bytes = b" ") -> tuple[bytes, int, bool]:
    """Send the headers ``first`` and then up to ``total`` body bytes, reading the answer whenever it comes.
    Returns (the answer, body bytes sent, whether the server closed before they were all sent)."""
    sock = connect(port)
    sock.sendall(first)
    sock.setblocking(False)
    block = filler * (1 * MiB // len(filler))
    sent, answer, eof = 0, b"", False
    try:
        for _ in range(100_000):  # bounded; each turn moves data or waits at most 10 s
            readable, writable, _ = select.select([] if eof else [sock], [sock] if sent < total else [], [], 10)
            if not readable and not writable:
                break
            if readable:
                data = sock.recv(64 * 1024)
                eof, answer = not data, answer + data
            if writable:
                view = block[:min(len(block), total - sent)]
                sent += sock.send(view)
            if sent >= total and (eof or complete(answer)):
                break
    except (BrokenPipeError, ConnectionResetError):
        return answer, sent, True
    finally:
        sock.close()
    return answer, sent, False


# ------------------------------------------------------------------------------------------------------
# a refused request's body is not read


def test_a_refused_request_is_answered_without_reading_its_body(served):
    """300 MiB declared to a 404, a 401, two 403s (Origin, Host), a 405 and two 413 routes: each is answered
    at once and the connection closed; the server reads almost none of the body and its memory peak grows by
    less than one body's tenth."""
    assert _get(served.port, "/api/version")[0] == 200
    _post_small(served.port)  # warms the routes' imports up
    before = served.status("VmHWM")
    cases = {
        404: head("POST", "/api/nothing-here", HUGE),
        401: head("POST", "/api/generate", HUGE, token=None),
        403: head("POST", "/api/generate", HUGE, extra="Origin: https://evil.example\r\n"),
        405: head("PUT", "/api/tags", HUGE),
        413: head("POST", "/api/generate", HUGE),
    }
    rebinding = head("POST", "/api/generate", HUGE, host="evil.example")
    openai = head("POST", "/v1/chat/completions", HUGE)
    most = 0
    for status, first in [*cases.items(), (403, rebinding), (413, openai)]:
        answer, sent, closed = send_huge(served.port, first, HUGE)
        most = max(most, sent)
        assert closed and sent < 64 * MiB, f"{status}: {sent:,} of {HUGE:,} body bytes went before the close"
        assert answer_status(answer) == status, answer[:300]
        assert b"connection: close" in answer.lower()
        error = json.loads(answer.partition(b"\r\n\r\n")[2])["error"]  # Ollama's shape; OpenAI's under /v1
        assert error["message"] if first is openai else error
    grown = served.status("VmHWM") - before
    print(f"\nseven refused 300 MiB requests: server peak RSS grew by {grown / MiB:.1f} MiB; "
          f"at most {most / MiB:.1f} MiB sent before the server closed")
    assert grown < 30 * MiB
    assert _get(served.port, "/api/version")[0] == 200  # and the server still answers


def test_a_refused_request_that_expects_100_continue_gets_the_error_instead(served):
    sock = connect(served.port)
    sock.sendall(head("POST", "/api/generate", HUGE, token=None, extra="Expect: 100-continue\r\n"))
    answer = _read_answer(sock)
    assert answer_status(answer) == 401 and b"100 Continue" not in answer
    sock = connect(served.port)  # an accepted one is told to go on
    body = b'{"model":"nothing"}'
    sock.sendall(head("POST", "/api/show", len(body), extra="Expect: 100-continue\r\n"))
    assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
    sock.sendall(body)
    assert answer_status(_read_answer(sock)) == 404


def test_a_chunked_body_is_bounded_while_it_is_read(served):
    sock = connect(served.port)
    sock.sendall(f"POST /api/show HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
                 "Transfer-Encoding: chunked\r\n\r\n".encode())
    sock.setblocking(False)
    chunk, sent, answer = b"100000\r\n" + b" " * 0x100000 + b"\r\n", 0, b""
    try:
        for _ in range(400):  # up to 400 MiB, if nothing stops it
            readable, writable, _ = select.select([sock], [sock], [], 10)
            if readable:
                answer += sock.recv(64 * 1024)
                if complete(answer):
                    break
            if writable:
                sent += sock.send(chunk)
    except (BrokenPipeError, ConnectionResetError):
        pass
    assert sent < 16 * MiB, f"{sent:,} bytes of chunks went before the answer"
    assert answer_status(answer) == 413 and b"1 MiB" in answer


# ------------------------------------------------------------------------------------------------------
# a JSON body's parsed size is bounded


def test_json_of_millions_of_values_is_refused_before_it_is_parsed(tmp_path):
    """57 MiB of ``[{},{},...]`` (19 million objects: 1.5 GB once parsed) under a 64 MiB byte limit: a 413
    that names the value limit; the server's peak grows by about two copies of the body, and its RSS goes
    back to where it was."""
    server = Served(tmp_path, env={"MODELPKG_SERVE_MAX_BODY": str(64 * MiB)})
    try:
        _post_small(server.port)
        body = b"[" + b"{}," * (19 * 1024 * 1024) + b"{}]"
        assert 56 * MiB < len(body) < 64 * MiB
        rss, peak = server.status("VmRSS"), server.status("VmHWM")
        sock = connect(server.port)
        sock.sendall(head("POST", "/api/generate", len(body)) + body)
        answer = _read_answer(sock)
        small = b'{"model":"nothing"}'  # the next request on the connection: the first one's thread is done
        sock.sendall(head("POST", "/api/show", len(small)) + small)
        assert answer_status(_read_answer(sock)) == 404
        grown, after = server.status("VmHWM") - peak, server.status("VmRSS") - rss
        print(f"\n57 MiB of [{{}},...]: server peak RSS grew by {grown / MiB:.1f} MiB, "
              f"RSS afterwards {after / MiB:+.1f} MiB")
        assert answer_status(answer) == 413 and b"JSON values" in answer, answer[:300]
        assert grown < 200 * MiB
        assert after < 16 * MiB
    finally:
        server.close()


def test_the_memory_of_a_large_accepted_body_is_returned(served):
    """10 MiB of JSON within the limits (an 8 MiB prompt, 60,000 messages) parsed three times, each answered
    with an error (no such model): the server's RSS ends within a few MiB of where it began (an error's
    traceback used to keep each parsed body alive until the cyclic garbage collector ran: +55 MiB here)."""
    body = json.dumps({"model": "nothing", "prompt": "x" * (8 * MiB),
                       "messages": [{"role": "user", "content": f"hi {i}"} for i in range(60_000)]}).encode()
    _post_small(served.port)
    sock = connect(served.port)
    rss = served.status("VmRSS")
    for _ in range(3):
        sock.sendall(head("POST", "/api/generate", len(body)) + body)
        assert answer_status(_read_answer(sock)) == 404
    small = b'{"model":"nothing"}'  # the next request on the connection: the last big one's thread is done
    sock.sendall(head("POST", "/api/show", len(small)) + small)
    assert answer_status(_read_answer(sock)) == 404
    after = served.status("VmRSS") - rss
    print(f"\nthree 10 MiB bodies parsed: server RSS afterwards {after / MiB:+.1f} MiB")
    assert after < 16 * MiB


def test_values_inside_strings_do_not_count(served):
    prompt = "[{},]" * 200_000  # a million brackets and commas, all inside one string
    body = json.dumps({"model": "nothing", "prompt": prompt}).encode()
    sock = connect(served.port)
    sock.sendall(head("POST", "/api/generate", len(body)) + body)
    answer = _read_answer(sock)
    assert answer_status(answer) == 404, answer[:300]  # read and parsed: the model is what is missing


def test_json_values_counts_structure_outside_strings():
    assert json_values(b'{"a": [1, 2, {"b": "c"}]}', 100) == 5
    assert json_values(b'{"a": "[,{,]"}', 0) == 1  # above the limit: counted outside the string
    assert json_values(b'{"a": "\\"[,", "b": 1}', 0) == 2  # an escaped quote does not end the string
    assert json_values(b'["unterminated [,,,', 0) == 1
    assert json_values(b'"' + b'\\"' * 100_000, 0) == 0  # an unterminated string of escapes: still linear


# ------------------------------------------------------------------------------------------------------
# slow clients and many connections


def test_slow_clients_cannot_stop_service_under_a_file_descriptor_cap(tmp_path):
    """The server has 64 file descriptors. 100 connections from one address that never finish their
    headers: a few are held (until the header timeout), the rest get a 503 at once; a client from
    another address still gets /api/version; the held ones are closed once their time is up."""
    try:
        probe = socket.socket()
        probe.bind(("127.0.0.2", 0))
        probe.close()
    except OSError as e:
        missing(f"cannot use 127.0.0.2 as a source address: {e}")
    server = Served(tmp_path, token=None, fd_limit=64, env={"MODELPKG_SERVE_HEADER_TIMEOUT": "5"})
    slow: list[socket.socket] = []
    try:
        for _ in range(100):
            try:
                sock = socket.create_connection(("127.0.0.1", server.port), timeout=2,
                                                source_address=("127.0.0.2", 0))
            except TimeoutError:
                break  # the server no longer accepts connections at all
            sock.sendall(b"GET /api/tags HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the blank line
            slow.append(sock)
        refused = _closed(slow, 2)
        assert len(slow) == 100 and len(refused) >= 50, f"{len(refused)} of {len(slow)} slow connections refused"
        answered = [data for data in refused.values() if data]
        assert answered and all(data.startswith(b"HTTP/1.1 503 ") for data in answered), answered[:1]
        start = time.monotonic()
        status, answer = _get(server.port, "/api/version")
        assert status == 200 and answer["modelpkg"]["version"] == _get_version()
        print(f"\n100 slow clients, 64 fds: /api/version answered in {time.monotonic() - start:.2f} s, "
              f"{len(refused)} refused at once")
        held = [sock for sock in slow if sock not in refused]
        assert held, "no slow connection was served at all"
        assert len(_closed(held, 15)) == len(held), "the header timeout did not close the held ones"
    finally:
        for sock in slow:
            sock.close()
        server.close()


def test_a_client_dripping_its_headers_is_cut_off(tmp_path):
    server = Served(tmp_path, token=None, env={"MODELPKG_SERVE_HEADER_TIMEOUT": "1"})
    try:
        sock = connect(server.port)
        request = b"GET /api/tags HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 200
        cut = False
        for byte in request:  # one byte every 50 ms: 10 s in all, if nothing cuts it
            try:
                sock.send(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                cut = True
                break
            if _closed_within(sock, 0.05):
                cut = True
                break
        assert cut, "a client sending one header byte every 50 ms was never cut off"
    finally:
        server.close()


def test_a_stalled_body_times_out(tmp_path):
    server = Served(tmp_path, env={"MODELPKG_SERVE_BODY_TIMEOUT": "1"})
    try:
        sock = connect(server.port)
        sock.sendall(head("POST", "/api/show", 1000) + b'{"model":')  # and nothing more
        answer = _read_answer(sock, timeout=20)
        assert answer_status(answer) == 408 and b"timed out" in answer
    finally:
        server.close()


# ------------------------------------------------------------------------------------------------------
# serve on the network without a token


def _serve(tmp_path: Path, *args: str) -> tuple[str, str]:
    """Start ``modelpkg serve ARGS`` on a free port, stop it; its first stderr line and the rest."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "MODELPKG_HOME": str(tmp_path / "home"),
           "MODELPKG_CONFIG_DIR": str(tmp_path / "cfg")}
    env.pop("MODELPKG_SERVE_TOKEN", None)
    # SIGINT back to its default in the child: a shell that starts a job in the background without job control
    # makes it ignored, and Python then never installs its handler (serve would not stop)
    proc = subprocess.Popen([sys.executable, "-m", "modelpkg", "serve", "--port", "0", *args], env=env,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        first = proc.stderr.readline()
        port = re.search(r":(\d+) ", first)
        assert port, first
        assert _get(int(port.group(1)), "/api/version")[0] == 200  # listening: anything it says is said
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise AssertionError("serve did not stop on SIGINT within 20 s") from None
        # read through the same text stream: communicate(timeout=...) reads the pipe's file descriptor and
        # loses what readline() has already buffered (the warning, when it came in one read with line 1)
        rest = proc.stderr.read()
        assert proc.returncode == 0
    return first, rest


def test_serve_on_every_interface_without_a_token_warns(tmp_path):
    first, rest = _serve(tmp_path, "--host", "0.0.0.0")
    assert "listening on http://0.0.0.0:" in first
    warning = rest.splitlines()[0]
    assert "WARNING" in warning and "without a token" in warning and "anyone" in warning
    assert "--token" in warning and "MODELPKG_SERVE_TOKEN" in warning
    for quiet in (("--host", "127.0.0.1"), ("--host", "0.0.0.0", "--token", TOKEN)):
        first, rest = _serve(tmp_path, *quiet)
        assert "WARNING" not in first + rest, quiet


def test_limits_come_from_the_environment(monkeypatch):
    from modelpkg.base import config

    monkeypatch.setenv("MODELPKG_SERVE_HEADER_TIMEOUT", "2.5")
    monkeypatch.setenv("MODELPKG_SERVE_MAX_CLIENT_CONNECTIONS", "4")
    assert Limits(**config.serve_limits()) == Limits(header_timeout=2.5, max_client_connections=4)
    for bad in ("0", "-1", "ten", "nan", "inf", "1.5"):
        monkeypatch.setenv("MODELPKG_SERVE_MAX_CLIENT_CONNECTIONS", bad)
        with pytest.raises(UsageError, match="MODELPKG_SERVE_MAX_CLIENT_CONNECTIONS"):
            config.serve_limits()


# ------------------------------------------------------------------------------------------------------
# helpers


def _read_answer(sock: socket.socket, timeout: float = 30) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while not complete(data):
        chunk = sock.recv(64 * 1024)
        if not chunk:
            break
        data += chunk
    return data


def _get(port: int, path: str, timeout: float = 10) -> tuple[int, dict]:
    sock = connect(port)
    sock.settimeout(timeout)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
    answer = _read_answer(sock, timeout)
    sock.close()
    return answer_status(answer), json.loads(answer.partition(b"\r\n\r\n")[2])


def _get_version() -> str:
    from modelpkg import __version__

    return __version__


def _post_small(port: int) -> None:
    body = b'{"model":"nothing"}'
    sock = connect(port)
    sock.sendall(head("POST", "/api/show", len(body)) + body)
    assert answer_status(_read_answer(sock)) == 404
    sock.close()


def _closed(socks: list[socket.socket], seconds: float) -> dict[socket.socket, bytes]:
    """Those of ``socks`` the server closes (end of stream or a reset) within ``seconds``, watched together,
    each with what it received before."""
    end, watched = time.monotonic() + seconds, list(socks)
    got: dict[socket.socket, bytes] = dict.fromkeys(socks, b"")
    closed: dict[socket.socket, bytes] = {}
    while watched and (left := end - time.monotonic()) > 0:
        readable, _, _ = select.select(watched, [], [], left)
        for sock in readable:
            try:
                data = sock.recv(64 * 1024, socket.MSG_DONTWAIT)
            except BlockingIOError:
                continue
            except (ConnectionResetError, BrokenPipeError):
                data = b""
            if data:
                got[sock] += data
            else:
                watched.remove(sock)
                closed[sock] = got[sock]
    return closed


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    return sock in _closed([sock], seconds)
