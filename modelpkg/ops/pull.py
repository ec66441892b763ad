"""``pull``: bring a model from a registry into the store, verified, resumable, and named last.

The order follows Ollama's PullModel with its gaps closed (ollama-behaviour.md section 3.1):

1. fetch the manifest (OCI or Docker, manifest or index; digest and size checked by the client); an index
   picks the entry for this platform, or its only one, and its bytes are kept (``RefEntry.index``): what a
   signer signed, and what the tag names, is the index digest;
   the trust policy is applied to its digest here (``sign.check_pull``), before any blob is fetched;
2. pin every digest, then download what the store lacks, a few blobs at a time; each blob streams into
   ``store.partial_path(digest)`` (kept across interruptions, so the next pull resumes), is verified
   while it arrives and moved into place atomically (``store.ingest``). A per-digest file lock
   (``ingest/<hex>.lock``) keeps two processes from downloading one blob at once: the second finds it present;
   a KitOps model tar then has its GGUF extracted into a blob of its own (``ops.kitops``);
3. write the manifest and its name last (``store.tag``): a failure at any step leaves the old name as it
   was, and a blob already present is never fetched again (a pull of an unchanged model is one request),
   unless it is damaged: a blob changed since it was last verified (``Store.has_good_blob``) is re-hashed,
   and fetched again when it no longer matches its digest.

On a store this process cannot write (a read-only mount), a pull with nothing to write (the name already
names this manifest, every blob present and sound) succeeds without pinning or writing anything; any other
pull fails at the pin with the store's one-line error, before anything is downloaded.

Where each blob came from is remembered (``store.origins``), so a later push to another repository on that
registry can mount it instead of uploading it.

Orchestration: imports the core, the store and ``modelpkg.registry``.
"""

from __future__ import annotations

import platform as _platform
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

from modelpkg.base import config
from modelpkg.core import mediatypes as mt
from modelpkg.core.digest import Digest
from modelpkg.core.errors import InvalidInputError, NotFoundError, RegistryError
from modelpkg.core.manifest import Descriptor, Index, Manifest, model_layers, parse_manifest, split_problem
from modelpkg.core.progress import NullProgress, Progress
from modelpkg.core.reference import Reference
from modelpkg.core.units import parse_rate
from modelpkg.ops import sign
from modelpkg.ops.kitops import derivable, derive_blobs
from modelpkg.registry.client import RegistryClient
from modelpkg.registry.connect import pull_client
from modelpkg.registry.download import RateLimiter
from modelpkg.store import Pins, RefEntry, Store, ingest
from modelpkg.store.origins import remember_origin

WORKERS = 3

_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "armv7l": "arm",
         "i686": "386", "i386": "386", "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}


def current_platform() -> tuple[str, str]:
    """(os, architecture) in OCI terms, e.g. ("linux", "amd64")."""
    system = _platform.system().lower() or "linux"
    return system, _ARCH.get(_platform.machine().lower(), _platform.machine().lower())


def pull(store: Store, ref: Reference, *, progress: Progress | None = None, insecure: bool = False,
         client: RegistryClient | None = None, platform: tuple[str, str] | None = None,
         workers: int | None = None, limit_rate: int | None = None) -> RefEntry:
    """Pull ``ref`` (by tag or digest) into ``store`` and name it ``ref``; returns the new index entry.

    ``workers`` (``--concurrency``) is how many blobs download at once, and how many ranged parts one large
    blob is split into (default ``WORKERS`` blobs, ``PART_COUNT`` parts); ``limit_rate`` caps the bytes per
    second of every stream of this pull together (default ``MODELPKG_LIMIT_RATE``, else no cap).
    """
    progress = progress or NullProgress()
    tune = _tuning(workers, limit_rate)
    workers = workers or WORKERS
    client, own = pull_client(ref, client, insecure=insecure, progress=progress, tune=tune)  # mirrors first
    try:
        progress.message("pulling manifest")
        data, media_type, digest = client.get_manifest(ref.repository, ref.reference, name=str(ref))
        manifest = _parse(data, media_type, str(ref))
        # the trust policy, before any blob is fetched: under enforce a refusal leaves the store untouched
        trust = sign.check_pull(client, ref, digest, store=store, progress=progress)
        index: tuple[bytes, Digest] | None = None  # kept: signatures of a multi-platform model name the index
        if isinstance(manifest, Index):
            index = (data, digest)
            child = select_manifest(manifest, str(ref), platform or current_platform())
            data, media_type, digest = client.get_manifest(ref.repository, str(child.digest),
                                                           name=f"{ref.name}@{child.digest}")
            manifest = _parse(data, media_type or child.media_type, str(ref))
            if not isinstance(manifest, Manifest):
                raise RegistryError(f"the index of {ref} points at another index; nested indexes are not supported")
        media_type = manifest.media_type
        problem = split_problem(model_layers(manifest))
        if problem is not None:  # refused before any blob is fetched: the model could never load
            raise InvalidInputError(f"{ref}: the manifest lists a split GGUF whose {problem}",
                                    "ask the publisher to push every shard of the split")
        store.init()
        if not store.writable():
            # A read-only store still answers a pull with nothing to write. No pin: a pin guards blobs a pull
            # is about to reference, this one references nothing new, and nobody can gc a store nobody can
            # write. A pull with anything to write goes on to the pin, which fails with the store's error.
            entry = _up_to_date(store, ref, digest, manifest, trust, progress, index[1] if index else None)
            if entry is not None:
                progress.message("success")
                return entry
        with store.session() as pins:
            blobs = manifest.unique_blobs()
            pins.add(digest, *(blob.digest for blob in blobs))
            _download_all(store, client, ref, blobs, pins, progress, workers)
            derived = derive_blobs(store, manifest, pins, progress)  # e.g. the GGUF inside a KitOps tar
            progress.message("writing manifest")
            if index is not None:
                store.put_bytes(index[0], pins)
            entry = store.tag(ref, data, media_type, pins, sign.keep(store, trust, pins), derived=derived,
                              index=index[1] if index else None, source="pull")
        remember_origin(store, ref.host, ref.repository, [b.digest for b in blobs])
        progress.message("success")
        return entry
    finally:
        if own:
            client.close()


def _tuning(workers: int | None, limit_rate: int | None):
    """What ``pull`` sets on each client it reads through: a rate limiter shared by all of them, the parts count."""
    if limit_rate is None and config.limit_rate() is not None:
        limit_rate = parse_rate(config.limit_rate())
    if workers is not None and workers < 1:
        raise InvalidInputError(f"invalid concurrency {workers}: it must be 1 or more")
    if limit_rate is None and workers is None:
        return None
    limiter = RateLimiter(limit_rate) if limit_rate is not None else None

    def tune(client: RegistryClient) -> None:
        client.rate_limiter = limiter
        if workers is not None:
            client.part_count = workers

    return tune


def _parse(data: bytes, media_type: str, name: str) -> Manifest | Index:
    known = media_type if media_type in (*mt.MANIFEST_TYPES, *mt.INDEX_TYPES) else None
    try:
        return parse_manifest(data, known)
    except Exception as e:  # InvalidInputError: say whose manifest it was
        message = getattr(e, "message", str(e))
        raise RegistryError(f"{name}: {message}", "the registry sent a manifest modelpkg cannot read",
                            code="MANIFEST_INVALID") from e


def select_manifest(index: Index, name: str, want: tuple[str, str]) -> Descriptor:
    """The index entry for platform ``want`` (os, architecture), or its only manifest."""
    entries = [m for m in index.manifests if m.media_type in mt.MANIFEST_TYPES]
    if len(entries) == 1:
        return entries[0]
    matching = [m for m in entries if m.platform and m.platform.get("os") == want[0]
                and m.platform.get("architecture") == want[1]]
    if not matching:
        matching = [m for m in entries if not m.platform]  # platform-less artifacts (models) fit anywhere
    if len(matching) >= 1:
        return matching[0]
    available = sorted({f"{m.platform.get('os')}/{m.platform.get('architecture')}" for m in entries if m.platform})
    raise NotFoundError(f"no manifest for {want[0]}/{want[1]} in {name}",
                        f"it has: {', '.join(available) or 'no manifests'}")


def _up_to_date(store: Store, ref: Reference, digest: Digest, manifest: Manifest, trust: sign.PullCheck,
                progress: Progress, index: Digest | None = None) -> RefEntry | None:
    """``ref``'s entry when it already names ``digest`` (pulled through ``index``) with every blob present and
    sound, each derived blob made and no new signature to keep (a pull with nothing to write); None otherwise."""
    entry = next((e for e in store.refs() if e.name == str(ref)), None)
    if entry is None or entry.digest != digest or trust.found or not store.has_blob(digest):
        return None
    if entry.index != index or (index is not None and not store.has_blob(index)):
        return None
    derived = dict(entry.derived)
    if any(layer.digest not in derived or not store.has_blob(derived[layer.digest]) for layer in derivable(manifest)):
        return None
    blobs = manifest.unique_blobs()
    if not all(store.has_good_blob(blob.digest, blob.size) for blob in blobs):
        return None
    for blob in blobs:
        _report_exists(progress, blob)
    return entry


def _report_exists(progress: Progress, blob: Descriptor) -> None:
    task = str(blob.digest)  # the full digest, as Ollama's progress lines carry it
    progress.start(task, blob.size, f"pulling {blob.digest.short}")
    progress.advance(task, blob.size)
    progress.finish(task, "exists")


def _download_all(store: Store, client: RegistryClient, ref: Reference, blobs: list[Descriptor], pins: Pins,
                  progress: Progress, workers: int) -> None:
    missing = []
    for blob in blobs:
        if store.has_good_blob(blob.digest, blob.size):  # re-hashed unless verified unchanged since
            store.touch(blob.digest)
            _report_exists(progress, blob)
        else:
            missing.append(blob)
    if not missing:
        return
    for blob in missing:
        progress.start(str(blob.digest), blob.size, f"pulling {blob.digest.short}")
    if len(missing) == 1 or workers <= 1:
        for blob in missing:
            fetch_blob(store, client, ref.repository, blob, pins, progress, str(ref))
        return
    with ThreadPoolExecutor(max_workers=min(workers, len(missing)), thread_name_prefix="pull") as pool:
        futures = [pool.submit(fetch_blob, store, client, ref.repository, blob, pins, progress, str(ref))
                   for blob in missing]
        _, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for future in pending:
            future.cancel()
        for future in futures:
            if future.done() and not future.cancelled() and future.exception() is not None:
                raise future.exception()
        for future in futures:
            future.result()


def fetch_blob(store: Store, client: RegistryClient, repo: str, blob: Descriptor, pins: Pins,
               progress: Progress, subject: str | None = None) -> None:
    """Download one blob into the store unless it is there; one downloader per digest across processes."""
    task = str(blob.digest)
    pins.add(blob.digest)
    with ingest.download_lock(store, blob.digest):
        if store.has_good_blob(blob.digest, blob.size):
            store.touch(blob.digest)  # another process finished it while we waited
            progress.finish(task, "exists")
            return
        client.download_blob(repo, blob, store.partial_path(blob.digest), progress, task, subject=subject)
        progress.finish(task, "verified")
        ingest.commit_download(store, blob.digest, pins)
