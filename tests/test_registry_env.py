"""The registry test environment works: checked with plain ``requests`` and ``skopeo``, not modelpkg's client."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

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


def _skopeo(home, *args):
    # An empty HOME and auth file: the developer's own registry logins must not leak in.
    return subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=30,
                          env={**os.environ, "HOME": str(home), "REGISTRY_AUTH_FILE": str(home / "auth.json")})


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo is not installed")
def test_skopeo_inspects_a_hand_pushed_manifest(registry, tmp_path):
    _, digest = push_image(requests.Session(), registry.url, "env/skopeo", "v1")
    result = _skopeo(tmp_path, "inspect", "--tls-verify=false", "--no-creds",
                     f"docker://{registry.host}/env/skopeo:v1")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["Digest"] == digest


def _bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def _token(token_server, scopes, auth=None):
    response = requests.get(token_server.realm, params={"service": token_server.service, "scope": scopes},
                            auth=auth, timeout=5)
    assert response.status_code == 200, response.text
    return response.json()


def test_token_registry_challenges_with_its_token_server(token_registry, token_server):
    response = requests.get(f"{token_registry.url}/v2/env/token/manifests/v1", timeout=5)
    assert response.status_code == 401
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith(f'Bearer realm="{token_server.realm}",service="{token_server.service}"')
    assert 'scope="repository:env/token:pull"' in challenge


def test_token_flow_grants_push_and_the_registry_refuses_scopes_not_granted(token_registry, token_server):
    creds = token_registry.credentials
    body = _token(token_server, ["repository:env/token:pull,push"], auth=creds)
    assert set(body) >= {"token", "access_token", "expires_in", "issued_at"}
    assert body["expires_in"] == token_server.expires_in
    assert token_server.issued == [(token_registry.username, ("repository:env/token:pull,push",))]

    session = requests.Session()
    session.headers.update(_bearer(body["token"]))
    manifest, digest = push_image(session, token_registry.url, "env/token", "v1")
    assert session.get(f"{token_registry.url}/v2/env/token/manifests/v1",
                       headers={"Accept": OCI_MANIFEST}, timeout=5).content == manifest

    # A pull-only token cannot push, and a token for one repository does not open another.
    pull_only = _token(token_server, ["repository:env/token:pull"], auth=creds)["token"]
    refused = requests.post(f"{token_registry.url}/v2/env/token/blobs/uploads/", headers=_bearer(pull_only),
                            timeout=5)
    assert refused.status_code == 401
    assert 'error="insufficient_scope"' in refused.headers["WWW-Authenticate"]
    other = requests.get(f"{token_registry.url}/v2/env/other/manifests/v1", headers=_bearer(pull_only), timeout=5)
    assert other.status_code == 401


def test_token_server_rejects_a_wrong_password_and_limits_anonymous_to_public_pull(token_registry, token_server):
    wrong = requests.get(token_server.realm, params={"service": token_server.service,
                                                     "scope": "repository:env/token:pull"},
                         auth=(token_registry.username, "wrong"), timeout=5)
    assert wrong.status_code == 401

    _token(token_server, ["repository:public/tiny:pull,push", "repository:private/tiny:pull"])
    assert token_server.issued[-1] == (None, ("repository:public/tiny:pull",))
    assert [r.status for r in token_server.requests] == [401, 200]


def test_a_token_past_valid_for_is_refused_by_the_registry(token_registry, token_server):
    token_server.valid_for = 2
    token = _token(token_server, ["repository:env/token:pull"], auth=token_registry.credentials)["token"]
    url = f"{token_registry.url}/v2/"
    assert requests.get(url, headers=_bearer(token), timeout=5).status_code == 200
    deadline = time.monotonic() + 6
    while requests.get(url, headers=_bearer(token), timeout=5).status_code == 200:
        assert time.monotonic() < deadline, "the registry kept accepting an expired token"
        time.sleep(0.2)
    refused = requests.get(url, headers=_bearer(token), timeout=5)
    assert refused.status_code == 401 and 'error="invalid_token"' in refused.headers["WWW-Authenticate"]


def test_token_server_oauth2_form_and_refresh_token(token_registry, token_server):
    form = {"grant_type": "password", "username": token_registry.username, "password": token_registry.password,
            "service": token_server.service, "client_id": "modelpkg-tests", "access_type": "offline",
            "scope": "repository:env/token:pull repository:env/other:pull"}
    first = requests.post(token_server.realm, data=form, timeout=5)
    assert first.status_code == 200, first.text
    refresh = first.json()["refresh_token"]
    again = requests.post(token_server.realm, data={"grant_type": "refresh_token", "refresh_token": refresh,
                                                    "service": token_server.service,
                                                    "scope": "repository:env/token:push"}, timeout=5)
    assert again.status_code == 200
    assert token_server.issued[-1] == (token_registry.username, ("repository:env/token:push",))
    bad = requests.post(token_server.realm, data={**form, "password": "wrong"}, timeout=5)
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_grant"


def test_token_server_injected_failure(token_server):
    token_server.fail_status, token_server.fail_count = 503, 1
    assert requests.get(token_server.realm, timeout=5).status_code == 503
    assert requests.get(token_server.realm, timeout=5).status_code == 200


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo is not installed")
def test_skopeo_completes_the_token_flow(token_registry, token_server, tmp_path):
    session = requests.Session()
    session.headers.update(_bearer(_token(token_server, ["repository:env/skopeo-token:pull,push"],
                                          auth=token_registry.credentials)["token"]))
    _, digest = push_image(session, token_registry.url, "env/skopeo-token", "v1")
    creds = f"{token_registry.username}:{token_registry.password}"
    result = _skopeo(tmp_path, "inspect", "--tls-verify=false", "--creds", creds,
                     f"docker://{token_registry.host}/env/skopeo-token:v1")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["Digest"] == digest
    assert any(user == token_registry.username for user, _ in token_server.issued[1:])
