"""import-ollama / export-ollama against a models folder laid out exactly as Ollama lays it out.

The folder is built here by hand, from a tiny GGUF and Ollama-format manifest, ConfigV2 config, template,
system, params, license and messages blobs (reference/ollama-behaviour.md sections 2.1-2.5).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import make_gguf
from modelpkg.base import config, fsutil
from modelpkg.cli.app import cli
from modelpkg.core import mediatypes as mt
from modelpkg.core.errors import IntegrityError, InvalidReferenceError, NotFoundError
from modelpkg.core.manifest import go_json, parse_manifest
from modelpkg.ops.interop import export_ollama, import_ollama
from modelpkg.ops.models import describe
from modelpkg.store import Store
from modelpkg.store.ollama import OllamaName, OllamaStore, parse_ollama_name

TEMPLATE = "{{ if .System }}<|system|>{{ .System }}{{ end }}<|user|>{{ .Prompt }}<|assistant|>"
SYSTEM = "You are a terse assistant."
PARAMS = {"num_ctx": 4096, "stop": ["<|im_start|>", "<|im_end|>"], "temperature": 0.7, "top_p": 0.9}
LICENSE = "Apache License 2.0 (tiny test text)"
MESSAGES = [{"role": "user", "content": "Is Toronto in Canada?"}, {"role": "assistant", "content": "yes"}]


def _blob(root: Path, data: bytes) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    path = root / "blobs" / f"sha256-{digest}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, 0o644)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def make_ollama_model(root: Path, gguf: Path, name: str = "registry.ollama.ai/library/tiny/latest",
                      system: str = SYSTEM) -> bytes:
    """Write one model as Ollama's create would: blobs/sha256-<hex> and manifests/<host>/<ns>/<model>/<tag>."""
    config = (b'{"model_format":"gguf","model_family":"llama","model_families":["llama"],"model_type":"1K",'
              b'"file_type":"F16","architecture":"amd64","os":"linux"}\n')
    layers = [
        {"mediaType": mt.OLLAMA_MODEL, **_blob(root, gguf.read_bytes()), "from": "/tmp/tiny.gguf"},
        {"mediaType": mt.OLLAMA_TEMPLATE, **_blob(root, TEMPLATE.encode())},
        {"mediaType": mt.OLLAMA_SYSTEM, **_blob(root, system.encode())},
        {"mediaType": mt.OLLAMA_LICENSE, **_blob(root, LICENSE.encode())},
        {"mediaType": mt.OLLAMA_PARAMS, **_blob(root, go_json(PARAMS))},
        {"mediaType": mt.OLLAMA_MESSAGES, **_blob(root, go_json(MESSAGES))},
    ]
    manifest = {"schemaVersion": 2, "mediaType": mt.DOCKER_MANIFEST,
                "config": {"mediaType": mt.DOCKER_CONFIG, **_blob(root, config)}, "layers": layers}
    data = (json.dumps(manifest, separators=(",", ":")) + "\n").encode()
    path = root / "manifests" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


@pytest.fixture
def ollama_dir(tmp_path, tiny_gguf) -> Path:
    root = tmp_path / "ollama" / "models"
    make_ollama_model(root, tiny_gguf)
    other = make_gguf(tmp_path / "other.gguf", seed=7)
    make_ollama_model(root, other, "hf.co/acme/Other-Model/Q4_K_M", system="other system")
    return root


@pytest.fixture
def no_reflink(monkeypatch):
    """Inject the fault "this filesystem has no reflink", whatever the machine's filesystem is."""
    monkeypatch.setattr(fsutil, "try_reflink", lambda src, dst: False)


def _store() -> Store:
    return Store(config.home())


def _ino(path: Path) -> int:
    return path.stat().st_ino


# ---------------------------------------------------------------------------------------------------------
# names


@pytest.mark.parametrize("text, expected", [
    ("gemma3", "registry.ollama.ai/library/gemma3:latest"),
    ("gemma3:270m", "registry.ollama.ai/library/gemma3:270m"),
    ("acme/tiny:q4", "registry.ollama.ai/acme/tiny:q4"),
    ("localhost:5000/acme/tiny:q4", "localhost:5000/acme/tiny:q4"),
    ("https://hf.co/bartowski/Llama-3.2-1B-GGUF:Q4_K_M", "hf.co/bartowski/Llama-3.2-1B-GGUF:Q4_K_M"),
])
def test_ollama_names_parse_with_ollamas_defaults(text, expected):
    assert str(parse_ollama_name(text)) == expected


@pytest.mark.parametrize("text", ["host/name:space/model:tag", "hh/-nn/mm:tt", "a/b/c/d:e", "x:", "../x"])
def test_invalid_ollama_names_are_refused(text):
    with pytest.raises(InvalidReferenceError):
        parse_ollama_name(text)


def test_short_names_drop_the_defaults_only():
    assert OllamaName("registry.ollama.ai", "library", "tiny", "latest").short() == "tiny:latest"
    assert OllamaName("hf.co", "acme", "m", "q4").short() == "hf.co/acme/m:q4"


# ---------------------------------------------------------------------------------------------------------
# import


def test_import_all_keeps_names_and_ollamas_manifest_bytes(home, ollama_dir, no_reflink):
    result = import_ollama(_store(), OllamaStore(ollama_dir))
    names = sorted(m.name for m in result.models)
    assert names == ["hf.co/acme/Other-Model:Q4_K_M", "registry.ollama.ai/library/tiny:latest"]
    store = _store()
    entry, _manifest = store.manifest(config.reference("tiny"))
    written = ollama_dir / "manifests/registry.ollama.ai/library/tiny/latest"
    assert store.read_blob(entry.digest) == written.read_bytes()
    assert entry.media_type == mt.DOCKER_MANIFEST
    details = describe(store, config.reference("tiny"))
    assert (details.template, details.system, details.licenses) == (TEMPLATE, SYSTEM, (LICENSE,))
    assert details.parameters == PARAMS and list(details.messages) == MESSAGES
    assert details.architecture == "llama" and details.quantization == "F16"
    assert details.model_path is not None and details.model_path.read_bytes()[:4] == b"GGUF"


def test_import_hard_links_when_reflink_is_unavailable(home, ollama_dir, no_reflink):
    result = import_ollama(_store(), OllamaStore(ollama_dir), ["tiny"])
    assert result.methods == {"link": 7}
    details = describe(_store(), config.reference("tiny"))
    source = OllamaStore(ollama_dir).blob_path(details.manifest.layers[0].digest)
    assert _ino(details.model_path) == _ino(source)
    assert source.stat().st_nlink == 2


def test_import_copy_makes_independent_files(home, ollama_dir):
    result = import_ollama(_store(), OllamaStore(ollama_dir), ["tiny"], allow_link=False)
    assert set(result.methods) <= {"copy", "reflink"}
    details = describe(_store(), config.reference("tiny"))
    source = OllamaStore(ollama_dir).blob_path(details.manifest.layers[0].digest)
    assert _ino(details.model_path) != _ino(source) and source.stat().st_nlink == 1


def test_import_by_name_with_tag_matches_case_insensitively(home, ollama_dir):
    result = import_ollama(_store(), OllamaStore(ollama_dir), ["hf.co/ACME/other-model:q4_k_m"])
    assert [m.name for m in result.models] == ["hf.co/acme/Other-Model:Q4_K_M"]
    assert [e.name for e in _store().refs()] == ["hf.co/acme/Other-Model:Q4_K_M"]
    again = import_ollama(_store(), OllamaStore(ollama_dir), ["hf.co/acme/other-model:Q4_K_M"])
    assert again.methods == {"present": 7} and again.bytes == 0


def test_unknown_name_is_not_found(home, ollama_dir):
    with pytest.raises(NotFoundError, match="model not found"):
        import_ollama(_store(), OllamaStore(ollama_dir), ["nope:1"])


def test_missing_blob_imports_nothing(home, ollama_dir):
    manifest = parse_manifest((ollama_dir / "manifests/registry.ollama.ai/library/tiny/latest").read_bytes())
    OllamaStore(ollama_dir).blob_path(manifest.layers[2].digest).unlink()
    with pytest.raises(NotFoundError, match="is missing") as e:
        import_ollama(_store(), OllamaStore(ollama_dir))
    assert "ollama pull tiny:latest" in e.value.hint
    store = _store()
    assert store.refs() == [] and list(store.blobs_dir.iterdir()) == []


def test_blob_whose_content_does_not_match_its_name_is_refused(home, ollama_dir, no_reflink):
    manifest = parse_manifest((ollama_dir / "manifests/registry.ollama.ai/library/tiny/latest").read_bytes())
    bad = OllamaStore(ollama_dir).blob_path(manifest.layers[0].digest)
    data = bytearray(bad.read_bytes())
    data[-1] ^= 0xFF  # same size, different content
    bad.unlink()
    bad.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="does not match its digest"):
        import_ollama(_store(), OllamaStore(ollama_dir), ["tiny"])
    store = _store()
    assert store.refs() == []
    assert not store.has_blob(manifest.layers[0].digest)
    assert bad.stat().st_nlink == 1  # the link made to hash it is gone
    assert [p for p in store.ingest_dir.iterdir() if p.name.startswith("ingest")] == []


def test_missing_models_folder_has_a_hint(home, tmp_path):
    with pytest.raises(NotFoundError) as e:
        import_ollama(_store(), OllamaStore(tmp_path / "nothing"))
    assert "OLLAMA_MODELS" in e.value.hint


# ---------------------------------------------------------------------------------------------------------
# export


def _modes(root: Path) -> set[tuple[str, int]]:
    return {("d" if p.is_dir() else "f", stat.S_IMODE(p.stat().st_mode)) for p in root.rglob("*")}


def test_export_writes_ollamas_layout_and_format(home, tiny_model, tmp_path, no_reflink):
    ref = tiny_model("tiny", f'TEMPLATE """{TEMPLATE}"""\nSYSTEM """{SYSTEM}"""\nPARAMETER temperature 0.7\n'
                             'PARAMETER stop <|im_end|>\n'
                             f'LICENSE """{LICENSE}"""\nMESSAGE user hi\nMESSAGE assistant hello\n')
    target = tmp_path / "ollama"
    result = export_ollama(_store(), ref, OllamaStore(target))
    assert result.ollama_name == "tiny:latest" and result.converted
    path = target / "manifests/registry.ollama.ai/library/tiny/latest"
    data = path.read_bytes()
    assert data.endswith(b"}\n") and b" " not in data
    manifest = parse_manifest(data)
    assert manifest.media_type == mt.DOCKER_MANIFEST and manifest.config.media_type == mt.DOCKER_CONFIG
    assert [d.media_type for d in manifest.layers] == [mt.OLLAMA_MODEL, mt.OLLAMA_TEMPLATE, mt.OLLAMA_SYSTEM,
                                                       mt.OLLAMA_LICENSE, mt.OLLAMA_PARAMS, mt.OLLAMA_MESSAGES]
    for desc in manifest.blobs():
        blob = target / "blobs" / f"sha256-{desc.digest.hex}"
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == desc.digest.hex and blob.stat().st_size == desc.size
    params = (target / "blobs" / f"sha256-{manifest.layers[4].digest.hex}").read_bytes()
    assert params == b'{"stop":["\\u003c|im_end|\\u003e"],"temperature":0.7}\n'  # Ollama's own encoding
    cfg = json.loads((target / "blobs" / f"sha256-{manifest.config.digest.hex}").read_bytes())
    assert cfg["model_format"] == "gguf" and cfg["model_family"] == "llama" and cfg["os"] == "linux"
    assert _modes(target) == {("d", 0o755), ("f", 0o644)}
    weights = target / "blobs" / f"sha256-{manifest.layers[0].digest.hex}"
    assert weights.stat().st_ino == _store().blob_path(manifest.layers[0].digest).stat().st_ino
    assert result.methods == {"link": 7}  # the config and re-encoded messages are kept in the store too
    messages = (target / "blobs" / f"sha256-{manifest.layers[5].digest.hex}").read_bytes()
    assert messages == b'[{"role":"user","content":"hi"},{"role":"assistant","content":"hello"}]\n'  # Ollama's order
    assert [p.name for p in (target / "blobs").iterdir() if not p.name.startswith("sha256-")] == []


def test_round_trip_through_ollamas_folder_preserves_everything(home, tiny_model, tmp_path, monkeypatch):
    ref = tiny_model("acme/tiny:q4", f'TEMPLATE """{TEMPLATE}"""\nSYSTEM {SYSTEM}\nPARAMETER num_ctx 512\n'
                                     f'PARAMETER stop "<b>"\nLICENSE a\nLICENSE b\nMESSAGE user Is it?\n'
                                     f'MESSAGE assistant yes\n')
    before = describe(_store(), ref)
    target = tmp_path / "ollama"
    export_ollama(_store(), ref, OllamaStore(target))
    assert (target / "manifests/registry.ollama.ai/acme/tiny/q4").is_file()
    monkeypatch.setenv("MODELPKG_HOME", str(tmp_path / "second-home"))
    result = import_ollama(_store(), OllamaStore(target))
    assert [m.name for m in result.models] == [str(ref)]
    after = describe(_store(), ref)
    for field in ("template", "system", "parameters", "licenses", "messages", "architecture", "quantization"):
        assert getattr(after, field) == getattr(before, field), field
    assert after.model_path.read_bytes() == before.model_path.read_bytes()


def test_an_imported_model_exports_with_its_own_bytes(home, ollama_dir, tmp_path):
    import_ollama(_store(), OllamaStore(ollama_dir))
    target = tmp_path / "again"
    result = export_ollama(_store(), config.reference("hf.co/acme/Other-Model:Q4_K_M"), OllamaStore(target),
                           as_name="hf.co/acme/Other-Model:Q4_K_M")
    assert not result.converted
    original = ollama_dir / "manifests/hf.co/acme/Other-Model/Q4_K_M"
    assert (target / "manifests/hf.co/acme/Other-Model/Q4_K_M").read_bytes() == original.read_bytes()
    assert sorted(p.name for p in (target / "blobs").iterdir()) == sorted(
        p.name for p in (ollama_dir / "blobs").iterdir()
        if p.name in {f"sha256-{d.digest.hex}" for d in parse_manifest(original.read_bytes()).blobs()})


def test_export_of_a_deep_name_needs_as(home, tiny_model, tmp_path):
    ref = tiny_model("localhost:5000/a/b/c:1")
    with pytest.raises(Exception, match="two"):
        export_ollama(_store(), ref, OllamaStore(tmp_path / "o"))
    export_ollama(_store(), ref, OllamaStore(tmp_path / "o"), as_name="localhost:5000/a/c:1")
    assert (tmp_path / "o/manifests/localhost:5000/a/c/1").is_file()


def test_export_refuses_a_damaged_store_blob(home, tiny_model, tmp_path):
    ref = tiny_model("tiny")
    details = describe(_store(), ref)
    path = details.model_path
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.unlink()
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError):
        export_ollama(_store(), ref, OllamaStore(tmp_path / "o"))
    assert not (tmp_path / "o" / "manifests").exists()
    assert [p.name for p in (tmp_path / "o" / "blobs").iterdir() if "modelpkg" in p.name] == []


# ---------------------------------------------------------------------------------------------------------
# the commands


def test_cli_import_and_export(home, ollama_dir, tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["import-ollama", "--models", str(ollama_dir), "--json", "tiny"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["models"][0]["name"] == "registry.ollama.ai/library/tiny:latest"
    result = runner.invoke(cli, ["import-ollama", "--models", str(ollama_dir)], env={"OLLAMA_MODELS": None})
    assert result.exit_code == 0 and "imported hf.co/acme/Other-Model:Q4_K_M" in result.stderr
    result = runner.invoke(cli, ["show", "tiny"])
    assert result.exit_code == 0 and "llama" in result.output
    result = runner.invoke(cli, ["export-ollama", "tiny", "--as", "copied:v1", "--json"],
                           env={"OLLAMA_MODELS": str(tmp_path / "out")})
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["ollama_name"] == "copied:v1"
    assert (tmp_path / "out/manifests/registry.ollama.ai/library/copied/v1").is_file()
    result = runner.invoke(cli, ["import-ollama", "--models", str(tmp_path / "missing")])
    assert result.exit_code == 4 and "Error: no Ollama models folder" in result.stderr


def test_cli_help_states_the_hard_link_caveat():
    result = CliRunner().invoke(cli, ["import-ollama", "--help"])
    assert "never edits a blob in place" in result.output and "Examples" in result.output
    for command in ("export-ollama", "save", "load", "export"):
        assert "Examples" in CliRunner().invoke(cli, [command, "--help"]).output


@pytest.mark.model
def test_an_imported_ollama_model_runs(home, tmp_path, gemma_gguf):
    """The real model in Ollama's layout (weights hard-linked in, as a real folder would hold them), imported
    and run: its Ollama template, params and system prompt apply."""
    root = tmp_path / "models"
    digest = hashlib.sha256(gemma_gguf.read_bytes()).hexdigest()
    (root / "blobs").mkdir(parents=True)
    os.link(gemma_gguf, root / "blobs" / f"sha256-{digest}")
    config_blob = _blob(root, b'{"model_format":"gguf","model_family":"gemma3","model_families":["gemma3"],'
                              b'"model_type":"268.10M","file_type":"Q4_K_M","architecture":"amd64","os":"linux"}\n')
    layers = [{"mediaType": mt.OLLAMA_MODEL, "digest": f"sha256:{digest}", "size": gemma_gguf.stat().st_size},
              {"mediaType": mt.OLLAMA_TEMPLATE, **_blob(root, b"{{ .System }} {{ .Prompt }}")},
              {"mediaType": mt.OLLAMA_SYSTEM, **_blob(root, b"Here is a list of three primary colors:")},
              {"mediaType": mt.OLLAMA_PARAMS, **_blob(root, go_json({"temperature": 0, "num_predict": 12}))}]
    manifest = {"schemaVersion": 2, "mediaType": mt.DOCKER_MANIFEST,
                "config": {"mediaType": mt.DOCKER_CONFIG, **config_blob}, "layers": layers}
    path = root / "manifests/registry.ollama.ai/library/gemma3/270m"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(manifest))
    runner = CliRunner()
    result = runner.invoke(cli, ["import-ollama", "--models", str(root), "gemma3:270m"])
    assert result.exit_code == 0, result.output
    shown = runner.invoke(cli, ["show", "gemma3:270m", "--json"])
    assert json.loads(shown.stdout)["architecture"] == "gemma3"
    answer = runner.invoke(cli, ["run", "gemma3:270m", "1."], catch_exceptions=False)
    assert answer.exit_code == 0, answer.output
    assert "Red" in answer.stdout or "red" in answer.stdout
