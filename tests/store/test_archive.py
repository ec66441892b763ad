"""save / load: OCI image layout archives, checked with skopeo, hostile archives refused, memory kept flat."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import make_gguf
from modelpkg.base import config
from modelpkg.cli.app import cli
from modelpkg.core import mediatypes as mt
from modelpkg.core.errors import IntegrityError, InvalidInputError
from modelpkg.ops.interop import load, save
from modelpkg.ops.models import describe
from modelpkg.store import Store

EXTRA = 'TEMPLATE "{{ .Prompt }}"\nSYSTEM be brief\nPARAMETER temperature 0.3\nLICENSE MIT\nMESSAGE user hi\n'
skopeo = pytest.mark.usefixtures("skopeo_binary")


def _store() -> Store:
    return Store(config.home())


def _save(refs) -> bytes:
    out = io.BytesIO()
    save(_store(), refs, out)
    return out.getvalue()


def _state(store: Store) -> tuple:
    """Names, blobs and leftover working files: what must not change when a load fails."""
    store.init()
    blobs = sorted(p.name for p in store.blobs_dir.iterdir())
    temps = sorted(p.name for p in store.ingest_dir.iterdir() if p.is_file() and not p.name.startswith("pin"))
    return [e.name for e in store.refs()], blobs, temps


def _fresh_home(monkeypatch, tmp_path, name="second"):
    monkeypatch.setenv("MODELPKG_HOME", str(tmp_path / name))


def test_save_then_load_into_another_store(home, tiny_model, tmp_path, monkeypatch):
    ref = tiny_model("acme/tiny:q4", EXTRA)
    other = tiny_model("other")
    before = describe(_store(), ref)
    data = _save([ref, other])
    assert data == _save([ref, other])  # the same models give the same bytes
    _fresh_home(monkeypatch, tmp_path)
    result = load(_store(), io.BytesIO(data))
    assert set(result.names) == {str(ref), str(other)} and result.replaced == ()
    after = describe(_store(), ref)
    for field in ("digest", "template", "system", "parameters", "licenses", "messages"):
        assert getattr(after, field) == getattr(before, field), field
    assert _store().verify() == []
    again = load(_store(), io.BytesIO(data))
    assert set(again.replaced) == {str(ref), str(other)} and again.blobs_new == 0


@skopeo
def test_skopeo_reads_the_archive(home, tiny_model, tmp_path):
    ref = tiny_model("localhost:5000/acme/tiny:q4", EXTRA)
    archive = tmp_path / "models.tar"
    archive.write_bytes(_save([ref]))
    out = tmp_path / "x"
    run = subprocess.run(["skopeo", "copy", f"oci-archive:{archive}:{ref}", f"dir:{out}"], capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr
    entry, manifest = _store().manifest(ref)
    assert (out / "manifest.json").read_bytes() == _store().read_blob(entry.digest)
    for desc in manifest.blobs():
        assert hashlib.sha256((out / desc.digest.hex).read_bytes()).hexdigest() == desc.digest.hex


@skopeo
def test_load_reads_an_archive_skopeo_wrote(home, tiny_model, tmp_path, monkeypatch):
    ref = tiny_model("tiny", EXTRA)
    archive = tmp_path / "skopeo.tar"
    run = subprocess.run(["skopeo", "copy", f"oci:{config.home()}:{ref}", f"oci-archive:{archive}:acme/copied:v2"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    digest = _store().resolve(ref).digest
    _fresh_home(monkeypatch, tmp_path)
    with open(archive, "rb") as f:
        result = load(_store(), f, resolve_name=config.reference)
    assert result.names == ("registry.ollama.ai/acme/copied:v2",)
    assert _store().resolve(config.reference("acme/copied:v2")).digest == digest
    assert describe(_store(), config.reference("acme/copied:v2")).system == "be brief"


def test_cli_save_to_stdout_and_load_from_stdin(home, tiny_model, tmp_path, monkeypatch):
    ref = tiny_model("tiny", EXTRA)
    runner = CliRunner()
    saved = runner.invoke(cli, ["save", "tiny", "-o", "-"])
    assert saved.exit_code == 0, saved.stderr
    assert saved.stdout_bytes[:512].find(b"oci-layout") >= 0
    result = runner.invoke(cli, ["save", "tiny", "-o", str(tmp_path / "m.tar"), "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["names"] == [str(ref)]
    assert (tmp_path / "m.tar").read_bytes() == saved.stdout_bytes
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []
    _fresh_home(monkeypatch, tmp_path)
    loaded = runner.invoke(cli, ["load", "--json"], input=saved.stdout_bytes,
                           env={"MODELPKG_HOME": str(tmp_path / "second")})
    assert loaded.exit_code == 0, loaded.stderr
    assert json.loads(loaded.stdout)["names"] == [str(ref)]
    loaded = runner.invoke(cli, ["load", "-i", str(tmp_path / "m.tar")])
    assert loaded.exit_code == 0 and "loaded tiny:latest (replaced)" in loaded.stderr
    missing = runner.invoke(cli, ["save", "nope", "-o", str(tmp_path / "n.tar")])
    assert missing.exit_code == 4 and not (tmp_path / "n.tar").exists()
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []


# ---------------------------------------------------------------------------------------------------------
# damaged and hostile archives leave the store as it was


def _members(data: bytes) -> list[tuple[tarfile.TarInfo, bytes]]:
    out = []
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for m in tar.getmembers():
            out.append((m, tar.extractfile(m).read() if m.isfile() else b""))
    return out


def _tar(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for info, payload in members:
            info.size = len(payload) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(payload) if info.isfile() else None)
    return out.getvalue()


def _file(name: str, payload: bytes) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), payload


def _link(name: str, target: str, kind=tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, b""


@pytest.fixture
def saved(home, tiny_model, tmp_path, monkeypatch):
    """An archive of one model, and a second store that already holds another model."""
    ref = tiny_model("tiny", EXTRA)
    data = _save([ref])
    _fresh_home(monkeypatch, tmp_path)
    tiny_model("existing")
    return data


def _refused(data: bytes, error=InvalidInputError, match: str = ""):
    store = _store()
    before = _state(store)
    with pytest.raises(error, match=match):
        load(store, io.BytesIO(data))
    assert _state(store) == before


def test_flipped_byte_in_a_blob_is_refused(saved):
    members = _members(saved)
    biggest = max(range(len(members)), key=lambda i: len(members[i][1]))
    info, payload = members[biggest]
    members[biggest] = (info, payload[:-1] + bytes([payload[-1] ^ 1]))
    _refused(_tar(members), IntegrityError, "corrupted")


def test_truncated_archive_is_refused(saved):
    _refused(saved[: len(saved) // 2], InvalidInputError, "truncated|damaged")


def test_garbage_is_refused(saved):
    _refused(b"not a tar at all" * 100, InvalidInputError, "not a tar archive")


def test_missing_blob_is_refused(saved):
    members = [(i, p) for i, p in _members(saved) if not (i.isfile() and i.name.startswith("blobs/") and len(p) > 1000)]
    _refused(_tar(members), InvalidInputError, "lacks blob")


@pytest.mark.parametrize("hostile", [
    _file("../escape", b"x"),
    _file("/etc/evil", b"x"),
    _file("blobs/../../escape", b"x"),
    _link("blobs/sha256/" + "a" * 64, "/etc/passwd"),
    _link("blobs/sha256/" + "b" * 64, "index.json", tarfile.LNKTYPE),
])
def test_traversal_and_links_are_refused(saved, hostile):
    _refused(_tar([hostile, *_members(saved)]), InvalidInputError, "refusing the archive")


def test_huge_index_is_refused(saved):
    members = [(i, p) for i, p in _members(saved) if i.name != "index.json"]
    _refused(_tar([*members, _file("index.json", b" " * (17 * 1024 * 1024))]), InvalidInputError, "limit")


def test_huge_manifest_is_refused(saved):
    blob = b"{" + b" " * (5 * 1024 * 1024) + b"}"
    digest = hashlib.sha256(blob).hexdigest()
    index = json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": mt.OCI_MANIFEST, "digest": f"sha256:{digest}", "size": len(blob),
        "annotations": {mt.REF_NAME: "registry.ollama.ai/library/huge:latest"}}]}).encode()
    _refused(_tar([_file("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'), _file("index.json", index),
                   _file(f"blobs/sha256/{digest}", blob)]), InvalidInputError, "manifest .* bytes")


def test_wrong_declared_size_is_refused(saved):
    members = _members(saved)
    index = json.loads(next(p for i, p in members if i.name == "index.json"))
    index["manifests"][0]["size"] += 1
    members = [(i, json.dumps(index).encode() if i.name == "index.json" else p) for i, p in members]
    _refused(_tar(members), IntegrityError, "bytes in the archive")


# ---------------------------------------------------------------------------------------------------------
# memory stays flat: a ~100 MB model saved and loaded in a subprocess


_MEASURE = """
import atexit, runpy, sys
report = sys.argv.pop(1)
def peak():
    with open("/proc/self/status") as f:
        hwm = next(line for line in f if line.startswith("VmHWM:"))
    with open(report, "w") as out:
        out.write(hwm.split()[1])
atexit.register(peak)
sys.argv[0] = "modelpkg"
runpy.run_module("modelpkg", run_name="__main__")
"""


def _peak_rss_mb(args: list[str], env: dict, report: Path, stdin=None) -> float:
    """The peak resident memory of ``modelpkg ARGS`` in a fresh process.

    Read from the process's own VmHWM (its address space's high-water mark): wait4's ru_maxrss would also
    count the pages the child shared with this (large) test process between fork and exec."""
    run = subprocess.run([sys.executable, "-c", _MEASURE, str(report), *args], env=env, stdin=stdin,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert run.returncode == 0, run.stderr.decode()
    return int(report.read_text()) / 1024  # kB


def test_save_and_load_stream_without_holding_the_model_in_memory(home, tmp_path):
    big = make_gguf(tmp_path / "big.gguf", tensor_values=50_000_000)  # ~100 MB of float16
    assert big.stat().st_size > 99_000_000
    (tmp_path / "Modelfile").write_text(f"FROM {big}\n")
    env = {**os.environ, "MODELPKG_HOME": str(home)}
    result = CliRunner().invoke(cli, ["create", "big", "-f", str(tmp_path / "Modelfile")], env=env)
    assert result.exit_code == 0, result.output
    archive = tmp_path / "big.tar"
    report = tmp_path / "peak"
    baseline = _peak_rss_mb(["list"], env, report)
    saved = _peak_rss_mb(["save", "big", "-o", str(archive)], env, report)
    assert archive.stat().st_size > 99_000_000
    env2 = {**env, "MODELPKG_HOME": str(tmp_path / "second")}
    with open(archive, "rb") as f:
        loaded = _peak_rss_mb(["load"], env2, report, stdin=f)
    print(f"peak RSS: list {baseline:.0f} MB, save {saved:.0f} MB, load {loaded:.0f} MB (archive 100 MB)")
    assert saved < baseline + 40 and loaded < baseline + 40
    assert Store(tmp_path / "second").verify() == []
