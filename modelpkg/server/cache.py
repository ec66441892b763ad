"""The models in memory: ``ModelCache`` keeps each loaded model (``Loaded``: its runners and its slots) for
its ``keep_alive``, unloads the least recently used one when too many are loaded, and runs the reaper thread
that unloads expired ones. ``parse_keep_alive`` reads Ollama's values.

Slots (issue 14): a loaded model answers up to ``parallel`` requests at once (its runner decodes them
together, each sequence with ``num_ctx`` of KV cache: ``parallel x num_ctx`` in all, as Ollama's
``OLLAMA_NUM_PARALLEL``). A request holds a slot from the start of its generation to its end. Loading,
reloading (other load-time options) and unloading are exclusive: they wait until no slot is held, and while
one waits no new request takes a slot, so it is not starved. Unloading never cuts a sequence short: an
unload asked while requests are in flight (``keep_alive: 0``, ``stop``, a deleted model) happens when the
last of them ends. A request that finds every slot taken waits in a bounded queue (``max_queue`` waiting
requests across the server, Ollama's ``OLLAMA_MAX_QUEUE``); one more is refused with Ollama's 503 text.

Each runner is a ``RemoteRunner``: the model runs in a runner process of its own (``runtime.remote``), so
a crash there fails only its requests; a runner found stopped is dropped and the next request loads the
model again. Unloading kills the process. (``loader`` swaps in ``Runner.load`` to run in-process: one slot.)

Knows nothing of HTTP or of either API: it imports the core (digests, errors), ``models``' details and the
runner adapter; no other ``server`` module, and never the store, the registry or the CLI.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from modelpkg.base import config
from modelpkg.core.digest import Digest
from modelpkg.core.errors import BusyError, InvalidInputError, ModelpkgError
from modelpkg.core.limits import kv_cache_bytes
from modelpkg.ops.models import ModelDetails
from modelpkg.runtime.ggufshape import available_memory, model_shape
from modelpkg.runtime.remote import RemoteRunner
from modelpkg.runtime.runner import DEFAULTS, LoadOptions, Runner, load_options

DEFAULT_KEEP_ALIVE = 300.0   # seconds: Ollama's OLLAMA_KEEP_ALIVE default, 5m
MAX_LOADED = 3               # models in memory at once (Ollama's OLLAMA_MAX_LOADED_MODELS on a CPU)
FOREVER = None               # keep_alive < 0
DEFAULT_PARALLEL = 4         # slots per model when neither --parallel nor NUM_PARALLEL says (README: why)
DEFAULT_MAX_QUEUE = 512      # Ollama's OLLAMA_MAX_QUEUE default
BUSY = "server busy, please try again.  maximum pending requests exceeded"  # Ollama's ErrMaxQueue, verbatim
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


def auto_parallel(details: ModelDetails, available: int | None = None) -> int:
    """The slots of a model when nobody chose: ``DEFAULT_PARALLEL`` when that many ``num_ctx`` KV caches fit
    in half the memory available now, else 1 (Ollama's scheduler fell back from 4 to 1 the same way)."""
    path = details.model_path
    shape = model_shape(path) if path is not None else None
    available = available_memory() if available is None else available
    if shape is None or available is None:
        return DEFAULT_PARALLEL
    n_ctx = int(details.parameters.get("num_ctx") or DEFAULTS["num_ctx"])
    if details.context_length:
        n_ctx = min(n_ctx, details.context_length)
    return DEFAULT_PARALLEL if kv_cache_bytes(shape, n_ctx, DEFAULT_PARALLEL) <= available // 2 else 1


def kv_bytes(details: ModelDetails, n_ctx: int, n_seq: int) -> int:
    """The KV cache of ``n_seq`` sequences of ``n_ctx`` tokens (0 when the GGUF's shape is not known)."""
    shape = model_shape(details.model_path) if details.model_path is not None else None
    return kv_cache_bytes(shape, n_ctx, n_seq) if shape is not None and n_ctx > 0 else 0

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


class RunnerView:
    """One request's handle on a shared runner: what it asked for (``options``: the session compares them) and
    its own ``last_prompt`` / ``last_prompt_tokens``, taken as its generation starts, so a request running
    beside others reads its own prompt, never the one another request sent after it; a ``reset`` goes with
    the generation it is for. Closing it is the cache's business, not the request's: ``close`` does nothing."""

    def __init__(self, runner: Any, options: LoadOptions, start_lock: threading.Lock):
        self._runner = runner
        self.options = options
        self._start_lock = start_lock
        self.last_prompt: str | None = None
        self.last_prompt_tokens: list[int] = []
        self._fresh = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._runner, name)

    def reset(self) -> None:
        """Start the next generation from a clean cache: done with it, in one step, so another request's
        generation cannot come between this reset and this generation (its prompt would stay cached)."""
        self._fresh = True

    def generate(self, prompt: str, sampling: Any, **kwargs: Any):
        with self._start_lock:  # the runner's last_prompt* are the last started generation's
            if self._fresh:
                self._fresh = False
                self._runner.reset()
            generation = self._runner.generate(prompt, sampling, **kwargs)
            self.last_prompt = self._runner.last_prompt
            self.last_prompt_tokens = list(self._runner.last_prompt_tokens)
        return generation

    def close(self) -> None:
        pass


class Slot:
    """What a request holds while it runs (``ModelCache.use`` yields it): its slot of a ``Loaded`` model,
    the runner views it loaded and the seconds it spent loading."""

    def __init__(self, entry: Loaded):
        self.entry = entry
        self.runner: RunnerView | None = None
        self.load_duration = 0.0

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def details(self) -> ModelDetails:
        return self.entry.details

    @property
    def n_ctx(self) -> int:
        return self.entry.n_ctx

    def load(self, wanted: LoadOptions) -> RunnerView:
        """``Session``'s loader: the model's runner, (re)loaded when the load-time options differ or its
        process stopped."""
        runner, seconds = self.entry.runner_for(wanted, embedding=False)
        self.load_duration += seconds
        self.runner = RunnerView(runner, wanted, self.entry.start_lock)
        return self.runner

    def embedding_runner(self, params: Mapping[str, Any]) -> Any:
        details = self.entry.details
        wanted = load_options(params, details.model_path, details.adapter_paths, details.context_length,
                              details.shard_paths)
        runner, seconds = self.entry.runner_for(wanted, embedding=True)
        self.load_duration += seconds
        return runner


@dataclass(eq=False)
class Loaded:
    """One model in memory: its generation runner, its embedding runner, and its ``parallel`` slots."""

    name: str
    details: ModelDetails
    runner: Runner | None = None
    embedder: Runner | None = None
    expires: float | None = 0.0  # monotonic deadline; None = never
    users: int = 0               # requests holding a slot or waiting for one
    last_used: float = 0.0
    n_ctx: int = 0               # the loaded context per sequence (read by /api/ps without touching a runner)
    loader: Loader = isolated_loader
    parallel: int = 1            # slots: sequences decoded together
    active: int = 0              # slots held
    doomed: bool = False         # unload when the last request in flight ends (keep_alive 0, stop, deleted)
    start_lock: threading.Lock = field(default_factory=threading.Lock)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _loading: bool = False       # a load or an unload runs: it holds the model alone
    _waiting_exclusive: int = 0  # loads and unloads waiting for the slots to empty (no newcomer gets one)

    # ----- slots

    def acquire(self, may_wait: Callable[[], bool]) -> None:
        """Take a slot: at once when one is free, else wait if ``may_wait()`` allows (else ``BusyError``)."""
        with self._cond:
            if not self._free():
                if not may_wait():
                    raise BusyError(BUSY, "send fewer requests at once, or start serve with a larger "
                                          "--parallel or MODELPKG_MAX_QUEUE")
                self._cond.wait_for(self._free)
            self.active += 1

    def _free(self) -> bool:
        return not self._loading and not self._waiting_exclusive and self.active < self.parallel

    def release(self) -> None:
        """Give the slot back; the last one out of a doomed model unloads it."""
        with self._cond:
            self.active -= 1
            close = self.doomed and self.active == 0 and not self._loading
            if close:
                self._loading = True
            self._cond.notify_all()
        if close:
            self._close_exclusively()

    def _close_exclusively(self) -> None:
        try:
            self.close()
        finally:
            with self._cond:
                self._loading = False
                self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the model alone: wait for every slot to be given back (none is handed out meanwhile)."""
        with self._cond:
            self._waiting_exclusive += 1
            try:
                self._cond.wait_for(lambda: self.active == 0 and not self._loading)
            finally:
                self._waiting_exclusive -= 1
            self._loading = True
        try:
            yield
        finally:
            with self._cond:
                self._loading = False
                self._cond.notify_all()

    def try_exclusive(self) -> bool:
        """Take the model alone if nobody holds or waits for it (``end_exclusive`` after)."""
        with self._cond:
            if self.active or self._loading or self._waiting_exclusive or self.users:
                return False
            self._loading = True
            return True

    def end_exclusive(self) -> None:
        with self._cond:
            self._loading = False
            self._cond.notify_all()

    def doom(self) -> None:
        """Unload now if idle, else when the last request in flight ends (they finish first)."""
        with self._cond:
            self.doomed = True
            close = self.active == 0 and not self._loading
            if close:
                self._loading = True
        if close:
            self._close_exclusively()

    # ----- runners

    def runner_for(self, wanted: LoadOptions, *, embedding: bool) -> tuple[Any, float]:
        """The runner for ``wanted`` (by a request holding a slot) and the seconds spent loading it. A load
        gives the slot back and waits until no other request holds one (a reload would pull the runner from
        under them), unless another request loads the very same options meanwhile: then it uses that one."""
        wanted = dataclasses.replace(wanted, n_parallel=self.parallel)
        with self._cond:
            if _usable(self._runner(embedding), wanted):
                return self._runner(embedding), 0.0
            self.active -= 1
            self._waiting_exclusive += 1
            self._cond.notify_all()
            try:
                self._cond.wait_for(lambda: not self._loading and (
                    _usable(self._runner(embedding), wanted) or self.active == 0))
            finally:
                self._waiting_exclusive -= 1
            self.active += 1
            if _usable(self._runner(embedding), wanted):
                self._cond.notify_all()
                return self._runner(embedding), 0.0
            self._loading = True
        try:
            old = self._runner(embedding)
            self._set_runner(embedding, None)
            if old is not None:
                old.close()
            new = self.loader(wanted, embedding=embedding, label=short_name(self.name))
            self._set_runner(embedding, new)
            self.n_ctx = new.n_ctx if not embedding else (self.n_ctx or new.n_ctx)
            self.doomed = False
            return new, new.load_duration
        finally:
            with self._cond:
                self._loading = False
                self._cond.notify_all()

    def _runner(self, embedding: bool) -> Any:
        return self.embedder if embedding else self.runner

    def _set_runner(self, embedding: bool, runner: Any) -> None:
        if embedding:
            self.embedder = runner
        else:
            self.runner = runner

    @property
    def in_memory(self) -> bool:
        """A runner is loaded and its process still runs (a crashed one is not in memory any more)."""
        return any(r is not None and getattr(r, "alive", True) for r in (self.runner, self.embedder))

    @property
    def context_length(self) -> int:
        """The context of all its sequences together (what /api/ps reports, as Ollama does)."""
        return self.n_ctx * self.parallel

    def close(self) -> None:
        runners = (self.runner, self.embedder)
        self.runner = self.embedder = None  # first, so a concurrent /api/ps no longer lists it
        self.n_ctx = 0
        self.doomed = False
        for runner in runners:
            if runner is not None:
                runner.close()


class ModelCache:
    """The models in memory, by manifest digest: two names of one model (``cp``, e.g. an alias for an
    OpenAI client) share one load, as Ollama's scheduler shares one runner per model file. ``use`` takes one
    of its model's ``parallel`` slots for a request (waiting, within ``max_queue`` waiting requests, when all
    are taken); after it the model stays for its keep_alive, and the reaper unloads it when that has passed
    and nobody uses it. At most ``max_loaded`` models stay in memory: loading one more first unloads the
    least recently used idle one (Ollama's scheduler does the same when its limit is reached).
    ``parallel=None`` chooses per model (``auto_parallel``)."""

    def __init__(self, default_keep_alive: float | None = DEFAULT_KEEP_ALIVE, clock=time.monotonic,
                 max_loaded: int = MAX_LOADED, loader: Loader = isolated_loader, parallel: int | None = None,
                 max_queue: int = DEFAULT_MAX_QUEUE):
        self.default_keep_alive = default_keep_alive
        self.loader = loader
        self.max_loaded = max_loaded
        # an in-process Runner is one llama.cpp context that one thread may use at a time
        self.parallel = 1 if loader is in_process_loader else parallel
        self.max_queue = max_queue
        self._clock = clock
        self._entries: dict[str, Loaded] = {}
        self._retired: list[Loaded] = []  # replaced by a newer model of their name; closed when free
        self._guard = threading.Lock()
        self._queued = 0                  # requests waiting for a slot, all models together
        self._wake = threading.Event()
        self._closed = False
        self._reaper = threading.Thread(target=self._reap_loop, name="modelpkg-reaper", daemon=True)
        self._reaper.start()

    @contextlib.contextmanager
    def use(self, details: ModelDetails, keep_alive: Any) -> Iterator[Slot]:
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
                parallel = self.parallel if self.parallel is not None else auto_parallel(details)
                entry = Loaded(details.name, details, loader=self.loader, parallel=parallel)
                self._entries[key] = entry
            entry.name = details.name  # /api/ps shows the name it was last asked for
            entry.users += 1
        try:
            self._acquire(entry)
            try:
                if not entry.in_memory:
                    self._make_room(entry)
                yield Slot(entry)
            finally:
                entry.last_used = self._clock()
                entry.expires = None if seconds is FOREVER else self._clock() + seconds
                if seconds == 0:
                    entry.doomed = True
                entry.release()
        finally:
            with self._guard:
                entry.users -= 1
                if not entry.in_memory and entry.users == 0 and self._entries.get(key) is entry:
                    del self._entries[key]
            self._wake.set()

    def _acquire(self, entry: Loaded) -> None:
        queued = False

        def may_wait() -> bool:
            nonlocal queued
            with self._guard:
                if self._queued >= self.max_queue:
                    return False
                self._queued += 1
                queued = True
                return True

        try:
            entry.acquire(may_wait)
        finally:
            if queued:
                with self._guard:
                    self._queued -= 1

    @property
    def queued(self) -> int:
        """Requests waiting for a slot now."""
        return self._queued

    def _make_room(self, newcomer: Loaded) -> None:
        """Unload idle models, least recently used first, until ``newcomer`` fits under ``max_loaded``."""
        with self._guard:
            others = [e for e in self._entries.values() if e is not newcomer and e.in_memory]
        for entry in sorted(others, key=lambda e: e.last_used):
            if len(others) < self.max_loaded:
                return
            if entry.try_exclusive():
                try:
                    entry.close()
                    others.remove(entry)
                finally:
                    entry.end_exclusive()

    def loaded(self) -> list[tuple[Loaded, float | None]]:
        """The models in memory and their expiry as a wall-clock time (None: never)."""
        now_mono, now = self._clock(), time.time()
        with self._guard:
            entries = [e for e in self._entries.values() if e.in_memory]
        return [(e, None if e.expires is None else now + (e.expires - now_mono)) for e in entries]

    def unload(self, name: str, digest: Digest | None = None) -> None:
        """Drop the model last asked for as ``name`` (deleted or replaced), or the model ``digest`` (keep_alive
        0, whatever name loaded it): now when it is idle, else when its requests in flight end."""
        with self._guard:
            found = [(k, e) for k, e in self._entries.items()
                     if e.name == name or (digest is not None and k == str(digest))]
        for key, entry in found:
            entry.doom()
            with self._guard:
                if entry.users == 0 and not entry.in_memory and self._entries.get(key) is entry:
                    del self._entries[key]

    def reap(self) -> None:
        """Unload every model whose keep_alive has passed (and that no request is using)."""
        now = self._clock()
        with self._guard:
            expired = [e for e in self._entries.values() if e.expires is not None and e.expires <= now and e.users == 0]
            retired = [e for e in self._retired if e.users == 0]
        for entry in retired:
            if entry.try_exclusive():
                try:
                    entry.close()
                    with self._guard:
                        self._retired.remove(entry)
                finally:
                    entry.end_exclusive()
        for entry in expired:
            if entry.try_exclusive():
                try:
                    if entry.expires is not None and entry.expires <= self._clock():
                        entry.close()
                        with self._guard:
                            key = str(entry.details.digest)
                            if entry.users == 0 and self._entries.get(key) is entry:
                                del self._entries[key]
                finally:
                    entry.end_exclusive()

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
            with entry.exclusive():
                entry.close()
