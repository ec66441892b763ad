"""The local store: a standard OCI image layout that skopeo, oras and crane can read as it is.

Layout (OCI image-spec image-layout.md), under ``MODELPKG_HOME``::

    oci-layout                      {"imageLayoutVersion": "1.0.0"}
    index.json                      one entry per name: org.opencontainers.image.ref.name = the full reference
    blobs/sha256/<hex>              content, named by its digest (manifests, configs, layers)
    ingest/                         working files (not part of the layout): temp files, <hex>.partial
                                    downloads and the <hex>.lock their one downloader holds
    ingest/pins/                    digests that running operations are about to reference
    ingest/owners/                  one lock per process using the store, held while it runs
    ingest/verified/<hex>           when a blob was last hashed and found right (size, mtime, inode)
    ingest/origins/<host>.json      which repositories on a registry hold which blobs (``store.origins``:
                                    push mounts them instead of uploading)
    .lock                           the store lock (index.json updates, gc)
    .store-id                       a random id, made on first use: ``modelpkg run`` asks a running serve
                                    for it, to use the serve only when it serves this same store

Rules that keep it consistent (huggingface_hub's cache and go-containerregistry's layout are the models):

- A blob is written to a temp file in ``ingest/``, hashed, fsynced, and renamed to its digest
  (``commit_temp``; ``store.ingest`` is the path every stream and download takes): it is whole or absent.
- index.json is rewritten atomically under the store lock, and only after every blob it needs exists.
- An operation *pins* the digests it will reference before it relies on them; gc (under the store lock)
  never deletes a pinned blob, nor one younger than its grace period. Pins die with their process (a
  file lock held for the pin's lifetime), so a killed operation never blocks gc for ever.
- Working files of a killed operation never outlive it: their names carry the owner's pid (``fsutil.temp_name``)
  and each process holds an owner lock while it uses the store, so the next operation that writes (its first
  ``session``) removes the files of owners that are gone, at once, and gc plans them whatever their age;
  reading (list, show, verify) removes nothing. A ``.partial`` download is kept for the next pull to resume
  from (gc's partial grace decides when it goes).

Adapter: file I/O. Imports the pure core, ``fsutil`` and ``filelock``.
"""

from __future__ import annotations

import json
import os
import secrets
import string
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from modelpkg.base import fsutil
from modelpkg.core import mediatypes as mt
from modelpkg.core.digest import Digest
from modelpkg.core.errors import BusyError, IntegrityError, InvalidInputError, NotFoundError, StoreError
from modelpkg.core.manifest import Index, Manifest, load_json, parse_manifest
from modelpkg.core.progress import NullProgress, Progress
from modelpkg.core.reference import Reference

LOCK_TIMEOUT = 600.0
MODIFIED = "dev.modelpkg.modified"
MAX_SMALL_BLOB = 16 * 1024 * 1024  # templates, params, configs: read whole; weights are never read whole


@dataclass(frozen=True)
class RefEntry:
    """One name in index.json."""

    name: str
    digest: Digest
    media_type: str
    size: int
    modified: float
    attached: tuple[Digest, ...] = ()  # manifests kept with this name (signatures); gc keeps them too
    # blobs made from this manifest's layers (layer digest -> derived blob, e.g. the GGUF inside a KitOps
    # tar); gc keeps them while the name exists (index annotation mt.DERIVED)
    derived: tuple[tuple[Digest, Digest], ...] = ()
    # the image index this manifest was chosen from (a pull through a multi-platform index; mt.SOURCE_INDEX):
    # its bytes are a blob kept by gc with the name, because signatures kept for it name its digest
    index: Digest | None = None
    # how the name got here (mt.NAME_SOURCE): "pull" for a pulled name, None for a local one (created,
    # imported, loaded, copied, or pulled by a modelpkg that did not record it)
    source: str | None = None

    @property
    def pulled(self) -> bool:
        return self.source == "pull"

    def local(self, digest: Digest) -> Digest:
        """The blob to read for layer ``digest``: its derived blob when there is one, else the layer's own."""
        return dict(self.derived).get(digest, digest)


@dataclass(frozen=True)
class GCPlan:
    """What gc would delete: unreferenced blobs and stale working files, with the bytes they hold."""

    blobs: tuple[tuple[Digest, int], ...]
    partials: tuple[tuple[Path, int], ...]

    @property
    def bytes(self) -> int:
        return sum(size for _, size in self.blobs) + sum(size for _, size in self.partials)


def link_annotations(attached: tuple[Digest, ...], derived: tuple[tuple[Digest, Digest], ...],
                     index: Digest | None) -> dict[str, str]:
    """The index.json annotations that tie other blobs to a name: kept signatures, derived blobs, the image
    index it was pulled through (what ``set_ref`` writes, and what an archive's index.json carries)."""
    out = {}
    if attached:
        out[mt.ATTACHED] = " ".join(str(d) for d in attached)
    if derived:
        out[mt.DERIVED] = " ".join(f"{a}={b}" for a, b in sorted(derived))
    if index is not None:
        out[mt.SOURCE_INDEX] = str(index)
    return out


STORE_ID = ".store-id"


class Store:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.blobs_dir = self.root / "blobs" / "sha256"
        self.ingest_dir = self.root / "ingest"
        self.pins_dir = self.ingest_dir / "pins"
        self.owners_dir = self.ingest_dir / "owners"
        self.index_path = self.root / "index.json"
        self._initialised = False
        self._owner: Path | None = None  # this object's owner lock (``_claim``)
        self._tidied = False  # the first session removes what killed operations left (``_remove_dead_working_files``)
        self._filelock = None  # one FileLock per Store: re-entrant within a thread, exclusive across threads

    # ----------------------------------------------------------------------------------------------------
    # set-up and locking

    def init(self) -> Store:
        """Create the layout if it is missing (idempotent; safe when two processes race)."""
        if self._initialised:
            return self
        try:
            for folder in (self.blobs_dir, self.pins_dir):
                folder.mkdir(parents=True, exist_ok=True)
            if self._owner is None:
                self._claim()
            layout = self.root / "oci-layout"
            if not layout.exists():
                fsutil.atomic_write(layout, b'{"imageLayoutVersion":"1.0.0"}', self.ingest_dir)
            if not self.index_path.exists():
                with self.lock():
                    if not self.index_path.exists():
                        self._write_index([])
        except OSError as e:
            raise fsutil.os_error(e, self.root, "creating the store in") from e
        self._initialised = True
        return self

    def store_id(self) -> str:
        """This store's random id (32 hex digits), made on first use. Two processes that race both get the
        first one written: the id is linked into place, never replaced."""
        path = self.root / STORE_ID
        known = _read_store_id(path)
        if known is not None:
            return known
        self.init()
        tmp = fsutil.temp_name(self.ingest_dir, "store-id")
        try:
            tmp.write_text(secrets.token_hex(16) + "\n")
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass  # another process made it first: theirs is the id
            fsutil.fsync_dir(self.root)
        except OSError as e:
            raise fsutil.os_error(e, path, "writing") from e
        finally:
            fsutil.unlink_quietly(tmp)
        known = _read_store_id(path)
        if known is None:
            raise StoreError(f"{path} does not hold a store id", f"remove {path}; it is made again on next use")
        return known

    # ----------------------------------------------------------------------------------------------------
    # owners of working files: each process (each Store object) that opens the store holds the flock of
    # ``ingest/owners/owner-<pid>-<random>.lock`` until it ends. A working file is the owner's while either a
    # held owner lock names its pid or that pid is a running process here. The lock is what tells a live owner
    # in another pid namespace (a container sharing the store) from a dead one, where its pid means nothing;
    # the pid is a second opinion for a filesystem whose locks do not work. A reused pid keeps a dead owner's
    # files (safe: gc's grace removes them later); nothing of a live owner is ever removed.

    def _claim(self) -> bool:
        """Hold this process's owner lock before any working file is written (``init``). False where nothing
        can be written (a read-only store) or locked (no flock here): then this process removes nothing."""
        try:
            self.owners_dir.mkdir(parents=True, exist_ok=True)
            path = fsutil.temp_name(self.owners_dir, "owner").with_suffix(".lock")
            fd = fsutil.lock_file(path)
        except OSError:
            return False
        weakref.finalize(self, _release_owner, fd, path, os.getpid())
        self._owner = path
        return True

    def owners(self) -> tuple[set[int], list[Path]]:
        """The pids whose owner lock is held, and the owner locks nobody holds (their owners are gone)."""
        live, dead = set(), []
        for path in _listdir(self.owners_dir):
            pid = fsutil.owner_pid(path.name)
            if pid is None:
                continue
            if fsutil.lock_held(path):
                live.add(pid)
            else:
                dead.append(path)
        return live, dead

    @staticmethod
    def owned(name: str, live: set[int]) -> bool:
        """Is the working file ``name`` (pid-named, see ``fsutil.temp_name``) one a live process owns?"""
        pid = fsutil.owner_pid(name)
        return pid is not None and (pid in live or fsutil.pid_exists(pid))

    def _remove_dead_working_files(self) -> None:
        """Remove what killed operations left: their temp files (``ingest-<pid>-...``, ``.write-<pid>-...``,
        ``upload-<pid>-...``), pins, and download locks nobody holds. One listing of ``ingest/`` and its small
        folders, nothing per blob. ``.partial`` downloads stay: the next pull resumes from them."""
        ingest = _listdir(self.ingest_dir)
        owned = [path for path in [*ingest, *_listdir(self.pins_dir)] if fsutil.owner_pid(path.name) is not None]
        owned += [path for path in _listdir(self.ingest_dir / "origins") if path.name.startswith(".write-")]
        locks = [path for path in ingest if path.name.endswith(".lock") and fsutil.owner_pid(path.name) is None]
        live, dead = self.owners()  # after listing: a file listed was made by an owner already locked
        for path in owned:
            if not self.owned(path.name, live):
                fsutil.unlink_quietly(path)
        for path in [*locks, *dead]:
            fsutil.remove_if_unlocked(path)

    @contextmanager
    def lock(self, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
        """The store lock: held while index.json changes and while gc decides and deletes."""
        from filelock import FileLock, Timeout

        if self._filelock is None:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise fsutil.os_error(e, self.root, "creating") from e
            self._filelock = FileLock(str(self.root / ".lock"))
        lock = self._filelock
        try:
            lock.acquire(timeout=timeout)
        except Timeout as e:
            raise BusyError(f"the store {self.root} is locked by another modelpkg process",
                            "wait for it to finish, or stop it") from e
        except OSError as e:
            raise fsutil.os_error(e, self.root / ".lock", "locking") from e
        try:
            yield
        finally:
            lock.release()

    def writable(self) -> bool:
        """Can this process write to the store (index, blobs, pins)? False on a read-only mount (EROFS)
        or without write permission. A store nobody can write to is also one nobody can gc."""
        return all(os.access(folder, os.W_OK) for folder in (self.root, self.blobs_dir, self.pins_dir))

    @contextmanager
    def session(self) -> Iterator[Pins]:
        """An operation's pins: every digest pinned stays safe from gc until the block ends."""
        self.init()
        if not self._tidied and self._owner is not None:
            self._tidied = True
            self._remove_dead_working_files()
        pins = Pins(self)
        try:
            yield pins
        finally:
            pins.release()

    # ----------------------------------------------------------------------------------------------------
    # blobs

    def blob_path(self, digest: Digest) -> Path:
        return self.blobs_dir / digest.hex

    def has_blob(self, digest: Digest, size: int | None = None) -> bool:
        try:
            st = self.blob_path(digest).stat()
        except OSError:
            return False
        return size is None or st.st_size == size

    def open_blob(self, digest: Digest) -> BinaryIO:
        try:
            return open(self.blob_path(digest), "rb")
        except FileNotFoundError as e:
            raise NotFoundError(f"blob {digest} is missing from the store",
                                "run 'modelpkg verify', then pull the model again") from e
        except OSError as e:
            raise fsutil.os_error(e, self.blob_path(digest), "reading") from e

    def read_blob(self, digest: Digest, limit: int = MAX_SMALL_BLOB) -> bytes:
        """Read a small blob whole, checking its digest (cheap for the sizes this is used for)."""
        with self.open_blob(digest) as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise StoreError(f"blob {digest} is larger than {limit} bytes; it is not read into memory")
        if Digest.of(data) != digest:
            raise IntegrityError(f"blob {digest} in the store is corrupted (its content does not match its digest)")
        return data

    def put_bytes(self, data: bytes, pins: Pins) -> Digest:
        """Store ``data`` as a blob (idempotent) and pin it."""
        digest = Digest.of(data)
        pins.add(digest)
        if not self.has_blob(digest, len(data)):
            fsutil.atomic_write(self.blob_path(digest), data, self.ingest_dir)
        else:
            self.touch(digest)
        return digest

    def ingest_file(self, src: Path, pins: Pins, *, link: bool = False, progress: Progress | None = None,
                    task: str = "") -> tuple[Digest, int]:
        """Bring a file into the store in one pass and return its digest and size.

        ``link=True`` hard-links the file instead of copying it (same filesystem only): no copy, but a
        later edit of the source file changes the stored blob too, which ``verify`` will then report.
        Otherwise a reflink is tried first (no data copied where the filesystem supports it), and the
        file is copied while being hashed when it is not.
        """
        fsutil.require_regular(src)  # a FIFO or a device would block the copy (or the hash of its link)
        self.init()
        progress = progress or NullProgress()
        tmp = fsutil.temp_name(self.ingest_dir, "ingest")
        with fsutil.removing_on_error(tmp):
            if link:
                try:
                    os.link(src, tmp)
                except OSError as e:
                    raise StoreError(f"cannot hard-link {src} into the store: {e.strerror}",
                                     "--link needs the file on the same filesystem as MODELPKG_HOME") from e
                digest, size = fsutil.hash_file(tmp, progress, task)
            elif fsutil.try_reflink(src, tmp):
                digest, size = fsutil.hash_file(tmp, progress, task)
            else:
                try:
                    digest, size = fsutil.copy_file_and_hash(src, tmp, progress=progress, task=task)
                except FileNotFoundError as e:
                    raise NotFoundError(f"file not found: {src}") from e
            self.commit_temp(tmp, digest, pins)
        return digest, size

    def adopt_file(self, src: Path, pins: Pins, *, expected: Digest | None = None, allow_link: bool = True,
                   progress: Progress | None = None, task: str = "") -> tuple[Digest, int, str]:
        """Bring a file in without copying its data where the filesystem allows; return (digest, size, how).

        ``how`` is ``reflink`` (blocks shared copy-on-write: independent files), else ``link`` (a hard link,
        when ``allow_link``: the same inode, so an in-place edit of the source would change the blob too), else
        ``copy``. The stored bytes are hashed; when ``expected`` is given and differs, nothing is stored and
        ``IntegrityError`` is raised.
        """
        self.init()
        progress = progress or NullProgress()
        tmp = fsutil.temp_name(self.ingest_dir, "ingest")
        with fsutil.removing_on_error(tmp):
            digest, size, how = fsutil.place_file(src, tmp, allow_link=allow_link, expected=expected,
                                                  progress=progress, task=task)
            self.commit_temp(tmp, digest, pins)
        return digest, size, how

    def commit_temp(self, tmp: Path, digest: Digest, pins: Pins) -> None:
        """Move a verified temp file into place under its digest.

        The verified file always wins: if a blob of that name is already there it is replaced (atomically;
        readers holding the old file open keep reading it), so a damaged blob is repaired, never kept.
        """
        pins.add(digest)
        target = self.blob_path(digest)
        try:
            os.replace(tmp, target)
            fsutil.fsync_dir(self.blobs_dir)
        except OSError as e:
            raise fsutil.os_error(e, target, "storing") from e
        self.mark_verified(digest)  # hashed on the way in

    # ----------------------------------------------------------------------------------------------------
    # verified markers: ``ingest/verified/<hex>`` holds "size mtime_ns inode" of the blob when it was last
    # hashed and found right (the stamp run's weights check writes too). A write to the file changes its
    # mtime, so a stale marker means "hash it again before trusting it"; verify removes the marker of a bad blob.

    def _verified_marker(self, digest: Digest) -> Path:
        return self.ingest_dir / "verified" / digest.hex

    def _stamp(self, digest: Digest) -> str | None:
        try:
            st = self.blob_path(digest).stat()
        except OSError:
            return None
        return f"{st.st_size} {st.st_mtime_ns} {st.st_ino}"

    def mark_verified(self, digest: Digest) -> None:
        """Record that the blob as it is now matches its digest (best effort: a read-only store re-hashes)."""
        stamp = self._stamp(digest)
        if stamp is None:
            return
        try:
            self._verified_marker(digest).parent.mkdir(parents=True, exist_ok=True)
            fsutil.atomic_write(self._verified_marker(digest), stamp.encode(), self.ingest_dir)
        except (OSError, StoreError):
            pass

    def is_verified(self, digest: Digest) -> bool:
        """Was the blob hashed and found right, and is it unchanged since (size, mtime, inode)?"""
        stamp = self._stamp(digest)
        try:
            return stamp is not None and self._verified_marker(digest).read_text() == stamp
        except OSError:
            return False

    def forget_verified(self, digest: Digest) -> None:
        try:
            os.unlink(self._verified_marker(digest))
        except OSError:
            pass

    def has_good_blob(self, digest: Digest, size: int) -> bool:
        """The blob is present with ``size`` and matches its digest: trusted when its verified marker is
        fresh (one stat and one small read), re-hashed otherwise (then marked, or its marker dropped)."""
        stamp = self._stamp(digest)
        if stamp is None or int(stamp.split()[0]) != size:
            return False
        if self.is_verified(digest):
            return True
        try:
            actual, _ = fsutil.hash_file(self.blob_path(digest))
        except OSError:
            return False
        if actual != digest:
            self.forget_verified(digest)
            return False
        self.mark_verified(digest)
        return True

    def touch(self, digest: Digest) -> None:
        """Refresh a blob's mtime: gc's grace period counts from the last time an operation used it.
        A fresh verified marker is carried over (the content did not change)."""
        try:
            fresh = self._verified_marker(digest).read_text() == self._stamp(digest)
        except OSError:
            fresh = False
        try:
            os.utime(self.blob_path(digest))
        except OSError:
            return
        if fresh:
            self.mark_verified(digest)

    def partial_path(self, digest: Digest) -> Path:
        """Where an interrupted download of ``digest`` is kept for resuming."""
        return self.ingest_dir / f"{digest.hex}.partial"

    def download_lock_path(self, digest: Digest) -> Path:
        """The lock one downloader of ``digest`` holds (``ingest.download_lock``); gc keeps its partial while held."""
        return self.ingest_dir / f"{digest.hex}.lock"

    def temp_path(self, prefix: str = "tmp") -> Path:
        self.init()
        return fsutil.temp_name(self.ingest_dir, prefix)

    # ----------------------------------------------------------------------------------------------------
    # names (index.json)

    def refs(self) -> list[RefEntry]:
        self.init()
        return [self._entry(m) for m in self._read_index()]

    def resolve(self, ref: Reference) -> RefEntry:
        """The index entry for ``ref``; by digest when the reference pins one."""
        name = str(ref)
        entries = self.refs()
        for entry in entries:
            if entry.name == name:
                return entry
        if ref.digest is not None:
            for entry in entries:
                if entry.digest == ref.digest:
                    return entry
        raise NotFoundError(f"model not found: {name}", "see 'modelpkg list', or pull it first")

    def manifest(self, ref: Reference) -> tuple[RefEntry, Manifest]:
        entry = self.resolve(ref)
        parsed = parse_manifest(self.read_blob(entry.digest), entry.media_type)
        if isinstance(parsed, Index):
            raise StoreError(f"{entry.name} is an index, not a model manifest")
        return entry, parsed

    def tag(self, ref: Reference, manifest_bytes: bytes, media_type: str, pins: Pins,
            attached: tuple[Digest, ...] = (), derived: tuple[tuple[Digest, Digest], ...] = (),
            index: Digest | None = None, source: str | None = None) -> RefEntry:
        """Store a manifest and point ``ref`` at it. Every blob it names (and each derived one, and the
        ``index`` it was pulled through) must already be in the store. ``source`` is recorded on the name
        (``"pull"`` by a pull)."""
        parsed = parse_manifest(manifest_bytes, media_type)
        digest = self.put_bytes(manifest_bytes, pins)
        children = parsed.blobs() if isinstance(parsed, Manifest) else list(parsed.manifests)
        wanted = [*(c.digest for c in children), *(b for _, b in derived), *((index,) if index else ())]
        missing = [d for d in wanted if not self.has_blob(d)]
        if missing:
            raise StoreError(f"cannot name {ref}: blob {missing[0]} is not in the store")
        return self.set_ref(ref, digest, media_type, len(manifest_bytes), attached, derived, index=index,
                            source=source)

    def set_ref(self, ref: Reference, digest: Digest, media_type: str, size: int,
                attached: tuple[Digest, ...] = (), derived: tuple[tuple[Digest, Digest], ...] = (), *,
                index: Digest | None = None, source: str | None = None) -> RefEntry:
        entry = {
            "mediaType": media_type,
            "digest": str(digest),
            "size": size,
            "annotations": {mt.REF_NAME: str(ref), MODIFIED: f"{time.time():.3f}",
                            **link_annotations(attached, derived, index),
                            **({mt.NAME_SOURCE: source} if source else {})},
        }
        with self.lock():
            manifests = [m for m in self._read_index() if self._name(m) != str(ref)]
            manifests.append(entry)
            self._write_index(manifests)
        return self._entry(entry)

    def remove_refs(self, refs: list[Reference]) -> list[RefEntry]:
        """Remove names; returns the entries removed. Blobs stay until ``sweep``/``gc``."""
        names = {str(r) for r in refs}
        with self.lock():
            manifests = self._read_index()
            removed = [self._entry(m) for m in manifests if self._name(m) in names]
            if removed:
                self._write_index([m for m in manifests if self._name(m) not in names])
        return removed

    def _read_index(self) -> list[dict]:
        try:
            data = self.index_path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as e:
            raise fsutil.os_error(e, self.index_path, "reading") from e
        obj = load_json(data, f"{self.index_path}", limit=64 * 1024 * 1024)
        if not isinstance(obj, dict) or not isinstance(obj.get("manifests"), list):
            raise StoreError(f"{self.index_path} is not a valid OCI index",
                             "restore it from a backup or remove the store")
        return [m for m in obj["manifests"] if isinstance(m, dict)]

    def _write_index(self, manifests: list[dict]) -> None:
        manifests = sorted(manifests, key=self._name)
        data = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": manifests},
                          indent=2, sort_keys=True).encode()
        self.ingest_dir.mkdir(parents=True, exist_ok=True)
        fsutil.atomic_write(self.index_path, data, self.ingest_dir)

    @staticmethod
    def _name(m: dict) -> str:
        return str((m.get("annotations") or {}).get(mt.REF_NAME, ""))

    @staticmethod
    def _entry(m: dict) -> RefEntry:
        annotations = m.get("annotations") or {}
        try:
            modified = float(annotations.get(MODIFIED, 0))
        except ValueError:
            modified = 0.0
        attached = []
        for text in str(annotations.get(mt.ATTACHED, "")).split():
            try:
                attached.append(Digest.parse(text))
            except InvalidInputError:  # a hand-edited index loses only that attachment
                pass
        derived = []
        for pair in str(annotations.get(mt.DERIVED, "")).split():
            try:
                layer, _, made = pair.partition("=")
                derived.append((Digest.parse(layer), Digest.parse(made)))
            except InvalidInputError:  # a damaged pair only loses that derived blob; pull makes it again
                pass
        try:
            index = Digest.parse(str(annotations[mt.SOURCE_INDEX])) if mt.SOURCE_INDEX in annotations else None
        except InvalidInputError:  # a damaged record: the signatures kept for that index no longer apply
            index = None
        return RefEntry(str(annotations.get(mt.REF_NAME, "")), Digest.parse(m["digest"]),
                        str(m.get("mediaType", mt.OCI_MANIFEST)), int(m.get("size", 0)), modified, tuple(attached),
                        tuple(derived), index, str(annotations[mt.NAME_SOURCE])[:16] if mt.NAME_SOURCE in annotations
                        else None)

    # ----------------------------------------------------------------------------------------------------
    # garbage collection and verification

    def referenced(self) -> dict[Digest, str]:
        """Mark: every digest reachable from a name (manifests, their configs and layers), with one name each."""
        marked: dict[Digest, str] = {}
        for entry in self.refs():
            self._mark(entry.digest, entry.media_type, entry.name, marked, depth=0)
            for digest in entry.attached:
                self._mark(digest, mt.OCI_MANIFEST, entry.name, marked, depth=1)
            for _, made in entry.derived:
                marked.setdefault(made, entry.name)
            if entry.index is not None:  # the index's bytes only: its other platforms' manifests were never pulled
                marked.setdefault(entry.index, entry.name)
        return marked

    def _mark(self, digest: Digest, media_type: str, name: str, marked: dict[Digest, str], depth: int) -> None:
        if digest in marked or depth > 4:
            return
        marked[digest] = name
        try:
            parsed = parse_manifest(self.read_blob(digest), media_type)
        except (NotFoundError, IntegrityError, StoreError, ValueError):
            return  # a missing or broken manifest marks nothing more; verify reports it
        except Exception:  # noqa: BLE001 - any unreadable manifest only stops marking below it
            return
        if isinstance(parsed, Index):
            for child in parsed.manifests:
                self._mark(child.digest, child.media_type, name, marked, depth + 1)
        else:
            for blob in parsed.blobs():
                marked.setdefault(blob.digest, name)

    def gc_plan(self, grace: float = 3600.0, partial_grace: float = 7 * 86400.0) -> GCPlan:
        """Compute (do not delete) what gc would remove. Call under ``lock()`` to act on it safely."""
        self.init()
        keep = set(self.referenced()) | Pins.live(self)
        now = time.time()
        blobs = []
        for path in _listdir(self.blobs_dir):
            try:
                digest = Digest(path.name)
                st = path.stat()
            except (StoreError, ValueError, OSError, Exception):  # noqa: BLE001 - stray names are not blobs
                continue
            if digest not in keep and now - st.st_mtime >= grace:
                blobs.append((digest, st.st_size))
        partials = []
        entries = _listdir(self.ingest_dir)
        live, _ = self.owners()  # after listing, as in ``_remove_dead_working_files``
        for path in entries:
            if path.is_dir():
                continue
            try:
                st = path.stat()
            except OSError:
                continue
            if self._in_use(path, live):
                continue
            # downloads (and their locks) keep the long grace: a pull may resume them days later; a temp
            # file whose owner is gone has no grace at all (nobody will ever finish it), where owner locks
            # work here (this process holds one), so that "gone" is known and not just a pid not seen
            long_lived = path.name.endswith((".partial", ".lock"))
            orphan = self._owner is not None and fsutil.owner_pid(path.name) is not None
            limit = partial_grace if long_lived else 0.0 if orphan else grace
            if now - st.st_mtime >= limit:
                partials.append((path, st.st_size))
        return GCPlan(tuple(sorted(blobs)), tuple(sorted(partials)))

    def _in_use(self, path: Path, live: set[int]) -> bool:
        """A working file a live operation owns: its temp file, or a download whose lock is held."""
        name = path.name
        if self.owned(name, live):
            return True
        if name.endswith(".partial") or name.endswith(".lock"):
            return fsutil.lock_held(path.with_name(name.split(".")[0] + ".lock"))
        return False

    def gc(self, grace: float = 3600.0, partial_grace: float = 7 * 86400.0, dry_run: bool = False) -> GCPlan:
        """Mark and sweep under the store lock. Names are never touched; only unreachable blobs go."""
        with self.lock():
            plan = self.gc_plan(grace, partial_grace)
            if not dry_run:
                self._delete(plan)
                self._remove_dead_working_files()  # and the pins, owner and download locks of the dead
        return plan

    def sweep(self, digests: set[Digest]) -> GCPlan:
        """Delete those of ``digests`` that no name references and no operation has pinned (used by rm)."""
        with self.lock():
            keep = set(self.referenced()) | Pins.live(self)
            blobs = []
            for digest in sorted(digests - keep):
                try:
                    blobs.append((digest, self.blob_path(digest).stat().st_size))
                except OSError:
                    continue
            plan = GCPlan(tuple(blobs), ())
            self._delete(plan)
        return plan

    def _delete(self, plan: GCPlan) -> None:
        for digest, _ in plan.blobs:
            fsutil.remove(self.blob_path(digest))
            self.forget_verified(digest)
        for path, _ in plan.partials:
            fsutil.remove(path)

    def verify(self, digests: list[Digest] | None = None, progress: Progress | None = None) -> list[tuple[Digest, str]]:
        """Re-hash blobs (all of them, or ``digests``); return ``(digest, problem)`` for each bad one."""
        self.init()
        progress = progress or NullProgress()
        if digests is None:
            digests = []
            for path in _listdir(self.blobs_dir):
                try:
                    digests.append(Digest(path.name))
                except Exception:  # noqa: BLE001 - a stray file name is reported below
                    continue
        problems = []
        for digest in digests:
            path = self.blob_path(digest)
            if not path.exists():
                problems.append((digest, "missing"))
                continue
            try:
                size = path.stat().st_size
                progress.start(digest.short, size, f"verifying {digest.short}")
                actual, _ = fsutil.hash_file(path, progress, digest.short)
                progress.finish(digest.short)
            except OSError as e:
                problems.append((digest, f"unreadable: {e.strerror}"))
                continue
            if actual != digest:
                problems.append((digest, f"content has digest {actual}"))
                self.forget_verified(digest)  # the next pull re-hashes it, and fetches it again
            else:
                self.mark_verified(digest)
        return problems


class Pins:
    """Digests an operation is about to reference, recorded where gc sees them.

    The pin file ``ingest/pins/<pid>-<random>.json`` is rewritten under the store lock whenever a digest is
    added, and its companion ``.lock`` is held (flock) for the pins' lifetime: gc treats a pin file whose
    lock it can take as left over by a dead process, and ignores it.
    """

    def __init__(self, store: Store):
        from filelock import FileLock

        self.store = store
        self.path = fsutil.temp_name(store.pins_dir, "pin").with_suffix(".json")
        self.digests: set[Digest] = set()
        self._lock = FileLock(str(self.path) + ".lock")
        try:
            self._lock.acquire()
        except OSError as e:  # a read-only or full store: one clear error, not a traceback
            raise fsutil.os_error(e, store.pins_dir, "pinning blobs in") from e

    def add(self, *digests: Digest) -> None:
        """Pin ``digests`` (one pin-file write for all of them, under the store lock)."""
        new = set(digests) - self.digests
        if not new:
            return
        with self.store.lock():
            self.digests |= new
            fsutil.atomic_write(self.path, json.dumps(sorted(d.hex for d in self.digests)).encode(),
                                self.store.ingest_dir)

    def release(self) -> None:
        for path in (self.path, Path(str(self.path) + ".lock")):
            fsutil.remove(path)
        self._lock.release()

    @staticmethod
    def live(store: Store) -> set[Digest]:
        """Every digest pinned by a live process; stale pin files are removed on the way."""
        pinned: set[Digest] = set()
        for path in _listdir(store.pins_dir):
            if not path.name.endswith(".json"):
                continue
            lock_path = Path(str(path) + ".lock")
            if not fsutil.lock_held(lock_path):
                fsutil.remove(path)
                fsutil.remove(lock_path)
                continue
            try:
                pinned.update(Digest(h) for h in json.loads(path.read_text()))
            except Exception:  # noqa: BLE001 - a pin being rewritten is read again next time
                continue
        return pinned


def _release_owner(fd: int, path: Path, pid: int) -> None:
    if os.getpid() == pid:
        fsutil.unlock_and_remove(fd, path)
    else:  # a forked child: the parent still owns the lock (closing this copy keeps it held)
        os.close(fd)


def _listdir(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except FileNotFoundError:
        return []
    except OSError as e:
        raise fsutil.os_error(e, folder, "listing") from e


def _read_store_id(path: Path) -> str | None:
    try:
        text = path.read_text(encoding="ascii", errors="replace").strip()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise fsutil.os_error(e, path, "reading") from e
    return text if len(text) == 32 and all(c in string.hexdigits for c in text) else None
