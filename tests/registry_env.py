"""Registry test environment: a real CNCF distribution registry, a Docker token server and a fault proxy.

Loaded as a pytest plugin (``pytest_plugins = ["registry_env"]`` in conftest.py). Tests talk to a real
``docker-registry serve`` (distribution 2.8) over loopback HTTP instead of mocking modelpkg's client; the
fault proxy is the only fake, and it exists to inject faults a real registry will not produce on demand.

Fixtures: ``registry`` (anonymous), ``referrers_registry`` (a second implementation, go-containerregistry's
``pkg/registry`` with the OCI 1.1 referrers API that distribution 2.8 lacks; built by ``.ci/peers``),
``any_registry`` (each of the two in turn: the tests that must hold on both take it), ``basic_registry``
(htpasswd), ``token_registry`` (+ ``token_server``, reset per test) are session-scoped RegistryServers;
``fault_proxy(upstream)`` is a per-test factory::

    proxy = fault_proxy(registry)                     # or a "host:port"
    cut = proxy.add("truncate", "GET", r"/blobs/sha256:", after=1000)   # next matching request (count=1)
    ...client pulls from proxy.host...
    assert cut.fired == 1                             # the cut happened (not just matched: see Fault)
    assert len(proxy.matching("GET", r"/manifests/")) == 1

Must not import modelpkg: these fixtures are what modelpkg's registry client is tested against, so they
speak HTTP with the standard library and ``requests`` only.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import http.client
import http.server
import json
import math
import os
import re
import secrets
import select
import shutil
import socket
import struct
import subprocess
import threading
import time
import urllib.parse
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from capabilities import missing, require_peer

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
        missing("docker-registry (CNCF distribution) is not installed: apt-get install docker-registry "
                f"or set ${REGISTRY_BIN_ENV}")
    return binary


class RegistryServer:
    """A running ``docker-registry serve`` on 127.0.0.1; ``stop()`` terminates it (and its token server)."""

    def __init__(self, *, process: subprocess.Popen, port: int, storage: Path, log_path: Path,
                 config_path: Path, auth: str | None, username: str | None = None,
                 password: str | None = None, token_server=None, kind: str = "distribution"):
        self.process = process
        self.kind = kind  # "distribution" (docker-registry 2.8) or "referrers-api" (go-containerregistry's)
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
        missing("htpasswd (apache2-utils) is not installed: needed for the basic-auth registry")
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
            users = {username: password or secrets.token_urlsafe(12)} if username is not None else None
            token_server = TokenServer(users=users)
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


def start_referrers_registry(directory: Path, timeout: float = STARTUP_TIMEOUT) -> RegistryServer:
    """Start ``.peers/bin/referrers-registry`` (tests/peers/referrers-registry) on a free loopback port, its
    blobs under ``directory``; anonymous. The caller must ``stop()`` it."""
    binary = require_peer("referrers-registry")
    directory = Path(directory)
    storage = directory / "blobs"
    storage.mkdir(parents=True, exist_ok=True)
    log_path = directory / "registry.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([binary, "-addr", "127.0.0.1:0", "-dir", str(storage)],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log)
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    line = process.stdout.readline().decode(errors="replace").strip() if ready else ""  # "listening on H:P"
    process.stdout.close()
    port = int(line.rsplit(":", 1)[1]) if line.startswith("listening on ") else 0
    server = RegistryServer(process=process, port=port, storage=storage, log_path=log_path,
                            config_path=directory, auth=None, kind="referrers-api")
    error = _wait_until_up(server, timeout) if port else f"printed {line!r}"
    if error is not None:
        server.stop()
        pytest.fail(f"referrers-registry did not start: {error}\n{server.log()}", pytrace=False)
    return server


# --- token server (Docker token authentication spec, distribution docs/spec/auth/token.md) -------------

DISTRIBUTION_LEEWAY = 60  # distribution 2.8 accepts a token until exp + 60 s (registry/auth/token/token.go)
ALL_ACTIONS = frozenset({"pull", "push", "delete", "*"})


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _self_signed(common_name: str):
    """An ES256 key and a self-signed CA certificate for it: the registry's ``rootcertbundle``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def parse_scope(scope: str) -> tuple[str, str, tuple[str, ...]]:
    """``repository:acme/tiny:pull,push`` -> (type, name, actions); the name may itself hold a colon."""
    kind, _, rest = scope.partition(":")
    name, _, actions = rest.rpartition(":")
    return kind, name, tuple(a for a in actions.split(",") if a)


class TokenRequest:
    """One request the token server received."""

    def __init__(self, method: str, path: str, params: dict[str, list[str]], headers, user: str | None,
                 status: int | None = None):
        self.method, self.path, self.params, self.headers = method, path, params, headers
        self.user, self.status = user, status

    @property
    def scopes(self) -> list[str]:
        if self.method == "POST":
            return [s for value in self.params.get("scope", []) for s in value.split()]
        return self.params.get("scope", [])

    def __repr__(self) -> str:
        return f"TokenRequest({self.method} {self.path} user={self.user} scopes={self.scopes} -> {self.status})"


class Issued(tuple):
    """``(user, scopes)``: who got a token and the scopes granted (``type:name:actions`` strings); ``.token``
    is the JWT, ``.at`` when it was issued (``time.monotonic()``), to count the tokens a pull refreshed."""

    def __new__(cls, user, scopes, token):
        self = super().__new__(cls, (user, tuple(scopes)))
        self.token = token
        self.at = time.monotonic()
        return self

    user = property(lambda self: self[0])
    scopes = property(lambda self: self[1])


class TokenServer:
    """An in-process Docker token server (GET realm, plus the OAuth2 POST form) signing ES256 JWTs.

    Tokens carry the certificate in ``x5c``; distribution verifies it against ``rootcertbundle`` (cert_pem).
    Policy: an authenticated user gets every requested action; anonymous gets ``pull`` on repositories
    under ``public_namespace`` (None: nothing). Replace ``policy(user, type, name, actions)`` to change it.
    ``expires_in`` is what clients are told; ``valid_for`` (if set) is how long the *registry* accepts the
    token (exp is backdated by distribution's 60 s leeway), to test re-authentication after a 401.
    """

    def __init__(self, *, users: dict[str, str] | None = None, service: str = "modelpkg-test-registry",
                 issuer: str = "modelpkg-test-token-server", public_namespace: str | None = "public/",
                 expires_in: int = 300):
        if users is None:
            users = {f"user-{secrets.token_hex(3)}": secrets.token_urlsafe(12)}
        self.users = dict(users)
        self.default_user = next(iter(self.users))
        self.service, self.issuer = service, issuer
        self._key, self._cert = _self_signed(issuer)
        self.cert_pem = self._cert.public_bytes(serialization.Encoding.PEM)
        self._x5c = [base64.b64encode(self._cert.public_bytes(serialization.Encoding.DER)).decode()]
        self._defaults = dict(public_namespace=public_namespace, expires_in=expires_in)
        self._refresh_tokens: dict[str, str] = {}
        self._lock = threading.Lock()
        self._httpd = None
        self._thread = None
        self.port = None
        self.reset()

    def reset(self) -> None:
        """Forget recorded requests and restore the default settings and policy."""
        self.public_namespace = self._defaults["public_namespace"]
        self.expires_in = self._defaults["expires_in"]
        self.valid_for: float | None = None
        self.oauth = True          # False: POST answers 404, as on servers with only the GET flow
        self.fail_status: int | None = None
        self.fail_count = 0        # the next fail_count requests answer fail_status
        self.policy = self.default_policy
        self.requests: list[TokenRequest] = []
        self.issued: list[Issued] = []

    # -- lifecycle --
    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def realm(self) -> str:
        return f"http://{self.host}/token"

    def start(self) -> TokenServer:
        if self._httpd is None:
            self._httpd = _ThreadingServer(("127.0.0.1", 0), _TokenHandler)
            self._httpd.owner = self
            self.port = self._httpd.server_address[1]
            self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name="token-server",
                                            daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    # -- tokens --
    def default_policy(self, user: str | None, kind: str, name: str, actions: tuple[str, ...]) -> tuple[str, ...]:
        if user is not None:
            return tuple(a for a in actions if a in ALL_ACTIONS)
        if kind == "repository" and self.public_namespace is not None and name.startswith(self.public_namespace):
            return tuple(a for a in actions if a == "pull")
        return ()

    def mint(self, user: str | None, scopes: list[str], *, valid_for: float | None = None) -> str:
        """A signed JWT granting exactly ``scopes`` (``type:name:actions``), as the registry expects it."""
        now = time.time()
        lifetime = self.expires_in if valid_for is None else valid_for - DISTRIBUTION_LEEWAY
        access = []
        for scope in scopes:
            kind, name, actions = parse_scope(scope)
            access.append({"type": kind, "name": name, "actions": list(actions)})
        header = {"typ": "JWT", "alg": "ES256", "x5c": self._x5c}
        # distribution 2.8 unmarshals "aud" into a plain string: a list would make the token malformed.
        claims = {"iss": self.issuer, "sub": user or "", "aud": self.service, "exp": math.ceil(now + lifetime),
                  "nbf": int(now) - 1, "iat": int(now), "jti": secrets.token_hex(8), "access": access}
        signing_input = (_b64url(json.dumps(header, separators=(",", ":")).encode()) + "."
                         + _b64url(json.dumps(claims, separators=(",", ":")).encode()))
        # JWS wants the raw r||s signature (RFC 7518 3.4), not cryptography's DER encoding.
        r, s = decode_dss_signature(self._key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        return signing_input + "." + _b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))

    def _grant(self, user: str | None, requested: list[str]) -> list[str]:
        granted = []
        for scope in requested:
            kind, name, actions = parse_scope(scope)
            allowed = self.policy(user, kind, name, actions)
            if allowed:
                granted.append(f"{kind}:{name}:{','.join(allowed)}")
        return granted

    def _token_response(self, user: str | None, requested: list[str], *, refresh: bool) -> dict:
        granted = self._grant(user, requested)
        token = self.mint(user, granted, valid_for=self.valid_for)
        with self._lock:
            self.issued.append(Issued(user, granted, token))
        body = {"token": token, "access_token": token, "expires_in": self.expires_in,
                "issued_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
        if refresh and user is not None:
            refresh_token = secrets.token_urlsafe(24)
            with self._lock:
                self._refresh_tokens[refresh_token] = user
            body["refresh_token"] = refresh_token
        return body

    def _take_failure(self) -> int | None:
        with self._lock:
            if self.fail_count > 0 and self.fail_status is not None:
                self.fail_count -= 1
                return self.fail_status
        return None

    def __repr__(self) -> str:
        return f"TokenServer({self.realm}, service={self.service!r})"


class _ThreadingServer(http.server.ThreadingHTTPServer):
    # Served with serve_forever(0.05): shutdown() waits for one poll interval, 0.5 s by default.
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        # a client that resets a kept-alive connection (fault tests break connections on purpose) is not
        # a server error; anything else is still printed
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class QuietHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # keep pytest output clean
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None,
              content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""


class _TokenHandler(QuietHandler):
    def _basic_user(self, server: TokenServer) -> tuple[str | None, bool]:
        """(user, ok): no Basic header is anonymous and ok; a wrong password is not ok."""
        header = self.headers.get("Authorization", "")
        if not header.lower().startswith("basic "):
            return None, True
        try:
            user, _, password = base64.b64decode(header[6:].strip()).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None, False
        return (user, True) if server.users.get(user) == password else (user, False)

    def do_GET(self):
        server: TokenServer = self.server.owner
        parsed = urllib.parse.urlsplit(self.path)
        params = urllib.parse.parse_qs(parsed.query, keep_blank_values=True)
        record = TokenRequest("GET", parsed.path, params, self.headers, None)
        server.requests.append(record)
        if self._injected_failure(server, record):
            return
        user, ok = self._basic_user(server)
        record.user = user
        self._answer(server, record, ok, refresh=params.get("offline_token", [""])[0] == "true")

    def do_POST(self):
        server: TokenServer = self.server.owner
        parsed = urllib.parse.urlsplit(self.path)
        params = urllib.parse.parse_qs(self._read_body().decode(), keep_blank_values=True)
        record = TokenRequest("POST", parsed.path, params, self.headers, None)
        server.requests.append(record)
        if self._injected_failure(server, record):
            return
        if not server.oauth:
            record.status = 404
            return self._send(404, b'{"error":"not_found"}')
        grant = params.get("grant_type", [""])[0]
        user, ok = None, False
        if grant == "password":
            user = params.get("username", [""])[0]
            ok = server.users.get(user) == params.get("password", [None])[0]
        elif grant == "refresh_token":
            user = server._refresh_tokens.get(params.get("refresh_token", [""])[0])
            ok = user is not None
        record.user = user
        if not ok:
            # RFC 6749 5.2: a bad grant is 400 invalid_grant on the OAuth2 form.
            record.status = 400
            return self._send(400, json.dumps({"error": "invalid_grant"}).encode())
        self._answer(server, record, True,
                     refresh=params.get("access_type", [""])[0] == "offline" or grant == "refresh_token")

    def _injected_failure(self, server: TokenServer, record: TokenRequest) -> bool:
        failure = server._take_failure()
        if failure is None:
            return False
        record.status = failure
        self._send(failure, json.dumps({"errors": [{"code": "UNKNOWN", "message": "injected"}]}).encode())
        return True

    def _answer(self, server: TokenServer, record: TokenRequest, ok: bool, *, refresh: bool) -> None:
        # The status is recorded before the answer is sent, so a test that got the answer sees it.
        if record.path != "/token":
            record.status = 404
            return self._send(404, b'{"errors":[{"code":"NOT_FOUND"}]}')
        if not ok:
            record.status = 401
            return self._send(401, json.dumps({"errors": [{"code": "UNAUTHORIZED",
                                                           "message": "incorrect username or password"}]}).encode(),
                              headers={"WWW-Authenticate": 'Basic realm="modelpkg-test-token-server"'})
        body = json.dumps(server._token_response(record.user, record.scopes, refresh=refresh)).encode()
        record.status = 200
        self._send(200, body)


@pytest.fixture(scope="session")
def token_registry(tmp_path_factory):
    """A registry with ``auth: token`` and its in-process TokenServer as ``.token_server``.

    ``.username`` / ``.password`` are a user the token server knows. Prefer the ``token_server`` fixture
    to change its settings: it resets them for each test.
    """
    require_registry_binary()
    server = start_registry(tmp_path_factory.mktemp("token-registry"), auth="token")
    yield server
    server.stop()


@pytest.fixture
def token_server(token_registry):
    """The token_registry's TokenServer with records cleared and default settings restored (per test)."""
    token_registry.token_server.reset()
    yield token_registry.token_server
    token_registry.token_server.reset()


# --- fault proxy ----------------------------------------------------------------------------------------

# Fault kinds and their parameters with defaults. Body offsets count bytes of the response body.
# A fault *fires* when it does what it says (Fault.fired, ProxiedRequest.fired): a reset or truncate
# fires only on a body longer than `after` (a 317-byte config blob takes the fault without being cut),
# ignore_range only on a request that had a Range header.
FAULT_KINDS: dict[str, dict] = {
    # send `after` body bytes, pause `seconds` (the connection open, nothing sent), then close with a TCP
    # RST; bytes still in the proxy's socket buffers are lost with it (counted as sent, never received)
    "reset": {"after": 0, "seconds": 0},
    # full Content-Length, only `after` bytes, pause `seconds`, then a clean close (FIN): nothing is lost
    "truncate": {"after": 0, "seconds": 0},
    "status": {"status": 500, "body": None, "headers": None},   # answer without asking upstream
    "retry_after": {"seconds": 1},        # 429 Too Many Requests with Retry-After: seconds
    "corrupt": {"offset": 0, "length": 1},  # XOR 0xFF over body[offset:offset+length]
    "ignore_range": {},                   # drop Range/If-Range: upstream answers 200 with the whole body
    "stall": {"after": 0, "seconds": 1.0},  # send `after` bytes, pause `seconds`, then the rest
    "redirect_other_host": {"status": 307},  # redirect to proxy.other_host, which serves the same bytes
    # request side: receive (and forward) `after` bytes of the request body, then reset both connections,
    # as when the network breaks mid-upload; upstream sees a short body, the client a reset. Matches only
    # requests whose Content-Length is larger than `after` (or unknown: chunked), so a small upload (a
    # config blob) does not use the fault up
    "cut_request": {"after": 0},
}
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
               "trailers", "transfer-encoding", "upgrade", "expect", "host", "content-length"}
_CHUNK = 64 * 1024


class Fault:
    """One injected fault: applies to the next ``count`` requests matching method + path regex (None: all)."""

    def __init__(self, kind: str, method: str | None, path: str, count: int | None, params: dict):
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}: one of {', '.join(FAULT_KINDS)}")
        unknown = set(params) - set(FAULT_KINDS[kind])
        if unknown:
            raise TypeError(f"fault {kind!r} takes {sorted(FAULT_KINDS[kind]) or 'no parameters'}, "
                            f"not {sorted(unknown)}")
        self.kind = kind
        self.method = method.upper() if method else None
        self.path = re.compile(path)
        self.remaining = count
        self.hits = 0    # requests that matched and took the fault
        self.fired = 0   # ... on which it took effect (a cut made, a Range dropped, a status answered)
        self.params = {**FAULT_KINDS[kind], **params}

    def __getattr__(self, name):
        try:
            return self.__dict__["params"][name]
        except KeyError:
            raise AttributeError(name) from None

    def matches(self, method: str, path: str, body_length: int | None = None) -> bool:
        if self.kind == "cut_request" and body_length is not None and body_length <= self.params["after"]:
            return False
        return ((self.method is None or self.method == method) and self.path.search(path) is not None
                and (self.remaining is None or self.remaining > 0))

    def __repr__(self) -> str:
        return f"Fault({self.kind} {self.method or '*'} {self.path.pattern} remaining={self.remaining} " \
               f"hits={self.hits} fired={self.fired} {self.params})"


class ProxiedRequest:
    """One request through the proxy: what was asked and what the client was sent."""

    def __init__(self, method: str, path: str, query: str, headers, fault: str | None):
        self.method, self.path, self.query, self.headers, self.fault = method, path, query, headers, fault
        self.fired = False    # the fault took effect on this request (see FAULT_KINDS)
        self.status: int | None = None
        self.bytes_sent = 0   # response body bytes handed to the client socket
        self.bytes_received = 0   # request body bytes read from the client (and forwarded upstream)

    def __repr__(self) -> str:
        fault = f" [{self.fault}{' fired' if self.fired else ''}]" if self.fault else ""
        return f"<{self.method} {self.path} -> {self.status}, {self.bytes_sent} B{fault}>"


class OtherHostRequest:
    def __init__(self, method: str, path: str, headers):
        self.method, self.path, self.headers = method, path, headers
        self.authorization = headers.get("Authorization")

    def __repr__(self) -> str:
        return f"<{self.method} {self.path} authorization={'yes' if self.authorization else 'no'}>"


class OtherHost:
    """A second loopback server (127.0.0.2, or ``localhost`` by name) that serves redirected blobs, like a CDN."""

    def __init__(self):
        self.blobs: dict[str, tuple[bytes, str]] = {}
        self.requests: list[OtherHostRequest] = []
        try:
            self._httpd = _ThreadingServer(("127.0.0.2", 0), _OtherHostHandler)
            name = "127.0.0.2"
        except OSError:  # not every loopback accepts 127.0.0.2; a different host *name* still differs
            self._httpd = _ThreadingServer(("127.0.0.1", 0), _OtherHostHandler)
            name = "localhost"
        self._httpd.owner = self
        self.host = f"{name}:{self._httpd.server_address[1]}"
        threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name="other-host", daemon=True).start()

    def put(self, data: bytes, content_type: str, name: str) -> str:
        key = f"/cdn/{secrets.token_hex(8)}/{name}"
        self.blobs[key] = (data, content_type)
        return f"http://{self.host}{key}"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


class _OtherHostHandler(QuietHandler):
    def do_GET(self):
        owner: OtherHost = self.server.owner
        path = self.path.partition("?")[0]
        owner.requests.append(OtherHostRequest(self.command, path, self.headers))
        if path not in owner.blobs:
            return self._send(404, b"not found", content_type="text/plain")
        data, content_type = owner.blobs[path]
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", "").strip())
        if match and int(match[1]) < len(data):
            start = int(match[1])
            end = min(int(match[2]), len(data) - 1) if match[2] else len(data) - 1
            return self._send(206, data[start:end + 1], content_type=content_type,
                              headers={"Content-Range": f"bytes {start}-{end}/{len(data)}"})
        self._send(200, data, content_type=content_type)

    do_HEAD = do_GET


class FaultProxy:
    """A threaded HTTP proxy on 127.0.0.1 in front of ``upstream`` (host:port) that injects faults.

    ``add(kind, method, path_regex, count=1, **params)`` queues a fault (see FAULT_KINDS) and returns it:
    its ``hits`` counts the requests that took it, ``fired`` those on which it took effect. ``requests``
    records every request (``fired(kind)``: those a fault took effect on); ``other_host`` is where
    ``redirect_other_host`` sends clients.
    """

    def __init__(self, upstream: str):
        self.upstream = upstream
        self.faults: list[Fault] = []
        self.requests: list[ProxiedRequest] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self.other_host = OtherHost()
        self._httpd = _ThreadingServer(("127.0.0.1", 0), _ProxyHandler)
        self._httpd.owner = self
        self.port = self._httpd.server_address[1]
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"
        threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name="fault-proxy", daemon=True).start()

    def add(self, kind: str, method: str | None = "GET", path: str = "", *, count: int | None = 1,
            **params) -> Fault:
        """Inject ``kind`` into the next ``count`` requests (None: all) whose method and path match.

        ``path`` is a regex searched in the URL path (no query), e.g. ``r"/blobs/sha256:"``; method None
        matches any method. Faults are tried in the order added; the first that matches applies.
        """
        fault = Fault(kind, method, path, count, params)
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        """Drop all faults and all records (of this proxy and of other_host)."""
        with self._lock:
            self.faults.clear()
            self.requests.clear()
            self.other_host.requests.clear()

    def matching(self, method: str | None = None, path: str = "") -> list[ProxiedRequest]:
        """Recorded requests with this method (None: any) whose path matches the regex."""
        pattern = re.compile(path)
        return [r for r in list(self.requests)
                if (method is None or r.method == method.upper()) and pattern.search(r.path)]

    def bytes_sent(self, method: str | None = None, path: str = "") -> int:
        return sum(r.bytes_sent for r in self.matching(method, path))

    def fired(self, kind: str | None = None, method: str | None = None, path: str = "") -> list[ProxiedRequest]:
        """Recorded requests on which a fault (of ``kind``, None: any) took effect."""
        return [r for r in self.matching(method, path) if r.fired and (kind is None or r.fault == kind)]

    def close(self) -> None:
        self._closing.set()  # wakes stalled responses
        self._httpd.shutdown()
        self._httpd.server_close()
        self.other_host.close()

    def _take(self, method: str, path: str, body_length: int | None = None) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.matches(method, path, body_length):
                    fault.hits += 1
                    if fault.remaining is not None:
                        fault.remaining -= 1
                    return fault
        return None

    def _fire(self, record: ProxiedRequest, fault: Fault) -> None:
        """Count ``fault`` as fired on ``record``: before its effect, so a client that saw it finds it counted."""
        with self._lock:
            if not record.fired:
                record.fired = True
                fault.fired += 1

    def __repr__(self) -> str:
        return f"FaultProxy({self.url} -> {self.upstream}, {len(self.faults)} faults)"


class _Abort(Exception):
    """The handler cut the connection on purpose."""


class _ProxyHandler(QuietHandler):
    def do_GET(self):
        proxy: FaultProxy = self.server.owner
        path, _, query = self.path.partition("?")
        fault = proxy._take(self.command, path, self._body_length())
        record = ProxiedRequest(self.command, path, query, self.headers, fault.kind if fault else None)
        proxy.requests.append(record)
        try:
            if fault is not None and fault.kind in ("status", "retry_after"):
                self._answer_fault(proxy, record, fault)
            elif fault is not None and fault.kind == "redirect_other_host":
                self._redirect(proxy, record, fault)
            else:
                self._forward(proxy, record, fault)
        except _Abort:
            self.close_connection = True
        except (TimeoutError, ConnectionError):  # the client went away (or gave up on a stall)
            self.close_connection = True

    do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = do_GET

    # -- request side --
    def _body_length(self) -> int | None:
        """The request body's declared length: 0 without one, None when chunked (unknown until it ends)."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return None
        length = self.headers.get("Content-Length", "")
        return int(length) if length.isdigit() else 0

    def _request_body(self):
        """The request body as an iterator (chunked or Content-Length), or None; forwarded as it streams."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._chunked_body()
        length = int(self.headers.get("Content-Length") or 0)
        return self._sized_body(length) if length else None

    def _sized_body(self, length: int):
        while length > 0:
            data = self.rfile.read(min(length, _CHUNK))
            if not data:
                raise ConnectionError("client closed the request body early")
            length -= len(data)
            yield data

    def _chunked_body(self):
        while True:
            size = int(self.rfile.readline(1024).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline(1024).strip():  # trailers, then the blank line
                    pass
                return
            yield from self._sized_body(size)
            self.rfile.readline(16)  # CRLF after the chunk

    def _upstream_headers(self, fault: Fault | None, record: ProxiedRequest | None = None) -> dict:
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            if name.lower() in _HOP_BY_HOP:
                continue
            if fault is not None and fault.kind == "ignore_range" and name.lower() in ("range", "if-range"):
                if record is not None and name.lower() == "range":
                    self.server.owner._fire(record, fault)
                continue
            headers[name] = f"{headers[name]}, {value}" if name in headers else value  # e.g. several Accept
        if self.headers.get("Content-Length"):
            headers["Content-Length"] = self.headers["Content-Length"]
        return headers

    def _forward(self, proxy: FaultProxy, record: ProxiedRequest, fault: Fault | None) -> None:
        conn = http.client.HTTPConnection(proxy.upstream, timeout=60)
        body = self._request_body()
        if body is not None:
            body = self._counted(record, body, fault if fault is not None and fault.kind == "cut_request"
                                 else None)
        try:
            conn.request(self.command, self.path, body=body, headers=self._upstream_headers(fault, record))
            self._relay(proxy, record, conn.getresponse(), fault)
        finally:
            conn.close()

    def _counted(self, record: ProxiedRequest, body, fault: Fault | None):
        """The request body, counted into ``record``; with a ``cut_request`` fault, reset after ``after``
        bytes (what came before is forwarded: upstream sees a body that breaks off, as over a real broken
        link)."""
        cut = fault.after if fault is not None else None
        for data in body:
            if cut is not None:
                data = data[:cut - record.bytes_received]
            record.bytes_received += len(data)
            if data:
                yield data
            if cut is not None and record.bytes_received >= cut:
                self.server.owner._fire(record, fault)
                self._cut("reset")

    # -- response side --
    def _relay(self, proxy: FaultProxy, record: ProxiedRequest, upstream, fault: Fault | None) -> None:
        has_body = self.command != "HEAD" and upstream.status not in (204, 304) and upstream.status >= 200
        length = upstream.getheader("Content-Length")
        chunked = has_body and length is None
        record.status = upstream.status
        self.send_response_only(upstream.status, upstream.reason)
        for name, value in upstream.getheaders():
            if name.lower() in _HOP_BY_HOP - {"content-length"}:
                continue
            if name.lower() == "location" and value.startswith(f"http://{proxy.upstream}"):
                value = f"http://{proxy.host}" + value[len(f"http://{proxy.upstream}"):]
            self.send_header(name, value)
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if not has_body:
            return
        self._stream_body(proxy, record, upstream, fault, chunked)

    def _stream_body(self, proxy, record, upstream, fault, chunked: bool) -> None:
        kind = fault.kind if fault is not None else None
        cut = fault.after if kind in ("reset", "truncate") else None
        stall_at = fault.after if kind == "stall" else None
        sent = 0
        while True:
            data = upstream.read1(_CHUNK)
            if not data:
                break
            if cut is not None and sent + len(data) > cut:  # body left beyond `after`: cut it here
                self._write(record, data[:cut - sent], chunked)
                proxy._fire(record, fault)
                proxy._closing.wait(fault.seconds)
                self._cut(kind)
            if kind == "corrupt":
                flipped = _flip(data, sent, fault.offset, fault.length)
                if flipped != data:
                    proxy._fire(record, fault)
                data = flipped
            if stall_at is not None and sent + len(data) >= stall_at:
                head, data = data[:stall_at - sent], data[stall_at - sent:]
                self._write(record, head, chunked)
                sent += len(head)
                stall_at = None
                proxy._fire(record, fault)
                proxy._closing.wait(fault.seconds)
            self._write(record, data, chunked)
            sent += len(data)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")

    def _write(self, record: ProxiedRequest, data: bytes, chunked: bool) -> None:
        if not data:
            return
        record.bytes_sent += len(data)  # counted first: a test that has the bytes must see them counted
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
        self.wfile.flush()

    def _cut(self, kind: str) -> None:
        if kind == "reset":
            # SO_LINGER 0: close() sends RST instead of FIN (bytes still in flight may be lost with it).
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        raise _Abort(kind)

    def _answer_fault(self, proxy: FaultProxy, record: ProxiedRequest, fault: Fault) -> None:
        for _ in self._request_body() or ():
            pass  # read the request body so the connection stays usable
        if fault.kind == "retry_after":
            status, headers, code = 429, {"Retry-After": str(fault.seconds)}, "TOOMANYREQUESTS"
        else:
            status, headers, code = fault.status, dict(fault.headers or {}), "UNKNOWN"
        body = fault.params.get("body")
        if body is None:
            body = json.dumps({"errors": [{"code": code, "message": f"injected fault: {status}"}]}).encode()
        record.status = status
        proxy._fire(record, fault)
        self._send(status, body, headers=headers)

    def _redirect(self, proxy: FaultProxy, record: ProxiedRequest, fault: Fault) -> None:
        # Fetch the whole object with the client's credentials, then point the client at other_host.
        conn = http.client.HTTPConnection(proxy.upstream, timeout=60)
        try:
            headers = {k: v for k, v in self._upstream_headers(None).items() if k.lower() not in ("range", "if-range")}
            conn.request("GET", self.path, headers=headers)
            upstream = conn.getresponse()
            if upstream.status != 200:
                return self._relay(proxy, record, upstream, None)
            data = upstream.read()
            content_type = upstream.getheader("Content-Type", "application/octet-stream")
        finally:
            conn.close()
        location = proxy.other_host.put(data, content_type, record.path.rsplit("/", 1)[-1])
        record.status = fault.status
        proxy._fire(record, fault)
        self._send(fault.status, b"", headers={"Location": location}, content_type="text/plain")


def _flip(data: bytes, start: int, offset: int, length: int) -> bytes:
    """``data`` is body[start:start+len(data)]; XOR 0xFF over the part inside [offset, offset+length)."""
    lo, hi = max(offset - start, 0), min(offset + length - start, len(data))
    if lo >= hi:
        return data
    return data[:lo] + bytes(b ^ 0xFF for b in data[lo:hi]) + data[hi:]


@pytest.fixture
def fault_proxy():
    """A factory: ``fault_proxy(upstream)`` starts a FaultProxy in front of a host:port or a RegistryServer.

    Closed at the end of the test.
    """
    proxies: list[FaultProxy] = []

    def make(upstream) -> FaultProxy:
        proxy = FaultProxy(getattr(upstream, "host", upstream))
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.close()


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


@pytest.fixture(scope="session")
def referrers_registry(tmp_path_factory):
    """go-containerregistry's registry with the OCI 1.1 referrers API (anonymous), shared by the session."""
    server = start_referrers_registry(tmp_path_factory.mktemp("referrers-registry"))
    yield server
    server.stop()


@pytest.fixture(params=["distribution", "referrers-api"])
def any_registry(request):
    """distribution 2.8 (no referrers API: the tag-schema fallback), then the referrers-API registry."""
    return request.getfixturevalue("registry" if request.param == "distribution" else "referrers_registry")
