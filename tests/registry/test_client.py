"""The registry client on its own: challenge parsing, scopes, the realm guard, retries, timeouts, redirects,
manifest checks and uploads, against the real registry (through the fault proxy) or tiny in-test servers
for behaviour no real registry shows on demand (a lying digest header, an endless manifest, a metadata
realm)."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from modelpkg.core.digest import Digest
from modelpkg.core.errors import AuthError, IntegrityError, NetworkError, NotFoundError, RegistryError
from modelpkg.core.manifest import MAX_MANIFEST_BYTES, Descriptor
from modelpkg.registry.auth import Challenge, check_realm, merge_scopes, parse_challenges
from modelpkg.registry.client import RegistryClient, is_loopback

# ---------------------------------------------------------------------------------------------------------
# pure parts


def test_parse_challenges_with_quoted_commas_and_several_schemes():
    header = ('Bearer realm="https://auth.example.com/token",service="registry.example.com",'
              'scope="repository:a/b:pull,push repository:c:pull", Basic realm="x, y"')
    bearer, basic = parse_challenges(header)
    assert bearer == Challenge("bearer", {"realm": "https://auth.example.com/token",
                                          "service": "registry.example.com",
                                          "scope": "repository:a/b:pull,push repository:c:pull"})
    assert bearer.scopes == ("repository:a/b:pull,push", "repository:c:pull")
    assert basic == Challenge("basic", {"realm": "x, y"})
    assert parse_challenges('Bearer realm="r",error="insufficient_scope"')[0].error == "insufficient_scope"
    assert parse_challenges("") == []
    assert parse_challenges('Basic realm=unquoted')[0].realm == "unquoted"


def test_merge_scopes_gives_one_scope_per_repository():
    assert merge_scopes(["repository:a:pull", "repository:a:push,pull", "repository:b:pull"]) == (
        "repository:a:pull,push", "repository:b:pull")
    assert merge_scopes(["repository:host:5000/x:pull"]) == ("repository:host:5000/x:pull",)


@pytest.mark.parametrize("realm,secure,message", [
    ("ftp://auth.example.com/token", True, "not an http"),
    ("file:///etc/passwd", False, "not an http"),
    ("http://auth.example.com/token", True, "plain http"),
    ("http://169.254.169.254/latest/meta-data", False, "link-local or metadata"),
    ("https://[fe80::1]/token", True, "link-local or metadata"),
    ("https://metadata.google.internal/token", True, "metadata"),
])
def test_the_realm_guard(realm, secure, message):
    with pytest.raises(AuthError, match=message):
        check_realm(realm, registry_secure=secure)


def test_a_realm_on_another_host_is_fine():
    check_realm("https://auth.docker.io/token", registry_secure=True,
                resolve=lambda *a, **k: [(0, 0, 0, "", ("54.1.2.3", 443))])


def test_a_realm_name_resolving_to_link_local_is_refused():
    with pytest.raises(AuthError):
        check_realm("https://innocent.example.com/token", registry_secure=True,
                    resolve=lambda *a, **k: [(0, 0, 0, "", ("169.254.169.254", 443))])


@pytest.mark.parametrize("host,expected", [
    ("localhost:5000", True), ("127.0.0.1:5000", True), ("127.1.2.3", True), ("[::1]:5000", True),
    ("registry.localhost", True), ("ghcr.io", False), ("10.0.0.1:5000", False), ("localhost.example.com", False),
])
def test_is_loopback(host, expected):
    assert is_loopback(host) is expected


def test_scheme_follows_loopback_and_insecure():
    assert RegistryClient("localhost:5000").base == "http://localhost:5000/v2/"
    assert RegistryClient("ghcr.io").base == "https://ghcr.io/v2/"
    assert RegistryClient("10.0.0.5:5000", insecure=True).base == "http://10.0.0.5:5000/v2/"
    assert RegistryClient("docker.io").base == "https://registry-1.docker.io/v2/"
    assert RegistryClient("localhost:5443", ca_bundle="/etc/ssl/certs/ca-certificates.crt").base == \
        "https://localhost:5443/v2/"


# ---------------------------------------------------------------------------------------------------------
# tiny in-test servers


class Server:
    """A loopback HTTP server whose answers come from ``handle(handler) -> (status, headers, body)``."""

    def __init__(self, handle):
        self.requests = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_any(self):
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                outer.requests.append((self.command, self.path, dict(self.headers)))
                status, headers, body = handle(self)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                if "Content-Length" not in headers:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    if callable(body):
                        body(self.wfile)
                    else:
                        self.wfile.write(body)

            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_any

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.host = f"127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    servers = []

    def make(handle):
        s = Server(handle)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()


def no_sleep(seconds):
    pass


def test_a_manifest_that_does_not_match_docker_content_digest_is_refused(server):
    body = b'{"schemaVersion":2}'
    srv = server(lambda h: (200, {"Content-Type": "application/vnd.oci.image.manifest.v1+json",
                                  "Docker-Content-Digest": "sha256:" + "a" * 64}, body))
    with pytest.raises(IntegrityError, match="does not match its digest"):
        RegistryClient(srv.host).get_manifest("acme/x", "v1")


def test_a_manifest_by_digest_must_hash_to_that_digest(server):
    srv = server(lambda h: (200, {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}, b"{}"))
    wanted = "sha256:" + hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(IntegrityError):
        RegistryClient(srv.host).get_manifest("acme/x", wanted)
    data, _, digest = RegistryClient(srv.host).get_manifest("acme/x", "sha256:" + hashlib.sha256(b"{}").hexdigest())
    assert data == b"{}" and digest == Digest.of(b"{}")


def test_an_endless_manifest_is_cut_at_the_cap(server):
    def endless(wfile):
        block = b" " * 65536
        try:
            for _ in range(MAX_MANIFEST_BYTES // len(block) + 64):
                wfile.write(block)
        except OSError:
            pass

    srv = server(lambda h: (200, {"Content-Type": "application/vnd.oci.image.manifest.v1+json",
                                  "Content-Length": str(MAX_MANIFEST_BYTES + 64 * 65536)}, endless))
    with pytest.raises(RegistryError, match="larger than"):
        RegistryClient(srv.host).get_manifest("acme/x", "v1")


def test_a_challenge_to_a_metadata_realm_is_refused_before_any_token_request(server):
    srv = server(lambda h: (401, {"WWW-Authenticate": 'Bearer realm="http://169.254.169.254/token",service="x"'}, b""))
    with pytest.raises(AuthError, match="link-local or metadata"):
        RegistryClient(srv.host).get_manifest("acme/x", "v1")
    assert len(srv.requests) == 1


def test_a_redirect_to_a_non_http_url_is_refused(server):
    srv = server(lambda h: (307, {"Location": "file:///etc/passwd"}, b""))
    with pytest.raises(RegistryError, match="non-http"):
        RegistryClient(srv.host).get_manifest("acme/x", "v1")


def test_a_registry_that_never_answers_times_out(server):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    try:
        host = f"127.0.0.1:{listener.getsockname()[1]}"
        client = RegistryClient(host, timeout=(1, 0.3), retries=1, sleep=no_sleep)
        with pytest.raises(NetworkError, match="after 2 attempts"):
            client.get_manifest("acme/x", "v1")
    finally:
        listener.close()


def test_4xx_is_not_retried_and_keeps_its_code(server):
    body = json.dumps({"errors": [{"code": "NAME_INVALID", "message": "invalid repository name"}]}).encode()
    srv = server(lambda h: (400, {"Content-Type": "application/json"}, body))
    with pytest.raises(RegistryError) as info:
        RegistryClient(srv.host, sleep=no_sleep).get_manifest("acme/x", "v1")
    assert info.value.code == "NAME_INVALID" and info.value.status == 400
    assert "invalid repository name" in info.value.message
    assert len(srv.requests) == 1


def test_denied_is_an_auth_error_naming_the_model(server):
    denied = {"code": "DENIED", "message": "requested access to the resource is denied"}
    body = json.dumps({"errors": [denied]}).encode()
    srv = server(lambda h: (403, {"Content-Type": "application/json"}, body))
    with pytest.raises(AuthError) as info:
        RegistryClient(srv.host).get_manifest("acme/x", "v1", name=f"{srv.host}/acme/x:v1")
    assert info.value.message == f"access denied to {srv.host}/acme/x:v1"
    assert info.value.code == "DENIED" and info.value.status == 403


# ---------------------------------------------------------------------------------------------------------
# against the real registry


def _blob(registry, data: bytes):
    import requests

    from registry_env import push_blob

    return push_blob(requests.Session(), registry.url, "acme/client", data)


@pytest.mark.registry
def test_5xx_bursts_are_retried_with_backoff(registry, fault_proxy):
    proxy = fault_proxy(registry)
    digest = Digest.parse(_blob(registry, b"hello retries"))
    proxy.add("status", "HEAD", "/blobs/", count=3, status=503)
    slept = []
    client = RegistryClient(proxy.host, sleep=slept.append)
    assert client.head_blob("acme/client", digest) == len(b"hello retries")
    assert len(slept) == 3 and all(0 <= s <= 20 for s in slept)
    assert len(proxy.matching("HEAD")) == 4


@pytest.mark.registry
def test_a_missing_blob_is_none_on_head_and_not_found_on_download(registry, tmp_path):
    client = RegistryClient(registry.host)
    missing = Digest.of(b"never pushed")
    assert client.head_blob("acme/client", missing) is None
    with pytest.raises(NotFoundError, match="blob not found"):
        client.download_blob("acme/client", Descriptor("application/octet-stream", missing, 12), tmp_path / "x.partial")


@pytest.mark.registry
def test_download_verifies_the_declared_size(registry, tmp_path):
    data = b"0123456789" * 1000
    digest = Digest.parse(_blob(registry, data))
    client = RegistryClient(registry.host)
    with pytest.raises(IntegrityError, match="size"):
        client.download_blob("acme/client", Descriptor("application/octet-stream", digest, len(data) - 1),
                             tmp_path / "x.partial")
    client.download_blob("acme/client", Descriptor("application/octet-stream", digest, len(data)), tmp_path / "ok")
    assert (tmp_path / "ok").read_bytes() == data


@pytest.mark.registry
@pytest.mark.parametrize("chunked", [False, True])
def test_upload_streams_and_recovers_from_416(registry, fault_proxy, tmp_path, chunked):
    proxy = fault_proxy(registry)
    data = bytes(range(256)) * 4096  # 1 MiB
    path = tmp_path / "blob"
    path.write_bytes(data)
    desc = Descriptor("application/octet-stream", Digest.of(data), len(data))
    if chunked:
        proxy.add("status", "PATCH", "/blobs/uploads/", count=1, status=416)
    client = RegistryClient(proxy.host, sleep=no_sleep)
    result = client.upload_blob(f"acme/upload-{int(chunked)}", desc, path, chunked=chunked, chunk_size=256 * 1024)
    assert result.how == "uploaded"
    patches = proxy.matching("PATCH")
    if chunked:
        assert len(patches) == 5  # four chunks, one of them sent twice after the 416 and a status GET
        assert proxy.matching("GET", "/blobs/uploads/")
    else:
        assert not patches
    client.download_blob(f"acme/upload-{int(chunked)}", desc, tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == data


@pytest.mark.registry
def test_upload_after_a_reset_starts_a_new_session(registry, fault_proxy, tmp_path):
    proxy = fault_proxy(registry)
    data = b"x" * 300_000
    path = tmp_path / "blob"
    path.write_bytes(data)
    desc = Descriptor("application/octet-stream", Digest.of(data), len(data))
    proxy.add("status", "PUT", "/blobs/uploads/", count=1, status=500)
    client = RegistryClient(proxy.host, sleep=no_sleep)
    assert client.upload_blob("acme/upload-retry", desc, path).how == "uploaded"
    assert len(proxy.matching("POST", "/blobs/uploads/")) == 2
    assert client.head_blob("acme/upload-retry", desc.digest) == len(data)


@pytest.mark.registry
def test_errors_never_carry_the_upload_state(registry, fault_proxy, tmp_path):
    proxy = fault_proxy(registry)
    path = tmp_path / "blob"
    path.write_bytes(b"abc")
    desc = Descriptor("application/octet-stream", Digest.of(b"abd"), 3)  # a wrong digest: the PUT fails
    with pytest.raises(RegistryError) as info:
        RegistryClient(proxy.host).upload_blob("acme/upload-bad", desc, path)
    assert info.value.code == "DIGEST_INVALID"
    assert "_state" not in info.value.message and "?" not in info.value.message


@pytest.mark.registry
def test_check_auth_against_basic(basic_registry):
    from modelpkg.registry.credentials import Credential

    assert RegistryClient(basic_registry.host, credentials=Credential(
        basic_registry.username, basic_registry.password)).check_auth() == "basic"
    with pytest.raises(AuthError, match="wrong username or password"):
        RegistryClient(basic_registry.host, credentials=Credential(basic_registry.username, "nope")).check_auth()


@pytest.mark.registry
def test_check_auth_against_a_token_server(token_registry, token_server):
    from modelpkg.registry.credentials import Credential

    good = Credential(token_registry.username, token_registry.password)
    assert RegistryClient(token_registry.host, credentials=good).check_auth() == "bearer"
    with pytest.raises(AuthError, match="wrong username or password"):
        RegistryClient(token_registry.host, credentials=Credential(token_registry.username, "nope")).check_auth()
