"""The models in memory: ``ModelCache`` keeps each loaded model (``Loaded``: its runners and the lock that
queues its requests) for its ``keep_alive``, unloads the least recently used one when too many are loaded,
and runs the reaper thread that unloads expired ones. ``parse_keep_alive`` reads Ollama's values.

Each runner is a ``RemoteRunner``: the model runs in a runner process of its own (``runtime.remote``), so
a crash there fails only its requests; a runner found stopped is dropped and the next request loads the
model again. Unloading kills the process. (``loader`` swaps in ``Runner.load`` to run in-process.)

Knows nothing of HTTP or of either API: it imports the core (digests, errors), ``models``' details and the
runner adapter; no other ``server`` module, and never the store, the registry or the CLI.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from modelpkg.base import config
from modelpkg.core.digest import Digest
from modelpkg.core.errors import InvalidInputError, ModelpkgError
from modelpkg.ops.models import ModelDetails
from modelpkg.runtime.remote import RemoteRunner
from modelpkg.runtime.runner import LoadOptions, Runner, load_options

DEFAULT_KEEP_ALIVE = 300.0   # seconds: Ollama's OLLAMA_KEEP_ALIVE default, 5m
MAX_LOADED = 3               # models in memory at once (Ollama's OLLAMA_MAX_LOADED_MODELS on a CPU)
FOREVER = None               # keep_alive < 0
Loader = Callable[..., Any]  # (LoadOptions, *, embedding, label) -> a Runner or a RemoteRunner


def isolated_loader(options: LoadOptions, *, embedding: bool = False, label: str = "") -> RemoteRunner:
    """Load in a runner process of its own (``serve``'s default)."""
    return RemoteRunner.load(options, embedding=embedding, label=label)


def in_process_loader(options: LoadOptions, *, embedding: bool = False, label: str = "") -> Runner:
    """Load in this process (what ``modelpkg run`` does; benchmarks compare the two)."""
    return Runner.load(options, embedding=embedding)


def short_name(name: str) -> str:
    """``registry.ollama.ai/library/gemma3:latest`` -> ``gemma3:latest``, as error messages name a model."""
    try:
        return config.reference(name).short(config.default_registry())
    except ModelpkgError:
        return name


def _usable(runner: Any, wanted: LoadOptions) -> bool:
    return runner is not None and runner.options == wanted and getattr(runner, "alive", True)

# --------------------------------------------------------------------------------------------------------
# keep_alive

_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_GO_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_go_duration(text: str) -> float:
    """Go's ``time.ParseDuration`` (``"1h30m"``, ``"-5m"``, ``"300ms"``, ``"0"``) -> seconds."""
    s = text.strip()
    sign = -1.0 if s.startswith("-") else 1.0
    s = s.lstrip("+-")
    if s == "0":
        return 0.0
    pos, total = 0, 0.0
    while pos < len(s):
        m = _GO_PART.match(s, pos)
        if not m:
            raise InvalidInputError(f"invalid duration {text!r}", 'use seconds (300) or a Go duration ("5m", "1h")')
        total += float(m.group(1)) * _GO_UNITS[m.group(2)]
        pos = m.end()
    if not s:
        raise InvalidInputError(f"invalid duration {text!r}", 'use seconds (300) or a Go duration ("5m", "1h")')
    return sign * total


def parse_keep_alive(value: Any, default: float | None = DEFAULT_KEEP_ALIVE) -> float | None:
    """Ollama's ``keep_alive``: a number of seconds or a Go duration string; negative keeps the model
    loaded forever (None); 0 unloads it after the request; absent gives ``default``."""
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise InvalidInputError("keep_alive must be a number of seconds or a duration string")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        try:
            seconds = float(value)
        except ValueError:
            seconds = parse_go_duration(value)
    else:
        raise InvalidInputError("keep_alive must be a number of seconds or a duration string")
    return FOREVER if seconds < 0 else seconds


# --------------------------------------------------------------------------------------------------------
# loaded models


@dataclass(eq=False)
class Loaded:
    """One model in memory: its generation runner, its embedding runner, the lock that queues requests."""

    name: str
    details: ModelDetails
    lock: threading.Lock = field(default_factory=threading.Lock)
    runner: Runner | None = None
    embedder: Runner | None = None
    expires: float | None = 0.0  # monotonic deadline; None = never
    users: int = 0
    last_used: float = 0.0
    n_ctx: int = 0               # the loaded context (read by /api/ps without touching a runner)
    load_duration: float = 0.0   # seconds spent loading during the current request
    loader: Loader = isolated_loader

    def load(self, wanted: LoadOptions) -> Runner:
        """``Session``'s loader: the loaded runner, reloaded when the load-time options changed or its
        process stopped."""
        if self.runner is not None and not _usable(self.runner, wanted):
            self.runner.close()
            self.runner = None
        if self.runner is None:
            self.runner = self.loader(wanted, label=short_name(self.name))
            self.n_ctx = self.runner.n_ctx
            self.load_duration += self.runner.load_duration
        return self.runner

    def embedding_runner(self, params: Mapping[str, Any]) -> Runner:
        wanted = load_options(params, self.details.model_path, self.details.adapter_paths, self.details.context_length,
                              self.details.shard_paths)
        if self.embedder is not None and not _usable(self.embedder, wanted):
            self.embedder.close()
            self.embedder = None
        if self.embedder is None:
            self.embedder = self.loader(wanted, embedding=True, label=short_name(self.name))
            self.n_ctx = self.n_ctx or self.embedder.n_ctx
            self.load_duration += self.embedder.load_duration
        return self.embedder

    @property
    def in_memory(self) -> bool:
        """A runner is loaded and its process still runs (a crashed one is not in memory any more)."""
        return any(r is not None and getattr(r, "alive", True) for r in (self.runner, self.embedder))

    def close(self) -> None:
        runners = (self.runner, self.embedder)
        self.runner = self.embedder = None  # first, so a concurrent /api/ps no longer lists it
        self.n_ctx = 0
        for runner in runners:
            if runner is not None:
                runner.close()


class ModelCache:
    """The models in memory, by manifest digest: two names of one model (``cp``, e.g. an alias for an
    OpenAI client) share one load, as Ollama's scheduler shares one runner per model file. ``use`` queues
    a request on its model's lock; after it the model stays for its keep_alive, and the reaper unloads it
    when that has passed and nobody uses it. At most ``max_loaded`` models stay in memory: loading one
    more first unloads the least recently used idle one (Ollama's scheduler does the same when its limit
    is reached)."""

    def __init__(self, default_keep_alive: float | None = DEFAULT_KEEP_ALIVE, clock=time.monotonic,
                 max_loaded: int = MAX_LOADED, loader: Loader = isolated_loader):
        self.default_keep_alive = default_keep_alive
        self.loader = loader
        self.max_loaded = max_loaded
        self._clock = clock
        self._entries: dict[str, Loaded] = {}
        self._retired: list[Loaded] = []  # replaced by a newer model of their name; closed when free
        self._guard = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._reaper = threading.Thread(target=self._reap_loop, name="modelpkg-reaper", daemon=True)
        self._reaper.start()

    @contextlib.contextmanager
    def use(self, details: ModelDetails, keep_alive: Any) -> Iterator[Loaded]:
        seconds = parse_keep_alive(keep_alive, self.default_keep_alive)
        key = str(details.digest)
        with self._guard:
            for other_key, other in list(self._entries.items()):
                if other.name == details.name and other_key != key:
                    # the name now points at another model: the old one goes when free
                    other.expires = 0.0
                    self._retired.append(other)
                    del self._entries[other_key]
            entry = self._entries.get(key)
            if entry is None:
                entry = Loaded(details.name, details, loader=self.loader)
                self._entries[key] = entry
            entry.name = details.name  # /api/ps shows the name it was last asked for
            entry.users += 1
        try:
            with entry.lock:
                entry.load_duration = 0.0
                if not entry.in_memory:
                    self._make_room(entry)
                try:
                    yield entry
                finally:
                    entry.last_used = self._clock()
                    entry.expires = None if seconds is FOREVER else self._clock() + seconds
                    if seconds == 0:
                        entry.close()
        finally:
            with self._guard:
                entry.users -= 1
                if not entry.in_memory and entry.users == 0 and self._entries.get(key) is entry:
                    del self._entries[key]
            self._wake.set()

    def _make_room(self, newcomer: Loaded) -> None:
        """Unload idle models, least recently used first, until ``newcomer`` fits under ``max_loaded``."""
        with self._guard:
            others = [e for e in self._entries.values() if e is not newcomer and e.in_memory]
        for entry in sorted(others, key=lambda e: e.last_used):
            if len(others) < self.max_loaded:
                return
            if entry.users == 0 and entry.lock.acquire(blocking=False):
                try:
                    entry.close()
                    others.remove(entry)
                finally:
                    entry.lock.release()

    def loaded(self) -> list[tuple[Loaded, float | None]]:
        """The models in memory and their expiry as a wall-clock time (None: never)."""
        now_mono, now = self._clock(), time.time()
        with self._guard:
            entries = [e for e in self._entries.values() if e.in_memory]
        return [(e, None if e.expires is None else now + (e.expires - now_mono)) for e in entries]

    def unload(self, name: str, digest: Digest | None = None) -> None:
        """Drop the model last asked for as ``name`` (deleted or replaced), or the model ``digest`` (keep_alive
        0, whatever name loaded it), once its current requests end."""
        with self._guard:
            found = [(k, e) for k, e in self._entries.items()
                     if e.name == name or (digest is not None and k == str(digest))]
        for key, entry in found:
            with entry.lock:
                entry.close()
            with self._guard:
                if entry.users == 0 and self._entries.get(key) is entry:
                    del self._entries[key]

    def reap(self) -> None:
        """Unload every model whose keep_alive has passed (and that no request is using)."""
        now = self._clock()
        with self._guard:
            expired = [e for e in self._entries.values() if e.expires is not None and e.expires <= now and e.users == 0]
            retired = [e for e in self._retired if e.users == 0]
        for entry in retired:
            if entry.lock.acquire(blocking=False):
                try:
                    entry.close()
                    with self._guard:
                        self._retired.remove(entry)
                finally:
                    entry.lock.release()
        for entry in expired:
            if entry.lock.acquire(blocking=False):
                try:
                    if entry.users == 0 and entry.expires is not None and entry.expires <= self._clock():
                        entry.close()
                        with self._guard:
                            key = str(entry.details.digest)
                            if entry.users == 0 and self._entries.get(key) is entry:
                                del self._entries[key]
                finally:
                    entry.lock.release()

    def _reap_loop(self) -> None:
        while not self._closed:
            self.reap()
            with self._guard:
                deadlines = [e.expires for e in self._entries.values() if e.expires is not None]
                if self._retired:
                    deadlines.append(self._clock() + 1.0)
            wait = min(deadlines) - self._clock() if deadlines else 60.0
            self._wake.wait(timeout=min(max(wait, 0.05), 60.0))
            self._wake.clear()

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        with self._guard:
            entries = list(self._entries.values()) + self._retired
            self._entries.clear()
            self._retired.clear()
        for entry in entries:
            with entry.lock:
                entry.close()

