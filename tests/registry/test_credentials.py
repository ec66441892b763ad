"""Where registry credentials come from: env, modelpkg's login file, Docker's config (auths, credHelpers,
credsStore through real ``docker-credential-*`` scripts on PATH) and podman's auth.json."""

from __future__ import annotations

import base64
import json
import os
import stat

import pytest

from modelpkg.core.errors import AuthError, NotFoundError
from modelpkg.registry import credentials as creds
from modelpkg.registry.credentials import Credential


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No real Docker, podman or env credentials leak into these tests."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MODELPKG_CONFIG_DIR", str(tmp_path / "config"))
    for name in list(os.environ):
        if name.startswith("MODELPKG_REGISTRY_") or name in ("DOCKER_CONFIG", "REGISTRY_AUTH_FILE",
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
    assert creds.lookup("ghcr.io").username == "generic"
    monkeypatch.setenv("MODELPKG_REGISTRY_HOST", "quay.io")  # the generic pair only for that host
    assert creds.lookup("ghcr.io") is None
    assert creds.lookup("quay.io").username == "generic"


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
    assert creds.lookup("r.example.com").username == "env"


def test_a_broken_config_file_is_one_clear_error(tmp_path, monkeypatch):
    folder = tmp_path / "dockercfg"
    folder.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(folder))
    (folder / "config.json").write_text("{not json")
    with pytest.raises(Exception, match=r"config\.json is not valid JSON"):
        creds.lookup("r.example.com")
