"""Network faults through the fault proxy: every pull ends complete and verified, or with one clear error.

Each fault kind is injected into a pull of the big model (``big_remote``) and into a push; the
faults-per-GiB figure pulls a ``$MODELPKG_REL_SOAK_MB`` (64) MB blob with a broken connection every
``$MODELPKG_REL_FAULT_EVERY_MB`` (4) MB and prints what it survived and the bytes sent per byte stored.
"""

from __future__ import annotations

import time

import pytest
from reliability_helpers import big_gguf, big_remote, env_int, make_gguf, store_problems  # noqa: F401 - fixtures

from modelpkg.errors import ModelpkgError
from modelpkg.pull import pull
from modelpkg.push import push
from modelpkg.reference import parse_reference
from modelpkg.registry.client import RegistryClient
from modelpkg.store import Store

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


@pytest.mark.parametrize("kind,params,count", FAULTS, ids=[f"{k}-{p.get('status', '')}{c}" for k, p, c in FAULTS])
def test_pull_survives(registry, fault_proxy, home, big_remote, kind, params, count):
    repo, size, weights = big_remote
    proxy = fault_proxy(registry)
    proxy.add(kind, "GET", weights, count=count, **params)
    store, entry = pull_through(proxy, home, repo, read_timeout=1.0)
    assert store_problems(home) == []
    assert [e.name for e in store.refs()] == [entry.name]
    stored = sum(p.stat().st_size for p in store.blobs_dir.iterdir())
    sent = proxy.bytes_sent("GET", r"/blobs/")
    print(f"\n{kind}x{count}: {sent / stored:.2f} bytes sent per byte stored")
    if kind == "corrupt":
        assert 2 * size <= sent <= 2 * size + MB  # the bad copy, then a good one
    if kind in ("reset", "truncate", "stall"):
        assert sent <= stored + 8 * MB * count  # resumed, not restarted (loopback buffers hold MBs)


def test_manifest_faults(registry, fault_proxy, home, big_remote):
    proxy = fault_proxy(registry)
    proxy.add("status", "GET", r"/manifests/", count=2, status=502)
    proxy.add("truncate", "GET", r"/manifests/", count=1, after=10)
    pull_through(proxy, home, big_remote[0])
    assert store_problems(home) == []


def test_registry_that_ignores_range(registry, fault_proxy, home, big_remote):
    """A resume against a registry that ignores Range starts over (detected, not appended to)."""
    proxy = fault_proxy(registry)
    proxy.add("reset", "GET", r"/blobs/sha256:", count=1, after=4 * MB)
    proxy.add("ignore_range", "GET", r"/blobs/sha256:", count=None)
    store, _ = pull_through(proxy, home, big_remote[0])
    assert store_problems(home) == []


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
    """The figure for the README: a reset every N MB of a large blob, survived; bytes sent per byte stored."""
    import os

    from modelpkg.create import create

    soak, every = env_int("SOAK_MB", 64), env_int("FAULT_EVERY_MB", 4)
    data = tmp_path / "soak.gguf"
    make_gguf(data, tensor_values=soak * 512 * 1024, seed=11)
    scratch = Store(tmp_path / "scratch")
    ref = parse_reference(f"{registry.host}/rel/soak:v1")
    create(scratch, ref, f"FROM {data}\n", tmp_path)
    push(scratch, ref)
    os.unlink(data)

    proxy = fault_proxy(registry)
    # truncate: the connection closes cleanly after N MB of each response, so every byte counted as sent
    # reached the client (a TCP reset also drops the socket buffers' bytes: see test_pull_survives)
    proxy.add("truncate", "GET", r"/blobs/sha256:", count=None, after=every * MB)
    started = time.monotonic()
    store, _ = pull_through(proxy, home, "rel/soak:v1")
    elapsed = time.monotonic() - started
    assert store_problems(home) == []
    faults = sum(1 for r in proxy.requests if r.fault == "truncate" and r.bytes_sent >= every * MB)
    stored = sum(p.stat().st_size for p in store.blobs_dir.iterdir())
    sent = proxy.bytes_sent("GET", r"/blobs/")
    per_gib = faults / (stored / 1024 ** 3)
    print(f"\nfaults per GiB: {faults} broken connections survived over {stored / MB:.0f} MB = {per_gib:.0f} per GiB; "
          f"{sent / stored:.3f} bytes sent per byte stored; {elapsed:.1f} s")
    assert faults >= soak // every - 1
    assert sent <= stored + MB
