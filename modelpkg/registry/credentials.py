"""Where registry credentials come from, and ``modelpkg login``'s own file.

Lookup order for a host (first hit wins):

1. environment, for CI: ``MODELPKG_REGISTRY_USER_<HOST>`` / ``MODELPKG_REGISTRY_PASSWORD_<HOST>`` (the host
   upper-cased, every other character than A-Z 0-9 turned into ``_``: ``ghcr.io`` -> ``GHCR_IO``,
   ``localhost:5000`` -> ``LOCALHOST_5000``; so hosts that differ only there, ``my-reg.io`` and ``my.reg.io``,
   share one pair: keep such a host's login in the login file), then ``MODELPKG_REGISTRY_USER`` /
   ``MODELPKG_REGISTRY_PASSWORD``, which name no host and so go only to the hosts they are configured for
   (``login_hosts``): the default registry (``MODELPKG_REGISTRY``, else registry.ollama.ai), or
   ``MODELPKG_REGISTRY_HOST`` instead when that is set, and the hosts ``MODELPKG_REGISTRY_HOSTS`` lists. Never
   to any other host: a name can point a pull anywhere (``serve``'s ``/api/pull`` takes it from a client), and
   the operator's password must not follow it;
2. ``modelpkg login``'s file, ``auth.json`` in ``config.config_dir()`` (mode 0600, Docker's ``auths`` format);
3. Docker's ``config.json`` (``$DOCKER_CONFIG`` or ``~/.docker``): ``credHelpers[host]``, then ``credsStore``,
   both through the ``docker-credential-<name> get`` programs, then ``auths[host]`` (``auth`` or
   ``identitytoken``);
4. podman's ``auth.json`` (``$REGISTRY_AUTH_FILE``, ``$XDG_RUNTIME_DIR/containers/auth.json``,
   ``~/.config/containers/auth.json``).

Secrets live in ``Credential`` objects whose ``repr`` hides them; no function here puts one in a message.

Adapter: files, environment and subprocesses. Imports ``modelpkg.core.errors``, ``modelpkg.base.fsutil`` and
``modelpkg.base.config``; never ``requests``.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelpkg.base import config, fsutil
from modelpkg.core.errors import AuthError, InvalidInputError, NotFoundError, StoreError

LOGIN_FILE = "auth.json"
HELPER_TIMEOUT = 30.0
MAX_CONFIG_BYTES = 4 * 1024 * 1024
# Docker stores Docker Hub credentials under this key (registry/config.go IndexServer).
DOCKER_HUB_KEY = "https://index.docker.io/v1/"
_DOCKER_HUB_HOSTS = ("docker.io", "registry-1.docker.io", "index.docker.io")


@dataclass(frozen=True)
class Credential:
    """A username and password, or an identity (refresh) token. ``source`` says where it was found."""

    username: str = ""
    password: str = ""
    identity_token: str = ""
    source: str = ""

    def __repr__(self) -> str:  # never show a secret, not even in a traceback
        return f"Credential(username={self.username!r}, source={self.source!r}, secret=<hidden>)"

    __str__ = __repr__

    @property
    def has_password(self) -> bool:
        return bool(self.username and self.password)


def _env_key(host: str) -> str:
    return re.sub(r"[^A-Z0-9]", "_", host.upper())


def host_keys(host: str) -> list[str]:
    """The keys a config file may use for ``host`` (Docker Hub has its historical URL)."""
    if host in _DOCKER_HUB_HOSTS:
        return [DOCKER_HUB_KEY, *(_DOCKER_HUB_HOSTS)]
    return [host]


def _normalise_key(key: str) -> str:
    """``https://host:5000/v2/`` -> ``host:5000``: Docker and podman accept URLs as keys."""
    if key == DOCKER_HUB_KEY:
        return key
    key = re.sub(r"^[a-z]+://", "", key.strip())
    return key.split("/", 1)[0]


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StoreError(f"cannot read {path}: {e.strerror}", "check its permissions") from e
    if len(data) > MAX_CONFIG_BYTES:
        raise InvalidInputError(f"{path} is too large to be a credentials file")
    try:
        obj = json.loads(data.decode("utf-8") or "{}")
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # RecursionError: deeply nested arrays
        raise InvalidInputError(f"{path} is not valid JSON", "fix or remove the file") from e
    return obj if isinstance(obj, dict) else None


def _entry_for(auths: Any, host: str) -> dict[str, Any] | None:
    if not isinstance(auths, dict):
        return None
    wanted = {_normalise_key(k) for k in host_keys(host)}
    for key, value in auths.items():
        if isinstance(key, str) and _normalise_key(key) in wanted and isinstance(value, dict):
            return value
    return None


def _decode_entry(entry: dict[str, Any], source: str) -> Credential | None:
    """An ``auths`` entry: ``auth`` is base64(user:password); ``identitytoken`` is an OAuth2 refresh token."""
    token = entry.get("identitytoken")
    username, password = entry.get("username") or "", entry.get("password") or ""
    encoded = entry.get("auth")
    if isinstance(encoded, str) and encoded:
        try:
            text = base64.b64decode(encoded, validate=False).decode("utf-8")
        except ValueError as e:  # binascii.Error, UnicodeDecodeError, or non-ASCII text given to b64decode
            raise InvalidInputError(f"the credentials for a registry in {source} are not valid base64",
                                    "log in again") from e
        username, _, password = text.partition(":")
    if isinstance(token, str) and token:
        return Credential(username=str(username), identity_token=token, source=source)
    if username and password:
        return Credential(str(username), str(password), source=source)
    return None


# ---------------------------------------------------------------------------------------------------------
# docker-credential-* helpers (docker/docker-credential-helpers protocol: `get`, server URL on stdin,
# JSON {"ServerURL","Username","Secret"} on stdout; "credentials not found" on a miss).

def run_helper(name: str, server: str, *, runner: Callable[..., subprocess.CompletedProcess] = subprocess.run
               ) -> Credential | None:
    program = f"docker-credential-{name}"
    path = shutil.which(program)
    if path is None:
        return None  # a configured but missing helper (e.g. "desktop" on a CI box) is not an error, as in oras
    try:
        done = runner([path, "get"], input=server.encode(), capture_output=True, timeout=HELPER_TIMEOUT)
    except subprocess.TimeoutExpired as e:
        raise AuthError(f"the credential helper {program} did not answer within {HELPER_TIMEOUT:.0f} s") from e
    except OSError as e:
        raise AuthError(f"cannot run the credential helper {program}: {e.strerror}") from e
    if done.returncode != 0:
        out = (done.stdout + done.stderr).decode("utf-8", "replace")
        if "not found" in out.lower():
            return None
        raise AuthError(f"the credential helper {program} failed (exit status {done.returncode})",
                        f"run 'echo {server} | {program} get' to see why")
    try:
        obj = json.loads(done.stdout.decode("utf-8"))
        username, secret = str(obj.get("Username") or ""), str(obj.get("Secret") or "")
    except (UnicodeDecodeError, ValueError, AttributeError) as e:
        raise AuthError(f"the credential helper {program} printed something that is not its JSON answer") from e
    if not secret:
        return None
    source = f"{program}"
    if username == "<token>":  # docker-credential-helpers' marker for an identity token
        return Credential(identity_token=secret, source=source)
    return Credential(username, secret, source=source)


# ---------------------------------------------------------------------------------------------------------
# the sources

def docker_config_path() -> Path:
    return (config.docker_config() or Path.home() / ".docker") / "config.json"


def podman_auth_paths() -> list[Path]:
    paths = []
    explicit = config.registry_auth_file()
    if explicit:
        paths.append(explicit)
    runtime = config.xdg_runtime_dir()
    if runtime:
        paths.append(runtime / "containers" / "auth.json")
    paths.append((config.xdg_config_home() or Path.home() / ".config") / "containers" / "auth.json")
    return paths


def login_path() -> Path:
    return config.config_dir() / LOGIN_FILE


def login_hosts() -> set[str]:
    """The hosts the host-less ``MODELPKG_REGISTRY_USER`` / ``_PASSWORD`` are for, normalised (``_host_id``)."""
    home = config.registry_login_host() or config.default_registry()
    return {_host_id(h) for h in (home, *config.registry_login_hosts())}


def _host_id(host: str) -> str:
    """One spelling per host: lower case, no scheme or path (``https://GHCR.io/v2/`` -> ``ghcr.io``); Docker
    Hub's names are one host."""
    key = _normalise_key(host.lower())
    return DOCKER_HUB_KEY if key in _DOCKER_HUB_HOSTS else key


def from_env(host: str) -> Credential | None:
    key = _env_key(host)
    user, password = config.registry_login(key)
    if user and password:
        return Credential(user, password, source=f"MODELPKG_REGISTRY_USER_{key}")
    if _host_id(host) not in login_hosts():
        return None
    user, password = config.registry_login()
    if user and password:
        return Credential(user, password, source="MODELPKG_REGISTRY_USER")
    return None


def from_login_file(host: str) -> Credential | None:
    path = login_path()
    obj = _read_json(path)
    entry = _entry_for((obj or {}).get("auths"), host)
    return _decode_entry(entry, str(path)) if entry else None


def from_docker_config(host: str, runner=subprocess.run) -> Credential | None:
    path = docker_config_path()
    obj = _read_json(path)
    if not obj:
        return None
    server = host_keys(host)[0]
    helpers = obj.get("credHelpers")
    if isinstance(helpers, dict):
        wanted = {_normalise_key(k) for k in host_keys(host)}
        for key, helper in helpers.items():
            if isinstance(helper, str) and helper and _normalise_key(key) in wanted:
                return run_helper(helper, server, runner=runner)
    store = obj.get("credsStore")
    if isinstance(store, str) and store:
        found = run_helper(store, server, runner=runner)
        if found:
            return found
    entry = _entry_for(obj.get("auths"), host)
    return _decode_entry(entry, str(path)) if entry else None


def from_podman(host: str) -> Credential | None:
    for path in podman_auth_paths():
        obj = _read_json(path)
        entry = _entry_for((obj or {}).get("auths"), host)
        if entry:
            found = _decode_entry(entry, str(path))
            if found:
                return found
    return None


def lookup(host: str) -> Credential | None:
    """The credential for ``host`` from the first source that has one, or None (anonymous)."""
    for source in (from_env, from_login_file, from_docker_config, from_podman):
        found = source(host)
        if found is not None:
            return found
    return None


# ---------------------------------------------------------------------------------------------------------
# modelpkg login / logout

def save_login(host: str, credential: Credential) -> Path:
    """Store ``credential`` for ``host`` in modelpkg's own file (0600, written atomically)."""
    path = login_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as e:
        raise fsutil.os_error(e, path.parent, "creating") from e
    obj = _read_json(path) or {}
    auths = obj.get("auths") if isinstance(obj.get("auths"), dict) else {}
    auths = {k: v for k, v in auths.items() if _normalise_key(k) != _normalise_key(host)}
    if credential.identity_token:
        auths[host] = {"identitytoken": credential.identity_token}
        if credential.username:
            auths[host]["username"] = credential.username
    else:
        raw = f"{credential.username}:{credential.password}".encode()
        auths[host] = {"auth": base64.b64encode(raw).decode("ascii")}
    obj["auths"] = auths
    fsutil.atomic_write(path, json.dumps(obj, indent=2, sort_keys=True).encode(), mode=0o600)
    return path


def remove_login(host: str) -> Path:
    """Forget ``host``'s credential in modelpkg's file; ``NotFoundError`` when there is none."""
    path = login_path()
    obj = _read_json(path) or {}
    auths = obj.get("auths") if isinstance(obj.get("auths"), dict) else {}
    kept = {k: v for k, v in auths.items() if _normalise_key(k) != _normalise_key(host)}
    if len(kept) == len(auths):
        raise NotFoundError(f"not logged in to {host}",
                            "credentials in Docker's or podman's files are managed with 'docker logout' / "
                            "'podman logout'; environment variables with your shell")
    obj["auths"] = kept
    fsutil.atomic_write(path, json.dumps(obj, indent=2, sort_keys=True).encode(), mode=0o600)
    return path
