"""Where blobs came from: which repositories on a registry are known to hold which blobs.

Pull and push record the repository each blob went through (``ingest/origins/<host>.json``: digest hex ->
repositories, most recent first), so a later push to another repository on that registry can ask for a
cross-repository mount instead of uploading the bytes again (OCI distribution-spec "Mounting a blob from
another repository"). The map is an optimisation only: a lost or damaged file costs an upload, never a
failure, so reading and writing it never raise. ``ingest/origins/`` is a folder, which gc's sweep of
``ingest/`` skips.

Adapter: file I/O. Imports the core, ``base.fsutil``, ``filelock`` and the store's layout; never the
registry (it only stores names of repositories) or the verbs.
"""

from __future__ import annotations

import json
from pathlib import Path

from modelpkg.base import fsutil
from modelpkg.core.digest import Digest
from modelpkg.store.layout import Store

MAX_ORIGINS = 8  # repositories remembered per blob


def _path(store: Store, host: str) -> Path:
    safe = "".join(c if c.isalnum() or c in ".-" else "_" for c in host)
    return store.ingest_dir / "origins" / f"{safe}.json"


def known_origins(store: Store, host: str) -> dict[str, list[str]]:
    """digest hex -> repositories on ``host`` known to hold it (most recent first)."""
    try:
        obj = json.loads(_path(store, host).read_text())
    except (OSError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}


def remember_origin(store: Store, host: str, repo: str, digests: list[Digest]) -> None:
    """Record that ``repo`` on ``host`` holds ``digests``. Best effort: a failure only costs a mount later."""
    from filelock import FileLock

    path = _path(store, host)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock", timeout=10):
            origins = known_origins(store, host)
            for digest in digests:
                repos = [r for r in origins.get(digest.hex, []) if isinstance(r, str) and r != repo]
                origins[digest.hex] = [repo, *repos][:MAX_ORIGINS]
            fsutil.atomic_write(path, json.dumps(origins, sort_keys=True).encode(), path.parent)
    except Exception:  # noqa: BLE001 - the map is an optimisation; never fail a pull or push over it
        pass
