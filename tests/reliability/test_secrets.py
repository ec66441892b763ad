"""Secrets: passwords and tokens never appear in output, errors, tracebacks or the store; credential files
are private; TLS is verified unless the user says otherwise for that host.

The CLI runs as a real subprocess (``python -m modelpkg``) so everything it writes is seen, with
``MODELPKG_DEBUG`` off and on (tracebacks then carry every chained exception's message), through logins,
pushes and pulls that succeed and that fail. Afterwards stdout, stderr, every file of the store and of the
config folder (but the 0600 login file) are searched for each secret in plain text, base64 (standard and
URL-safe, of ``user:password`` and of the password alone) and, for bearer tokens, each JWT part.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import os
import secrets
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from capabilities import missing
from modelpkg.base import config
from modelpkg.core.errors import NetworkError
from modelpkg.ops.pull import pull
from modelpkg.registry.client import RegistryClient
from modelpkg.store import Store
from registry_env import _registry_config, free_port, require_registry_binary

pytestmark = pytest.mark.registry


def _forms(secret: str, user: str | None = None) -> set[bytes]:
    """A secret as it could leak: itself, and base64 of it and of ``user:secret`` (both alphabets)."""
    out = {secret.encode()}
    for raw in [secret.encode()] + ([f"{user}:{secret}".encode()] if user else []):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            out.add(encode(raw))
            out.add(encode(raw).rstrip(b"="))
    return {s for s in out if len(s) >= 8}


class Cli:
    """Runs ``python -m modelpkg`` with an isolated environment and keeps everything it printed."""

    def __init__(self, tmp_path: Path, debug: str):
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELPKG_", "DOCKER_", "REGISTRY_AUTH"))}
        self.home, self.config = Path(os.environ["MODELPKG_HOME"]), tmp_path / "config"
        self.env.update(MODELPKG_HOME=str(self.home), MODELPKG_CONFIG_DIR=str(self.config), MODELPKG_DEBUG=debug,
                        DOCKER_CONFIG=str(tmp_path / "docker"), REGISTRY_AUTH_FILE=str(tmp_path / "podman.json"),
                        XDG_RUNTIME_DIR=str(tmp_path / "run"), XDG_CONFIG_HOME=str(tmp_path / "xdg"))
        self.printed: list[tuple[str, bytes]] = []

    def __call__(self, *args: str, input: str | None = None, ok: bool, env: dict | None = None):
        done = subprocess.run([sys.executable, "-m", "modelpkg", *args], input=(input or "").encode(),
                              capture_output=True, env={**self.env, **(env or {})}, timeout=120)
        self.printed.append((" ".join(args), done.stdout + done.stderr))
        assert (done.returncode == 0) == ok, (args, done.stderr.decode())
        if not ok:
            errors = [line for line in done.stderr.decode().splitlines() if line.startswith("Error:")]
            assert len(errors) == 1, done.stderr.decode()
        return done

    def leaks(self, secret_forms: set[bytes], skip: Path | None = None) -> list[str]:
        found = []
        for what, data in self.printed:
            found += [f"output of {what!r}: {s!r}" for s in secret_forms if s in data]
        for folder in (self.home, self.config):
            for path in folder.rglob("*"):
                if path.is_file() and path != skip:
                    data = path.read_bytes()
                    found += [f"{path}: {s!r}" for s in secret_forms if s in data]
        return found


def _check_login_file(cli: Cli) -> Path:
    path = cli.config / "auth.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(cli.config.stat().st_mode) == 0o700  # created by login: private too
    return path


@pytest.mark.parametrize("debug", ["0", "1"])
def test_basic_auth_passwords_never_leak(basic_registry, tiny_model, tmp_path, debug):
    host, user, password = basic_registry.host, basic_registry.username, basic_registry.password
    wrong = "Wr0ng-" + secrets.token_urlsafe(12)
    name = f"{host}/leak/basic-{debug}:v1"
    tiny_model(name)
    cli = Cli(tmp_path, debug)

    cli("login", host, "-u", user, "--password-stdin", input=wrong + "\n", ok=False)
    cli("login", host, "-u", user, "--password-stdin", input=password + "\n", ok=True)
    login_file = _check_login_file(cli)
    assert base64.b64encode(f"{user}:{password}".encode()) in login_file.read_bytes()
    cli("push", name, ok=True)
    cli("rm", name, ok=True)
    cli("pull", name, ok=True)
    cli("show", name, "--json", ok=True)
    cli("pull", f"{host}/leak/missing:v1", ok=False)
    cli("pull", name, ok=False, env={"MODELPKG_REGISTRY_USER": user, "MODELPKG_REGISTRY_PASSWORD": wrong,
                                     "MODELPKG_REGISTRY_HOSTS": host})
    cli("pull", f"{user}:{password}@{host}/leak/typed:v1", ok=False)  # a password typed into a name
    cli("login", f"https://{user}:{password}@{host}", "-u", user, "--password-stdin", input=wrong, ok=False)
    assert cli.leaks(_forms(password, user) | _forms(wrong, user), skip=login_file) == []

    cli("logout", host, ok=True)
    cli("rm", name, ok=True)
    cli("pull", name, ok=False)  # no credentials left: refused, and the file keeps no secret either
    assert cli.leaks(_forms(password, user) | _forms(wrong, user)) == []


# A password typed as URL user info into a model name or a registry host: each command refuses it with one
# error line that shows the text with the password masked. 127.0.0.1:9 (discard) is never contacted: the text
# is refused before any request.
TYPED = [("pull", "{auth}@{host}/acme/typed:v1"), ("pull", "https://{auth}@{host}/acme/typed:v1"),
         ("push", "{auth}@{host}/acme/typed:v1"), ("show", "{auth}@{host}/acme/typed:v1"),
         ("login", "{auth}@{host}"), ("login", "https://{auth}@{host}"), ("logout", "{auth}@{host}"),
         ("logout", "https://{auth}@{host}/v2/")]


@pytest.mark.parametrize("debug", ["0", "1"])
def test_a_password_typed_into_a_name_or_host_is_shown_masked(home, tmp_path, debug):
    user, password, host = "alice", "Typed-" + secrets.token_urlsafe(12), "127.0.0.1:9"
    cli = Cli(tmp_path, debug)
    for command, form in TYPED:
        text = form.format(auth=f"{user}:{password}", host=host)
        login = ["-u", user, "--password-stdin"] if command == "login" else []
        done = cli(command, text, *login, input="x\n", ok=False)
        error = next(line for line in done.stderr.decode().splitlines() if line.startswith("Error:"))
        masked = text.replace(f"{user}:{password}@", f"{user}:***@")
        assert repr(masked) in error, (command, error)
    assert cli.leaks(_forms(password, user)) == []


@pytest.mark.parametrize("debug", ["0", "1"])
def test_tokens_and_token_passwords_never_leak(token_registry, token_server, fault_proxy, tiny_model, tmp_path,
                                               debug):
    host, user, password = token_registry.host, token_registry.username, token_registry.password
    wrong = "Wr0ng-" + secrets.token_urlsafe(12)
    name = f"{host}/leak/token-{debug}:v1"
    _, manifest = Store(config.home()).manifest(tiny_model(name))
    weights = max(manifest.layers, key=lambda d: d.size).digest
    cli = Cli(tmp_path, debug)

    cli("login", host, "-u", user, "--password-stdin", input=wrong + "\n", ok=False)
    cli("login", host, "-u", user, "--password-stdin", input=password + "\n", ok=True)
    login_file = _check_login_file(cli)
    cli("push", name, ok=True)
    cli("rm", name, ok=True)
    cli("pull", name, ok=True)
    cli("pull", f"{host}/leak/missing:v1", ok=False)
    token_server.fail_status, token_server.fail_count = 500, 100  # the token service fails
    cli("rm", name, ok=True)
    cli("pull", name, ok=False)
    token_server.fail_count = 0
    # tokens expire during a pull: each lives 2 s (the client uses one for 1 s) and the weights GET breaks
    # twice, 1.3 s after it started, so each resume refreshes first; refreshed, never shown
    token_server.expires_in = 2
    proxy = fault_proxy(token_registry)
    cuts = proxy.add("truncate", "GET", f"/blobs/{weights}", count=2, after=100, seconds=1.3)
    started = time.monotonic()
    cli("pull", f"{proxy.host}/leak/token-{debug}:v1", ok=True,
        env={"MODELPKG_REGISTRY_USER": user, "MODELPKG_REGISTRY_PASSWORD": password,
             "MODELPKG_REGISTRY_HOSTS": proxy.host})
    assert cuts.fired == 2
    assert len([i for i in token_server.issued if i.at >= started]) == 1 + 2  # the first token, two refreshes
    tokens = [issued.token for issued in token_server.issued]
    forms = _forms(password, user) | _forms(wrong, user)
    for token in tokens:
        forms |= {token.encode(), *(part.encode() for part in token.split(".")[1:] if len(part) >= 16)}
    assert cli.leaks(forms, skip=login_file) == []


# ---------------------------------------------------------------------------------------------------------
# TLS: a registry with a self-signed certificate on this machine's LAN address (not loopback, so modelpkg
# speaks https to it as it would to any remote registry)


def _lan_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def _certificate(folder: Path, address: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "modelpkg-tls-test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(address))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture
def tls_registry(tmp_path):
    address = _lan_address()
    if address is None:
        missing("no non-loopback address to serve TLS on")
    binary = require_registry_binary()
    cert, key = _certificate(tmp_path / "tls", address)
    port = free_port(address)
    storage = tmp_path / "tls" / "storage"
    storage.mkdir()
    cfg = _registry_config(port, storage, None, {"http": {"addr": f"{address}:{port}",
                                                          "tls": {"certificate": str(cert), "key": str(key)}}})
    (tmp_path / "tls" / "config.yml").write_text(json.dumps(cfg))
    with open(tmp_path / "tls" / "registry.log", "wb") as log:
        process = subprocess.Popen([binary, "serve", str(tmp_path / "tls" / "config.yml")], stdout=log,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                requests.get(f"https://{address}:{port}/v2/", verify=str(cert), timeout=1)
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline or process.poll() is not None:
                    pytest.fail((tmp_path / "tls" / "registry.log").read_text())
                time.sleep(0.05)
        yield f"{address}:{port}", cert
    finally:
        process.kill()
        process.wait(timeout=5)


def test_tls_is_verified_unless_the_user_says_otherwise_for_that_host(tls_registry, registry, tiny_model, tmp_path,
                                                                     monkeypatch):
    host, cert = tls_registry
    monkeypatch.delenv("MODELPKG_CA_BUNDLE", raising=False)
    name = f"{host}/tls/model:v1"
    ref = tiny_model(name)
    cli = Cli(tmp_path, "0")
    refused = cli("push", name, ok=False)
    assert b"TLS" in refused.stderr and b"--ca-bundle" in refused.stderr
    cli("push", "--ca-bundle", str(cert), name, ok=True)
    cli("rm", name, ok=True)
    refused = cli("pull", name, ok=False)
    assert b"Error: TLS connection to " + host.encode() in refused.stderr
    assert not any(Store(config.home()).refs())

    # --insecure (plain http) for another host, in the same process, leaves this one verified
    with RegistryClient(registry.host, insecure=True) as other:
        other.head_blob("tls/none", "sha256:" + "0" * 64)
    with pytest.raises(NetworkError, match="TLS connection"):
        pull(Store(config.home()), ref)
    # an insecure mirror configured for another registry changes nothing for this one
    (tmp_path / "config").mkdir(exist_ok=True)
    (tmp_path / "config" / "config.toml").write_text(
        f'[[registry]]\nprefix = "{registry.host}"\n[[registry.mirror]]\nlocation = "{host}"\ninsecure = true\n')
    cli("pull", name, ok=False)
    # --insecure for this host means plain http, which a TLS registry refuses: still no unverified TLS
    cli("pull", "--insecure", name, ok=False)
    assert not any(Store(config.home()).refs())

    cli("pull", "--ca-bundle", str(cert), name, ok=True)
    assert Store(config.home()).verify() == []
