"""Bringing bytes into the store: the one path from a stream, or a registry download, to a blob.

Every way in (a pull's download, a blob uploaded to the server, an archive's member, the GGUF inside a
KitOps tar) goes the same four steps, the huggingface_hub cache's recipe:

1. a temp file in the store's ``ingest/`` (the blobs' filesystem, so the rename below is atomic);
2. hashed while it is written (``fsutil.copy_and_hash``: one pass, never read back);
3. compared with the digest, and size, the bytes must have (``Staged.expect``);
4. renamed under its digest (``Store.commit_temp``): the blob is whole or absent.

A temp file that is not committed is removed, on error or not (``Staged`` as a context manager). Downloads
differ only in where the bytes land: ``Store.partial_path`` (kept across interruptions so a pull resumes,
filled and verified by the registry client) under the per-digest lock ``ingest/<hex>.lock``
(``Store.download_lock_path``) that keeps two processes from fetching one blob at once.

Adapter: file I/O. Imports the core, ``base.fsutil`` and the store's layout; never the
registry (the client that fills a download is handed in by ``ops``), the runtime or the verbs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from modelpkg.base import fsutil
from modelpkg.core.digest import Digest
from modelpkg.core.errors import IntegrityError
from modelpkg.core.progress import Progress
from modelpkg.store.layout import Pins, Store


class Staged:
    """Bytes written to a temp file in the store's ``ingest/`` and hashed on the way: a blob once committed.

    Use it as a context manager: leaving the block without ``commit`` removes the temp file, so a refused
    or interrupted ingest leaves nothing behind."""

    def __init__(self, store: Store, path: Path, digest: Digest, size: int):
        self.store = store
        self.path = path
        self.digest = digest
        self.size = size
        self.committed = False

    def __enter__(self) -> Staged:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()

    def expect(self, digest: Digest | None = None, size: int | None = None, *,
               error: Callable[[Staged], Exception] | None = None) -> None:
        """Refuse the bytes unless they have ``digest`` and ``size`` (each when given): ``error(self)`` is
        raised, or an ``IntegrityError`` naming both digests. The temp file is left to the context manager."""
        if (digest is None or self.digest == digest) and (size is None or self.size == size):
            return
        if error is not None:
            raise error(self)
        wanted = digest if digest is not None else self.digest
        raise IntegrityError(f"the bytes for blob {wanted} do not match it: got {self.size} bytes "
                             f"with digest {self.digest}")

    def commit(self, pins: Pins) -> Digest:
        """Rename the temp file under its digest (pinned; a damaged blob of that name is replaced)."""
        self.store.commit_temp(self.path, self.digest, pins)
        self.committed = True
        return self.digest

    def discard(self) -> None:
        if not self.committed:
            fsutil.unlink_quietly(self.path)


def stage(store: Store, src: BinaryIO, *, prefix: str = "ingest", progress: Progress | None = None,
          task: str = "") -> Staged:
    """Copy the stream ``src`` into a new temp file in the store, hashing it (steps 1 and 2). The temp file's
    name starts with ``prefix`` and records this process, so gc leaves it alone while the process lives."""
    tmp = store.temp_path(prefix)
    with fsutil.removing_on_error(tmp):
        digest, size = fsutil.copy_and_hash(src, tmp, progress=progress, task=task)
    return Staged(store, tmp, digest, size)


def receive(store: Store, src: BinaryIO, pins: Pins, *, expected: Digest | None = None, size: int | None = None,
            error: Callable[[Staged], Exception] | None = None, prefix: str = "ingest",
            progress: Progress | None = None, task: str = "") -> Digest:
    """Bring the stream ``src`` in as one blob: stage, expect (``expected``, ``size``; ``error`` as in
    ``Staged.expect``), commit. Returns its digest; on any failure nothing is stored."""
    with stage(store, src, prefix=prefix, progress=progress, task=task) as staged:
        staged.expect(expected, size, error=error)
        return staged.commit(pins)


@contextmanager
def download_lock(store: Store, digest: Digest) -> Iterator[None]:
    """Hold the per-digest download lock: one downloader per blob across processes (a second one waits,
    then finds the blob present). Only a lock against duplicate work: correctness is the atomic rename's.
    The lock file goes with the lock (``fsutil.unlock_and_remove``), so a finished pull leaves none; one a
    killed pull left goes at the next operation on the store (``Store.session``) or gc."""
    path = store.download_lock_path(digest)
    try:
        fd = fsutil.lock_file(path)
    except OSError as e:
        if e.errno not in fsutil.UNLOCKABLE:
            raise fsutil.os_error(e, store.ingest_dir, "locking a download in") from e
        fd = None  # no flock on this filesystem: two pulls of one blob may both fetch it, one rename wins
    try:
        yield
    finally:
        if fd is not None:
            fsutil.unlock_and_remove(fd, path)


def commit_download(store: Store, digest: Digest, pins: Pins) -> None:
    """Move a verified download (``Store.partial_path``) into place under its digest (step 4)."""
    target = store.blob_path(digest)
    if target.exists():
        # a blob of the wrong size under this name is corrupt: the verified download replaces it
        fsutil.remove(target)
    store.commit_temp(store.partial_path(digest), digest, pins)
