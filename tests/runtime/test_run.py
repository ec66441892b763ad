"""``modelpkg run`` end to end on the real Gemma 3 270M in llama.cpp, plus the runner's pure option mapping.

The model tests compare against a plain llama-cpp-python call on the same GGUF file with the same prompt
and settings: with a fixed seed the text must be identical, which checks the option mapping, the
tokenization (BOS, special tokens) and the generation loop at once. The store and the models are made
once per module; each ``run`` loads the model (about half a second).
"""

from __future__ import annotations

import fcntl
import inspect
import json
import os
import pty
import select
import signal
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from capabilities import require_module
from modelpkg.cli.app import cli
from modelpkg.core.errors import RunnerError
from modelpkg.runtime import runner as rn

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "Modelfile.examples"
PRIMARY = "Here is a list of three primary colors:\n1."


# ------------------------------------------------------------------------------------------------------
# option mapping (pure: no model)


def test_defaults_are_ollamas():
    sampling = rn.sampling_options(rn.effective_parameters())
    assert sampling == rn.SamplingOptions(temperature=0.8, top_k=40, top_p=0.9, min_p=0.0, typical_p=1.0,
                                          repeat_penalty=1.0, presence_penalty=0.0, frequency_penalty=0.0,
                                          max_tokens=-1, stop=(), seed=-1)
    load = rn.load_options(rn.effective_parameters(), Path("/m"), (), context_length=32768)
    assert load == rn.LoadOptions(Path("/m"), n_ctx=4096, n_batch=512, n_threads=None, n_gpu_layers=-1,
                                  main_gpu=0, use_mmap=True, last_n_tokens_size=64, lora_path=None)


def test_num_ctx_is_capped_by_the_models_context_length():
    assert rn.load_options(rn.effective_parameters(), Path("/m"), (), 2048).n_ctx == 2048
    assert rn.load_options(rn.effective_parameters({"num_ctx": 8192}), Path("/m"), (), 2048).n_ctx == 2048
    assert rn.load_options(rn.effective_parameters({"num_ctx": 8192}), Path("/m"), (), None).n_ctx == 8192
    with pytest.raises(RunnerError):
        rn.load_options(rn.effective_parameters({"num_ctx": 0}), Path("/m"))


def test_load_time_parameters_map_to_llama_arguments():
    params = rn.effective_parameters({"num_ctx": 1024, "num_batch": 64, "num_thread": 3, "num_gpu": 0,
                                      "main_gpu": 1, "use_mmap": False, "repeat_last_n": 32})
    load = rn.load_options(params, Path("/m/blob"), [Path("/m/lora")], 32768)
    assert load.llama_kwargs() == {"model_path": "/m/blob", "n_ctx": 1024, "n_batch": 64, "n_threads": 3,
                                   "n_gpu_layers": 0, "main_gpu": 1, "use_mmap": False,
                                   "last_n_tokens_size": 32, "lora_path": "/m/lora"}


def test_one_adapter_only():
    with pytest.raises(RunnerError) as e:
        rn.load_options(rn.effective_parameters(), Path("/m"), [Path("/a"), Path("/b")])
    assert "2 ADAPTER" in e.value.message


def test_request_parameters_map_to_sampling():
    params = rn.effective_parameters({"temperature": 0.0, "top_k": 5, "top_p": 0.5, "min_p": 0.1, "typical_p": 0.7,
                                      "repeat_penalty": 1.2, "presence_penalty": 0.3, "frequency_penalty": 0.4,
                                      "num_predict": 12, "stop": ["a", "b"], "seed": 9})
    sampling = rn.sampling_options(params)
    assert sampling.generate_kwargs() == {"temp": 0.0, "top_k": 5, "top_p": 0.5, "min_p": 0.1, "typical_p": 0.7,
                                          "repeat_penalty": 1.2, "presence_penalty": 0.3, "frequency_penalty": 0.4}
    assert (sampling.max_tokens, sampling.stop, sampling.seed) == (12, ("a", "b"), 9)
    assert rn.sampling_options(rn.effective_parameters({"num_predict": -2, "seed": -5})).max_tokens == -2
    assert rn.sampling_options(rn.effective_parameters({"seed": -5})).seed == -1


def test_later_layers_win_and_stop_lists_replace():
    merged = rn.effective_parameters({"temperature": 0.1, "stop": ["x", "y"], "top_k": 3}, {"temperature": 0.5},
                                     None, {"stop": ["z"]})
    assert (merged["temperature"], merged["stop"], merged["top_k"], merged["top_p"]) == (0.5, ["z"], 3, 0.9)


def test_argument_names_exist_in_llama_cpp_python():
    """The names the mapping produces are parameters of the installed llama-cpp-python (no model loaded)."""
    llama_cpp = require_module("llama_cpp")
    init = inspect.signature(llama_cpp.Llama.__init__).parameters
    generate = inspect.signature(llama_cpp.Llama.generate).parameters
    assert set(rn.LoadOptions(Path("/m")).llama_kwargs()) <= set(init)
    assert set(rn.SamplingOptions().generate_kwargs()) <= set(generate)


@pytest.mark.parametrize("stops, pieces, shown, stopped", [
    (["END"], ["ab", "cE", "N", "Dxyz"], ["ab", "c", "", ""], True),     # held back, then cut
    (["END"], ["ab", "cE", "Nx"], ["ab", "c", "ENx"], False),           # a false start is released
    (["\n", "."], ["Paris", ". Then"], ["Paris", ""], True),
    (["bc", "abcd"], ["xabcd"], ["x"], True),                            # the earliest match wins
    ([], ["a", "b"], ["a", "b"], False),
])
def test_stop_matcher(stops, pieces, shown, stopped):
    matcher = rn.StopMatcher(stops)
    out = []
    for piece in pieces:
        text, done = matcher.feed(piece)
        out.append(text)
        if done:
            break
    assert out == shown and matcher.stopped == stopped


def test_stop_matcher_flushes_what_it_held_back():
    matcher = rn.StopMatcher(["END"])
    assert matcher.feed("the EN") == ("the ", False)
    assert matcher.flush("") == "EN"


# ------------------------------------------------------------------------------------------------------
# the real model


@pytest.fixture(scope="module")
def env(tmp_path_factory, gemma_gguf):
    """A store holding every example model, and the environment that points ``modelpkg`` at it."""
    root = tmp_path_factory.mktemp("run")
    folder = root / "examples"
    folder.mkdir()
    os.symlink(gemma_gguf, folder / "gemma3-270m-q4_k_m.gguf")
    variables = {"MODELPKG_HOME": str(root / "home"), "MODELPKG_CONFIG_DIR": str(root / "config"),
                 "MODELPKG_REGISTRY": None}
    for example in sorted(EXAMPLES.glob("gemma3-*.Modelfile")):
        (folder / example.name).write_text(example.read_text())
        result = CliRunner().invoke(cli, ["create", example.stem, "-f", str(folder / example.name)], env=variables)
        assert result.exit_code == 0, result.output
    return variables


def invoke(env, *args, input=""):
    return CliRunner().invoke(cli, ["run", *args], input=input, env=env, catch_exceptions=False)


@pytest.fixture(scope="module")
def plain(gemma_gguf):
    """What a plain llama-cpp-python script gives on the same file, with llama-cpp-python's own API."""
    llama_cpp = require_module("llama_cpp")
    llm = llama_cpp.Llama(str(gemma_gguf), n_ctx=4096, n_batch=512, last_n_tokens_size=64, verbose=False)

    def complete(prompt, **kwargs):
        llm.reset()
        settings = {"temperature": 0.8, "top_k": 40, "top_p": 0.9, "min_p": 0.0, "typical_p": 1.0,
                    "repeat_penalty": 1.0, "max_tokens": 64, **kwargs}
        return llm.create_completion(prompt, **settings)["choices"][0]["text"]

    yield complete
    llm.close()


@pytest.mark.model
def test_base_model_answer_is_what_plain_llama_cpp_gives(env, plain):
    result = invoke(env, "gemma3-base", PRIMARY)
    assert result.exit_code == 0, result.output
    expected = plain(PRIMARY, temperature=0.0, seed=42, max_tokens=64)
    assert result.stdout == expected + "\n"
    assert expected.startswith(" Red\n2. ")  # the list goes on (its colours vary with the CPU llama.cpp is built for)


@pytest.mark.model
def test_sampling_options_from_the_command_line_match_plain_llama_cpp(env, plain):
    result = invoke(env, "gemma3-base", "Once upon a time", "--temperature", "0.9", "--seed", "123",
                    "--num-predict", "24", "--param", "top_k=20", "--param", "repeat_penalty=1.1")
    assert result.exit_code == 0, result.output
    expected = plain("Once upon a time", temperature=0.9, seed=123, max_tokens=24, top_k=20, repeat_penalty=1.1)
    assert result.stdout == expected + "\n" and expected.strip()
    again = invoke(env, "gemma3-base", "Once upon a time", "--temperature", "0.9", "--seed", "124",
                   "--num-predict", "24", "--param", "top_k=20", "--param", "repeat_penalty=1.1")
    assert again.stdout != result.stdout  # the seed is used


@pytest.mark.model
def test_prompt_from_stdin_comes_before_the_arguments(env, plain):
    result = invoke(env, "gemma3-base", "1.", input="Here is a list of three primary colors:\n")
    assert result.exit_code == 0, result.output
    assert result.stdout == plain("Here is a list of three primary colors:\n 1.", temperature=0.0, seed=42) + "\n"


@pytest.mark.model
def test_stop_strings_end_the_answer(env, plain):
    result = invoke(env, "gemma3-stop", "The capital of France is", "--format", "json")
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    full = plain("The capital of France is", temperature=0.0, seed=42, max_tokens=48)
    cut = min(i for i in (full.find("."), full.find("\n"), len(full)) if i >= 0)
    assert answer["response"] == full[:cut] and answer["done_reason"] == "stop"
    assert answer["eval_count"] < 48

    # --param stop replaces the model's list
    result = invoke(env, "gemma3-base", PRIMARY, "--param", "stop=Blue")
    listed = plain(PRIMARY, temperature=0.0, seed=42, max_tokens=64)
    assert "Blue" in listed
    assert result.stdout == listed[:listed.index("Blue")] + "\n"


@pytest.mark.model
def test_format_json_has_the_answer_and_the_counters(env):
    text = invoke(env, "gemma3-base", PRIMARY).stdout
    result = invoke(env, "gemma3-base", PRIMARY, "--format", "json")
    answer = json.loads(result.stdout)
    assert answer["response"] + "\n" == text
    assert answer["model"] == "gemma3-base:latest" and answer["done"] is True and answer["done_reason"] == "length"
    assert answer["prompt_eval_count"] == answer["prompt_tokens"] == 13 and answer["eval_count"] == 64
    assert answer["load_duration"] > 0 and answer["eval_duration"] > 0
    assert answer["total_duration"] >= answer["load_duration"] + answer["eval_duration"]


@pytest.mark.model
def test_verbose_prints_ollamas_stats_to_stderr(env):
    result = invoke(env, "gemma3-base", PRIMARY, "--verbose", "--num-predict", "8")
    assert result.exit_code == 0
    for label in ("total duration:", "load duration:", "prompt eval duration:", "prompt eval rate:", "eval duration:"):
        assert label in result.stderr
    assert "prompt eval count:    13 token(s)" in result.stderr and "eval count:           8 token(s)" in result.stderr
    assert "tokens/s" in result.stderr and "eval rate" not in result.stdout


@pytest.mark.model
def test_batch_gives_one_result_per_line(env, tmp_path):
    requests = [
        {"id": "colors", "prompt": PRIMARY},
        "this is not JSON",
        {"prompt": "The capital of France is", "options": {"num_predict": 6, "stop": ["\n"]}},
        {"messages": [{"role": "user", "content": "Why is the sky blue?"}], "options": {"num_predict": 5}},
        {"prompt": "x", "options": {"temprature": 1}},
        {"prompt": PRIMARY},
    ]
    source = tmp_path / "prompts.jsonl"
    source.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in requests) + "\n\n")
    result = invoke(env, "gemma3-base", "--batch", str(source))
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["line"] for line in lines] == [1, 2, 3, 4, 5, 6]
    assert [("error" in line) for line in lines] == [False, True, False, False, True, False]
    assert lines[0]["id"] == "colors"
    one_shot = invoke(env, "gemma3-base", PRIMARY).stdout
    assert lines[0]["response"] + "\n" == one_shot == lines[5]["response"] + "\n"  # each request starts fresh
    assert lines[2]["eval_count"] <= 6 and "\n" not in lines[2]["response"]
    assert lines[3]["eval_count"] == 5
    assert "temperature" in lines[4]["error"]
    assert lines[0]["load_duration"] > 0 and lines[2]["load_duration"] == 0  # loaded once
    assert "6 request(s), 4 answered, 2 failed" in result.stderr

    out = tmp_path / "answers.jsonl"
    result = invoke(env, "gemma3-base", "--batch", "-", "-o", str(out), input=json.dumps(requests[0]) + "\n")
    assert result.exit_code == 0 and result.stdout == ""
    assert json.loads(out.read_text())["response"] + "\n" == one_shot


def _own_terminal() -> None:
    """In the child: take the pty as controlling terminal, and let Ctrl-C act even when the test runner was
    started with SIGINT ignored (a background shell without job control), which the child would inherit."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    """``modelpkg run`` in a child process on a pseudo-terminal (its controlling terminal, so Ctrl-C is real)."""

    def __init__(self, env: dict, *args: str):
        self.master, slave = pty.openpty()
        variables = {**os.environ, "TERM": "dumb", **{k: v for k, v in env.items() if v is not None}}
        variables.pop("MODELPKG_REGISTRY", None)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "modelpkg", "run", *args], stdin=slave, stdout=slave, stderr=slave,
            env=variables, start_new_session=True, preexec_fn=_own_terminal)
        os.close(slave)
        self.buffer = b""

    def expect(self, text: str, timeout: float = 60) -> str:
        """Everything up to and including ``text``."""
        deadline = time.monotonic() + timeout
        while text.encode() not in self.buffer:
            ready, _, _ = select.select([self.master], [], [], max(deadline - time.monotonic(), 0))
            if not ready:
                raise AssertionError(f"no {text!r} within {timeout}s; got {self.buffer.decode(errors='replace')!r}")
            try:
                chunk = os.read(self.master, 4096)
            except OSError:
                chunk = b""
            if not chunk:
                raise AssertionError(f"the process ended before {text!r}; got {self.buffer!r}")
            self.buffer += chunk
        end = self.buffer.index(text.encode()) + len(text)
        seen, self.buffer = self.buffer[:end], self.buffer[end:]
        return seen.decode(errors="replace").replace("\r\n", "\n")

    def send(self, text: str) -> None:
        os.write(self.master, text.encode())

    def interrupt_at_prompt(self, tries: int = 5, wait: float = 3) -> str:
        """Ctrl-C at the input prompt, pressed again if nothing happens, as a person would: CPython's readline
        drops a SIGINT that lands between writing the prompt and its select() on the terminal (the signal is
        seen only at the next key), a window a loaded machine can hit. Everything up to the next prompt."""
        for _ in range(tries):
            self.send("\x03")
            try:
                return self.expect(">>> ", timeout=wait)
            except AssertionError:
                if self.process.poll() is not None:
                    raise
        raise AssertionError(f"Ctrl-C was never answered at the prompt; got {self.buffer!r}")

    def close(self) -> int:
        try:
            return self.process.wait(timeout=20)
        finally:
            os.close(self.master)


@pytest.mark.model
def test_repl_on_a_terminal(env):
    term = Terminal(env, "gemma3-base")
    try:
        term.expect(">>> ")
        term.send(PRIMARY.split("\n")[0] + "\n")
        answer = term.expect(">>> ")
        assert "red" in answer.lower() and "blue" in answer.lower()

        term.send("/show parameters\n")
        shown = term.expect(">>> ")
        assert "Model defined parameters:" in shown and "temperature                    0" in shown

        term.send("/set parameter temperature 0\n")
        assert "Set parameter 'temperature' to '0'" in term.expect(">>> ")
        term.send("/set parameter num_predict 400\n")
        term.expect(">>> ")
        term.send("/show parameters\n")
        shown = term.expect(">>> ")
        assert shown.index("User defined parameters:") < shown.index("num_predict                    400")

        term.send("/frobnicate\n")
        assert "Unknown command '/frobnicate'. Type /? for help" in term.expect(">>> ")

        term.send("/?\n")
        assert "/bye" in term.expect(">>> ")

        # a multi-line message, interrupted with Ctrl-C: the answer stops, the session goes on
        term.send('"""Once upon\n')
        term.expect("... ")
        term.send('a time"""\n')
        time.sleep(1.5)
        term.send("\x03")
        term.expect(">>> ", timeout=20)
        assert term.process.poll() is None

        term.send("/show system\n")
        assert "No system message was specified for this model." in term.expect(">>> ")
        term.send("/bye\n")
        assert term.close() == 0
    finally:
        if term.process.poll() is None:
            term.process.kill()


@pytest.mark.model
def test_repl_ctrl_d_leaves_and_model_history_is_shown(env):
    term = Terminal(env, "gemma3-history")
    try:
        shown = term.expect(">>> ", timeout=60)  # the history is printed first
        shown += term.expect("Madrid.")
        assert "What is the capital of France?" in shown and "Paris." in shown
        term.expect(">>> ")
        assert "Use Ctrl + d or /bye to exit." in term.interrupt_at_prompt()
        term.send("\x04")
        assert term.close() == 0
    finally:
        if term.process.poll() is None:
            term.process.kill()


def _lora(path: Path, scale: float) -> Path:
    """A rank-4 LoRA adapter for Gemma 3 270M's attention queries, written the way llama.cpp's
    convert_lora_to_gguf.py lays one out; ``scale`` 0 makes it a no-op (B = 0)."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "gemma3")
    writer.add_type("adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", 4.0)
    rng = np.random.default_rng(0)
    for block in range(18):
        writer.add_tensor(f"blk.{block}.attn_q.weight.lora_a", rng.standard_normal((4, 640)).astype(np.float32))
        writer.add_tensor(f"blk.{block}.attn_q.weight.lora_b",
                          (scale * rng.standard_normal((1024, 4))).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.model
def test_adapter_is_applied_as_a_lora(env, tmp_path, gemma_gguf):
    os.symlink(gemma_gguf, tmp_path / "gemma3-270m-q4_k_m.gguf")
    answers = {}
    for name, scale in (("noop", 0.0), ("strong", 0.5)):
        _lora(tmp_path / f"{name}.gguf", scale)
        modelfile = tmp_path / f"{name}.Modelfile"
        modelfile.write_text(f"FROM ./gemma3-270m-q4_k_m.gguf\nADAPTER ./{name}.gguf\n"
                             "PARAMETER temperature 0\nPARAMETER seed 42\nPARAMETER num_predict 16\n")
        created = CliRunner().invoke(cli, ["create", f"lora-{name}", "-f", str(modelfile)], env=env)
        assert created.exit_code == 0, created.output
        result = invoke(env, f"lora-{name}", PRIMARY)
        assert result.exit_code == 0, result.output
        answers[name] = result.stdout
    base = invoke(env, "gemma3-base", PRIMARY, "--num-predict", "16").stdout
    assert answers["noop"] == base  # B = 0: the adapter changes nothing, so it loaded on the right model
    assert answers["strong"] != base  # and a real one changes the answer: it is applied


# ------------------------------------------------------------------------------------------------------
# failures: clear errors, no tracebacks (a tiny synthetic GGUF is enough: it is refused before or at load)


def test_corrupted_weights_are_refused(home, tiny_model):
    from modelpkg.base import config
    from modelpkg.ops.models import describe
    from modelpkg.store import Store

    ref = tiny_model("tiny")
    blob = describe(Store(config.home()), ref).model_path
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    blob.write_bytes(bytes(data))
    result = CliRunner().invoke(cli, ["run", "tiny", "hello"])
    assert result.exit_code == 5, result.output
    assert "Error: the weights of" in result.stderr and "corrupted" in result.stderr
    assert "Traceback" not in result.output


def test_a_model_llama_cpp_cannot_load_is_a_clean_error(home, tiny_model):
    require_module("llama_cpp")
    tiny_model("tiny")
    result = CliRunner().invoke(cli, ["run", "tiny", "hello"])
    assert result.exit_code == RunnerError.exit_code, result.output
    assert result.stderr.startswith("Error: llama.cpp cannot load ")
    assert "Traceback" not in result.output


def test_without_llama_cpp_python_run_says_how_to_install_it(home, tiny_model):
    tiny_model("tiny")
    code = ("import sys; sys.modules['llama_cpp'] = None\n"
            "from modelpkg.cli.app import main; sys.argv = ['modelpkg', 'run', 'tiny', 'hello']; main()")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=60)
    assert done.returncode == RunnerError.exit_code
    assert "llama-cpp-python" in done.stderr and "pip install 'modelpkg[run]'" in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_no_prompt_and_no_terminal_is_a_usage_error(home, tiny_model):
    tiny_model("tiny")
    result = CliRunner().invoke(cli, ["run", "tiny"], input="")
    assert result.exit_code == 2 and "no prompt given" in result.stderr


@pytest.mark.registry
def test_a_model_in_neither_the_store_nor_the_registry_is_not_found(home, registry):
    result = CliRunner().invoke(cli, ["run", f"{registry.host}/nobody/nothing:1", "hi"])
    assert result.exit_code == 4, result.output
    assert result.stderr.startswith("Error: ") and "Traceback" not in result.output


@pytest.mark.model
@pytest.mark.registry
def test_run_pulls_a_missing_model_first(env, registry, plain):
    name = f"{registry.host}/demo/gemma3:base"
    for args in (["cp", "gemma3-base", name], ["push", name], ["rm", name]):
        result = CliRunner().invoke(cli, args, env=env)
        assert result.exit_code == 0, result.output
    result = invoke(env, name, PRIMARY)
    assert result.exit_code == 0, result.output
    assert result.stdout == plain(PRIMARY, temperature=0.0, seed=42) + "\n"
    listed = CliRunner().invoke(cli, ["list", "--json"], env=env)
    assert "demo/gemma3:base" in listed.stdout
