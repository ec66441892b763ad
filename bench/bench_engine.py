"""Benchmark: modelpkg's single stream against the engine itself (issue 14), and the engine's batched ceiling.

- ``tg64``: warm generation speed of 64 greedy tokens, 2 threads, Gemma 3 270M Q4_K_M (the same GGUF), in
  alternating fresh processes: modelpkg (``chat.Session.request``, as ``modelpkg run`` and serve generate,
  in-process runner), a plain llama-cpp-python script (``Llama.create_completion``, streamed), and
  llama.cpp's own ``llama-bench -p 0 -n 64 -t 2 -fa 0`` (built by ``bench/llamacpp.py`` from the llama.cpp
  that the installed llama-cpp-python vendors). Each Python process loads the model, generates once to warm
  up, then times ``--generations`` generations with a fresh KV cache each; speed is
  (tokens - 1) / (last token - first token), the time from the first token to the last as a caller sees it
  (llama-bench's tg has no prompt and no sampling: it times 64 decodes of one token each).
- ``batched``: ``llama-batched-bench -npp 32 -ntg 64 -npl 1,2,4,8,16 -t 2`` (unshared prompts): the aggregate
  decode speed llama.cpp reaches with N sequences in one batch, the ceiling a batching server can approach.

    .venv/bin/python bench/bench_engine.py [--runs 5] [--generations 5] [--reference llama-bench,batched]

``--profile`` instead runs one modelpkg process under cProfile (model loaded and warmed first, then
``--generations`` generations) and prints where the time per token goes. Writes
bench/results/engine-<time>.json.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import llamacpp  # noqa: E402 - bench/ is not a package
from bench_run import prepare as prepare_store  # noqa: E402

PROMPT = "Here is a list of three primary colors:\n1."
TOKENS, THREADS, NUM_CTX, BATCH = 64, 2, 4096, 512
MODELFILE = f"""FROM ./gemma3-270m-q4_k_m.gguf
PARAMETER temperature 0
PARAMETER seed 42
PARAMETER num_ctx {NUM_CTX}
PARAMETER num_batch {BATCH}
PARAMETER num_thread {THREADS}
"""
SAMPLING = {"temperature": 0.0, "top_k": 40, "top_p": 0.9, "min_p": 0.0, "typical_p": 1.0, "repeat_penalty": 1.0,
            "seed": 42}


# ------------------------------------------------------------------------------------------------------
# the Python sides, each in a fresh process (``--child``)


def _speed(times: list[float], count: int) -> float:
    return (count - 1) / (times[-1] - times[0])


def child_modelpkg(home: str, generations: int, tokens: int) -> dict:
    os.environ["MODELPKG_HOME"] = home
    from modelpkg.base import config
    from modelpkg.ops.chat import Session, open_model
    from modelpkg.store import Store

    details = open_model(Store(config.home()), config.reference("bench"), pull=False)
    session = Session(details, {"num_predict": tokens})
    session.runner()

    def one() -> dict:
        times = []
        generation = session.request(prompt=PROMPT)
        for _ in generation:
            times.append(time.perf_counter())
        r = generation.result
        return {"tokens": r.eval_count, "tokens_per_s": _speed(times, r.eval_count),
                "server_tokens_per_s": r.eval_count / r.eval_duration, "text": r.text}

    one()
    return {"generations": [one() for _ in range(generations)]}


def child_plain(blob: str, generations: int, tokens: int) -> dict:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=blob, verbose=False, n_ctx=NUM_CTX, n_batch=BATCH, n_threads=THREADS,
                          n_threads_batch=THREADS)

    def one() -> dict:
        llm.reset()
        times, text = [], []
        for chunk in llm.create_completion(PROMPT, max_tokens=tokens, stream=True, **SAMPLING):
            times.append(time.perf_counter())
            text.append(chunk["choices"][0]["text"])
        return {"tokens": len(times), "tokens_per_s": _speed(times, len(times)), "text": "".join(text)}

    one()
    return {"generations": [one() for _ in range(generations)]}


def run_child(kind: str, target: str, generations: int, tokens: int) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", kind, "--target", target, "--generations",
                           str(generations), "--tokens", str(tokens)], capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{kind} run failed:\n{done.stderr}")
    return json.loads(done.stdout.splitlines()[-1])


def profile(home: str, generations: int, tokens: int) -> str:
    """cProfile of modelpkg's generation loop (load and warm-up outside the profile)."""
    os.environ["MODELPKG_HOME"] = home
    from modelpkg.base import config
    from modelpkg.ops.chat import Session, open_model
    from modelpkg.store import Store

    session = Session(open_model(Store(config.home()), config.reference("bench"), pull=False),
                      {"num_predict": tokens})
    session.runner()
    for _ in session.request(prompt=PROMPT):
        pass
    profiler = cProfile.Profile()
    count = 0
    start = time.perf_counter()
    profiler.enable()
    for _ in range(generations):
        generation = session.request(prompt=PROMPT)
        for _ in generation:
            pass
        count += generation.result.eval_count
    profiler.disable()
    wall = time.perf_counter() - start
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    print(f"{generations} generations, {count} tokens, {wall:.2f} s under the profiler "
          f"({wall / count * 1000:.2f} ms per token)\n", file=out)
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(40)
    return out.getvalue()


# ------------------------------------------------------------------------------------------------------
# llama.cpp's own tools


def llama_bench(gguf: Path, tokens: int, repetitions: int) -> dict:
    command = [str(llamacpp.binary("llama-bench")), "-m", str(gguf), "-p", "0", "-n", str(tokens), "-t",
               str(THREADS), "-b", str(BATCH), "-ub", str(BATCH), "-fa", "0", "-r", str(repetitions), "-o", "json"]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    rows = json.loads(done.stdout)
    return {"command": command, "tokens_per_s": rows[0]["avg_ts"], "samples_ts": rows[0]["samples_ts"],
            "build_commit": rows[0].get("build_commit"), "cpu_info": rows[0].get("cpu_info")}


def batched_bench(gguf: Path, npl: str) -> dict:
    most = max(int(n) for n in npl.split(","))
    command = [str(llamacpp.binary("llama-batched-bench")), "-m", str(gguf), "-t", str(THREADS), "-tb",
               str(THREADS), "-c", str(most * (32 + 64)), "-b", str(BATCH), "-ub", str(BATCH), "-fa", "off",
               "-npp", "32", "-ntg", "64", "-npl", npl, "--output-format", "jsonl"]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    rows = [json.loads(line) for line in (done.stdout + done.stderr).splitlines() if line.startswith("{")]
    return {"command": command, "rows": rows}


# ------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="alternating rounds (a fresh process each)")
    parser.add_argument("--generations", type=int, default=5, help="timed generations per process")
    parser.add_argument("--tokens", type=int, default=TOKENS)
    parser.add_argument("--reference", default="llama-bench,plain,batched",
                        help="comma-separated: llama-bench, plain (llama-cpp-python), batched (llama-batched-bench)")
    parser.add_argument("--npl", default="1,2,4,8,16", help="llama-batched-bench's sequence counts")
    parser.add_argument("--gguf", type=Path, help="use this Gemma 3 270M file instead of assembling one")
    parser.add_argument("--profile", action="store_true", help="cProfile modelpkg's generation instead")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child = child_plain if args.child == "plain" else child_modelpkg
        print(json.dumps(child(args.target, args.generations, args.tokens)))
        return
    references = set(args.reference.split(","))

    work = Path(tempfile.mkdtemp(prefix="bench-engine-", dir=os.environ.get("BENCH_DIR")))
    try:
        home, blob = prepare_store(work, args.gguf, MODELFILE)
        if args.profile:
            print(profile(str(home), args.generations, args.tokens))
            return
        runs: dict[str, list[float]] = {"modelpkg": [], "modelpkg_eval_duration": []}
        if "plain" in references:
            runs["plain"] = []
        if "llama-bench" in references:
            runs["llama-bench"] = []
        texts, bench_info = set(), {}
        sides = [s for s in ("modelpkg", "plain", "llama-bench") if s in runs]
        for i in range(args.runs):
            order = sides[i % len(sides):] + sides[:i % len(sides)]
            for side in order:
                if side == "llama-bench":
                    bench_info = llama_bench(blob, args.tokens, args.generations)
                    runs[side].append(bench_info["tokens_per_s"])
                    continue
                got = run_child(side, str(home) if side == "modelpkg" else str(blob), args.generations, args.tokens)
                runs[side].append(statistics.median(g["tokens_per_s"] for g in got["generations"]))
                if side == "modelpkg":
                    runs["modelpkg_eval_duration"].append(
                        statistics.median(g["server_tokens_per_s"] for g in got["generations"]))
                texts |= {g["text"] for g in got["generations"]}
            print(f"round {i + 1}/{args.runs}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in runs.items()),
                  file=sys.stderr)
        batched = batched_bench(blob, args.npl) if "batched" in references else None

        medians = {k: statistics.median(v) for k, v in runs.items()}
        ratios = {f"modelpkg / {k}": medians["modelpkg"] / medians[k] for k in ("plain", "llama-bench")
                  if k in medians}
        result = {
            "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "command": " ".join([".venv/bin/python", "bench/bench_engine.py", *sys.argv[1:]]),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "platform": platform.platform(), "loadavg_at_end": os.getloadavg()},
            "settings": {"prompt": PROMPT, "tokens": args.tokens, "threads": THREADS, "num_ctx": NUM_CTX,
                         "batch": BATCH, "runs": args.runs, "generations_per_process": args.generations,
                         "llama_cpp_python_version": llamacpp.version(), "modelfile": MODELFILE},
            "tg_tokens_per_s": {"runs": runs, "medians": medians, "ratios_of_medians": ratios},
            "llama_bench": bench_info, "texts_identical": len(texts) == 1, "texts": sorted(texts),
            "batched_bench": batched,
        }
        print(f"\n{'single stream, 64 greedy tokens, 2 threads':<44}{'tokens/s (median)':>18}")
        for key, value in medians.items():
            print(f"{key:<44}{value:>18.1f}")
        for key, value in ratios.items():
            print(f"{key}: {value:.3f}x")
        if batched:
            print(f"\n{'llama-batched-bench (pp 32, tg 64)':<36}{'B':>4}{'S_TG t/s':>10}{'x of B=1':>10}")
            one = next((r["speed_tg"] for r in batched["rows"] if r["pl"] == 1), None)
            for row in batched["rows"]:
                scale = f"{row['speed_tg'] / one:.2f}" if one else "-"
                print(f"{'':<36}{row['pl']:>4}{row['speed_tg']:>10.1f}{scale:>10}")
        out = REPO / "bench" / "results" / f"engine-{time.strftime('%Y%m%d-%H%M%S')}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {out.relative_to(REPO)}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
