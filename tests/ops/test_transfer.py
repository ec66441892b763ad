"""Transfer knobs against the real distribution registry (tests/registry_env.py): ``pull --limit-rate`` and
``--concurrency``, ``pull --all`` and ``outdated`` (only pulled names; local ones skipped; one failure does not
stop the rest), HTTPS_PROXY/HTTP_PROXY/NO_PROXY with a loopback proxy that answers 407, and ``run`` of a name
that is nowhere.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest
from click.testing import CliRunner

from conftest import make_gguf
from modelpkg.base import config
from modelpkg.cli.app import cli
from modelpkg.core.errors import InvalidInputError
from modelpkg.core.manifest import model_layers
from modelpkg.core.units import parse_rate
from modelpkg.ops.create import create
from modelpkg.ops.pull import pull
from modelpkg.ops.push import push
from modelpkg.registry import download
from modelpkg.registry.client import RegistryClient
from modelpkg.registry.download import RateLimiter
from modelpkg.store import Store

pytestmark = [pytest.mark.registry, pytest.mark.timeout(120)]


def store() -> Store:
    return Store(config.home())


@pytest.fixture
def big_model(home, tmp_path):
    """A factory for a model whose GGUF is about 2 MiB (so a blob can be split into ranged parts)."""

    def make(name: str, seed: int = 1):
        folder = tmp_path / f"big-{seed}"
        folder.mkdir(exist_ok=True)
        gguf = make_gguf(folder / "big.gguf", tensor_values=1024 * 1024, seed=seed)
        ref = config.reference(name)
        create(store(), ref, f"FROM {gguf}\n", folder, resolve_name=config.reference)
        return ref

    return make


def invoke(*args):
    return CliRunner().invoke(cli, list(args))


def errors(result) -> list[str]:
    return [line for line in result.output.splitlines() if line.startswith("Error:")]


# ---------------------------------------------------------------------------------------------------------
# rates


@pytest.mark.parametrize("text, rate", [
    ("20M", 20_000_000), ("20Mi", 20 * 2**20), ("800k", 800_000), ("800K", 800_000), ("1.5G", 1_500_000_000),
    ("2Gi", 2 * 2**30), ("100", 100), ("20MB/s", 20_000_000), ("20 MiB/s", 20 * 2**20), ("1T", 10**12),
])
def test_rates_read_si_and_iec_suffixes(text, rate):
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["", "fast", "0", "-5M", "20X", "1e9", "20M/h"])
def test_bad_rates_are_one_line(text):
    with pytest.raises(InvalidInputError) as e:
        parse_rate(text)
    assert "\n" not in e.value.message


def test_the_limiter_keeps_every_stream_together_at_the_rate():
    clock = [0.0]

    def sleep(seconds):
        clock[0] += seconds

    limiter = RateLimiter(1_000_000, clock=lambda: clock[0], sleep=sleep)
    for _ in range(50):  # four streams, 50 reads of 5,000 bytes each, interleaved: 1 MB in all
        for _stream in range(4):
            limiter.consume(5_000)
    assert clock[0] == pytest.approx(1.0)
    clock[0] += 10.0  # idle for a while: at most the burst is credited
    limiter.consume(1_000_000)
    assert clock[0] == pytest.approx(11.0 + 1.0 - limiter.burst)


def _remote_model(registry, fault_proxy, big_model, repo: str):
    proxy = fault_proxy(registry)
    ref = big_model(f"{proxy.host}/{repo}")
    push(store(), ref)
    weights = model_layers(store().manifest(ref)[1]).model
    assert invoke("rm", str(ref)).exit_code == 0
    return proxy, ref, weights


def test_limit_rate_and_concurrency_reach_every_stream(registry, fault_proxy, big_model, monkeypatch):
    proxy, ref, weights = _remote_model(registry, fault_proxy, big_model, "acme/limited:v1")
    seen: list[tuple[int, int]] = []
    original = RateLimiter.consume

    def counting(self, n):
        seen.append((id(self), n))
        original(self, n)

    monkeypatch.setattr(RateLimiter, "consume", counting)
    client = RegistryClient(proxy.host)
    client.part_threshold, client.split_below = 1024, float("inf")  # split the weights into ranged parts
    proxy.clear()
    pull(store(), ref, client=client, workers=2, limit_rate=parse_rate("50M"))
    ranged = [r for r in proxy.matching("GET", str(weights.digest)) if r.headers.get("Range")]
    assert len(ranged) == 2  # --concurrency 2: two parts
    assert len({limiter for limiter, _ in seen}) == 1  # one limiter for every stream
    blobs = store().manifest(ref)[1].unique_blobs()
    assert sum(n for _, n in seen) == sum(b.size for b in blobs)  # every byte of every blob was paced


def test_modelpkg_limit_rate_is_the_default(registry, fault_proxy, big_model, monkeypatch):
    _, ref, _ = _remote_model(registry, fault_proxy, big_model, "acme/env-limited:v1")
    rates = []
    original = RateLimiter.__init__

    def recording(self, rate, **kw):
        rates.append(rate)
        original(self, rate, **kw)

    monkeypatch.setattr(RateLimiter, "__init__", recording)
    monkeypatch.setenv("MODELPKG_LIMIT_RATE", "64Mi")
    assert invoke("pull", str(ref)).exit_code == 0
    assert rates == [64 * 2**20]
    monkeypatch.setenv("MODELPKG_LIMIT_RATE", "lots")
    result = invoke("pull", str(ref))
    assert result.exit_code == 3 and errors(result) == ["Error: invalid rate 'lots'"]


def test_cli_refuses_bad_knobs(home):
    assert invoke("pull", "--limit-rate", "fast", "x").exit_code == 3
    assert invoke("pull", "--concurrency", "0", "x").exit_code == 2
    assert invoke("pull").exit_code == 2
    assert invoke("pull", "--all", "x").exit_code == 2


# ---------------------------------------------------------------------------------------------------------
# pull --all and outdated


def test_pull_all_and_outdated_touch_only_pulled_names(registry, fault_proxy, big_model, tiny_model, tmp_path,
                                                     monkeypatch):
    proxy, ref, _ = _remote_model(registry, fault_proxy, big_model, "acme/refresh:v1")
    assert invoke("pull", str(ref)).exit_code == 0
    tiny_model("gemma3")  # local: the default registry is not reachable here, so touching it would fail
    local = tiny_model(f"{proxy.host}/acme/refresh:local")  # local, on that very registry
    push(store(), local)  # the registry has it too, but the local name stays local
    before = {e.name: e.digest for e in store().refs()}
    assert [e.name for e in store().refs() if e.pulled] == [str(ref)]

    proxy.clear()
    result = invoke("outdated", "--json")
    assert result.exit_code == 0, result.output
    status = {r["name"]: r["status"] for r in json.loads(result.stdout)}
    assert status == {str(ref): "up to date", "registry.ollama.ai/library/gemma3:latest": "local",
                      str(local): "local"}
    assert [(r.method, r.path) for r in proxy.requests] == [("GET", "/v2/acme/refresh/manifests/v1")]

    # the registry's v1 changes (pushed from another machine's store)
    monkeypatch.setenv("MODELPKG_HOME", str(tmp_path / "elsewhere"))
    push(store(), big_model(str(ref), seed=5))
    monkeypatch.setenv("MODELPKG_HOME", str(tmp_path / "home"))
    result = invoke("outdated")
    assert result.exit_code == 0
    assert any(line.startswith(ref.short()) and "outdated" in line for line in result.stdout.splitlines())

    proxy.clear()
    result = invoke("pull", "--all")
    assert result.exit_code == 0, result.output
    assert f"{ref.short()}: updated" in result.output and "gemma3:latest: local, skipped" in result.output
    after = {e.name: e.digest for e in store().refs()}
    assert after[str(ref)] != before[str(ref)]
    assert after["registry.ollama.ai/library/gemma3:latest"] == before["registry.ollama.ai/library/gemma3:latest"]
    assert after[str(local)] == before[str(local)]

    proxy.clear()
    assert invoke("pull", "--all").exit_code == 0  # nothing changed: one manifest request for the one name
    assert [(r.method, r.path) for r in proxy.requests] == [("GET", "/v2/acme/refresh/manifests/v1")]


def test_one_failure_does_not_stop_the_rest(registry, fault_proxy, big_model):
    _, ref, _ = _remote_model(registry, fault_proxy, big_model, "acme/stays:v1")
    gone, gone_ref, _ = _remote_model(registry, fault_proxy, big_model, "acme/gone:v1")
    assert invoke("pull", str(ref)).exit_code == 0 and invoke("pull", str(gone_ref)).exit_code == 0
    gone.add("status", "GET", "/manifests/", count=None, status=404)
    for command in (["outdated", "--json"], ["pull", "--all", "--json"]):
        result = invoke(*command)
        assert result.exit_code == 4, result.output
        lines = result.stdout.strip()
        outcomes = json.loads(lines) if command[0] == "outdated" else [
            o for o in map(json.loads, lines.splitlines()) if "local" in o]  # among pull's progress lines
        status = {o["name"]: o["status"] for o in outcomes}
        assert status[str(gone_ref)] == "failed" and status[str(ref)] == "up to date"
        assert errors(result) == [f"Error: {gone_ref.short()}: model not found: {gone_ref}"]


# ---------------------------------------------------------------------------------------------------------
# proxies


class _Refusing(BaseHTTPRequestHandler):
    """A proxy that wants credentials: 407 to every request, CONNECT included."""

    seen: ClassVar[list[str]] = []

    def log_message(self, *args):
        pass

    def _refuse(self):
        self.seen.append(f"{self.command} {self.path}")
        body = b"proxy auth required"
        self.send_response(407)
        self.send_header("Proxy-Authenticate", 'Basic realm="corp"')
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_HEAD = do_CONNECT = _refuse


@pytest.fixture
def refusing_proxy(monkeypatch):
    handler = type("Handler", (_Refusing,), {"seen": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(name, url)
    yield handler
    server.shutdown()
    server.server_close()


def test_a_proxy_that_wants_credentials_is_one_line(registry, tiny_model, refusing_proxy):
    ref = tiny_model(f"{registry.host}/acme/proxied:v1")
    result = invoke("push", str(ref))
    assert result.exit_code == 6, result.output
    assert errors(result)[0].startswith("Error: the proxy http://127.0.0.1:") and "wants credentials" in result.output
    assert refusing_proxy.seen  # it went through the proxy


def test_an_https_registry_behind_a_proxy_that_wants_credentials(home, refusing_proxy):
    result = invoke("pull", "registry.example.com/acme/model:v1")
    assert result.exit_code == 6, result.output
    assert len(errors(result)) == 1 and "wants credentials (HTTP 407) for registry.example.com" in result.output
    assert refusing_proxy.seen == ["CONNECT registry.example.com:443"]  # refused once, not retried


def test_no_proxy_bypasses_it(registry, tiny_model, refusing_proxy, monkeypatch):
    ref = tiny_model(f"{registry.host}/acme/direct:v1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert invoke("push", str(ref)).exit_code == 0
    assert invoke("rm", str(ref)).exit_code == 0
    assert invoke("pull", str(ref)).exit_code == 0
    assert refusing_proxy.seen == []


# ---------------------------------------------------------------------------------------------------------
# run of a name that is nowhere


def test_run_of_a_name_the_registry_does_not_have(registry, home):
    result = invoke("run", f"{registry.host}/acme/nowhere:v1", "hello")
    assert result.exit_code == 4, result.output
    assert errors(result) == [f"Error: model not found: {registry.host}/acme/nowhere:v1"]


def test_run_of_a_name_whose_registry_cannot_be_reached(home):
    result = invoke("run", "no-such-registry.invalid/acme/x", "hello")
    assert result.exit_code == 4, result.output
    assert errors(result) == ["Error: model not found: no-such-registry.invalid/acme/x:latest (not in the store, "
                              "and cannot resolve the registry host no-such-registry.invalid)"]


def test_download_module_exports_the_limiter():
    assert download.RateLimiter is RateLimiter
