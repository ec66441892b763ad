"""Benchmark: `modelpkg pull` / `push` of a 1 GiB model against curl moving the same blob, on loopback.

Targets (issue 3), measured in the same run against a local CNCF distribution `docker-registry`:

- pull (manifest, download, sha256 verification, fsync and atomic commit into an empty store)
  <= 1.15x `curl -o` of the same blob. curl leaves its file in the page cache while pull has every blob
  on the disk before naming it, so `curl -o && sync -d` (the same durability) is shown for reference;
- push (HEAD, POST, streamed PUT, manifest) to an empty registry <= 1.15x a streamed `curl -T` POST + PUT;
- peak RSS of each modelpkg run < 100 MB (os.wait4 on the child: its own peak);
- a no-op pull (everything present: one manifest request) < 0.5 s.

Every run is a child process (`python -m modelpkg ...`, curl), timed from spawn to exit; best of N,
alternating modelpkg and curl. Pushes go to a fresh repository on a fresh registry each time, so no blob is
already there. The model is a GGUF of random weights (incompressible, like real quantised weights).

    .venv/bin/python bench/bench_transfer.py [--size-mib 1024] [--runs 3]

Prints a table and writes bench/results/transfer-<time>.json.

With ``--limit-rate RATE`` (issue 16) it measures instead how well ``pull --limit-rate`` holds the rate: a
pull of a ~200 MB model (``--size-mib 191``) into an empty store, best of N; the rate is the blob bytes over
the pull's time less a no-op pull's (process start and the manifest request, measured in the same run);
target: within 10% of RATE.

    .venv/bin/python bench/bench_transfer.py --limit-rate 20M --size-mib 191 --runs 3
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))


def child(args: list[str], env: dict | None = None) -> tuple[float, int]:
    """Run a command; (seconds, peak RSS in bytes of the command alone).

    The RSS comes from ``/usr/bin/time -f %M``: rusage of a child forked straight from this (large)
    process would count the parent's pages it had before exec.
    """
    with tempfile.NamedTemporaryFile("r") as rss:
        start = time.perf_counter()
        proc = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", rss.name, *args], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        elapsed = time.perf_counter() - start
        if proc.returncode:
            raise SystemExit(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.decode()[-2000:]}")
        lines = [line for line in rss.read().split() if line.isdigit()]
    return elapsed, int(lines[-1]) * 1024


def modelpkg(home: Path, *args: str) -> tuple[float, int]:
    env = {**os.environ, "MODELPKG_HOME": str(home), "MODELPKG_CONFIG_DIR": str(home / "config")}
    return child([sys.executable, "-m", "modelpkg", *args], env)


def curl_push(url: str, repo: str, path: Path, digest: str) -> tuple[float, int]:
    """POST then a streamed PUT with curl -T (a shell runs both; the timing covers both, RSS is curl's)."""
    script = (f'loc=$(curl -sf -X POST -D - -o /dev/null {url}/v2/{repo}/blobs/uploads/ '
              f'| tr -d "\\r" | sed -n "s/^[Ll]ocation: //p") && '
              f'exec curl -sf -o /dev/null -T {path} -H "Content-Type: application/octet-stream" '
              f'"$loc&digest={digest}"')
    return child(["sh", "-c", script])


def best(samples: list[tuple[float, int]]) -> dict:
    times = [t for t, _ in samples]
    return {"best_s": min(times), "runs_s": times, "peak_rss_mb": max(r for _, r in samples) / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--work", type=Path, default=None, help="a folder on the disk to measure (default: a temp dir)")
    parser.add_argument("--limit-rate", default=None, help="measure pull --limit-rate RATE instead (issue 16)")
    options = parser.parse_args()
    if options.limit_rate:
        return limit_rate_bench(options)

    from registry_env import start_registry

    work = Path(tempfile.mkdtemp(prefix="bench-transfer-", dir=options.work))
    registries = []
    try:
        gguf_dir = work / "src"
        gguf_dir.mkdir()
        gguf = gguf_dir / "model.gguf"
        # in a child: the writer's arrays would otherwise stay in this process
        subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); from bench_create import "
                        "make_gguf; from pathlib import Path; make_gguf(Path(sys.argv[2]), int(sys.argv[3]))",
                        str(ROOT / "bench"), str(gguf), str(options.size_mib)], check=True)
        size = gguf.stat().st_size
        h = hashlib.sha256()
        with open(gguf, "rb") as f:
            while chunk := f.read(4 << 20):
                h.update(chunk)
        digest = f"sha256:{h.hexdigest()}"
        (gguf_dir / "Modelfile").write_text(f"FROM {gguf}\n")

        def registry():
            server = start_registry(work / f"registry-{len(registries)}")
            registries.append(server)
            return server

        # the model, created once in a source store
        source = work / "source-home"
        name0 = "127.0.0.1:1/bench/model:v1"
        modelpkg(source, "create", name0, "-f", str(gguf_dir / "Modelfile"))

        pushes, curl_pushes, pulls, curl_pulls, curl_synced, noops = [], [], [], [], [], []
        serving = registry()
        for run in range(options.runs):
            # push: a fresh registry for modelpkg and another for curl, so neither finds the blob there
            target = registry()
            name = f"{target.host}/bench/model:v1"
            modelpkg(source, "cp", name0, name)
            pushes.append(modelpkg(source, "push", name))
            curl_target = registry()
            curl_pushes.append(curl_push(curl_target.url, "bench/curl", gguf, digest))
            for server in (target, curl_target):
                server.stop()
                shutil.rmtree(server.storage, ignore_errors=True)

            # pull: from the serving registry into an empty store, and curl -o of the same blob
            name = f"{serving.host}/bench/model:v1"
            if run == 0:
                modelpkg(source, "cp", name0, name)
                modelpkg(source, "push", name)
                child(["curl", "-sf", "-o", "/dev/null", f"{serving.url}/v2/bench/model/blobs/{digest}"])  # warm
            home = work / f"pull-home-{run}"
            pulls.append(modelpkg(home, "pull", name))
            noops.append(modelpkg(home, "pull", name))
            out = work / "curl.out"
            curl_pulls.append(child(["curl", "-sf", "-o", str(out), f"{serving.url}/v2/bench/model/blobs/{digest}"]))
            out.unlink()
            # the same with the durability pull gives (data on disk before the name exists)
            curl_synced.append(child(["sh", "-c", f'curl -sf -o {out} {serving.url}/v2/bench/model/blobs/{digest} '
                                                  f'&& exec sync -d {out}']))
            out.unlink()
            shutil.rmtree(home)

        results = {
            "size_bytes": size,
            "runs": options.runs,
            "pull": best(pulls), "curl_get": best(curl_pulls), "curl_get_fsync": best(curl_synced),
            "push": best(pushes), "curl_put": best(curl_pushes),
            "noop_pull": best(noops),
        }
        results["pull_ratio"] = results["pull"]["best_s"] / results["curl_get"]["best_s"]
        results["pull_ratio_fsync"] = results["pull"]["best_s"] / results["curl_get_fsync"]["best_s"]
        results["push_ratio"] = results["push"]["best_s"] / results["curl_put"]["best_s"]
        rows = [
            ("pull (modelpkg)", results["pull"], f"{results['pull_ratio']:.2f}x curl (target <= 1.15x)"),
            ("curl -o", results["curl_get"], ""),
            ("curl -o && sync -d", results["curl_get_fsync"], f"pull is {results['pull_ratio_fsync']:.2f}x this"),
            ("push (modelpkg)", results["push"], f"{results['push_ratio']:.2f}x curl (target <= 1.15x)"),
            ("curl -T (POST+PUT)", results["curl_put"], ""),
            ("no-op pull", results["noop_pull"], "target < 0.5 s"),
        ]
        print(f"{size / 2**20:.0f} MiB blob, best of {options.runs} runs")
        print(f"{'what':<20} {'best s':>8} {'MB/s':>8} {'peak RSS MB':>12}  note")
        for label, r, note in rows:
            speed = f"{size / r['best_s'] / 1e6:8.0f}" if label != "no-op pull" else f"{'':>8}"
            print(f"{label:<20} {r['best_s']:8.2f} {speed} {r['peak_rss_mb']:12.1f}  {note}")
        out_dir = ROOT / "bench" / "results"
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"transfer-{time.strftime('%Y%m%d-%H%M%S')}.json"
        path.write_text(json.dumps(results, indent=2))
        print(f"wrote {path}")
    finally:
        for server in registries:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


def limit_rate_bench(options) -> None:
    """``pull --limit-rate``: the rate a pull holds, against the rate asked for."""
    from modelpkg.core.units import parse_rate
    from registry_env import start_registry

    wanted = parse_rate(options.limit_rate)
    work = Path(tempfile.mkdtemp(prefix="bench-rate-", dir=options.work))
    server = None
    try:
        gguf_dir = work / "src"
        gguf_dir.mkdir()
        gguf = gguf_dir / "model.gguf"
        subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); from bench_create import "
                        "make_gguf; from pathlib import Path; make_gguf(Path(sys.argv[2]), int(sys.argv[3]))",
                        str(ROOT / "bench"), str(gguf), str(options.size_mib)], check=True)
        size = gguf.stat().st_size
        (gguf_dir / "Modelfile").write_text(f"FROM {gguf}\n")
        server = start_registry(work / "registry")
        name = f"{server.host}/bench/limited:v1"
        source = work / "source-home"
        modelpkg(source, "create", name, "-f", str(gguf_dir / "Modelfile"))
        modelpkg(source, "push", name)
        pulls, noops = [], []
        for run in range(options.runs):
            home = work / f"pull-home-{run}"
            pulls.append(modelpkg(home, "pull", "--limit-rate", options.limit_rate, name))
            noops.append(modelpkg(home, "pull", "--limit-rate", options.limit_rate, name))
            shutil.rmtree(home)
        transfer = [p[0] - n[0] for p, n in zip(pulls, noops, strict=True)]
        rates = [size / t for t in transfer]
        best_rate = min(rates, key=lambda r: abs(r - wanted))
        results = {"size_bytes": size, "limit_rate": options.limit_rate, "wanted_bytes_per_s": wanted,
                   "pull_s": [p[0] for p in pulls], "noop_pull_s": [n[0] for n in noops],
                   "rates_bytes_per_s": rates, "deviation": [r / wanted - 1 for r in rates],
                   "worst_deviation": max(abs(r / wanted - 1) for r in rates), "target_deviation": 0.10}
        print(f"{size / 1e6:.0f} MB blob, pull --limit-rate {options.limit_rate} ({wanted / 1e6:.2f} MB/s), "
              f"{options.runs} runs")
        for p, n, r in zip(pulls, noops, rates, strict=True):
            print(f"  pull {p[0]:6.2f} s, no-op pull {n[0]:5.2f} s -> {r / 1e6:6.2f} MB/s ({r / wanted - 1:+.1%})")
        print(f"worst deviation {results['worst_deviation']:.1%} (target <= 10%); closest {best_rate / 1e6:.2f} MB/s")
        out_dir = ROOT / "bench" / "results"
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"limit-rate-{time.strftime('%Y%m%d-%H%M%S')}.json"
        path.write_text(json.dumps(results, indent=2))
        print(f"wrote {path}")
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
