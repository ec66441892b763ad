"""pull and push end to end against a real CNCF distribution registry (tests/registry_env.py).

Models are created from tiny GGUF files with the real ``create``; commands run through click's CliRunner.
The fault proxy is the only fake: it injects resets, truncations, bursts of 5xx, 429s, corruption and
ignored ranges between modelpkg and the real registry.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
import socket
import stat
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from capabilities import missing, require_module
from conftest import make_gguf
from modelpkg.base import config
from modelpkg.cli.app import cli
from modelpkg.core.errors import IntegrityError, NetworkError, NotFoundError
from modelpkg.ops.pull import pull
from modelpkg.ops.push import push
from modelpkg.registry.client import RegistryClient
from modelpkg.registry.credentials import Credential
from modelpkg.store import Store

pytestmark = [pytest.mark.registry, pytest.mark.timeout(120)]


def run(*args, input=None):
    result = CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)
    return result


def store() -> Store:
    return Store(config.home())


def error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("Error:")]


def fresh(client_host: str, **kw) -> RegistryClient:
    kw.setdefault("sleep", lambda s: None)
    return RegistryClient(client_host, **kw)


@pytest.fixture
def big_model(home, tmp_path):
    """A factory for a model whose GGUF is about 2 MiB (enough to cut a download in the middle)."""

    def make(name: str, seed: int = 1, values: int = 1024 * 1024):
        folder = tmp_path / f"big-{seed}"
        folder.mkdir(exist_ok=True)
        gguf = make_gguf(folder / "big.gguf", tensor_values=values, seed=seed)
        from modelpkg.ops.create import create

        ref = config.reference(name)
        create(store(), ref, f"FROM {gguf}\n", folder, resolve_name=config.reference)
        return ref

    return make


def model_blob(ref):
    from modelpkg.core.manifest import model_layers

    _, manifest = store().manifest(ref)
    return model_layers(manifest).model


def remote_only(proxy, big_model, repo: str, **kw):
    """A big model pushed through ``proxy`` to ``repo``, then removed from the store, so that a pull has to
    fetch it: (name, reference, its weights blob)."""
    name = f"{proxy.host}/{repo}"
    ref = big_model(name, **kw)
    push(store(), ref)
    blob = model_blob(ref)
    run("rm", name)
    return name, ref, blob


def assert_store_sound(s: Store) -> None:
    """Every blob in the store matches its name (no half or corrupt file under a digest)."""
    assert s.verify() == []


# ---------------------------------------------------------------------------------------------------------
# round trip


def test_round_trip_cli_push_rm_pull_show(any_registry, tiny_model):
    registry = any_registry  # distribution 2.8, then a registry with the referrers API
    name = f"{registry.host}/acme/tiny:q4"
    tiny_model(name, "SYSTEM be brief\nPARAMETER temperature 0.5\n")
    before = run("show", name, "--json")
    assert before.exit_code == 0
    pushed = run("push", name)
    assert pushed.exit_code == 0, pushed.stderr
    assert "pushed" in pushed.stderr

    entry, _ = store().manifest(config.reference(name))
    raw = subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--raw", f"docker://{name}"],
                         capture_output=True, check=True).stdout
    assert raw == store().read_blob(entry.digest)  # the exact stored bytes were pushed

    assert run("rm", name).exit_code == 0
    assert run("show", name).exit_code == 4
    pulled = run("pull", name)
    assert pulled.exit_code == 0, pulled.stderr
    after = run("show", name, "--json")
    assert json.loads(after.stdout) == json.loads(before.stdout)
    assert_store_sound(store())


def test_push_json_events_and_pull_json_events(registry, tiny_model):
    name = f"{registry.host}/acme/events:v1"
    tiny_model(name)
    pushed = run("push", "--json", name)
    events = [json.loads(line) for line in pushed.stdout.splitlines()]
    assert any(e.get("status", "").startswith("pushing ") for e in events)
    assert events[-1]["status"] == "pushed"
    run("rm", name)
    pulled = run("pull", "--json", name)
    events = [json.loads(line) for line in pulled.stdout.splitlines()]
    labels = [e["status"] for e in events]
    assert "pulling manifest" in labels and any(s.startswith("pulling ") and len(s) == 20 for s in labels)
    assert events[-1] == {"status": "pulled", "name": name, "digest": events[-1]["digest"]}


def test_noop_pull_sends_only_the_manifest_request(registry, fault_proxy, tiny_model):
    proxy = fault_proxy(registry)
    name = f"{proxy.host}/acme/noop:v1"
    ref = tiny_model(name)
    push(store(), ref)
    pull(store(), ref)
    proxy.clear()
    pull(store(), ref)
    assert [(r.method, r.path) for r in proxy.requests] == [("GET", "/v2/acme/noop/manifests/v1")]


def test_pull_by_digest(any_registry, tiny_model):
    registry = any_registry  # distribution 2.8, then a registry with the referrers API
    name = f"{registry.host}/acme/bydigest:v1"
    ref = tiny_model(name)
    digest = push(store(), ref)
    run("rm", name)
    by_digest = f"{registry.host}/acme/bydigest@{digest}"
    result = run("pull", by_digest)
    assert result.exit_code == 0, result.stderr
    entry = store().resolve(config.reference(by_digest))
    assert entry.digest == digest


def test_pull_of_a_missing_model_is_one_clear_line(registry, home):
    name = f"{registry.host}/acme/missing:q4"
    result = run("pull", name)
    assert result.exit_code == 4
    assert error_lines(result) == [f"Error: model not found: {name}"]
    assert "Traceback" not in result.output
    with pytest.raises(NotFoundError) as info:
        pull(store(), config.reference(name))
    assert info.value.code == "MANIFEST_UNKNOWN" and info.value.status == 404


def test_unknown_host_is_one_clear_line(home):
    result = run("pull", "no-such-host.invalid/acme/x:1")
    assert result.exit_code == 7
    assert len(error_lines(result)) == 1
    assert "no-such-host.invalid" in error_lines(result)[0]


def test_index_selects_the_platform_entry(any_registry, tiny_model):
    registry = any_registry  # distribution 2.8, then a registry with the referrers API
    from modelpkg.core import mediatypes as mt

    ref = tiny_model(f"{registry.host}/acme/indexed:v1")
    digest = push(store(), ref)
    entry = store().resolve(ref)
    other_ref = tiny_model(f"{registry.host}/acme/indexed:v2", "SYSTEM another\n")
    other_digest = push(store(), other_ref)
    other = {"mediaType": mt.OCI_MANIFEST, "digest": str(other_digest), "size": store().resolve(other_ref).size,
             "platform": {"os": "plan9", "architecture": "mips"}}
    mine = {"mediaType": mt.OCI_MANIFEST, "digest": str(digest), "size": entry.size,
            "platform": {"os": "linux", "architecture": "amd64"}}
    index = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [other, mine]}).encode()
    requests.put(f"{registry.url}/v2/acme/indexed/manifests/multi", data=index,
                 headers={"Content-Type": mt.OCI_INDEX}, timeout=10).raise_for_status()
    multi = config.reference(f"{registry.host}/acme/indexed:multi")
    got = pull(store(), multi, platform=("linux", "amd64"))
    assert got.digest == digest
    with pytest.raises(NotFoundError, match="no manifest for windows/arm64"):
        pull(store(), multi, platform=("windows", "arm64"))


# ---------------------------------------------------------------------------------------------------------
# push details


def test_push_skips_blobs_the_registry_has_and_mounts_across_repositories(registry, fault_proxy, tiny_model):
    proxy = fault_proxy(registry)
    first = f"{proxy.host}/acme/mount-a:v1"
    ref = tiny_model(first)
    push(store(), ref)
    proxy.clear()
    push(store(), ref)  # everything is there: HEADs and the manifest only
    assert {r.method for r in proxy.requests} == {"HEAD", "PUT"}
    assert [r.path for r in proxy.requests if r.method == "PUT"] == ["/v2/acme/mount-a/manifests/v1"]

    second = f"{proxy.host}/acme/mount-b:v1"
    assert run("cp", first, second).exit_code == 0
    proxy.clear()
    push(store(), config.reference(second))
    mounts = [r for r in proxy.requests if r.method == "POST"]
    assert mounts and all("mount=" in r.query and "from=acme%2Fmount-a" in r.query.replace("/", "%2F")
                          for r in mounts)
    assert all(r.status == 201 for r in mounts)
    assert not [r for r in proxy.requests if r.method == "PUT" and "/blobs/" in r.path]


def test_chunked_push(registry, fault_proxy, big_model):
    proxy = fault_proxy(registry)
    name = f"{proxy.host}/acme/chunked:v1"
    big_model(name)
    result = run("push", "--chunked", name)
    assert result.exit_code == 0, result.stderr
    assert proxy.matching("PATCH", "/blobs/uploads/")
    run("rm", name)
    assert run("pull", name).exit_code == 0
    assert_store_sound(store())


class _KeepsPartOfABrokenChunk(BaseHTTPRequestHandler):
    """In front of the real registry, a registry that keeps part of a broken chunk and says so, as the
    distribution-spec allows ("Get upload status" reports what it has). distribution 2.8 itself cannot show
    this: after a broken body it keeps the bytes but its signed ``_state`` keeps the old offset, so the
    session is lost (tests/reliability: test_chunked_upload_survives_a_break_in_a_later_chunk).

    The ``cut``-th PATCH (1-based) is read, only its first ``keep`` bytes go upstream (as a PATCH of their
    own), and the client's connection is reset; a status GET on the old upload URL then answers from the
    URL upstream handed out for the kept bytes. Everything else is passed through."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        srv = self.server
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        target = srv.moved.get(self.path, self.path)
        headers = {k: self.headers[k] for k in ("Content-Type", "Content-Range", "Content-Length") if k in self.headers}
        if self.command == "PATCH":
            srv.patches.append((self.headers.get("Content-Range"), len(body)))
            if len(srv.patches) == srv.cut:
                start = int(self.headers["Content-Range"].split("-")[0])
                kept = requests.patch(srv.upstream + target, data=body[:srv.keep], timeout=30, headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"{start}-{start + srv.keep - 1}"})
                assert kept.status_code == 202, kept.text
                srv.moved[self.path] = _path_of(kept.headers["Location"])
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                self.close_connection = True
                return
        answer = requests.request(self.command, srv.upstream + target, data=body or None, headers=headers,
                                  allow_redirects=False, timeout=30)
        srv.statuses.append((self.command, answer.status_code, answer.headers.get("Range")))
        self.send_response(answer.status_code)
        for name in ("Location", "Range", "Docker-Content-Digest", "Docker-Upload-UUID", "Content-Type"):
            if name in answer.headers:
                value = answer.headers[name]
                self.send_header(name, _path_of(value) if name == "Location" else value)
        content = b"" if self.command == "HEAD" else answer.content
        self.send_header("Content-Length", str(len(content) if self.command != "HEAD" else
                                               answer.headers.get("Content-Length", 0)))
        self.end_headers()
        self.wfile.write(content)

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_GET


def _path_of(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def test_a_broken_chunk_resumes_from_the_part_the_registry_kept(registry, tmp_path):
    """64 KiB chunks; the third breaks after the registry kept 10,000 of its bytes: the client asks the
    status, continues from offset 141,072 (never resending the kept bytes), in the same session, and the
    registry verifies the blob."""
    from modelpkg.core.digest import Digest
    from modelpkg.core.manifest import Descriptor

    chunk, keep = 64 * 1024, 10_000
    data = os.urandom(3 * chunk + 1234)
    blob = tmp_path / "blob"
    blob.write_bytes(data)
    digest = Digest(hashlib.sha256(data).hexdigest())
    server = ThreadingHTTPServer(("127.0.0.1", 0), _KeepsPartOfABrokenChunk)
    server.upstream, server.cut, server.keep = registry.url, 3, keep
    server.moved, server.patches, server.statuses = {}, [], []
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        with fresh(f"127.0.0.1:{server.server_address[1]}", backoff=0.01) as c:
            result = c.upload_blob("acme/keeps-part", Descriptor("application/octet-stream", digest, len(data)),
                                   blob, chunked=True, chunk_size=chunk)
    finally:
        server.shutdown()
        server.server_close()
    assert result.how == "uploaded"
    resumed_at = 2 * chunk + keep
    assert ("GET", 204, f"0-{resumed_at - 1}") in server.statuses
    assert [r for r, _ in server.patches] == [f"0-{chunk - 1}", f"{chunk}-{2 * chunk - 1}",
                                              f"{2 * chunk}-{3 * chunk - 1}", f"{resumed_at}-{len(data) - 1}"]
    assert sum(n for _, n in server.patches[3:]) == len(data) - resumed_at  # only the missing bytes again
    assert [m for m, *_ in server.statuses].count("POST") == 1
    stored = requests.get(f"{registry.url}/v2/acme/keeps-part/blobs/{digest}", timeout=30)
    assert stored.headers["Docker-Content-Digest"] == str(digest)
    assert hashlib.sha256(stored.content).hexdigest() == digest.hex


def test_push_of_an_unknown_model(home):
    result = run("push", "localhost:5999/acme/nothing:v1")
    assert result.exit_code == 4
    assert error_lines(result) == ["Error: model not found: localhost:5999/acme/nothing:v1"]


# ---------------------------------------------------------------------------------------------------------
# faults: every pull ends complete and verified, or with one clear error; the store stays sound


@pytest.mark.parametrize("fault,params", [
    ("reset", {"after": 300_000}),
    ("truncate", {"after": 500_000}),
    ("status", {"status": 503}),
    ("retry_after", {"seconds": 0}),
    ("corrupt", {"offset": 1000, "length": 3}),
    ("stall", {"after": 100_000, "seconds": 3}),
])
def test_pull_survives_a_fault(registry, fault_proxy, big_model, fault, params):
    proxy = fault_proxy(registry)
    _name, ref, blob = remote_only(proxy, big_model, f"acme/fault-{fault.replace('_', '-')}:v1")
    # twice in a row, except corruption: one corrupt copy is fetched again, two are an IntegrityError
    count = 1 if fault == "corrupt" else 2
    injected = proxy.add(fault, "GET", f"/blobs/{blob.digest}", count=count, **params)
    client = fresh(proxy.host, timeout=(5, 1.0))
    entry = pull(store(), ref, client=client)
    assert store().has_blob(blob.digest, blob.size)
    assert injected.fired == count  # each fault happened, on a weights GET of its own
    gets = proxy.matching("GET", f"/blobs/{blob.digest}")
    assert [g.fired for g in gets] == [True] * count + [False]
    assert entry.digest == store().resolve(ref).digest
    assert_store_sound(store())


def test_a_registry_that_ignores_range_is_detected(registry, fault_proxy, big_model):
    """The weights GET is reset after 700 kB; the resume (Range: bytes=N-) is answered 200 with the whole
    blob: the kept prefix is dropped and the 200's body stored from byte 0, never appended to it."""
    proxy = fault_proxy(registry)
    _name, ref, blob = remote_only(proxy, big_model, "acme/ignore-range:v1")
    reset = proxy.add("reset", "GET", f"/blobs/{blob.digest}", after=700_000)
    ignored = proxy.add("ignore_range", "GET", f"/blobs/{blob.digest}")
    pull(store(), ref, client=fresh(proxy.host))
    assert_store_sound(store())
    assert store().has_blob(blob.digest, blob.size) and not store().partial_path(blob.digest).exists()
    assert (reset.fired, ignored.fired) == (1, 1)
    gets = proxy.matching("GET", f"/blobs/{blob.digest}")
    assert len(gets) == 2 and gets[0].headers.get("Range") is None
    kept = int(gets[1].headers["Range"].removeprefix("bytes=").removesuffix("-"))
    assert 0 < kept <= 700_000  # the resume asked for the rest of what the reset left
    assert gets[1].status == 200 and gets[1].bytes_sent == blob.size  # answered with the whole blob


def test_persistent_corruption_is_an_integrity_error_and_stores_nothing(registry, fault_proxy, big_model):
    proxy = fault_proxy(registry)
    _name, ref, blob = remote_only(proxy, big_model, "acme/corrupt:v1")
    proxy.add("corrupt", "GET", f"/blobs/{blob.digest}", count=None, offset=5, length=1)
    with pytest.raises(IntegrityError, match=f"blob {blob.digest.short}"):
        pull(store(), ref, client=fresh(proxy.host))
    assert not store().has_blob(blob.digest)
    assert not store().partial_path(blob.digest).exists()
    with pytest.raises(NotFoundError):
        store().resolve(ref)
    assert_store_sound(store())


def test_a_burst_of_errors_longer_than_the_retries_is_one_clear_error(registry, fault_proxy, tiny_model):
    proxy = fault_proxy(registry)
    ref = tiny_model(f"{proxy.host}/acme/burst:v1")
    push(store(), ref)
    proxy.add("status", "GET", "/manifests/", count=None, status=502)
    with pytest.raises(Exception) as info:
        pull(store(), ref, client=fresh(proxy.host, retries=2))
    assert getattr(info.value, "status", None) == 502
    assert len(proxy.matching("GET", "/manifests/")) == 3


def test_429_honours_retry_after(registry, fault_proxy, tiny_model):
    proxy = fault_proxy(registry)
    ref = tiny_model(f"{proxy.host}/acme/ratelimited:v1")
    push(store(), ref)
    proxy.add("retry_after", "GET", "/manifests/", seconds=2)
    slept = []
    client = RegistryClient(proxy.host, sleep=slept.append)
    pull(store(), ref, client=client)
    assert slept == [2.0]


def test_an_interrupted_pull_resumes_without_downloading_again(registry, fault_proxy, big_model):
    proxy = fault_proxy(registry)
    _name, ref, blob = remote_only(proxy, big_model, "acme/resume:v1")
    cut = 1_000_000
    proxy.add("reset", "GET", f"/blobs/{blob.digest}", count=None, after=cut)
    with pytest.raises(NetworkError):
        pull(store(), ref, client=fresh(proxy.host, retries=0))
    partial = store().partial_path(blob.digest)
    kept = partial.stat().st_size
    assert 0 < kept <= cut
    with pytest.raises(NotFoundError):
        store().resolve(ref)
    proxy.clear()
    pull(store(), ref, client=fresh(proxy.host))
    assert proxy.bytes_sent("GET", f"/blobs/{blob.digest}") == blob.size - kept
    assert proxy.matching("GET", f"/blobs/{blob.digest}")[0].headers["Range"] == f"bytes={kept}-"
    assert not partial.exists()
    assert_store_sound(store())


def test_large_blobs_download_in_ranged_parts(registry, fault_proxy, big_model):
    proxy = fault_proxy(registry)
    _name, ref, blob = remote_only(proxy, big_model, "acme/parts:v1")
    client = fresh(proxy.host)
    client.part_threshold = 256 * 1024
    client.split_below = float("inf")  # parts from the start
    proxy.add("reset", "GET", f"/blobs/{blob.digest}", after=100_000)  # one part breaks and resumes
    pull(store(), ref, client=client)
    gets = proxy.matching("GET", f"/blobs/{blob.digest}")
    assert len(gets) >= 5 and all(g.headers.get("Range") for g in gets)
    assert proxy.bytes_sent("GET", f"/blobs/{blob.digest}") < blob.size + 200_000
    assert_store_sound(store())


def test_a_slow_stream_is_split_into_ranged_parts_and_a_fast_one_is_not(registry, fault_proxy, big_model):
    proxy = fault_proxy(registry)
    name, ref, blob = remote_only(proxy, big_model, "acme/adaptive:v1", values=2 * 1024 * 1024)
    assert blob.size > 3 * 1024 * 1024  # room for a probe after the second 1 MiB buffer, and a rest to split
    client = fresh(proxy.host)
    client.part_threshold = 256 * 1024
    # one connection that stalls for longer than the probe's second: judged too slow
    proxy.add("stall", "GET", f"/blobs/{blob.digest}", after=1536 * 1024, seconds=1.5)
    pull(store(), ref, client=client)
    gets = proxy.matching("GET", f"/blobs/{blob.digest}")
    assert gets[0].headers.get("Range") is None
    assert len(gets) >= 3 and all(g.headers.get("Range") for g in gets[1:])  # the rest came in parts
    # the parts ask for exactly what the dropped stream had not delivered: its prefix is kept
    ranges = sorted(tuple(int(x) for x in g.headers["Range"].removeprefix("bytes=").split("-")) for g in gets[1:])
    assert ranges[0][0] >= 2 * 1024 * 1024 and ranges[-1][1] == blob.size - 1
    assert all(a[1] + 1 == b[0] for a, b in itertools.pairwise(ranges))
    assert_store_sound(store())

    run("rm", name)
    proxy.clear()
    pull(store(), ref, client=fresh(proxy.host))  # loopback, no stall: one stream is kept
    gets = proxy.matching("GET", f"/blobs/{blob.digest}")
    assert len(gets) == 1 and gets[0].headers.get("Range") is None


def test_a_failed_ranged_download_keeps_its_verified_prefix_and_resumes(registry, fault_proxy, big_model):
    proxy = fault_proxy(registry)
    _name, ref, blob = remote_only(proxy, big_model, "acme/parts-resume:v1")
    client = fresh(proxy.host, retries=0)
    client.part_threshold = 256 * 1024
    client.split_below = float("inf")  # parts from the start
    proxy.add("reset", "GET", f"/blobs/{blob.digest}", count=None, after=300_000)  # every part breaks
    with pytest.raises(NetworkError):
        pull(store(), ref, client=client)
    partial = store().partial_path(blob.digest)
    kept = partial.stat().st_size
    assert 0 < kept <= 300_000  # the first part's bytes, hashed in order; the other parts' bytes are cut off
    assert not partial.with_name(partial.name + ".parts.partial").exists()
    proxy.clear()
    pull(store(), ref, client=fresh(proxy.host))
    assert proxy.bytes_sent("GET", f"/blobs/{blob.digest}") == blob.size - kept
    assert_store_sound(store())


def test_two_concurrent_pulls_download_each_blob_once(registry, fault_proxy, big_model):
    proxy = fault_proxy(registry)
    _name, ref, blob = remote_only(proxy, big_model, "acme/concurrent:v1")
    proxy.clear()
    proxy.add("stall", "GET", f"/blobs/{blob.digest}", after=10, seconds=0.5)
    errors = []

    def one():
        try:
            pull(Store(config.home()), ref, client=fresh(proxy.host))
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(proxy.matching("GET", f"/blobs/{blob.digest}")) == 1
    assert_store_sound(store())


# ---------------------------------------------------------------------------------------------------------
# auth: basic


def test_basic_auth_with_env_credentials(basic_registry, tiny_model, monkeypatch):
    name = f"{basic_registry.host}/acme/basic:v1"
    tiny_model(name)
    monkeypatch.setenv("MODELPKG_REGISTRY_USER", basic_registry.username)
    monkeypatch.setenv("MODELPKG_REGISTRY_PASSWORD", basic_registry.password)
    monkeypatch.setenv("MODELPKG_REGISTRY_HOSTS", basic_registry.host)  # the host-less login is for it
    assert run("push", name).exit_code == 0
    run("rm", name)
    result = run("pull", name)
    assert result.exit_code == 0, result.stderr


def test_basic_auth_wrong_password_and_no_credentials(basic_registry, tiny_model, monkeypatch):
    name = f"{basic_registry.host}/acme/basic-wrong:v1"
    tiny_model(name)
    anonymous = run("push", name)
    assert anonymous.exit_code == 6
    assert error_lines(anonymous) == [f"Error: authentication required for {name}"]
    monkeypatch.setenv("MODELPKG_REGISTRY_USER", basic_registry.username)
    monkeypatch.setenv("MODELPKG_REGISTRY_PASSWORD", "not-the-password")
    monkeypatch.setenv("MODELPKG_REGISTRY_HOSTS", basic_registry.host)
    wrong = run("push", name)
    assert wrong.exit_code == 6
    assert error_lines(wrong) == [f"Error: wrong username or password for {basic_registry.host}"]
    assert "not-the-password" not in wrong.output


def test_login_checks_saves_0600_and_logout(basic_registry, tiny_model, home):
    host = basic_registry.host
    bad = run("login", host, "-u", basic_registry.username, "--password-stdin", input="nope\n")
    assert bad.exit_code == 6 and "nope" not in bad.output
    assert error_lines(bad) == [f"Error: wrong username or password for {host}"]
    ok = run("login", host, "-u", basic_registry.username, "--password-stdin", input=basic_registry.password + "\n")
    assert ok.exit_code == 0, ok.stderr
    assert basic_registry.password not in ok.output
    path = config.config_dir() / "auth.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    name = f"{host}/acme/login:v1"
    tiny_model(name)
    assert run("push", name).exit_code == 0
    assert run("logout", host).exit_code == 0
    assert run("push", name).exit_code == 6
    again = run("logout", host)
    assert again.exit_code == 4 and error_lines(again) == [f"Error: not logged in to {host}"]


def test_docker_config_auths_and_credential_helper(basic_registry, tiny_model, tmp_path, monkeypatch):
    host = basic_registry.host
    name = f"{host}/acme/docker-config:v1"
    tiny_model(name)
    docker = tmp_path / "docker"
    docker.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(docker))
    token = base64.b64encode(f"{basic_registry.username}:{basic_registry.password}".encode()).decode()
    (docker / "config.json").write_text(json.dumps({"auths": {f"http://{host}": {"auth": token}}}))
    assert run("push", name).exit_code == 0

    # the same through a docker-credential-test helper found on PATH
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "helper.log"
    helper = bin_dir / "docker-credential-test"
    helper.write_text(f"""#!/bin/sh
read server
echo "$1 $server" >> {log}
if [ "$server" = "{host}" ]; then
  printf '{{"ServerURL":"%s","Username":"{basic_registry.username}","Secret":"{basic_registry.password}"}}' "$server"
else
  echo "credentials not found in native keychain"; exit 1
fi
""")
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    (docker / "config.json").write_text(json.dumps({"auths": {host: {}}, "credHelpers": {host: "test"}}))
    run("rm", name)
    result = run("pull", name)
    assert result.exit_code == 0, result.stderr
    assert log.read_text().split() == ["get", host]


# ---------------------------------------------------------------------------------------------------------
# auth: bearer tokens


def test_token_auth_caches_one_token_per_scope(token_registry, token_server, tiny_model, monkeypatch):
    host = token_registry.host
    name = f"{host}/acme/token:v1"
    ref = tiny_model(name)
    cred = Credential(token_registry.username, token_registry.password)
    client = RegistryClient(host, credentials=cred)
    push(store(), ref, client=client)
    push_scope = "repository:acme/token:pull,push"
    assert [i.scopes for i in token_server.issued] == [(push_scope,)]
    run("rm", name)
    pull(store(), ref, client=client)  # a new scope: one more token, then every blob uses it
    assert [i.scopes for i in token_server.issued] == [(push_scope,), ("repository:acme/token:pull",)]
    assert all(i.user == token_registry.username for i in token_server.issued)
    pull(store(), ref, client=client)
    assert len(token_server.issued) == 2


def test_token_auth_refreshes_after_expiry(token_registry, token_server, tiny_model):
    host = token_registry.host
    ref = tiny_model(f"{host}/acme/token-expiry:v1")
    now = [1000.0]
    cred = Credential(token_registry.username, token_registry.password)
    client = RegistryClient(host, credentials=cred)
    client.auth._clock = lambda: now[0]
    token_server.expires_in = 60
    push(store(), ref, client=client)
    assert len(token_server.issued) == 1
    now[0] += 120  # past expires_in: the next request fetches a new token before sending
    push(store(), ref, client=client)
    assert len(token_server.issued) == 2


def test_a_token_the_registry_no_longer_accepts_is_renewed_once(token_registry, token_server, fault_proxy,
                                                               tiny_model):
    import time

    proxy = fault_proxy(token_registry)
    ref = tiny_model(f"{proxy.host}/acme/token-renew:v1")
    client = RegistryClient(proxy.host, credentials=Credential(token_registry.username, token_registry.password))
    token_server.valid_for = 2  # the registry accepts each token for about 2 s; clients are told 300 s
    push(store(), ref, client=client)
    assert len(token_server.issued) == 1
    cached = token_server.issued[0].token
    deadline = time.monotonic() + 10
    while requests.get(f"{token_registry.url}/v2/", headers={"Authorization": f"Bearer {cached}"},
                       timeout=5).status_code == 200:  # until the registry refuses the cached token
        assert time.monotonic() < deadline, "the registry kept accepting an expired token"
        time.sleep(0.1)
    proxy.clear()
    push(store(), ref, client=client)  # the same scope: the cached token is refused, renewed once, sent again
    assert len(token_server.issued) == 2
    statuses = [r.status for r in proxy.requests]
    assert 401 in statuses and statuses[-1] in (200, 201)
    assert all(r.headers.get("Authorization") == f"Bearer {token_server.issued[1].token}"
               for r in proxy.requests[statuses.index(401) + 1:] if r.status != 401)


def test_tokens_expiring_mid_pull_are_refreshed_before_they_expire(token_registry, token_server, fault_proxy,
                                                                    big_model):
    """A pull that outlives its tokens: each lives 2 s (the client uses one for 1 s: it refreshes at half
    the lifetime) and the registry takes it for 2 s; the weights GET breaks twice, each 1.3 s after it
    started, so each resume finds its token stale. Two refreshes, counted at the token server; each
    resume sent a new token; the registry refused none (one 401: the pull's first request)."""
    import time

    proxy = fault_proxy(token_registry)
    cred = Credential(token_registry.username, token_registry.password)
    name = f"{proxy.host}/acme/token-mid-pull:v1"
    ref = big_model(name)
    push(store(), ref, client=RegistryClient(proxy.host, credentials=cred))
    blob = model_blob(ref)
    run("rm", name)
    token_server.expires_in, token_server.valid_for = 2, 2
    proxy.clear()
    cuts = proxy.add("truncate", "GET", f"/blobs/{blob.digest}", count=2, after=300_000, seconds=1.3)
    started = time.monotonic()
    pull(store(), ref, client=fresh(proxy.host, credentials=cred, timeout=(5, 5)))
    took = time.monotonic() - started
    assert store().has_blob(blob.digest, blob.size) and cuts.fired == 2
    during = [i for i in token_server.issued if i.at >= started]
    print(f"\ntokens during a {took:.1f} s pull: {len(during)} (1 + {len(during) - 1} refreshed)")
    assert len(during) == 1 + 2  # the pull's first token, then one refresh per resume
    gets = proxy.matching("GET", f"/blobs/{blob.digest}")
    assert [g.headers["Authorization"] for g in gets] == [f"Bearer {i.token}" for i in during]
    assert [r.status for r in proxy.requests].count(401) == 1 and proxy.requests[0].status == 401


def test_token_auth_denied_and_anonymous(token_registry, token_server, tiny_model):
    host = token_registry.host
    name = f"{host}/acme/token-denied:v1"
    tiny_model(name)
    result = run("push", name)  # anonymous: the policy grants nothing outside public/
    assert result.exit_code == 6
    assert error_lines(result) == [f"Error: authentication required for {name}"]
    missing = run("pull", f"{host}/public/absent:v1")  # anonymous pull of a public name works up to the 404
    assert error_lines(missing) == [f"Error: model not found: {host}/public/absent:v1"]


def test_token_auth_with_an_identity_token(token_registry, token_server, tiny_model):
    host = token_registry.host
    ref = tiny_model(f"{host}/acme/identity:v1")
    # get a refresh token the way `docker login` does with an OAuth2 password grant
    answer = requests.post(token_server.realm, data={
        "grant_type": "password", "username": token_registry.username, "password": token_registry.password,
        "service": token_server.service, "client_id": "test", "access_type": "offline"}, timeout=10).json()
    client = RegistryClient(host, credentials=Credential(identity_token=answer["refresh_token"]))
    token_server.reset()
    push(store(), ref, client=client)
    assert [r.method for r in token_server.requests] == ["POST"]
    assert token_server.requests[0].params["grant_type"] == ["refresh_token"]


# ---------------------------------------------------------------------------------------------------------
# transport safety


def test_redirect_to_another_host_drops_authorization(basic_registry, fault_proxy, tiny_model, monkeypatch):
    proxy = fault_proxy(basic_registry)
    name = f"{proxy.host}/acme/redirect:v1"
    ref = tiny_model(name)
    cred = Credential(basic_registry.username, basic_registry.password)
    push(store(), ref, client=RegistryClient(proxy.host, credentials=cred))
    blob = model_blob(ref)
    run("rm", name)
    proxy.add("redirect_other_host", "GET", f"/blobs/{blob.digest}")
    pull(store(), ref, client=RegistryClient(proxy.host, credentials=cred))
    assert store().has_blob(blob.digest, blob.size)
    cdn = proxy.other_host.requests
    assert len(cdn) == 1 and cdn[0].authorization is None
    assert proxy.matching("GET", "/manifests/")[-1].headers.get("Authorization", "").startswith("Basic ")


def _lan_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_plain_http_is_refused_for_a_non_loopback_host_without_insecure(home):
    address = _lan_address()
    if address is None:
        missing("no non-loopback IPv4 address on this machine")

    class NotFound(BaseHTTPRequestHandler):
        def do_GET(self):
            body = b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}'
            self.send_response(404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer((address, 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        name = f"{address}:{server.server_address[1]}/acme/plain:v1"
        refused = run("pull", name)
        assert refused.exit_code == 7
        assert len(error_lines(refused)) == 1 and "TLS" in error_lines(refused)[0]
        assert "--insecure" in refused.stderr
        allowed = run("pull", "--insecure", name)
        assert error_lines(allowed) == [f"Error: model not found: {name}"]
    finally:
        server.shutdown()
        server.server_close()


def _self_signed_for_loopback(folder: Path) -> tuple[Path, Path]:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "modelpkg-test-registry")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_tls_registry_is_verified_against_the_ca_bundle(tmp_path, tiny_model, monkeypatch):
    from registry_env import start_registry

    cert, key = _self_signed_for_loopback(tmp_path)
    server = start_registry(tmp_path / "tls-registry",
                            config={"http": {"tls": {"certificate": str(cert), "key": str(key)}}})
    try:
        name = f"{server.host}/acme/tls:v1"
        tiny_model(name)
        (tmp_path / "other").mkdir()
        other_ca, _ = _self_signed_for_loopback(tmp_path / "other")  # a CA that did not sign the registry's cert
        wrong = run("push", "--ca-bundle", str(other_ca), name)
        assert wrong.exit_code == 7 and "TLS" in error_lines(wrong)[0]
        monkeypatch.setenv("MODELPKG_CA_BUNDLE", str(cert))
        assert run("push", name).exit_code == 0
        run("rm", name)
        result = run("pull", name)
        assert result.exit_code == 0, result.stderr
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------------------------
# interoperability with oras-py, an independent client


def test_oras_pulls_what_modelpkg_pushed(registry, tiny_model, tiny_gguf, tmp_path, monkeypatch):
    oras = require_module("oras.provider")
    name = f"{registry.host}/acme/oras-out:v1"
    tiny_model(name, "SYSTEM hello\n")
    push(store(), config.reference(name))
    out = tmp_path / "oras-out"
    out.mkdir()
    monkeypatch.chdir(tmp_path)
    files = oras.Registry(hostname=registry.host, insecure=True).pull(target=name, outdir=str(out))
    by_name = {Path(f).name: Path(f).read_bytes() for f in files}
    assert by_name["model.gguf"] == tiny_gguf.read_bytes()
    assert by_name["system.txt"] == b"hello"


def test_modelpkg_pulls_what_oras_pushed(registry, tiny_gguf, home, tmp_path, monkeypatch):
    oras = require_module("oras.provider")
    monkeypatch.chdir(tiny_gguf.parent)
    name = f"{registry.host}/acme/oras-in:v1"
    oras.Registry(hostname=registry.host, insecure=True).push(
        target=name, files=[f"{tiny_gguf.name}:application/octet-stream"], disable_path_validation=True)
    ref = config.reference(name)
    pull(store(), ref)
    layer = model_blob(ref)
    assert layer is not None and layer.title == tiny_gguf.name
    assert store().blob_path(layer.digest).read_bytes() == tiny_gguf.read_bytes()
    assert hashlib.sha256(tiny_gguf.read_bytes()).hexdigest() == layer.digest.hex
