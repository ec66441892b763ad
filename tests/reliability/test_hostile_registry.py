"""Hostile registries, archives and templates: each is refused with one clear error line, nothing is written
outside the store (a canary folder next to it stays as it was) and no model name is written.

Hostile content the real registry (distribution 2.8) stores is pushed to the ``registry`` fixture by hand:
it accepts lying and negative sizes, thousands of layers, sha512 digests and ``..`` titles. An in-process
server (``_HostileServer``) serves only what it refuses or cannot produce: an endless manifest, a manifest
nested past any parser's stack, an error body nested likewise, token challenges with chosen realms.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from modelpkg.base import config
from modelpkg.cli.app import cli
from modelpkg.core import mediatypes as mt
from modelpkg.core import prompt
from modelpkg.core.manifest import MAX_LAYERS, MAX_MANIFEST_BYTES
from modelpkg.store import Store
from registry_env import push_blob, push_manifest

pytestmark = pytest.mark.registry


def run(*args, input=None):
    return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)


def one_error(result, *expected: str) -> str:
    """The command failed with exactly one ``Error:`` line (and no traceback) that names each ``expected``."""
    assert result.exit_code != 0, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, result.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def _tree(folder: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() and not p.is_symlink() else None)
            for p in folder.rglob("*")}


class Guard:
    """Everything under ``tmp_path`` outside the store (and a canary folder planted there) stays as it was;
    the store names no new model and verifies clean."""

    def __init__(self, home: Path, tmp_path: Path):
        self.home, self.root = home, tmp_path
        canary = tmp_path / "canary"
        canary.mkdir()
        (canary / "keep.txt").write_text("canary\n")
        (canary / "model.gguf").write_bytes(b"GGUF canary")
        self.before = self._outside()
        self.names = self._names()

    def _outside(self) -> dict[str, bytes | None]:
        return {k: v for k, v in _tree(self.root).items()
                if not (k == self.home.name or k.startswith(self.home.name + "/"))}

    def _names(self) -> list[str]:
        return sorted(e.name for e in Store(self.home).refs()) if self.home.exists() else []

    def check(self, allowed: Path | None = None) -> None:
        after = self._outside()
        if allowed is not None:
            prefix = str(allowed.relative_to(self.root))
            after = {k: v for k, v in after.items() if not (k == prefix or k.startswith(prefix + "/"))}
        assert after == self.before
        assert self._names() == self.names
        if self.home.exists():
            assert Store(self.home).verify() == []


@pytest.fixture
def guard(home, tmp_path):
    return Guard(home, tmp_path)


# ---------------------------------------------------------------------------------------------------------
# hand-built content on the real registry


def _publish(registry, repo: str, layers: list[dict], blobs: list[bytes] = (), config_blob: bytes = b"{}",
             config_type: str = mt.OCI_EMPTY, tag: str = "v1") -> str:
    """Push ``blobs`` and a manifest with ``layers`` (descriptors as given, however hostile) to the registry."""
    session = requests.Session()
    for blob in blobs:
        push_blob(session, registry.url, repo, blob)
    config_digest = push_blob(session, registry.url, repo, config_blob)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
                           "config": {"mediaType": config_type, "digest": config_digest, "size": len(config_blob)},
                           "layers": layers}).encode()
    push_manifest(session, registry.url, repo, tag, manifest)
    return f"{registry.host}/{repo}:{tag}"


def _layer(data: bytes, size: int | None = None, digest: str | None = None, title: str | None = "model.gguf",
           media_type: str = mt.MODELPACK_WEIGHT) -> dict:
    out = {"mediaType": media_type, "digest": digest or "sha256:" + hashlib.sha256(data).hexdigest(),
           "size": len(data) if size is None else size}
    if title is not None:
        out["annotations"] = {mt.TITLE: title}
    return out


GGUF = b"GGUF\x03\x00\x00\x00" + bytes(56)


def test_negative_and_oversized_declared_sizes_are_refused(registry, guard):
    for size, what in [(-1, "size '-1'"), (1 << 60, "not a non-negative integer")]:
        name = _publish(registry, f"hostile/size{size & 7}", [_layer(GGUF, size=size)], [GGUF])
        one_error(run("pull", name), what)
    guard.check()


def test_a_blob_longer_than_declared_is_cut_at_the_declared_size_plus_one(registry, fault_proxy, guard):
    big = GGUF + bytes(32 << 20)  # 32 MiB served for a layer that declares 1000 bytes
    _publish(registry, "hostile/longer", [_layer(big, size=1000)], [big])
    proxy = fault_proxy(registry)
    started = time.monotonic()
    one_error(run("pull", f"{proxy.host}/hostile/longer:v1"), "the manifest says 1000")
    assert time.monotonic() - started < 20
    # the client stops after 1001 bytes; what the proxy managed to push into socket buffers before the
    # connection closed is far less than the 32 MiB offered
    assert proxy.bytes_sent("GET", "/blobs/") < 8 << 20
    assert not any(p.stat().st_size > 1001 for p in guard.home.rglob("*") if p.is_file())
    guard.check()


def test_a_blob_shorter_than_declared_is_refused(registry, guard):
    name = _publish(registry, "hostile/shorter", [_layer(GGUF, size=len(GGUF) + 10)], [GGUF])
    one_error(run("pull", name))
    guard.check()


def test_thousands_of_layers_are_refused(registry, guard):
    layers = [_layer(GGUF, title=f"part-{i}.gguf") for i in range(MAX_LAYERS * 5)]
    name = _publish(registry, "hostile/layers", layers, [GGUF])
    one_error(run("pull", name), f"at most {MAX_LAYERS}")
    guard.check()


def test_a_digest_of_another_algorithm_is_refused(registry, guard):
    session = requests.Session()
    start = session.post(f"{registry.url}/v2/hostile/sha512/blobs/uploads/", timeout=10)
    location = start.headers["Location"]
    location = location if location.startswith("http") else registry.url + location
    sha512 = "sha512:" + hashlib.sha512(GGUF).hexdigest()
    session.put(f"{location}&digest={sha512}", data=GGUF, timeout=10).raise_for_status()  # the registry takes it
    name = _publish(registry, "hostile/sha512", [_layer(GGUF, digest=sha512)])
    one_error(run("pull", name), "unsupported digest algorithm 'sha512'")
    guard.check()


HOSTILE_TITLES = ["../../canary/keep.txt", "/tmp/../" + "canary/model.gguf", "a/../../../canary/x.gguf",
                  "nul\x00.gguf", "..", "/etc/passwd", "C:\\evil.gguf", "models/../../evil.gguf"]


def test_hostile_titles_are_kept_inside_the_export_folder(registry, guard, tmp_path):
    """Pull takes titles as data; export writes them under their safe names or skips them."""
    blobs = [GGUF + bytes([i]) for i in range(len(HOSTILE_TITLES))]
    layers = [_layer(b, title=t, media_type="application/octet-stream")
              for b, t in zip(blobs, HOSTILE_TITLES, strict=True)]
    name = _publish(registry, "hostile/titles", layers, blobs)
    assert run("pull", name).exit_code == 0
    guard.names = guard._names()  # the pull names the model: that is expected
    out = tmp_path / "out"
    result = run("export", name, str(out))
    assert result.exit_code == 0, result.stderr
    for path in out.rglob("*"):
        assert path.resolve().is_relative_to(out.resolve()) and not path.is_symlink()
    guard.check(allowed=out)


# ---------------------------------------------------------------------------------------------------------
# KitOps model tars and archives with traversal, absolute paths, NUL bytes and links


def _tar(members: list[tuple[str, int, bytes | None, str]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, kind, data, link in members:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, link
            info.size = len(data) if data is not None else 0
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


UNSAFE_MEMBERS = [
    ("../canary/evil.gguf", tarfile.REGTYPE, GGUF, ""),
    ("/abs/evil.gguf", tarfile.REGTYPE, GGUF, ""),
    ("models/evil.gguf", tarfile.SYMTYPE, None, "../../canary/model.gguf"),
    ("models/hard.gguf", tarfile.LNKTYPE, None, "/etc/passwd"),
    ("models/fifo.gguf", tarfile.FIFOTYPE, None, ""),
]


@pytest.mark.parametrize("member", UNSAFE_MEMBERS, ids=lambda m: m[0].replace("/", "_"))
def test_a_kitops_model_tar_reaching_outside_is_refused(registry, guard, member):
    model_tar = _tar([member, ("models/ok.gguf", tarfile.REGTYPE, GGUF, "")])
    layers = [_layer(model_tar, title=None, media_type="application/vnd.kitops.modelkit.model.v1.tar")]
    name = _publish(registry, "hostile/kitops", layers, [model_tar], config_type=mt.KITOPS_CONFIG,
                    config_blob=b'{"manifestVersion":"1.0.0","model":{"path":"models/ok.gguf"}}')
    one_error(run("pull", name), "refused")
    guard.check()


def _layout_archive(extra: list[tuple[str, int, bytes | None, str]], ref_name: str = "localhost:5000/a/b:v1") -> bytes:
    config_blob, digest = b"{}", lambda b: hashlib.sha256(b).hexdigest()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
                           "config": {"mediaType": mt.OCI_EMPTY, "digest": "sha256:" + digest(config_blob), "size": 2},
                           "layers": [_layer(GGUF)]}).encode()
    index = json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": mt.OCI_MANIFEST, "digest": "sha256:" + digest(manifest), "size": len(manifest),
        "annotations": {mt.REF_NAME: ref_name}}]}).encode()
    return _tar([("oci-layout", tarfile.REGTYPE, b'{"imageLayoutVersion":"1.0.0"}', ""),
                 *extra,
                 ("index.json", tarfile.REGTYPE, index, ""),
                 *[(f"blobs/sha256/{digest(b)}", tarfile.REGTYPE, b, "") for b in (config_blob, manifest, GGUF)]])


@pytest.mark.parametrize("member", [
    *UNSAFE_MEMBERS,
    ("blobs/sha256/nul\x00name", tarfile.REGTYPE, b"x", ""),
    ("blobs/sha256/" + "c" * 64, tarfile.SYMTYPE, None, "/etc/passwd"),
], ids=lambda m: m[0].replace("/", "_").replace("\x00", "NUL")[:40])
def test_load_of_an_archive_reaching_outside_is_refused(guard, tmp_path, member):
    archive = tmp_path / "in.tar"
    archive.write_bytes(_layout_archive([member]))
    guard.before = guard._outside()
    one_error(run("load", "-i", str(archive)), "refusing the archive")
    guard.check()


@pytest.mark.parametrize("ref_name", ["../../canary/x", "/etc/passwd", "a/b:v1\x00", "HOST/UPPER:x", ""])
def test_load_of_a_hostile_ref_name_names_nothing(guard, tmp_path, ref_name):
    archive = tmp_path / "in.tar"
    archive.write_bytes(_layout_archive([], ref_name=ref_name))
    guard.before = guard._outside()
    result = run("load", "-i", str(archive))
    if result.exit_code == 0:  # an archive entry without a usable name may be loaded unnamed: never as a path
        guard.names = guard._names()
        assert all(".." not in n and not n.startswith("/") and "\x00" not in n for n in guard.names)
    else:
        one_error(result)
    guard.check()


# ---------------------------------------------------------------------------------------------------------
# a hostile server: what the real registry will not serve


class _HostileServer:
    """A loopback registry whose answers come from ``answer(handler) -> (status, headers, body)``; ``body``
    may be a callable writing to the socket. Counts the bytes it managed to write."""

    def __init__(self, answer):
        self.requests: list[tuple[str, str, dict]] = []
        self.written = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                outer.requests.append((self.command, self.path, dict(self.headers)))
                status, headers, body = answer(self)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                if not callable(body):
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    if callable(body):
                        body(self)
                    else:
                        self.wfile.write(body)
                        outer.written += len(body)
                except OSError:
                    self.close_connection = True

            do_HEAD = do_GET

            def write(self, data: bytes) -> None:
                self.wfile.write(data)
                outer.written += len(data)

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
def hostile_server():
    servers = []

    def make(answer):
        servers.append(_HostileServer(answer))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def test_an_endless_manifest_is_not_read_past_the_cap(hostile_server, guard):
    def endless(handler):
        block = b" " * 65536
        for _ in range(16384):  # 1 GiB offered
            handler.write(block)

    server = hostile_server(lambda h: (200, {"Content-Type": mt.OCI_MANIFEST}, endless))
    started = time.monotonic()
    one_error(run("pull", f"{server.host}/hostile/endless:v1"), "larger than")
    assert time.monotonic() - started < 20
    assert server.written < MAX_MANIFEST_BYTES + (16 << 20)  # the cap plus what socket buffers held
    guard.check()


def test_an_endless_blob_without_a_length_is_cut_at_the_declared_size_plus_one(hostile_server, guard):
    config_blob = b"{}"
    manifest = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
                           "config": {"mediaType": mt.OCI_EMPTY, "size": 2,
                                      "digest": "sha256:" + hashlib.sha256(config_blob).hexdigest()},
                           "layers": [_layer(GGUF, size=1000)]}).encode()

    def endless(handler):  # no Content-Length: the body ends when the connection does
        handler.close_connection = True
        for _ in range(16384):  # 1 GiB offered
            handler.write(GGUF + bytes(65536 - len(GGUF)))

    def answer(handler):
        if "/manifests/" in handler.path:
            return 200, {"Content-Type": mt.OCI_MANIFEST}, manifest
        if handler.path.endswith(hashlib.sha256(config_blob).hexdigest()):
            return 200, {}, config_blob
        return 200, {"Connection": "close"}, endless

    server = hostile_server(answer)
    started = time.monotonic()
    one_error(run("pull", f"{server.host}/hostile/endless-blob:v1"), "is larger than the manifest says (1000 bytes)")
    assert time.monotonic() - started < 20
    assert server.written < 1001 + (16 << 20)
    assert not any(p.stat().st_size > 1001 for p in guard.home.rglob("*") if p.is_file())
    guard.check()


@pytest.mark.parametrize("body", [
    b"[" * 200_000,
    b'{"schemaVersion":2,"mediaType":"' + mt.OCI_MANIFEST.encode() + b'","layers":'
    + b"[" * 100_000 + b"]" * 100_000 + b"}",
    b'{"schemaVersion":2,"config":' + b'{"a":' * 50_000 + b"1" + b"}" * 50_001,
], ids=["array", "layers", "objects"])
def test_a_manifest_nested_past_the_stack_is_refused(hostile_server, guard, body):
    server = hostile_server(lambda h: (200, {"Content-Type": mt.OCI_MANIFEST}, body))
    one_error(run("pull", f"{server.host}/hostile/deep:v1"))
    guard.check()


def test_an_error_body_nested_past_the_stack_is_one_clear_error(hostile_server, guard):
    server = hostile_server(lambda h: (404, {"Content-Type": "application/json"}, b"[" * 60_000))
    one_error(run("pull", f"{server.host}/hostile/deep-error:v1"), "hostile/deep-error")
    guard.check()


# ---------------------------------------------------------------------------------------------------------
# token realms


def _challenging(realm: str):
    def answer(handler):
        if handler.headers.get("Authorization", "").startswith("Bearer "):
            body = b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}'
            return 404, {"Content-Type": "application/json"}, body
        return 401, {"WWW-Authenticate": f'Bearer realm="{realm}",service="hostile"'}, b""
    return answer


def test_a_realm_on_another_loopback_host_is_followed(hostile_server, guard):
    token = hostile_server(lambda h: (200, {"Content-Type": "application/json"}, b'{"token":"t0k3n"}'))
    port = token.host.rsplit(":", 1)[1]
    registry = hostile_server(_challenging(f"http://localhost:{port}/token"))
    one_error(run("pull", f"{registry.host}/hostile/realm:v1"), "not found")
    assert len(token.requests) == 1 and registry.requests[-1][2].get("Authorization") == "Bearer t0k3n"
    guard.check()


@pytest.mark.parametrize("realm", ["http://169.254.169.254/latest/meta-data", "http://[fe80::1]/token",
                                   "http://metadata.google.internal/token", "http://[fd00:ec2::254]/token",
                                   "file:///etc/passwd", "http://127.0.0.1:99999/token", "gopher://x/"])
def test_a_realm_at_a_metadata_link_local_or_bad_address_is_refused(hostile_server, guard, realm):
    registry = hostile_server(_challenging(realm))
    one_error(run("pull", f"{registry.host}/hostile/realm:v1"), "token service")
    assert len(registry.requests) == 1
    guard.check()


def test_a_redirect_to_another_host_drops_the_bearer_token(token_registry, token_server, fault_proxy, tiny_model,
                                                           monkeypatch):
    proxy = fault_proxy(token_registry)
    name = f"{proxy.host}/acme/redirect-token:v1"
    monkeypatch.setenv("MODELPKG_REGISTRY_USER", token_registry.username)
    monkeypatch.setenv("MODELPKG_REGISTRY_PASSWORD", token_registry.password)
    monkeypatch.setenv("MODELPKG_REGISTRY_HOSTS", proxy.host)
    tiny_model(name)
    assert run("push", name).exit_code == 0
    _, manifest = Store(config.home()).manifest(config.reference(name))
    blob = manifest.layers[0]
    assert run("rm", name).exit_code == 0
    proxy.add("redirect_other_host", "GET", f"/blobs/{blob.digest}")
    result = run("pull", name)
    assert result.exit_code == 0, result.stderr
    assert proxy.matching("GET", f"/blobs/{blob.digest}")[-1].headers.get("Authorization", "").startswith("Bearer ")
    cdn = proxy.other_host.requests
    assert len(cdn) == 1 and cdn[0].authorization is None


# ---------------------------------------------------------------------------------------------------------
# templates that loop or grow without bound


# (template, the limit its error names, the most CPU seconds the render may take before it stops). Run on
# this 2-core VM, loaded or not: range 0.05-0.08 s, doubling 0.005-0.03 s, output 0.025-0.06 s, 1M steps 0.4-0.65 s.
LOOPING = {
    "range-iterations": ("{{ range 100000 }}{{ range 100000 }}x{{ end }}{{ end }}",
                         "more than 100000 range iterations", 0.2),
    "doubling-work": ('{{ $s := "xx" }}{{ range 64 }}{{ $s = printf "%s%s" $s $s }}{{ end }}{{ $s }}',
                      "built more than 16 MiB of text", 0.2),
    "output-cap": ("{{ range 99999 }}{{ range $.Messages }}{{ .Content }}{{ .Content }}{{ end }}{{ end }}",
                   "output is larger than 1 MiB", 0.2),
    "steps": ("{{ range 99999 }}" + "{{ if 1 }}{{ end }}" * 12 + "{{ end }}",
              "took more than 1000000 steps", 1.5),
}


@pytest.mark.parametrize("case", LOOPING)
def test_a_template_that_loops_or_grows_stops_run_quickly(home, gemma_gguf, tmp_path, monkeypatch, case):
    template, limit, cpu_bound = LOOPING[case]
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(f"FROM {gemma_gguf}\nTEMPLATE \"\"\"{template}\"\"\"\n")
    created = run("create", "looper", "-f", str(modelfile))
    assert created.exit_code == 0, created.stderr  # it parses: the limits apply when it runs

    # The render is timed on its own (the model is loaded before it) by a spy around the function ``run``
    # calls. The bound is on the CPU time of the rendering thread (what the limits cap, however busy the
    # machine is); wall time is bounded only loosely, as a loaded 2-core machine may stretch it.
    renders: list[tuple[float, float]] = []
    real_render = prompt.render

    def timed_render(*args, **kwargs):
        cpu, wall = time.thread_time(), time.monotonic()
        try:
            return real_render(*args, **kwargs)
        finally:
            renders.append((time.thread_time() - cpu, time.monotonic() - wall))

    monkeypatch.setattr(prompt, "render", timed_render)
    started = time.monotonic()
    result = run("run", "looper", "hello " * 20)
    one_error(result, "template", limit)
    assert result.exit_code == 3
    assert time.monotonic() - started < 30  # model load included
    assert len(renders) == 1
    cpu, wall = renders[0]
    print(f"\ntemplate {case}: stopped {cpu:.3f} s (CPU), {wall:.3f} s (wall) into rendering")
    assert cpu < cpu_bound and wall < 10 * cpu_bound


def test_a_pulled_models_parameters_nested_past_the_stack_are_one_clear_error(registry, tiny_gguf, guard, tmp_path):
    gguf, params = tiny_gguf.read_bytes(), b"[" * 100_000
    name = _publish(registry, "hostile/deep-params",
                    [_layer(gguf), _layer(params, title=None, media_type=mt.OLLAMA_PARAMS)], [gguf, params])
    assert run("pull", name).exit_code == 0  # parameters are data until something reads them
    guard.names = guard._names()
    one_error(run("show", name), "not valid JSON")
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(f"FROM {name}\nPARAMETER temperature 0.5\n")
    guard.before = guard._outside()
    one_error(run("create", "derived", "-f", str(modelfile)), "not valid JSON")
    guard.check()
