"""Concurrent operations on one store, as separate processes: two pulls of one model, a pull during gc, a
create during an rm of a model sharing its blobs, readers (and real runs) during gc. All succeed or fail
cleanly; nothing referenced is deleted; no blob is downloaded twice at once.

``$MODELPKG_REL_RACE_TRIALS`` rounds each (5 by default).
"""

from __future__ import annotations

import threading
import time

import pytest

from capabilities import require_module
from modelpkg.store import Store
from reliability_helpers import env_int, names, run_cli, start_cli, store_problems

pytestmark = pytest.mark.registry
ROUNDS = env_int("RACE_TRIALS", 5)


def finish(process, timeout: float = 120) -> tuple[int, str]:
    _, err = process.communicate(timeout=timeout)
    return process.returncode, err


def gc_loop(home, stop: threading.Event, results: list) -> None:
    while not stop.is_set():
        results.append(run_cli(home, "gc", "--grace", "0"))


def test_two_pulls_of_one_model(registry, fault_proxy, tmp_path, big_remote):
    repo, size, weights = big_remote
    proxy = fault_proxy(registry)
    name = f"{proxy.host}/{repo}"
    for n in range(ROUNDS):
        home = tmp_path / f"home{n}"
        proxy.clear()
        stall = proxy.add("stall", "GET", weights, after=size // 3, seconds=0.5)  # the second arrives mid-download
        first, second = start_cli(home, "pull", name), start_cli(home, "pull", name)
        assert finish(first)[0] == 0 and finish(second)[0] == 0
        assert stall.fired == 1
        assert len(proxy.matching("GET", weights)) == 1, proxy.matching("GET", weights)
        assert store_problems(home) == [] and names(home) == [name]


def test_pull_during_gc(registry, fault_proxy, tmp_path, big_remote):
    repo, _size, _weights = big_remote
    proxy = fault_proxy(registry)
    name = f"{proxy.host}/{repo}"
    for n in range(ROUNDS):
        home = tmp_path / f"home{n}"
        Store(home).init()
        stop, results = threading.Event(), []
        loop = threading.Thread(target=gc_loop, args=(home, stop, results))
        loop.start()
        try:
            code, err = finish(start_cli(home, "pull", name))
        finally:
            stop.set()
            loop.join()
        assert code == 0, err
        assert all(r.returncode == 0 for r in results), [r.stderr for r in results if r.returncode]
        assert store_problems(home) == [] and names(home) == [name]
        assert run_cli(home, "gc", "--grace", "0").returncode == 0
        assert store_problems(home) == [] and names(home) == [name]  # gc after: the model is whole


def test_create_during_rm_of_a_model_sharing_blobs(tmp_path, big_gguf):
    first, second = tmp_path / "A.Modelfile", tmp_path / "B.Modelfile"
    first.write_text(f"FROM {big_gguf}\nSYSTEM first\n")
    second.write_text(f"FROM {big_gguf}\nSYSTEM second\n")
    for n in range(ROUNDS):
        home = tmp_path / f"home{n}"
        assert run_cli(home, "create", "a", "-f", str(first)).returncode == 0
        creating = start_cli(home, "create", "b", "-f", str(second))
        time.sleep(0.05 * n)
        removed = run_cli(home, "rm", "a")
        code, err = finish(creating)
        assert code == 0, err
        assert removed.returncode == 0, removed.stderr
        assert store_problems(home) == []
        assert [n.rsplit("/", 1)[-1] for n in names(home)] == ["b:latest"]


def test_readers_during_gc(registry, tmp_path, big_remote):
    """show, verify NAME and reading the weights blob, from many processes, while gc runs with new garbage."""
    name = f"{registry.host}/{big_remote[0]}"
    home = tmp_path / "home"
    assert run_cli(home, "pull", name).returncode == 0
    store = Store(home)
    stop, gcs = threading.Event(), []
    loop = threading.Thread(target=gc_loop, args=(home, stop, gcs))
    loop.start()
    failures: list[str] = []

    def reader(k: int) -> None:
        for _ in range(ROUNDS):
            result = run_cli(home, *(["show", name] if k % 2 else ["verify", name]))
            if result.returncode != 0:
                failures.append(result.stderr)
            with store.session() as pins:  # unreferenced garbage for gc to find
                store.put_bytes(f"garbage {k} {time.monotonic()}".encode(), pins)

    try:
        readers = [threading.Thread(target=reader, args=(k,)) for k in range(6)]
        for thread in readers:
            thread.start()
        for thread in readers:
            thread.join()
    finally:
        stop.set()
        loop.join()
    assert failures == []
    assert all(r.returncode == 0 for r in gcs), [r.stderr for r in gcs if r.returncode]
    assert store_problems(home) == [] and names(home) == [name]
    print(f"\nreaders during gc: {6 * ROUNDS} reads, {len(gcs)} gc runs")


@pytest.mark.model
@pytest.mark.llama
def test_runs_during_gc(tmp_path, gemma_gguf):
    require_module("llama_cpp")
    home = tmp_path / "home"
    (tmp_path / "Modelfile").write_text(f"FROM {gemma_gguf}\n")
    assert run_cli(home, "create", "gemma", "-f", str(tmp_path / "Modelfile")).returncode == 0
    stop, gcs = threading.Event(), []
    loop = threading.Thread(target=gc_loop, args=(home, stop, gcs))
    loop.start()
    try:
        runs = [start_cli(home, "run", "gemma", "--num-predict", "8", "--seed", "1", "--temperature", "0",
                          "Say hi") for _ in range(env_int("RUNS", 3))]
        outcomes = [finish(p, timeout=300) for p in runs]
    finally:
        stop.set()
        loop.join()
    assert [code for code, _ in outcomes] == [0] * len(runs), [err for _, err in outcomes]
    assert all(r.returncode == 0 for r in gcs)
    assert store_problems(home) == []
