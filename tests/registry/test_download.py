"""The blob byte path (modelpkg/registry/download.py) on its own, against tiny in-test HTTP servers: the
socket fast path and the urllib3 fallback give the same bytes, a broken body keeps exactly what arrived,
direct writes fall back to the page cache when refused, and the probe tells a slow stream from a fast one.
The whole path against the real registry is in test_pull_push.py and tests/reliability/."""

from __future__ import annotations

import errno
import hashlib
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from modelpkg.core.digest import sha256
from modelpkg.core.progress import NullProgress
from modelpkg.registry import download
from modelpkg.registry.download import BodyReader, Interrupted, Probe, TooLong, append_hashing

BODY = os.urandom(9 * 1024 * 1024 + 1234)  # several buffers and an unaligned tail


@pytest.fixture
def server():
    """Serves BODY at /plain (Content-Length), /chunked (chunked encoding, BODY + extra bytes when
    ?extra), /cut (Content-Length of BODY, connection closed after half)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_GET(self):
            if self.path.startswith("/plain"):
                self.send_response(200)
                self.send_header("Content-Length", str(len(BODY)))
                self.end_headers()
                self.wfile.write(BODY)
            elif self.path.startswith("/chunked"):
                data = BODY + (b"x" * 10 if "extra" in self.path else b"")
                self.send_response(200)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for i in range(0, len(data), 300_000):
                    piece = data[i:i + 300_000]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.write(b"0\r\n\r\n")
            elif self.path.startswith("/cut"):
                self.send_response(200)
                self.send_header("Content-Length", str(len(BODY)))
                self.end_headers()
                self.wfile.write(BODY[:len(BODY) // 2])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.handle_error = lambda request, address: None  # the /cut connection ends abruptly on purpose
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def get(url: str) -> requests.Response:
    return requests.get(url, stream=True, headers={"Accept-Encoding": "identity"}, timeout=10)


def pump(response, dest, *, fresh=True, hasher=None, limit=None):
    limit = len(BODY) if limit is None else limit
    hasher = hasher or sha256()
    body = BodyReader(response, limit)
    try:
        append_hashing(body, dest, hasher, NullProgress(), "t", fresh=fresh)
        body.check_end()
    finally:
        response.close()
    return body, hasher


def test_a_plain_body_takes_the_socket_fast_path_and_arrives_whole(server, tmp_path):
    response = get(server + "/plain")
    assert BodyReader(response, len(BODY))._fast is not None
    body, hasher = pump(response, tmp_path / "blob")
    assert body.remaining == 0
    assert (tmp_path / "blob").read_bytes() == BODY
    assert hasher.hexdigest() == hashlib.sha256(BODY).hexdigest()


def test_a_chunked_body_is_read_through_urllib3_with_the_same_result(server, tmp_path):
    response = get(server + "/chunked")
    assert BodyReader(response, len(BODY))._fast is None
    _, hasher = pump(response, tmp_path / "blob")
    assert (tmp_path / "blob").read_bytes() == BODY
    assert hasher.hexdigest() == hashlib.sha256(BODY).hexdigest()


def test_a_body_longer_than_the_descriptor_is_refused(server, tmp_path):
    with pytest.raises(TooLong):
        pump(get(server + "/chunked?extra"), tmp_path / "blob")


def test_a_broken_body_keeps_exactly_what_arrived_and_its_hash(server, tmp_path):
    hasher = sha256()
    body, _ = pump(get(server + "/cut"), tmp_path / "blob", hasher=hasher)  # an early end is not an error here:
    kept = (tmp_path / "blob").read_bytes()
    assert body.remaining == len(BODY) - len(kept) > 0  # ... the caller sees what is missing and resumes
    assert kept == BODY[:len(kept)] and len(kept) >= len(BODY) // 2 - 1024 * 1024
    # the hasher saw the same bytes as the file: a resume can go on from it
    assert hasher.hexdigest() == hashlib.sha256(kept).hexdigest()


def test_a_connection_error_mid_body_is_interrupted_after_what_arrived_is_kept():
    class Breaking:
        """A body whose connection breaks after 2.5 MiB (the error comes after the bytes it cut)."""
        def __init__(self):
            self.sent = 0

        def readinto1(self, view):
            if self.sent >= 2_621_440:
                raise ConnectionResetError(104, "Connection reset by peer")
            n = min(len(view), 2_621_440 - self.sent, 300_000)
            view[:n] = BODY[self.sent:self.sent + n]
            self.sent += n
            return n

    reader = BodyReader.__new__(BodyReader)
    reader.raw, reader.remaining, reader._pending, reader._fast = None, len(BODY), None, Breaking().readinto1
    buffer = memoryview(bytearray(1024 * 1024))
    got = [reader.readinto(buffer), reader.readinto(buffer), reader.readinto(buffer)]
    assert got == [1024 * 1024, 1024 * 1024, 524_288]  # the partial third buffer comes first ...
    with pytest.raises(Interrupted, match="reset"):
        reader.readinto(buffer)  # ... and the error on the next call
    assert reader.remaining == len(BODY) - 2_621_440


def test_a_resume_from_an_unaligned_offset_appends_through_the_page_cache(server, tmp_path):
    dest = tmp_path / "blob"
    dest.write_bytes(BODY[:1000])
    hasher = sha256()
    hasher.update(BODY[:1000])
    response = requests.get(server + "/plain", stream=True, timeout=10)  # the whole body; we keep its tail
    response.raw.read(1000)
    body = BodyReader(response, len(BODY) - 1000)
    assert body._fast is None  # urllib3 has read part of the body: the fast path would skip it
    append_hashing(body, dest, hasher, NullProgress(), "t", fresh=False)
    response.close()
    assert dest.read_bytes() == BODY
    assert hasher.hexdigest() == hashlib.sha256(BODY).hexdigest()


def test_direct_writes_refused_by_the_filesystem_fall_back_to_buffered(server, tmp_path, monkeypatch):
    calls = []
    real_writev = os.writev

    def refusing_writev(fd, views):
        calls.append(len(views))
        if len(calls) == 2:  # the first batch went through; the second is refused
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_writev(fd, views)

    monkeypatch.setattr(download.os, "writev", refusing_writev)
    _, hasher = pump(get(server + "/plain"), tmp_path / "blob")
    assert (tmp_path / "blob").read_bytes() == BODY
    assert hasher.hexdigest() == hashlib.sha256(BODY).hexdigest()
    if hasattr(os, "O_DIRECT"):
        assert len(calls) == 2  # after the refusal no direct write is tried again


def test_a_write_error_is_one_store_error_and_the_file_holds_only_hashed_bytes(server, tmp_path, monkeypatch):
    def full_disk(fd, views):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(download.os, "writev", full_disk)
    monkeypatch.setattr(download.os, "write", full_disk)
    from modelpkg.core.errors import StoreError

    with pytest.raises(StoreError) as raised:
        pump(get(server + "/plain"), tmp_path / "blob")
    assert "disk full" in str(raised.value).lower() or "space" in str(raised.value).lower()
    assert (tmp_path / "blob").stat().st_size == 0


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def monotonic(self):
        return self.now


def test_the_probe_splits_a_slow_stream_once_and_keeps_a_fast_one(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(download, "time", clock)
    mib = 1024 * 1024

    fast = Probe(below=200e6, after_bytes=64 * mib, after_seconds=1.0)
    assert not fast.too_slow(mib)  # the first buffer starts the clock
    for _ in range(64):
        clock.now += 0.001  # 1 GB/s
        assert not fast.too_slow(mib)
    assert fast.decided

    slow = Probe(below=200e6, after_bytes=64 * mib, after_seconds=1.0)
    slow.too_slow(mib)
    clock.now += 0.5
    assert not slow.too_slow(mib)  # neither 64 MiB nor a second yet: no verdict
    clock.now += 0.6
    assert slow.too_slow(mib)  # 2 MiB in 1.1 s
    clock.now += 10
    assert not slow.too_slow(mib)  # judged once


def test_the_probe_does_not_count_waits_for_a_free_buffer_as_the_links_time(monkeypatch):
    # hashing or the disk behind (a loaded machine): the receiver waits for buffers, the link is idle
    clock = FakeClock()
    monkeypatch.setattr(download, "time", clock)
    mib = 1024 * 1024

    class BehindRing:  # a ring whose next buffer comes back 50 ms late
        def get(self):
            clock.now += 0.05
            return bytearray(1)

    probe = Probe(below=200e6, after_bytes=64 * mib, after_seconds=1.0)
    ring = BehindRing()
    probe.wait(ring)
    assert not probe.too_slow(mib)  # the first buffer starts the clock
    for _ in range(64):
        probe.wait(ring)  # 3.2 s of waiting in all: by the wall clock 20 MB/s
        clock.now += 0.001  # the receive itself: 1 GB/s
        if probe.too_slow(mib):
            pytest.fail("a stream that only waited for buffers was judged slow")
    assert probe.decided and probe.waited == pytest.approx(3.2)
