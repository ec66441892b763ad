"""An OCI distribution client over ``requests``: the transport, blob and manifest operations.

Why not oras-py (which the tests use as an independent client): it reads a whole blob into memory on
push (``put_upload`` does ``fd.read()``), never checks a pulled blob's or manifest's digest, has no resume
(no ``Range``, no partial files), sets no timeouts (a dead connection hangs for ever), retries on HTTP 500
only and ignores ``Retry-After``, and caches one token per client instead of one per scope, so a pull
from one repository and a push or mount to another fight over it. This client streams both ways with a
bounded memory footprint, verifies every byte, resumes, and keeps one token per scope.

What it does at every request (OCI distribution-spec; Docker token spec):

- a timeout, always (connect and between-bytes read);
- bounded retries with exponential backoff and full jitter on connection errors, 5xx and 429 (honouring
  ``Retry-After``); never on other 4xx, except one re-authentication on 401;
- redirects followed by hand: ``Authorization`` goes only to the registry's own scheme and host, so a
  blob served from S3/CDN presigned URLs never sees the registry token;
- registry errors keep their spec code (``MANIFEST_UNKNOWN``, ``DENIED``, ...) on the raised
  ``ModelpkgError`` (``.code``, ``.status``) and become one message naming the subject, with a hint;
  URLs in messages carry no query string (upload states and signatures stay out of logs).

Plain http is used only for loopback hosts or with ``insecure=True``; TLS is verified otherwise, against
``ca_bundle`` when given.

Adapter: HTTP. Imports the pure core, ``fsutil``, ``progress`` and the auth modules; never the store
(callers pass paths).
"""

from __future__ import annotations

import email.utils
import ipaddress
import os
import random
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import quote, urljoin, urlsplit

import requests

from modelpkg.base import fsutil
from modelpkg.core import mediatypes as mt
from modelpkg.core.digest import Digest, sha256
from modelpkg.core.errors import (
    AuthError,
    IntegrityError,
    InvalidInputError,
    ModelpkgError,
    NetworkError,
    NotFoundError,
    RegistryError,
)
from modelpkg.core.manifest import MAX_MANIFEST_BYTES, Descriptor
from modelpkg.core.progress import NullProgress, Progress
from modelpkg.registry.auth import Authenticator, safe_url, scope
from modelpkg.registry.download import (
    SPLIT_BELOW,
    BodyReader,
    Interrupted,
    PartDownload,
    Probe,
    RetryBudget,
    TooLong,
    append_hashing,
    range_start,
    resume_state,
)
from modelpkg.registry.credentials import Credential

DEFAULT_TIMEOUT = (15.0, 60.0)  # (connect, read): seconds to connect, and at most between two reads
DEFAULT_RETRIES = 5
MAX_RETRY_AFTER = 60.0
MAX_BACKOFF = 20.0
MAX_REDIRECTS = 10
MAX_ERROR_BODY = 64 * 1024
UPLOAD_CHUNK = 1024 * 1024
DEFAULT_PATCH_CHUNK = 8 * 1024 * 1024
PART_THRESHOLD = 256 * 1024 * 1024  # blobs from this size download as concurrent ranged parts
PART_COUNT = 4
USER_AGENT = "modelpkg/0.1 (+https://github.com/modelpkg)"
MANIFEST_ACCEPT = ", ".join((mt.OCI_MANIFEST, mt.OCI_INDEX, mt.DOCKER_MANIFEST, mt.DOCKER_MANIFEST_LIST))
_RETRY_STATUS = {429, 500, 502, 503, 504}
_REDIRECTS = {301, 302, 303, 307, 308}


def is_loopback(host: str) -> bool:
    """``localhost``, ``*.localhost``, 127.0.0.0/8 and ::1, with or without a port."""
    if host.startswith("[") and "]" in host:
        name = host[1:host.index("]")]
    elif host.count(":") == 1:
        name = host.split(":", 1)[0]
    else:
        name = host
    name = name.lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc.lower()


def _tag(error: ModelpkgError, code: str | None, status: int | None) -> ModelpkgError:
    """Every registry-born error carries the spec code and HTTP status, whatever its class."""
    error.code = code  # type: ignore[attr-defined]
    error.status = status  # type: ignore[attr-defined]
    return error


class _FileBody:
    """A request body streamed from a file region: ``len()`` gives requests its Content-Length, iteration
    hands urllib3 1 MiB chunks (a file object would be sent in 16 KiB blocks)."""

    def __init__(self, path: Path, start: int, length: int, progress: Progress, task: str):
        self.path, self.start, self.length = path, start, length
        self.progress, self.task = progress, task

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[bytes]:
        with open(self.path, "rb") as f:
            f.seek(self.start)
            left = self.length
            while left > 0:
                chunk = f.read(min(UPLOAD_CHUNK, left))
                if not chunk:
                    raise IntegrityError(f"{self.path} became shorter while it was being uploaded")
                left -= len(chunk)
                self.progress.advance(self.task, len(chunk))
                yield chunk


@dataclass(frozen=True)
class UploadResult:
    digest: Digest
    how: str  # "exists", "mounted", "uploaded"


class RegistryClient:
    """One registry host. Thread-safe: pull's workers share one client (and its token cache)."""

    def __init__(self, host: str, *, insecure: bool = False, credentials: Credential | None = None,
                 ca_bundle: str | os.PathLike | None = None, timeout: tuple[float, float] | float = DEFAULT_TIMEOUT,
                 session: requests.Session | None = None, retries: int = DEFAULT_RETRIES, backoff: float = 0.5,
                 sleep: Callable[[float], None] = time.sleep):
        self.host = host
        self.insecure = insecure
        # plain http for loopback (as Docker treats localhost) or when asked; a CA bundle says the registry
        # speaks TLS, so it is used even on loopback
        self.scheme = "http" if insecure or (is_loopback(host) and not ca_bundle) else "https"
        # Docker Hub's API lives on registry-1.docker.io (distribution/reference normalize.go)
        endpoint = "registry-1.docker.io" if host in ("docker.io", "index.docker.io") else host
        self.base = f"{self.scheme}://{endpoint}/v2/"
        self.timeout = timeout
        self.verify: bool | str = str(ca_bundle) if ca_bundle else True
        self.retries = retries
        self.backoff = backoff
        self._sleep = sleep
        self._owns_session = session is None
        if session is None:
            session = requests.Session()
            adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=16, max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
        self.session = session
        self.auth = Authenticator(host, credentials, self._auth_send, registry_secure=self.scheme == "https")
        self._no_ranges = False
        self.part_threshold = PART_THRESHOLD  # what is left of a blob from this size may be split into parts
        self.split_below = SPLIT_BELOW  # ... when one stream moves fewer bytes/s than this (inf: split at once)
        self.warnings: list[str] = []
        self._lock = threading.Lock()

    def close(self) -> None:
        if self._owns_session:
            self.session.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ----------------------------------------------------------------------------------------------------
    # transport

    def url(self, repo: str, *parts: str) -> str:
        return self.base + repo + "/" + "/".join(quote(p, safe=":@") for p in parts)

    def _raw_send(self, method: str, url: str, headers: dict[str, str], body: Callable[[], Any] | None,
                  stream: bool, params=None) -> requests.Response:
        """One request, redirects followed by hand (OCI distribution-spec "API": MUST NOT forward
        Authorization across host boundaries). Network failures become NetworkError."""
        headers = {"User-Agent": USER_AGENT, **headers}
        origin = _origin(url)
        for _ in range(MAX_REDIRECTS + 1):
            try:
                response = self.session.request(method, url, headers=headers, params=params,
                                                data=body() if body else None, stream=stream,
                                                timeout=self.timeout, verify=self.verify, allow_redirects=False)
            except requests.exceptions.SSLError as e:
                raise NetworkError(f"TLS connection to {urlsplit(url).netloc} failed (handshake or certificate)",
                                   "if it uses a private CA, pass --ca-bundle FILE; if it serves plain http, "
                                   "use --insecure") from e
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                    requests.exceptions.ChunkedEncodingError) as e:
                if _unresolvable(e):  # a name that does not resolve will not resolve in a second either
                    raise NetworkError(f"cannot resolve the registry host {urlsplit(url).hostname}",
                                       "check the name (and your DNS or proxy settings)") from e
                raise _Retryable(f"cannot reach {urlsplit(url).netloc}: {_reason(e)}") from e
            except requests.exceptions.InvalidURL as e:
                raise InvalidInputError(f"invalid registry URL for {urlsplit(url).netloc}") from e
            except requests.exceptions.RequestException as e:
                raise NetworkError(f"request to {urlsplit(url).netloc} failed: {_reason(e)}") from e
            if response.status_code not in _REDIRECTS or "Location" not in response.headers:
                self._note_warnings(response)
                return response
            target = urljoin(url, response.headers["Location"])
            response.close()
            scheme = urlsplit(target).scheme
            if scheme not in ("http", "https"):
                raise RegistryError(f"{self.host} redirected to a non-http URL", status=response.status_code)
            if scheme == "http" and urlsplit(url).scheme == "https":
                raise RegistryError(f"{self.host} redirected from https to plain http ({safe_url(target)})",
                                    "refusing to downgrade the connection", status=response.status_code)
            if _origin(target) != origin:
                headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            if response.status_code == 303 or (response.status_code in (301, 302) and method not in ("GET", "HEAD")):
                method, body = ("HEAD" if method == "HEAD" else "GET"), None
            url, params = target, None
        raise RegistryError(f"{self.host}: too many redirects")

    def _auth_send(self, method: str, url: str, *, headers=None, data=None, params=None) -> requests.Response:
        """For the authenticator: a token request with retries, the body read with a cap."""

        def once():
            response = self._raw_send(method, url, headers or {}, (lambda: data) if data is not None else None,
                                      stream=True, params=params)
            if response.status_code in _RETRY_STATUS:
                raise _RetryableResponse(response)
            return response

        response = self._with_retries(once, f"the token service of {self.host}")
        try:
            response._content = response.raw.read(1024 * 1024 + 1, decode_content=True)
        except Exception as e:  # noqa: BLE001
            raise NetworkError(f"the token service of {self.host} broke off its answer") from e
        finally:
            response.close()
        return response

    def _with_retries(self, attempt: Callable[[], requests.Response], what: str) -> requests.Response:
        last: Exception | None = None
        for n in range(self.retries + 1):
            try:
                return attempt()
            except _RetryableResponse as e:
                last = e
                response = e.response
                if n == self.retries:
                    return response
                delay = self._retry_after(response) if response.status_code in (429, 503) else None
                response.close()
                self._sleep(delay if delay is not None else self._backoff(n))
            except _Retryable as e:
                last = e
                if n == self.retries:
                    break
                self._sleep(self._backoff(n))
        raise NetworkError(f"{last} (after {self.retries + 1} attempts)", "check the network and the registry, "
                           "then run the command again: downloads resume where they stopped") from last

    def _backoff(self, n: int) -> float:
        return random.uniform(0, min(MAX_BACKOFF, self.backoff * (2 ** n)))  # "full jitter"

    @staticmethod
    def _retry_after(response: requests.Response) -> float | None:
        value = response.headers.get("Retry-After")
        if not value:
            return None
        try:
            seconds = float(value)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value)
                seconds = when.timestamp() - time.time()
            except (TypeError, ValueError):
                return None
        return min(max(seconds, 0.0), MAX_RETRY_AFTER)

    def _note_warnings(self, response: requests.Response) -> None:
        # distribution-spec "Warnings": show, deduplicated, never act on them
        for value in response.headers.get("Warning", "").split(",") if response.headers.get("Warning") else ():
            text = value.strip()
            if text.startswith("299") and text not in self.warnings:
                with self._lock:
                    self.warnings.append(text)

    def request(self, method: str, url: str, *, scopes: tuple[str, ...] = (), headers: dict | None = None,
                body: Callable[[], Any] | None = None, stream: bool = False, retry: bool = True
                ) -> requests.Response:
        """A registry request with auth, retries and redirects. Returns any final response; callers check
        the status (``raise_for``)."""
        headers = dict(headers or {})
        reauthed = False
        while True:
            sent = self.auth.header(scopes) if _origin(url) == _origin(self.base) else None
            if sent:
                headers["Authorization"] = sent
            else:
                headers.pop("Authorization", None)

            def once():
                response = self._raw_send(method, url, headers, body, stream)
                if retry and response.status_code in _RETRY_STATUS:
                    raise _RetryableResponse(response)
                return response

            if retry:
                response = self._with_retries(once, self.host)
            else:
                try:
                    response = once()
                except _Retryable as e:
                    raise NetworkError(str(e), "check the network and the registry, then try again") from e
            if response.status_code == 401 and not reauthed:
                challenge = response.headers.get("WWW-Authenticate", "")
                response.close()
                reauthed = True
                if self.auth.handle_401(challenge, scopes, sent):
                    continue
            return response

    # ----------------------------------------------------------------------------------------------------
    # errors

    def raise_for(self, response: requests.Response, *, kind: str, name: str, subject: str | None = None) -> None:
        """Turn a failed response into one clear ``ModelpkgError`` naming ``kind`` ``name``; auth errors name
        ``subject`` (the model being pulled or pushed) when given."""
        status = response.status_code
        code, detail = None, ""
        if response.request is not None and response.request.method != "HEAD":
            code, detail = _error_body(response)
        response.close()
        host = self.host
        who = subject or name
        if status == 404 or code in ("MANIFEST_UNKNOWN", "NAME_UNKNOWN", "BLOB_UNKNOWN"):
            raise _tag(NotFoundError(f"{kind} not found: {name}",
                                     "check the name and tag; 'modelpkg list' shows local models"), code, status)
        if status == 401:
            if self.auth.credential is None:
                error = AuthError(f"authentication required for {who}", f"run 'modelpkg login {host}'")
            elif self.auth.scheme == "bearer":
                error = AuthError(f"access denied to {who}",
                                  f"check that your account ({self.auth.credential.username or 'token'}) may use "
                                  "this repository")
            else:
                error = AuthError(f"wrong username or password for {host}", f"run 'modelpkg login {host}'")
            raise _tag(error, code or "UNAUTHORIZED", status)
        if status == 403 or code == "DENIED":
            raise _tag(AuthError(f"access denied to {who}",
                                 f"check that your account may use this repository ('modelpkg login {host}')"),
                       code or "DENIED", status)
        if status == 429:
            raise _tag(RegistryError(f"{host} is rate-limiting requests (too many requests)",
                                     "wait a few minutes, or log in for a higher limit", code=code, status=status),
                       code or "TOOMANYREQUESTS", status)
        text = f": {detail[:200]}" if detail else ""
        label = f"{code}" if code else f"HTTP {status}"
        hint = "the registry may be overloaded; try again later" if status >= 500 else None
        raise RegistryError(f"{host} refused {kind} {name} ({label}){text}", hint, code=code, status=status)

    # ----------------------------------------------------------------------------------------------------
    # ping and login

    def ping(self) -> int:
        """``GET /v2/``: the status the registry answers after auth (200 means usable)."""
        response = self.request("GET", self.base)
        status = response.status_code
        response.close()
        return status

    def check_auth(self) -> str:
        """Check the client's credentials against the registry; returns how ("token", "basic" or "none")."""
        response = self.request("GET", self.base)
        status = response.status_code
        response.close()
        if status == 200:
            return self.auth.scheme or "none"
        if status == 401:
            if self.auth.credential is None:
                raise AuthError(f"{self.host} requires a username and password", "pass --username")
            raise AuthError(f"wrong username or password for {self.host}", "check them and try again")
        if status == 404:
            raise RegistryError(f"{self.host} does not answer /v2/: is it an OCI registry?", status=status)
        self.raise_for(response, kind="registry", name=self.host)
        return "none"

    # ----------------------------------------------------------------------------------------------------
    # manifests

    def get_manifest(self, repo: str, reference: str, *, name: str | None = None) -> tuple[bytes, str, Digest]:
        """Fetch a manifest or index: its exact bytes (at most MAX_MANIFEST_BYTES), media type and digest.

        The digest is checked against the reference when it is one, else against ``Docker-Content-Digest``.
        """
        name = name or f"{self.host}/{repo}{'@' if reference.startswith('sha256:') else ':'}{reference}"
        for attempt in range(self.retries + 1):
            response = self.request("GET", self.url(repo, "manifests", reference), scopes=(scope(repo, "pull"),),
                                    headers={"Accept": MANIFEST_ACCEPT}, stream=True)
            if response.status_code != 200:
                self.raise_for(response, kind="model", name=name)
            try:
                data = _read_capped(response, MAX_MANIFEST_BYTES)
                break
            except (requests.RequestException, OSError, _urllib3_errors()) as e:  # the body broke off: ask again
                if attempt == self.retries:
                    raise NetworkError(f"the manifest of {name} kept arriving incomplete: {_reason(e)}",
                                       "check the network and the registry, then run the command again") from e
                self._sleep(self._backoff(attempt))
            finally:
                response.close()
        if data is None:
            raise RegistryError(f"the manifest of {name} is larger than {MAX_MANIFEST_BYTES} bytes",
                                "modelpkg refuses oversized manifests", code="MANIFEST_INVALID", status=200)
        media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        digest = Digest.of(data)
        expected = None
        if reference.startswith("sha256:"):
            expected = reference
        elif response.headers.get("Docker-Content-Digest", "").startswith("sha256:"):
            expected = response.headers["Docker-Content-Digest"].strip()
        if expected is not None and str(digest) != expected:
            raise IntegrityError(f"the manifest of {name} does not match its digest (expected {expected}, got {digest})")
        return data, media_type, digest

    def put_manifest(self, repo: str, reference: str, data: bytes, media_type: str, *, name: str | None = None) -> Digest:
        """Upload a manifest's exact bytes; checks the digest the registry reports."""
        name = name or f"{self.host}/{repo}:{reference}"
        digest = Digest.of(data)
        response = self.request("PUT", self.url(repo, "manifests", reference), scopes=(scope(repo, "pull", "push"),),
                                headers={"Content-Type": media_type}, body=lambda: data)
        if response.status_code not in (200, 201):
            self.raise_for(response, kind="manifest for", name=name)
        reported = response.headers.get("Docker-Content-Digest", "").strip()
        response.close()
        if reported and reported != str(digest):
            raise IntegrityError(f"{self.host} stored the manifest of {name} as {reported}, not {digest}",
                                 "the registry changed the manifest; it may not support this media type")
        return digest

    # ----------------------------------------------------------------------------------------------------
    # blobs: existence

    def head_blob(self, repo: str, digest: Digest, *, scopes: tuple[str, ...] | None = None,
                  subject: str | None = None) -> int | None:
        """The blob's size if ``repo`` has it, else None."""
        response = self.request("HEAD", self.url(repo, "blobs", str(digest)),
                                scopes=scopes or (scope(repo, "pull"),))
        if response.status_code == 404:
            response.close()
            return None
        if response.status_code != 200:
            self.raise_for(response, kind="blob", name=f"{self.host}/{repo}@{digest}", subject=subject)
        response.close()
        try:
            return int(response.headers.get("Content-Length", "-1"))
        except ValueError:
            return -1

    # ----------------------------------------------------------------------------------------------------
    # blobs: download

    def download_blob(self, repo: str, desc: Descriptor, dest_partial: Path, progress: Progress | None = None,
                      task: str | None = None, *, parts: int = PART_COUNT, subject: str | None = None) -> None:
        """Download ``desc`` into ``dest_partial``, resuming what is there; verified and fsynced on return.

        On return the file holds exactly the blob. A prefix already in ``dest_partial`` is re-hashed and the
        rest asked for with ``Range``; only a 206 whose Content-Range starts there is appended to,
        anything else starts over. A blob starts as one stream; when ``part_threshold`` bytes or more are
        left and the stream proves slower than ``split_below`` bytes/s (one connection is the bottleneck),
        the rest is fetched as ``parts`` concurrent ranged requests. Raises ``IntegrityError`` (and removes
        the file) when the bytes do not match the digest twice in a row.
        """
        progress = progress or NullProgress()
        task = task or desc.digest.short
        name = f"{self.host}/{repo}@{desc.digest}"
        url = self.url(repo, "blobs", str(desc.digest))
        scopes = (scope(repo, "pull"),)
        tries = RetryBudget(self, f"the download of blob {desc.digest.short} from {self.host}")
        mismatches = 0
        counted = [0]  # bytes reported to progress: set back to the kept prefix after an interruption
        progress = _CountingProgress(progress, counted)
        split = self.split_below == float("inf")
        while True:
            offset, hasher = resume_state(dest_partial, desc.size)
            if offset != counted[0]:
                progress.advance(task, offset - counted[0])
            try:
                if offset < desc.size:
                    can_split = parts > 1 and desc.size - offset >= self.part_threshold and not self._no_ranges
                    if can_split and split:
                        PartDownload(self, url, scopes, desc, dest_partial, offset, hasher, progress, task,
                                     parts, name, subject).run()
                    else:
                        probe = Probe(self.split_below) if can_split else None
                        hasher = self._download_stream(url, scopes, desc, dest_partial, offset, hasher,
                                                       progress, task, name, subject, probe)
                        if hasher is None:
                            split = True  # too slow for one connection: the rest comes in ranged parts
                            continue
                actual = Digest(hasher.hexdigest())
                if actual == desc.digest:
                    return
                fsutil.remove(dest_partial)
                mismatches += 1
                if mismatches >= 2:
                    raise IntegrityError(f"blob {desc.digest.short} of {name.split('@')[0]} does not match its "
                                         f"digest (got {actual})",
                                         "the registry or a proxy corrupts data; nothing was stored")
            except Interrupted as e:
                tries.failed(e, offset)  # a stream that keeps moving is resumed

    def _blob_get(self, url: str, scopes, headers: dict, name: str, subject: str | None = None) -> requests.Response:
        response = self.request("GET", url, scopes=scopes, headers=headers, stream=True)
        if response.status_code not in (200, 206):
            self.raise_for(response, kind="blob", name=name, subject=subject)
        return response

    def _download_stream(self, url, scopes, desc, dest, offset, hasher, progress, task, name, subject, probe=None):
        """Stream the blob from ``offset`` into ``dest``; returns the hasher over the whole file (a new one
        when the registry ignored Range and the download started over), or None when ``probe`` stopped
        the stream as too slow (what arrived is kept in ``dest``)."""
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        response = self._blob_get(url, scopes, headers, name, subject)
        try:
            if offset and not (response.status_code == 206 and range_start(response) == offset):
                # the registry ignored Range (or answered another range): start over from byte 0
                fsutil.remove(dest)
                progress.advance(task, -offset)
                offset, hasher = 0, sha256()
                if response.status_code == 206:
                    response.close()
                    response = self._blob_get(url, scopes, {"Accept-Encoding": "identity"}, name, subject)
            if offset == 0 and response.status_code == 206:
                raise RegistryError(f"{self.host} answered a partial blob to a full request", status=206)
            length = response.headers.get("Content-Length")
            if length is not None and length.isdigit() and offset + int(length) != desc.size:
                raise IntegrityError(f"blob {desc.digest.short} from {self.host} has size {offset + int(length)}, "
                                     f"the manifest says {desc.size}")
            body = BodyReader(response, desc.size - offset)
            try:
                if append_hashing(body, dest, hasher, progress, task, fresh=offset == 0, probe=probe):
                    return None
                body.check_end()
            except TooLong as e:
                fsutil.remove(dest)
                raise IntegrityError(f"blob {desc.digest.short} from {self.host} is larger than the manifest says "
                                     f"({desc.size} bytes)", "nothing was stored") from e
            if body.remaining:
                raise Interrupted(f"the connection closed {body.remaining} bytes early")
            return hasher
        finally:
            response.close()

    # ----------------------------------------------------------------------------------------------------
    # blobs: upload

    def mount_blob(self, repo: str, digest: Digest, from_repo: str) -> str | None:
        """Try a cross-repository mount; returns None when mounted, else an upload URL to continue with."""
        scopes = (scope(repo, "pull", "push"), scope(from_repo, "pull"))
        target = self.url(repo, "blobs", "uploads", "") + f"?mount={digest}&from={quote(from_repo, safe='/')}"
        response = self.request("POST", target, scopes=scopes, headers={"Content-Length": "0"})
        if response.status_code == 201:
            response.close()
            return None
        if response.status_code == 202 and response.headers.get("Location"):
            response.close()
            return urljoin(self.base, response.headers["Location"])
        response.close()
        return ""  # denied or not supported: the caller starts a normal upload

    def _start_upload(self, repo: str, name: str, subject: str | None = None) -> tuple[str, int]:
        response = self.request("POST", self.url(repo, "blobs", "uploads", ""), scopes=(scope(repo, "pull", "push"),),
                                headers={"Content-Length": "0"})
        if response.status_code != 202 or not response.headers.get("Location"):
            self.raise_for(response, kind="upload of", name=name, subject=subject)
        response.close()
        try:
            min_chunk = int(response.headers.get("OCI-Chunk-Min-Length", "0"))
        except ValueError:
            min_chunk = 0
        return urljoin(self.base, response.headers["Location"]), min_chunk

    def upload_blob(self, repo: str, desc: Descriptor, path: Path, progress: Progress | None = None,
                    mount_from: str | None = None, *, task: str | None = None, chunked: bool = False,
                    chunk_size: int = DEFAULT_PATCH_CHUNK, subject: str | None = None) -> UploadResult:
        """Upload the file ``path`` as ``desc`` (streamed, never read whole into memory).

        With ``mount_from`` a cross-repository mount is tried first. The default is a monolithic
        POST + PUT; ``chunked`` sends PATCHes of ``chunk_size`` (at least ``OCI-Chunk-Min-Length``),
        recovering from 416 through the upload's status. A broken PATCH resumes the same session from the
        offset the registry reports; a broken PUT, or a session the registry no longer knows, starts a new
        one. Only breaks that got no further than an earlier one count against the retries.
        """
        progress = progress or NullProgress()
        task = task or desc.digest.short
        name = f"{self.host}/{repo}@{desc.digest}"
        location = None
        if mount_from and mount_from != repo:
            location = self.mount_blob(repo, desc.digest, mount_from)
            if location is None:
                progress.advance(task, desc.size)
                return UploadResult(desc.digest, "mounted")
        tries = RetryBudget(self, f"the upload of blob {desc.digest.short} to {self.host}",
                            "check the network and run the command again")
        while True:
            min_chunk = 0
            if not location:
                location, min_chunk = self._start_upload(repo, name, subject)
            sent_before = [0]
            counting = _CountingProgress(progress, sent_before)
            try:
                if chunked:
                    self._upload_chunked(repo, desc, path, location, max(chunk_size, min_chunk), counting, task,
                                         name, tries)
                else:
                    self._upload_monolithic(repo, desc, path, location, counting, task, name)
                return UploadResult(desc.digest, "uploaded")
            except Interrupted as e:
                if sent_before[0]:
                    progress.advance(task, -sent_before[0])
                if not isinstance(e, _SessionLost):  # a lost session's break was counted where it happened
                    tries.failed(e, 0)
                self._cancel_upload(location)
                location = None

    def _cancel_upload(self, location: str) -> None:
        try:
            self._raw_send("DELETE", location, self._auth_headers(location), None, stream=False).close()
        except (ModelpkgError, _Retryable):
            pass

    def _auth_headers(self, url: str, scopes: tuple[str, ...] = ()) -> dict[str, str]:
        if _origin(url) != _origin(self.base):
            return {}
        value = self.auth.header(scopes)
        return {"Authorization": value} if value else {}

    def _send_once(self, method: str, url: str, scopes, headers: dict, body=None) -> requests.Response:
        """An upload step: auth and one re-auth, but no automatic retry (the body is one-shot)."""
        try:
            response = self.request(method, url, scopes=scopes, headers=headers, body=body, retry=False)
        except NetworkError as e:
            if isinstance(e.__cause__, _Retryable):
                raise Interrupted(str(e)) from e
            raise
        if response.status_code in _RETRY_STATUS:
            response.close()
            raise Interrupted(f"{self.host} answered HTTP {response.status_code}")
        return response

    def _upload_monolithic(self, repo, desc, path, location, progress, task, name) -> None:
        target = _with_query(location, "digest", str(desc.digest))
        body = _FileBody(path, 0, desc.size, progress, task) if desc.size else b""
        response = self._send_once("PUT", target, (scope(repo, "pull", "push"),),
                                   {"Content-Type": "application/octet-stream"}, body=lambda: body)
        self._finish_upload(response, desc, name)

    def _finish_upload(self, response: requests.Response, desc: Descriptor, name: str) -> None:
        if response.status_code not in (201, 204):
            self.raise_for(response, kind="upload of", name=name)
        reported = response.headers.get("Docker-Content-Digest", "").strip()
        response.close()
        if reported and reported != str(desc.digest):
            raise IntegrityError(f"{self.host} stored blob {desc.digest.short} under another digest ({reported})")

    def _upload_chunked(self, repo, desc, path, location, chunk_size, progress, task, name, tries) -> None:
        scopes = (scope(repo, "pull", "push"),)
        counted = [0]  # bytes reported to progress, set back to the registry's offset after a break
        progress = _CountingProgress(progress, counted)
        offset = 0
        stalls = 0
        resumed = False
        while offset < desc.size:
            length = min(chunk_size, desc.size - offset)
            body = _FileBody(path, offset, length, progress, task)
            try:
                response = self._send_once("PATCH", location, scopes, {
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"{offset}-{offset + length - 1}",
                }, body=lambda: body)
            except Interrupted as e:
                # the chunk broke off (reset, timeout, 5xx): the registry may have kept all, part or none
                # of it, so ask it (distribution-spec "Get upload status") and resend only what is missing
                tries.failed(e, offset)
                point = self._resume_point(location, scopes, name, offset + length)
                if point is None:
                    raise _SessionLost(str(e)) from e
                offset, location = point
                progress.advance(task, offset - counted[0])
                resumed = True
                continue
            if response.status_code == 416:
                # out of order: ask the upload where it is (distribution-spec "Resuming an upload")
                response.close()
                progress.advance(task, -length)
                new_offset, location = self._upload_status(location, scopes, name)
                stalls += 1
                if stalls > self.retries:
                    raise RegistryError(f"{self.host} keeps refusing chunks of {name} (416)", status=416)
                progress.advance(task, new_offset - offset)
                offset = new_offset
                continue
            if response.status_code == 404 and (offset or resumed):
                # the session ended under us (expired, or a broken body left it inconsistent: distribution
                # answers BLOB_UPLOAD_INVALID then): a new one, counted as a break
                code, _ = _error_body(response)
                response.close()
                e = _SessionLost(f"{self.host} lost the upload session ({code or 'HTTP 404'})")
                tries.failed(e, offset)
                raise e
            if response.status_code != 202:
                self.raise_for(response, kind="upload of", name=name)
            location = urljoin(location, response.headers.get("Location") or location)
            end = _range_end(response.headers.get("Range", ""))
            response.close()
            expected = offset + length
            if end is not None and end + 1 != expected:
                progress.advance(task, end + 1 - expected)
                expected = end + 1
            offset = expected
        response = self._send_once("PUT", _with_query(location, "digest", str(desc.digest)), scopes,
                                   {"Content-Type": "application/octet-stream", "Content-Length": "0"})
        if resumed and response.status_code in (400, 404):
            # a status asked before the registry had seen the break can be stale; distribution then finds
            # the session's bytes do not add up (BLOB_UPLOAD_INVALID, DIGEST_INVALID, SIZE_INVALID): it
            # stored nothing under the digest, so a new session, counted as a break
            code, _ = _error_body(response)
            response.close()
            e = _SessionLost(f"{self.host} refused the resumed upload ({code or response.status_code})")
            tries.failed(e, offset)
            raise e
        self._finish_upload(response, desc, name)

    def _resume_point(self, location: str, scopes, name: str, sent_to: int) -> tuple[int, str] | None:
        """After a broken PATCH: the registry's offset and the upload URL to continue with, or None when
        the session is gone (404, BLOB_UPLOAD_UNKNOWN/INVALID) or its answer makes no sense (no Range, an
        offset past what was sent). distribution 2.8 keeps the bytes of a broken body but not the offset
        in its ``_state``, so there any break that delivered a byte ends as BLOB_UPLOAD_INVALID here."""
        response = self.request("GET", location, scopes=scopes)  # idempotent: the normal retries apply
        if response.status_code in (401, 403):
            self.raise_for(response, kind="upload of", name=name)
        if response.status_code not in (202, 204):
            response.close()
            return None
        offset, fresh = _status_point(response, location)
        if offset is None or offset > sent_to:
            return None
        return offset, fresh

    def _upload_status(self, location: str, scopes, name: str) -> tuple[int, str]:
        response = self._send_once("GET", location, scopes, {})
        if response.status_code not in (202, 204):
            self.raise_for(response, kind="upload of", name=name)
        offset, location = _status_point(response, location)
        return offset or 0, location


class _SessionLost(Interrupted):
    """A broken chunk whose upload session the registry no longer has: start a new one."""


class _Retryable(Exception):
    """A connection-level failure worth retrying."""


class _RetryableResponse(Exception):
    def __init__(self, response: requests.Response):
        super().__init__(f"HTTP {response.status_code}")
        self.response = response


class _CountingProgress(Progress):
    """Forwards advances and remembers how much was reported, so a failed attempt can be taken back."""

    def __init__(self, inner: Progress, counter: list[int]):
        self.inner, self.counter = inner, counter

    def advance(self, task: str, amount: int) -> None:
        self.counter[0] += amount
        self.inner.advance(task, amount)


def _reason(e: Exception) -> str:
    text = str(e)
    for marker in ("Connection refused", "timed out", "Name or service not known", "nodename nor servname",
                   "Temporary failure in name resolution", "Connection reset", "Connection aborted",
                   "Read timed out", "RemoteDisconnected", "IncompleteRead", "Network is unreachable"):
        if marker.lower() in text.lower():
            return marker.lower()
    return type(e).__name__


def _unresolvable(e: BaseException) -> bool:
    from urllib3.exceptions import NameResolutionError

    seen = 0
    while e is not None and seen < 10:
        if isinstance(e, (NameResolutionError, socket.gaierror)):
            return True
        for arg in getattr(e, "args", ()):
            if isinstance(arg, BaseException) and _unresolvable_direct(arg):
                return True
        e = e.__cause__ or e.__context__
        seen += 1
    return False


def _unresolvable_direct(e: BaseException) -> bool:
    from urllib3.exceptions import MaxRetryError, NameResolutionError

    if isinstance(e, MaxRetryError):
        e = e.reason
    return isinstance(e, (NameResolutionError, socket.gaierror))


def _error_body(response: requests.Response) -> tuple[str | None, str]:
    """The first error's spec code and message from a JSON error body read with a cap."""
    import json

    try:
        if response._content is not False:  # already read (not streamed)
            data = (response.content or b"")[:MAX_ERROR_BODY]
        else:
            data = _read_capped(response, MAX_ERROR_BODY) or b""
    except Exception:  # noqa: BLE001 - an unreadable error body still leaves the status
        return None, ""
    try:
        obj = json.loads(data.decode("utf-8"))
        first = obj["errors"][0]
        code = str(first.get("code") or "")[:64] or None
        message = str(first.get("message") or "")
        return code, " ".join(message.split())[:200]
    except (ValueError, KeyError, IndexError, TypeError, AttributeError, UnicodeDecodeError, RecursionError):
        return None, ""  # RecursionError: a body of nested arrays deeper than the stack


def _urllib3_errors() -> type[Exception]:
    from urllib3.exceptions import HTTPError

    return HTTPError


def _read_capped(response: requests.Response, limit: int) -> bytes | None:
    """Read at most ``limit`` bytes of a streamed body; None when there are more."""
    chunks, total = [], 0
    while True:
        chunk = response.raw.read(min(1024 * 1024, limit + 1 - total), decode_content=True)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            return None
    return b"".join(chunks)


def _with_query(url: str, key: str, value: str) -> str:
    """Append ``key=value`` to a URL that may already carry a query (e.g. distribution's ``_state``)."""
    return f"{url}{'&' if '?' in url else '?'}{key}={quote(value, safe=':')}"


def _status_point(response: requests.Response, location: str) -> tuple[int | None, str]:
    """An upload status answer (closed here): the registry's offset (None without a usable ``Range``) and
    the URL to continue with. distribution answers "0-0" both for an empty upload and for one byte; chunks
    are never one byte long, so it means empty."""
    end = _range_end(response.headers.get("Range", ""))
    fresh = urljoin(location, response.headers.get("Location") or location)
    response.close()
    if end is None or end < 0:
        return None, fresh
    return (end + 1 if end else 0), fresh


def _range_end(value: str) -> int | None:
    """``Range: 0-1023`` (distribution's upload status; no ``bytes=`` prefix, but accept one)."""
    value = value.strip().removeprefix("bytes=")
    if "-" not in value:
        return None
    try:
        return int(value.split("-", 1)[1])
    except ValueError:
        return None
