"""The real Ollama in tests: ``ollama serve`` on a free loopback port with its own models folder and HOME,
and a small front before a registry that answers blob GETs with a 307 to the same registry under another
host name, as a CDN in front of a registry would.

Why the front: Ollama downloads a blob only after a redirect (its downloader asks for the blob without
following redirects and reads the Location header; a plain 200, which CNCF distribution and most
self-hosted registries answer without a CDN, fails: ollama/ollama #9737, #15512). Everything but blob
GETs is passed through unchanged.

Must not import modelpkg (modelpkg is what these peers are checked against).
"""

from __future__ import annotations

import http.client
import http.server
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import requests

from capabilities import require_peer
from registry_env import free_port

STARTUP_TIMEOUT = 30.0
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
              "transfer-encoding", "upgrade", "host"}


def check(result, what: str) -> str:
    """A peer's finished command: it exited 0 (else its output in the failure), and its stdout."""
    assert result.returncode == 0, f"{what} exited {result.returncode}: {result.stdout.decode(errors='replace')}" \
                                   f"\n{result.stderr.decode(errors='replace')}"
    return result.stdout.decode()


def write_modelfile(tmp_path: Path, text: str) -> Path:
    """``text`` as ``tmp_path/mf/Modelfile`` (a folder of its own: Ollama's create reads paths beside it)."""
    folder = tmp_path / "mf"
    folder.mkdir()
    path = folder / "Modelfile"
    path.write_text(text)
    return path


class RedirectFront:
    """A loopback HTTP front for ``upstream`` (host:port): blob GETs get ``307 Location:
    http://localhost:<upstream port><path>``; every other request is relayed. ``redirected`` counts them."""

    def __init__(self, upstream: str):
        self.upstream = upstream
        self.redirected = 0
        self.relayed: list[tuple[str, str, int]] = []
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FrontHandler)
        self._httpd.daemon_threads = True
        self._httpd.owner = self
        self.port = self._httpd.server_address[1]
        self.host = f"127.0.0.1:{self.port}"
        self.other_name = f"localhost:{upstream.rsplit(':', 1)[1]}"
        threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name="redirect-front",
                         daemon=True).start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


class _FrontHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # quiet
        pass

    def _handle(self):
        owner: RedirectFront = self.server.owner
        path = self.path.partition("?")[0]
        if self.command == "GET" and "/blobs/sha256:" in path:
            owner.redirected += 1
            self.send_response(307)
            self.send_header("Location", f"http://{owner.other_name}{self.path}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        conn = http.client.HTTPConnection(owner.upstream, timeout=120)
        try:
            conn.request(self.command, self.path, body=body, headers=headers)
            answer = conn.getresponse()
            data = answer.read()
            owner.relayed.append((self.command, path, answer.status))
            self.send_response(answer.status)
            for key, value in answer.getheaders():
                if key.lower() in HOP_BY_HOP or (key.lower() == "content-length" and self.command != "HEAD"):
                    continue
                if key.lower() == "location" and value.startswith(f"http://{owner.upstream}"):
                    value = value.replace(owner.upstream, owner.host, 1)
                self.send_header(key, value)
            if self.command != "HEAD":  # a HEAD keeps the upstream's Content-Length: the blob's size
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
        finally:
            conn.close()

    do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _handle


class Ollama:
    """A running ``ollama serve`` (``binary``: a name in .peers/bin) with OLLAMA_MODELS and HOME under
    ``directory``; ``cli(*args)`` runs the ``ollama`` CLI against it (or against ``host``)."""

    def __init__(self, binary: str, directory: Path, *, extra_env: dict | None = None):
        self.binary = require_peer(binary)
        self.directory = Path(directory)
        self.models = self.directory / "models"
        self.home = self.directory / "home"
        self.models.mkdir(parents=True, exist_ok=True)
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"
        self.log_path = self.directory / "ollama.log"
        self.env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.home),
                    "OLLAMA_MODELS": str(self.models), "OLLAMA_HOST": self.host, "NO_PROXY": "*",
                    "no_proxy": "*", "OLLAMA_NOPRUNE": "1", **(extra_env or {})}
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen([self.binary, "serve"], env=self.env, stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ollama serve exited {self.process.returncode}:\n{self.log()}")
            try:
                if requests.get(self.url, timeout=1).status_code == 200:
                    return
            except requests.ConnectionError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"ollama serve did not answer within {STARTUP_TIMEOUT:.0f} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def cli(self, *args: str, host: str | None = None, input: bytes | None = None, timeout: float = 300,
            env: dict | None = None) -> subprocess.CompletedProcess:
        full = {**self.env, "OLLAMA_HOST": host or self.host, **(env or {})}
        return subprocess.run([self.binary, *args], env=full, input=input, capture_output=True, timeout=timeout,
                              check=False)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)

    def clear(self) -> None:
        """Forget every model (a fresh models folder), keeping the server."""
        for child in self.models.iterdir():
            shutil.rmtree(child, ignore_errors=True)
