"""`modelpkg list` start-up time against an earlier revision of this repository, measured in the same run.

Each round runs `python -m modelpkg list` on an empty store once from this tree and once from a git worktree
of the reference revision, in alternating order; the median and best of each, and their ratio, are printed
and kept in bench/results/startup-<time>.json. The reference is the revision's own code with this venv.

    .venv/bin/python bench/bench_startup.py --against dfb6436 --runs 41
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

REPO = Path(__file__).resolve().parents[1]


def one_run(tree: Path, env: dict) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "modelpkg", "list"], env={**env, "PYTHONPATH": str(tree)}, check=True,
                   capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", required=True, help="the reference revision (a commit, tag or branch)")
    parser.add_argument("--runs", type=int, default=41)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        reference = Path(work) / "reference"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(reference), args.against],
                       check=True)
        try:
            env = {**os.environ, "MODELPKG_HOME": str(Path(work) / "home"),
                   "MODELPKG_CONFIG_DIR": str(Path(work) / "config")}
            trees = {"this tree": REPO, args.against: reference}
            for tree in trees.values():  # compile the .pyc files and create the store before timing
                one_run(tree, env)
            times: dict[str, list[float]] = {name: [] for name in trees}
            for i in range(args.runs):
                for name, tree in (list(trees.items()) if i % 2 else list(trees.items())[::-1]):
                    times[name].append(one_run(tree, env))
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(reference)], check=True)
    summary = {name: {"median_s": statistics.median(v), "best_s": min(v), "runs": v} for name, v in times.items()}
    ours, theirs = summary["this tree"], summary[args.against]
    summary["ratio_median"] = ours["median_s"] / theirs["median_s"]
    summary["ratio_best"] = ours["best_s"] / theirs["best_s"]
    for name in trees:
        median, best = summary[name]["median_s"] * 1000, summary[name]["best_s"] * 1000
        print(f"{name:<12} median {median:6.1f} ms   best {best:6.1f} ms")
    print(f"ratio        median {summary['ratio_median']:.3f}        best {summary['ratio_best']:.3f}")
    out = REPO / "bench" / "results" / time.strftime("startup-%Y%m%d-%H%M%S.json")
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"against": args.against, **summary}, indent=1))
    print(f"kept {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
