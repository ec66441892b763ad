"""Sending one request to an OCI registry: timeouts, retries, auth challenges, redirects, and errors.

What it does at every request (OCI distribution-spec; Docker token spec):

- a timeout, always (connect and between-bytes read);
- bounded retries with exponential backoff and full jitter on connection errors, 5xx and 429 (honouring
  ``Retry-After``); never on other 4xx, except one re-authentication on 401 (through ``auth``);
- redirects followed by hand: ``Authorization`` goes only to the registry's own scheme and host, so a
  blob served from S3/CDN presigned URLs never sees the registry token;
- proxies as ``requests`` reads them from the environment (``HTTPS_PROXY``, ``HTTP_PROXY``, ``ALL_PROXY``,
  ``NO_PROXY``); a proxy's 407, on a CONNECT or a plain-http request, is one ``AuthError`` naming the proxy
  (without its user info), never retried;
- registry errors keep their spec code (``MANIFEST_UNKNOWN``, ``DENIED``, ...) on the raised
  ``ModelpkgError`` (``.code``, ``.status``) and become one message naming the subject, with a hint;
  URLs in messages carry no query string (upload states and signatures stay out of logs).

Plain http is used only for loopback hosts or with ``insecure=True``; TLS is verified otherwise, against
``ca_bundle`` when given.

``Transport`` is the base of ``client.RegistryClient``; ``upload`` and ``download`` drive it through its
public methods. Adapter: HTTP over ``requests``. Imports the pure core and ``auth``/``credentials``; never
the blob and manifest operations (``client``, ``upload``, ``download``) or the store.
"""

from __future__ import annotations

import email.utils
import ipaddress
import json
import os
import random
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import quote, urljoin, urlsplit

import requests

from modelpkg.core.errors import (
    AuthError,
    InvalidInputError,
    ModelpkgError,
    NetworkError,
    NotFoundError,
    RegistryError,
)
from modelpkg.registry.auth import Authenticator, safe_url
from modelpkg.registry.credentials import Credential
from modelpkg.registry.download import Interrupted

DEFAULT_TIMEOUT = (15.0, 60.0)  # (connect, read): seconds to connect, and at most between two reads
DEFAULT_RETRIES = 5
MAX_RETRY_AFTER = 60.0
MAX_BACKOFF = 20.0
MAX_REDIRECTS = 10
MAX_ERROR_BODY = 64 * 1024
USER_AGENT = "modelpkg/0.1 (+https://github.com/modelpkg)"
_RETRY_STATUS = {429, 500, 502, 503, 504}
_REDIRECTS = {301, 302, 303, 307, 308}
_T = TypeVar("_T", bound="Transport")


def is_loopback(host: str) -> bool:
    """``localhost``, ``*.localhost``, 127.0.0.0/8 and ::1, with or without a port."""
    if host.startswith("[") and "]" in host:
        name = host[1:host.index("]")]
    elif host.count(":") == 1:
        name = host.split(":", 1)[0]
    else:
        name = host
    name = name.lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc.lower()


def _tag(error: ModelpkgError, code: str | None, status: int | None) -> ModelpkgError:
    """Every registry-born error carries the spec code and HTTP status, whatever its class."""
    error.code = code  # type: ignore[attr-defined]
    error.status = status  # type: ignore[attr-defined]
    return error


class Transport:
    """Requests to one registry host. Thread-safe: pull's workers share one (and its token cache)."""

    def __init__(self, host: str, *, insecure: bool = False, credentials: Credential | None = None,
                 ca_bundle: str | os.PathLike | None = None, timeout: tuple[float, float] | float = DEFAULT_TIMEOUT,
                 session: requests.Session | None = None, retries: int = DEFAULT_RETRIES, backoff: float = 0.5,
                 sleep: Callable[[float], None] = time.sleep):
        self.host = host
        self.insecure = insecure
        # plain http for loopback (as Docker treats localhost) or when asked; a CA bundle says the registry
        # speaks TLS, so it is used even on loopback
        self.scheme = "http" if insecure or (is_loopback(host) and not ca_bundle) else "https"
        # Docker Hub's API lives on registry-1.docker.io (distribution/reference normalize.go)
        endpoint = "registry-1.docker.io" if host in ("docker.io", "index.docker.io") else host
        self.base = f"{self.scheme}://{endpoint}/v2/"
        self.timeout = timeout
        self.verify: bool | str = str(ca_bundle) if ca_bundle else True
        self.retries = retries
        self.backoff = backoff
        self._sleep = sleep
        self._owns_session = session is None
        if session is None:
            session = requests.Session()
            adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=16, max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
        self.session = session
        self.auth = Authenticator(host, credentials, self._auth_send, registry_secure=self.scheme == "https")
        self.warnings: list[str] = []
        self._lock = threading.Lock()

    def close(self) -> None:
        if self._owns_session:
            self.session.close()

    def __enter__(self: _T) -> _T:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def url(self, repo: str, *parts: str) -> str:
        return self.base + repo + "/" + "/".join(quote(p, safe=":@") for p in parts)

    # ----------------------------------------------------------------------------------------------------
    # one request on the wire

    def _raw_send(self, method: str, url: str, headers: dict[str, str], body: Callable[[], Any] | None,
                  stream: bool, params=None) -> requests.Response:
        """One request, redirects followed by hand (OCI distribution-spec "API": MUST NOT forward
        Authorization across host boundaries). Network failures become NetworkError."""
        headers = {"User-Agent": USER_AGENT, **headers}
        origin = _origin(url)
        for _ in range(MAX_REDIRECTS + 1):
            response = self._send_one(method, url, headers, body, stream, params)
            if response.status_code not in _REDIRECTS or "Location" not in response.headers:
                self._note_warnings(response)
                return response
            target = urljoin(url, response.headers["Location"])
            response.close()
            self._check_redirect(url, target, response.status_code)
            if _origin(target) != origin:
                headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            if response.status_code == 303 or (response.status_code in (301, 302) and method not in ("GET", "HEAD")):
                method, body = ("HEAD" if method == "HEAD" else "GET"), None
            url, params = target, None
        raise RegistryError(f"{self.host}: too many redirects")

    def _send_one(self, method: str, url: str, headers: dict[str, str], body: Callable[[], Any] | None,
                  stream: bool, params) -> requests.Response:
        """One HTTP exchange, no redirect followed; ``requests``' failures translated (``_Retryable`` for
        those worth another try)."""
        try:
            return self.session.request(method, url, headers=headers, params=params,
                                        data=body() if body else None, stream=stream,
                                        timeout=self.timeout, verify=self.verify, allow_redirects=False)
        except requests.exceptions.ProxyError as e:
            if "407" in str(e):  # the proxy refused the CONNECT for an https URL
                raise proxy_auth_error(url) from e
            raise _Retryable(f"cannot reach {urlsplit(url).netloc} through the proxy {proxy_for(url)}: "
                             f"{reason(e)}") from e
        except requests.exceptions.SSLError as e:
            raise NetworkError(f"TLS connection to {urlsplit(url).netloc} failed (handshake or certificate)",
                               "if it uses a private CA, pass --ca-bundle FILE; if it serves plain http, "
                               "use --insecure") from e
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                requests.exceptions.ChunkedEncodingError) as e:
            if _unresolvable(e):  # a name that does not resolve will not resolve in a second either
                raise NetworkError(f"cannot resolve the registry host {urlsplit(url).hostname}",
                                   "check the name (and your DNS or proxy settings)") from e
            raise _Retryable(f"cannot reach {urlsplit(url).netloc}: {reason(e)}") from e
        except requests.exceptions.InvalidURL as e:
            raise InvalidInputError(f"invalid registry URL for {urlsplit(url).netloc}") from e
        except requests.exceptions.RequestException as e:
            raise NetworkError(f"request to {urlsplit(url).netloc} failed: {reason(e)}") from e

    def _check_redirect(self, url: str, target: str, status: int) -> None:
        scheme = urlsplit(target).scheme
        if scheme not in ("http", "https"):
            raise RegistryError(f"{self.host} redirected to a non-http URL", status=status)
        if scheme == "http" and urlsplit(url).scheme == "https":
            raise RegistryError(f"{self.host} redirected from https to plain http ({safe_url(target)})",
                                "refusing to downgrade the connection", status=status)

    def _note_warnings(self, response: requests.Response) -> None:
        # distribution-spec "Warnings": show, deduplicated, never act on them
        for value in response.headers.get("Warning", "").split(",") if response.headers.get("Warning") else ():
            text = value.strip()
            if text.startswith("299") and text not in self.warnings:
                with self._lock:
                    self.warnings.append(text)

    # ----------------------------------------------------------------------------------------------------
    # retries

    def _auth_send(self, method: str, url: str, *, headers=None, data=None, params=None) -> requests.Response:
        """For the authenticator: a token request with retries, the body read with a cap."""

        def once():
            response = self._raw_send(method, url, headers or {}, (lambda: data) if data is not None else None,
                                      stream=True, params=params)
            if response.status_code in _RETRY_STATUS:
                raise _RetryableResponse(response)
            return response

        response = self._with_retries(once, f"the token service of {self.host}")
        try:
            response._content = response.raw.read(1024 * 1024 + 1, decode_content=True)
        except Exception as e:
            raise NetworkError(f"the token service of {self.host} broke off its answer") from e
        finally:
            response.close()
        return response

    def _with_retries(self, attempt: Callable[[], requests.Response], what: str) -> requests.Response:
        last: Exception | None = None
        for n in range(self.retries + 1):
            try:
                return attempt()
            except _RetryableResponse as e:
                last = e
                response = e.response
                if n == self.retries:
                    return response
                delay = self._retry_after(response) if response.status_code in (429, 503) else None
                response.close()
                self._sleep(delay if delay is not None else self._backoff(n))
            except _Retryable as e:
                last = e
                if n == self.retries:
                    break
                self._sleep(self._backoff(n))
        raise NetworkError(f"{last} (after {self.retries + 1} attempts)", "check the network and the registry, "
                           "then run the command again: downloads resume where they stopped") from last

    def _backoff(self, n: int) -> float:
        return random.uniform(0, min(MAX_BACKOFF, self.backoff * (2 ** n)))  # "full jitter"

    def back_off(self, attempt: int) -> None:
        """Wait before retry ``attempt + 1`` (0 before the first): for transfers that count their own breaks."""
        self._sleep(self._backoff(attempt))

    @staticmethod
    def _retry_after(response: requests.Response) -> float | None:
        value = response.headers.get("Retry-After")
        if not value:
            return None
        try:
            seconds = float(value)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value)
                seconds = when.timestamp() - time.time()
            except (TypeError, ValueError):
                return None
        return min(max(seconds, 0.0), MAX_RETRY_AFTER)

    # ----------------------------------------------------------------------------------------------------
    # what the operations call

    def request(self, method: str, url: str, *, scopes: tuple[str, ...] = (), headers: dict | None = None,
                body: Callable[[], Any] | None = None, stream: bool = False, retry: bool = True
                ) -> requests.Response:
        """A registry request with auth, retries and redirects. Returns any final response; callers check
        the status (``raise_for``)."""
        headers = dict(headers or {})
        reauthed = False
        while True:
            sent = self.auth.header(scopes) if _origin(url) == _origin(self.base) else None
            if sent:
                headers["Authorization"] = sent
            else:
                headers.pop("Authorization", None)

            def once():
                response = self._raw_send(method, url, headers, body, stream)
                if retry and response.status_code in _RETRY_STATUS:
                    raise _RetryableResponse(response)
                return response

            if retry:
                response = self._with_retries(once, self.host)
            else:
                try:
                    response = once()
                except _Retryable as e:
                    raise NetworkError(str(e), "check the network and the registry, then try again") from e
            if response.status_code == 401 and not reauthed:
                challenge = response.headers.get("WWW-Authenticate", "")
                response.close()
                reauthed = True
                if self.auth.handle_401(challenge, scopes, sent):
                    continue
            return response

    def send_once(self, method: str, url: str, scopes: tuple[str, ...], headers: dict,
                  data: Any = None) -> requests.Response:
        """An upload step: auth and one re-auth, but no automatic retry (the body is one-shot). A broken
        connection or a 5xx/429 answer raises ``Interrupted``, for the transfer's own retry budget."""
        body = (lambda: data) if data is not None else None
        try:
            response = self.request(method, url, scopes=scopes, headers=headers, body=body, retry=False)
        except NetworkError as e:
            if isinstance(e.__cause__, _Retryable):
                raise Interrupted(str(e)) from e
            raise
        if response.status_code in _RETRY_STATUS:
            response.close()
            raise Interrupted(f"{self.host} answered HTTP {response.status_code}")
        return response

    def delete_quietly(self, url: str) -> None:
        """One ``DELETE`` (an abandoned upload session), no retry; any failure is ignored."""
        try:
            self._raw_send("DELETE", url, self._auth_headers(url), None, stream=False).close()
        except (ModelpkgError, _Retryable):
            pass

    def _auth_headers(self, url: str, scopes: tuple[str, ...] = ()) -> dict[str, str]:
        if _origin(url) != _origin(self.base):
            return {}
        value = self.auth.header(scopes)
        return {"Authorization": value} if value else {}

    # ----------------------------------------------------------------------------------------------------
    # errors

    def raise_for(self, response: requests.Response, *, kind: str, name: str, subject: str | None = None) -> None:
        """Turn a failed response into one clear ``ModelpkgError`` naming ``kind`` ``name``; auth errors name
        ``subject`` (the model being pulled or pushed) when given."""
        status = response.status_code
        code, detail = None, ""
        if response.request is not None and response.request.method != "HEAD":
            code, detail = error_body(response)
        response.close()
        host = self.host
        who = subject or name
        if status == 404 or code in ("MANIFEST_UNKNOWN", "NAME_UNKNOWN", "BLOB_UNKNOWN"):
            raise _tag(NotFoundError(f"{kind} not found: {name}",
                                     "check the name and tag; 'modelpkg list' shows local models"), code, status)
        if status == 401:
            raise _tag(self._unauthorized(who), code or "UNAUTHORIZED", status)
        if status == 407:  # a plain-http request answered by the proxy itself
            raise _tag(proxy_auth_error(response.url or self.base), code, status)
        if status == 403 or code == "DENIED":
            raise _tag(AuthError(f"access denied to {who}",
                                 f"check that your account may use this repository ('modelpkg login {host}')"),
                       code or "DENIED", status)
        if status == 429:
            raise _tag(RegistryError(f"{host} is rate-limiting requests (too many requests)",
                                     "wait a few minutes, or log in for a higher limit", code=code, status=status),
                       code or "TOOMANYREQUESTS", status)
        text = f": {detail[:200]}" if detail else ""
        label = f"{code}" if code else f"HTTP {status}"
        hint = "the registry may be overloaded; try again later" if status >= 500 else None
        raise RegistryError(f"{host} refused {kind} {name} ({label}){text}", hint, code=code, status=status)

    def _unauthorized(self, who: str) -> AuthError:
        """A 401 after the one re-authentication: no login, a token that may not do this, or a wrong password."""
        host = self.host
        if self.auth.credential is None:
            return AuthError(f"authentication required for {who}", f"run 'modelpkg login {host}'")
        if self.auth.scheme == "bearer":
            return AuthError(f"access denied to {who}",
                             f"check that your account ({self.auth.credential.username or 'token'}) may use "
                             "this repository")
        return AuthError(f"wrong username or password for {host}", f"run 'modelpkg login {host}'")


def proxy_for(url: str) -> str:
    """The proxy ``requests`` uses for ``url`` (``HTTPS_PROXY``, ``HTTP_PROXY``, ``ALL_PROXY``, minus
    ``NO_PROXY``), without its user info; "" for none."""
    proxy = requests.utils.select_proxy(url, requests.utils.get_environ_proxies(url)) or ""
    return safe_url(proxy if "://" in proxy else f"http://{proxy}") if proxy else ""


def proxy_auth_error(url: str) -> AuthError:
    proxy = proxy_for(url) or "the proxy"
    return AuthError(f"the proxy {proxy} wants credentials (HTTP 407) for {urlsplit(url).netloc}",
                     "put them in the proxy URL (HTTPS_PROXY=http://user:password@host:port), or list the "
                     "registry in NO_PROXY if it needs no proxy")


class _Retryable(Exception):
    """A connection-level failure worth retrying."""


class _RetryableResponse(Exception):
    def __init__(self, response: requests.Response):
        super().__init__(f"HTTP {response.status_code}")
        self.response = response


def reason(e: Exception) -> str:
    """A network failure in a few words (``connection refused``, ``timed out``...), for one-line messages."""
    text = str(e)
    for marker in ("Connection refused", "timed out", "Name or service not known", "nodename nor servname",
                   "Temporary failure in name resolution", "Connection reset", "Connection aborted",
                   "Read timed out", "RemoteDisconnected", "IncompleteRead", "Network is unreachable"):
        if marker.lower() in text.lower():
            return marker.lower()
    return type(e).__name__


def _unresolvable(e: BaseException) -> bool:
    from urllib3.exceptions import NameResolutionError

    seen = 0
    while e is not None and seen < 10:
        if isinstance(e, (NameResolutionError, socket.gaierror)):
            return True
        for arg in getattr(e, "args", ()):
            if isinstance(arg, BaseException) and _unresolvable_direct(arg):
                return True
        e = e.__cause__ or e.__context__
        seen += 1
    return False


def _unresolvable_direct(e: BaseException) -> bool:
    from urllib3.exceptions import MaxRetryError, NameResolutionError

    if isinstance(e, MaxRetryError):
        e = e.reason
    return isinstance(e, (NameResolutionError, socket.gaierror))


def error_body(response: requests.Response) -> tuple[str | None, str]:
    """The first error's spec code and message from a JSON error body read with a cap."""
    try:
        if response._content is not False:  # already read (not streamed)
            data = (response.content or b"")[:MAX_ERROR_BODY]
        else:
            data = read_capped(response, MAX_ERROR_BODY) or b""
    except Exception:  # noqa: BLE001 - an unreadable error body still leaves the status
        return None, ""
    try:
        obj = json.loads(data.decode("utf-8"))
        first = obj["errors"][0]
        code = str(first.get("code") or "")[:64] or None
        message = str(first.get("message") or "")
        return code, " ".join(message.split())[:200]
    except (ValueError, KeyError, IndexError, TypeError, AttributeError, UnicodeDecodeError, RecursionError):
        return None, ""  # RecursionError: a body of nested arrays deeper than the stack


def body_errors() -> type[Exception]:
    """urllib3's base error: what a streamed body that breaks off raises besides requests' and OSError."""
    from urllib3.exceptions import HTTPError

    return HTTPError


def read_capped(response: requests.Response, limit: int) -> bytes | None:
    """Read at most ``limit`` bytes of a streamed body; None when there are more."""
    chunks, total = [], 0
    while True:
        chunk = response.raw.read(min(1024 * 1024, limit + 1 - total), decode_content=True)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            return None
    return b"".join(chunks)
