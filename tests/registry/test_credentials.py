"""Where registry credentials come from: env, modelpkg's login file, Docker's config (auths, credHelpers,
credsStore through real ``docker-credential-*`` scripts on PATH) and podman's auth.json; and where they go:
the host-less ``MODELPKG_REGISTRY_USER`` / ``_PASSWORD`` only to the default registry and the hosts listed for
them, checked against real registries (the Authorization headers a second loopback registry received),
directly and through ``serve``'s ``/api/pull``."""

from __future__ import annotations

import base64
import json
import os
import re
import stat
import threading

import pytest
import requests

from modelpkg.base import config
from modelpkg.core.errors import AuthError, ModelpkgError, NotFoundError
from modelpkg.registry import credentials as creds
from modelpkg.registry.credentials import Credential


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No real Docker, podman or env credentials leak into these tests."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MODELPKG_CONFIG_DIR", str(tmp_path / "config"))
    for name in list(os.environ):
        if name.startswith("MODELPKG_REGISTRY") or name in ("DOCKER_CONFIG", "REGISTRY_AUTH_FILE",
                                                           "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME"):
            monkeypatch.delenv(name)
    return tmp_path


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def write_helper(folder, name: str, script: str):
    folder.mkdir(exist_ok=True)
    path = folder / f"docker-credential-{name}"
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)
    return path


def test_nothing_configured_is_anonymous():
    assert creds.lookup("ghcr.io") is None


def test_env_per_host_wins_over_generic(monkeypatch):
    monkeypatch.setenv("MODELPKG_REGISTRY_USER", "generic")
    monkeypatch.setenv("MODELPKG_REGISTRY_PASSWORD", "g-secret")
    monkeypatch.setenv("MODELPKG_REGISTRY_USER_LOCALHOST_5000", "local")
    monkeypatch.setenv("MODELPKG_REGISTRY_PASSWORD_LOCALHOST_5000", "l-secret")
    assert creds.lookup("localhost:5000") == Credential("local", "l-secret",
                                                        source="MODELPKG_REGISTRY_USER_LOCALHOST_5000")
    assert creds.lookup("registry.ollama.ai").username == "generic"  # the default registry
    assert creds.lookup("ghcr.io") is None  # any other host: not without being named for it
    monkeypatch.setenv("MODELPKG_REGISTRY_HOST", "quay.io")  # the generic pair for that host instead
    assert creds.lookup("ghcr.io") is None and creds.lookup("registry.ollama.ai") is None
    assert creds.lookup("quay.io").username == "generic"


def test_the_host_less_login_goes_only_to_the_hosts_it_is_for(monkeypatch):
    monkeypatch.setenv("MODELPKG_REGISTRY_USER", "ci")
    monkeypatch.setenv("MODELPKG_REGISTRY_PASSWORD", "ci-secret")
    assert creds.lookup("registry.ollama.ai") == Credential("ci", "ci-secret", source="MODELPKG_REGISTRY_USER")
    for other in ("ghcr.io", "registry.ollama.ai:443", "evil.example.com", "localhost:5000", "127.0.0.1:5000"):
        assert creds.lookup(other) is None, other
    monkeypatch.setenv("MODELPKG_REGISTRY", "ghcr.io")  # the default registry moves, and the login with it
    assert creds.lookup("ghcr.io").username == "ci"
    assert creds.lookup("registry.ollama.ai") is None
    monkeypatch.setenv("MODELPKG_REGISTRY_HOSTS", "Mirror.Example.com, localhost:5000 https://quay.io/v2/")
    for listed in ("ghcr.io", "mirror.example.com", "localhost:5000", "quay.io"):
        assert creds.lookup(listed).username == "ci", listed
    for other in ("registry.ollama.ai", "localhost:5001", "mirror.example.com.evil.io", "example.com"):
        assert creds.lookup(other) is None, other
    monkeypatch.setenv("MODELPKG_REGISTRY", "docker.io")  # Docker Hub's names are one host
    assert creds.lookup("registry-1.docker.io").username == "ci"
    # per-host variables are configured for their host and still apply there, listed or not
    monkeypatch.setenv("MODELPKG_REGISTRY_USER_EVIL_EXAMPLE_COM", "own")
    monkeypatch.setenv("MODELPKG_REGISTRY_PASSWORD_EVIL_EXAMPLE_COM", "own-secret")
    assert creds.lookup("evil.example.com").password == "own-secret"


def test_login_file_round_trip_is_0600_and_logout_removes_it():
    path = creds.save_login("localhost:5000", Credential("alice", "s3cret"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["auths"]["localhost:5000"]["auth"] == b64("alice:s3cret")
    found = creds.lookup("localhost:5000")
    assert (found.username, found.password) == ("alice", "s3cret")
    creds.save_login("localhost:5000", Credential("bob", "other"))  # replaces, does not duplicate
    assert creds.lookup("localhost:5000").username == "bob"
    creds.remove_login("localhost:5000")
    assert creds.lookup("localhost:5000") is None
    with pytest.raises(NotFoundError, match="not logged in to localhost:5000"):
        creds.remove_login("localhost:5000")


def test_secrets_never_show_in_repr():
    cred = Credential("alice", "hunter2", identity_token="tok-123")
    assert "hunter2" not in repr(cred) and "tok-123" not in repr(cred) and "hunter2" not in str(cred)


def test_docker_config_auths_with_docker_config_env(tmp_path, monkeypatch):
    folder = tmp_path / "dockercfg"
    folder.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(folder))
    (folder / "config.json").write_text(json.dumps({"auths": {
        "https://registry.example.com/v2/": {"auth": b64("carol:pw:with:colons")},
        "https://index.docker.io/v1/": {"auth": b64("hubuser:hubpw")},
        "token.example.com": {"identitytoken": "refresh-abc"},
    }}))
    found = creds.lookup("registry.example.com")
    assert (found.username, found.password) == ("carol", "pw:with:colons")
    assert creds.lookup("registry-1.docker.io").username == "hubuser"  # Docker Hub's historical key
    assert creds.lookup("token.example.com").identity_token == "refresh-abc"
    assert creds.lookup("other.example.com") is None


def test_cred_helpers_and_creds_store(tmp_path, monkeypatch):
    folder = tmp_path / "dockercfg"
    folder.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(folder))
    bin_dir = tmp_path / "bin"
    log = tmp_path / "calls"
    write_helper(bin_dir, "pass", f"""read server
echo "pass $1 $server" >> {log}
printf '{{"ServerURL":"%s","Username":"helper-user","Secret":"helper-secret"}}' "$server"
""")
    write_helper(bin_dir, "store", f"""read server
echo "store $1 $server" >> {log}
if [ "$server" = "stored.example.com" ]; then
  printf '{{"ServerURL":"%s","Username":"<token>","Secret":"identity-xyz"}}' "$server"
else
  echo "credentials not found in native keychain"; exit 1
fi
""")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    (folder / "config.json").write_text(json.dumps({
        "credHelpers": {"helped.example.com": "pass"},
        "credsStore": "store",
        "auths": {"stored.example.com": {}, "plain.example.com": {"auth": b64("dave:pw")}},
    }))
    helped = creds.lookup("helped.example.com")
    assert (helped.username, helped.password, helped.source) == ("helper-user", "helper-secret",
                                                                 "docker-credential-pass")
    stored = creds.lookup("stored.example.com")
    assert stored.identity_token == "identity-xyz" and not stored.password
    # the store has nothing for this host: the auths entry is used
    assert creds.lookup("plain.example.com").username == "dave"
    assert log.read_text().splitlines() == ["pass get helped.example.com", "store get stored.example.com",
                                            "store get plain.example.com"]


def test_a_missing_helper_is_skipped_and_a_broken_one_is_a_clear_error(tmp_path, monkeypatch):
    folder = tmp_path / "dockercfg"
    folder.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(folder))
    (folder / "config.json").write_text(json.dumps({"credsStore": "desktop-not-installed",
                                                   "auths": {"x.example.com": {"auth": b64("eve:pw")}}}))
    assert creds.lookup("x.example.com").username == "eve"
    bin_dir = tmp_path / "bin"
    write_helper(bin_dir, "broken", "echo 'keychain locked' >&2; exit 3\n")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    (folder / "config.json").write_text(json.dumps({"credHelpers": {"x.example.com": "broken"}}))
    with pytest.raises(AuthError, match="docker-credential-broken failed"):
        creds.lookup("x.example.com")


def test_podman_auth_file(tmp_path, monkeypatch):
    path = tmp_path / "podman-auth.json"
    path.write_text(json.dumps({"auths": {"quay.io": {"auth": b64("frank:pw")}}}))
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(path))
    assert creds.lookup("quay.io").username == "frank"
    monkeypatch.delenv("REGISTRY_AUTH_FILE")
    runtime = tmp_path / "run"
    (runtime / "containers").mkdir(parents=True)
    (runtime / "containers" / "auth.json").write_text(json.dumps({"auths": {"quay.io": {"auth": b64("gina:pw")}}}))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    assert creds.lookup("quay.io").username == "gina"


def test_order_env_then_login_then_docker_then_podman(tmp_path, monkeypatch):
    folder = tmp_path / "dockercfg"
    folder.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(folder))
    (folder / "config.json").write_text(json.dumps({"auths": {"r.example.com": {"auth": b64("docker:pw")}}}))
    podman = tmp_path / "podman.json"
    podman.write_text(json.dumps({"auths": {"r.example.com": {"auth": b64("podman:pw")}}}))
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(podman))
    assert creds.lookup("r.example.com").username == "docker"
    creds.save_login("r.example.com", Credential("login", "pw"))
    assert creds.lookup("r.example.com").username == "login"
    monkeypatch.setenv("MODELPKG_REGISTRY_USER", "env")
    monkeypatch.setenv("MODELPKG_REGISTRY_PASSWORD", "pw")
    assert creds.lookup("r.example.com").username == "login"  # the host-less pair is not for this host
    monkeypatch.setenv("MODELPKG_REGISTRY_HOSTS", "r.example.com")
    assert creds.lookup("r.example.com").username == "env"


def test_a_broken_config_file_is_one_clear_error(tmp_path, monkeypatch):
    folder = tmp_path / "dockercfg"
    folder.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(folder))
    (folder / "config.json").write_text("{not json")
    with pytest.raises(Exception, match=r"config\.json is not valid JSON"):
        creds.lookup("r.example.com")


# ---------------------------------------------------------------------------------------------------------
# where the host-less login goes, against real registries: two loopback proxies in front of one Basic-auth
# registry are two hosts, and each records the Authorization headers it received


def _carries(proxy, user: str, password: str) -> list[str]:
    """The Authorization headers ``proxy`` received that hold the password (in clear or Basic-encoded)."""
    found = []
    for record in proxy.requests:
        header = record.headers.get("Authorization") or ""
        scheme, _, value = header.partition(" ")
        decoded = ""
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(value).decode("utf-8", "replace")
            except ValueError:
                decoded = ""
        if password in header or password in decoded:
            found.append(header)
    return found


@pytest.fixture
def two_hosts(basic_registry, fault_proxy, tiny_model, monkeypatch):
    """``(default, other, repository)``: two proxies of ``basic_registry``, the model pushed there (with that
    host's own variables, then unset), none of it in the local store; the host-less login set, and the
    first proxy the default registry."""
    from modelpkg.ops.models import remove
    from modelpkg.ops.push import push
    from modelpkg.store import Store

    default, other = fault_proxy(basic_registry), fault_proxy(basic_registry)
    repository = "acme/lent:v1"
    key = re.sub(r"[^A-Z0-9]", "_", basic_registry.host.upper())  # 127.0.0.1:5000 -> 127_0_0_1_5000
    monkeypatch.setenv(f"MODELPKG_REGISTRY_USER_{key}", basic_registry.username)
    monkeypatch.setenv(f"MODELPKG_REGISTRY_PASSWORD_{key}", basic_registry.password)
    ref = tiny_model(f"{basic_registry.host}/{repository}")
    push(Store(config.home()), ref, insecure=True)
    remove(Store(config.home()), [ref])
    monkeypatch.delenv(f"MODELPKG_REGISTRY_USER_{key}")
    monkeypatch.delenv(f"MODELPKG_REGISTRY_PASSWORD_{key}")
    monkeypatch.setenv("MODELPKG_REGISTRY_USER", basic_registry.username)
    monkeypatch.setenv("MODELPKG_REGISTRY_PASSWORD", basic_registry.password)
    monkeypatch.setenv("MODELPKG_REGISTRY", default.host)
    return default, other, repository


@pytest.mark.registry
def test_a_pull_from_another_host_gets_no_password_the_default_and_listed_hosts_do(two_hosts, basic_registry,
                                                                                   monkeypatch):
    from modelpkg.ops.pull import pull
    from modelpkg.store import Store

    default, other, repository = two_hosts
    user, password = basic_registry.username, basic_registry.password
    store = Store(config.home())
    with pytest.raises(AuthError, match="authentication required"):
        pull(store, config.reference(f"{other.host}/{repository}"), insecure=True)
    assert other.matching() and _carries(other, user, password) == []
    pull(store, config.reference(repository), insecure=True)  # no host: the default registry, which gets them
    assert _carries(default, user, password)
    monkeypatch.setenv("MODELPKG_REGISTRY_HOSTS", f"localhost:1,{other.host}")  # named for it: now it gets them
    pull(store, config.reference(f"{other.host}/{repository}"), insecure=True)
    assert _carries(other, user, password)
    assert store.manifest(config.reference(f"{other.host}/{repository}"))


@pytest.mark.registry
def test_serve_lends_no_password_to_a_host_a_client_names(two_hosts, basic_registry):
    from modelpkg.server.app import make_server
    from modelpkg.store import Store

    default, other, repository = two_hosts
    user, password = basic_registry.username, basic_registry.password
    server = make_server(Store(config.home()), "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        bodies = []
        for stream in (False, True):
            answer = requests.post(server.url + "/api/pull", timeout=60, json={
                "model": f"{other.host}/{repository}", "insecure": True, "stream": stream})
            bodies.append(answer.text)
            assert "authentication required" in answer.text
        assert other.matching() and _carries(other, user, password) == []
        answer = requests.post(server.url + "/api/pull", timeout=60,
                               json={"model": repository, "insecure": True, "stream": False})
        assert answer.json() == {"status": "success"}
        assert _carries(default, user, password)
        assert not any(password in body for body in bodies)
    finally:
        server.shutdown()
        server.close()


@pytest.mark.registry
def test_a_token_service_behind_another_host_gets_no_password(token_registry, token_server, fault_proxy,
                                                              tiny_model, monkeypatch):
    """A registry a name points at sends the client to its token service with the login: not the operator's."""
    from modelpkg.ops.pull import pull
    from modelpkg.store import Store

    other = fault_proxy(token_registry)
    monkeypatch.setenv("MODELPKG_REGISTRY_USER", token_registry.username)
    monkeypatch.setenv("MODELPKG_REGISTRY_PASSWORD", token_registry.password)
    with pytest.raises(ModelpkgError):  # refused anonymously (with the login: not found, as no one pushed it)
        pull(Store(config.home()), config.reference(f"{other.host}/acme/token-lent:v1"), insecure=True)
    assert token_server.requests  # the challenge was followed, anonymously
    for request in token_server.requests:
        header = request.headers.get("Authorization") or ""
        assert request.user is None and token_registry.password not in header, request
        assert base64.b64encode(f"{token_registry.username}:{token_registry.password}".encode()).decode() not in header
