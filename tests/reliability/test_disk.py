"""Disk full and a read-only store: one clear error (exit 8, StoreError), the store stays consistent, and
partial files are cleaned up or resumed.

The store is a small tmpfs mounted for the test (this machine runs the suite as root); where mounting is
not allowed those tests skip, saying so, and ``test_file_size_limit`` still makes writes fail, with
RLIMIT_FSIZE in the subprocess (SIGXFSZ ignored, so a write past the limit fails with EFBIG).
"""

from __future__ import annotations

import resource
import signal
import subprocess
from pathlib import Path

import pytest

from capabilities import missing
from reliability_helpers import cli_env, modelpkg_cmd, names, run_cli, store_problems, working_files

pytestmark = pytest.mark.registry
MB = 1024 * 1024


def _mount(*args: str) -> str | None:
    result = subprocess.run(["mount", *args], capture_output=True, text=True)
    return None if result.returncode == 0 else (result.stderr.strip() or f"mount exited {result.returncode}")


@pytest.fixture
def small_fs(tmp_path):
    """A factory: ``small_fs(megabytes)`` (or ``small_fs(size=bytes)``) mounts a tmpfs of that size and returns
    its path (unmounted after)."""
    mounted: list[Path] = []

    def make(megabytes: int = 0, *, size: int | None = None) -> Path:
        folder = tmp_path / f"fs{len(mounted)}"
        folder.mkdir()
        error = _mount("-t", "tmpfs", "-o", f"size={size if size is not None else f'{megabytes}m'}", "tmpfs",
                       str(folder))
        if error is not None:
            missing(f"cannot mount a tmpfs here ({error}); test_file_size_limit covers ENOSPC-like failures")
        mounted.append(folder)
        return folder

    yield make
    for folder in reversed(mounted):
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def one_clear_error(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode == 8, (result.returncode, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("pulling")]
    assert lines[0].startswith("Error: ") and all(w in lines[0] for w in words), result.stderr
    assert "Traceback" not in result.stderr


def test_pull_on_a_full_disk_then_resume(registry, fault_proxy, small_fs, big_remote):
    repo, size, weights = big_remote
    home = small_fs(size // MB - 4) / "home"  # room for most of the weights, not all
    proxy = fault_proxy(registry)
    name = f"{proxy.host}/{repo}"
    one_clear_error(run_cli(home, "pull", name), "disk full")
    assert store_problems(home) == [] and names(home) == []
    kept = sum((home / "ingest" / f).stat().st_size for f in working_files(home) if f.endswith(".partial"))
    assert kept > 0  # the part that fitted is kept for the next pull

    assert _mount("-o", f"remount,size={size // MB + 16}m", str(home.parent)) is None
    proxy.clear()
    result = run_cli(home, "pull", name)
    assert result.returncode == 0, result.stderr
    assert store_problems(home) == [] and names(home) == [name]
    assert proxy.bytes_sent("GET", weights) <= size - kept  # resumed where the disk filled up
    assert working_files(home) == []  # the partial used up, its lock gone with it


@pytest.mark.parametrize("room", ["short of the weights", "the weights and 4 pages"])
def test_create_on_a_full_disk(small_fs, big_gguf, tmp_path, room):
    """The disk fills while the weights are copied, or after them, in one of the small atomic writes (a pin,
    a config, index.json) whose temp file is a dotfile, ``.write-<pid>-...``."""
    page = resource.getpagesize()
    if room == "short of the weights":
        home = small_fs(big_gguf.stat().st_size // MB - 4) / "home"
    else:
        home = small_fs(size=(-(-big_gguf.stat().st_size // page) + 4) * page) / "home"
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(f"FROM {big_gguf}\n")
    one_clear_error(run_cli(home, "create", "too-big", "-f", str(modelfile)), "disk full")
    # checked first (nothing has opened the store since): the failed create removed its own temp files,
    # dotfiles (.write-<pid>-...), pins and owner lock included
    assert working_files(home) == []
    assert store_problems(home) == [] and names(home) == []


def test_read_only_store(registry, small_fs, big_remote, big_gguf, tmp_path):
    repo, size, _ = big_remote
    home = small_fs(size // MB + 16) / "home"
    name = f"{registry.host}/{repo}"
    assert run_cli(home, "pull", name).returncode == 0
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(f"FROM {big_gguf}\nSYSTEM another\n")
    assert _mount("-o", "remount,ro", str(home.parent)) is None

    one_clear_error(run_cli(home, "create", "other", "-f", str(modelfile)), "read-only")
    one_clear_error(run_cli(home, "rm", name), "read-only")
    one_clear_error(run_cli(home, "cp", name, "copy"), "read-only")
    one_clear_error(run_cli(home, "gc", "--grace", "0"), "read-only")
    for readers in (["list"], ["show", name], ["verify"], ["verify", name]):  # reading still works
        result = run_cli(home, *readers)
        assert result.returncode == 0, (readers, result.stderr)
    result = run_cli(home, "pull", name)  # nothing to write: an up-to-date model needs no write
    assert result.returncode == 0, result.stderr
    assert store_problems(home) == [] and names(home) == [name]


def _files(home: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``home`` with its size and mtime: a read-only pull must change none of them."""
    return {str(p.relative_to(home)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(home.rglob("*")) if p.is_file()}


def test_pull_on_a_read_only_store(registry, fault_proxy, small_fs, big_remote, big_gguf, tmp_path):
    """Up to date: one manifest request, exit 0, nothing written. Anything to write, even with every blob
    already here (a tag moved to big's manifest, big's manifest under a new name): the one-line store error,
    no blob fetched, not a byte of the store changed."""
    from modelpkg.core.reference import parse_reference
    from modelpkg.ops.create import create
    from modelpkg.ops.push import push
    from modelpkg.store import Store

    repo, size, _ = big_remote
    home = small_fs(size // MB + 16) / "home"
    proxy = fault_proxy(registry)
    big = f"{proxy.host}/{repo}"
    moved, same_blobs = f"{proxy.host}/rel/ro:moved", f"{proxy.host}/rel/ro:same-blobs"
    scratch = Store(tmp_path / "scratch")

    def publish(name: str, modelfile: str) -> None:
        ref = parse_reference(name.replace(proxy.host, registry.host))
        create(scratch, ref, modelfile, big_gguf.parent)
        push(scratch, ref)

    publish(moved, f"FROM {big_gguf}\nSYSTEM first\n")
    for name in (big, moved):
        assert run_cli(home, "pull", name).returncode == 0
    publish(moved, f"FROM {big_gguf}\nPARAMETER temperature 0.5\n")  # the tag moves to big's manifest
    publish(same_blobs, f"FROM {big_gguf}\nPARAMETER temperature 0.5\n")  # big's manifest under another tag
    assert _mount("-o", "remount,ro", str(home.parent)) is None
    before = _files(home)
    proxy.clear()

    result = run_cli(home, "pull", big)
    assert result.returncode == 0, result.stderr
    assert "pulled" in result.stderr and "Error" not in result.stderr
    assert len(proxy.matching("GET", "/manifests/")) == 1 and proxy.matching("GET", "/blobs/") == []

    for name in (moved, same_blobs):
        one_clear_error(run_cli(home, "pull", name), "read-only")
    assert proxy.matching("GET", "/blobs/") == []
    assert _files(home) == before
    assert store_problems(home) == [] and names(home) == sorted([big, moved])


def _limit_file_size(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_file_size_limit(registry, big_remote, tmp_path):
    """Writes failing without a mount (RLIMIT_FSIZE -> EFBIG): the same one-line error, a consistent store,
    and the pull resumes once the limit is gone."""
    repo, size, _ = big_remote
    home = tmp_path / "home"
    name = f"{registry.host}/{repo}"
    result = subprocess.run(modelpkg_cmd("pull", name), env=cli_env(home), capture_output=True, text=True,
                            timeout=120, preexec_fn=_limit_file_size(size // 2))
    one_clear_error(result)
    assert store_problems(home) == [] and names(home) == []
    result = run_cli(home, "pull", name)
    assert result.returncode == 0, result.stderr
    assert store_problems(home) == [] and names(home) == [name]
    assert working_files(home) == []
