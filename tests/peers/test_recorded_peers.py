"""What the real KitOps and modctl wrote, pulled by modelpkg.

Neither tool's Go module is served by this machine's module proxy (403), so ``.ci/setup`` cannot install them
and the suite cannot run them. They were built once from their release sources (KitOps v1.7.0, modctl v0.2.2)
and run against a loopback distribution registry; ``tests/peers/recorded/<tool>-<version>/<case>/`` holds the
manifest exactly as the registry served it and every blob it names (``recorded/README.md`` gives the
commands). Here those bytes go back into the test registry unchanged and modelpkg pulls them: the artifacts
are the peers' own, not shapes written from their docs (``tests/ops/test_formats.py`` has those).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from modelpkg.cli.app import cli
from registry_env import push_blob, push_manifest

RECORDED = Path(__file__).parent / "recorded"
TINY_GGUF_SHA256 = "74ce30717bd3d485d0f8404eff9195dad1bec129837b9fba4cc19b5d5d952b79"  # recorded/README.md

pytestmark = [pytest.mark.registry, pytest.mark.timeout(120)]


def run(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def republish(registry, case: Path, repo: str, tag: str = "v1") -> tuple[str, dict]:
    """Push a recorded case's blobs and its manifest, byte for byte, to ``registry``."""
    session = requests.Session()
    raw = (case / "manifest.json").read_bytes()
    manifest = json.loads(raw)
    for d in [manifest["config"], *manifest["layers"]]:
        assert push_blob(session, registry.url, repo, (case / "blobs" / d["digest"][7:]).read_bytes()) == d["digest"]
    push_manifest(session, registry.url, repo, tag, raw, (case / "content-type").read_text().strip())
    return f"{registry.host}/{repo}:{tag}", manifest


def show(name: str) -> dict:
    shown = run("show", name, "--json")
    assert shown.exit_code == 0, shown.stderr
    return json.loads(shown.stdout)


@pytest.mark.parametrize("case", ["v1", "gz", "full", "dir"])
def test_modelpkg_pulls_what_kitops_pushed(registry, home, case):
    """``kit pack`` + ``kit push`` of a GGUF (plain tar, ``--compression gzip``, a Kitfile with a model part,
    code, docs and a dataset, a model that is a folder): modelpkg pulls it and finds the GGUF inside."""
    name, manifest = republish(registry, RECORDED / "kitops-1.7.0" / case, f"acme/kit-{case}")
    assert "mediaType" not in manifest  # KitOps leaves the manifest's mediaType out: only the header says it
    pulled = run("pull", "--insecure", name)
    assert pulled.exit_code == 0, pulled.stderr
    got = show(name)
    assert got["format"] == "gguf" and got["architecture"] == "llama"
    gguf = Path(got["model_path"]).read_bytes()
    assert hashlib.sha256(gguf).hexdigest() == TINY_GGUF_SHA256 == Path(got["model_path"]).name
    assert [layer["digest"] for layer in got["layers"]] == [d["digest"] for d in manifest["layers"]]
    assert got["config"]["model"]["digest"] == manifest["layers"][0]["digest"]  # the Kitfile, as KitOps wrote it
    # a model part of type projector (its type is in the Kitfile only) is listed as a projector, by its name
    projectors = [(p["title"], p["digest"]) for p in got["projectors"]]
    assert projectors == ([("mmproj.gguf", manifest["layers"][1]["digest"])] if case == "full" else [])
    assert run("rm", name).exit_code == 0


def test_a_kitops_model_pushed_again_by_modelpkg_keeps_every_layer(registry, home):
    """Pull of KitOps's full ModelKit, then modelpkg push of it unchanged: the same manifest digest, so
    ``kit pull`` of the copy gets KitOps's own bytes back (code, docs, dataset included)."""
    name, _ = republish(registry, RECORDED / "kitops-1.7.0" / "full", "acme/kit-full")
    assert run("pull", "--insecure", name).exit_code == 0
    copy = f"{registry.host}/acme/kit-copy:v1"
    assert run("cp", name, copy).exit_code == 0
    pushed = run("push", "--insecure", copy)
    assert pushed.exit_code == 0, pushed.stderr
    raw = (RECORDED / "kitops-1.7.0" / "full" / "manifest.json").read_bytes()
    answer = requests.get(f"{registry.url}/v2/acme/kit-copy/manifests/v1",
                          headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}, timeout=10)
    assert answer.status_code == 200
    assert answer.headers["Docker-Content-Digest"] == "sha256:" + hashlib.sha256(raw).hexdigest()


@pytest.mark.parametrize("case", ["raw", "tar"])
def test_modelpkg_pulls_what_modctl_pushed(registry, home, case):
    """``modctl build`` (raw layers, and ``--raw=false`` tars) + ``modctl push``: modctl 0.2 writes ModelPack's
    legacy ``vnd.cnai.model.*`` media types and ``org.cnai.model.filepath`` on purpose; modelpkg reads them as
    the CNCF names (before, it found no weights in either and pulled a model that could not run)."""
    name, manifest = republish(registry, RECORDED / "modctl-0.2.2" / case, f"acme/modctl-{case}")
    assert manifest["artifactType"] == "application/vnd.cnai.model.manifest.v1+json"
    pulled = run("pull", "--insecure", name)
    assert pulled.exit_code == 0, pulled.stderr
    got = show(name)
    assert (got["format"], got["architecture"], got["quantization"]) == ("gguf", "llama", "Q4_K_M")
    gguf = Path(got["model_path"])
    assert gguf.name == TINY_GGUF_SHA256 == hashlib.sha256(gguf.read_bytes()).hexdigest()
    # the LICENSE file: a raw doc layer is the text; packed in a tar (--raw=false) it is not taken for it
    assert got["licenses"] == (["MIT\n"] if case == "raw" else [])
    # and back out as the CNCF names, which modctl pull + extract read (checked live: recorded/README.md)
    copy = f"{registry.host}/acme/modctl-{case}-copy:v1"
    assert run("cp", name, copy).exit_code == 0
    assert run("push", "--insecure", "--format", "modelpack", copy).exit_code == 0
    answer = requests.get(f"{registry.url}/v2/acme/modctl-{case}-copy/manifests/v1",
                          headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}, timeout=10).json()
    assert answer["artifactType"] == "application/vnd.cncf.model.manifest.v1+json"
    weights = [d for d in answer["layers"] if d["mediaType"] == "application/vnd.cncf.model.weight.v1.raw"]
    assert [d["digest"] for d in weights] == ["sha256:" + TINY_GGUF_SHA256]
