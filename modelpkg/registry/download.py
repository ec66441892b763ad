"""From an HTTP body to a verified, fsynced file: the byte path of a blob download.

A 1 GiB pull is bound by CPU on a small machine (sha256 alone is 0.7 s of one core), so the bytes are
touched as few times as possible and by two threads at once:

- ``BodyReader`` receives straight into caller-owned buffers (``readinto1`` on the connection's socket
  file, one ``recv_into`` per call, no ``bytes`` object per read); a response it cannot read that way
  (chunked, or encoded) is read through urllib3 and copied instead;
- ``append_hashing`` keeps a small ring of reused 1 MiB buffers (no fresh pages to fault in per read, and
  a buffer is still in cache when it is hashed): this thread fills them, a worker hashes each and writes
  it, so receiving overlaps hashing; only bytes that were hashed are written, in order;
- ``start_writeback`` asks the kernel to start writing each range to disk at once, so the fsync before
  the blob is named finds little left to do;
- ``PartDownload`` fetches a large blob as concurrent ranged GETs written in place, hashed in order
  behind them from the page cache.

Every network failure mid-body becomes ``Interrupted`` (resumable: what arrived before it is kept);
``TooLong`` means the server sent more than the descriptor's size.

Adapter: HTTP bodies and files. ``PartDownload`` is driven by a ``RegistryClient`` (passed in).
"""

from __future__ import annotations

import errno
import http.client
import mmap
import os
import queue
import threading
import time
from pathlib import Path

from modelpkg.base import fsutil
from modelpkg.core.digest import sha256
from modelpkg.core.errors import IntegrityError, NetworkError
from modelpkg.core.progress import Progress

BUFFER_SIZE = 1024 * 1024  # one receive/hash/write unit: fits the CPU cache, so hashing reads it from there
BUFFER_COUNT = 16  # the ring between the receiving thread, the hashing worker and the writing worker
WRITE_BATCH = 4  # buffers per write request: 4 MiB direct writes keep the disk streaming
DIRECT_ALIGN = 4096  # O_DIRECT wants offsets, lengths and addresses aligned to the logical block size
DIRECT_WRITES = True
MARK_EVERY = 64 * 1024 * 1024  # a ranged download records its hashed prefix this often
SPLIT_BELOW = 200e6  # bytes/s: a single stream slower than this is split into ranged parts
PROBE_BYTES = 64 * 1024 * 1024  # the stream's rate is judged after this much, or
PROBE_SECONDS = 1.0  # after this long, whichever comes first


class Interrupted(Exception):
    """A body stream broke off (reset, timeout, short read): resumable."""


class TooLong(Exception):
    """The server sent more bytes than the descriptor's size."""


class RangesIgnored(Exception):
    """A ranged GET was not answered with the asked-for 206."""


RESUME_HINT = "run the command again: it resumes where it stopped"


class RetryBudget:
    """The retry budget of one transfer: breaks in a row that got no further than an earlier one. A
    transfer that keeps moving forward is resumed however often it breaks; one that is stuck gives up
    after ``client.retries`` breaks, backing off (``client.back_off``) in between. Downloads, ranged parts
    and chunked uploads all count this way."""

    def __init__(self, client, what: str, hint: str = RESUME_HINT):
        self.client, self.what, self.hint = client, what, hint
        self.failures, self.best = 0, -1

    def failed(self, e: Exception, reached: int) -> None:
        """Count a break after ``reached`` bytes were safely kept, then back off; raises ``NetworkError``
        once the budget is spent."""
        if reached > self.best:
            self.best, self.failures = reached, 0
        self.failures += 1
        if self.failures > self.client.retries:
            raise NetworkError(f"{self.what} kept failing: {e}", self.hint) from e
        self.client.back_off(self.failures - 1)


class CountingProgress(Progress):
    """Forwards advances and remembers how much was reported, so a failed attempt can be taken back."""

    def __init__(self, inner: Progress, counter: list[int]):
        self.inner, self.counter = inner, counter

    def advance(self, task: str, amount: int) -> None:
        self.counter[0] += amount
        self.inner.advance(task, amount)


class RateLimiter:
    """At most ``rate`` bytes per second over every stream that shares it (``pull --limit-rate``).

    Virtual scheduling: each read reserves its bytes on one timeline and sleeps until its reservation is due,
    so N parallel streams together stay at ``rate``; a stream idle for a while gets at most ``burst`` seconds
    of credit. Readers ask for at most ``chunk`` bytes at a time, so the pace is smooth at low rates too.
    """

    def __init__(self, rate: float, *, burst: float = 0.1, clock=time.monotonic, sleep=time.sleep):
        self.rate = float(rate)
        self.burst = burst
        self.chunk = int(min(BUFFER_SIZE, max(16 * 1024, self.rate / 20)))
        self._clock = clock
        self._sleep = sleep
        self._due = clock()
        self._lock = threading.Lock()

    def consume(self, n: int) -> None:
        """Account for ``n`` bytes just received; sleep until the rate allows them."""
        if n <= 0:
            return
        with self._lock:
            now = self._clock()
            self._due = max(self._due, now - self.burst) + n / self.rate
            delay = self._due - now
        if delay > 0:
            self._sleep(delay)


class BodyReader:
    """Reads at most ``limit`` bytes of a streamed ``requests`` response into buffers.

    When the body is plain (``Content-Length`` equal to ``limit``, no chunking, no content coding) it is
    read from the connection's buffered socket file with ``readinto1``, bypassing urllib3's per-read
    ``bytes``; ``close()`` on the response then drops the connection instead of reusing it (urllib3 did
    not see the body go by), which costs one connection per large blob.
    """

    limiter: RateLimiter | None = None  # pull --limit-rate: paces every read

    def __init__(self, response, limit: int, limiter: RateLimiter | None = None):
        self.raw = response.raw
        self.remaining = limit
        self.limiter = limiter
        self._pending: Exception | None = None
        self._fast = None
        fp = getattr(self.raw, "_fp", None)
        sock_file = getattr(fp, "fp", None)
        if (isinstance(fp, http.client.HTTPResponse) and not fp.chunked and fp.length == limit
                and getattr(self.raw, "_fp_bytes_read", None) == 0 and not getattr(self.raw, "_decoder", None)
                and response.headers.get("Content-Encoding", "identity").lower() == "identity"
                and hasattr(sock_file, "readinto1")):
            self._fast = sock_file.readinto1

    def readinto(self, view: memoryview) -> int:
        """Fill ``view`` as far as the body goes; 0 at its end. When the connection breaks, what arrived
        before is returned first (the caller keeps it) and the error is raised on the next call."""
        if self._pending is not None:
            error, self._pending = self._pending, None
            raise Interrupted(str(error) or type(error).__name__) from error
        want = min(len(view), self.remaining, self.limiter.chunk if self.limiter else len(view))
        got = 0
        while got < want:
            try:
                n = self._read_some(view[got:want])
            except Exception as e:  # socket/urllib3/ssl errors mid-body are all "interrupted"
                if not got:
                    raise Interrupted(str(e) or type(e).__name__) from e
                self._pending = e
                break
            if not n:
                break
            got += n
        self.remaining -= got
        if self.limiter is not None:
            self.limiter.consume(got)
        return got

    def _read_some(self, view: memoryview) -> int:
        if self._fast is not None:
            return self._fast(view)
        chunk = self.raw.read1(len(view))
        view[:len(chunk)] = chunk
        return len(chunk)

    def check_end(self) -> None:
        """After ``limit`` bytes: raise ``TooLong`` when the body goes on."""
        if self._fast is not None or self.remaining:
            return  # the fast path read a body whose length was checked; a short one is the caller's to see
        try:
            extra = self.raw.read1(1)
        except Exception:  # noqa: BLE001 - a break after the last byte loses nothing
            return
        if extra:
            raise TooLong()


def append_hashing(body: BodyReader, dest: Path, hasher, progress: Progress, task: str, *, fresh: bool,
                   probe: Probe | None = None) -> bool:
    """Append the body to ``dest`` while hashing it; fsync at the end (also after an interruption, so a
    resume finds what was written). ``fresh`` starts the file over.

    Returns True when ``probe`` found the stream too slow and it was stopped early (what arrived is kept
    and hashed, like after an interruption): the caller fetches the rest in ranged parts.
    """
    fd = _open_for_append(dest, fresh)
    free: queue.Queue = queue.Queue()
    for _ in range(BUFFER_COUNT):
        free.put(mmap.mmap(-1, BUFFER_SIZE))  # page-aligned, as O_DIRECT wants
    to_hash: queue.Queue = queue.Queue()
    to_write: queue.Queue = queue.Queue()
    failure: list[BaseException] = []  # the first error of a worker, raised in this thread
    sink = _Sink(fd, os.fstat(fd).st_size)
    workers = [threading.Thread(target=_hash_them, args=(to_hash, to_write, hasher, failure), daemon=True,
                                name="blob-hash"),
               threading.Thread(target=_write_them, args=(to_write, free, sink, progress, task, failure),
                                daemon=True, name="blob-write")]
    for worker in workers:
        worker.start()
    split = False
    try:
        # the hot loop: one receive per buffer, everything else is the workers'
        while not failure:
            buffer = free.get() if probe is None else probe.wait(free)
            n = body.readinto(memoryview(buffer))
            if not n:
                break
            to_hash.put((buffer, n))
            if probe is not None and body.remaining and probe.too_slow(n):
                split = True
                break
    finally:
        to_hash.put(None)
        _end_append(fd, dest, workers, failure)
    return split


def _open_for_append(dest: Path, fresh: bool) -> int:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL | os.O_TRUNC if fresh else os.O_APPEND)
    if fresh:
        fsutil.remove(dest)
    try:
        return os.open(dest, flags, 0o644)
    except OSError as e:
        raise fsutil.os_error(e, dest, "creating") from e


def _hash_them(to_hash: queue.Queue, to_write: queue.Queue, hasher, failure: list[BaseException]) -> None:
    """The hashing worker: each received buffer in order, then on to the writer (after a failure only
    passed on, so its buffer goes back to the ring)."""
    while (item := to_hash.get()) is not None:
        if not failure:
            try:
                hasher.update(memoryview(item[0])[:item[1]])
            except BaseException as e:  # noqa: BLE001 - handed to the receiving thread
                failure.append(e)
        to_write.put(item)
    to_write.put(None)


def _write_them(to_write: queue.Queue, free: queue.Queue, sink: _Sink, progress: Progress, task: str,
                failure: list[BaseException]) -> None:
    """The writing worker: hashed buffers in batches of ``WRITE_BATCH``, each buffer back to the ring after."""
    ended = False
    while not ended:
        batch = []
        while len(batch) < WRITE_BATCH:
            item = to_write.get()
            if item is None:
                ended = True
                break
            batch.append(item)
        if batch and not failure:
            try:
                sink.write([memoryview(buffer)[:n] for buffer, n in batch])
                progress.advance(task, sum(n for _, n in batch))
            except BaseException as e:  # noqa: BLE001 - handed to the receiving thread
                failure.append(e)
        for buffer, _ in batch:
            free.put(buffer)


def _end_append(fd: int, dest: Path, workers: list[threading.Thread], failure: list[BaseException]) -> None:
    """Wait for the workers to drain, fsync what was written (unless a worker failed), close, and raise the
    first worker error (an OSError as the store's one-line message)."""
    for worker in workers:
        worker.join()
    try:
        if not failure:
            os.fsync(fd)
    except OSError as e:
        failure.append(e)
    os.close(fd)
    if failure:
        error = failure[0]
        if isinstance(error, OSError):
            raise fsutil.os_error(error, dest, "writing") from error
        raise error


class Probe:
    """Is one connection the bottleneck? Measured once on a running stream, from its first byte: after
    ``after_bytes`` or ``after_seconds``, whichever comes first, a rate below ``below`` bytes/s says yes.

    One stream is the fastest way to move a blob when the link is fast (loopback, LAN: the CPU and the
    disk are the limit, and more connections only add work); ranged parts win when each connection is
    capped (CDNs, long fat links). The probe tells the two apart on the real transfer.

    Only the link's time counts: time the receiver spent waiting for a free buffer (``wait``), because
    hashing or the disk fell behind, is not the connection's, and more connections would only add work.
    """

    def __init__(self, below: float, after_bytes: int = PROBE_BYTES, after_seconds: float = PROBE_SECONDS):
        self.below, self.after_bytes, self.after_seconds = below, after_bytes, after_seconds
        self.started: float | None = None
        self.received = 0
        self.waited = 0.0
        self.decided = False

    def wait(self, free: queue.Queue):
        """The next free buffer from ``free``; the time spent waiting for it is not the link's."""
        if self.decided or self.started is None:
            return free.get()
        began = time.monotonic()
        buffer = free.get()
        self.waited += time.monotonic() - began
        return buffer

    def too_slow(self, n: int) -> bool:
        if self.decided:
            return False
        now = time.monotonic()
        if self.started is None:
            self.started = now  # the first buffer: time from here on (connection set-up is not the link)
            return False
        self.received += n
        elapsed = now - self.started - self.waited
        if self.received < self.after_bytes and elapsed < self.after_seconds:
            return False
        self.decided = True
        return self.received < self.below * max(elapsed, 1e-6)


class _Sink:
    """Sequential writes of hashed buffers to a file, straight to the disk when it can.

    With ``O_DIRECT`` (Linux; a position and lengths aligned to ``DIRECT_ALIGN``) the data goes from our
    buffers to the device in ``WRITE_BATCH``-buffer requests while the next ones are received and hashed:
    no copy into the page cache, no dirty pages for the kernel to flush later, so the fsync before the
    blob is named has almost nothing left to do. The unaligned tail, a resumed download that starts
    unaligned, or a filesystem that refuses ``O_DIRECT`` write through the page cache instead, asking the
    kernel to start writeback at once (``start_writeback``).
    """

    def __init__(self, fd: int, position: int):
        self.fd, self.position = fd, position
        self.direct = False
        if DIRECT_WRITES and hasattr(os, "O_DIRECT") and position % DIRECT_ALIGN == 0:
            self.direct = self._set_direct(True)

    def _set_direct(self, on: bool) -> bool:
        import fcntl

        try:
            flags = fcntl.fcntl(self.fd, fcntl.F_GETFL)
            fcntl.fcntl(self.fd, fcntl.F_SETFL, flags | os.O_DIRECT if on else flags & ~os.O_DIRECT)
        except OSError:
            return False
        return on

    def write(self, views: list[memoryview]) -> None:
        if self.direct and all(len(v) % DIRECT_ALIGN == 0 for v in views):
            try:
                self._writev_all(views)
                return
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
                # refused after all (alignment rules of this filesystem): what was written stays; go on buffered
                done = os.fstat(self.fd).st_size - self.position
                self.position += done
                views = _skip(views, done)
        if self.direct:
            self.direct = self._set_direct(False)
        for view in views:
            write_all(self.fd, view)
            start_writeback(self.fd, self.position, len(view))
            self.position += len(view)

    def _writev_all(self, views: list[memoryview]) -> None:
        while views:
            written = os.writev(self.fd, views)
            self.position += written
            views = _skip(views, written)


def _skip(views: list[memoryview], count: int) -> list[memoryview]:
    """``views`` without their first ``count`` bytes."""
    rest = []
    for view in views:
        if count >= len(view):
            count -= len(view)
        else:
            rest.append(view[count:])
            count = 0
    return rest


def write_all(fd: int, view: memoryview) -> None:
    while view:
        view = view[os.write(fd, view):]


_SYNC_FILE_RANGE_WRITE = 2
_libc = None


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing this range to disk now, without waiting (Linux
    ``sync_file_range(SYNC_FILE_RANGE_WRITE)``): the disk works while the network does, and the fsync
    before the commit finds little left to do. Elsewhere a no-op."""
    global _libc
    if _libc is None:
        try:
            import ctypes
            import ctypes.util

            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            libc.sync_file_range.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
            _libc = libc
        except (OSError, AttributeError):
            _libc = False
    if _libc:
        _libc.sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def parts_marker(dest: Path) -> Path:
    # ends in ".partial" so the store's gc keeps it as long as the partial file it describes
    return dest.with_name(dest.name + ".parts.partial")


def resume_state(dest: Path, size: int):
    """The verified-consistent prefix of an earlier download in ``dest``: its length and a hasher over it.

    A download in ranged parts writes ahead of its hashed prefix; its marker file records how far the
    prefix goes, and the file is cut back to it (the rest is fetched again).
    """
    marker = parts_marker(dest)
    try:
        keep = int(marker.read_text().strip() or "0")
    except FileNotFoundError:
        keep = None
    except (OSError, ValueError):
        keep = 0
    try:
        current = dest.stat().st_size
    except FileNotFoundError:
        current = 0
    if keep is not None:
        try:
            if current > keep:
                os.truncate(dest, keep)
                current = keep
        except OSError as e:
            raise fsutil.os_error(e, dest, "resuming") from e
        fsutil.remove(marker)
    if current > size:
        fsutil.remove(dest)
        current = 0
    hasher = sha256()
    if current:
        buffer = bytearray(BUFFER_SIZE)
        try:
            with open(dest, "rb", buffering=0) as f:
                while n := f.readinto(buffer):
                    hasher.update(memoryview(buffer)[:n])
        except OSError as e:
            raise fsutil.os_error(e, dest, "reading") from e
    return current, hasher


class PartDownload:
    """One blob as ``parts`` concurrent ranged GETs written in place, hashed in order behind them.

    Each part writes at its offset (``os.pwrite``); the caller's thread hashes the file from the resume
    offset forward as far as the parts have written contiguously, so hashing overlaps the transfer. The
    ``.parts.partial`` marker holds the hashed length: that prefix is what a later resume keeps.
    """

    def __init__(self, client, url, scopes, desc, dest, offset, hasher, progress, task, parts, name, subject):
        self.client, self.url, self.scopes, self.desc, self.dest = client, url, scopes, desc, dest
        self.subject = subject
        self.offset, self.hasher, self.progress, self.task, self.name = offset, hasher, progress, task, name
        remaining = desc.size - offset
        step = -(-remaining // parts)
        self.ranges = [(offset + i * step, min(offset + (i + 1) * step, desc.size)) for i in range(parts)
                       if offset + i * step < desc.size]
        self.done = [0] * len(self.ranges)
        self.cond = threading.Condition()
        self.error: BaseException | None = None
        self.stop = False  # set when this thread gives up (interrupt): parts end promptly
        self.finished = 0

    def run(self) -> None:
        marker = parts_marker(self.dest)
        fsutil.atomic_write(marker, str(self.offset).encode(), self.dest.parent)
        try:
            fd = os.open(self.dest, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise fsutil.os_error(e, self.dest, "creating") from e
        hashed = self.offset
        threads = [threading.Thread(target=self._part, args=(i, fd), daemon=True) for i in range(len(self.ranges))]
        buffer = bytearray(BUFFER_SIZE)
        try:
            for t in threads:
                t.start()
            last_mark = hashed
            while hashed < self.desc.size:
                # a failed part does not stop the others: what they fetch is kept if the gap closes
                with self.cond:
                    while self._frontier() <= hashed and self.finished < len(threads):
                        self.cond.wait(1.0)
                    frontier = self._frontier()
                if frontier <= hashed:
                    break  # every part has ended and a failed one left a gap
                while hashed < frontier:
                    view = memoryview(buffer)[:min(BUFFER_SIZE, frontier - hashed)]
                    n = os.preadv(fd, [view], hashed)
                    if not n:
                        raise IntegrityError(f"{self.dest} is shorter than what was written to it")
                    self.hasher.update(view[:n])
                    hashed += n
                if hashed - last_mark >= MARK_EVERY:
                    fsutil.atomic_write(marker, str(hashed).encode(), self.dest.parent)
                    last_mark = hashed
        except BaseException:
            self.stop = True
            raise
        finally:
            self._end(fd, threads, hashed, marker)
        if self.error is not None:
            if isinstance(self.error, RangesIgnored):
                self.client._no_ranges = True
                raise Interrupted("the registry ignores Range; downloading in one stream")
            raise self.error

    def _end(self, fd: int, threads: list[threading.Thread], hashed: int, marker: Path) -> None:
        """After the parts: fsync a complete file, or cut it back to the hashed prefix (what a resume
        re-hashes, asking for the rest); the marker goes either way."""
        for t in threads:
            t.join()
        complete = self.error is None and hashed >= self.desc.size
        try:
            if complete:
                os.fsync(fd)
        finally:
            os.close(fd)
        if not complete:
            try:
                os.truncate(self.dest, hashed)
            except OSError:
                pass
        fsutil.remove(marker)

    def _frontier(self) -> int:
        """How far from the first part the bytes are written without a gap."""
        for (start, end), done in zip(self.ranges, self.done, strict=True):
            if start + done < end:
                return start + done
        return self.desc.size

    def _part(self, i: int, fd: int) -> None:
        try:
            self._part_loop(i, fd)
        finally:
            with self.cond:
                self.finished += 1
                self.cond.notify_all()

    def _part_loop(self, i: int, fd: int) -> None:
        start, end = self.ranges[i]
        tries = RetryBudget(self.client, f"the download of blob {self.desc.digest.short} from {self.client.host}")
        buffer = bytearray(BUFFER_SIZE)
        while not self.stop and start + self.done[i] < end:
            try:
                try:
                    self._fetch(i, fd, start + self.done[i], end, buffer)
                except Interrupted as e:
                    tries.failed(e, self.done[i])  # a part that keeps moving is resumed
            except BaseException as e:  # noqa: BLE001 - handed to the hashing thread (a spent budget too)
                self._fail(e)
                return

    def _fail(self, e: BaseException) -> None:
        with self.cond:
            if self.error is None or (isinstance(self.error, NetworkError) and not isinstance(e, NetworkError)):
                self.error = e  # the most telling error wins: a disk or integrity error over a network one
            if not isinstance(e, NetworkError):
                self.stop = True  # a full disk or a broken registry fails every part alike
            self.cond.notify_all()

    def _fetch(self, i: int, fd: int, pos: int, end: int, buffer: bytearray) -> None:
        headers = {"Accept-Encoding": "identity", "Range": f"bytes={pos}-{end - 1}"}
        response = self.client._blob_get(self.url, self.scopes, headers, self.name, self.subject)
        try:
            if response.status_code != 206 or range_start(response) != pos:
                raise RangesIgnored()
            body = BodyReader(response, end - pos, self.client.rate_limiter)
            while pos < end and not self.stop:
                n = body.readinto(memoryview(buffer))  # what arrived is kept even if the next read fails
                if not n:
                    raise Interrupted("the connection closed early")
                view = memoryview(buffer)[:n]
                while view:
                    try:
                        written = os.pwrite(fd, view, pos)
                    except OSError as e:
                        raise fsutil.os_error(e, self.dest, "writing") from e
                    view = view[written:]
                    pos += written
                start_writeback(fd, pos - n, n)
                with self.cond:
                    self.done[i] += n
                    self.cond.notify_all()
                self.progress.advance(self.task, n)
        finally:
            response.close()


def range_start(response) -> int | None:
    """The first byte of a 206's ``Content-Range: bytes START-END/SIZE``; None when absent or malformed."""
    value = response.headers.get("Content-Range", "")
    if not value.startswith("bytes "):
        return None
    try:
        return int(value[6:].split("-", 1)[0])
    except ValueError:
        return None
