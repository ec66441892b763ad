"""crane, oras and regctl, the OCI registry tools, against what modelpkg pushes and pulls.

Each runs for real (``.peers/bin``, built by ``.ci/peers``) against both registries: CNCF distribution 2.8 and
go-containerregistry's registry with the OCI 1.1 referrers API (``any_registry``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelpkg.base import config
from modelpkg.core import mediatypes as mt
from modelpkg.core.digest import Digest
from modelpkg.ops.push import push
from modelpkg.store import Store

pytestmark = [pytest.mark.registry, pytest.mark.timeout(180)]

TEMPLATE = "{{ if .System }}<sys>{{ .System }}</sys>{{ end }}<u>{{ .Prompt }}</u>"


def store() -> Store:
    return Store(config.home())


def pushed_model(tiny_model, registry, repo: str) -> str:
    name = f"{registry.host}/{repo}"
    ref = tiny_model(name, f'TEMPLATE """{TEMPLATE}"""\nSYSTEM be brief\nPARAMETER temperature 0.25\n'
                           "PARAMETER stop <end>\nLICENSE MIT\n")
    push(store(), ref)
    return name


def test_oras_pull_of_a_modelpack_push_gives_the_files_by_title(any_registry, tiny_model, tiny_gguf, peer_run,
                                                                 tmp_path):
    name = pushed_model(tiny_model, any_registry, "peers/oras-out:v1")
    out = tmp_path / "oras-out"
    peer_run("oras", "pull", "--plain-http", "-o", str(out), name)
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    assert files["model.gguf"] == tiny_gguf.read_bytes()
    assert files["template"].decode() == TEMPLATE
    assert files["system.txt"] == b"be brief"
    assert json.loads(files["params.json"]) == {"stop": ["<end>"], "temperature": 0.25}
    assert files["LICENSE"] == b"MIT"


def test_modelpkg_pulls_and_shows_a_bare_gguf_that_oras_pushed(any_registry, tiny_gguf, peer_run, modelpkg):
    name = f"{any_registry.host}/peers/oras-in:v1"
    peer_run("oras", "push", "--plain-http", name, f"{tiny_gguf.name}:application/octet-stream",
             cwd=tiny_gguf.parent)
    pulled = modelpkg("pull", name)
    assert pulled.exit_code == 0, pulled.stderr
    shown = json.loads(modelpkg("show", name, "--json").stdout)
    [weights] = [layer for layer in shown["layers"] if layer["digest"] == str(Digest.of(tiny_gguf.read_bytes()))]
    assert weights["size"] == tiny_gguf.stat().st_size
    assert store().verify() == []


def test_crane_reads_the_exact_manifest_and_pulls_an_oci_layout(any_registry, tiny_model, tiny_gguf, peer_run,
                                                                tmp_path):
    name = pushed_model(tiny_model, any_registry, "peers/crane:v1")
    entry, manifest = store().manifest(config.reference(name))
    served = peer_run("crane", "manifest", "--insecure", name).stdout
    assert served == store().read_blob(entry.digest)  # the exact stored bytes
    assert peer_run("crane", "digest", "--insecure", name).stdout.decode().strip() == str(entry.digest)
    layout = tmp_path / "layout"
    peer_run("crane", "pull", "--insecure", "--format", "oci", name, str(layout))
    index = json.loads((layout / "index.json").read_text())
    [pulled] = index["manifests"]
    assert pulled["digest"] == str(entry.digest)
    blobs = layout / "blobs" / "sha256"
    for layer in manifest.layers:
        assert (blobs / layer.digest.hex).stat().st_size == layer.size
    assert (blobs / Digest.of(tiny_gguf.read_bytes()).hex).read_bytes() == tiny_gguf.read_bytes()


def test_regctl_lists_modelpkg_signatures_as_referrers(any_registry, tiny_model, peer_run, modelpkg, tmp_path):
    from modelpkg.base import keys

    name = pushed_model(tiny_model, any_registry, "peers/regctl:v1")
    private, _public, _ = keys.generate(tmp_path / "keys")
    signed = modelpkg("sign", name, "--key", str(private), "--json")
    assert signed.exit_code == 0, signed.stderr
    out = json.loads(signed.stdout)
    # Both registries get the tag-schema index too: go-containerregistry's registry serves the referrers API
    # but sends no OCI-Subject header on the PUT, and without it the distribution spec has clients keep the
    # fallback index. regctl lists the API's answer there, the fallback index on distribution.
    assert out["referrers"] == "tag-schema"
    peer_run("regctl", "registry", "set", "--tls", "disabled", any_registry.host)
    listed = peer_run("regctl", "artifact", "list", "--format", "body", name).stdout
    referrers = json.loads(listed)
    digests = [d["digest"] for d in referrers["manifests"]]
    assert out["referrer"] in digests
    [entry] = [d for d in referrers["manifests"] if d["digest"] == out["referrer"]]
    assert entry["artifactType"] == mt.COSIGN_SIG_ARTIFACT
    subject = peer_run("regctl", "manifest", "get", "--format", "raw-body", f"{name.split(':v1')[0]}@{out['referrer']}")
    assert json.loads(subject.stdout)["subject"]["digest"] == out["digest"]


def test_the_referrers_registry_answers_the_referrers_api(referrers_registry, tiny_model, modelpkg, tmp_path):
    """The second registry really is one with the API (else the matrix above would test the fallback twice)."""
    import requests

    from modelpkg.base import keys

    name = pushed_model(tiny_model, referrers_registry, "peers/api:v1")
    private, _public, _ = keys.generate(tmp_path / "keys")
    out = json.loads(modelpkg("sign", name, "--key", str(private), "--json").stdout)
    answer = requests.get(f"{referrers_registry.url}/v2/peers/api/referrers/{out['digest']}", timeout=10)
    assert answer.status_code == 200
    assert [m["digest"] for m in answer.json()["manifests"]] == [out["referrer"]]
    assert Path(referrers_registry.log_path).exists()
