"""create: the Modelfile kept in the manifest (``dev.modelpkg.modelfile``) carries no local paths.

FROM and ADAPTER files are named by their layer's digest there, so a pushed manifest says nothing about
the folders, user names or file names a model was built from, and the same GGUF and Modelfile give the
same manifest digest wherever they sit. The published text is itself a Modelfile: ``create`` accepts
``FROM sha256:<hex>`` for a blob in the store.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import make_gguf
from modelpkg.base import config
from modelpkg.base.fsutil import hash_file
from modelpkg.cli.app import cli
from modelpkg.core import mediatypes as mt
from modelpkg.core.errors import ModelfileError
from modelpkg.core.manifest import parse_manifest
from modelpkg.ops.create import create
from modelpkg.store import Store

BODY = "SYSTEM You are terse.\nPARAMETER temperature 0.2\nMESSAGE user hi\n"


def build(home: Path, name: str, text: str, folder: Path):
    store = Store(home)
    ref = config.reference(name)
    result = create(store, ref, text, folder, resolve_name=config.reference)
    return result.entry, parse_manifest(store.read_blob(result.entry.digest), mt.OCI_MANIFEST)


@pytest.fixture
def secret(tmp_path, tiny_gguf) -> Path:
    """A model and a LoRA adapter in a folder whose path names a user and a project."""
    folder = tmp_path / "users" / "alice" / "secret-project"
    folder.mkdir(parents=True)
    shutil.copy(tiny_gguf, folder / "weights-v3-internal.gguf")
    make_gguf(folder / "lora-internal.gguf", model_type="adapter", seed=3)
    return folder


def test_the_modelfile_annotation_names_files_by_digest(home, secret):
    text = (f"# built by alice from {secret}\nFROM {secret / 'weights-v3-internal.gguf'}\n"
            f"ADAPTER ./lora-internal.gguf\n{BODY}")
    _, manifest = build(home, "tiny", text, secret)
    weights, _ = hash_file(secret / "weights-v3-internal.gguf")
    adapter, _ = hash_file(secret / "lora-internal.gguf")
    published = manifest.annotations[mt.MODELFILE]
    assert published == f"FROM {weights}\nADAPTER {adapter}\n{BODY}"
    raw = Store(home).read_blob(Store(home).resolve(config.reference("tiny")).digest).decode()
    for leak in ("alice", "secret-project", "internal", str(secret.parents[2])):
        assert leak not in raw


def test_the_same_model_from_two_folders_has_one_digest(home, tmp_path, tiny_gguf):
    alice, bob = tmp_path / "alice" / "project", tmp_path / "bob"
    alice.mkdir(parents=True)
    bob.mkdir()
    shutil.copy(tiny_gguf, alice / "model.gguf")
    shutil.copy(tiny_gguf, bob / "renamed.gguf")
    a, _ = build(home, "a", f"FROM ./model.gguf\n{BODY}", alice)
    b, _ = build(home, "b", f"# bob's copy\nFROM   {bob / 'renamed.gguf'}\n\n{BODY}", bob)
    c, _ = build(home, "c", f"FROM {bob}\n{BODY}", tmp_path)  # a folder holding the GGUF
    assert a.digest == b.digest == c.digest


def test_from_a_model_name_stays_and_unused_paths_are_left_out(home, secret, tiny_gguf):
    build(home, "base", f"FROM {tiny_gguf}\n", tiny_gguf.parent)
    text = (f"FROM base\nFROM {secret / 'weights-v3-internal.gguf'}\nDRAFT ./lora-internal.gguf\n"
            f"ADAPTER ~/nowhere/old.gguf\nADAPTER ./lora-internal.gguf\n{BODY}")
    _, manifest = build(home, "child", text, secret)
    adapter, _ = hash_file(secret / "lora-internal.gguf")
    assert manifest.annotations[mt.MODELFILE] == f"FROM base\nADAPTER {adapter}\n{BODY}"


def test_the_published_modelfile_recreates_the_model(home, secret):
    text = f"FROM ./weights-v3-internal.gguf\nADAPTER ./lora-internal.gguf\n{BODY}"
    entry, manifest = build(home, "tiny", text, secret)
    elsewhere = secret.parent / "empty"
    elsewhere.mkdir()
    again, _ = build(home, "again", manifest.annotations[mt.MODELFILE], elsewhere)
    assert again.digest == entry.digest


def test_from_a_digest_the_store_lacks_is_a_modelfile_error(home, tmp_path):
    with pytest.raises(ModelfileError, match="no such blob in the store"):
        build(home, "x", "FROM sha256:" + "ab" * 32 + "\n", tmp_path)


@pytest.mark.registry
def test_a_pushed_manifest_carries_no_local_path(registry, home, secret):
    """Through the real registry: the manifest another machine pulls names no local folder."""
    from modelpkg.core.reference import parse_reference
    from modelpkg.registry.connect import client_for

    name = f"{registry.host}/acme/private:v1"
    modelfile = secret / "Modelfile"
    modelfile.write_text(f"FROM {secret / 'weights-v3-internal.gguf'}\nADAPTER ./lora-internal.gguf\n{BODY}")
    runner = CliRunner()
    for args in (["create", name, "-f", str(modelfile)], ["push", name]):
        result = runner.invoke(cli, args, catch_exceptions=False)
        assert result.exit_code == 0, result.output
    ref = parse_reference(name)
    with client_for(ref) as client:
        data, _, _ = client.get_manifest(ref.repository, ref.reference, name=name)
    published = json.loads(data)["annotations"][mt.MODELFILE]
    assert published.startswith("FROM sha256:") and "ADAPTER sha256:" in published
    for leak in (b"alice", b"secret-project", b"internal", str(secret.parents[2]).encode()):
        assert leak not in data
