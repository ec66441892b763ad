"""Helpers for the reliability suite: a model of a few tens of MB in the registry, CLI subprocesses, and the
store invariants every fault test checks afterwards (verify clean, no half model listed). tests/conftest.py
loads this module as a plugin, so its fixtures are registered once (imported into each test module, the
session-scoped model would be built once per module); no conftest.py here: the folder has no ``__init__``
and a second ``conftest`` module would shadow tests/conftest.py's.

Counts and sizes come from env vars with CI-sized defaults (see ``env_int``), so a longer soak is one
variable away: ``MODELPKG_REL_KILL_TRIALS=200 MODELPKG_REL_BIG_MB=128 pytest tests/reliability``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def make_gguf(path: Path, **kw) -> Path:
    """tests/conftest.py's make_gguf (loaded by path: in this folder ``conftest`` may name another module)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_top_conftest", REPO / "tests" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_gguf(path, **kw)


def env_int(name: str, default: int) -> int:
    """A count or size for this suite from ``$MODELPKG_REL_<NAME>`` (CI-sized default otherwise)."""
    value = os.environ.get(f"MODELPKG_REL_{name}")
    return int(value) if value else default


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPKG_")}
    env.update(MODELPKG_HOME=str(home), MODELPKG_CONFIG_DIR=str(home.parent / (home.name + "-config")),
               PYTHONPATH=str(REPO))
    env.update(extra)
    return env


def modelpkg_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "modelpkg", *args]


def run_cli(home: Path, *args: str, timeout: float = 120, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(modelpkg_cmd(*args), env=cli_env(home, **extra), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def start_cli(home: Path, *args: str, **extra: str) -> subprocess.Popen:
    return subprocess.Popen(modelpkg_cmd(*args), env=cli_env(home, **extra), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def store_problems(home: Path) -> list[str]:
    """What is wrong with the store at ``home``: blobs failing verification, names missing a blob."""
    from modelpkg.core.manifest import Manifest, parse_manifest
    from modelpkg.store import Store

    store = Store(home)
    if not (home / "index.json").exists():
        return []
    problems = [f"{d}: {p}" for d, p in store.verify()]
    for entry in store.refs():
        if not store.has_blob(entry.digest):
            problems.append(f"{entry.name}: manifest {entry.digest} missing")
            continue
        parsed = parse_manifest(store.read_blob(entry.digest), entry.media_type)
        if isinstance(parsed, Manifest):
            for blob in parsed.blobs():
                if not store.has_blob(blob.digest, blob.size):
                    problems.append(f"{entry.name}: half model, blob {blob.digest} missing")
    return problems


def working_files(home: Path) -> list[str]:
    """What operations left in the store's ``ingest/`` (paths relative to it), dotfiles included: temp files,
    downloads and their locks, pins, owner locks nobody holds. Not the records kept on purpose: the verified
    markers, ``origins/<host>.json`` (and its lock), and the owner locks of live processes (this one's own)."""
    from modelpkg.base import fsutil

    ingest = home / "ingest"
    if not ingest.exists():
        return []
    left = []
    for path in sorted(ingest.rglob("*")):
        relative = path.relative_to(ingest)
        if path.is_dir() or relative.parts[0] == "verified":
            continue
        if relative.parts[0] == "origins" and not path.name.startswith("."):
            continue
        if relative.parts[0] == "owners" and fsutil.lock_held(path):
            continue
        left.append(str(relative))
    return left


def names(home: Path) -> list[str]:
    from modelpkg.store import Store

    if not (home / "index.json").exists():
        return []
    return sorted(e.name for e in Store(home).refs())


@pytest.fixture(scope="session")
def big_gguf(tmp_path_factory) -> Path:
    """A valid GGUF of ``$MODELPKG_REL_BIG_MB`` MB (24 by default): big enough that a kill lands mid-copy."""
    megabytes = env_int("BIG_MB", 24)
    folder = tmp_path_factory.mktemp("big")
    return make_gguf(folder / "big.gguf", tensor_values=megabytes * 512 * 1024, seed=7)


@pytest.fixture(scope="session")
def big_remote(registry, big_gguf, tmp_path_factory):
    """The big model, created in a scratch store and pushed to the session registry; returns
    ``(repository path, size of its weights blob, the path regex of that blob)``."""
    from modelpkg.core.reference import parse_reference
    from modelpkg.ops.create import create
    from modelpkg.ops.push import push
    from modelpkg.store import Store

    store = Store(tmp_path_factory.mktemp("big-store"))
    ref = parse_reference(f"{registry.host}/rel/big:v1")
    create(store, ref, f"FROM {big_gguf}\nPARAMETER temperature 0.5\n", big_gguf.parent)
    push(store, ref)
    from modelpkg.base.fsutil import hash_file

    digest, size = hash_file(big_gguf)
    return "rel/big:v1", size, f"/blobs/{digest}"
