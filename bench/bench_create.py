"""Benchmark: `modelpkg create` of a 1 GiB GGUF against Python's hashlib hashing the same file.

Target (issue 2): create takes at most 1.5x the time hashlib needs to sha256 the file, measured in the
same run. Both read the file from the page cache (it is read once before timing); create also writes the
copy into the store and fsyncs it, since ext4 (this machine) has no reflinks. Best of N runs each,
alternating, each create into an empty store.

    .venv/bin/python bench/bench_create.py [--size-mib 1024] [--runs 3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_gguf(path: Path, size_mib: int) -> None:
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_file_type(1)
    writer.add_context_length(2048)
    values = np.random.default_rng(0).integers(0, 1 << 16, size_mib * (1 << 19), dtype=np.uint16).view(np.float16)
    writer.add_tensor("weights", values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def time_hashlib(path: Path) -> float:
    start = time.perf_counter()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 << 20):
            h.update(chunk)
    return time.perf_counter() - start


def time_create(path: Path, work: Path) -> tuple[float, int]:
    home = Path(tempfile.mkdtemp(dir=work))
    modelfile = work / "Modelfile"
    modelfile.write_text(f"FROM {path}\n")
    env = {**os.environ, "MODELPKG_HOME": str(home)}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "modelpkg", "create", "bench", "-f", str(modelfile)], env=env,
                            stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS
    elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"modelpkg create failed with exit code {proc.returncode}")
    rss = usage.ru_maxrss
    shutil.rmtree(home)
    return elapsed, rss


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--make", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make:
        make_gguf(Path(args.make), args.size_mib)
        return
    work = Path(tempfile.mkdtemp(prefix="bench-create-", dir=os.environ.get("BENCH_DIR")))
    try:
        gguf_path = work / "model.gguf"
        # in a child process, so this process stays small and the create's RSS is its own
        subprocess.run([sys.executable, __file__, "--make", str(gguf_path), "--size-mib", str(args.size_mib)],
                       check=True)
        time_hashlib(gguf_path)  # warm the page cache
        hashes, creates, rss = [], [], 0
        for _ in range(args.runs):
            hashes.append(time_hashlib(gguf_path))
            elapsed, peak = time_create(gguf_path, work)
            creates.append(elapsed)
            rss = max(rss, peak)
        result = {
            "size_bytes": gguf_path.stat().st_size,
            "hashlib_s": min(hashes),
            "create_s": min(creates),
            "ratio": min(creates) / min(hashes),
            "target_ratio": 1.5,
            "create_peak_rss_mb": rss / 1024,
            "runs": {"hashlib": hashes, "create": creates},
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "create.json").write_text(json.dumps(result, indent=2))
    print(f"{'hashlib sha256':<22}{result['hashlib_s']:8.2f} s")
    print(f"{'modelpkg create':<22}{result['create_s']:8.2f} s   ratio {result['ratio']:.2f}x (target <= 1.5x)")
    print(f"{'create peak RSS':<22}{result['create_peak_rss_mb']:8.0f} MB")


if __name__ == "__main__":
    main()
