"""``push``: send a model from the store to the registry its name points at.

For each blob (config and layers, a few at a time): ``HEAD`` it and skip what the registry has; try a
cross-repository mount when the blob is known to be in another repository on the same registry (pull
and push remember where blobs went, see ``pull.remember_origin``); otherwise stream it up with POST + PUT
(or PATCH chunks with ``chunked=True``). The manifest goes last, as the exact stored bytes with their own
media type, and the digest the registry reports is checked (OCI distribution-spec "Pushing manifests").

To push under another name, give the model that name first (``modelpkg cp``), as ``docker tag`` does.

Orchestration: imports the core, the store and ``modelpkg.registry``.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from modelpkg.digest import Digest
from modelpkg.errors import IntegrityError, NotFoundError, RegistryError
from modelpkg.manifest import Descriptor
from modelpkg.progress import NullProgress, Progress
from modelpkg.pull import _unique, client_for, known_origins, remember_origin
from modelpkg.reference import Reference
from modelpkg.registry.auth import scope
from modelpkg.registry.client import RegistryClient
from modelpkg.store import Store

WORKERS = 3


def push(store: Store, ref: Reference, *, progress: Progress | None = None, insecure: bool = False,
         client: RegistryClient | None = None, chunked: bool = False, workers: int = WORKERS) -> Digest:
    """Push the local model named ``ref`` to ``ref``'s registry and repository; returns the manifest digest."""
    progress = progress or NullProgress()
    entry, manifest = store.manifest(ref)
    own = client is None
    client = client or client_for(ref, insecure=insecure)
    try:
        with store.session() as pins:
            blobs = _unique(manifest.blobs())
            pins.add(entry.digest, *(blob.digest for blob in blobs))
            data = store.read_blob(entry.digest)  # the exact bytes, checked against their digest
            for blob in blobs:
                if not store.has_blob(blob.digest, blob.size):
                    raise NotFoundError(f"blob {blob.digest.short} of {ref} is missing from the store",
                                        "run 'modelpkg verify', then pull or create the model again")
            origins = known_origins(store, ref.host)
            for blob in blobs:
                progress.start(blob.digest.short, blob.size, f"pushing {blob.digest.short}")

            def one(blob: Descriptor) -> None:
                _push_blob(store, client, ref, blob, origins.get(blob.digest.hex, []), progress, chunked)

            if workers <= 1 or len(blobs) == 1:
                for blob in blobs:
                    one(blob)
            else:
                with ThreadPoolExecutor(max_workers=min(workers, len(blobs)), thread_name_prefix="push") as pool:
                    for future in [pool.submit(one, blob) for blob in blobs]:
                        future.result()
            progress.message("pushing manifest")
            reference = ref.tag or str(ref.digest)
            digest = client.put_manifest(ref.repository, reference, data, entry.media_type, name=str(ref))
        remember_origin(store, ref.host, ref.repository, [b.digest for b in blobs])
        progress.message("success")
        return digest
    finally:
        if own:
            client.close()


def _push_blob(store: Store, client: RegistryClient, ref: Reference, blob: Descriptor, origins: list[str],
               progress: Progress, chunked: bool) -> None:
    task = blob.digest.short
    push_scope = (scope(ref.repository, "pull", "push"),)
    if client.head_blob(ref.repository, blob.digest, scopes=push_scope, subject=str(ref)) is not None:
        progress.advance(task, blob.size)
        progress.finish(task, "exists")
        return
    mount_from = next((r for r in origins if r != ref.repository), None)
    try:
        result = client.upload_blob(ref.repository, blob, store.blob_path(blob.digest), progress, mount_from,
                                    task=task, chunked=chunked, subject=str(ref))
    except RegistryError as e:
        if e.code in ("DIGEST_INVALID", "SIZE_INVALID"):
            raise IntegrityError(f"blob {blob.digest.short} in the store does not match its digest; the registry "
                                 "refused it", "run 'modelpkg verify', then pull or create the model again") from e
        raise
    progress.finish(task, result.how)
