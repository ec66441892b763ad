"""The store: OCI layout, atomic names, pins against gc, mark and sweep, verify, and two processes at once."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from capabilities import require_binary
from conftest import make_gguf
from modelpkg.base import config, fsutil
from modelpkg.core.digest import Digest
from modelpkg.core.errors import IntegrityError, NotFoundError
from modelpkg.ops.models import remove
from modelpkg.store import Store


def store_at(home: Path) -> Store:
    return Store(home).init()


def leftovers(store: Store) -> list[str]:
    """Working files left in ``ingest/`` (dotfiles, pins and dead owners' locks included): what a finished or
    killed-then-rerun operation must not leave. Not the verified markers, nor live processes' owner locks."""
    return sorted(str(p.relative_to(store.ingest_dir)) for p in store.ingest_dir.rglob("*")
                  if p.is_file() and p.parent.name != "verified"
                  and not (p.parent == store.owners_dir and fsutil.lock_held(p)))


def test_layout_is_a_standard_oci_layout(home, tiny_model):
    tiny_model("tiny")
    assert json.loads((home / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((home / "index.json").read_text())
    (entry,) = index["manifests"]
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == "registry.ollama.ai/library/tiny:latest"
    manifest_path = home / "blobs" / "sha256" / entry["digest"].split(":")[1]
    assert Digest.of(manifest_path.read_bytes()) == Digest.parse(entry["digest"])


def test_skopeo_reads_the_store_as_it_is(home, tiny_model, tmp_path):
    skopeo = require_binary("skopeo", "apt-get install skopeo")
    tiny_model("tiny")
    out = subprocess.run([skopeo, "inspect", "--raw", f"oci:{home}:registry.ollama.ai/library/tiny:latest"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    manifest = json.loads(out.stdout)
    assert manifest["artifactType"] == "application/vnd.cncf.model.manifest.v1+json"


def test_same_inputs_give_the_same_digest(home, tiny_model):
    a = tiny_model("a", "PARAMETER temperature 0.5\n")
    b = tiny_model("b", "PARAMETER temperature 0.5\n")
    store = store_at(home)
    assert store.resolve(a).digest == store.resolve(b).digest


def test_gc_keeps_referenced_and_young_blobs(home, tiny_model):
    store = store_at(home)
    with store.session() as pins:
        orphan = store.put_bytes(b"orphan", pins)
    ref = tiny_model("tiny")
    plan = store.gc(grace=3600)
    assert plan.blobs == ()  # the orphan is younger than the grace period
    plan = store.gc(grace=0, dry_run=True)
    assert [d for d, _ in plan.blobs] == [orphan]
    assert store.has_blob(orphan)  # a dry run deletes nothing
    plan = store.gc(grace=0)
    assert not store.has_blob(orphan)
    _, manifest = store.manifest(ref)
    assert all(store.has_blob(d.digest) for d in manifest.blobs())


def test_gc_never_deletes_a_pinned_blob(home):
    store = store_at(home)
    with store.session() as pins:
        digest = store.put_bytes(b"in progress", pins)
        assert store.gc(grace=0).blobs == ()
        assert store.has_blob(digest)
    assert [d for d, _ in store.gc(grace=0).blobs] == [digest]


def test_pins_of_a_dead_process_are_ignored(home):
    store = store_at(home)
    code = ("import sys,os; from modelpkg.store import Store; s=Store(sys.argv[1]).init();"
            "p=s.session().__enter__(); s.put_bytes(b'x', p); os._exit(0)")
    subprocess.run([sys.executable, "-c", code, str(home)], check=True, timeout=60)
    assert list(store.pins_dir.glob("*.json"))  # the killed process left its pin behind
    assert [d for d, _ in store.gc(grace=0).blobs] == [Digest.of(b"x")]
    assert not list(store.pins_dir.glob("*.json"))


def test_gc_removes_stale_partials_only_after_their_grace(home):
    store = store_at(home)
    partial = store.ingest_dir / ("0" * 64 + ".partial")
    partial.write_bytes(b"half")
    assert store.gc(grace=0).partials == ()  # resumable downloads get a long grace period
    old = time.time() - 8 * 86400
    os.utime(partial, (old, old))
    assert [p for p, _ in store.gc(grace=0).partials] == [partial]
    assert not partial.exists()


def test_rm_frees_blobs_only_it_used(home, tiny_model):
    store = store_at(home)
    a = tiny_model("a", "SYSTEM only a\n")
    b = tiny_model("b", "SYSTEM only b\n")
    _, manifest_a = store.manifest(a)
    _, manifest_b = store.manifest(b)
    removed, plan = remove(store, [a])
    assert [e.name for e in removed] == [str(a)]
    freed = {d for d, _ in plan.blobs}
    shared = {d.digest for d in manifest_a.blobs()} & {d.digest for d in manifest_b.blobs()}
    assert shared and not freed & shared
    assert all(store.has_blob(d.digest) for d in manifest_b.blobs())
    with pytest.raises(NotFoundError):
        store.resolve(a)


def test_rm_of_a_missing_name_changes_nothing(home, tiny_model):
    store = store_at(home)
    a = tiny_model("a")
    with pytest.raises(NotFoundError):
        remove(store, [a, config.reference("missing")])
    assert store.resolve(a)


def test_verify_finds_a_flipped_byte(home, tiny_model):
    store = store_at(home)
    ref = tiny_model("tiny")
    _, manifest = store.manifest(ref)
    weights = store.blob_path(manifest.layers[0].digest)
    assert store.verify() == []
    data = bytearray(weights.read_bytes())
    data[100] ^= 0xFF
    weights.write_bytes(bytes(data))
    problems = store.verify()
    assert [d for d, _ in problems] == [manifest.layers[0].digest]
    with pytest.raises(IntegrityError):
        store.read_blob(manifest.layers[0].digest)


def _create_cmd(home: Path, name: str, modelfile: Path) -> list[str]:
    return [sys.executable, "-m", "modelpkg", "create", name, "-f", str(modelfile)]


def _env(home: Path) -> dict:
    return {**os.environ, "MODELPKG_HOME": str(home)}


def test_two_processes_creating_at_once(home, tmp_path):
    gguf = make_gguf(tmp_path / "m.gguf", tensor_values=1 << 20)
    procs = []
    for i in range(4):
        modelfile = tmp_path / f"Modelfile{i}"
        modelfile.write_text(f"FROM {gguf}\nSYSTEM model {i}\n")
        procs.append(subprocess.Popen(_create_cmd(home, f"m{i % 2}-{i}", modelfile), env=_env(home),
                                      stderr=subprocess.PIPE, text=True))
    gc = subprocess.Popen([sys.executable, "-m", "modelpkg", "gc", "--grace", "0"], env=_env(home),
                          stderr=subprocess.PIPE, text=True)
    for p in [*procs, gc]:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    store = store_at(home)
    assert sorted(e.name.split("/")[-1] for e in store.refs()) == [
        "m0-0:latest", "m0-2:latest", "m1-1:latest", "m1-3:latest"]
    for entry in store.refs():
        _, manifest = store.manifest(config.reference(entry.name))
        assert all(store.has_blob(d.digest) for d in manifest.blobs())
    assert store.verify() == []


@pytest.mark.parametrize("seed", range(5))
def test_create_killed_at_a_random_moment_leaves_old_or_new(home, tmp_path, seed):
    gguf = make_gguf(tmp_path / "big.gguf", tensor_values=16 << 20)  # 32 MB of weights
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(f"FROM {gguf}\nSYSTEM v2\n")
    store = store_at(home)
    proc = subprocess.Popen(_create_cmd(home, "victim", modelfile), env=_env(home))
    time.sleep(random.Random(seed).uniform(0.05, 1.0))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert store.verify() == []
    names = [e.name for e in store.refs()]
    assert names in ([], ["registry.ollama.ai/library/victim:latest"])
    for entry in store.refs():
        _, manifest = store.manifest(config.reference(entry.name))
        assert all(store.has_blob(d.digest) for d in manifest.blobs())
    assert subprocess.run(_create_cmd(home, "victim", modelfile), env=_env(home), timeout=120).returncode == 0
    assert leftovers(store) == []  # no gc in between: the re-run removed what the killed run left


def test_gc_keeps_a_live_writers_temp_file_and_removes_debris(home):
    store = store_at(home)
    mine = store.temp_path("ingest")
    mine.write_bytes(b"being written")
    dead = store.ingest_dir / "ingest-999999999-abcdef"
    dead.write_bytes(b"left by a killed process")
    removed = [p for p, _ in store.gc().partials]  # the default grace: nobody will finish a dead owner's file
    assert removed == [dead] and mine.exists()


# ---------------------------------------------------------------------------------------------------------
# working files of killed operations: removed by the next operation, never a live owner's

_KILLED = """
import os, signal, sys
from modelpkg.core.digest import Digest
from modelpkg.store import Store, ingest
store = Store(sys.argv[1]).init()
with store.session() as pins:
    store.put_bytes(b"pinned", pins)
    store.temp_path("ingest").write_bytes(b"half a copy")
    (store.ingest_dir / f".write-{os.getpid()}-0123456789ab").write_bytes(b"half a write")
    store.temp_path("upload").write_bytes(b"half an upload")
    digest = Digest.of(b"a download")
    with ingest.download_lock(store, digest):
        store.partial_path(digest).write_bytes(b"a down")
        os.kill(os.getpid(), signal.SIGKILL)
"""


def _killed_operation(home: Path) -> None:
    result = subprocess.run([sys.executable, "-c", _KILLED, str(home)], timeout=60)
    assert result.returncode == -signal.SIGKILL


def test_the_next_operation_removes_a_killed_ones_working_files_and_keeps_its_partial(home):
    _killed_operation(home)
    store = Store(home)
    partial = store.partial_path(Digest.of(b"a download")).name
    left = leftovers(store)
    assert {partial, partial.replace(".partial", ".lock")} < set(left)
    assert {f.split("-")[0] for f in left if "-" in f} >= {"ingest", ".write", "upload", "pins/pin", "owners/owner"}
    assert store.refs() == [] and store.verify() == []  # reading removes nothing
    assert leftovers(store) == left
    with store.session():
        pass
    assert leftovers(store) == [partial]  # no gc, no grace: at once; the download stays to be resumed
    assert [p.name for p, _ in store.gc(grace=0).partials] == []  # gc's partial grace still keeps it


def test_gc_removes_a_killed_ones_working_files_at_its_default_grace_a_dry_run_only_plans_them(home):
    _killed_operation(home)
    store = Store(home)
    partial = store.partial_path(Digest.of(b"a download")).name
    left = leftovers(store)
    planned = sorted(p.name for p, _ in store.gc(dry_run=True).partials)
    assert planned == sorted(f for f in left if "/" not in f and f.split("-")[0] in ("ingest", ".write", "upload"))
    # nothing removed, but stale pins (``Pins.live`` has always dropped those while planning)
    assert leftovers(store) == [f for f in left if not f.startswith("pins/")]
    store.gc()
    assert leftovers(store) == [partial]


def test_a_live_owners_files_are_kept_even_where_its_pid_means_nothing(home, tmp_path):
    """A process in another pid namespace (a container sharing the store): its pid names no process here,
    only its owner lock says it is alive. Stand-in: a helper holds an owner lock for a pid that does not
    exist here, its working file is kept; once the helper is gone, the next operation removes it."""
    store = store_at(home)
    alien = 999_999_999  # beyond pid_max: no process here
    owner = store.owners_dir / f"owner-{alien}-0123456789ab.lock"
    working = store.ingest_dir / f"ingest-{alien}-0123456789ab"
    code = ("import sys, time; from pathlib import Path; from modelpkg.base import fsutil; "
            "fsutil.lock_file(Path(sys.argv[1])); Path(sys.argv[2]).write_bytes(b'mine'); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(owner), str(working)])
    try:
        deadline = time.monotonic() + 30
        while not (working.exists() and fsutil.lock_held(owner)) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not fsutil.pid_exists(alien) and fsutil.lock_held(owner)
        with Store(home).session():
            pass
        assert store.gc().partials == ()
        assert working.exists() and owner.exists()
    finally:
        holder.kill()
        holder.wait()
    with Store(home).session():
        pass
    assert not working.exists() and not owner.exists()


def test_a_file_named_for_a_running_pid_is_kept_without_an_owner_lock(home):
    """No owner lock, but the pid runs here (this one, or a reused pid): kept; gc's grace decides later."""
    store = store_at(home)
    working = store.ingest_dir / "ingest-1-0123456789ab"  # pid 1 always runs
    working.write_bytes(b"kept")
    with Store(home).session():
        pass
    assert working.exists() and store.gc().partials == ()


def test_a_removed_lock_file_is_never_held_twice(tmp_path):
    """A waiter that opened the lock file before its holder removed it locks the name again, not the
    removed file: at every moment the name leads to the one lock that is held."""
    import threading

    path = tmp_path / "x.lock"
    first = fsutil.lock_file(path)
    got = []
    waiter = threading.Thread(target=lambda: got.append(fsutil.lock_file(path)))
    waiter.start()
    inode = f":{path.stat().st_ino} "

    def waiting() -> bool:  # /proc/locks marks a request that waits with "->"
        return any("->" in line and inode in line for line in Path("/proc/locks").read_text().splitlines())

    deadline = time.monotonic() + 30
    while not waiting() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert waiting() and not got
    fsutil.unlock_and_remove(first, path)
    waiter.join(10)
    assert got and path.exists() and fsutil.lock_held(path)
    assert os.fstat(got[0]).st_ino == path.stat().st_ino
    fsutil.unlock_and_remove(got[0], path)
    assert not path.exists() and not fsutil.lock_held(path)
    again = fsutil.lock_file(path, blocking=False)  # free: taken at once
    assert again is not None
    fsutil.unlock_and_remove(again, path)


def test_ingesting_the_same_content_again_repairs_a_damaged_blob(home, tiny_model, tiny_gguf):
    store = store_at(home)
    ref = tiny_model("tiny")
    _, manifest = store.manifest(ref)
    weights = store.blob_path(manifest.layers[0].digest)
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert store.verify() != []
    tiny_model("tiny")  # the verified new copy replaces the damaged one
    assert store.verify() == []
