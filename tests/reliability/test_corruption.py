"""A corrupted blob in the store (one byte flipped): verify finds it, run refuses it, pull repairs it, and a
pull of an unchanged, undamaged model stays one manifest request."""

from __future__ import annotations

import os
import shutil
import time

import pytest

from capabilities import require_module
from modelpkg.core.digest import Digest
from modelpkg.core.reference import parse_reference
from modelpkg.ops.pull import pull
from modelpkg.registry.client import RegistryClient
from modelpkg.store import Store
from reliability_helpers import names, run_cli, store_problems

pytestmark = pytest.mark.registry


def flip_byte(path, offset: int = 4096, keep_mtime: bool = False) -> None:
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))
    if keep_mtime:  # a corruption that leaves no trace in the metadata (bit rot, a careless tool)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.fixture
def pulled(registry, fault_proxy, home, big_remote):
    repo, _size, weights = big_remote
    proxy = fault_proxy(registry)
    ref = parse_reference(f"{proxy.host}/{repo}")
    store = Store(home)
    with RegistryClient(proxy.host) as client:
        pull(store, ref, client=client)
    blob = store.blob_path(Digest.parse(weights.rsplit("/", 1)[-1]))
    proxy.clear()
    return store, ref, proxy, weights, blob


def timed_pull(store, ref, proxy) -> float:
    started = time.monotonic()
    with RegistryClient(proxy.host) as client:
        pull(store, ref, client=client)
    return time.monotonic() - started


def test_noop_pull_stays_one_request(pulled):
    store, ref, proxy, _weights, blob = pulled
    elapsed = timed_pull(store, ref, proxy)
    assert [r.path for r in proxy.requests if "/blobs/" in r.path] == []
    assert len(proxy.requests) == 1
    shutil.rmtree(store.ingest_dir / "verified")  # no markers (a store from before them): hashed once
    rehash = timed_pull(store, ref, proxy)
    again = timed_pull(store, ref, proxy)
    print(f"\nno-op pull: {elapsed * 1000:.0f} ms with fresh markers, {rehash * 1000:.0f} ms re-hashing "
          f"{blob.stat().st_size >> 20} MB without, then {again * 1000:.0f} ms")
    assert [r.path for r in proxy.requests if "/blobs/" in r.path] == []


def test_verify_finds_and_pull_repairs(pulled):
    store, ref, proxy, weights, blob = pulled
    flip_byte(blob)
    result = run_cli(store.root, "verify")
    assert result.returncode == 5  # IntegrityError
    assert blob.name in result.stdout
    assert "Error: 1 blob(s) failed verification" in result.stderr

    timed_pull(store, ref, proxy)
    assert len(proxy.matching("GET", weights)) == 1  # only the damaged blob is fetched again
    assert store_problems(store.root) == []


def test_pull_repairs_without_verify(pulled):
    """A write changes the blob's mtime: its verified marker is stale, so pull re-hashes and repairs it."""
    store, ref, proxy, weights, blob = pulled
    flip_byte(blob)
    timed_pull(store, ref, proxy)
    assert len(proxy.matching("GET", weights)) == 1
    assert store_problems(store.root) == []


def test_pull_repairs_what_verify_flagged_even_with_the_old_mtime(pulled):
    store, ref, proxy, weights, blob = pulled
    flip_byte(blob, keep_mtime=True)
    timed_pull(store, ref, proxy)
    assert proxy.matching("GET", weights) == []  # unchanged metadata: trusted (as the marker says)
    assert run_cli(store.root, "verify").returncode != 0  # verify drops the bad blob's marker
    timed_pull(store, ref, proxy)
    assert len(proxy.matching("GET", weights)) == 1
    assert store_problems(store.root) == []
    assert run_cli(store.root, "verify").returncode == 0


@pytest.mark.model
@pytest.mark.llama
def test_run_refuses_a_corrupted_model(tmp_path, gemma_gguf):
    require_module("llama_cpp")
    home = tmp_path / "home"
    (tmp_path / "Modelfile").write_text(f"FROM {gemma_gguf}\n")
    assert run_cli(home, "create", "gemma-damaged", "-f", str(tmp_path / "Modelfile")).returncode == 0
    store = Store(home)
    _, manifest = store.manifest(parse_reference(store.refs()[0].name))
    weights = max(manifest.layers, key=lambda layer: layer.size)
    flip_byte(store.blob_path(weights.digest), offset=weights.size // 2)
    result = run_cli(home, "run", "gemma-damaged", "hello", timeout=300)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[0].startswith("Error: the weights of") and "corrupted" in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert names(home) == [store.refs()[0].name]  # refused, not removed: pull or create repairs it
