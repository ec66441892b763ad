"""Registry authentication: ``WWW-Authenticate`` challenges, Bearer tokens per scope, and Basic.

The token flow is Docker's (distribution docs spec/auth/token.md and oauth.md), which every OCI registry
uses: a request answered ``401`` carries ``WWW-Authenticate: Bearer realm=..,service=..,scope=..``; the
client gets a token from the realm (``GET`` with Basic credentials or anonymously, or an OAuth2 ``POST``
with a refresh/identity token), and retries once. Tokens are cached per set of scopes
(``repository:<name>:<actions>``) and refreshed before ``expires_in`` runs out (default 60 s). Once a
registry has challenged, later requests fetch their scope's token up front instead of taking a 401 each.

The realm is checked before any request goes to it (an SSRF guard, as Docker Model Runner's transport
does): http(s) only, plain http only when the registry itself is plain http, and never a link-local or
cloud-metadata address.

Adapter: HTTP via a ``send`` function the client passes in. Imports ``modelpkg.core.errors`` and
``modelpkg.registry.credentials`` (for the type); never the store.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from modelpkg.core.errors import AuthError, RegistryError
from modelpkg.registry.credentials import Credential

DEFAULT_EXPIRY = 60  # token.md: "if not specified, the token lasts 60 seconds"
MAX_EXPIRY = 86400  # a longer (or infinite) expires_in is taken as a day
MAX_TOKEN_BYTES = 1024 * 1024
_METADATA_HOSTS = {"metadata.google.internal", "metadata", "instance-data", "metadata.azure.internal"}
_METADATA_IPS = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254"),
                 ipaddress.ip_address("100.100.100.200")}


@dataclass(frozen=True)
class Challenge:
    scheme: str  # lower case: "bearer", "basic"
    params: Mapping[str, str] = field(default_factory=dict)

    @property
    def realm(self) -> str:
        return self.params.get("realm", "")

    @property
    def service(self) -> str:
        return self.params.get("service", "")

    @property
    def scopes(self) -> tuple[str, ...]:
        return tuple(self.params.get("scope", "").split())

    @property
    def error(self) -> str:
        return self.params.get("error", "")


def scope(repository: str, *actions: str) -> str:
    """``repository:acme/tiny:pull,push`` (token.md "Requesting a Token")."""
    return f"repository:{repository}:{','.join(actions)}"


_ACTION_ORDER = {"pull": 0, "push": 1, "delete": 2, "*": 3}


def merge_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """One scope per resource with the union of its actions, sorted: the token cache's key.

    ``repository:a:pull`` + ``repository:a:pull,push`` -> ``("repository:a:pull,push",)``.
    """
    actions: dict[tuple[str, str], set[str]] = {}
    for item in scopes:
        kind, sep, rest = item.partition(":")
        name, sep2, acts = rest.rpartition(":")
        if not sep or not sep2 or not name:
            continue
        actions.setdefault((kind, name), set()).update(a for a in acts.split(",") if a)
    return tuple(sorted(f"{kind}:{name}:{','.join(sorted(acts, key=lambda a: (_ACTION_ORDER.get(a, 9), a)))}"
                        for (kind, name), acts in actions.items()))


# ---------------------------------------------------------------------------------------------------------
# RFC 7235 challenge parsing: quoted values may hold commas, and one header may hold several challenges.

_TCHAR = set("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _token(text: str, i: int) -> tuple[str, int]:
    j = i
    while j < len(text) and text[j] in _TCHAR:
        j += 1
    return text[i:j], j


def _skip(text: str, i: int, chars: str = " \t") -> int:
    while i < len(text) and text[i] in chars:
        i += 1
    return i


def _quoted(text: str, i: int) -> tuple[str, int]:
    out, i = [], i + 1
    while i < len(text) and text[i] != '"':
        if text[i] == "\\" and i + 1 < len(text):
            i += 1
        out.append(text[i])
        i += 1
    return "".join(out), i + 1


def parse_challenges(header: str) -> list[Challenge]:
    """Parse a ``WWW-Authenticate`` value into challenges; unknown syntax is skipped, never raised."""
    challenges: list[Challenge] = []
    i, n = 0, len(header or "")
    text = header or ""
    while i < n:
        i = _skip(text, i, " \t,")
        scheme, i = _token(text, i)
        if not scheme:
            i += 1
            continue
        params: dict[str, str] = {}
        while True:
            i = _skip(text, i)
            name, j = _token(text, i)
            k = _skip(text, j)
            if not name or k >= n or text[k] != "=" or text[k + 1:k + 2] == "=":
                # token68 or the next challenge's scheme: stop this challenge's params here
                if name and (k >= n or text[k] != "="):
                    break
                if name:  # token68 ("abc==") – consume it
                    i = _skip(text, k, "=")
                break
            k = _skip(text, k + 1)
            if k < n and text[k] == '"':
                value, i = _quoted(text, k)
            else:
                value, i = _token(text, k)
            params[name.lower()] = value
            i = _skip(text, i)
            if i < n and text[i] == ",":
                i += 1
                continue
            break
        challenges.append(Challenge(scheme.lower(), params))
    return challenges


# ---------------------------------------------------------------------------------------------------------
# the realm guard

def check_realm(realm: str, *, registry_secure: bool, resolve=socket.getaddrinfo) -> None:
    try:
        parts = urlsplit(realm)
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError as e:
        raise AuthError(f"the registry's token service URL is not valid: {e}",
                        "the registry is misconfigured or not trustworthy") from e
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("http", "https") or not host:
        raise AuthError(f"the registry's token service {safe_url(realm)} is not an http(s) URL",
                        "the registry is misconfigured or not trustworthy")
    if parts.scheme == "http" and registry_secure:
        raise AuthError(f"the registry's token service {safe_url(realm)} uses plain http",
                        "credentials are not sent over plain http to an https registry")
    if host in _METADATA_HOSTS:
        raise AuthError(f"the registry's token service points at a metadata address ({host})",
                        "the registry is misconfigured or not trustworthy")
    try:
        addresses = {ipaddress.ip_address(host.strip("[]"))}
    except ValueError:
        try:
            infos = resolve(host, parts.port or (443 if parts.scheme == "https" else 80), proto=socket.IPPROTO_TCP)
        except (OSError, UnicodeError):
            return  # unresolvable: the token request itself will fail with a network error
        addresses = set()
        for info in infos:
            try:
                addresses.add(ipaddress.ip_address(info[4][0].split("%")[0]))
            except ValueError:
                continue
    for address in addresses:
        if address.is_link_local or address in _METADATA_IPS or address.is_multicast or address.is_unspecified:
            raise AuthError(f"the registry's token service points at a link-local or metadata address ({host})",
                            "the registry is misconfigured or not trustworthy")


def safe_url(url: str) -> str:
    """A URL fit for a message: no query string (which may carry secrets), no user info."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}"


# ---------------------------------------------------------------------------------------------------------
# the authenticator


@dataclass
class _Token:
    value: str
    expires: float  # monotonic


class Authenticator:
    """Per-registry auth state, shared by the threads of one client.

    ``send(method, url, headers=, data=, params=)`` performs one HTTP request without registry auth (the
    client's transport, with its timeouts, TLS settings and retries) and returns a ``requests.Response``.
    """

    def __init__(self, host: str, credential: Credential | None, send: Callable, *, registry_secure: bool,
                 clock: Callable[[], float] = time.monotonic, resolve=socket.getaddrinfo):
        self.host = host
        self.credential = credential
        self._send = send
        self._secure = registry_secure
        self._clock = clock
        self._resolve = resolve
        self._lock = threading.Lock()
        self._scheme: str | None = None  # "basic" or "bearer", once the registry has challenged
        self._bearer: Challenge | None = None
        self._tokens: dict[tuple[str, ...], _Token] = {}
        self._refresh_token = credential.identity_token if credential else ""
        self.tokens_fetched = 0

    # What a request sends up front.
    @property
    def scheme(self) -> str | None:
        """"basic" or "bearer" once the registry has challenged; None before (or for an open registry)."""
        return self._scheme

    def header(self, scopes: Iterable[str]) -> str | None:
        with self._lock:
            if self._scheme == "basic":
                return self._basic()
            if self._scheme == "bearer":
                return "Bearer " + self._token_for(merge_scopes(scopes), force=False)
        return None

    def handle_401(self, www_authenticate: str, scopes: Iterable[str], sent: str | None) -> bool:
        """Learn from a 401's challenge; True when a retry with new credentials makes sense."""
        challenges = parse_challenges(www_authenticate)
        bearer = next((c for c in challenges if c.scheme == "bearer"), None)
        basic = next((c for c in challenges if c.scheme == "basic"), None)
        with self._lock:
            if bearer is not None and bearer.realm:
                check_realm(bearer.realm, registry_secure=self._secure, resolve=self._resolve)
                self._scheme, self._bearer = "bearer", bearer
                key = merge_scopes([*scopes, *bearer.scopes])
                cached = self._tokens.get(key)
                if cached is not None and cached.expires > self._clock() and sent != "Bearer " + cached.value:
                    return True  # another thread fetched this token after our request left: just retry
                self._token_for(key, force=True)
                # later requests for these scopes find the token under their own key too
                self._tokens[merge_scopes(scopes)] = self._tokens[key]
                return True
            if basic is not None:
                if self.credential is None or not self.credential.has_password:
                    return False
                if sent is not None and sent.startswith("Basic "):
                    return False  # these credentials were just refused
                self._scheme = "basic"
                return True
        return False

    def _basic(self) -> str | None:
        if self.credential is None or not self.credential.has_password:
            return None
        raw = f"{self.credential.username}:{self.credential.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")

    def _token_for(self, scopes: tuple[str, ...], *, force: bool) -> str:
        now = self._clock()
        cached = self._tokens.get(scopes)
        if cached is not None and not force and cached.expires > now:
            return cached.value
        assert self._bearer is not None
        token, lifetime = self._fetch(self._bearer, scopes)
        # refresh early: a tenth of the lifetime, at least 5 s, before the server's expiry
        margin = max(5.0, lifetime / 10) if lifetime > 10 else lifetime / 2
        self._tokens[scopes] = _Token(token, now + lifetime - margin)
        return token

    def _fetch(self, challenge: Challenge, scopes: tuple[str, ...]) -> tuple[str, float]:
        params: list[tuple[str, str]] = []
        if challenge.service:
            params.append(("service", challenge.service))
        params += [("scope", s) for s in scopes]
        cred = self.credential
        response = None
        if self._refresh_token:
            # oauth.md: POST a refresh token (Docker's identitytoken); 404/405 means no OAuth2 endpoint
            form = {"grant_type": "refresh_token", "refresh_token": self._refresh_token,
                    "client_id": "modelpkg", "service": challenge.service, "scope": " ".join(scopes)}
            response = self._send("POST", challenge.realm, data=form,
                                  headers={"Content-Type": "application/x-www-form-urlencoded"})
            if response.status_code in (404, 405):
                response = None
        if response is None:
            headers = {}
            if cred is not None and cred.has_password:
                headers["Authorization"] = self._basic()
                params.append(("account", cred.username))
            response = self._send("GET", challenge.realm, params=params, headers=headers)
        self.tokens_fetched += 1
        return self._parse_token(response)

    def _parse_token(self, response) -> tuple[str, float]:
        status = response.status_code
        if status in (401, 403):
            if self.credential is not None:
                raise AuthError(f"wrong username or password for {self.host} (the token service refused them)",
                                f"check them, then run 'modelpkg login {self.host}'", )
            raise AuthError(f"{self.host} requires a login", f"run 'modelpkg login {self.host}'")
        if status != 200:
            raise RegistryError(f"the token service of {self.host} answered HTTP {status}",
                                "try again later", status=status)
        body = response.content
        if len(body) > MAX_TOKEN_BYTES:
            raise RegistryError(f"the token service of {self.host} sent an answer over {MAX_TOKEN_BYTES} bytes")
        try:
            obj = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError) as e:  # RecursionError: deeply nested arrays
            raise RegistryError(f"the token service of {self.host} sent an answer that is not JSON") from e
        token = obj.get("token") or obj.get("access_token") if isinstance(obj, dict) else None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"the token service of {self.host} sent no token")
        if isinstance(obj.get("refresh_token"), str) and obj["refresh_token"]:
            self._refresh_token = obj["refresh_token"]
        expires = obj.get("expires_in")
        # bounded: a 400-digit integer would overflow float(), infinity would never expire
        usable = isinstance(expires, (int, float)) and expires > 0
        lifetime = float(min(expires, MAX_EXPIRY)) if usable else DEFAULT_EXPIRY
        return token, lifetime
