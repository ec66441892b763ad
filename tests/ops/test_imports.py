"""import-hf and import-lmstudio (``modelpkg.ops.imports``), and create FROM a symlink, on folders built here as the
tools lay them out: the Hugging Face hub cache (``models--{user}--{repo}/blobs``, ``refs/main``, ``snapshots/<commit>/``
holding relative symlinks into ``../../blobs``) and LM Studio's ``{publisher}/{model}/*.gguf``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import make_gguf
from modelpkg.base import config, fsutil
from modelpkg.cli.app import cli
from modelpkg.ops.imports import quant_tag
from modelpkg.ops.models import describe
from modelpkg.store import Store

TEMPLATE = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}<|assistant|>"
COMMIT = "9d1f0e3c5b7a2e4d6f8a0b1c3d5e7f9a1b2c3d4e"


def hf_cache_repo(hub: Path, repo: str, files: dict[str, Path]) -> Path:
    """One repository in the hub cache, as huggingface_hub writes it: blobs named by etag, refs/main, and a
    snapshot of relative symlinks (a file in a subfolder links one level further up)."""
    user, name = repo.split("/")
    folder = hub / f"models--{user}--{name}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(COMMIT)
    for rel, source in files.items():
        etag = f"{abs(hash(rel)):040x}"[:40] + "".join(f"{b:02x}" for b in rel.encode()[:12])
        blob = folder / "blobs" / etag
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(source.read_bytes())
        link = folder / "snapshots" / COMMIT / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        up = "../" * (rel.count("/") + 2)
        os.symlink(f"{up}blobs/{etag}", link)
    return folder


@pytest.fixture
def gguf(tmp_path):
    def make(name: str, seed: int = 0) -> Path:
        (tmp_path / "made").mkdir(exist_ok=True)
        return make_gguf(tmp_path / "made" / name, seed=seed, chat_template=TEMPLATE)

    return make


@pytest.fixture
def hub(tmp_path, monkeypatch, home, gguf):
    root = tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    hf_cache_repo(root, "bartowski/Tiny-GGUF", {
        "Tiny-Q4_K_M.gguf": gguf("a.gguf", 1),
        "Q8_0/Tiny-Q8_0.gguf": gguf("b.gguf", 2),
        "mmproj-Tiny-f16.gguf": gguf("c.gguf", 3),
        "Tiny-F16-00001-of-00002.gguf": gguf("d.gguf", 4),
        "README.md": gguf("a.gguf", 1),
    })
    hf_cache_repo(root, "acme/safetensors-only", {"model.safetensors": gguf("e.gguf", 5)})
    return root


def _store() -> Store:
    return Store(config.home())


def _blob(name: str) -> Path:
    return describe(_store(), config.reference(name)).model_path


@pytest.mark.parametrize("filename, tag", [
    ("Llama-3.2-1B-Instruct-Q4_K_M.gguf", "Q4_K_M"),
    ("mistral-7b-instruct-v0.2.Q5_K_S.gguf", "Q5_K_S"),
    ("gemma-2b-it-q4_k_m.gguf", "Q4_K_M"),
    ("Qwen-F16-00001-of-00003.gguf", "F16"),
    ("model.gguf", "model"),
    ("ggml-model.gguf", "ggml-model"),
])
def test_the_tag_is_the_quantization_in_the_file_name(filename, tag):
    assert quant_tag(filename) == tag


def test_import_hf_hard_links_each_gguf_under_its_pull_name(hub, monkeypatch):
    monkeypatch.setattr(fsutil, "try_reflink", lambda src, dst: False)  # the fault "no reflink here"
    result = CliRunner().invoke(cli, ["import-hf", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    names = sorted(m["name"] for m in report["models"])
    assert names == ["hf.co/bartowski/Tiny-GGUF:Q4_K_M", "hf.co/bartowski/Tiny-GGUF:Q8_0"]
    assert {m["how"] for m in report["models"]} == {"link"}
    reasons = {Path(s["path"]).name: s["reason"] for s in report["skipped"]}
    assert "projector" in reasons["mmproj-Tiny-f16.gguf"] and "split GGUF" in reasons["Tiny-F16-00001-of-00002.gguf"]
    snapshot = hub / "models--bartowski--Tiny-GGUF" / "snapshots" / COMMIT
    target = (snapshot / "Q8_0" / "Tiny-Q8_0.gguf").resolve()
    stored = _blob("hf.co/bartowski/Tiny-GGUF:Q8_0")
    assert os.stat(stored).st_ino == os.stat(target).st_ino  # the blob is the cache's file: zero bytes copied
    assert not stored.is_symlink()


def test_an_imported_model_uses_the_gguf_chat_template(hub):
    CliRunner().invoke(cli, ["import-hf", "bartowski/Tiny-GGUF"])
    details = describe(_store(), config.reference("hf.co/bartowski/Tiny-GGUF:Q4_K_M"))
    assert details.template is None and details.chat_template is None  # no layer of its own...
    from modelpkg.runtime import ggufmeta
    assert ggufmeta.read_info(details.model_path).chat_template == TEMPLATE  # ...so run uses the GGUF's


def test_a_second_import_reads_nothing_again(hub, monkeypatch):
    monkeypatch.setattr(fsutil, "try_reflink", lambda src, dst: False)
    runner = CliRunner()
    assert runner.invoke(cli, ["import-hf"]).exit_code == 0

    def no_hashing(*args, **kwargs):
        raise AssertionError("hashed again")

    monkeypatch.setattr(fsutil, "hash_file", no_hashing)
    again = runner.invoke(cli, ["import-hf", "--json"])
    assert again.exit_code == 0, again.output
    assert {m["how"] for m in json.loads(again.stdout)["models"]} == {"present"}


def test_import_copy_makes_independent_files(hub):
    result = CliRunner().invoke(cli, ["import-hf", "--copy", "--json", "hf.co/bartowski/Tiny-GGUF"])
    assert result.exit_code == 0, result.output
    assert {m["how"] for m in json.loads(result.stdout)["models"]} <= {"copy", "reflink"}
    target = (hub / "models--bartowski--Tiny-GGUF" / "snapshots" / COMMIT / "Tiny-Q4_K_M.gguf").resolve()
    assert os.stat(_blob("hf.co/bartowski/Tiny-GGUF:Q4_K_M")).st_ino != os.stat(target).st_ino


def test_a_repo_without_ggufs_is_one_line_and_imports_nothing(hub):
    result = CliRunner().invoke(cli, ["import-hf", "acme/safetensors-only"])
    assert result.exit_code == 4
    assert "Error: no GGUF of acme/safetensors-only in" in result.output and "Traceback" not in result.output
    assert _store().refs() == [] if _store().root.exists() else True


def test_a_file_that_is_not_gguf_fails_alone(hub, tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf at all")
    hf_cache_repo(hub, "acme/Broken-GGUF", {"Broken-Q4_0.gguf": bad})
    result = CliRunner().invoke(cli, ["import-hf"])
    assert result.exit_code == 3, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Broken-Q4_0.gguf" in errors[0]
    names = sorted(e.name for e in _store().refs())
    assert names == ["hf.co/bartowski/Tiny-GGUF:Q4_K_M", "hf.co/bartowski/Tiny-GGUF:Q8_0"]
    assert hashlib.sha256(bad.read_bytes()).hexdigest() not in {p.name for p in _store().blobs_dir.iterdir()}


def test_an_interrupted_download_is_skipped(hub):
    snapshot = hub / "models--bartowski--Tiny-GGUF" / "snapshots" / COMMIT
    os.symlink("../../blobs/missing", snapshot / "Tiny-Q6_K.gguf")
    result = CliRunner().invoke(cli, ["import-hf", "--json"])
    assert result.exit_code == 0
    skipped = {Path(s["path"]).name: s["reason"] for s in json.loads(result.stdout)["skipped"]}
    assert "not there" in skipped["Tiny-Q6_K.gguf"]


def test_import_lmstudio(tmp_path, home, gguf, monkeypatch):
    monkeypatch.setattr(fsutil, "try_reflink", lambda src, dst: False)
    models = tmp_path / "lmstudio" / "models"
    folder = models / "lmstudio-community" / "Meta-Llama-3.1-8B-Instruct-GGUF"
    folder.mkdir(parents=True)
    source = gguf("l.gguf", 9)
    os.link(source, folder / "Meta-Llama-3.1-8B-Instruct-Q4_K_M.gguf")
    (models / "stray.gguf").write_bytes(source.read_bytes())  # LM Studio ignores files at the top
    result = CliRunner().invoke(cli, ["import-lmstudio", "--models", str(models), "--json"])
    assert result.exit_code == 0, result.output
    models_json = json.loads(result.stdout)["models"]
    assert [m["name"] for m in models_json] == ["hf.co/lmstudio-community/Meta-Llama-3.1-8B-Instruct-GGUF:Q4_K_M"]
    assert os.stat(_blob(models_json[0]["name"])).st_ino == os.stat(source).st_ino


# ---------------------------------------------------------------------------------------------------------
# create FROM a symlink


@pytest.mark.parametrize("link", [False, True])
def test_create_from_a_relative_symlink_takes_the_target(hub, tmp_path, link):
    snapshot = hub / "models--bartowski--Tiny-GGUF" / "snapshots" / COMMIT
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(f"FROM {snapshot / 'Tiny-Q4_K_M.gguf'}\n")
    args = ["create", "tiny", "-f", str(modelfile)] + (["--link"] if link else [])
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    stored = _blob("tiny")
    target = (snapshot / "Tiny-Q4_K_M.gguf").resolve()
    assert not stored.is_symlink() and stored.read_bytes() == target.read_bytes()
    if link:
        assert os.stat(stored).st_ino == os.stat(target).st_ino
    assert CliRunner().invoke(cli, ["verify", "tiny"]).exit_code == 0
