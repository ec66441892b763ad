"""A loopback stand-in for Hugging Face's Ollama-compatible registry, and the CDN its blobs redirect to.

It answers as the Hub does (its docs "Use Ollama with any GGUF Model on Hugging Face Hub"; the answers
quoted in ollama/ollama#14270 and huggingface/hub-docs#2702):

- ``GET /v2/{user}/{repo}/manifests/{tag}`` with ``Accept: application/vnd.docker.distribution.manifest.v2+json``:
  a Docker v2 manifest whose layers are ``application/vnd.ollama.image.model`` (the GGUF) and
  ``.params``; repositories match case-insensitively, the tag is a quantization (case-insensitive,
  matched in the file names as ``-Q4_K_M.gguf`` / ``.Q4_K_M.gguf``) or a file name; ``latest`` is Q4_K_M when
  the repository has it, else its first GGUF;
- refusals as HTTP 400 ``{"error": "..."}``: a sharded tag, a tag the repository lacks, a repository without
  GGUFs; 401 for a private repository without the right token, and for any request with a token it does not
  know (the Hub refuses bad tokens even on public repositories);
- ``GET /v2/.../blobs/<digest>``: the config is served directly, the GGUF is a 302 to the second server
  (``cdn``), with a presigned-looking query; the CDN serves ``Range`` requests.

Both servers record each request's path and ``Authorization`` header, so tests can say which host saw the token.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import re
import threading
from dataclasses import dataclass, field

from modelpkg.core import mediatypes as mt
from registry_env import QuietHandler

SHARDED = ("The specified tag is a sharded GGUF. Ollama does not support this yet. Please use another tag or "
           "\"latest\". Follow this issue for more info: https://github.com/ollama/ollama/issues/5245")
NO_TAG = "The specified tag is not available in the repository. Please use another tag or \"latest\""
NOT_GGUF = "Repository is not GGUF or is not compatible with llama.cpp"
BAD_TOKEN = "Invalid credentials in Authorization header"


@dataclass
class Repo:
    files: dict[str, bytes]  # file name -> bytes (.gguf files are the quantizations)
    private: bool = False


@dataclass
class Seen:
    method: str
    path: str
    authorization: str | None
    accept: str | None = None


@dataclass
class HubState:
    repos: dict[str, Repo] = field(default_factory=dict)  # "user/repo" lowercased
    tokens: set[str] = field(default_factory=set)
    blobs: dict[str, bytes] = field(default_factory=dict)  # digest -> bytes, the config and params
    cdn_blobs: dict[str, bytes] = field(default_factory=dict)  # hex -> bytes, the GGUFs
    hub_seen: list[Seen] = field(default_factory=list)
    cdn_seen: list[Seen] = field(default_factory=list)
    cdn_url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)


def _quant_of(filename: str) -> str:
    stem = re.sub(r"-\d{5}-of-\d{5}$", "", filename[:-5])
    match = re.search(r"[-.]([A-Za-z0-9_]+)$", stem)
    return match.group(1).upper() if match else ""


def _pick(repo: Repo, tag: str) -> tuple[str | None, str | None]:
    """(file name, error): how the Hub resolves a tag."""
    ggufs = [f for f in repo.files if f.endswith(".gguf") and "mmproj" not in f]
    if not ggufs:
        return None, NOT_GGUF
    if tag in repo.files:
        chosen = [tag]
    elif tag.lower() == "latest":
        chosen = [f for f in ggufs if _quant_of(f) == "Q4_K_M"] or ggufs[:1]
    else:
        chosen = [f for f in ggufs if _quant_of(f) == tag.upper()]
    if not chosen:
        return None, NO_TAG
    if re.search(r"-\d{5}-of-\d{5}\.gguf$", chosen[0]):
        return None, SHARDED
    return chosen[0], None


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class _Handler(QuietHandler):
    state: HubState

    def _error(self, status: int, text: str) -> None:
        self._send(status, json.dumps({"error": text}).encode())


class _HubHandler(_Handler):
    def do_GET(self):
        state = self.state
        auth = self.headers.get("Authorization")
        with state.lock:
            state.hub_seen.append(Seen(self.command, self.path, auth, self.headers.get("Accept")))
        match = re.fullmatch(r"/v2/([^/]+)/([^/]+)/(manifests|blobs)/([^/?]+)", self.path)
        if not match:
            return self._error(404, "Not Found")
        user, name, kind, ref = match.groups()
        token = auth[7:] if auth and auth.startswith("Bearer ") else None
        if auth is not None and token not in state.tokens:
            return self._error(401, BAD_TOKEN)
        repo = state.repos.get(f"{user}/{name}".lower())
        if repo is None or (repo.private and token is None):
            return self._send(401, json.dumps({"error": "Repository not found"}).encode(),
                              {"WWW-Authenticate": 'Bearer realm="https://huggingface.co", error="invalid_token"'})
        if kind == "blobs":
            return self._blob(ref)
        if "application/vnd.docker.distribution.manifest.v2+json" not in (self.headers.get("Accept") or ""):
            return self._error(400, "unsupported Accept header")
        filename, error = _pick(repo, ref)
        if error:
            return self._error(400, error)
        self._send(200, self._manifest(repo.files[filename]), content_type=mt.DOCKER_MANIFEST)

    do_HEAD = do_GET

    def _manifest(self, gguf: bytes) -> bytes:
        state = self.state
        config = b'{"model_format":"gguf","model_family":"llama","model_families":["llama"],"model_type":"1K",' \
                 b'"file_type":"F16","architecture":"amd64","os":"linux"}'
        params = b'{"stop":["<|im_end|>"]}'
        with state.lock:
            state.blobs[_digest(config)] = config
            state.blobs[_digest(params)] = params
            state.cdn_blobs[hashlib.sha256(gguf).hexdigest()] = gguf
        manifest = {"schemaVersion": 2, "mediaType": mt.DOCKER_MANIFEST,
                    "config": {"mediaType": mt.DOCKER_CONFIG, "digest": _digest(config), "size": len(config)},
                    "layers": [{"mediaType": mt.OLLAMA_MODEL, "digest": _digest(gguf), "size": len(gguf)},
                               {"mediaType": mt.OLLAMA_PARAMS, "digest": _digest(params), "size": len(params)}]}
        return json.dumps(manifest).encode()

    def _blob(self, digest: str) -> None:
        state = self.state
        if digest in state.blobs:
            return self._send(200, state.blobs[digest], content_type="application/octet-stream")
        hex_ = digest.partition(":")[2]
        if hex_ in state.cdn_blobs:
            return self._send(302, b"", {"Location": f"{state.cdn_url}/repos/{hex_}?X-Amz-Signature=abc123"})
        return self._error(404, "Entry not found")


class _CdnHandler(_Handler):
    def do_GET(self):
        state = self.state
        with state.lock:
            state.cdn_seen.append(Seen(self.command, self.path, self.headers.get("Authorization")))
        match = re.fullmatch(r"/repos/([0-9a-f]{64})\?.*", self.path)
        data = state.cdn_blobs.get(match.group(1)) if match else None
        if data is None:
            return self._error(404, "NoSuchKey")
        ranged = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if ranged:
            start = int(ranged.group(1))
            return self._send(206, data[start:], {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"},
                              content_type="application/octet-stream")
        self._send(200, data, content_type="application/octet-stream")

    do_HEAD = do_GET


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class FakeHub:
    """The Hub and its CDN on two loopback ports. ``endpoint`` is what ``HF_ENDPOINT`` is set to."""

    def __init__(self):
        self.state = HubState()
        self._servers = []
        for handler in (_HubHandler, _CdnHandler):
            cls = type(handler.__name__, (handler,), {"state": self.state})
            server = _Server(("127.0.0.1", 0), cls)
            threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
            self._servers.append(server)
        self.endpoint = f"http://127.0.0.1:{self._servers[0].server_address[1]}"
        self.state.cdn_url = f"http://127.0.0.1:{self._servers[1].server_address[1]}"

    def add(self, name: str, files: dict[str, bytes], *, private: bool = False) -> None:
        self.state.repos[name.lower()] = Repo(files, private)

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
