"""Sending a blob up: a cross-repository mount, or an upload session (monolithic or in chunks), streamed
from the file and never read whole into memory.

The flows are the OCI distribution-spec's "Pushing blobs": ``POST`` opens a session (``OCI-Chunk-Min-Length``
says the smallest chunk it takes), then either one ``PUT ?digest=`` with the whole body, or ``PATCH``es with
``Content-Range`` and a closing empty ``PUT``. A broken ``PATCH`` asks the session where it is ("Get upload
status") and resends only what is missing; a 416 asks the same ("Resuming an upload"); a session the
registry lost, or a broken ``PUT``, starts a new one. Breaks are counted like a download's
(``download.RetryBudget``): only those that got no further than an earlier one use up the retries.

Adapter: HTTP, driven through a ``transport.Transport`` passed in (``RegistryClient.upload_blob``). Imports
the pure core, ``transport`` and ``download`` (the retry budget); never the store.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn
from urllib.parse import quote, urljoin

import requests

from modelpkg.core.digest import Digest
from modelpkg.core.errors import IntegrityError, RegistryError
from modelpkg.core.manifest import Descriptor
from modelpkg.core.progress import Progress
from modelpkg.registry.auth import scope
from modelpkg.registry.download import CountingProgress, Interrupted, RetryBudget
from modelpkg.registry.transport import Transport, error_body

UPLOAD_CHUNK = 1024 * 1024
DEFAULT_PATCH_CHUNK = 8 * 1024 * 1024


@dataclass(frozen=True)
class UploadResult:
    digest: Digest
    how: str  # "exists", "mounted", "uploaded"


def mount(transport: Transport, repo: str, digest: Digest, from_repo: str) -> str | None:
    """Try a cross-repository mount; returns None when mounted, else an upload URL to continue with ("" when
    the registry denied or does not support it: the caller starts a normal upload)."""
    scopes = (scope(repo, "pull", "push"), scope(from_repo, "pull"))
    target = transport.url(repo, "blobs", "uploads", "") + f"?mount={digest}&from={quote(from_repo, safe='/')}"
    response = transport.request("POST", target, scopes=scopes, headers={"Content-Length": "0"})
    if response.status_code == 201:
        response.close()
        return None
    if response.status_code == 202 and response.headers.get("Location"):
        response.close()
        return urljoin(transport.base, response.headers["Location"])
    response.close()
    return ""


class BlobUpload:
    """One blob, ``desc``, from the file ``path`` to ``repo``: sessions opened and retried until it is stored."""

    def __init__(self, transport: Transport, repo: str, desc: Descriptor, path: Path, task: str,
                 subject: str | None = None):
        self.t, self.repo, self.desc, self.path, self.task, self.subject = transport, repo, desc, path, task, subject
        self.name = f"{transport.host}/{repo}@{desc.digest}"
        self.scopes = (scope(repo, "pull", "push"),)

    def run(self, progress: Progress, location: str | None, *, chunked: bool, chunk_size: int) -> UploadResult:
        """Upload through ``location`` (a session a mount attempt left open) or a new session; each broken
        session is cancelled, what it reported to ``progress`` taken back, and a new one started."""
        tries = RetryBudget(self.t, f"the upload of blob {self.desc.digest.short} to {self.t.host}",
                            "check the network and run the command again")
        while True:
            min_chunk = 0
            if not location:
                location, min_chunk = self._start()
            sent_before = [0]
            counting = CountingProgress(progress, sent_before)
            try:
                if chunked:
                    self._chunked(location, max(chunk_size, min_chunk), counting, tries)
                else:
                    self._monolithic(location, counting)
                return UploadResult(self.desc.digest, "uploaded")
            except Interrupted as e:
                if sent_before[0]:
                    progress.advance(self.task, -sent_before[0])
                if not isinstance(e, _SessionLost):  # a lost session's break was counted where it happened
                    tries.failed(e, 0)
                self.t.delete_quietly(location)
                location = None

    def _start(self) -> tuple[str, int]:
        """A new session: its URL and the smallest chunk it takes."""
        response = self.t.request("POST", self.t.url(self.repo, "blobs", "uploads", ""), scopes=self.scopes,
                                  headers={"Content-Length": "0"})
        if response.status_code != 202 or not response.headers.get("Location"):
            self.t.raise_for(response, kind="upload of", name=self.name, subject=self.subject)
        response.close()
        try:
            min_chunk = int(response.headers.get("OCI-Chunk-Min-Length", "0"))
        except ValueError:
            min_chunk = 0
        return urljoin(self.t.base, response.headers["Location"]), min_chunk

    def _monolithic(self, location: str, progress: Progress) -> None:
        target = _with_query(location, "digest", str(self.desc.digest))
        body = _FileBody(self.path, 0, self.desc.size, progress, self.task) if self.desc.size else b""
        response = self.t.send_once("PUT", target, self.scopes, {"Content-Type": "application/octet-stream"},
                                    data=body)
        self._finish(response)

    def _finish(self, response: requests.Response) -> None:
        if response.status_code not in (201, 204):
            self.t.raise_for(response, kind="upload of", name=self.name)
        reported = response.headers.get("Docker-Content-Digest", "").strip()
        response.close()
        if reported and reported != str(self.desc.digest):
            raise IntegrityError(f"{self.t.host} stored blob {self.desc.digest.short} under another digest "
                                 f"({reported})")

    def _chunked(self, location: str, chunk_size: int, progress: Progress, tries: RetryBudget) -> None:
        size, task = self.desc.size, self.task
        counted = [0]  # bytes reported to progress, set back to the registry's offset after a break
        progress = CountingProgress(progress, counted)
        offset = 0
        stalls = 0
        resumed = False
        while offset < size:
            length = min(chunk_size, size - offset)
            body = _FileBody(self.path, offset, length, progress, task)
            try:
                response = self.t.send_once("PATCH", location, self.scopes, {
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"{offset}-{offset + length - 1}",
                }, data=body)
            except Interrupted as e:
                # the chunk broke off (reset, timeout, 5xx): the registry may have kept all, part or none
                # of it, so ask it (distribution-spec "Get upload status") and resend only what is missing
                tries.failed(e, offset)
                point = self._resume_point(location, offset + length)
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
                new_offset, location = self._status(location)
                stalls += 1
                if stalls > self.t.retries:
                    raise RegistryError(f"{self.t.host} keeps refusing chunks of {self.name} (416)", status=416)
                progress.advance(task, new_offset - offset)
                offset = new_offset
                continue
            if response.status_code == 404 and (offset or resumed):
                # the session ended under us (expired, or a broken body left it inconsistent: distribution
                # answers BLOB_UPLOAD_INVALID then): a new one, counted as a break
                self._lost(response, "lost the upload session", "HTTP 404", tries, offset)
            location, offset = self._accepted(response, location, offset + length, progress)
        self._close_chunked(location, resumed, tries, offset)

    def _accepted(self, response: requests.Response, location: str, expected: int,
                  progress: Progress) -> tuple[str, int]:
        """A PATCH's answer: the URL to go on with and the offset the registry now has (trusted over ours,
        and the progress corrected by the difference)."""
        if response.status_code != 202:
            self.t.raise_for(response, kind="upload of", name=self.name)
        location = urljoin(location, response.headers.get("Location") or location)
        end = _range_end(response.headers.get("Range", ""))
        response.close()
        if end is not None and end + 1 != expected:
            progress.advance(self.task, end + 1 - expected)
            expected = end + 1
        return location, expected

    def _close_chunked(self, location: str, resumed: bool, tries: RetryBudget, offset: int) -> None:
        response = self.t.send_once("PUT", _with_query(location, "digest", str(self.desc.digest)), self.scopes,
                                    {"Content-Type": "application/octet-stream", "Content-Length": "0"})
        if resumed and response.status_code in (400, 404):
            # a status asked before the registry had seen the break can be stale; distribution then finds
            # the session's bytes do not add up (BLOB_UPLOAD_INVALID, DIGEST_INVALID, SIZE_INVALID): it
            # stored nothing under the digest, so a new session, counted as a break
            self._lost(response, "refused the resumed upload", response.status_code, tries, offset)
        self._finish(response)

    def _lost(self, response: requests.Response, what: str, fallback: str | int, tries: RetryBudget,
              offset: int) -> NoReturn:
        """The registry no longer has a usable session: count the break and raise ``_SessionLost``."""
        code, _ = error_body(response)
        response.close()
        e = _SessionLost(f"{self.t.host} {what} ({code or fallback})")
        tries.failed(e, offset)
        raise e

    def _resume_point(self, location: str, sent_to: int) -> tuple[int, str] | None:
        """After a broken PATCH: the registry's offset and the upload URL to continue with, or None when
        the session is gone (404, BLOB_UPLOAD_UNKNOWN/INVALID) or its answer makes no sense (no Range, an
        offset past what was sent). distribution 2.8 keeps the bytes of a broken body but not the offset
        in its ``_state``, so there any break that delivered a byte ends as BLOB_UPLOAD_INVALID here."""
        response = self.t.request("GET", location, scopes=self.scopes)  # idempotent: the normal retries apply
        if response.status_code in (401, 403):
            self.t.raise_for(response, kind="upload of", name=self.name)
        if response.status_code not in (202, 204):
            response.close()
            return None
        offset, fresh = _status_point(response, location)
        if offset is None or offset > sent_to:
            return None
        return offset, fresh

    def _status(self, location: str) -> tuple[int, str]:
        response = self.t.send_once("GET", location, self.scopes, {})
        if response.status_code not in (202, 204):
            self.t.raise_for(response, kind="upload of", name=self.name)
        offset, location = _status_point(response, location)
        return offset or 0, location


class _SessionLost(Interrupted):
    """A broken chunk whose upload session the registry no longer has: start a new one."""


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
