"""``push``: send a model from the store to the registry its name points at.

For each blob (config and layers, a few at a time): ``HEAD`` it and skip what the registry has; try a
cross-repository mount when the blob is known to be in another repository on the same registry (pull
and push remember where blobs went, see ``store.origins``); otherwise stream it up with POST + PUT
(or PATCH chunks with ``chunked=True``). The manifest goes last, as the exact stored bytes with their own
media type, and the digest the registry reports is checked (OCI distribution-spec "Pushing manifests").

To push under another name, give the model that name first (``modelpkg cp``), as ``docker tag`` does.

Without ``format`` the stored manifest goes as it is (a model pulled from Ollama's registry stays in
Ollama's format, and digests and signatures stay valid). ``format`` picks a dialect (``modelpkg.core.formats``):
``modelpack`` (a no-op for what ``create`` made), ``ollama`` or ``docker`` build that manifest and config
from the model (``ops.convert``; the weights and text blobs are the same blobs), store them as blobs
(unnamed: the local name keeps pointing at the stored manifest, and gc removes the converted ones later) and
send those. What a format cannot carry is reported in ``notes``.

Signatures ``pull`` kept for the manifest pushed go with it, after it (``sign.push_kept``): the
``sha256-<hex>.sig`` tag and any kept referrer. A conversion has another digest, so they do not carry over
one (a note says so).

Orchestration: imports the core, the store and ``modelpkg.registry``.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from modelpkg.core import formats
from modelpkg.core.digest import Digest
from modelpkg.core.errors import IntegrityError, NotFoundError, RegistryError
from modelpkg.core.manifest import Descriptor
from modelpkg.core.progress import NullProgress, Progress
from modelpkg.core.reference import Reference
from modelpkg.ops import sign
from modelpkg.ops.convert import convert
from modelpkg.registry.auth import scope
from modelpkg.registry.client import RegistryClient
from modelpkg.registry.connect import client_for
from modelpkg.store import RefEntry, Store
from modelpkg.store.origins import known_origins, remember_origin

WORKERS = 3


def push(store: Store, ref: Reference, *, progress: Progress | None = None, insecure: bool = False,
         client: RegistryClient | None = None, chunked: bool = False, workers: int = WORKERS,
         format: str | None = None, notes: list[str] | None = None) -> Digest:
    """Push the local model named ``ref`` to ``ref``'s registry and repository, as stored or in ``format``
    (modelpack, ollama or docker); returns the digest of the manifest the registry now has. What the format
    cannot carry is appended to ``notes``."""
    progress = progress or NullProgress()
    entry, manifest = store.manifest(ref)
    if format is not None:
        formats.check_format(format)
    if format == "modelpack" and formats.is_modelpack(manifest):
        format = None  # already in that shape: the stored bytes go, as they are
    own = client is None
    client = client or client_for(ref, insecure=insecure)
    try:
        with store.session() as pins:
            pins.add(entry.digest)
            media_type = entry.media_type
            if format is None:
                data = store.read_blob(entry.digest)  # the exact bytes, checked against their digest
            else:
                converted = convert(store, entry, manifest, format, pins)
                manifest, data, media_type = converted.manifest, converted.manifest_bytes, converted.manifest.media_type
                store.put_bytes(data, pins)
                if notes is not None:
                    notes.extend(converted.dropped)
            blobs = manifest.unique_blobs()
            pins.add(*(blob.digest for blob in blobs))
            for blob in blobs:
                if not store.has_blob(blob.digest, blob.size):
                    raise NotFoundError(f"blob {blob.digest.short} of {ref} is missing from the store",
                                        "run 'modelpkg verify', then pull or create the model again")
            origins = known_origins(store, ref.host)
            for blob in blobs:
                progress.start(str(blob.digest), blob.size, f"pushing {blob.digest.short}")

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
            digest = client.put_manifest(ref.repository, reference, data, media_type, name=str(ref))
            _carry_signatures(store, client, ref, entry, digest, progress, notes)
        remember_origin(store, ref.host, ref.repository, [b.digest for b in blobs])
        progress.message("success")
        return digest
    finally:
        if own:
            client.close()


def _carry_signatures(store: Store, client: RegistryClient, ref: Reference, entry: RefEntry, digest: Digest,
                      progress: Progress, notes: list[str] | None) -> None:
    """After the manifest: the signatures pull kept for exactly this digest (a conversion has another one)."""
    if not entry.attached:
        return
    if digest != entry.digest:
        if notes is not None:
            notes.append("the model's signatures (they name the stored manifest's digest; sign the pushed one)")
        return
    if entry.index is not None:
        progress.message(f"the signatures kept for {entry.name} name the index it was pulled through "
                         f"({entry.index.short}), not this manifest: sign {ref} to sign what was pushed")
        return
    if sign.push_kept(store, client, ref.repository, entry, digest):
        progress.message(f"pushed the signatures kept for {digest.short}")
    else:
        progress.message(f"the signatures kept for {entry.name} name another digest than {digest.short}: "
                         f"sign {ref} to sign what was pushed")


def _push_blob(store: Store, client: RegistryClient, ref: Reference, blob: Descriptor, origins: list[str],
               progress: Progress, chunked: bool) -> None:
    task = str(blob.digest)  # the full digest, as Ollama's progress lines carry it
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

