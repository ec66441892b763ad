"""Registry mirrors for pulls, configured in ``config.toml`` in the spirit of containers' ``registries.conf``.

The file is ``$MODELPKG_CONFIG_FILE``, else ``config.toml`` in the config dir (``modelpkg.base.config.config_dir()``)::

    [[registry]]
    prefix = "registry.ollama.ai"            # host, or host/namespace..., matched at a '/' boundary
    [[registry.mirror]]
    location = "mirror.local:5000/cache"     # host[:port][/path]; the path replaces the prefix
    insecure = true                          # plain http (loopback hosts always use http)
    pull-from-mirror = "digest-only"         # default; "all" also resolves tags here; "tag-only"

As in containers-registries.conf(5): the ``[[registry]]`` with the longest matching ``prefix`` applies; its
mirrors are tried in order before the upstream, and a mirror's ``location`` replaces the prefix (so
``registry.ollama.ai/library/gemma3`` through ``mirror.local:5000/cache`` is ``mirror.local:5000/cache/
library/gemma3``). ``pull-from-mirror`` says which pulls may use a mirror: ``all``, ``digest-only`` (the
default here; registries.conf defaults to ``all``) or ``tag-only``. One step further than registries.conf: a
pull by tag resolves the tag at the upstream and then still fetches the manifest's blobs by digest from
``digest-only`` mirrors, since content addressed by digest is the same wherever it comes from.

Mirrors apply to pulls only, never to push. Everything a mirror serves is verified against the digest it
was asked for, so a mirror can make a pull faster or slower but never make it accept other bytes; any
failure there (unreachable, 404, auth, wrong bytes) falls through to the next source, then the upstream.

Adapter: reads the config file (``tomllib``) and wraps ``PullClient``s (``modelpkg.registry.client``); imports
the core, ``config`` and ``client``; never ``connect`` (which builds the clients), the store or the
orchestration.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from modelpkg.base import config
from modelpkg.core.digest import Digest
from modelpkg.core.errors import AuthError, InvalidInputError, InvalidReferenceError, ModelpkgError, NetworkError
from modelpkg.core.manifest import Descriptor
from modelpkg.core.progress import NullProgress, Progress
from modelpkg.core.reference import Reference, parse_reference

if TYPE_CHECKING:  # annotations only: reading the mirror config needs neither requests nor the client
    import requests

    from modelpkg.registry.client import PullClient

CONFIG_FILE_ENV = "MODELPKG_CONFIG_FILE"
PULL_FROM = ("all", "digest-only", "tag-only")
DEFAULT_PULL_FROM = "digest-only"
_HINT = "see 'Mirrors' in the README for the format of config.toml"


# ---------------------------------------------------------------------------------------------------------
# the configuration: values, parser and formatter

@dataclass(frozen=True)
class Mirror:
    location: str                 # host[:port][/path]
    insecure: bool = False
    pull_from: str = DEFAULT_PULL_FROM


@dataclass(frozen=True)
class RegistryMirrors:
    prefix: str                   # host[:port][/namespace...]
    mirrors: tuple[Mirror, ...] = ()


@dataclass(frozen=True)
class MirrorConfig:
    registries: tuple[RegistryMirrors, ...] = ()
    origin: str = "config.toml"   # the file it came from, for messages

    def entry_for(self, ref: Reference) -> RegistryMirrors | None:
        """The ``[[registry]]`` whose prefix is the longest match of ``ref``'s name, or None."""
        matches = [r for r in self.registries if _matches(r.prefix, ref.name)]
        return max(matches, key=lambda r: len(r.prefix), default=None)

    def sources_for(self, ref: Reference, *, insecure: bool = False) -> list[Source]:
        """Where ``ref`` may be pulled from, in order: the mirrors that apply to it, then the upstream.

        For a pull by digest only mirrors that serve digests are listed; for a pull by tag every mirror is
        (``digest-only`` ones serve its blobs, see ``Source.serves_tags``). ``insecure`` is the upstream's.
        """
        upstream = Source(ref.host, ref.repository, insecure=insecure)
        entry = self.entry_for(ref)
        if entry is None:
            return [upstream]
        rest = ref.name[len(entry.prefix):]  # "" or "/more/path"
        sources = []
        for mirror in entry.mirrors:
            if ref.digest is not None and mirror.pull_from == "tag-only":
                continue
            host, _, path = mirror.location.partition("/")
            repository = (path + rest).strip("/")
            if not repository:
                raise InvalidInputError(f"{self.origin}: mirror {mirror.location!r} of prefix {entry.prefix!r} "
                                        f"leaves no repository name for {ref.name}",
                                        "give the mirror's location a path, or the prefix fewer components")
            sources.append(Source(host, repository, insecure=mirror.insecure, mirror=True,
                                  pull_from=mirror.pull_from))
        return [*sources, upstream]


@dataclass(frozen=True)
class Source:
    """One place to pull a repository from: a mirror or the upstream itself."""

    host: str
    repository: str
    insecure: bool = False
    mirror: bool = False
    pull_from: str = "all"

    @property
    def name(self) -> str:
        return f"{self.host}/{self.repository}"

    @property
    def serves_tags(self) -> bool:
        """May a tag be resolved here? (Content by digest may come from any listed source.)"""
        return self.pull_from in ("all", "tag-only")

    def reference(self, ref: Reference) -> Reference:
        """``ref`` as it is named on this source."""
        return Reference(self.host, self.repository, ref.tag, ref.digest)


def _matches(prefix: str, name: str) -> bool:
    return name == prefix or name.startswith(prefix + "/")


def parse_config(text: str, origin: str = "config.toml") -> MirrorConfig:
    """Parse the mirror part of ``config.toml``; ``InvalidInputError`` naming ``origin`` and the key.

    Top-level keys other than ``registry`` are left to other features; unknown keys inside ``[[registry]]``
    and ``[[registry.mirror]]`` are errors (a misspelt ``pull_from_mirror`` must not be silently ignored).
    """
    tomllib = _tomllib()
    try:
        document = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError) as e:  # RecursionError: nesting deeper than Python's stack
        raise InvalidInputError(f"{origin}: not valid TOML: {e}", _HINT) from e
    entries = document.get("registry", [])
    if not isinstance(entries, list):
        raise InvalidInputError(f"{origin}: 'registry' must be an array of tables, written [[registry]]", _HINT)
    registries, seen = [], set()
    for i, entry in enumerate(entries):
        where = f"registry[{i}]"
        if not isinstance(entry, dict):
            raise InvalidInputError(f"{origin}: {where} must be a table, written [[registry]]", _HINT)
        _no_unknown(entry, {"prefix", "location", "mirror"}, origin, where)
        prefix = entry.get("prefix", entry.get("location"))
        if prefix is None:
            raise InvalidInputError(f"{origin}: {where}.prefix is missing", _HINT)
        if "location" in entry and entry["location"] != prefix:
            raise InvalidInputError(f"{origin}: {where}.location: rewriting the upstream is not supported",
                                    "list the other registry as a [[registry.mirror]] of this prefix instead")
        prefix = _location(prefix, origin, f"{where}.prefix")
        if prefix in seen:
            raise InvalidInputError(f"{origin}: {where}.prefix {prefix!r} appears twice", "merge the two entries")
        seen.add(prefix)
        raw_mirrors = entry.get("mirror", [])
        if not isinstance(raw_mirrors, list):
            raise InvalidInputError(f"{origin}: {where}.mirror must be an array of tables, written "
                                    "[[registry.mirror]]", _HINT)
        mirrors = tuple(_mirror(m, origin, f"{where}.mirror[{j}]") for j, m in enumerate(raw_mirrors))
        registries.append(RegistryMirrors(prefix, mirrors))
    return MirrorConfig(tuple(registries), origin)


def _mirror(entry: object, origin: str, where: str) -> Mirror:
    if not isinstance(entry, dict):
        raise InvalidInputError(f"{origin}: {where} must be a table, written [[registry.mirror]]", _HINT)
    _no_unknown(entry, {"location", "insecure", "pull-from-mirror"}, origin, where)
    if "location" not in entry:
        raise InvalidInputError(f"{origin}: {where}.location is missing", _HINT)
    location = _location(entry["location"], origin, f"{where}.location")
    insecure = entry.get("insecure", False)
    if not isinstance(insecure, bool):
        raise InvalidInputError(f"{origin}: {where}.insecure must be true or false, not {insecure!r}", _HINT)
    pull_from = entry.get("pull-from-mirror", DEFAULT_PULL_FROM)
    if pull_from not in PULL_FROM:
        raise InvalidInputError(f"{origin}: {where}.pull-from-mirror must be one of {', '.join(PULL_FROM)}, "
                                f"not {pull_from!r}", _HINT)
    return Mirror(location, insecure, pull_from)


def _no_unknown(entry: dict, known: set[str], origin: str, where: str) -> None:
    for key in entry:
        if key not in known:
            raise InvalidInputError(f"{origin}: {where}.{key} is not a known key",
                                    f"known keys there: {', '.join(sorted(known))}")


def _location(value: object, origin: str, where: str) -> str:
    """A ``host[:port][/path]`` with a real host part (``.``, ``:`` or ``localhost``) and valid path parts."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidInputError(f"{origin}: {where} must be a non-empty string like host[:port][/path]", _HINT)
    text = value.strip().rstrip("/")
    if "://" in text:
        raise InvalidInputError(f"{origin}: {where} {value!r}: remove the scheme",
                                "write host[:port][/path]; set insecure = true for plain http")
    if "@" in text or "*" in text:
        raise InvalidInputError(f"{origin}: {where} {value!r}: digests and wildcards are not supported here",
                                "write host[:port][/path]")
    probe = f"{text}/x"  # reuse the reference grammar: host recognised as Docker does, path components checked
    try:
        parsed = parse_reference(probe, "\0")
    except InvalidReferenceError as e:
        raise InvalidInputError(f"{origin}: {where} {value!r} is not a valid host[:port][/path]", e.message) from e
    if parsed.name != probe or parsed.host == "\0":
        raise InvalidInputError(f"{origin}: {where} {value!r} must start with a registry host",
                                "a host has a '.' or a ':port', or is localhost")
    return text


def format_config(cfg: MirrorConfig) -> str:
    """``cfg`` as TOML that ``parse_config`` reads back to an equal value (defaults written out)."""
    lines: list[str] = []
    for entry in cfg.registries:
        lines += ["[[registry]]", f"prefix = {_toml_string(entry.prefix)}", ""]
        for mirror in entry.mirrors:
            lines += ["[[registry.mirror]]", f"location = {_toml_string(mirror.location)}",
                      f"insecure = {'true' if mirror.insecure else 'false'}",
                      f"pull-from-mirror = {_toml_string(mirror.pull_from)}", ""]
    return "\n".join(lines)


def _toml_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _tomllib():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError as e:
            raise InvalidInputError("reading config.toml needs Python 3.11, or the 'tomli' package on 3.10",
                                    "pip install tomli") from e
    return tomllib


# ---------------------------------------------------------------------------------------------------------
# reading the file

def config_path() -> Path:
    """``$MODELPKG_CONFIG_FILE``, else ``config.toml`` in the config dir."""
    return config.config_file() or config.config_dir() / "config.toml"


def load(path: Path | None = None) -> MirrorConfig:
    """The mirror configuration; no file means no mirrors. A named file that is missing is an error."""
    explicit = path is not None or config.config_file() is not None
    path = path or config_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if explicit:
            raise InvalidInputError(f"config file not found: {path}",
                                    f"create it, or unset {CONFIG_FILE_ENV}") from None
        return MirrorConfig(origin=str(path))
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidInputError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from e
    return parse_config(text, str(path))


def sources_for(ref: Reference, *, insecure: bool = False, path: Path | None = None) -> list[Source]:
    """Where to pull ``ref`` from: the configured mirrors that apply to it, in order, then the upstream."""
    return load(path).sources_for(ref, insecure=insecure)


# ---------------------------------------------------------------------------------------------------------
# a client that tries the sources in order

@dataclass
class _Attempts:
    """Which source served what, and which failed (for messages and tests)."""

    served: dict[str, str] = field(default_factory=dict)    # "manifest:<ref>" or blob digest -> source name
    failed: dict[str, str] = field(default_factory=dict)    # source name -> first failure


class MirroredClient:
    """Reads a manifest or blob from the first source that has it, verified as the upstream's would be.

    A ``PullClient``: ``get_manifest`` and ``download_blob`` of this pull's repository try the sources in
    order; the rest of the interface (``host``, ``url``, ``request``, ``raise_for``: the trust check's
    signature lookups) and other repositories go to the upstream's client. ``connect`` makes a client for
    a mirror (``connect.pull_client`` gives it short retries and timeouts, so a broken mirror costs a
    moment); the upstream's is passed in (``owns_upstream``: close it too).
    """

    def __init__(self, ref: Reference, sources: list[Source], upstream: PullClient,
                 connect: Callable[[Source], PullClient], *, progress: Progress | None = None,
                 owns_upstream: bool = False):
        self.ref = ref
        self.sources = sources
        self.upstream = upstream
        self.owns_upstream = owns_upstream
        self.progress = progress or NullProgress()
        self.attempts = _Attempts()
        self._connect = connect
        self._clients: dict[Source, PullClient] = {}
        self._dead: set[Source] = set()
        self._announced: set[str] = set()
        self._lock = threading.Lock()

    def __enter__(self) -> MirroredClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        if self.owns_upstream:
            self.upstream.close()

    # the upstream's side of the interface

    @property
    def host(self) -> str:
        return self.upstream.host

    def url(self, repo: str, *parts: str) -> str:
        return self.upstream.url(repo, *parts)

    def request(self, method: str, url: str, *, scopes: tuple[str, ...] = (), headers: dict | None = None,
                stream: bool = False) -> requests.Response:
        return self.upstream.request(method, url, scopes=scopes, headers=headers, stream=stream)

    def raise_for(self, response: requests.Response, *, kind: str, name: str) -> None:
        self.upstream.raise_for(response, kind=kind, name=name)

    # the sources, in order

    def _client(self, source: Source) -> PullClient:
        if not source.mirror:
            return self.upstream
        with self._lock:
            if source not in self._clients:
                self._clients[source] = self._connect(source)
            return self._clients[source]

    def _candidates(self, by_tag: bool) -> list[Source]:
        with self._lock:
            dead = set(self._dead)
        return [s for s in self.sources if (not s.mirror or s not in dead) and (not by_tag or s.serves_tags)]

    def _try(self, what: str, by_tag: bool, attempt: Callable[[Source, PullClient], object],
             undo: Callable[[], None] = lambda: None):
        last: ModelpkgError | None = None
        for source in self._candidates(by_tag):
            try:
                result = attempt(source, self._client(source))
            except ModelpkgError as e:
                if not source.mirror:
                    raise
                undo()
                last = e
                self._failed(source, e)
                continue
            self.attempts.served[what] = source.name
            if source.mirror:
                self._announce(f"from mirror {source.name}")
            return result
        raise last or InvalidInputError(f"no source left to pull {self.ref} from")  # pragma: no cover

    def _failed(self, source: Source, error: ModelpkgError) -> None:
        with self._lock:
            if isinstance(error, (NetworkError, AuthError)):
                self._dead.add(source)  # unreachable or refusing us: skip it for the rest of this pull
            first = source.name not in self.attempts.failed
            self.attempts.failed.setdefault(source.name, error.message)
        if first:
            self.progress.message(f"mirror {source.name} failed ({error.message}); trying the next source")

    def _announce(self, text: str) -> None:
        with self._lock:
            if text in self._announced:
                return
            self._announced.add(text)
        self.progress.message(text)

    def get_manifest(self, repo: str, reference: str, *, name: str | None = None) -> tuple[bytes, str, Digest]:
        by_tag = not reference.startswith("sha256:")
        if repo != self.ref.repository:  # not this pull's repository: the upstream's business
            return self.upstream.get_manifest(repo, reference, name=name)

        def attempt(source: Source, client: PullClient) -> tuple[bytes, str, Digest]:
            return client.get_manifest(source.repository, reference, name=name if not source.mirror else None)

        return self._try(f"manifest:{reference}", by_tag, attempt)

    def download_blob(self, repo: str, desc: Descriptor, dest_partial: Path, progress: Progress | None = None,
                      task: str | None = None, *, subject: str | None = None) -> None:
        if repo != self.ref.repository:
            return self.upstream.download_blob(repo, desc, dest_partial, progress, task, subject=subject)
        progress = progress or NullProgress()
        task = task or desc.digest.short
        counted = _Counting(progress)

        def attempt(source: Source, client: PullClient) -> None:
            counted.reset()
            client.download_blob(source.repository, desc, dest_partial, counted, task, subject=subject)

        # bytes a failed source reported are taken back, so the bar never counts past the blob's size
        self._try(str(desc.digest), False, attempt, undo=lambda: counted.take_back(task))


class _Counting(Progress):
    """Passes progress on and remembers how much one attempt advanced."""

    def __init__(self, inner: Progress):
        self.inner = inner
        self.advanced = 0

    def reset(self) -> None:
        self.advanced = 0

    def take_back(self, task: str) -> None:
        if self.advanced:
            self.inner.advance(task, -self.advanced)
        self.advanced = 0

    def start(self, task, total, label=""):
        self.inner.start(task, total, label)

    def advance(self, task, amount):
        self.advanced += amount
        self.inner.advance(task, amount)

    def finish(self, task, status="done"):
        self.inner.finish(task, status)

    def message(self, text):
        self.inner.message(text)
