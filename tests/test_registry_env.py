"""The registry test environment works: checked with plain ``requests`` and ``skopeo``, not modelpkg's client."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
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


@pytest.mark.usefixtures("skopeo_binary")
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
    manifest, _digest = push_image(session, token_registry.url, "env/token", "v1")
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


@pytest.mark.usefixtures("skopeo_binary")
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


# --- fault proxy ---

BLOB = bytes(range(256)) * 64  # 16 KiB with a recognisable pattern


@pytest.fixture(scope="module")
def seeded(registry):
    """An image pushed by hand to the anonymous registry: (manifest bytes, manifest digest, blob digest)."""
    session = requests.Session()
    manifest, digest = push_image(session, registry.url, "env/proxied", "v1", layers=[BLOB])
    return manifest, digest, json.loads(manifest)["layers"][0]["digest"]


def _blob_url(proxy, seeded):
    return f"{proxy.url}/v2/env/proxied/blobs/{seeded[2]}"


def test_proxy_passes_requests_through_unchanged(registry, fault_proxy, seeded):
    manifest, digest, _blob_digest = seeded
    proxy = fault_proxy(registry)
    got = requests.get(f"{proxy.url}/v2/env/proxied/manifests/v1", headers={"Accept": OCI_MANIFEST}, timeout=5)
    assert got.status_code == 200 and got.content == manifest
    assert got.headers["Docker-Content-Digest"] == digest
    assert requests.get(_blob_url(proxy, seeded), timeout=5).content == BLOB
    ranged = requests.get(_blob_url(proxy, seeded), headers={"Range": "bytes=100-199"}, timeout=5)
    assert ranged.status_code == 206 and ranged.content == BLOB[100:200]

    assert [(r.method, r.status, r.fault) for r in proxy.requests] == [("GET", 200, None), ("GET", 200, None),
                                                                       ("GET", 206, None)]
    assert len(proxy.matching("GET", "/manifests/")) == 1
    assert proxy.bytes_sent("GET", "/blobs/") == len(BLOB) + 100
    assert proxy.requests[0].headers["Accept"] == OCI_MANIFEST


def test_pushing_through_the_proxy_rewrites_locations_and_streams_bodies(registry, fault_proxy):
    proxy = fault_proxy(registry.host)
    session = requests.Session()
    start = session.post(f"{proxy.url}/v2/env/pushed-via-proxy/blobs/uploads/", timeout=5)
    assert start.headers["Location"].startswith(proxy.url)
    data = b"streamed " * 10_000
    # A generator body goes out chunked: the proxy must de-chunk and re-chunk it.
    chunked = session.patch(start.headers["Location"], data=(data[i:i + 7000] for i in range(0, len(data), 7000)),
                            headers={"Content-Type": "application/octet-stream"}, timeout=10)
    assert chunked.status_code == 202, chunked.text
    done = session.put(f"{chunked.headers['Location']}&digest=sha256:{hashlib.sha256(data).hexdigest()}",
                       timeout=10)
    assert done.status_code == 201, done.text
    assert requests.get(f"{registry.url}/v2/env/pushed-via-proxy/blobs/sha256:{hashlib.sha256(data).hexdigest()}",
                        timeout=5).content == data


def test_reset_breaks_the_connection(registry, fault_proxy, seeded):
    proxy = fault_proxy(registry)
    proxy.add("reset", "GET", r"/blobs/", after=1000)
    with pytest.raises(requests.exceptions.ChunkedEncodingError) as broken:
        _ = requests.get(_blob_url(proxy, seeded), timeout=5).content
    assert "reset by peer" in str(broken.value)  # an RST, not a clean close (that is "truncate")
    assert requests.get(_blob_url(proxy, seeded), timeout=5).content == BLOB  # count=1: only once
    assert [r.fault for r in proxy.requests] == ["reset", None]


def test_truncate_sends_fewer_bytes_than_content_length(registry, fault_proxy, seeded):
    proxy = fault_proxy(registry)
    proxy.add("truncate", "GET", r"/blobs/", after=5000)
    # http.client hands back the partial body exactly (urllib3 drops the last short read when it raises).
    conn = http.client.HTTPConnection(proxy.host, timeout=5)
    conn.request("GET", f"/v2/env/proxied/blobs/{seeded[2]}")
    response = conn.getresponse()
    assert response.getheader("Content-Length") == str(len(BLOB))
    with pytest.raises(http.client.IncompleteRead) as cut:
        response.read()
    conn.close()
    assert cut.value.partial == BLOB[:5000]
    assert proxy.requests[0].bytes_sent == 5000
    with pytest.raises(requests.exceptions.ChunkedEncodingError):  # what a requests client sees
        proxy.add("truncate", "GET", r"/blobs/", after=5000)
        _ = requests.get(_blob_url(proxy, seeded), timeout=5).content


def test_status_and_retry_after_answer_without_upstream(registry, fault_proxy, seeded):
    proxy = fault_proxy(registry)
    proxy.add("status", "GET", r"/manifests/", count=2, status=503)
    proxy.add("retry_after", None, r"/blobs/", seconds=1)
    url = f"{proxy.url}/v2/env/proxied/manifests/v1"
    statuses = [requests.get(url, headers={"Accept": OCI_MANIFEST}, timeout=5).status_code for _ in range(3)]
    assert statuses == [503, 503, 200]
    limited = requests.get(_blob_url(proxy, seeded), timeout=5)
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "1"
    assert limited.json()["errors"][0]["code"] == "TOOMANYREQUESTS"


def test_corrupt_flips_bytes_at_the_offset(registry, fault_proxy, seeded):
    proxy = fault_proxy(registry)
    proxy.add("corrupt", "GET", r"/blobs/", offset=10_000, length=3)
    got = requests.get(_blob_url(proxy, seeded), timeout=5).content
    assert len(got) == len(BLOB) and got != BLOB
    assert got[:10_000] == BLOB[:10_000] and got[10_003:] == BLOB[10_003:]
    assert bytes(b ^ 0xFF for b in got[10_000:10_003]) == BLOB[10_000:10_003]


def test_ignore_range_returns_the_whole_body(registry, fault_proxy, seeded):
    proxy = fault_proxy(registry)
    proxy.add("ignore_range", "GET", r"/blobs/")
    response = requests.get(_blob_url(proxy, seeded), headers={"Range": "bytes=100-"}, timeout=5)
    assert response.status_code == 200 and response.content == BLOB


def test_stall_pauses_mid_body(registry, fault_proxy, seeded):
    proxy = fault_proxy(registry)
    proxy.add("stall", "GET", r"/blobs/", after=4096, seconds=0.6)
    started = time.monotonic()
    assert requests.get(_blob_url(proxy, seeded), timeout=5).content == BLOB
    assert time.monotonic() - started >= 0.5
    proxy.add("stall", "GET", r"/blobs/", after=4096, seconds=3)
    with pytest.raises(requests.exceptions.ConnectionError):  # a read timeout mid-body
        _ = requests.get(_blob_url(proxy, seeded), timeout=(2, 0.3)).content


def test_redirect_to_other_host_drops_authorization(basic_registry, fault_proxy):
    session = requests.Session()
    session.auth = basic_registry.credentials
    digest = push_blob(session, basic_registry.url, "env/redirected", BLOB)
    proxy = fault_proxy(basic_registry)
    proxy.add("redirect_other_host", "GET", r"/blobs/sha256:")
    response = session.get(f"{proxy.url}/v2/env/redirected/blobs/{digest}", timeout=5)
    assert response.status_code == 200 and response.content == BLOB
    assert response.history[0].status_code == 307
    assert proxy.requests[0].headers["Authorization"].startswith("Basic ")
    assert [r.authorization for r in proxy.other_host.requests] == [None]
    assert proxy.other_host.host.split(":")[0] != "127.0.0.1"


def test_faults_validate_their_parameters(registry, fault_proxy):
    proxy = fault_proxy(registry)
    with pytest.raises(ValueError):
        proxy.add("explode")
    with pytest.raises(TypeError):
        proxy.add("reset", offset=3)
    fault = proxy.add("status", None, count=None, status=500)
    assert [requests.get(f"{proxy.url}/v2/", timeout=5).status_code for _ in range(3)] == [500] * 3
    assert fault.hits == 3
    proxy.clear()
    assert requests.get(f"{proxy.url}/v2/", timeout=5).status_code == 200 and len(proxy.requests) == 1


def test_a_fault_fires_only_where_it_takes_effect(registry, fault_proxy, seeded):
    """``hits`` counts the requests that took a fault, ``fired`` those it did something to: a cut past the
    end of a body, or an ignored Range on a request without one, takes the fault and changes nothing."""
    proxy = fault_proxy(registry)
    blob = _blob_url(proxy, seeded)
    past_the_end = proxy.add("reset", "GET", r"/blobs/", after=len(BLOB))
    assert requests.get(blob, timeout=5).content == BLOB  # the body is not longer than `after`: not cut
    assert (past_the_end.hits, past_the_end.fired) == (1, 0)
    cut = proxy.add("truncate", "GET", r"/blobs/", after=len(BLOB) - 1)
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        _ = requests.get(blob, timeout=5).content
    assert (cut.hits, cut.fired) == (1, 1) and proxy.requests[-1].bytes_sent == len(BLOB) - 1

    ignored = proxy.add("ignore_range", "GET", r"/blobs/", count=2)
    assert requests.get(blob, timeout=5).status_code == 200  # no Range to ignore
    assert requests.get(blob, headers={"Range": "bytes=10-"}, timeout=5).status_code == 200
    assert (ignored.hits, ignored.fired) == (2, 1)
    corrupt = proxy.add("corrupt", "GET", r"/blobs/", count=2, offset=len(BLOB))
    assert requests.get(blob, timeout=5).content == BLOB  # nothing at that offset to flip
    answered = proxy.add("status", "GET", r"/manifests/", status=503)
    assert requests.get(f"{proxy.url}/v2/env/proxied/manifests/v1", timeout=5).status_code == 503
    assert (corrupt.hits, corrupt.fired, answered.fired) == (1, 0, 1)
    assert [(r.fault, r.fired) for r in proxy.requests] == [
        ("reset", False), ("truncate", True), ("ignore_range", False), ("ignore_range", True),
        ("corrupt", False), ("status", True)]
    assert [r.fault for r in proxy.fired()] == ["truncate", "ignore_range", "status"]
    assert proxy.fired("truncate", "GET", r"/blobs/") == [proxy.requests[1]]


def test_a_cut_can_wait_before_it_breaks_the_connection(registry, fault_proxy, seeded):
    """``seconds`` on reset and truncate: the first ``after`` bytes arrive at once, the break comes later."""
    proxy = fault_proxy(registry)
    proxy.add("truncate", "GET", r"/blobs/", after=5000, seconds=0.6)
    conn = http.client.HTTPConnection(proxy.host, timeout=5)
    conn.request("GET", f"/v2/env/proxied/blobs/{seeded[2]}")
    response = conn.getresponse()
    started = time.monotonic()
    assert response.read(5000) == BLOB[:5000]
    assert time.monotonic() - started < 0.5
    with pytest.raises(http.client.IncompleteRead):
        response.read()
    assert time.monotonic() - started >= 0.55
    conn.close()
    assert proxy.requests[0].fired and proxy.requests[0].bytes_sent == 5000
