"""Benchmark: `modelpkg import-hf` and `modelpkg import-lmstudio` of a 1 GiB GGUF against Python's hashlib hashing it.

Target (issue 16): each import takes at most 1.5x the time hashlib needs to sha256 the file, measured in the
same run, and adds no bytes of weights on disk (hard link or reflink: `du` over the other tool's folder and
the store together counts the shared file once). The GGUF sits in a Hugging Face hub cache laid out as
huggingface_hub writes it (blobs/ + a snapshot of relative symlinks) and in an LM Studio models folder
(publisher/model/file.gguf). The file is read once before timing (page cache warm for both sides). Best of
N runs each, alternating, each import into an empty store; the timing includes the process start.

    .venv/bin/python bench/bench_import.py [--size-mib 1024] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_create import time_hashlib  # the same hashlib reference as bench_create

COMMIT = "0" * 40


def du_kib(*paths: Path) -> int:
    """``du -sk --total``: blocks in use under ``paths``, a hard-linked file counted once."""
    out = subprocess.run(["du", "-sk", "--total", *map(str, paths)], check=True, capture_output=True, text=True)
    return int(out.stdout.strip().splitlines()[-1].split()[0])


def hf_cache(root: Path, gguf: Path) -> Path:
    folder = root / "models--bench--Big-GGUF"
    (folder / "blobs").mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(COMMIT)
    os.replace(gguf, folder / "blobs" / "a1b2c3")
    (folder / "snapshots" / COMMIT).mkdir(parents=True)
    os.symlink("../../blobs/a1b2c3", folder / "snapshots" / COMMIT / "Big-Q4_K_M.gguf")
    return folder / "blobs" / "a1b2c3"


def lmstudio(root: Path, gguf: Path) -> None:
    folder = root / "bench" / "Big-GGUF"
    folder.mkdir(parents=True)
    os.link(gguf, folder / "Big-Q4_K_M.gguf")


def time_import(command: list[str], work: Path, env: dict) -> tuple[float, int, int]:
    """(seconds, extra KiB on disk over the source folder, peak RSS KiB) of one import into a fresh store."""
    home = Path(tempfile.mkdtemp(dir=work))
    source = Path(env["SOURCE"])
    before = du_kib(source)
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "modelpkg", *command],
                            env={**env, "MODELPKG_HOME": str(home)}, stderr=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"modelpkg {' '.join(command)} failed")
    extra = du_kib(source, home) - before
    shutil.rmtree(home)
    return elapsed, extra, usage.ru_maxrss


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-import-", dir=os.environ.get("BENCH_DIR")))
    try:
        made = work / "model.gguf"
        subprocess.run([sys.executable, str(Path(__file__).parent / "bench_create.py"), "--make", str(made),
                        "--size-mib", str(args.size_mib)], check=True)
        blob = hf_cache(work / "hub", made)
        lmstudio(work / "lms", blob)
        time_hashlib(blob)  # warm the page cache
        envs = {
            "import-hf": {**os.environ, "HF_HUB_CACHE": str(work / "hub"), "SOURCE": str(work / "hub")},
            "import-lmstudio": {**os.environ, "SOURCE": str(work / "lms")},
        }
        commands = {"import-hf": ["import-hf"], "import-lmstudio": ["import-lmstudio", "--models", str(work / "lms")]}
        hashes: list[float] = []
        runs: dict[str, list[float]] = {name: [] for name in commands}
        extra: dict[str, int] = {}
        rss: dict[str, int] = {}
        for _ in range(args.runs):
            hashes.append(time_hashlib(blob))
            for name, command in commands.items():
                elapsed, added, peak = time_import(command, work, envs[name])
                runs[name].append(elapsed)
                extra[name] = max(extra.get(name, 0), added)
                rss[name] = max(rss.get(name, 0), peak)
        result = {
            "size_bytes": blob.stat().st_size,
            "hashlib_s": min(hashes),
            **{f"{name}_s": min(times) for name, times in runs.items()},
            **{f"{name}_ratio": min(times) / min(hashes) for name, times in runs.items()},
            **{f"{name}_extra_kib": kib for name, kib in extra.items()},
            **{f"{name}_peak_rss_mb": kib / 1024 for name, kib in rss.items()},
            "target_ratio": 1.5,
            "runs": {"hashlib": hashes, **runs},
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "import.json").write_text(json.dumps(result, indent=2))
    print(f"{'hashlib sha256':<22}{result['hashlib_s']:8.2f} s")
    for name in commands:
        print(f"{'modelpkg ' + name:<26}{result[name + '_s']:8.2f} s   ratio {result[name + '_ratio']:.2f}x "
              f"(target <= 1.5x), {result[name + '_extra_kib']} KiB more on disk (metadata blobs; weights shared), "
              f"peak RSS {result[name + '_peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
