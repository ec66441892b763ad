"""An OCI distribution client over ``requests``: the blob and manifest operations on one registry.

Why not oras-py (which the tests use as an independent client): it reads a whole blob into memory on
push (``put_upload`` does ``fd.read()``), never checks a pulled blob's or manifest's digest, has no resume
(no ``Range``, no partial files), sets no timeouts (a dead connection hangs for ever), retries on HTTP 500
only and ignores ``Retry-After``, and caches one token per client instead of one per scope, so a pull
from one repository and a push or mount to another fight over it. This client streams both ways with a
bounded memory footprint, verifies every byte, resumes, and keeps one token per scope.

The rooms it is built from: ``transport`` sends each request (timeouts, retries, auth, redirects, one-line
errors: ``RegistryClient`` is a ``Transport``), ``download`` is the byte path of a blob download, ``upload``
the upload sessions. ``PullClient`` declares what a pull reads through, so ``mirrors.MirroredClient`` can
stand in for a ``RegistryClient`` there.

Adapter: HTTP. Imports the pure core, ``fsutil``, ``progress`` and the registry's own modules below it
(never ``mirrors`` or ``connect``); never the store (callers pass paths).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import requests

from modelpkg.base import fsutil
from modelpkg.core import mediatypes as mt
from modelpkg.core.digest import Digest, sha256
from modelpkg.core.errors import AuthError, IntegrityError, NetworkError, RegistryError
from modelpkg.core.manifest import MAX_MANIFEST_BYTES, Descriptor
from modelpkg.core.progress import NullProgress, Progress
from modelpkg.registry import upload
from modelpkg.registry.auth import scope
from modelpkg.registry.download import (
    SPLIT_BELOW,
    BodyReader,
    CountingProgress,
    Interrupted,
    PartDownload,
    Probe,
    RateLimiter,
    RetryBudget,
    TooLong,
    append_hashing,
    range_start,
    resume_state,
)
from modelpkg.registry.transport import Transport, body_errors, is_loopback, read_capped, reason
from modelpkg.registry.upload import DEFAULT_PATCH_CHUNK, UploadResult

__all__ = ["PullClient", "RegistryClient", "UploadResult", "is_loopback"]

PART_THRESHOLD = 256 * 1024 * 1024  # blobs from this size download as concurrent ranged parts
PART_COUNT = 4
MANIFEST_ACCEPT = ", ".join((mt.OCI_MANIFEST, mt.OCI_INDEX, mt.DOCKER_MANIFEST, mt.DOCKER_MANIFEST_LIST))


class PullClient(Protocol):
    """What a pull and its trust check (``ops.pull``, ``ops.sign.check_pull``) read through: a
    ``RegistryClient``, or a ``mirrors.MirroredClient`` trying mirrors first. Only reads: a pull never writes."""

    @property
    def host(self) -> str: ...

    def url(self, repo: str, *parts: str) -> str: ...

    def request(self, method: str, url: str, *, scopes: tuple[str, ...] = (), headers: dict | None = None,
                stream: bool = False) -> requests.Response: ...

    def raise_for(self, response: requests.Response, *, kind: str, name: str) -> None: ...

    def get_manifest(self, repo: str, reference: str, *, name: str | None = None) -> tuple[bytes, str, Digest]: ...

    def download_blob(self, repo: str, desc: Descriptor, dest_partial: Path, progress: Progress | None = None,
                      task: str | None = None, *, subject: str | None = None) -> None: ...

    def close(self) -> None: ...


class RegistryClient(Transport):
    """One registry host: its manifests and blobs. Thread-safe: pull's workers share one client (and its
    token cache). Takes the ``Transport``'s options (``insecure``, ``credentials``, ``ca_bundle``, ``timeout``,
    ``retries``, ...)."""

    # per client, set on an instance to change it (the tests split small blobs):
    part_threshold = PART_THRESHOLD  # what is left of a blob from this size may be split into parts
    split_below = SPLIT_BELOW  # ... when one stream moves fewer bytes/s than this (inf: split at once)
    _no_ranges = False  # set on the instance once the registry ignored a ranged GET
    manifest_accept = MANIFEST_ACCEPT  # what a manifest GET accepts (Hugging Face's client narrows it)
    rate_limiter: RateLimiter | None = None  # shared by every stream of this client (pull --limit-rate)
    part_count = PART_COUNT  # ranged parts of one large blob (pull --concurrency)

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
                                    headers={"Accept": self.manifest_accept}, stream=True)
            if response.status_code != 200:
                self.raise_for(response, kind="model", name=name)
            try:
                data = read_capped(response, MAX_MANIFEST_BYTES)
                break
            except (requests.RequestException, OSError, body_errors()) as e:  # the body broke off: ask again
                if attempt == self.retries:
                    raise NetworkError(f"the manifest of {name} kept arriving incomplete: {reason(e)}",
                                       "check the network and the registry, then run the command again") from e
                self.back_off(attempt)
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
            raise IntegrityError(f"the manifest of {name} does not match its digest (expected {expected}, "
                                 f"got {digest})")
        return data, media_type, digest

    def put_manifest(self, repo: str, reference: str, data: bytes, media_type: str, *,
                     name: str | None = None) -> Digest:
        """Upload a manifest's exact bytes; checks the digest the registry reports."""
        name = name or f"{self.host}/{repo}:{reference}"
        digest = Digest.of(data)
        response = self.request("PUT", self.url(repo, "manifests", reference),
                                scopes=(scope(repo, "pull", "push"),), headers={"Content-Type": media_type},
                                body=lambda: data)
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
                      task: str | None = None, *, parts: int | None = None, subject: str | None = None) -> None:
        """Download ``desc`` into ``dest_partial``, resuming what is there; verified and fsynced on return.

        On return the file holds exactly the blob. A prefix already in ``dest_partial`` is re-hashed and the
        rest asked for with ``Range``; only a 206 whose Content-Range starts there is appended to,
        anything else starts over. A blob starts as one stream; when ``part_threshold`` bytes or more are
        left and the stream proves slower than ``split_below`` bytes/s (one connection is the bottleneck),
        the rest is fetched as ``parts`` concurrent ranged requests. Raises ``IntegrityError`` (and removes
        the file) when the bytes do not match the digest twice in a row.
        """
        progress = progress or NullProgress()
        parts = self.part_count if parts is None else parts
        task = task or desc.digest.short
        name = f"{self.host}/{repo}@{desc.digest}"
        url = self.url(repo, "blobs", str(desc.digest))
        scopes = (scope(repo, "pull"),)
        tries = RetryBudget(self, f"the download of blob {desc.digest.short} from {self.host}")
        mismatches = 0
        counted = [0]  # bytes reported to progress: set back to the kept prefix after an interruption
        progress = CountingProgress(progress, counted)
        split = self.split_below == float("inf")
        while True:
            offset, hasher = resume_state(dest_partial, desc.size)
            if offset != counted[0]:
                progress.advance(task, offset - counted[0])
            try:
                if offset < desc.size:
                    can_split = parts > 1 and desc.size - offset >= self.part_threshold and not self._no_ranges
                    if self.rate_limiter is not None and self.rate_limiter.rate < self.split_below and not split:
                        can_split = False  # slow by request, not by the connection: more streams would not help
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
            body = BodyReader(response, desc.size - offset, self.rate_limiter)
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
    # blobs: upload (the sessions are ``upload``'s)

    def mount_blob(self, repo: str, digest: Digest, from_repo: str) -> str | None:
        """Try a cross-repository mount; returns None when mounted, else an upload URL to continue with."""
        return upload.mount(self, repo, digest, from_repo)

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
        location = None
        if mount_from and mount_from != repo:
            location = self.mount_blob(repo, desc.digest, mount_from)
            if location is None:
                progress.advance(task, desc.size)
                return UploadResult(desc.digest, "mounted")
        return upload.BlobUpload(self, repo, desc, path, task, subject).run(progress, location, chunked=chunked,
                                                                             chunk_size=chunk_size)
