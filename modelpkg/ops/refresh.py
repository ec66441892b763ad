"""``pull --all`` and ``outdated``: the pulled names, refreshed or checked against their registries.

Only names that a pull wrote are looked at: the store records that on the name (``RefEntry.source ==
"pull"``, ``mt.NAME_SOURCE``). Created, imported, loaded and copied names are local and skipped, so a local
``gemma3`` is never replaced by the registry's unrelated model of that name; a name pulled by a modelpkg
that did not record it counts as local until it is pulled again. Each name costs one manifest request when
nothing changed (a pull of an unchanged model fetches no blob; ``outdated`` only reads the manifest). One
failure does not stop the rest: each name's outcome is in the result, its error too.

Orchestration: imports the core, the store, ``registry.connect`` and ``ops.pull``.
"""

from __future__ import annotations

from dataclasses import dataclass

from modelpkg.core.digest import Digest
from modelpkg.core.errors import ModelpkgError
from modelpkg.core.progress import NullProgress, Progress
from modelpkg.core.reference import Reference, parse_reference
from modelpkg.ops.pull import pull
from modelpkg.registry.connect import pull_client
from modelpkg.store import RefEntry, Store

LOCAL, UP_TO_DATE, OUTDATED, UPDATED, FAILED = "local", "up to date", "outdated", "updated", "failed"


@dataclass(frozen=True)
class Outcome:
    name: str
    status: str                    # one of LOCAL, UP_TO_DATE, OUTDATED, UPDATED, FAILED
    local: Digest
    remote: Digest | None = None   # what the registry names now (when it was asked)
    error: ModelpkgError | None = None

    def to_json(self) -> dict:
        out = {"name": self.name, "status": self.status, "local": str(self.local),
               "remote": str(self.remote) if self.remote else None}
        if self.error is not None:
            out["error"] = self.error.message
        return out


def _pinned_digest(entry: RefEntry) -> Digest:
    """What the name's tag pointed at when it was pulled: the index it came through, else the manifest."""
    return entry.index or entry.digest


def _names(store: Store) -> list[tuple[RefEntry, Reference | None]]:
    out = []
    for entry in sorted(store.refs(), key=lambda e: e.name):
        try:
            ref = parse_reference(entry.name)
        except ModelpkgError:
            ref = None
        out.append((entry, ref if entry.pulled else None))
    return out


def outdated(store: Store, *, insecure: bool = False) -> list[Outcome]:
    """Each name: local (skipped), up to date, or outdated (the registry's tag names another manifest)."""
    results = []
    for entry, ref in _names(store):
        if ref is None:
            results.append(Outcome(entry.name, LOCAL, entry.digest))
            continue
        if ref.digest is not None:  # pinned by digest: what it names cannot change
            results.append(Outcome(entry.name, UP_TO_DATE, entry.digest, ref.digest))
            continue
        try:
            client, own = pull_client(ref, insecure=insecure)
            try:
                _, _, remote = client.get_manifest(ref.repository, ref.reference, name=str(ref))
            finally:
                if own:
                    client.close()
        except ModelpkgError as e:
            results.append(Outcome(entry.name, FAILED, entry.digest, error=e))
            continue
        status = UP_TO_DATE if remote == _pinned_digest(entry) else OUTDATED
        results.append(Outcome(entry.name, status, entry.digest, remote))
    return results


def pull_all(store: Store, *, progress: Progress | None = None, insecure: bool = False,
             workers: int | None = None, limit_rate: int | None = None) -> list[Outcome]:
    """Pull every pulled name again; each: local (skipped), up to date, updated, or failed."""
    progress = progress or NullProgress()
    results = []
    for entry, ref in _names(store):
        if ref is None:
            results.append(Outcome(entry.name, LOCAL, entry.digest))
            continue
        progress.message(f"pulling {ref.short()}")
        try:
            new = pull(store, ref, progress=progress, insecure=insecure, workers=workers, limit_rate=limit_rate)
        except ModelpkgError as e:
            results.append(Outcome(entry.name, FAILED, entry.digest, error=e))
            continue
        status = UP_TO_DATE if new.digest == entry.digest else UPDATED
        results.append(Outcome(entry.name, status, entry.digest, new.digest))
    return results
