"""kill -9 a pull, a push, a create and a gc at random (seeded) moments; then the store must be consistent
and a re-run must finish without fetching again what was already finished.

``$MODELPKG_REL_KILL_TRIALS`` trials each (20 by default), seed ``$MODELPKG_REL_SEED`` (7). Every trial runs
``python -m modelpkg ...`` as a subprocess against the session registry, through a fault proxy that counts
bytes and stalls the weights transfer once at a random offset, so the kill often lands mid-transfer.
A summary line per operation says where the kills landed.
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pytest
import requests

from modelpkg.core.reference import parse_reference
from modelpkg.store import Store
from reliability_helpers import env_int, names, run_cli, start_cli, store_problems

pytestmark = pytest.mark.registry
MB = 1024 * 1024
TRIALS = env_int("KILL_TRIALS", 20)
SEED = env_int("SEED", 7)


def kill_after(process, delay: float) -> bool:
    """SIGKILL ``process`` after ``delay`` seconds; False when it had already finished."""
    try:
        process.wait(timeout=delay)
    except Exception:  # noqa: BLE001 - subprocess.TimeoutExpired: still running, as wanted
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        return True
    return False


def timed(home: Path, *args: str) -> float:
    """How long one uninterrupted run takes: kills are drawn from [0, that] so they land during the work."""
    started = time.monotonic()
    result = run_cli(home, *args)
    assert result.returncode == 0, result.stderr
    return time.monotonic() - started


def make_garbage(store: Store, count: int, tag: str) -> None:
    """Unreferenced blobs (valid content under its digest), written straight into blobs/."""
    import hashlib

    store.init()
    for i in range(count):
        data = f"garbage {tag} {i}".encode() * 50
        (store.blobs_dir / hashlib.sha256(data).hexdigest()).write_bytes(data)


def check_store(home: Path, want_name: str | None = None) -> None:
    assert store_problems(home) == []
    if want_name is not None:
        assert names(home) in ([], [want_name])  # never a half model


def test_kill_pull(registry, fault_proxy, tmp_path, big_remote):
    repo, size, weights = big_remote
    rng = random.Random(SEED)
    proxy = fault_proxy(registry)
    landed = {"mid-transfer": 0, "before": 0, "after": 0}
    for trial in range(TRIALS):
        home = tmp_path / f"pull{trial}"
        name = f"{proxy.host}/{repo}"
        proxy.clear()
        proxy.add("stall", "GET", weights, after=rng.randrange(size), seconds=1.0)
        killed = kill_after(start_cli(home, "pull", name), rng.uniform(0.1, 1.2))
        check_store(home, name)
        # the weights' partial file only: a small blob's complete partial (fsynced, not yet renamed) is no
        # saving on the weights
        weights_partial = home / "ingest" / f"{weights.rsplit(':', 1)[-1]}.partial"
        partial = weights_partial.stat().st_size if weights_partial.exists() else 0
        finished = {p.name for p in (home / "blobs" / "sha256").iterdir()} if home.exists() else set()
        sent_first = proxy.bytes_sent("GET", weights)
        landed["mid-transfer" if 0 < sent_first < size and killed else "after" if not killed else "before"] += 1

        proxy.clear()
        result = run_cli(home, "pull", name)
        assert result.returncode == 0, result.stderr
        assert store_problems(home) == [] and names(home) == [name]
        again = [r.path for r in proxy.matching("GET", r"/blobs/") if r.path.rsplit(":", 1)[-1] in finished]
        assert again == [], f"trial {trial}: finished blobs fetched again: {again}"
        resent = proxy.bytes_sent("GET", weights)
        assert resent <= size - partial, f"trial {trial}: re-run fetched {resent}, {partial} of {size} were kept"
        # what the killed run received but had not yet written (socket buffers) is the only loss
        assert sent_first + resent <= size + 16 * MB
    print(f"\nkill -9 pull: {TRIALS} trials, {landed}")
    assert landed["mid-transfer"] >= TRIALS // 4


@pytest.fixture
def source_home(tmp_path, big_remote, registry):
    """A store holding the big model, pulled once."""
    home = tmp_path / "source"
    result = run_cli(home, "pull", f"{registry.host}/{big_remote[0]}")
    assert result.returncode == 0, result.stderr
    return home


def test_kill_push(registry, fault_proxy, source_home, big_remote):
    rng = random.Random(SEED + 1)
    proxy = fault_proxy(registry)
    source = f"{registry.host}/{big_remote[0]}"
    store = Store(source_home)
    entry, manifest = store.manifest(parse_reference(source))
    killed_count = 0
    assert run_cli(source_home, "cp", source, f"{proxy.host}/rel/kill-push-calibrate:v1").returncode == 0
    duration = timed(source_home, "push", f"{proxy.host}/rel/kill-push-calibrate:v1")
    for trial in range(TRIALS):
        target = f"{proxy.host}/rel/kill-push-{trial}:v1"
        assert run_cli(source_home, "cp", source, target).returncode == 0
        proxy.clear()
        killed_count += kill_after(start_cli(source_home, "push", target), rng.uniform(0, duration))
        check_store(source_home)
        present = {b.digest for b in manifest.blobs()
                   if requests.head(f"{registry.url}/v2/rel/kill-push-{trial}/blobs/{b.digest}", timeout=5).ok}
        proxy.clear()
        result = run_cli(source_home, "push", target)
        assert result.returncode == 0, result.stderr
        uploads = len(proxy.matching("POST", r"/blobs/uploads/"))
        assert uploads <= len(manifest.blobs()) - len(present), f"trial {trial}: re-uploaded a finished blob"
        got = requests.get(f"{registry.url}/v2/rel/kill-push-{trial}/manifests/v1",
                           headers={"Accept": entry.media_type}, timeout=5)
        assert got.ok and got.content == store.read_blob(entry.digest)
        assert run_cli(source_home, "rm", target).returncode == 0
    check_store(source_home)
    print(f"\nkill -9 push: {TRIALS} trials, {killed_count} killed while running (a push takes {duration:.2f} s)")


def test_kill_create(tmp_path, big_gguf):
    rng = random.Random(SEED + 2)
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(f"FROM {big_gguf}\nSYSTEM you are killed often\n")
    killed_count = 0
    duration = timed(tmp_path / "calibrate", "create", "victim", "-f", str(modelfile))
    for trial in range(TRIALS):
        home = tmp_path / f"create{trial}"
        killed_count += kill_after(start_cli(home, "create", "victim", "-f", str(modelfile)), rng.uniform(0, duration))
        assert store_problems(home) == []
        assert len(names(home)) <= 1
        result = run_cli(home, "create", "victim", "-f", str(modelfile))
        assert result.returncode == 0, result.stderr
        assert store_problems(home) == [] and len(names(home)) == 1
        leftovers = [p.name for p in (home / "ingest").iterdir() if p.is_file()]
        result = run_cli(home, "gc", "--grace", "0", "--partial-grace", "0")
        assert result.returncode == 0, result.stderr
        assert [p.name for p in (home / "ingest").iterdir() if p.is_file()] == [], leftovers
    print(f"\nkill -9 create: {TRIALS} trials, {killed_count} killed while running (a create takes {duration:.2f} s)")


def test_kill_gc(tmp_path, source_home, registry, big_remote):
    """gc killed while it deletes: names keep every blob; a re-run deletes the rest."""
    rng = random.Random(SEED + 3)
    killed_count = 0
    garbage = env_int("GC_GARBAGE", 1000)
    make_garbage(Store(source_home), garbage, "calibrate")
    duration = timed(source_home, "gc", "--grace", "0")
    mid_delete = 0
    blobs = Store(source_home).blobs_dir
    for trial in range(TRIALS):
        make_garbage(Store(source_home), garbage, str(trial))
        before = len(list(blobs.iterdir()))
        killed_count += kill_after(start_cli(source_home, "gc", "--grace", "0"), rng.uniform(0.4, 1.0) * duration)
        mid_delete += before - garbage < len(list(blobs.iterdir())) < before
        check_store(source_home, f"{registry.host}/{big_remote[0]}")
        result = run_cli(source_home, "gc", "--grace", "0")
        assert result.returncode == 0, result.stderr
        assert Store(source_home).gc_plan(grace=0).blobs == ()
        assert names(source_home) == [f"{registry.host}/{big_remote[0]}"]
    assert store_problems(source_home) == []
    print(f"\nkill -9 gc: {TRIALS} trials, {killed_count} killed while running, {mid_delete} of them while deleting "
          f"(a gc of {garbage} blobs takes {duration:.2f} s)")
