"""``create --quantize`` and ``/api/create``'s ``quantize``: llama.cpp's quantizer, in a child process.

The sources are tiny llama-architecture models with random weights written with the ``gguf`` package (the
real writer): 4 blocks, 256-wide rows (a multiple of 256, so K-quants apply), a 512-token SentencePiece vocabulary
of byte tokens; llama.cpp loads them and generates. The output is read back with ``gguf.GGUFReader`` and each
tensor's type is checked (Q4_K_M's mix: Q4_K for most, Q6_K for the output and some attn_v/ffn_down, F32
norms), not only the file type; the model made loads and generates a token. A crash of the quantizer (a real
SIGSEGV or abort(), ``MODELPKG_TEST_QUANTIZE_FAULT``, read in the child) and Ctrl-C are one line each and
leave no blob, no model and no temp file; the source file's bytes and mtime never change.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from capabilities import require_module
from conftest import make_gguf
from modelpkg.base import config
from modelpkg.cli.app import cli
from modelpkg.core.errors import InvalidInputError, RunnerError
from modelpkg.runtime import quantize
from modelpkg.store import Store

N_EMBD, N_FF, N_LAYER, N_VOCAB = 256, 512, 4, 512
REPO = Path(__file__).resolve().parents[2]


def tiny_llama(path: Path, kind: str = "F32", seed: int = 0) -> Path:
    """A llama-architecture GGUF llama.cpp loads: F32 (file type 0), F16 (1) or BF16 (32) weights, F32 norms."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_file_type({"F32": 0, "F16": 1, "BF16": 32}[kind])
    writer.add_context_length(128)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYER)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(2)
    writer.add_head_count_kv(2)
    writer.add_rope_dimension_count(N_EMBD // 2)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(N_VOCAB)
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokens += [f"\u2581w{i}" for i in range(N_VOCAB - len(tokens))]
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * 3 + [0.0] * 256 + [-float(i) for i in range(N_VOCAB - 259)])
    writer.add_token_types([2, 3, 3] + [6] * 256 + [1] * (N_VOCAB - 259))
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    rng = np.random.default_rng(seed)

    def weight(name: str, rows: int, cols: int) -> None:
        data = (rng.standard_normal((rows, cols)) * 0.05).astype(np.float32)
        if kind == "F16":
            writer.add_tensor(name, data.astype(np.float16))
        elif kind == "BF16":
            writer.add_tensor(name, gguf.quants.quantize(data, gguf.GGMLQuantizationType.BF16),
                              raw_dtype=gguf.GGMLQuantizationType.BF16)
        else:
            writer.add_tensor(name, data)

    def norm(name: str) -> None:
        writer.add_tensor(name, np.ones(N_EMBD, dtype=np.float32))

    weight("token_embd.weight", N_VOCAB, N_EMBD)
    for i in range(N_LAYER):
        norm(f"blk.{i}.attn_norm.weight")
        for part in ("q", "k", "v", "output"):
            weight(f"blk.{i}.attn_{part}.weight", N_EMBD, N_EMBD)
        norm(f"blk.{i}.ffn_norm.weight")
        weight(f"blk.{i}.ffn_gate.weight", N_FF, N_EMBD)
        weight(f"blk.{i}.ffn_up.weight", N_FF, N_EMBD)
        weight(f"blk.{i}.ffn_down.weight", N_EMBD, N_FF)
    norm("output_norm.weight")
    weight("output.weight", N_VOCAB, N_EMBD)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def tensor_types(path: Path) -> dict[str, str]:
    import gguf

    reader = gguf.GGUFReader(str(path))
    return {t.name: t.tensor_type.name for t in reader.tensors}


def snapshot(path: Path) -> tuple[str, int]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


def leftovers(home: Path) -> list[str]:
    """Working files of the quantizer left in the store's ingest folder."""
    ingest = home / "ingest"
    return sorted(p.name for p in ingest.iterdir() if p.name.startswith("quantize")) if ingest.exists() else []


def blobs(home: Path) -> set[str]:
    folder = home / "blobs" / "sha256"
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


@pytest.fixture
def llama():
    require_module("llama_cpp")


@pytest.fixture
def source(tmp_path, request):
    folder = tmp_path / "src"
    folder.mkdir(exist_ok=True)
    return tiny_llama(folder / "tiny.gguf", getattr(request, "param", "F32"))


def create(home: Path, name: str, source: Path, want: str | None, text: str | None = None):
    from modelpkg.ops.create import create as create_model

    return create_model(Store(home), config.reference(name), text or f"FROM {source}\n", source.parent,
                        resolve_name=config.reference, quantize=want)


def weights(home: Path, name: str) -> Path:
    from modelpkg.ops.models import describe

    return describe(Store(home), config.reference(name)).model_path


def generates(path: Path) -> None:
    from modelpkg.runtime.runner import LoadOptions, Runner, SamplingOptions

    runner = Runner.load(LoadOptions(model_path=path, n_ctx=64, n_batch=64, n_gpu_layers=0))
    try:
        generation = runner.generate("w1 w2", SamplingOptions(temperature=0.0, max_tokens=1))
        pieces = list(generation)
        assert generation.result.tokens and len(generation.result.tokens) == 1, (pieces, generation.result)
    finally:
        runner.close()


# ------------------------------------------------------------------------------------------------------------
# the types


def test_type_names_are_ollamas_in_any_case():
    assert [quantize.parse_type(t) for t in ("q4_K_M", "Q4_K_S", "q8_0", "f16", " F32 ")] == \
        ["Q4_K_M", "Q4_K_S", "Q8_0", "F16", "F32"]
    with pytest.raises(InvalidInputError) as e:
        quantize.parse_type("q5_k_m")
    assert e.value.message == ("unsupported quantization type 'q5_k_m': the accepted types are "
                               "F32, F16, Q8_0, Q4_K_S, Q4_K_M")


# ------------------------------------------------------------------------------------------------------------
# the quantized weights


@pytest.mark.parametrize("source", ["F32", "F16", "BF16"], indirect=True)
def test_q4_k_m_gives_llama_cpps_mix_and_the_model_generates(home, llama, source):
    before = snapshot(source)
    result = create(home, "tiny-q4", source, "q4_K_M")
    path = weights(home, "tiny-q4")
    types = tensor_types(path)
    assert len(types) == 3 + N_LAYER * 9
    assert all(types[n] == "F32" for n in types if n.endswith("norm.weight"))
    assert types["output.weight"] == "Q6_K"
    more_bits = {n for n in types if n.endswith(("attn_v.weight", "ffn_down.weight")) and types[n] == "Q6_K"}
    assert more_bits  # use_more_bits(): the first/last layers and every third get Q6_K
    rest = [t for n, t in types.items()
            if not n.endswith("norm.weight") and n != "output.weight" and n not in more_bits]
    assert set(rest) == {"Q4_K"}
    info = json.loads(Store(home).read_blob(Store(home).manifest(config.reference("tiny-q4"))[1].config.digest))
    assert info["config"]["quantization"] == "Q4_K_M"
    assert result.layers[0].size == path.stat().st_size < source.stat().st_size / 2
    assert snapshot(source) == before  # read, never written
    assert leftovers(home) == []
    assert set(blobs(home)) >= {result.layers[0].digest.hex}
    assert hashlib.sha256(source.read_bytes()).hexdigest() not in blobs(home)  # the source was not copied in
    generates(path)


@pytest.mark.parametrize(("want", "matrix"), [("Q8_0", "Q8_0"), ("F16", "F16"), ("Q4_K_S", "Q4_K")])
def test_other_types(home, llama, source, want, matrix):
    create(home, "tiny-x", source, want.lower())
    types = tensor_types(weights(home, "tiny-x"))
    assert all(t == "F32" for n, t in types.items() if n.endswith("norm.weight"))
    matrices = {t for n, t in types.items() if not n.endswith("norm.weight")}
    assert matrix in matrices and matrices <= {matrix, "Q6_K", "Q5_K"}, matrices
    if want in ("Q8_0", "F16"):
        assert matrices == {matrix}


def test_a_source_of_the_asked_type_is_kept_as_it_is(home, llama, source):
    """Ollama's rule: F32 asked of an F32 model quantizes nothing; the file is stored as without --quantize."""
    result = create(home, "same", source, "f32")
    assert result.layers[0].digest.hex == hashlib.sha256(source.read_bytes()).hexdigest()


def test_from_a_model_and_from_a_blob_in_the_store(home, llama, source):
    create(home, "base", source, None)
    create(home, "from-model", source, "Q8_0", text="FROM base\n")
    assert set(tensor_types(weights(home, "from-model")).values()) == {"Q8_0", "F32"}
    digest = "sha256:" + hashlib.sha256(source.read_bytes()).hexdigest()
    from modelpkg.ops.create import create as create_model

    create_model(Store(home), config.reference("from-blob"), f"FROM {digest}\n", None, quantize="q4_k_m")
    assert tensor_types(weights(home, "from-blob"))["output.weight"] == "Q6_K"
    assert tensor_types(weights(home, "base"))["output.weight"] == "F32"  # the base model is unchanged


# ------------------------------------------------------------------------------------------------------------
# the CLI


def test_cli_create_quantize(home, llama, source):
    modelfile = source.parent / "Modelfile"
    modelfile.write_text("FROM ./tiny.gguf\nPARAMETER temperature 0\n")
    result = CliRunner().invoke(cli, ["create", "tiny", "-f", str(modelfile), "--quantize", "q4_k_m", "--json"])
    assert result.exit_code == 0, result.output
    layers = json.loads(result.stdout)["layers"]
    assert len(layers) == 2
    shown = CliRunner().invoke(cli, ["show", "tiny", "--json"])
    assert shown.exit_code == 0, shown.output
    assert "Q4_K_M" in shown.stdout


def test_cli_bad_type_is_one_line(home, source):
    modelfile = source.parent / "Modelfile"
    modelfile.write_text("FROM ./tiny.gguf\n")
    result = CliRunner().invoke(cli, ["create", "tiny", "-f", str(modelfile), "-q", "q4_0"])
    assert result.exit_code == 3, result.output
    assert result.stderr.startswith("Error: unsupported quantization type 'q4_0': the accepted types are F32, F16, "
                                    "Q8_0, Q4_K_S, Q4_K_M\n")
    assert "Traceback" not in result.output
    assert blobs(home) == set() and leftovers(home) == []


def test_an_already_quantized_source_is_refused(home, tmp_path):
    quantized = make_gguf(tmp_path / "q4.gguf", file_type=15)  # general.file_type 15: Q4_K_M
    before = snapshot(quantized)
    (tmp_path / "Modelfile").write_text("FROM ./q4.gguf\n")
    result = CliRunner().invoke(cli, ["create", "q", "-f", str(tmp_path / "Modelfile"), "--quantize", "Q8_0"])
    assert result.exit_code == 3, result.output
    assert result.stderr.splitlines()[0] == ("Error: quantization is only supported for F16, BF16 and F32 models: "
                                             "FROM ./q4.gguf is Q4_K_M")
    assert "Traceback" not in result.output
    assert blobs(home) == set() and leftovers(home) == [] and snapshot(quantized) == before
    assert CliRunner().invoke(cli, ["list", "--json"]).stdout.strip() in ("[]", "")


def test_a_gguf_llama_cpp_cannot_quantize_is_one_line(home, llama, tmp_path):
    """An F16 GGUF without the hyperparameters llama.cpp needs: llama_model_quantize returns an error, whose
    reason (from llama.cpp's log) is the message; nothing is stored."""
    broken = make_gguf(tmp_path / "broken.gguf", file_type=1)
    before = snapshot(broken)
    (tmp_path / "Modelfile").write_text("FROM ./broken.gguf\n")
    result = CliRunner().invoke(cli, ["create", "b", "-f", str(tmp_path / "Modelfile"), "-q", "q4_k_m"])
    assert result.exit_code == RunnerError.exit_code, result.output
    first = result.stderr.splitlines()[0]
    assert first.startswith("Error: llama.cpp cannot quantize broken.gguf to Q4_K_M: "), result.stderr
    assert len(first) > len("Error: llama.cpp cannot quantize broken.gguf to Q4_K_M: ") + 5
    assert "Traceback" not in result.output
    assert blobs(home) == set() and leftovers(home) == [] and snapshot(broken) == before


# ------------------------------------------------------------------------------------------------------------
# a crash of the quantizer and Ctrl-C: one line, nothing stored, nothing left


@pytest.mark.parametrize("fault", ["segv", "abort"])
def test_a_crash_of_the_quantizer_is_one_line_and_leaves_nothing(home, llama, source, monkeypatch, fault):
    before = snapshot(source)
    monkeypatch.setenv("MODELPKG_TEST_QUANTIZE_FAULT", fault)
    modelfile = source.parent / "Modelfile"
    modelfile.write_text("FROM ./tiny.gguf\n")
    result = CliRunner().invoke(cli, ["create", "tiny", "-f", str(modelfile), "--quantize", "q4_K_M"])
    assert result.exit_code == RunnerError.exit_code, result.output
    signal_name = {"segv": "SIGSEGV", "abort": "SIGABRT"}[fault]
    assert result.stderr.splitlines()[0] == (f"Error: quantizing tiny.gguf to Q4_K_M failed: the quantizer process "
                                             f"ended with signal {signal_name}")
    assert "Traceback" not in result.output
    assert blobs(home) == set() and leftovers(home) == []
    assert not (home / "index.json").exists() or json.loads((home / "index.json").read_text())["manifests"] == []
    assert snapshot(source) == before


def test_ctrl_c_kills_the_quantizer_and_removes_its_file(home, llama, source, tmp_path):
    before = snapshot(source)
    modelfile = source.parent / "Modelfile"
    modelfile.write_text("FROM ./tiny.gguf\n")
    env = {**os.environ, "MODELPKG_TEST_QUANTIZE_FAULT": "stall", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "modelpkg", "create", "tiny", "-f", str(modelfile), "-q", "Q4_K_M"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 60
        while not leftovers(home) and time.monotonic() < deadline:
            time.sleep(0.1)
        working = leftovers(home)
        assert working, "the quantizer never started writing"
        time.sleep(0.5)  # the stalled child is past its first tensor
        child = children(proc.pid)
        assert child, "no quantizer process"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert err.decode().strip().splitlines()[-1] == "Interrupted."
    assert b"Traceback" not in err
    assert leftovers(home) == [] and blobs(home) == set()
    assert snapshot(source) == before
    deadline = time.monotonic() + 5
    while any(Path(f"/proc/{pid}").exists() and "zombie" not in _state(pid) for pid in child) and \
            time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in child if Path(f"/proc/{pid}").exists() and "zombie" not in _state(pid)]


def children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (read from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _state(pid: int) -> str:
    try:
        return (Path(f"/proc/{pid}") / "status").read_text().split("State:", 1)[1].split("\n", 1)[0].lower()
    except (OSError, IndexError):
        return "zombie"


# ------------------------------------------------------------------------------------------------------------
# /api/create


@pytest.fixture
def server(home):
    from modelpkg.server.app import make_server

    server = make_server(Store(config.home()), "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.close()


def upload(url: str, path: Path) -> str:
    data = path.read_bytes()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert requests.post(f"{url}/api/blobs/{digest}", data=data, timeout=60).status_code == 201
    return digest


def test_api_create_quantize_streams_ollamas_status(home, llama, source, server):
    digest = upload(server.url, source)
    answer = requests.post(f"{server.url}/api/create", json={"model": "tiny-q", "files": {"tiny.gguf": digest},
                                                             "quantize": "q4_K_M"}, stream=True, timeout=120)
    assert answer.status_code == 200
    lines = [json.loads(line) for line in answer.iter_lines() if line]
    assert not [line for line in lines if "error" in line], lines
    quantizing = [line for line in lines if line.get("status") == "quantizing F32 model to Q4_K_M"]
    assert quantizing and quantizing[-1]["completed"] == quantizing[-1]["total"] == source.stat().st_size
    assert lines[-1] == {"status": "success"}
    types = tensor_types(weights(home, "tiny-q"))
    assert types["output.weight"] == "Q6_K" and types["blk.1.attn_q.weight"] == "Q4_K"


def test_api_create_bad_type_and_quantized_source(home, server, tmp_path):
    digest = upload(server.url, make_gguf(tmp_path / "q4.gguf", file_type=15))
    bad = requests.post(f"{server.url}/api/create", json={"model": "x", "files": {"q4.gguf": digest},
                                                          "quantize": "q3_k"}, timeout=60)
    assert bad.status_code == 400
    assert bad.json()["error"].startswith("unsupported quantization type 'q3_k': the accepted types are F32")
    older = requests.post(f"{server.url}/api/create", json={"model": "x", "files": {"q4.gguf": digest},
                                                            "quantization": "Q5_0"}, timeout=60)
    assert older.status_code == 400 and older.json()["error"].startswith("unsupported quantization type 'Q5_0'")
    refused = requests.post(f"{server.url}/api/create", json={"model": "x", "files": {"q4.gguf": digest},
                                                              "quantize": "q8_0", "stream": False}, timeout=60)
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"].startswith("quantization is only supported for F16, BF16 and F32 models")
    assert leftovers(home) == []
    assert requests.get(f"{server.url}/api/tags", timeout=30).json()["models"] == []
