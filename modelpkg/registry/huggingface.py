"""Hugging Face as a registry: ``hf.co/{user}/{repo}[:{quant}]`` and ``huggingface.co/...``, as Ollama pulls them.

What the Hub answers (its docs "Use Ollama with any GGUF Model on Hugging Face Hub", and what Ollama's and
llama.cpp's clients send): ``GET /v2/{user}/{repo}/manifests/{tag}`` with the Docker v2 manifest ``Accept``
header answers a Docker v2 manifest whose layers are ``application/vnd.ollama.image.*`` (weights, template,
params, ...); the Hub picks the GGUF: the tag is a quantization (matched case-insensitively) or a file name,
and ``latest`` is Q4_K_M where the repository has it. Refusals come as HTTP 400 with ``{"error": "..."}``
(a sharded GGUF tag, a tag the repository does not have, a repository without GGUFs); a private, gated or
missing repository is a 401 without a token. ``GET /v2/.../blobs/<digest>`` redirects to a CDN host.

What modelpkg does with that:

- both host names talk to ``HF_ENDPOINT`` (``config.hf_endpoint()``, default ``https://huggingface.co``, as
  huggingface_hub and llama.cpp use), so a mirror or a test server stands in for the Hub, and ``hf.co``'s own
  redirect to ``huggingface.co`` never strips the token;
- the token is llama.cpp's and RamaLama's: ``HF_TOKEN`` (or ``HUGGING_FACE_HUB_TOKEN``), else the file
  ``hf auth login`` writes (``config.hf_token_path()``: ``$HF_TOKEN_PATH``, else ``$HF_HOME/token``), sent as
  ``Authorization: Bearer`` to that endpoint only: the transport drops it at the redirect to the CDN (another
  host), and other registries never see it. Ollama's own key-signed auth for private repositories (the
  Hub accepts Ollama's public key) is not implemented;
- the Hub's ``{"error": ...}`` answers become one line each (``raise_for``); pushing is refused.

Adapter: HTTP and one small file read. Imports the core, ``base.config`` and the registry's ``client``,
``auth`` and ``transport``; never the store.
"""

from __future__ import annotations

import json
from pathlib import Path

import requests

from modelpkg.base import config
from modelpkg.core import mediatypes as mt
from modelpkg.core.digest import Digest
from modelpkg.core.errors import AuthError, InvalidInputError, NotFoundError, RegistryError
from modelpkg.core.manifest import Descriptor
from modelpkg.core.reference import is_huggingface
from modelpkg.registry.auth import Authenticator
from modelpkg.registry.client import RegistryClient
from modelpkg.registry.transport import MAX_ERROR_BODY, is_loopback, read_capped

MAX_TOKEN_FILE = 4096
MAX_HF_ERROR = 400  # characters of the Hub's error text kept in a message (its sharded-GGUF text is ~190)
TOKEN_HINT = "check HF_TOKEN (or run 'hf auth login'); a fine-grained token needs read access to the repository"

__all__ = ["HuggingFaceClient", "Token", "find_token", "is_huggingface"]


class Token:
    """A Hugging Face access token and where it came from; its ``repr`` hides it."""

    def __init__(self, value: str, source: str):
        self.value = value
        self.source = source

    def __repr__(self) -> str:
        return f"Token(source={self.source!r}, secret=<hidden>)"

    __str__ = __repr__


def find_token() -> Token | None:
    """``HF_TOKEN`` / ``HUGGING_FACE_HUB_TOKEN``, else the token file ``hf auth login`` writes; None if neither."""
    value = config.hf_token()
    if value:
        return Token(value, "HF_TOKEN")
    path = config.hf_token_path()
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_TOKEN_FILE + 1)
    except OSError:
        return None
    if len(data) > MAX_TOKEN_FILE:
        return None
    text = data.decode("utf-8", "replace").strip()
    return Token(text, str(path)) if text and text.isprintable() and " " not in text else None


class _HubAuth(Authenticator):
    """The token up front, as llama.cpp and RamaLama send it, and nothing else: the Hub's 401 challenge is for
    Ollama's key-signed flow, which is not implemented, so a 401 is final."""

    def __init__(self, host: str, token: Token | None, send, *, registry_secure: bool):
        super().__init__(host, None, send, registry_secure=registry_secure)
        self.token = token

    def header(self, scopes) -> str | None:
        return "Bearer " + self.token.value if self.token is not None else None

    def handle_401(self, www_authenticate: str, scopes, sent: str | None) -> bool:
        return False


class HuggingFaceClient(RegistryClient):
    """The Hub's Ollama-compatible registry for ``host`` (``hf.co`` or ``huggingface.co``), at ``endpoint``."""

    manifest_accept = mt.DOCKER_MANIFEST  # what Ollama sends; the Hub answers other Accept values differently

    def __init__(self, host: str, *, endpoint: str | None = None, token: Token | None = None,
                 insecure: bool = False, **options):
        endpoint = (endpoint or config.hf_endpoint()).rstrip("/")
        scheme, _, netloc = endpoint.partition("://")
        netloc = netloc.split("/", 1)[0]
        if scheme not in ("http", "https") or not netloc:
            raise InvalidInputError(f"HF_ENDPOINT is not an http(s) URL: {endpoint[:200]!r}",
                                    "set it like https://huggingface.co, or unset it")
        if scheme == "http" and not (insecure or is_loopback(netloc)):
            raise InvalidInputError(f"HF_ENDPOINT uses plain http: {endpoint[:200]!r}",
                                    "use https, or pass --insecure to allow plain http")
        super().__init__(netloc, insecure=scheme == "http", ca_bundle=options.pop("ca_bundle", None), **options)
        self.host = host  # messages name the model's host; requests go to the endpoint
        self.scheme = scheme
        self.base = f"{endpoint}/v2/"
        self.auth = _HubAuth(host, token, self._auth_send, registry_secure=scheme == "https")

    # ----------------------------------------------------------------------------------------------------
    # the Hub's errors

    def raise_for(self, response: requests.Response, *, kind: str, name: str, subject: str | None = None) -> None:
        status = response.status_code
        text = _hub_error(response) if response.request is None or response.request.method != "HEAD" else ""
        who = subject or name
        if status == 401:
            response.close()
            if self.auth.token is not None:
                raise AuthError(f"Hugging Face refused the token ({self.auth.token.source}) for {who}", TOKEN_HINT)
            raise AuthError(f"{who} needs a Hugging Face login: a private or gated repository, or none by that name",
                            "check the name; for a private or gated one set HF_TOKEN or run 'hf auth login'")
        if status == 403:
            response.close()
            raise AuthError(f"Hugging Face denied access to {who}{': ' + text if text else ''}",
                            "a gated model: accept its terms on its page on huggingface.co with the token's account")
        if status == 400 and text:
            response.close()
            if "shard" in text.lower():
                raise InvalidInputError(f"{who}: {text}", "pick a single-file quantization tag of this repository")
            raise NotFoundError(f"{kind} not found: {name} (Hugging Face: {text})",
                                "the tag is a quantization (Q4_K_M, Q8_0, ...) or a .gguf file name of the repository")
        if status == 404:
            response.close()
            raise NotFoundError(f"{kind} not found: {name}",
                                "check the user and repository names on huggingface.co, and the tag")
        if text and status != 200:
            response.close()
            raise RegistryError(f"Hugging Face refused {kind} {name} (HTTP {status}): {text}",
                                "the Hub may be overloaded; try again later" if status >= 500 else None,
                                status=status)
        super().raise_for(response, kind=kind, name=name, subject=subject)

    # ----------------------------------------------------------------------------------------------------
    # a pull-only registry

    def _read_only(self, *_args, **_kwargs):
        raise InvalidInputError(f"{self.host} cannot be pushed to: Hugging Face serves GGUF repositories for "
                                "pulling only", "upload GGUF files with 'hf upload', or push to an OCI registry")

    def put_manifest(self, repo: str, reference: str, data: bytes, media_type: str, *,
                     name: str | None = None) -> Digest:
        return self._read_only()

    def upload_blob(self, repo: str, desc: Descriptor, path: Path, *args, **kwargs):
        return self._read_only()

    def mount_blob(self, repo: str, digest: Digest, from_repo: str) -> str | None:
        return self._read_only()


def _hub_error(response: requests.Response) -> str:
    """The Hub's ``{"error": "..."}`` text (or the first OCI error's message), read with a cap; "" if none."""
    try:
        if response._content is not False:
            data = (response.content or b"")[:MAX_ERROR_BODY]
        else:
            data = read_capped(response, MAX_ERROR_BODY) or b""
        obj = json.loads(data.decode("utf-8"))
    except Exception:  # noqa: BLE001 - an unreadable error body still leaves the status
        return ""
    text = ""
    if isinstance(obj, dict):
        if isinstance(obj.get("error"), str):
            text = obj["error"]
        elif isinstance(obj.get("errors"), list) and obj["errors"] and isinstance(obj["errors"][0], dict):
            text = str(obj["errors"][0].get("message") or "")
    text = " ".join(text.split())
    return "".join(c for c in text if c.isprintable())[:MAX_HF_ERROR]


def client(host: str, *, insecure: bool = False, ca_bundle: str | None = None, **options) -> HuggingFaceClient:
    """The client for ``host`` with the token found (``find_token``) and ``HF_ENDPOINT``."""
    return HuggingFaceClient(host, token=find_token(), insecure=insecure, ca_bundle=ca_bundle, **options)
