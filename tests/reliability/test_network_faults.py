"""Network faults through the fault proxy: every pull ends complete and verified, or with one clear error.

Each fault kind is injected into a pull of the big model (``big_remote``) and into a push; the
faults-per-GiB figure pulls a ``$MODELPKG_REL_SOAK_MB`` (64) MB blob with a broken connection every
``$MODELPKG_REL_FAULT_EVERY_MB`` (4) MB. Each test asserts that its faults fired (the proxy's counters:
a fault that matched a small blob without cutting it does not count) and, where bytes are the figure,
bounds them below what a restart would cost: a resume asks for the rest with ``Range`` and gets only it.
"""

from __future__ import annotations

import time

import pytest

from modelpkg.core.errors import IntegrityError, ModelpkgError
from modelpkg.core.reference import parse_reference
from modelpkg.ops.pull import pull
from modelpkg.ops.push import push
from modelpkg.registry.client import RegistryClient
from modelpkg.store import Store
from reliability_helpers import env_int, make_gguf, store_problems

pytestmark = pytest.mark.registry
MB = 1024 * 1024


def client(proxy, read_timeout: float = 5.0, retries: int = 5) -> RegistryClient:
    return RegistryClient(proxy.host, timeout=(2.0, read_timeout), backoff=0.01, retries=retries)


def pull_through(proxy, home, repo: str, **kw):
    store = Store(home)
    ref = parse_reference(f"{proxy.host}/{repo}")
    with client(proxy, **kw) as c:
        return store, pull(store, ref, client=c)


FAULTS = [
    ("reset", dict(after=3 * MB), 3),                # a RST also loses what sat in the socket buffers
    ("truncate", dict(after=5 * MB), 3),
    ("stall", dict(after=2 * MB, seconds=3.0), 1),   # past the 1 s read timeout
    ("corrupt", dict(offset=MB, length=4), 1),       # wrong bytes: detected at EOF, fetched again
    ("status", dict(status=503), 4),                 # a 5xx burst
    ("status", dict(status=500), 2),
    ("retry_after", dict(seconds=1), 2),
]


def range_start(request) -> int | None:
    """Where a recorded GET asked the blob to start (``Range: bytes=N-``); None without a Range."""
    value = request.headers.get("Range")
    return None if value is None else int(value.removeprefix("bytes=").partition("-")[0])


def stored_bytes(store: Store) -> int:
    """Every byte in the store's blobs folder: the manifest, the config and the layers."""
    return sum(p.stat().st_size for p in store.blobs_dir.iterdir())


def served(proxy) -> list:
    """The GETs of manifests and blobs answered 2xx, broken or whole: what a pull stores (not the 404 of
    its signature lookup)."""
    return [r for r in proxy.matching("GET", r"/(blobs|manifests)/") if r.status in (200, 206)]


@pytest.mark.parametrize("kind,params,count", FAULTS, ids=[f"{k}-{p.get('status', '')}{c}" for k, p, c in FAULTS])
def test_pull_survives(registry, fault_proxy, home, big_remote, kind, params, count):
    repo, size, weights = big_remote
    proxy = fault_proxy(registry)
    fault = proxy.add(kind, "GET", weights, count=count, **params)
    store, entry = pull_through(proxy, home, repo, read_timeout=1.0)
    assert store_problems(home) == []
    assert [e.name for e in store.refs()] == [entry.name]
    assert fault.fired == count  # each fault happened, each on a weights GET of its own
    gets = proxy.matching("GET", weights)
    assert [g.fired for g in gets] == [True] * count + [False]  # one request per fault, then one more
    starts = [range_start(g) for g in gets]
    got = [g.bytes_sent for g in gets]  # read once: a stalled response may still be writing
    others = sum(r.bytes_sent for r in served(proxy) if r not in gets)
    stored = stored_bytes(store)
    assert others == stored - size  # the manifest, the config, the params: once each
    extra = sum(got) - size  # bytes sent beyond one copy of what is stored
    print(f"\n{kind}x{count}: {(stored + extra) / stored:.3f} bytes sent per byte stored ({extra} extra); "
          f"resumed from {starts[1:]}")
    if kind == "corrupt":
        assert starts == [None, None] and extra == size  # the bad copy whole, then a good one from byte 0
    elif kind in ("status", "retry_after"):
        assert starts == [None] * (count + 1) and extra == 0  # answered without a body: nothing to resume
    else:
        # each retry asked for the rest (Range from what the client kept, never back to 0) and got only
        # that; a restart would resend everything before each break, ``count * after`` bytes
        assert starts[0] is None and None not in starts[1:]
        assert starts[1:] == sorted(starts[1:]) and starts[-1] <= count * params["after"]
        assert gets[-1].status == 206 and got[-1] == size - starts[-1]
        assert extra < count * params["after"]
        if kind == "truncate":  # a clean close loses nothing: each retry starts where the cut was
            assert starts == [None] + [i * params["after"] for i in range(1, count + 1)] and extra == 0
        if kind == "stall":  # the client kept what came before the stall; once the stall ends the proxy
            # writes at most two 64 KiB relay chunks into the socket the client gave up on
            assert starts == [None, params["after"]] and extra <= 2 * 64 * 1024


def test_manifest_faults(registry, fault_proxy, home, big_remote):
    proxy = fault_proxy(registry)
    proxy.add("status", "GET", r"/manifests/", count=2, status=502)
    proxy.add("truncate", "GET", r"/manifests/", count=1, after=10)
    pull_through(proxy, home, big_remote[0])
    assert store_problems(home) == []


def test_registry_that_ignores_range(registry, fault_proxy, home, big_remote):
    """The weights GET breaks after 4 MB; the resume asks for the rest (Range) and the registry ignores it:
    a 200 with the whole blob. modelpkg drops the 4 MB it kept and stores that body from byte 0 (detected,
    never appended to): one resume request, no third."""
    repo, size, weights = big_remote
    proxy = fault_proxy(registry)
    # a clean cut, so that the client kept exactly the 4 MB it was sent
    cut = proxy.add("truncate", "GET", weights, count=1, after=4 * MB)
    ignored = proxy.add("ignore_range", "GET", weights, count=None)
    store, _ = pull_through(proxy, home, repo)
    assert store_problems(home) == []
    assert (cut.fired, ignored.fired) == (1, 1)
    gets = proxy.matching("GET", weights)
    assert [g.fault for g in gets] == ["truncate", "ignore_range"]
    assert [range_start(g) for g in gets] == [None, 4 * MB]  # the resume request asked for the rest
    assert [g.status for g in gets] == [200, 200]  # and was answered 200, not 206
    assert [g.bytes_sent for g in gets] == [4 * MB, size]  # the whole blob, kept from byte 0
    assert [e.name for e in store.refs()] == [f"{proxy.host}/{repo}"]


def test_persistent_fault_ends_in_one_clear_error(registry, fault_proxy, home, big_remote):
    proxy = fault_proxy(registry)
    proxy.add("corrupt", "GET", r"/blobs/sha256:", count=None, offset=100, length=1)
    with pytest.raises(ModelpkgError) as info:
        pull_through(proxy, home, big_remote[0])
    assert "does not match its digest" in info.value.message
    assert store_problems(home) == []
    assert Store(home).refs() == []

    proxy.clear()
    proxy.add("status", "GET", r"/blobs/sha256:", count=None, status=500)
    with pytest.raises(ModelpkgError) as info:
        pull_through(proxy, home, big_remote[0], retries=2)
    assert "\n" not in info.value.message
    assert Store(home).refs() == []


def test_push_survives(registry, fault_proxy, tmp_path, home, big_remote):
    """A push through 5xx bursts and resets of its uploads completes; the registry then serves the model."""
    src = Store(tmp_path / "src")
    store, entry = pull_through(fault_proxy(registry), home, big_remote[0])
    proxy = fault_proxy(registry)
    proxy.add("status", "POST", r"/blobs/uploads/", count=2, status=503)
    proxy.add("status", "PUT", r"/manifests/", count=1, status=500)
    ref = parse_reference(f"{proxy.host}/rel/pushed-through-faults:v1")
    store.set_ref(ref, entry.digest, entry.media_type, entry.size)
    with client(proxy) as c:
        digest = push(store, ref, client=c)
    assert digest == entry.digest
    proxy.clear()
    store2 = Store(src.root)
    with client(proxy) as c:
        assert pull(store2, ref, client=c).digest == digest


def test_faults_per_gib(registry, fault_proxy, home, tmp_path):
    """The figure for the README: a clean cut every N MB of a large blob, each survived by a resume from
    where it broke; bytes sent per byte stored, exactly one (a restart would resend N MB per cut, or never
    finish)."""
    import os

    from modelpkg.base.fsutil import hash_file
    from modelpkg.ops.create import create

    soak, every = env_int("SOAK_MB", 64), env_int("FAULT_EVERY_MB", 4)
    data = tmp_path / "soak.gguf"
    make_gguf(data, tensor_values=soak * 512 * 1024, seed=11)
    digest, size = hash_file(data)
    scratch = Store(tmp_path / "scratch")
    ref = parse_reference(f"{registry.host}/rel/soak:v1")
    create(scratch, ref, f"FROM {data}\n", tmp_path)
    push(scratch, ref)
    os.unlink(data)

    proxy = fault_proxy(registry)
    # truncate: the connection closes cleanly after N MB of each response, so every byte counted as sent
    # reached the client (a TCP reset also drops the socket buffers' bytes: see test_pull_survives)
    cut = proxy.add("truncate", "GET", r"/blobs/sha256:", count=None, after=every * MB)
    started = time.monotonic()
    store, _ = pull_through(proxy, home, "rel/soak:v1")
    elapsed = time.monotonic() - started
    assert store_problems(home) == []
    injected = -(-size // (every * MB)) - 1  # a cut every N MB of the weights; the small blobs are not cut
    faults = cut.fired
    stored = stored_bytes(store)
    sent = sum(r.bytes_sent for r in served(proxy))
    per_gib = faults / (stored / 1024 ** 3)
    print(f"\nfaults per GiB: {faults} of {injected} broken connections survived over {stored / MB:.0f} MB = "
          f"{per_gib:.0f} per GiB; {sent / stored:.3f} bytes sent per byte stored; {elapsed:.1f} s")
    assert faults == injected and [r.path for r in proxy.fired()] == [f"/v2/rel/soak/blobs/{digest}"] * faults
    gets = proxy.matching("GET", f"/blobs/{digest}")
    # each retry resumed exactly where its cut was, and the last fetched only the rest
    assert [range_start(g) for g in gets] == [None] + [i * every * MB for i in range(1, faults + 1)]
    assert [g.bytes_sent for g in gets] == [every * MB] * faults + [size - faults * every * MB]
    assert sent == stored  # 1.000 bytes sent per byte stored, exactly


# ---------------------------------------------------------------------------------------------------------
# faults inside the ranged-parts path: parts forced from the first byte (split_below=inf), a ~6 MiB blob
# in 4 parts of ~1.5 MiB


@pytest.fixture(scope="module")
def parts_remote(registry, tmp_path_factory):
    """A model whose weights (about 6 MiB) split into 4 ranged parts; ``(repo, size, digest)``."""
    from modelpkg.base.fsutil import hash_file
    from modelpkg.ops.create import create

    folder = tmp_path_factory.mktemp("parts")
    gguf = make_gguf(folder / "parts.gguf", tensor_values=3 * MB, seed=23)
    store = Store(folder / "store")
    ref = parse_reference(f"{registry.host}/rel/parts:v1")
    create(store, ref, f"FROM {gguf}\n", folder)
    push(store, ref)
    digest, size = hash_file(gguf)
    return "rel/parts:v1", size, digest


def parts_client(proxy, read_timeout: float = 5.0, retries: int = 5, sleep=None) -> RegistryClient:
    c = RegistryClient(proxy.host, timeout=(2.0, read_timeout), backoff=0.01, retries=retries,
                       sleep=sleep or (lambda s: None))
    c.part_threshold = 256 * 1024
    c.split_below = float("inf")  # parts from the first byte
    return c


def pull_parts(proxy, home, repo: str, **kw):
    store = Store(home)
    with parts_client(proxy, **kw) as c:
        return store, pull(store, parse_reference(f"{proxy.host}/{repo}"), client=c)


def part_gets(proxy, digest) -> list:
    return proxy.matching("GET", f"/blobs/{digest}")


def assert_pulled(store: Store, home, digest, size) -> None:
    assert store_problems(home) == []
    assert store.has_blob(digest, size)
    assert len(store.refs()) == 1
    assert not store.partial_path(digest).exists()


PART_FAULTS = [
    # kind, params, count, bound on the bytes sent beyond one copy of the blob
    ("reset", dict(after=200_000), 1, 200_000),       # a RST loses at most what was sent before it
    ("reset", dict(after=200_000), 3, 3 * 200_000),   # several parts broken at once
    ("truncate", dict(after=300_000), 3, 0),          # a clean close loses nothing: not one byte again
    ("status", dict(status=503), 4, 0),               # a 5xx burst on part GETs: retried, no body sent
    ("status", dict(status=502), 2, 0),
    ("retry_after", dict(seconds=1), 2, 0),           # 429 + Retry-After (the sleep is recorded, not slept)
]


@pytest.mark.parametrize("kind,params,count,extra", PART_FAULTS,
                         ids=[f"{k}{p.get('status', '')}x{c}" for k, p, c, _ in PART_FAULTS])
def test_ranged_parts_survive(registry, fault_proxy, home, parts_remote, kind, params, count, extra):
    repo, size, digest = parts_remote
    proxy = fault_proxy(registry)
    proxy.add(kind, "GET", f"/blobs/{digest}", count=count, **params)
    slept: list[float] = []
    store, _ = pull_parts(proxy, home, repo, sleep=slept.append)
    assert_pulled(store, home, digest, size)
    gets = part_gets(proxy, digest)
    assert sum(1 for g in gets if g.fault == kind) == count
    assert len(gets) >= 4 + (count if kind in ("reset", "truncate") else 0)
    assert all(g.headers.get("Range") for g in gets)  # never fell back to one stream
    sent = proxy.bytes_sent("GET", f"/blobs/{digest}")
    assert size <= sent <= size + extra  # each part resumed where it broke, none restarted
    if kind == "retry_after":
        assert slept.count(1.0) == count


def test_a_part_that_keeps_breaking_but_keeps_moving_is_resumed(registry, fault_proxy, home, parts_remote):
    """Every part GET closes after 256 KiB: each ~1.5 MiB part needs 6+ connections, more than the retries.
    As with one stream, only interruptions that added no byte count against the retries."""
    repo, size, digest = parts_remote
    proxy = fault_proxy(registry)
    proxy.add("truncate", "GET", f"/blobs/{digest}", count=None, after=256 * 1024)
    store, _ = pull_parts(proxy, home, repo, retries=2)
    assert_pulled(store, home, digest, size)
    assert len(part_gets(proxy, digest)) >= size // (256 * 1024)
    assert proxy.bytes_sent("GET", f"/blobs/{digest}") == size


def test_a_corrupt_part_is_fetched_again(registry, fault_proxy, home, parts_remote):
    repo, size, digest = parts_remote
    proxy = fault_proxy(registry)
    proxy.add("corrupt", "GET", f"/blobs/{digest}", count=1, offset=100_000, length=4)
    store, _ = pull_parts(proxy, home, repo)
    assert_pulled(store, home, digest, size)
    assert proxy.bytes_sent("GET", f"/blobs/{digest}") == 2 * size  # the bad copy, then a good one


def test_a_part_stalled_past_the_read_timeout_is_fetched_again(registry, fault_proxy, home, parts_remote):
    repo, size, digest = parts_remote
    proxy = fault_proxy(registry)
    proxy.add("stall", "GET", f"/blobs/{digest}", count=1, after=100_000, seconds=4.0)
    started = time.monotonic()
    store, _ = pull_parts(proxy, home, repo, read_timeout=0.5)
    assert time.monotonic() - started < 3.5  # gave up on the stalled connection, did not wait it out
    assert_pulled(store, home, digest, size)
    gets = part_gets(proxy, digest)
    assert len(gets) == 5 and all(g.headers.get("Range") for g in gets)
    # the stalled part resumed from what it had: at most one 64 KiB relay chunk sent into the dead socket
    assert proxy.bytes_sent("GET", f"/blobs/{digest}") <= size + 64 * 1024


def test_a_200_to_a_part_falls_back_to_one_stream(registry, fault_proxy, home, parts_remote):
    repo, size, digest = parts_remote
    proxy = fault_proxy(registry)
    proxy.add("ignore_range", "GET", f"/blobs/{digest}", count=None)
    store, _ = pull_parts(proxy, home, repo)
    assert_pulled(store, home, digest, size)
    gets = part_gets(proxy, digest)
    assert len(gets) <= 5  # up to 4 part GETs answered 200, then one stream; no retry loop
    assert gets[-1].headers.get("Range") is None and gets[-1].status == 200
    assert gets[-1].bytes_sent == size


def test_a_failed_ranged_pull_is_one_clear_error_and_a_rerun_fetches_only_the_rest(registry, fault_proxy,
                                                                                    home, parts_remote):
    """Every part's first GET breaks after 300 kB, then part GETs answer 503 for longer than the retries."""
    repo, size, digest = parts_remote
    proxy = fault_proxy(registry)
    proxy.add("truncate", "GET", f"/blobs/{digest}", count=4, after=300_000)
    proxy.add("status", "GET", f"/blobs/{digest}", count=None, status=503)
    with pytest.raises(ModelpkgError) as info:
        pull_parts(proxy, home, repo, retries=2)
    assert "\n" not in info.value.message and "503" in info.value.message
    store = Store(home)
    assert store.refs() == [] and not store.has_blob(digest)
    assert store_problems(home) == []
    partial = store.partial_path(digest)
    kept = partial.stat().st_size if partial.exists() else 0
    # the verified prefix: the first part's 300 kB, or nothing when another part's retry (no backoff
    # here) took the last truncation before the first part's request came and met a 503; what the other
    # parts wrote beyond the gap is cut off
    assert kept in (0, 300_000)
    assert not partial.with_name(partial.name + ".parts.partial").exists()

    proxy.clear()
    store, _ = pull_parts(proxy, home, repo)
    assert_pulled(store, home, digest, size)
    assert proxy.bytes_sent("GET", f"/blobs/{digest}") == size - kept
    assert min(int(g.headers["Range"].split("=")[1].split("-")[0]) for g in part_gets(proxy, digest)) == kept


def test_persistent_corruption_in_parts_is_an_integrity_error(registry, fault_proxy, home, parts_remote):
    repo, size, digest = parts_remote
    proxy = fault_proxy(registry)
    proxy.add("corrupt", "GET", f"/blobs/{digest}", count=None, offset=10, length=1)
    with pytest.raises(IntegrityError) as info:
        pull_parts(proxy, home, repo)
    assert "does not match its digest" in info.value.message
    store = Store(home)
    assert store.refs() == [] and not store.has_blob(digest)
    assert not store.partial_path(digest).exists()
    assert store_problems(home) == []

    proxy.clear()
    store, _ = pull_parts(proxy, home, repo)
    assert_pulled(store, home, digest, size)
    assert proxy.bytes_sent("GET", f"/blobs/{digest}") == size  # nothing was kept, nothing fetched twice


def test_a_stalled_stream_is_split_and_its_parts_survive_resets(registry, fault_proxy, home, parts_remote):
    """The adaptive switch under faults: one stream stalls past the probe's second (not past the read
    timeout), is judged too slow and dropped; the rest comes in ranged parts, three of which are reset."""
    repo, size, digest = parts_remote
    proxy = fault_proxy(registry)
    proxy.add("stall", "GET", f"/blobs/{digest}", count=1, after=1536 * 1024, seconds=1.5)
    proxy.add("reset", "GET", f"/blobs/{digest}", count=3, after=100_000)
    store = Store(home)
    with RegistryClient(proxy.host, timeout=(2.0, 5.0), backoff=0.01, sleep=lambda s: None) as c:
        c.part_threshold = 256 * 1024  # split_below stays the default: only a slow stream is split
        pull(store, parse_reference(f"{proxy.host}/{repo}"), client=c)
    assert_pulled(store, home, digest, size)
    gets = part_gets(proxy, digest)
    assert gets[0].headers.get("Range") is None and gets[0].fault == "stall"
    parts = gets[1:]
    assert sum(1 for g in parts if g.fault == "reset") == 3
    assert all(g.headers.get("Range") for g in parts)
    first = min(int(g.headers["Range"].split("=")[1].split("-")[0]) for g in parts)
    assert first >= 2 * MB  # the dropped stream's prefix was kept
    assert sum(g.bytes_sent for g in parts) <= size - first + 3 * 100_000


# ---------------------------------------------------------------------------------------------------------
# broken upload bodies: the proxy resets the connection after N bytes of a PUT/PATCH body arrived


def test_the_proxy_breaks_a_request_body_mid_upload(registry, fault_proxy):
    """The fixture itself: the client sees a broken connection, upstream a short body, the rest never sent."""
    import requests

    proxy = fault_proxy(registry)
    start = requests.post(f"{proxy.url}/v2/rel/cut-check/blobs/uploads/", timeout=10)
    location = start.headers["Location"]
    proxy.add("cut_request", "PUT", r"/blobs/uploads/", after=100_000)
    with pytest.raises(requests.ConnectionError):
        requests.put(f"{location}&digest=sha256:{'0' * 64}", data=b"x" * (4 * MB), timeout=10)
    record = proxy.matching("PUT", r"/blobs/uploads/")[-1]
    assert record.fault == "cut_request" and record.bytes_received == 100_000


@pytest.fixture
def local_model(tmp_path, request):
    """A model of about 3 MiB in a store of its own (weights the registry has not seen); ``(store, ref
    name without host, weights digest)``."""
    from modelpkg.base.fsutil import hash_file
    from modelpkg.ops.create import create

    seed = 100 + sum(map(ord, request.node.name))
    gguf = make_gguf(tmp_path / "up.gguf", tensor_values=1536 * 1024, seed=seed)
    store = Store(tmp_path / "src")
    repo = f"rel/upload-{seed}-{time.monotonic_ns() % 10**9}:v1"
    create(store, parse_reference(f"localhost:1/{repo}"), f"FROM {gguf}\n", tmp_path)
    digest, size = hash_file(gguf)
    return store, repo, digest, size


def push_through(proxy, store: Store, repo: str, chunked: bool = False, retries: int = 5):
    ref = parse_reference(f"{proxy.host}/{repo}")
    entry, _ = store.manifest(parse_reference(f"localhost:1/{repo}"))
    store.set_ref(ref, entry.digest, entry.media_type, entry.size)
    with client(proxy, retries=retries) as c:
        c._sleep = lambda s: None
        return push(store, ref, client=c, chunked=chunked)


def registry_blob_digest(registry, repo: str, digest) -> str | None:
    """sha256 of the blob as the registry serves it (straight, not through the proxy); None if absent."""
    import hashlib

    import requests

    name = repo.split(":")[0]
    head = requests.head(f"{registry.url}/v2/{name}/blobs/{digest}", timeout=10)
    if head.status_code == 404:
        return None
    assert head.headers["Docker-Content-Digest"] == str(digest)
    body = requests.get(f"{registry.url}/v2/{name}/blobs/{digest}", timeout=30).content
    return "sha256:" + hashlib.sha256(body).hexdigest()


@pytest.mark.parametrize("chunked", [False, True], ids=["monolithic", "chunked"])
def test_push_survives_broken_upload_bodies(registry, fault_proxy, local_model, chunked):
    store, repo, digest, _size = local_model
    proxy = fault_proxy(registry)
    method = "PATCH" if chunked else "PUT"
    proxy.add("cut_request", method, r"/blobs/uploads/", count=2, after=MB)
    manifest = push_through(proxy, store, repo, chunked=chunked)
    cut = [r for r in proxy.matching(method, r"/blobs/uploads/") if r.fault == "cut_request"]
    assert len(cut) == 2 and all(r.bytes_received == MB for r in cut)
    assert registry_blob_digest(registry, repo, digest) == str(digest)
    if chunked:
        # each broken chunk made the client ask the upload's status; a session distribution no longer
        # has (404, usually) was given up and a new one started (a stale 204 can let it go on instead)
        statuses = [r.status for r in proxy.matching("GET", r"/blobs/uploads/")]
        assert len(statuses) == 2 and set(statuses) <= {204, 404}
        assert len(proxy.matching("POST", r"/blobs/uploads/")) >= 2 + statuses.count(404)
    else:
        # each broken session was given up (DELETE) and a new one started
        assert len(proxy.matching("POST", r"/blobs/uploads/")) >= 2 + 2
    # and the registry serves the pushed model
    proxy.clear()
    home2 = Store(store.root.parent / "check")
    with client(proxy) as c:
        assert pull(home2, parse_reference(f"{proxy.host}/{repo}"), client=c).digest == manifest
    assert store_problems(home2.root) == []


def test_chunked_upload_survives_a_break_in_a_later_chunk(registry, fault_proxy, local_model):
    """1 MiB PATCHes; the third chunk's body breaks off mid-body, then the first chunk of the next session.
    The client asks the upload's status each time; distribution 2.8 kept the bytes that arrived but not the
    offset (its ``_state`` still says the old one), so it answers 404 BLOB_UPLOAD_INVALID: the session is
    gone, the upload starts a new one, and it still ends with the blob the registry verified."""
    from modelpkg.core.manifest import Descriptor

    store, repo, digest, size = local_model
    proxy = fault_proxy(registry)
    name = repo.split(":")[0]
    desc = Descriptor("application/octet-stream", digest, size)
    proxy.add("stall", "PATCH", r"/blobs/uploads/", count=2, seconds=0)  # a no-op: lets two chunks through
    proxy.add("cut_request", "PATCH", r"/blobs/uploads/", count=2, after=MB // 2)
    with client(proxy) as c:
        c._sleep = lambda s: None
        # 1 MiB + 1 byte: above the cut's length, so only these chunks are broken, and none is 0-0
        result = c.upload_blob(name, desc, store.blob_path(digest), chunked=True, chunk_size=MB + 1)
    assert result.how == "uploaded"
    patches = proxy.matching("PATCH", r"/blobs/uploads/")
    chunks = -(-size // (MB + 1))
    assert [r.fault for r in patches] == ["stall", "stall", "cut_request", "cut_request"] + [None] * chunks
    assert [r.status for r in patches[:2] + patches[4:]] == [202] * (2 + chunks)
    # distribution lost the session after each break (a status asked before it saw the break can still
    # answer a stale 204: the client then goes on, and is told the session is gone at the next request)
    statuses = [r.status for r in proxy.matching("GET", r"/blobs/uploads/")]
    assert len(statuses) == 2 and set(statuses) <= {204, 404} and 404 in statuses
    assert len(proxy.matching("POST", r"/blobs/uploads/")) >= 1 + statuses.count(404)
    assert registry_blob_digest(registry, repo, digest) == str(digest)


def upload_in_chunks(proxy, store, repo, digest, size, retries: int = 5):
    """``upload_blob`` of the weights in 1 MiB PATCHes through ``proxy``."""
    from modelpkg.core.manifest import Descriptor

    with client(proxy, retries=retries) as c:
        c._sleep = lambda s: None
        return c.upload_blob(repo.split(":")[0], Descriptor("application/octet-stream", digest, size),
                             store.blob_path(digest), chunked=True, chunk_size=MB)


UPLOAD_BODY = r"/blobs/uploads/"


@pytest.mark.parametrize("fault,params", [("cut_request", dict(after=0)), ("status", dict(status=503))],
                         ids=["reset", "503"])
def test_a_broken_chunk_resumes_in_the_same_session(registry, fault_proxy, local_model, fault, params):
    """The third PATCH breaks (a reset before the registry got a byte of it, or a 503): the client asks
    the upload's status (204, Range 0-2097151), resends only what is missing, in the same session."""
    store, repo, digest, size = local_model
    proxy = fault_proxy(registry)
    proxy.add("stall", "PATCH", UPLOAD_BODY, count=2, seconds=0)  # a no-op: lets two chunks through
    proxy.add(fault, "PATCH", UPLOAD_BODY, count=1, **params)
    assert upload_in_chunks(proxy, store, repo, digest, size).how == "uploaded"
    patches = proxy.matching("PATCH", UPLOAD_BODY)
    assert [r.fault for r in patches] == ["stall", "stall", fault, None, None]
    assert [r.status for r in proxy.matching("GET", UPLOAD_BODY)] == [204]
    assert len(proxy.matching("POST", UPLOAD_BODY)) == 1 and not proxy.matching("DELETE")
    # a "status" fault reads the body without counting it: its Content-Length is what was sent
    received = sum(int(r.headers["Content-Length"]) if r.fault == "status" else r.bytes_received for r in patches)
    print(f"\n{fault}: {received} request-body bytes for a {size}-byte blob ({received / size:.2f}x)")
    # exactly the blob after a reset that reached nobody; the blob plus the one refused chunk after a 503
    # (a restart of the session would resend the first two chunks too)
    assert received == size + (MB if fault == "status" else 0)
    assert patches[3].headers["Content-Range"].startswith(f"{2 * MB}-")
    assert registry_blob_digest(registry, repo, digest) == str(digest)


def test_a_chunk_whose_session_vanished_starts_a_new_session(registry, fault_proxy, local_model):
    """The third PATCH breaks and the status GET answers 404 BLOB_UPLOAD_UNKNOWN (as after a registry's
    upload purge): the client does not guess an offset; it gives the session up and starts a new one."""
    store, repo, digest, size = local_model
    proxy = fault_proxy(registry)
    proxy.add("stall", "PATCH", UPLOAD_BODY, count=2, seconds=0)
    proxy.add("cut_request", "PATCH", UPLOAD_BODY, count=1, after=0)
    unknown = b'{"errors":[{"code":"BLOB_UPLOAD_UNKNOWN","message":"blob upload unknown to registry"}]}'
    proxy.add("status", "GET", UPLOAD_BODY, count=1, status=404, body=unknown)
    assert upload_in_chunks(proxy, store, repo, digest, size).how == "uploaded"
    assert [r.status for r in proxy.matching("GET", UPLOAD_BODY)] == [404]
    posts = proxy.matching("POST", UPLOAD_BODY)
    assert len(posts) == 2
    # the new session sent the whole blob from byte 0
    patches = proxy.matching("PATCH", UPLOAD_BODY)
    assert [r.headers["Content-Range"].split("-")[0] for r in patches[3:]] == ["0", str(MB), str(2 * MB), str(3 * MB)]
    assert registry_blob_digest(registry, repo, digest) == str(digest)


def test_a_chunk_that_always_breaks_is_one_clear_error_and_a_rerun_succeeds(registry, fault_proxy, local_model):
    """Every try of the third chunk breaks and the registry keeps none of it: no progress, so the retry
    budget runs out (retries + 1 tries of that chunk), one clear line; a re-run push then succeeds."""
    store, repo, digest, size = local_model
    proxy = fault_proxy(registry)
    proxy.add("stall", "PATCH", UPLOAD_BODY, count=2, seconds=0)
    proxy.add("cut_request", "PATCH", UPLOAD_BODY, count=None, after=0)
    with pytest.raises(ModelpkgError) as info:
        upload_in_chunks(proxy, store, repo, digest, size, retries=2)
    assert "\n" not in info.value.message and digest.short in info.value.message
    assert "kept failing" in info.value.message
    assert len([r for r in proxy.matching("PATCH") if r.fault == "cut_request"]) == 3
    assert registry_blob_digest(registry, repo, digest) is None

    proxy.clear()
    push_through(proxy, store, repo, chunked=True)
    assert registry_blob_digest(registry, repo, digest) == str(digest)


@pytest.mark.parametrize("chunked", [False, True], ids=["monolithic", "chunked"])
def test_a_push_whose_uploads_always_break_is_one_clear_error_and_a_rerun_succeeds(registry, fault_proxy,
                                                                                   local_model, chunked):
    store, repo, digest, _size = local_model
    proxy = fault_proxy(registry)
    method = "PATCH" if chunked else "PUT"
    proxy.add("cut_request", method, r"/blobs/uploads/", count=None, after=MB)
    with pytest.raises(ModelpkgError) as info:
        push_through(proxy, store, repo, chunked=chunked, retries=2)
    assert "\n" not in info.value.message and digest.short in info.value.message
    assert len([r for r in proxy.matching(method) if r.fault == "cut_request"]) == 3
    assert registry_blob_digest(registry, repo, digest) is None  # no half blob under its digest
    import requests

    tag = requests.head(f"{registry.url}/v2/{repo.replace(':', '/manifests/')}", timeout=10)
    assert tag.status_code == 404  # no manifest pointing at a missing blob

    proxy.clear()
    push_through(proxy, store, repo, chunked=chunked)
    assert registry_blob_digest(registry, repo, digest) == str(digest)
    assert requests.head(f"{registry.url}/v2/{repo.replace(':', '/manifests/')}", timeout=10,
                         headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}).status_code == 200


def test_a_split_stream_whose_parts_get_200_falls_back_to_one_stream(registry, fault_proxy, home, parts_remote):
    """The probe splits a stalled stream; the registry then ignores Range on the parts: detected, and the
    blob is fetched again as one stream from byte 0 (a 200 is never appended to the kept prefix)."""
    repo, size, digest = parts_remote
    proxy = fault_proxy(registry)
    proxy.add("stall", "GET", f"/blobs/{digest}", count=1, after=1536 * 1024, seconds=1.5)
    proxy.add("ignore_range", "GET", f"/blobs/{digest}", count=None)
    store = Store(home)
    with RegistryClient(proxy.host, timeout=(2.0, 5.0), backoff=0.01, sleep=lambda s: None) as c:
        c.part_threshold = 256 * 1024
        pull(store, parse_reference(f"{proxy.host}/{repo}"), client=c)
    assert_pulled(store, home, digest, size)
    gets = part_gets(proxy, digest)
    assert gets[0].fault == "stall" and all(g.status == 200 for g in gets)
    assert gets[-1].bytes_sent == size and len(gets) <= 1 + 4 + 2
