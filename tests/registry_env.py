"""Registry test environment: a real CNCF distribution registry, a Docker token server and a fault proxy.

Loaded as a pytest plugin (``pytest_plugins = ["registry_env"]`` in conftest.py). Tests talk to a real
``docker-registry serve`` (distribution 2.8) over loopback HTTP instead of mocking modelpkg's client; the
fault proxy is the only fake, and it exists to inject faults a real registry will not produce on demand.

Must not import modelpkg: these fixtures are what modelpkg's registry client is tested against, so they
speak HTTP with the standard library and ``requests`` only.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

REGISTRY_BIN_ENV = "MODELPKG_TEST_REGISTRY_BIN"
STARTUP_TIMEOUT = 10.0

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the caller binds it soon; start_registry retries on a clash)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def registry_binary() -> str | None:
    """Path of distribution's registry binary: $MODELPKG_TEST_REGISTRY_BIN, else ``docker-registry`` on PATH."""
    explicit = os.environ.get(REGISTRY_BIN_ENV)
    if explicit:
        return explicit if Path(explicit).exists() else None
    return shutil.which("docker-registry")


def require_registry_binary() -> str:
    binary = registry_binary()
    if binary is None:
        pytest.skip("docker-registry (CNCF distribution) is not installed: apt-get install docker-registry "
                    f"or set ${REGISTRY_BIN_ENV}")
    return binary


class RegistryServer:
    """A running ``docker-registry serve`` on 127.0.0.1; ``stop()`` terminates it (and its token server)."""

    def __init__(self, *, process: subprocess.Popen, port: int, storage: Path, log_path: Path,
                 config_path: Path, auth: str | None, username: str | None = None,
                 password: str | None = None, token_server=None):
        self.process = process
        self.port = port
        self.host = f"127.0.0.1:{port}"
        self.url = f"http://{self.host}"
        self.storage = storage
        self.log_path = log_path
        self.config_path = config_path
        self.auth = auth
        self.username = username
        self.password = password
        self.token_server = token_server

    @property
    def credentials(self) -> tuple[str, str] | None:
        """``(username, password)`` for ``requests``' ``auth=``, or None for an anonymous registry."""
        return (self.username, self.password) if self.username is not None else None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        if self.token_server is not None:
            self.token_server.stop()

    def __repr__(self) -> str:
        return f"RegistryServer({self.url}, auth={self.auth})"


def _registry_config(port: int, storage: Path, auth_section: dict | None, overrides: dict) -> dict:
    config = {
        "version": "0.1",
        # distribution logs to stderr only; start_registry sends stderr to log_path.
        "log": {"level": "error", "accesslog": {"disabled": True}},
        "storage": {
            "filesystem": {"rootdirectory": str(storage)},
            "delete": {"enabled": True},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": {"addr": f"127.0.0.1:{port}", "secret": secrets.token_hex(16)},
        "health": {"storagedriver": {"enabled": False}},
    }
    if auth_section:
        config["auth"] = auth_section
    return _merge(config, overrides)


def _merge(base: dict, extra: dict) -> dict:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def _htpasswd_file(path: Path, username: str, password: str) -> None:
    # distribution 2.8 accepts only bcrypt entries in htpasswd files.
    binary = shutil.which("htpasswd")
    if binary is None:
        pytest.skip("htpasswd (apache2-utils) is not installed: needed for the basic-auth registry")
    line = subprocess.run([binary, "-nbB", username, password], check=True, capture_output=True,
                          text=True).stdout.strip()
    path.write_text(line + "\n")


def start_registry(directory: Path, *, auth: str | None = None, username: str | None = None,
                   password: str | None = None, token_server=None, config: dict | None = None,
                   timeout: float = STARTUP_TIMEOUT) -> RegistryServer:
    """Start ``docker-registry serve`` with its storage, config and log under ``directory``.

    ``auth``: None (anonymous), ``"htpasswd"`` (bcrypt; user/password generated unless given) or ``"token"``
    (a TokenServer is started unless ``token_server`` is given; the registry owns and stops it either way).
    ``config`` is deep-merged into the generated distribution config. The caller must ``stop()`` it.
    """
    binary = require_registry_binary()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    storage = directory / "storage"
    storage.mkdir(exist_ok=True)

    auth_section = None
    if auth == "htpasswd":
        username = username or f"user-{secrets.token_hex(3)}"
        password = password or secrets.token_urlsafe(12)
        htpasswd = directory / "htpasswd"
        _htpasswd_file(htpasswd, username, password)
        auth_section = {"htpasswd": {"realm": "modelpkg-test", "path": str(htpasswd)}}
    elif auth == "token":
        if token_server is None:
            token_server = TokenServer()
            if username is not None:
                token_server.users[username] = password or secrets.token_urlsafe(12)
        token_server.start()
        username, password = token_server.default_user, token_server.users[token_server.default_user]
        bundle = directory / "token-root.pem"
        bundle.write_bytes(token_server.cert_pem)
        auth_section = {"token": {"realm": token_server.realm, "service": token_server.service,
                                  "issuer": token_server.issuer, "rootcertbundle": str(bundle)}}
    elif auth is not None:
        raise ValueError(f"unknown registry auth {auth!r}: use None, 'htpasswd' or 'token'")

    last_error = ""
    for _attempt in range(3):  # the free port can be taken between free_port() and the bind
        port = free_port()
        config_path = directory / "config.yml"
        # JSON is YAML: no YAML writer needed.
        config_path.write_text(json.dumps(_registry_config(port, storage, auth_section, config or {}),
                                          indent=2))
        log_path = directory / "registry.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen([binary, "serve", str(config_path)], stdin=subprocess.DEVNULL,
                                       stdout=log, stderr=subprocess.STDOUT)
        server = RegistryServer(process=process, port=port, storage=storage, log_path=log_path,
                                config_path=config_path, auth=auth, username=username, password=password,
                                token_server=token_server)
        error = _wait_until_up(server, timeout)
        if error is None:
            return server
        server.process.kill()
        server.process.wait(timeout=5)
        last_error = error
        if "address already in use" not in server.log():
            break
    if token_server is not None:
        token_server.stop()
    pytest.fail(f"docker-registry did not start: {last_error}\n--- {log_path} ---\n{server.log()}",
                pytrace=False)


def _wait_until_up(server: RegistryServer, timeout: float) -> str | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            return f"exited with status {server.process.returncode}"
        try:
            # Any answer counts: an auth registry answers 401 here.
            requests.get(f"{server.url}/v2/", timeout=1)
            return None
        except requests.ConnectionError:
            time.sleep(0.05)
    return f"GET {server.url}/v2/ got no answer within {timeout:.0f} s"


# --- hand-made pushes (plain requests, for seeding registries and checking fixtures) -------------------

def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def push_blob(session: requests.Session, url: str, repo: str, data: bytes) -> str:
    """Monolithic upload (POST then PUT ?digest=, distribution API spec "Monolithic Upload"); returns the digest."""
    digest = sha256_digest(data)
    start = session.post(f"{url}/v2/{repo}/blobs/uploads/", timeout=10)
    start.raise_for_status()
    location = start.headers["Location"]
    if location.startswith("/"):
        location = url + location
    separator = "&" if "?" in location else "?"
    put = session.put(f"{location}{separator}digest={digest}", data=data,
                      headers={"Content-Type": "application/octet-stream"}, timeout=30)
    put.raise_for_status()
    return digest


def push_manifest(session: requests.Session, url: str, repo: str, reference: str, manifest: bytes,
                  media_type: str = OCI_MANIFEST) -> str:
    response = session.put(f"{url}/v2/{repo}/manifests/{reference}", data=manifest,
                           headers={"Content-Type": media_type}, timeout=10)
    response.raise_for_status()
    return sha256_digest(manifest)


def push_image(session: requests.Session, url: str, repo: str, tag: str,
               layers: list[bytes] = (b"layer-bytes\n",)) -> tuple[bytes, str]:
    """Push a minimal valid OCI image (config + layers + manifest) by hand; returns (manifest bytes, digest)."""
    layer_descriptors = []
    for layer in layers:
        layer_descriptors.append({"mediaType": OCI_LAYER, "digest": push_blob(session, url, repo, layer),
                                  "size": len(layer)})
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [d["digest"] for d in layer_descriptors]},
    }, sort_keys=True).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": push_blob(session, url, repo, config),
                   "size": len(config)},
        "layers": layer_descriptors,
    }, sort_keys=True).encode()
    return manifest, push_manifest(session, url, repo, tag, manifest)


# --- fixtures --------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def registry(tmp_path_factory):
    """An anonymous distribution registry shared by the session (use unique repository names per test)."""
    require_registry_binary()
    server = start_registry(tmp_path_factory.mktemp("registry"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def basic_registry(tmp_path_factory):
    """A registry behind htpasswd basic auth; ``.username`` / ``.password`` / ``.credentials`` log in."""
    require_registry_binary()
    server = start_registry(tmp_path_factory.mktemp("basic-registry"), auth="htpasswd")
    yield server
    server.stop()
