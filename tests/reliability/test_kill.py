"""kill -9 a pull, a push, a create and a gc at seeded moments; then the store must be consistent, a re-run
must finish without fetching again what was already finished, and no working file may be left in ``ingest/``
after the re-run (no gc in between: the re-run itself removes what the killed run left).

``$MODELPKG_REL_KILL_TRIALS`` trials each (20 by default), seed ``$MODELPKG_REL_SEED`` (7). Every trial runs
``python -m modelpkg ...`` as a subprocess against the session registry, through a fault proxy that counts
bytes. Three trials in four are *aimed*: the process is stopped (SIGSTOP) every few milliseconds and killed
at the first stop that finds it in the middle of its work (``kill_when``: a seeded offset of the weights
transfer, the weights being copied, blobs being deleted), so where it is cannot change between the check
and the kill; the fourth trial is killed at a seeded time in [0, an uninterrupted run], to reach the other
phases too. Where each kill landed is read afterwards from what it left (the proxy's byte counts, the
store), never from the clock; each test prints the phases and asserts a lower bound for the one it names.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from modelpkg.core.reference import parse_reference
from modelpkg.store import Store
from reliability_helpers import env_int, names, run_cli, start_cli, store_problems, working_files

pytestmark = pytest.mark.registry
MB = 1024 * 1024
TRIALS = env_int("KILL_TRIALS", 20)
SEED = env_int("SEED", 7)


def aimed(trial: int) -> bool:
    """Three trials in four wait for the phase under test; the fourth is killed at a random time."""
    return trial % 4 != 3


AIMED = sum(aimed(t) for t in range(TRIALS))


def kill_after(process: subprocess.Popen, delay: float) -> bool:
    """SIGKILL ``process`` after ``delay`` seconds; False when it had already finished."""
    try:
        process.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        return True
    return False


def _stopped(pid: int) -> bool | None:
    """True once every thread of ``pid`` is stopped, False while one still runs, None once it has exited."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return None
    for task in tasks:
        try:
            state = Path(f"/proc/{pid}/task/{task}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue  # a thread that just ended
        if state in "ZX":
            return None
        if state not in "tT":
            return False
    return True


def kill_when(process: subprocess.Popen, ready: Callable[[], bool], rng: random.Random,
              timeout: float = 60.0) -> bool:
    """SIGKILL ``process`` at the first moment ``ready()`` holds, checked while it is stopped (SIGSTOP), so it
    cannot move on between the check and the kill. Checks come every 2-20 ms (seeded). False when the process
    finished before it was ever found ready."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            process.wait(timeout=rng.uniform(0.002, 0.02))
            return False
        except subprocess.TimeoutExpired:
            pass
        os.kill(process.pid, signal.SIGSTOP)
        while (state := _stopped(process.pid)) is False:
            time.sleep(0.0005)
        if state is None:  # it exited before the stop took
            process.wait()
            return False
        if ready():
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
            return True
        os.kill(process.pid, signal.SIGCONT)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    raise AssertionError(f"the process never reached the phase to kill it in within {timeout} s")


def settled(read: Callable[[], int], quiet: float = 0.1, timeout: float = 10.0) -> int:
    """``read()`` once it has stopped changing for ``quiet`` seconds (the proxy finishing a dead client's
    request)."""
    value, since, deadline = read(), time.monotonic(), time.monotonic() + timeout
    while time.monotonic() - since < quiet and time.monotonic() < deadline:
        time.sleep(0.02)
        now = read()
        if now != value:
            value, since = now, time.monotonic()
    return value


def timed(home: Path, *args: str) -> float:
    """How long one uninterrupted run takes: random kills are drawn from [0, that]."""
    started = time.monotonic()
    result = run_cli(home, *args)
    assert result.returncode == 0, result.stderr
    return time.monotonic() - started


def make_garbage(store: Store, count: int, tag: str) -> None:
    """Unreferenced blobs (valid content under its digest), written straight into blobs/."""
    store.init()
    for i in range(count):
        data = f"garbage {tag} {i}".encode() * 50
        (store.blobs_dir / hashlib.sha256(data).hexdigest()).write_bytes(data)


def check_store(home: Path, want_name: str | None = None) -> None:
    """After a kill: verify clean and no half model (reading only: nothing here removes working files)."""
    assert store_problems(home) == []
    if want_name is not None:
        assert names(home) in ([], [want_name])  # never a half model


def report(operation: str, landed: Counter, phase: str, bound: int, extra: str = "") -> None:
    print(f"\nkill -9 {operation}: {TRIALS} trials ({AIMED} aimed), {dict(landed)}{extra}")
    assert landed[phase] >= bound, f"only {landed[phase]} of {TRIALS} kills landed {phase}: {dict(landed)}"


def test_kill_pull(registry, fault_proxy, tmp_path, big_remote):
    repo, size, weights = big_remote
    rng = random.Random(SEED)
    proxy = fault_proxy(registry)
    name = f"{proxy.host}/{repo}"
    proxy.add("stall", "GET", weights, after=size // 2, seconds=1.0)
    duration = timed(tmp_path / "calibrate", "pull", name)
    landed: Counter = Counter()
    for trial in range(TRIALS):
        home = tmp_path / f"pull{trial}"
        proxy.clear()
        offset = rng.randrange(1, size)
        # an aimed trial is killed while the stall holds the transfer at the offset (5 s: ample time to see
        # it there on a loaded machine, and no cost, the process is killed in it); a random one waits 1 s there
        proxy.add("stall", "GET", weights, after=offset, seconds=5.0 if aimed(trial) else 1.0)
        process = start_cli(home, "pull", name)
        if aimed(trial):
            killed = kill_when(process, lambda at=offset: proxy.bytes_sent("GET", weights) >= at, rng)
        else:
            killed = kill_after(process, rng.uniform(0, duration))
        sent_first = settled(lambda: proxy.bytes_sent("GET", weights))
        landed["finished" if not killed else "before the weights" if sent_first == 0
               else "mid-transfer" if sent_first < size else "after the weights"] += 1
        check_store(home, name)
        # the weights' partial file only: a small blob's complete partial (fsynced, not yet renamed) is no
        # saving on the weights
        weights_partial = home / "ingest" / f"{weights.rsplit(':', 1)[-1]}.partial"
        partial = weights_partial.stat().st_size if weights_partial.exists() else 0
        finished = {p.name for p in (home / "blobs" / "sha256").iterdir()} if home.exists() else set()

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
        # no gc in between: the re-run removed the killed run's temp files and download locks, and used up
        # its partial file
        assert working_files(home) == [], f"trial {trial}"
    report("pull", landed, "mid-transfer", AIMED)


@pytest.fixture
def source_home(tmp_path, big_remote, registry):
    """A store holding the big model, pulled once."""
    home = tmp_path / "source"
    result = run_cli(home, "pull", f"{registry.host}/{big_remote[0]}")
    assert result.returncode == 0, result.stderr
    return home


def _weights_upload(proxy, digest: str) -> int:
    """Bytes of the weights' upload body the proxy received (a monolithic ``PUT ...?digest=``)."""
    return max((r.bytes_received for r in proxy.requests if r.method in ("PUT", "PATCH") and digest in r.query),
               default=0)


def test_kill_push(registry, fault_proxy, source_home, big_remote):
    rng = random.Random(SEED + 1)
    proxy = fault_proxy(registry)
    source = f"{registry.host}/{big_remote[0]}"
    store = Store(source_home)
    entry, manifest = store.manifest(parse_reference(source))
    size, digest = manifest.layers[0].size, str(manifest.layers[0].digest)
    assert size == big_remote[1]
    origins = source_home / "ingest" / "origins"  # where push learns it can mount instead of uploading
    assert run_cli(source_home, "cp", source, f"{proxy.host}/rel/kill-push-calibrate:v1").returncode == 0
    duration = timed(source_home, "push", f"{proxy.host}/rel/kill-push-calibrate:v1")
    landed: Counter = Counter()
    for trial in range(TRIALS):
        target = f"{proxy.host}/rel/kill-push-{trial}:v1"
        assert run_cli(source_home, "cp", source, target).returncode == 0
        shutil.rmtree(origins, ignore_errors=True)  # no mount from an earlier trial's repository: it uploads
        proxy.clear()
        process = start_cli(source_home, "push", target)
        if aimed(trial):
            # in the first half, so that socket buffers (which still drain into the proxy once the push is
            # stopped) cannot hold the rest of the body
            at = rng.randrange(1, size // 2)
            killed = kill_when(process, lambda at=at: _weights_upload(proxy, digest) >= at, rng)
        else:
            killed = kill_after(process, rng.uniform(0, duration))
        received = settled(lambda: _weights_upload(proxy, digest))
        landed["finished" if not killed else "before the weights" if received == 0
               else "mid-upload" if received < size else "after the weights"] += 1
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
        assert working_files(source_home) == [], f"trial {trial}"
        assert run_cli(source_home, "rm", target).returncode == 0
    check_store(source_home)
    report("push", landed, "mid-upload", AIMED * 2 // 3, f" (a push takes {duration:.2f} s)")


def _copying(working: list[str]) -> bool:
    """A create's temp file of the weights (``ingest-<pid>-...``) is there: it is copying or hashing them."""
    return any(f.startswith("ingest-") for f in working)


def test_kill_create(tmp_path, big_gguf):
    rng = random.Random(SEED + 2)
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(f"FROM {big_gguf}\nSYSTEM you are killed often\n")
    weights = hashlib.sha256(big_gguf.read_bytes()).hexdigest()
    duration = timed(tmp_path / "calibrate", "create", "victim", "-f", str(modelfile))
    landed: Counter = Counter()
    left_behind = 0
    for trial in range(TRIALS):
        home = tmp_path / f"create{trial}"
        process = start_cli(home, "create", "victim", "-f", str(modelfile))
        if aimed(trial):
            killed = kill_when(process, lambda home=home: _copying(working_files(home)), rng)
        else:
            killed = kill_after(process, rng.uniform(0, duration))
        left = working_files(home)  # before anything else opens the store
        left_behind += bool(left)
        landed["finished" if not killed else "mid-copy" if _copying(left)
               else "after the copy" if (home / "blobs" / "sha256" / weights).exists() else "before the copy"] += 1
        assert store_problems(home) == []
        assert len(names(home)) <= 1
        result = run_cli(home, "create", "victim", "-f", str(modelfile))
        assert result.returncode == 0, result.stderr
        assert store_problems(home) == [] and len(names(home)) == 1
        assert working_files(home) == [], f"trial {trial}: the kill left {left}"  # no gc in between
    report("create", landed, "mid-copy", AIMED * 2 // 3,
           f", {left_behind} left working files (a create takes {duration:.2f} s)")


def test_kill_gc(tmp_path, source_home, registry, big_remote):
    """gc killed while it deletes: names keep every blob; a re-run deletes the rest."""
    rng = random.Random(SEED + 3)
    garbage = env_int("GC_GARBAGE", 1000)
    make_garbage(Store(source_home), garbage, "calibrate")
    duration = timed(source_home, "gc", "--grace", "0")
    blobs = Store(source_home).blobs_dir
    landed: Counter = Counter()
    for trial in range(TRIALS):
        make_garbage(Store(source_home), garbage, str(trial))
        before = len(os.listdir(blobs))

        def deleting(before: int = before) -> bool:
            return before - garbage < len(os.listdir(blobs)) < before

        process = start_cli(source_home, "gc", "--grace", "0")
        killed = kill_when(process, deleting, rng) if aimed(trial) else kill_after(process, rng.uniform(0, duration))
        count = len(os.listdir(blobs))
        landed["finished" if not killed else "before deleting" if count == before
               else "while deleting" if count > before - garbage else "after deleting"] += 1
        check_store(source_home, f"{registry.host}/{big_remote[0]}")
        result = run_cli(source_home, "gc", "--grace", "0")
        assert result.returncode == 0, result.stderr
        assert Store(source_home).gc_plan(grace=0).blobs == ()
        assert names(source_home) == [f"{registry.host}/{big_remote[0]}"]
        assert working_files(source_home) == [], f"trial {trial}"
    assert store_problems(source_home) == []
    report("gc", landed, "while deleting", AIMED * 2 // 3, f" (a gc of {garbage} blobs takes {duration:.2f} s)")
