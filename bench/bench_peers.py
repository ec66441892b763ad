"""Benchmark: modelpkg against the real Ollama, in the same run (issue 13).

- pull: the same model (a 1 GiB GGUF of random weights, pushed with ``--format ollama``) from the same
  loopback registry, through the same redirecting front (ollama_env.RedirectFront: Ollama needs a redirect
  to download blobs), into fresh stores each round, alternating: ``modelpkg pull`` vs ``ollama pull
  --insecure`` (a fresh ``ollama serve`` per round, timed from the CLI's start to its exit). Peak RSS: modelpkg
  the process's own; Ollama the server's (VmHWM) and the CLI's. Target: modelpkg <= 0.9x Ollama's time.

Not measured: ``run`` tokens/s against ``ollama run --verbose``: Ollama cannot generate here (v0.34 needs the
llama-server its CMake build downloads; v0.24.0 does not build from the module proxy, see .ci/peers).

    .venv/bin/python bench/bench_peers.py [--runs 3] [--size-mib 1024]

Prints a table and writes bench/results/peers-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size-mib", type=int, default=1024)
    options = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-peers-", dir=os.environ.get("BENCH_DIR")))
    results: dict = {"runs": options.runs}
    try:
        results["pull"] = bench_pull(work, options.runs, options.size_mib)
        p = results["pull"]
        print(f"pull {p['size_bytes'] / 2**30:.2f} GiB: modelpkg {p['modelpkg_s']['median']:.2f} s vs ollama "
              f"{p['ollama_s']['median']:.2f} s median: {p['ratio_median']:.2f}x (target <= 0.9x); peak RSS "
              f"modelpkg {p['modelpkg_peak_rss'] / 2**20:.0f} MiB, ollama server "
              f"{p['ollama_server_peak_rss'] / 2**20:.0f} MiB + CLI {p['ollama_cli_peak_rss'] / 2**20:.0f} MiB")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = ROOT / "bench" / "results" / f"peers-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
