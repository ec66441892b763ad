"""export: a model's files under their names, for other tools; hostile titles and links never escape the folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from conftest import make_gguf
from modelpkg.base import config, fsutil
from modelpkg.cli.app import cli
from modelpkg.core import mediatypes as mt
from modelpkg.core.errors import StoreError
from modelpkg.core.manifest import canonical_json, go_json
from modelpkg.ops.interop import export_files, safe_relpath
from modelpkg.ops.models import describe
from modelpkg.store import Store
from registry_env import push_blob, push_manifest

EXTRA = ('TEMPLATE "{{ .Prompt }}"\nSYSTEM be brief\nPARAMETER temperature 0.3\nLICENSE MIT\nLICENSE BSD\n'
         'MESSAGE user hi\n')


def _store() -> Store:
    return Store(config.home())


@pytest.fixture
def no_reflink(monkeypatch):
    monkeypatch.setattr(fsutil, "try_reflink", lambda src, dst: False)


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_export_writes_each_file_under_its_name(home, tiny_model, tmp_path, no_reflink):
    ref = tiny_model("tiny", EXTRA)
    out = tmp_path / "out"
    result = export_files(_store(), ref, out)
    assert _tree(out) == {"model.gguf", "template", "system.txt", "params.json", "LICENSE", "LICENSE-2",
                          "messages.json"}
    details = describe(_store(), ref)
    assert (out / "template").read_text() == "{{ .Prompt }}"
    assert (out / "system.txt").read_text() == "be brief"
    assert json.loads((out / "params.json").read_text()) == {"temperature": 0.3}
    assert [(out / n).read_text() for n in ("LICENSE", "LICENSE-2")] == ["MIT", "BSD"]
    assert json.loads((out / "messages.json").read_text()) == [{"role": "user", "content": "hi"}]
    assert (out / "model.gguf").stat().st_ino == details.model_path.stat().st_ino  # weights: hard link
    assert (out / "template").stat().st_nlink == 1  # text: always a copy (editors may write in place)
    assert {f.how for f in result.files if f.role != "model"} == {"copy"}
    again = export_files(_store(), ref, out, allow_link=False)  # re-export replaces the files
    assert (out / "model.gguf").stat().st_ino != details.model_path.stat().st_ino
    assert {f.how for f in again.files} <= {"copy", "reflink"}


def test_export_of_an_ollama_format_model_uses_default_names(home, tmp_path, tiny_gguf):
    store = _store()
    with store.session() as pins:
        layers = []
        for media_type, data in ((mt.OLLAMA_MODEL, tiny_gguf.read_bytes()), (mt.OLLAMA_TEMPLATE, b"T"),
                                 (mt.OLLAMA_PARAMS, go_json({"stop": ["<x>"]}))):
            digest = store.put_bytes(data, pins)
            layers.append({"mediaType": media_type, "digest": str(digest), "size": len(data)})
        cfg = b'{"model_format":"gguf"}\n'
        manifest = canonical_json({"schemaVersion": 2, "mediaType": mt.DOCKER_MANIFEST, "layers": layers,
                                   "config": {"mediaType": mt.DOCKER_CONFIG, "digest": str(store.put_bytes(cfg, pins)),
                                              "size": len(cfg)}})
        store.tag(config.reference("olla"), manifest, mt.DOCKER_MANIFEST, pins)
    export_files(store, config.reference("olla"), tmp_path / "o")
    assert _tree(tmp_path / "o") == {"model.gguf", "template", "params.json"}
    assert (tmp_path / "o/params.json").read_bytes() == b'{"stop":["\\u003cx\\u003e"]}\n'


@pytest.mark.parametrize("title, expected", [
    ("model.gguf", "model.gguf"), ("weights/model.gguf", "weights/model.gguf"), ("./a/./b", "a/b"),
    ("../x", None), ("/etc/passwd", None), ("a/../../x", None), ("C:\\x", None), ("..\\..\\x", None),
    ("\\\\server\\share", None), ("a\x00b", None), ("a\nb", None), ("", None), (None, None), (".", None),
    ("x" * 256, None),
])
def test_safe_relpath(title, expected):
    assert safe_relpath(title) == expected


HOSTILE = [
    ("../../evil.gguf", "gguf"),             # the weights: unsafe title, so model.gguf
    ("/etc/template", b"{{ .Prompt }}"),      # role from the name, path refused: template
    ("sub/../../params.json", b'{"temperature":1}\n'),
    ("..\\..\\second.gguf", "gguf"),          # a second GGUF: model-2.gguf
    ("docs/README.md", b"readme"),            # a safe title in a subfolder: kept
    ("a\x00b", b"nul"),                       # no role and no safe name: skipped
    ("C:\\Windows\\win.ini", b"ini"),         # no role and no safe name: skipped
]


def _hostile_layers(tiny_gguf: Path) -> list[tuple[str, bytes]]:
    return [(title, tiny_gguf.read_bytes() if data == "gguf" else data) for title, data in HOSTILE]


def _check_hostile_export(out: Path, result) -> None:
    assert _tree(out) == {"model.gguf", "template", "params.json", "model-2.gguf", "docs", "docs/README.md"}
    assert (out / "docs/README.md").read_bytes() == b"readme"
    assert sum("written as" in n for n in result.notes) == 4 and sum("skipped" in n for n in result.notes) == 2


def test_hostile_titles_in_a_stored_manifest_stay_inside_the_folder(home, tmp_path, tiny_gguf):
    store = _store()
    with store.session() as pins:
        layers = []
        for title, data in _hostile_layers(tiny_gguf):
            digest = store.put_bytes(data, pins)
            layers.append({"mediaType": "application/octet-stream", "digest": str(digest), "size": len(data),
                           "annotations": {mt.TITLE: title}})
        cfg = b"{}"
        manifest = canonical_json({"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "layers": layers,
                                   "config": {"mediaType": mt.OCI_EMPTY, "digest": str(store.put_bytes(cfg, pins)),
                                              "size": 2}})
        store.tag(config.reference("hostile"), manifest, mt.OCI_MANIFEST, pins)
    parent = tmp_path / "deep" / "er"
    out = parent / "out"
    parent.mkdir(parents=True)
    before = _tree(tmp_path)
    result = export_files(store, config.reference("hostile"), out)
    assert _tree(tmp_path) - before - {str(p.relative_to(tmp_path)) for p in out.rglob("*")} == {"deep/er/out"}
    _check_hostile_export(out, result)


def test_hostile_titles_in_a_pulled_manifest_stay_inside_the_folder(home, tmp_path, tiny_gguf, registry):
    session = requests.Session()
    repo = "hostile/titles"
    layers = []
    for title, data in _hostile_layers(tiny_gguf):
        layers.append({"mediaType": "application/octet-stream", "digest": push_blob(session, registry.url, repo, data),
                       "size": len(data), "annotations": {mt.TITLE: title}})
    manifest = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "layers": layers,
                           "config": {"mediaType": mt.OCI_EMPTY, "size": 2,
                                      "digest": push_blob(session, registry.url, repo, b"{}")}}).encode()
    push_manifest(session, registry.url, repo, "v1", manifest)
    name = f"{registry.host}/{repo}:v1"
    result = CliRunner().invoke(cli, ["pull", name])
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["export", name, str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert {f["path"] for f in summary["files"]} == {"model.gguf", "template", "params.json", "model-2.gguf",
                                                     "docs/README.md"}
    assert _tree(out) == {"model.gguf", "template", "params.json", "model-2.gguf", "docs", "docs/README.md"}


def test_links_already_in_the_folder_are_replaced_or_refused(home, tmp_path, tiny_gguf):
    store = _store()
    with store.session() as pins:
        data = tiny_gguf.read_bytes()
        readme = b"readme"
        layers = [{"mediaType": mt.MODELPACK_WEIGHT, "digest": str(store.put_bytes(data, pins)), "size": len(data),
                   "annotations": {mt.TITLE: "model.gguf"}},
                  {"mediaType": mt.MODELPACK_DOC, "digest": str(store.put_bytes(readme, pins)), "size": len(readme),
                   "annotations": {mt.TITLE: "docs/README.md"}}]
        manifest = canonical_json({"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "layers": layers,
                                   "config": {"mediaType": mt.OCI_EMPTY, "digest": str(store.put_bytes(b"{}", pins)),
                                              "size": 2}})
        store.tag(config.reference("linked"), manifest, mt.OCI_MANIFEST, pins)
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim"
    victim.write_bytes(b"keep me")
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(victim, out / "model.gguf")
    os.symlink(outside, out / "docs")
    with pytest.raises(StoreError, match="symbolic link"):
        export_files(store, config.reference("linked"), out)
    assert victim.read_bytes() == b"keep me" and sorted(p.name for p in outside.iterdir()) == ["victim"]
    assert not (out / "model.gguf").is_symlink() and (out / "model.gguf").read_bytes() == data  # replaced, not followed
    os.unlink(out / "docs")
    export_files(store, config.reference("linked"), out)
    assert (out / "docs/README.md").read_bytes() == b"readme"
    assert [p.name for p in out.iterdir() if p.name.startswith(".modelpkg")] == []


def test_cli_export(home, tiny_model, tmp_path):
    tiny_model("tiny", EXTRA)
    result = CliRunner().invoke(cli, ["export", "tiny", str(tmp_path / "x")])
    assert result.exit_code == 0, result.output
    assert str(tmp_path / "x" / "model.gguf") in result.stdout.splitlines()
    result = CliRunner().invoke(cli, ["export", "nope", str(tmp_path / "y")])
    assert result.exit_code == 4 and "model not found" in result.stderr
    assert make_gguf  # the conftest helper is importable here too


@pytest.mark.registry
def test_a_kitops_model_exports_saves_and_loads_with_its_gguf(home, tmp_path, tiny_gguf, registry, monkeypatch):
    """A KitOps ModelKit's weights are a tar; the GGUF pulled out of it (a derived blob) is what export and
    export-ollama write, and save/load carry it with the name."""
    import io
    import tarfile

    from artifacts import member, publish_kitops, tar_bytes
    from modelpkg.core.digest import Digest
    from modelpkg.core.manifest import parse_manifest
    from modelpkg.ops.interop import export_ollama, load, save
    from modelpkg.store.ollama import OllamaStore

    data = tiny_gguf.read_bytes()
    model_tar = tar_bytes([(member("models", tarfile.DIRTYPE), None), (member("models/tiny.gguf"), data)], False)
    name = publish_kitops(registry, "acme/kit-export", model_tar, False)
    assert CliRunner().invoke(cli, ["pull", name]).exit_code == 0
    ref = config.reference(name)
    result = export_files(_store(), ref, tmp_path / "files")
    assert (tmp_path / "files/model.gguf").read_bytes() == data
    assert [f.digest for f in result.files if f.role == "model"] == [Digest.of(data)]
    exported = export_ollama(_store(), ref, OllamaStore(tmp_path / "ollama"), as_name="kit:v1")
    manifest = parse_manifest(exported.manifest_path.read_bytes())
    assert manifest.layers[0].media_type == mt.OLLAMA_MODEL and manifest.layers[0].digest == Digest.of(data)
    out = io.BytesIO()
    save(_store(), [ref], out)
    monkeypatch.setenv("MODELPKG_HOME", str(tmp_path / "second"))
    load(_store(), io.BytesIO(out.getvalue()))
    entry = _store().resolve(ref)
    assert entry.derived == ((Digest.of(model_tar), Digest.of(data)),)
    assert describe(_store(), ref).model_path.read_bytes() == data
    assert _store().verify() == []
