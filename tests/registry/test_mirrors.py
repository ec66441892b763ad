"""Pull mirrors (modelpkg.registry.mirrors): config.toml parsing, source selection, and pulls through a second real
registry acting as the mirror, with the fault proxy counting what reaches the upstream and breaking mirrors.
"""

from __future__ import annotations

import inspect
import json
import re
import time

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from modelpkg.base import config
from modelpkg.cli.app import cli
from modelpkg.core.errors import InvalidInputError
from modelpkg.core.progress import Progress
from modelpkg.core.reference import Reference, parse_reference
from modelpkg.ops import models
from modelpkg.ops.pull import pull
from modelpkg.ops.push import push
from modelpkg.registry import connect, mirrors
from modelpkg.registry.client import PullClient, RegistryClient
from modelpkg.registry.mirrors import (
    Mirror,
    MirrorConfig,
    MirroredClient,
    RegistryMirrors,
    format_config,
    load,
    parse_config,
    sources_for,
)
from modelpkg.store import Store
from registry_env import free_port, start_referrers_registry, start_registry

# ---------------------------------------------------------------------------------------------------------
# the config file


def test_a_full_config_parses():
    cfg = parse_config("""
        other-feature = 1            # top-level keys of other features are left alone
        [[registry]]
        prefix = "registry.ollama.ai"
        [[registry.mirror]]
        location = "mirror.local:5000/cache"
        insecure = true
        [[registry.mirror]]
        location = "localhost:5001"
        pull-from-mirror = "all"
        [[registry]]
        location = "ghcr.io/acme"
    """, "cfg.toml")
    assert cfg.registries == (
        RegistryMirrors("registry.ollama.ai", (Mirror("mirror.local:5000/cache", True, "digest-only"),
                                               Mirror("localhost:5001", False, "all"))),
        RegistryMirrors("ghcr.io/acme", ()),
    )


@pytest.mark.parametrize("text, message", [
    ("[[registry]\n", "cfg.toml: not valid TOML: "),
    ("registry = 1\n", "cfg.toml: 'registry' must be an array of tables, written [[registry]]"),
    ("[[registry]]\nmirror = []\n", "cfg.toml: registry[0].prefix is missing"),
    ("[[registry]]\nprefix = 'gemma3'\n", "cfg.toml: registry[0].prefix 'gemma3' must start with a registry host"),
    ("[[registry]]\nprefix = 'http://x.io'\n", "cfg.toml: registry[0].prefix 'http://x.io': remove the scheme"),
    ("[[registry]]\nprefix = 'x.io'\nlocation = 'y.io'\n",
     "cfg.toml: registry[0].location: rewriting the upstream is not supported"),
    ("[[registry]]\nprefix = 'x.io'\n[[registry]]\nprefix = 'x.io/'\n",
     "cfg.toml: registry[1].prefix 'x.io' appears twice"),
    ("[[registry]]\nprefix = 'x.io'\nblocked = true\n", "cfg.toml: registry[0].blocked is not a known key"),
    ("[[registry]]\nprefix = 'x.io'\n[[registry.mirror]]\ninsecure = true\n",
     "cfg.toml: registry[0].mirror[0].location is missing"),
    ("[[registry]]\nprefix = 'x.io'\n[[registry.mirror]]\nlocation = 'm.io/Cache'\n",
     "cfg.toml: registry[0].mirror[0].location 'm.io/Cache' is not a valid host[:port][/path]"),
    ("[[registry]]\nprefix = 'x.io'\n[[registry.mirror]]\nlocation = 'm.io'\ninsecure = 'yes'\n",
     "cfg.toml: registry[0].mirror[0].insecure must be true or false, not 'yes'"),
    ("[[registry]]\nprefix = 'x.io'\n[[registry.mirror]]\nlocation = 'm.io'\npull-from-mirror = 'digest'\n",
     "cfg.toml: registry[0].mirror[0].pull-from-mirror must be one of all, digest-only, tag-only, not 'digest'"),
    ("[[registry]]\nprefix = 'x.io'\n[[registry.mirror]]\nlocation = 'm.io'\npull_from_mirror = 'all'\n",
     "cfg.toml: registry[0].mirror[0].pull_from_mirror is not a known key"),
])
def test_a_bad_entry_is_one_message_naming_the_file_and_the_key(text, message):
    with pytest.raises(InvalidInputError) as info:
        parse_config(text, "cfg.toml")
    assert info.value.message.startswith(message), info.value.message
    assert "\n" not in info.value.message and info.value.hint


_host = st.sampled_from(["registry.ollama.ai", "ghcr.io", "localhost:5000", "127.0.0.1:5001", "mirror.local"])
_path = st.lists(st.sampled_from(["acme", "cache", "models", "a-b", "x.y"]), max_size=3).map("/".join)
_location = st.builds(lambda h, p: f"{h}/{p}" if p else h, _host, _path)
_config = st.builds(
    lambda entries: MirrorConfig(tuple({e.prefix: e for e in entries}.values())),  # prefixes are unique
    st.lists(st.builds(RegistryMirrors, _location,
                       st.lists(st.builds(Mirror, _location, st.booleans(),
                                          st.sampled_from(["all", "digest-only", "tag-only"])),
                                max_size=3).map(tuple)), max_size=4))


@given(_config)
def test_format_parses_back(cfg):
    assert parse_config(format_config(cfg)) == cfg


def test_sources_longest_prefix_boundary_paths_and_policy():
    cfg = parse_config("""
        [[registry]]
        prefix = "ghcr.io"
        [[registry.mirror]]
        location = "m.io"
        [[registry]]
        prefix = "ghcr.io/acme"
        [[registry.mirror]]
        location = "tags.io/t"
        pull-from-mirror = "tag-only"
        [[registry.mirror]]
        location = "cache.io/acme-cache"
        insecure = true
    """)
    tagged = parse_reference("ghcr.io/acme/models/gemma:v1")
    assert [(s.name, s.mirror, s.insecure) for s in cfg.sources_for(tagged)] == [
        ("tags.io/t/models/gemma", True, False), ("cache.io/acme-cache/models/gemma", True, True),
        ("ghcr.io/acme/models/gemma", False, False)]
    pinned = parse_reference("ghcr.io/acme/models/gemma@sha256:" + "a" * 64)
    assert [s.name for s in cfg.sources_for(pinned)] == ["cache.io/acme-cache/models/gemma",
                                                          "ghcr.io/acme/models/gemma"]
    # "ghcr.io/acme" is not a prefix of "ghcr.io/acmex/...": the host entry applies
    assert [s.name for s in cfg.sources_for(parse_reference("ghcr.io/acmex/m:1"), insecure=True)] == [
        "m.io/acmex/m", "ghcr.io/acmex/m"]
    assert cfg.sources_for(parse_reference("ghcr.io/acmex/m:1"), insecure=True)[-1].insecure
    assert [s.name for s in cfg.sources_for(parse_reference("quay.io/x/y:1"))] == ["quay.io/x/y"]


def test_a_mirror_must_leave_a_repository_name():
    cfg = parse_config("[[registry]]\nprefix = 'ghcr.io/acme/m'\n[[registry.mirror]]\nlocation = 'm.io'\n", "c.toml")
    with pytest.raises(InvalidInputError,
                       match=re.escape("c.toml: mirror 'm.io' of prefix 'ghcr.io/acme/m' leaves no repository")):
        cfg.sources_for(parse_reference("ghcr.io/acme/m:1"))


def test_the_file_comes_from_the_config_dir_or_the_env(home, tmp_path, monkeypatch):
    monkeypatch.delenv("MODELPKG_CONFIG_FILE", raising=False)
    assert load().registries == ()  # no file: no mirrors
    config.config_dir().mkdir(parents=True)
    (config.config_dir() / "config.toml").write_text("[[registry]]\nprefix = 'x.io'\n")
    assert load().registries == (RegistryMirrors("x.io"),)
    other = tmp_path / "other.toml"
    monkeypatch.setenv("MODELPKG_CONFIG_FILE", str(other))
    with pytest.raises(InvalidInputError, match=f"config file not found: {other}"):
        load()
    other.write_text("[[registry]]\nprefix = 'y.io'\n")
    assert [s.name for s in sources_for(parse_reference("y.io/a/b:1"))] == ["y.io/a/b"]


def test_a_bad_config_file_makes_pull_fail_with_one_line(home, tmp_path, monkeypatch):
    path = tmp_path / "config.toml"
    path.write_text("[[registry]]\nprefix = 'x.io'\n[[registry.mirror]]\nlocation = 'm.io'\n"
                    "pull-from-mirror = 'some'\n")
    monkeypatch.setenv("MODELPKG_CONFIG_FILE", str(path))
    result = CliRunner().invoke(cli, ["pull", "x.io/acme/m:1"])
    assert result.exit_code == 3
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert errors == [f"Error: {path}: registry[0].mirror[0].pull-from-mirror must be one of all, digest-only, "
                      "tag-only, not 'some'"]
    assert "Traceback" not in result.output


# ---------------------------------------------------------------------------------------------------------
# pulls through a second registry

@pytest.fixture(scope="module", params=["distribution", "referrers-api"])
def mirror(request, tmp_path_factory):
    """A second anonymous registry, the mirror: distribution 2.8, then go-containerregistry's registry."""
    folder = tmp_path_factory.mktemp("mirror-registry")
    server = start_registry(folder) if request.param == "distribution" else start_referrers_registry(folder)
    yield server
    server.stop()


class Recorder(Progress):
    def __init__(self):
        self.messages: list[str] = []
        self.advanced: dict[str, int] = {}

    def advance(self, task, amount):
        self.advanced[task] = self.advanced.get(task, 0) + amount

    def message(self, text):
        self.messages.append(text)


def configure(tmp_path, monkeypatch, prefix: str, *mirrors: tuple[str, str]) -> None:
    """Write config.toml with ``prefix`` mirrored by (location, pull-from-mirror) pairs, in order."""
    text = f"[[registry]]\nprefix = '{prefix}'\n"
    for location, policy in mirrors:
        text += f"[[registry.mirror]]\nlocation = '{location}'\npull-from-mirror = '{policy}'\n"
    path = tmp_path / "mirrors.toml"
    path.write_text(text)
    monkeypatch.setenv("MODELPKG_CONFIG_FILE", str(path))


def fresh_store(tmp_path, monkeypatch, name: str) -> Store:
    monkeypatch.setenv("MODELPKG_HOME", str(tmp_path / name))
    return Store(config.home())


@pytest.fixture
def published(home, tiny_model, fault_proxy, registry, mirror, tmp_path, monkeypatch):
    """A model pushed to the upstream (behind a counting fault proxy) and to the mirror (``mirror_path``
    prefixes its repository there); returns (upstream proxy, tagged ref, digest ref). The store is left empty."""

    def make(repo: str, *, mirror_path: str = "", on_mirror: bool = True):
        upstream = fault_proxy(registry)
        ref = tiny_model(f"{upstream.host}/{repo}:v1")
        store = Store(config.home())
        digest = push(store, ref)
        if on_mirror:
            on = config.reference(f"{mirror.host}/{mirror_path + '/' if mirror_path else ''}{repo}:v1")
            models.copy(store, ref, on)
            push(store, on)
        upstream.clear()
        fresh_store(tmp_path, monkeypatch, "empty-home")
        return upstream, ref, Reference(ref.host, ref.repository, None, digest)

    return make


def blob_requests(proxy) -> list:
    return proxy.matching("GET", r"/blobs/sha256:")


def model_requests(proxy) -> list:
    """Requests for the model's manifest or blobs (a signature lookup by tag, ``sha256-<hex>.sig``, may go
    to the upstream: digest-only mirrors do not resolve tags)."""
    return [r for r in proxy.requests if not r.path.endswith(".sig") and "/referrers/" not in r.path]


@pytest.mark.registry
def test_a_pull_by_digest_is_served_entirely_by_the_mirror(published, mirror, tmp_path, monkeypatch):
    upstream, _, pinned = published("acme/by-digest")
    configure(tmp_path, monkeypatch, upstream.host, (mirror.host, "digest-only"))
    progress = Recorder()
    entry = pull(Store(config.home()), pinned, progress=progress)
    assert entry.digest == pinned.digest
    assert model_requests(upstream) == []
    assert f"from mirror {mirror.host}/acme/by-digest" in progress.messages
    assert Store(config.home()).verify() == []


@pytest.mark.registry
def test_a_pull_by_tag_resolves_the_tag_upstream_and_takes_blobs_from_a_digest_only_mirror(
        published, mirror, fault_proxy, tmp_path, monkeypatch):
    upstream, tagged, pinned = published("acme/by-tag", mirror_path="cache")
    via = fault_proxy(mirror)
    configure(tmp_path, monkeypatch, upstream.host, (f"{via.host}/cache", "digest-only"))
    entry = pull(Store(config.home()), tagged)
    assert entry.digest == pinned.digest
    assert [(r.method, r.path) for r in model_requests(upstream)] == [("GET", "/v2/acme/by-tag/manifests/v1")]
    assert len(blob_requests(via)) == 2 and not via.matching("GET", "/manifests/v1")  # config + weights


@pytest.mark.registry
def test_an_all_mirror_serves_tags_too_and_a_tag_only_one_is_skipped_for_digests(
        published, mirror, fault_proxy, tmp_path, monkeypatch):
    upstream, tagged, pinned = published("acme/policies")
    via = fault_proxy(mirror)
    configure(tmp_path, monkeypatch, upstream.host, (via.host, "all"))
    pull(Store(config.home()), tagged)
    assert model_requests(upstream) == [] and via.matching("GET", "/manifests/v1")

    configure(tmp_path, monkeypatch, upstream.host, (via.host, "tag-only"))
    fresh_store(tmp_path, monkeypatch, "second")
    via.clear()
    pull(Store(config.home()), pinned)
    assert via.requests == [] and len(blob_requests(upstream)) == 2


@pytest.mark.registry
def test_a_mirror_without_the_model_falls_through_to_the_upstream(published, mirror, tiny_model, tmp_path,
                                                                  monkeypatch):
    push(Store(config.home()), tiny_model(f"{mirror.host}/acme/elsewhere:v1"))  # the blobs, under another name
    upstream, tagged, pinned = published("acme/not-mirrored", on_mirror=False)
    configure(tmp_path, monkeypatch, upstream.host, (mirror.host, "all"))
    progress = Recorder()
    entry = pull(Store(config.home()), tagged, progress=progress)
    assert entry.digest == pinned.digest
    # go-containerregistry's registry does not scope blobs to repositories: it serves the blobs pushed under
    # the other name, and since every byte is checked against its digest they are taken from it.
    assert upstream.matching("GET", "/manifests/v1")
    assert len(blob_requests(upstream)) == (2 if mirror.kind == "distribution" else 0)
    assert any(m.startswith(f"mirror {mirror.host}/acme/not-mirrored failed (model not found")
               for m in progress.messages)


@pytest.mark.registry
def test_a_mirror_that_is_down_falls_through_quickly(published, tmp_path, monkeypatch):
    upstream, _, pinned = published("acme/mirror-down", on_mirror=False)
    down = f"127.0.0.1:{free_port()}"
    configure(tmp_path, monkeypatch, upstream.host, (down, "digest-only"), (f"{down}/other", "digest-only"))
    started = time.monotonic()
    progress = Recorder()
    entry = pull(Store(config.home()), pinned, progress=progress)
    assert entry.digest == pinned.digest and len(blob_requests(upstream)) == 2
    assert time.monotonic() - started < 10
    assert len([m for m in progress.messages if m.startswith(f"mirror {down}")]) == 2


@pytest.mark.registry
def test_a_mirror_serving_wrong_bytes_is_refused_and_the_upstream_used(
        published, mirror, fault_proxy, tmp_path, monkeypatch):
    upstream, _, pinned = published("acme/corrupt-mirror")
    via = fault_proxy(mirror)
    via.add("corrupt", "GET", r"/blobs/sha256:", count=None, offset=3)
    configure(tmp_path, monkeypatch, upstream.host, (via.host, "digest-only"))
    progress = Recorder()
    store = Store(config.home())
    entry = pull(store, pinned, progress=progress)
    assert entry.digest == pinned.digest
    assert blob_requests(via) and len(blob_requests(upstream)) >= 1
    assert store.verify() == []
    assert any("does not match its digest" in m for m in progress.messages)
    # the bar never counts the refused bytes: each blob's total is its size
    _, manifest = store.manifest(pinned)
    sizes = {str(b.digest): b.size for b in manifest.blobs()}
    assert {k: v for k, v in progress.advanced.items() if k in sizes} == {k: sizes[k] for k in progress.advanced}


@pytest.mark.registry
def test_a_mirror_serving_another_manifest_is_refused(published, mirror, fault_proxy, tmp_path, monkeypatch):
    upstream, _, pinned = published("acme/other-manifest")
    via = fault_proxy(mirror)
    via.add("corrupt", "GET", r"/manifests/sha256:", count=None, offset=20)
    configure(tmp_path, monkeypatch, upstream.host, (via.host, "digest-only"))
    entry = pull(Store(config.home()), pinned)
    assert entry.digest == pinned.digest
    assert upstream.matching("GET", r"/manifests/sha256:")


@pytest.mark.registry
def test_push_never_uses_a_mirror(home, tiny_model, registry, mirror, fault_proxy, tmp_path, monkeypatch):
    via = fault_proxy(mirror)
    configure(tmp_path, monkeypatch, registry.host, (via.host, "all"))
    ref = tiny_model(f"{registry.host}/acme/push-no-mirror:v1")
    push(Store(config.home()), ref)
    assert via.requests == []


@pytest.mark.registry
def test_the_cli_says_which_source_served_the_pull(published, mirror, tmp_path, monkeypatch):
    upstream, _, pinned = published("acme/cli-json")
    configure(tmp_path, monkeypatch, upstream.host, (mirror.host, "digest-only"))
    result = CliRunner().invoke(cli, ["pull", "--json", str(pinned)])
    assert result.exit_code == 0, result.output
    assert f'{{"status": "from mirror {mirror.host}/acme/cli-json"}}' in result.stdout.splitlines()
    assert model_requests(upstream) == []


# ---------------------------------------------------------------------------------------------------------
# distribution in proxy mode as a pull-through cache: the fleet case


def wait_until_cached(cache, blobs, timeout: float = 20.0) -> None:
    """Until ``cache`` (a distribution registry) holds every blob in its own storage."""
    def held(blob) -> bool:
        path = cache.storage / "docker/registry/v2/blobs/sha256" / blob.digest.hex[:2] / blob.digest.hex / "data"
        return path.exists() and path.stat().st_size == blob.size

    deadline = time.monotonic() + timeout
    while not all(held(b) for b in blobs):
        assert time.monotonic() < deadline, "the pull-through cache did not store the blobs"
        time.sleep(0.05)


@pytest.mark.registry
def test_distribution_in_proxy_mode_is_a_pull_through_cache(published, fault_proxy, tmp_path, monkeypatch):
    upstream, tagged, pinned = published("acme/fleet", on_mirror=False)
    cache = start_registry(tmp_path / "cache", config={"proxy": {"remoteurl": upstream.url}})
    try:
        configure(tmp_path, monkeypatch, upstream.host, (cache.host, "all"))
        store = Store(config.home())
        entry = pull(store, tagged)  # machine 1 fills the cache
        assert entry.digest == pinned.digest
        assert upstream.bytes_sent("GET", r"/blobs/") > 0
        # distribution 2.8 streams a missed blob to the client and stores it with a second, background fetch
        # from the remote; a pull that arrives before that finished goes to the upstream again. Wait for it.
        _, manifest = store.manifest(tagged)
        wait_until_cached(cache, manifest.blobs())
        upstream.clear()
        for machine in range(3):  # the rest of the fleet: by digest, nothing from the upstream's blobs
            fresh_store(tmp_path, monkeypatch, f"machine-{machine}")
            assert pull(Store(config.home()), pinned).digest == pinned.digest
            assert Store(config.home()).verify() == []
        assert blob_requests(upstream) == []
    finally:
        cache.stop()


# ---------------------------------------------------------------------------------------------------------
# modelpkg mirrors


def test_the_mirrors_command_lists_the_config_and_the_sources_of_a_name(home, tmp_path, monkeypatch):
    result = CliRunner().invoke(cli, ["mirrors"])
    assert result.exit_code == 0 and result.stdout == "" and "no mirrors configured" in result.stderr
    configure(tmp_path, monkeypatch, "registry.ollama.ai", ("mirror.local:5000/cache", "digest-only"),
              ("localhost:5001", "all"))
    result = CliRunner().invoke(cli, ["mirrors"])
    assert result.stdout.splitlines() == ["registry.ollama.ai\tmirror.local:5000/cache\tdigest-only",
                                          "registry.ollama.ai\tlocalhost:5001\tall"]
    result = CliRunner().invoke(cli, ["mirrors", "gemma3:1b"])
    assert result.stdout.splitlines() == ["mirror.local:5000/cache/library/gemma3\tmirror (digest-only)",
                                          "localhost:5001/library/gemma3\tmirror (all)",
                                          "registry.ollama.ai/library/gemma3\tupstream"]
    result = CliRunner().invoke(cli, ["mirrors", "--json", "gemma3@sha256:" + "b" * 64])
    data = json.loads(result.stdout)
    assert [s["name"] for s in data["sources"]] == ["mirror.local:5000/cache/library/gemma3",
                                                    "localhost:5001/library/gemma3",
                                                    "registry.ollama.ai/library/gemma3"]
    assert data["sources"][0]["resolves-tags"] is False and data["config"].endswith("mirrors.toml")
    assert json.loads(CliRunner().invoke(cli, ["mirrors", "--json"]).stdout)["registries"][0]["mirrors"][1] == {
        "location": "localhost:5001", "insecure": False, "pull-from-mirror": "all"}
    assert "Examples:" in CliRunner().invoke(cli, ["mirrors", "--help"]).stdout


@pytest.mark.registry
def test_a_mirror_uses_the_credentials_of_its_own_host(published, basic_registry, tmp_path, monkeypatch):
    upstream, tagged, pinned = published("acme/private-mirror", on_mirror=False)
    # seed the private mirror with the same model (pushed with its own credentials)
    key = "".join(c if c.isalnum() else "_" for c in basic_registry.host.upper())
    monkeypatch.setenv(f"MODELPKG_REGISTRY_USER_{key}", basic_registry.username)
    monkeypatch.setenv(f"MODELPKG_REGISTRY_PASSWORD_{key}", basic_registry.password)
    seed = fresh_store(tmp_path, monkeypatch, "seed")
    pull(seed, tagged)
    on_mirror = config.reference(f"{basic_registry.host}/acme/private-mirror:v1")
    models.copy(seed, tagged, on_mirror)
    push(seed, on_mirror)
    configure(tmp_path, monkeypatch, upstream.host, (basic_registry.host, "digest-only"))

    upstream.clear()
    entry = pull(fresh_store(tmp_path, monkeypatch, "with-login"), pinned)
    assert entry.digest == pinned.digest and model_requests(upstream) == []

    monkeypatch.delenv(f"MODELPKG_REGISTRY_USER_{key}")  # no credentials for the mirror: refused, falls through
    progress = Recorder()
    entry = pull(fresh_store(tmp_path, monkeypatch, "without-login"), pinned, progress=progress)
    assert entry.digest == pinned.digest and len(blob_requests(upstream)) == 2
    assert any(m.startswith(f"mirror {basic_registry.host}/acme/private-mirror failed (authentication required")
               for m in progress.messages), progress.messages


# ---------------------------------------------------------------------------------------------------------
# the client a pull reads through (modelpkg.registry.connect)


def test_both_clients_offer_every_member_of_the_pull_interface():
    members = sorted(n for n in vars(PullClient) if not n.startswith("_"))
    assert members == ["close", "download_blob", "get_manifest", "host", "raise_for", "request", "url"]
    for cls in (RegistryClient, MirroredClient):
        for name in members:
            if name == "host":
                continue  # an attribute of RegistryClient, a property forwarding to the upstream's on MirroredClient
            have = inspect.signature(getattr(cls, name)).parameters
            for param in inspect.signature(getattr(PullClient, name)).parameters.values():
                assert param.name in have and have[param.name].kind == param.kind, (cls.__name__, name, param)
    upstream = RegistryClient("x.io")
    ref = parse_reference("x.io/acme/m:1")
    mirrored = MirroredClient(ref, [mirrors.Source("x.io", "acme/m")], upstream, connect.mirror_client)
    assert mirrored.host == "x.io" and mirrored.url("acme/m", "blobs", "sha256:ab") == upstream.url(
        "acme/m", "blobs", "sha256:ab")


def test_pull_client_puts_the_configured_mirrors_in_front(home, tmp_path, monkeypatch):
    ref = parse_reference("x.io/acme/m:1")
    monkeypatch.delenv("MODELPKG_CONFIG_FILE", raising=False)
    made, own = connect.pull_client(ref)
    assert isinstance(made, RegistryClient) and made.host == "x.io" and own
    made.close()
    given = RegistryClient("x.io")
    assert connect.pull_client(ref, given) == (given, False)  # the caller's client is the caller's to close

    configure(tmp_path, monkeypatch, "x.io", ("m.io:5000/cache", "all"))
    wrapped, own = connect.pull_client(ref, given)
    assert isinstance(wrapped, MirroredClient) and own and wrapped.upstream is given and not wrapped.owns_upstream
    assert [s.name for s in wrapped.sources] == ["m.io:5000/cache/acme/m", "x.io/acme/m"]
    with connect.mirror_client(wrapped.sources[0]) as fast:
        assert (fast.host, fast.retries, fast.timeout) == ("m.io:5000", connect.MIRROR_RETRIES, connect.MIRROR_TIMEOUT)
    wrapped.close()
