"""The registry test environment works: checked with plain ``requests`` and ``skopeo``, not modelpkg's client."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
import requests

from registry_env import OCI_MANIFEST, push_blob, push_image, start_registry

pytestmark = pytest.mark.registry


def test_registry_answers_the_v2_base(registry):
    response = requests.get(f"{registry.url}/v2/", timeout=5)
    assert response.status_code == 200
    assert response.headers["Docker-Distribution-Api-Version"] == "registry/2.0"
    assert registry.host.startswith("127.0.0.1:")
    assert registry.storage.is_dir() and registry.log_path.exists()


def test_hand_pushed_blob_and_manifest_read_back(registry):
    session = requests.Session()
    manifest, digest = push_image(session, registry.url, "env/handmade", "v1", layers=[b"hello layer\n"])

    got = session.get(f"{registry.url}/v2/env/handmade/manifests/v1",
                      headers={"Accept": OCI_MANIFEST}, timeout=5)
    assert got.status_code == 200
    assert got.content == manifest
    assert got.headers["Docker-Content-Digest"] == digest
    layer = json.loads(manifest)["layers"][0]
    blob = session.get(f"{registry.url}/v2/env/handmade/blobs/{layer['digest']}", timeout=5)
    assert blob.content == b"hello layer\n"


def test_basic_registry_rejects_a_wrong_password_and_accepts_the_right_one(basic_registry):
    url = f"{basic_registry.url}/v2/"
    assert requests.get(url, timeout=5).status_code == 401
    assert requests.get(url, auth=(basic_registry.username, "wrong"), timeout=5).status_code == 401
    assert requests.get(url, auth=basic_registry.credentials, timeout=5).status_code == 200

    session = requests.Session()
    session.auth = basic_registry.credentials
    digest = push_blob(session, basic_registry.url, "env/basic", b"basic blob")
    assert requests.head(f"{basic_registry.url}/v2/env/basic/blobs/{digest}", timeout=5).status_code == 401
    assert session.head(f"{basic_registry.url}/v2/env/basic/blobs/{digest}", timeout=5).status_code == 200


def test_start_registry_stops_cleanly(tmp_path):
    server = start_registry(tmp_path)
    assert requests.get(f"{server.url}/v2/", timeout=5).status_code == 200
    server.stop()
    assert server.process.poll() is not None
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{server.url}/v2/", timeout=2)


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo is not installed")
def test_skopeo_inspects_a_hand_pushed_manifest(registry, tmp_path):
    _, digest = push_image(requests.Session(), registry.url, "env/skopeo", "v1")
    result = subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", "--no-creds", f"docker://{registry.host}/env/skopeo:v1"],
        capture_output=True, text=True, timeout=30,
        env={**os.environ, "HOME": str(tmp_path), "REGISTRY_AUTH_FILE": str(tmp_path / "auth.json")})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["Digest"] == digest
