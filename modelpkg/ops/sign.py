"""``sign``, ``verify-signature`` and the trust check ``pull`` runs: signatures on a registry and in the store.

Signing (oci-model-artifacts.md section 9.2):

1. resolve the name to the registry's manifest digest (what is signed is what the registry serves);
2. build cosign's simple-signing payload for it and sign it (ECDSA P-256, SHA-256, DER);
3. upload the payload and an image config, then PUT the signature manifest under ``sha256-<hex>.sig``,
   keeping the signatures already there (a new signature by the same key for the same payload replaces its
   older one);
4. attach the same signature as an OCI 1.1 referrer (a manifest with ``subject``), and when the registry's
   answer has no ``OCI-Subject`` header (no referrers API: CNCF distribution 2.8, GHCR) add it to the
   referrers tag-schema index ``sha256-<hex>`` (distribution-spec "Pushing Manifests with Subject").

Verifying reads ``sha256-<hex>.sig`` first and the referrers (cosign's ``.sig`` layout, and cosign v3's Sigstore
bundles with a DSSE envelope: ``signing.layer_candidates``; the API, else the tag-schema index) when that
gives no accepted signature; a signature counts when a trusted key verifies it *and* its payload names the
digest being checked. ``pull`` keeps the signature manifests it found (with payloads and configs) in the
store, attached to the model's index entry, so ``show`` and ``verify-signature --local`` work offline and gc
keeps them. For a model pulled through a multi-platform index, what was signed is the index: its bytes are
kept too (``RefEntry.index``) and local checks verify the index digest and that the index lists the model.
``push`` sends the kept signatures of the digest it pushes (``push_kept``).

Orchestration: imports the core, ``keys``, the store and ``modelpkg.registry``.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from modelpkg.base import keys as keyfiles
from modelpkg.core import mediatypes as mt
from modelpkg.core import signing
from modelpkg.core.digest import Digest
from modelpkg.core.errors import (
    IntegrityError,
    InvalidInputError,
    ModelpkgError,
    NotFoundError,
    RegistryError,
    TrustError,
)
from modelpkg.core.manifest import Descriptor, Index, Manifest, parse_manifest
from modelpkg.core.progress import NullProgress, Progress
from modelpkg.core.reference import Reference
from modelpkg.core.signing import Candidate, TrustedKey, Verdict
from modelpkg.registry.auth import scope
from modelpkg.registry.client import PullClient, RegistryClient
from modelpkg.store import Pins, RefEntry, Store

MAX_REFERRERS = 64  # referrer manifests fetched per subject: more is abuse, not provenance


@dataclass(frozen=True)
class SignResult:
    name: str
    digest: Digest
    signature_tag: str
    signature_manifest: Digest
    referrer: Digest
    referrers: str  # "api" (the registry indexes referrers) or "tag-schema" (we keep sha256-<hex>)
    fingerprint: str

    def to_json(self) -> dict:
        return {"name": self.name, "digest": str(self.digest), "signature_tag": self.signature_tag,
                "signature_manifest": str(self.signature_manifest), "referrer": str(self.referrer),
                "referrers": self.referrers, "fingerprint": self.fingerprint}


@dataclass(frozen=True)
class Found:
    """A signature manifest found for a digest, with its payload blobs (digest -> bytes) and config."""

    data: bytes
    manifest: Manifest
    source: str
    blobs: dict = field(default_factory=dict, compare=False)

    def candidates(self) -> list[Candidate]:
        return [c for layer in signing.signed_layers(self.manifest) if layer.digest in self.blobs
                for c in signing.layer_candidates(layer, self.blobs[layer.digest], self.source)]


# ---------------------------------------------------------------------------------------------------------
# sign


def sign(ref: Reference, private_key, client: RegistryClient, *, progress: Progress | None = None,
         created: str | None = None) -> SignResult:
    """Sign what ``ref`` names on its registry and push the signature (``.sig`` tag and referrer)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    progress = progress or NullProgress()
    repo = ref.repository
    progress.message("resolving manifest")
    try:
        data, media_type, digest = client.get_manifest(repo, ref.reference, name=str(ref))
    except NotFoundError as e:
        raise NotFoundError(e.message, f"push it first: modelpkg push {ref}; what is signed is the registry's "
                                       "copy") from e
    subject = Descriptor(media_type or parse_manifest(data).media_type, digest, len(data))
    payload = signing.format_payload(signing.Payload(f"{ref.host}/{repo}", digest))
    signature = private_key.sign(payload, ec.ECDSA(hashes.SHA256()))
    layer = signing.signature_layer(payload, signature)
    me = TrustedKey("signer", keyfiles.fingerprint(private_key.public_key()), private_key.public_key())
    created = created or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    progress.message("pushing signature")
    _upload(client, repo, payload)
    existing = _get_manifest(client, repo, signing.signature_tag(digest))
    old_layers = signing.signature_layers(existing[1]) if existing else []
    old_payloads = _fetch_blobs(client, repo, [d for d in old_layers if d.digest == layer.digest]) if existing else {}

    def replaces(old: Descriptor) -> bool:  # our own earlier signature of this very payload
        der = signing.decode_signature(old)
        return old.digest == layer.digest and der is not None and signing.verifies(me, old_payloads.get(
            old.digest, payload), der)

    sig_manifest = _put_sig_tag(client, repo, digest, signing.merge_layers(old_layers, layer, replaces), created)
    tag = signing.signature_tag(digest)

    progress.message("attaching referrer")
    ref_config = signing.signature_config([layer], created)
    _upload(client, repo, ref_config)
    referrer = signing.signature_manifest(ref_config, [layer], subject=subject)
    indexed = _put_referrer(client, repo, referrer)
    if not indexed:
        _add_to_tag_schema(client, repo, digest, referrer)
    return SignResult(str(ref), digest, tag, sig_manifest.digest, referrer.digest,
                      "api" if indexed else "tag-schema", me.fingerprint)


def _put_sig_tag(client: RegistryClient, repo: str, digest: Digest, layers, created: str) -> Manifest:
    """Write the ``sha256-<hex>.sig`` tag of ``digest`` holding these signature layers (their payloads
    already uploaded): its config, then the manifest."""
    config = signing.signature_config(layers, created)
    _upload(client, repo, config)
    manifest = signing.signature_manifest(config, layers)
    tag = signing.signature_tag(digest)
    client.put_manifest(repo, tag, manifest.to_bytes(), mt.OCI_MANIFEST, name=f"{client.host}/{repo}:{tag}")
    return manifest


def _upload(client: RegistryClient, repo: str, data: bytes) -> Digest:
    digest = Digest.of(data)
    if client.head_blob(repo, digest) == len(data):
        return digest
    with tempfile.TemporaryDirectory(prefix="modelpkg-sign-") as tmp:
        path = Path(tmp) / "blob"
        path.write_bytes(data)
        client.upload_blob(repo, Descriptor("application/octet-stream", digest, len(data)), path)
    return digest


def _put_referrer(client: RegistryClient, repo: str, manifest: Manifest) -> bool:
    """PUT a manifest with a subject by digest; True when the registry says it indexed it (``OCI-Subject``)."""
    data = manifest.to_bytes()
    response = client.request("PUT", client.url(repo, "manifests", str(manifest.digest)),
                              scopes=(scope(repo, "pull", "push"),), headers={"Content-Type": mt.OCI_MANIFEST},
                              body=lambda: data)
    if response.status_code not in (200, 201):
        client.raise_for(response, kind="signature referrer for", name=f"{client.host}/{repo}")
    indexed = bool(response.headers.get("OCI-Subject"))
    response.close()
    return indexed


def _add_to_tag_schema(client: RegistryClient, repo: str, subject: Digest, manifest: Manifest) -> None:
    """Referrers tag schema: GET the ``sha256-<hex>`` index (404: empty), add the entry, PUT it back.
    Without If-Match (distribution 2.8 ignores it) two signers at once can lose an entry; the ``.sig`` tag
    still has both signatures."""
    tag = signing.referrers_tag(subject)
    found = _get_manifest(client, repo, tag)
    index = found[1] if found and isinstance(found[1], Index) else None
    updated = signing.add_referrer(index, signing.referrer_descriptor(manifest))
    if updated is not None:
        client.put_manifest(repo, tag, signing.index_bytes(updated), mt.OCI_INDEX, name=f"{client.host}/{repo}:{tag}")


# ---------------------------------------------------------------------------------------------------------
# finding signatures on a registry


def _get_manifest(client: PullClient, repo: str, reference: str) -> tuple[bytes, Manifest | Index] | None:
    try:
        data, media_type, _ = client.get_manifest(repo, reference)
    except NotFoundError:
        return None
    try:
        return data, parse_manifest(data, media_type if media_type in (*mt.MANIFEST_TYPES, *mt.INDEX_TYPES) else None)
    except InvalidInputError as e:
        raise RegistryError(f"{client.host}/{repo}:{reference} is not a valid manifest: {e.message}") from e


def _fetch_blobs(client: PullClient, repo: str, layers: list[Descriptor]) -> dict[Digest, bytes]:
    """Small blobs (payloads), read whole with a cap and checked against their digests."""
    out = {}
    for layer in layers:
        if layer.size > signing.MAX_PAYLOAD or layer.digest in out:
            continue
        response = client.request("GET", client.url(repo, "blobs", str(layer.digest)), scopes=(scope(repo, "pull"),),
                                  stream=True)
        if response.status_code != 200:
            client.raise_for(response, kind="signature payload", name=f"{client.host}/{repo}@{layer.digest}")
        try:
            data = response.raw.read(signing.MAX_PAYLOAD + 1, decode_content=True)
        finally:
            response.close()
        if Digest.of(data) != layer.digest:
            raise IntegrityError(f"the signature payload {layer.digest.short} from {client.host} does not match "
                                 "its digest")
        out[layer.digest] = data
    return out


def _found(client: PullClient, repo: str, data: bytes, parsed, source: str) -> Found | None:
    if not isinstance(parsed, Manifest):
        return None
    # the config too (a few hundred bytes), so a kept signature manifest is whole in the store's layout
    return Found(data, parsed, source, _fetch_blobs(client, repo, [*signing.signed_layers(parsed), parsed.config]))


def signatures_by_tag(client: PullClient, repo: str, digest: Digest) -> list[Found]:
    """The ``sha256-<hex>.sig`` signature manifest, if there is one."""
    got = _get_manifest(client, repo, signing.signature_tag(digest))
    found = _found(client, repo, *got, "tag") if got else None
    return [found] if found else []


def signatures_by_referrers(client: PullClient, repo: str, digest: Digest) -> list[Found]:
    """Signature referrers of ``digest``: the referrers API, else the tag-schema index. Entries are
    re-checked: each manifest must really name ``digest`` as its subject (GitLab resolves ``sha256-…``
    tags to the subject itself, oras-go#1396)."""
    response = client.request("GET", client.url(repo, "referrers", str(digest)), scopes=(scope(repo, "pull"),),
                              headers={"Accept": mt.OCI_INDEX}, stream=True)
    index = None
    if response.status_code == 200:
        try:
            data = response.raw.read(4 * 1024 * 1024 + 1, decode_content=True)
        finally:
            response.close()
        try:
            parsed = parse_manifest(data, mt.OCI_INDEX)
            index = parsed if isinstance(parsed, Index) else None
        except InvalidInputError:
            index = None
    else:
        response.close()
    if index is None:
        got = _get_manifest(client, repo, signing.referrers_tag(digest))
        index = got[1] if got and isinstance(got[1], Index) else None
    # Entries listed with a signature type first, then the rest: a registry may list a referrer under its
    # config's media type instead of its artifactType (go-containerregistry's registry does: cosign v3's
    # bundles, whose config is the empty descriptor, are listed as application/vnd.oci.empty.v1+json), so
    # what a referrer is is decided by its own manifest.
    typed = signing.signature_referrers(index) if index else []
    rest = [m for m in index.manifests if m not in typed] if index else []
    out = []
    for entry in [*typed, *rest][:MAX_REFERRERS]:
        got = _get_manifest(client, repo, str(entry.digest))
        if got and isinstance(got[1], Manifest) and got[1].subject is not None and got[1].subject.digest == digest \
                and signing.signed_layers(got[1]):
            found = _found(client, repo, *got, "referrer")
            if found:
                out.append(found)
    return out


def remote_digest(client: PullClient, ref: Reference) -> Digest:
    _, _, digest = client.get_manifest(ref.repository, ref.reference, name=str(ref))
    return digest


def verify_remote(client: PullClient, ref: Reference, keys: list[TrustedKey],
                  digest: Digest | None = None) -> tuple[Verdict, list[Found]]:
    """Check the signatures of what ``ref`` names on its registry (or of ``digest``)."""
    digest = digest or remote_digest(client, ref)
    found = signatures_by_tag(client, ref.repository, digest)
    verdict = signing.evaluate([c for f in found for c in f.candidates()], digest, keys)
    if not verdict.ok:
        found += signatures_by_referrers(client, ref.repository, digest)
        verdict = signing.evaluate([c for f in found for c in f.candidates()], digest, keys)
    return verdict, found


# ---------------------------------------------------------------------------------------------------------
# signatures kept in the store


def local_signatures(store: Store, entry: RefEntry) -> list[Found]:
    """The signature manifests ``pull`` kept with ``entry``, read back from the store."""
    out = []
    for digest in entry.attached:
        try:
            data = store.read_blob(digest)
            manifest = parse_manifest(data, mt.OCI_MANIFEST)
            if not isinstance(manifest, Manifest):
                continue
            blobs = {layer.digest: store.read_blob(layer.digest, signing.MAX_PAYLOAD)
                     for layer in signing.signed_layers(manifest) if store.has_blob(layer.digest)}
        except ModelpkgError:
            continue  # a damaged signature counts as none; 'modelpkg verify' reports the blob
        out.append(Found(data, manifest, "store", blobs))
    return out


def signed_digest(store: Store, entry: RefEntry) -> Digest:
    """The digest ``entry``'s kept signatures name: the model's manifest, or, for a model pulled through a
    multi-platform index, that index, whose stored bytes must list the manifest (else ``IntegrityError``)."""
    if entry.index is None:
        return entry.digest
    try:
        index = parse_manifest(store.read_blob(entry.index))  # read_blob checks the bytes against the digest
    except InvalidInputError as e:
        raise IntegrityError(f"the index {entry.index.short} {entry.name} was pulled through is unreadable: "
                             f"{e.message}", "pull the model again") from e
    if not isinstance(index, Index) or not any(m.digest == entry.digest for m in index.manifests):
        raise IntegrityError(f"the index {entry.index.short} {entry.name} was pulled through does not list its "
                             f"manifest {entry.digest.short}", "pull the model again")
    return entry.index


def verify_local(store: Store, ref: Reference, keys: list[TrustedKey]) -> Verdict:
    entry = store.resolve(ref)
    found = local_signatures(store, entry)
    return signing.evaluate([c for f in found for c in f.candidates()], signed_digest(store, entry), keys)


def signers_for_show(store: Store, entry: RefEntry) -> list[dict]:
    """For ``show``: each kept signature, with the key that verifies it when the trust policy names one."""
    found = local_signatures(store, entry)
    if not found:
        return []
    try:
        policy, base = keyfiles.load_policy()
        paths = tuple(dict.fromkeys(p for rule in policy.rules for p in rule.keys))
        trusted = keyfiles.policy_keys(paths, base)
    except ModelpkgError:
        trusted = []
    try:
        digest = signed_digest(store, entry)
    except ModelpkgError:
        digest = entry.digest  # nothing verifies then; 'verify-signature --local' says why
    out = []
    for candidate in {(c.payload, c.signature): c for f in found for c in f.candidates()}.values():
        verdict = signing.evaluate([candidate], digest, trusted)
        signer = verdict.signers[0] if verdict.signers else None
        out.append({"key": signer.key if signer else None, "fingerprint": signer.fingerprint if signer else None,
                    "verified": signer is not None})
    return out


# ---------------------------------------------------------------------------------------------------------
# carrying kept signatures along with push


def push_kept(store: Store, client: RegistryClient, repo: str, entry: RefEntry, digest: Digest) -> int:
    """Push the signatures kept with ``entry`` that name ``digest`` (just pushed to ``repo``): the ``.sig``
    tag and any kept referrer. A ``.sig`` tag already there keeps its signatures (ours are added, as
    ``sign`` does); returns how many kept signature manifests name ``digest`` (0: none was pushed)."""
    kept = [f for f in local_signatures(store, entry) if _names(f, digest) and store.has_blob(f.manifest.config.digest)]
    tagged = [f for f in kept if f.manifest.subject is None]
    if tagged:
        _push_sig_tag(store, client, repo, digest, tagged)
    for f in kept:
        if f.manifest.subject is not None:
            _upload_kept(store, client, repo, f)
            if not _put_referrer(client, repo, f.manifest):
                _add_to_tag_schema(client, repo, digest, f.manifest)
    return len(kept)


def _names(found: Found, digest: Digest) -> bool:
    """True when every signature in ``found`` is there whole and its payload names ``digest``."""
    layers = signing.signature_layers(found.manifest)
    if not layers or (found.manifest.subject is not None and found.manifest.subject.digest != digest):
        return False
    try:
        return all(layer.digest in found.blobs and signing.parse_payload(found.blobs[layer.digest]).digest == digest
                   for layer in layers)
    except InvalidInputError:
        return False


def _upload_kept(store: Store, client: RegistryClient, repo: str, found: Found) -> None:
    _upload(client, repo, store.read_blob(found.manifest.config.digest))
    for data in found.blobs.values():
        _upload(client, repo, data)


def _push_sig_tag(store: Store, client: RegistryClient, repo: str, digest: Digest, tagged: list[Found]) -> None:
    tag = signing.signature_tag(digest)
    existing = _get_manifest(client, repo, tag)
    key = lambda layer: (layer.digest, layer.annotations.get(mt.COSIGN_SIGNATURE))  # noqa: E731
    there = signing.signature_layers(existing[1]) if existing and isinstance(existing[1], Manifest) else []
    if existing is None and len(tagged) == 1:  # the kept manifest as it is: same bytes, same digest
        _upload_kept(store, client, repo, tagged[0])
        client.put_manifest(repo, tag, tagged[0].data, mt.OCI_MANIFEST, name=f"{client.host}/{repo}:{tag}")
        return
    have = {key(layer) for layer in there}
    new = list({key(layer): layer for f in tagged for layer in signing.signature_layers(f.manifest)
                if key(layer) not in have}.values())
    if not new:
        return  # the target already has every kept signature
    for f in tagged:
        for data in f.blobs.values():
            _upload(client, repo, data)
    _put_sig_tag(client, repo, digest, (*there, *new), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


# ---------------------------------------------------------------------------------------------------------
# the trust check pull runs


@dataclass(frozen=True)
class PullCheck:
    """What the trust check decided, and the signatures to keep with the model."""

    mode: str
    verdict: Verdict | None
    found: tuple[Found, ...] = ()
    previous: tuple[Digest, ...] = ()  # signatures already kept for this very digest


def check_pull(client: PullClient, ref: Reference, digest: Digest, *, store: Store,
               progress: Progress | None = None) -> PullCheck:
    """Apply the trust policy to ``ref`` at ``digest``; pull calls it before downloading any blob.

    ``enforce``: raise ``TrustError`` unless a policy key verifies a signature of ``digest`` (nothing is
    written to the store before). ``warn``: say so through ``progress`` and go on. ``off``: only collect
    signatures to keep (one request, for the ``.sig`` tag; none when the store already has this digest
    under this name, so a no-op pull stays one request); failing to find them never fails a pull.
    """
    progress = progress or NullProgress()
    local = _local_entry(store, ref)
    same = local is not None and digest in (local.digest, local.index)  # digest: the manifest's or its index's
    previous = local.attached if same else ()
    policy, base = keyfiles.load_policy()
    rule = policy.match(str(ref))
    if rule.mode == "off":
        if same:
            return PullCheck("off", None, (), previous)
        try:
            return PullCheck("off", None, tuple(signatures_by_tag(client, ref.repository, digest)), previous)
        except ModelpkgError:
            return PullCheck("off", None, (), previous)
    progress.message("verifying signature")
    keys = keyfiles.policy_keys(rule.keys, base)
    if previous:  # an unchanged model whose kept signatures still verify: no request needed
        kept = signing.evaluate([c for f in local_signatures(store, local) for c in f.candidates()], digest, keys)
        if kept.ok:
            progress.message("signed by " + ", ".join(f"{s.key} ({s.fingerprint[:19]})" for s in kept.signers))
            return PullCheck(rule.mode, kept, (), previous)
    try:
        verdict, found = verify_remote(client, ref, keys, digest)
    except ModelpkgError as e:
        if rule.mode == "enforce":
            raise TrustError(f"cannot check the signature of {ref}: {e.message}", e.hint or None) from e
        progress.message(f"warning: cannot check the signature of {ref}: {e.message}")
        return PullCheck(rule.mode, None, (), previous)
    if not verdict.ok:
        text = f"{ref} ({digest.short}) has no signature the trust policy accepts: {verdict.reason()}"
        if rule.mode == "enforce":
            raise TrustError(text, f"trusted keys for '{rule.prefix or '*'}': {', '.join(rule.keys)} "
                                   f"(policy {keyfiles.policy_path()}); nothing was written to the store")
        progress.message(f"warning: {text}")
    else:
        progress.message("signed by " + ", ".join(f"{s.key} ({s.fingerprint[:19]})" for s in verdict.signers))
    return PullCheck(rule.mode, verdict, tuple(found), previous)


def _local_entry(store: Store, ref: Reference) -> RefEntry | None:
    if not store.index_path.exists():  # do not create a store just to look
        return None
    try:
        return store.resolve(ref)
    except NotFoundError:
        return None


def keep(store: Store, check: PullCheck, pins: Pins) -> tuple[Digest, ...]:
    """Write the signature manifests found, their payloads and configs into the store (pinned); returns
    the manifests' digests for the model's index entry."""
    kept = list(check.previous)
    for f in check.found:
        for data in f.blobs.values():
            store.put_bytes(data, pins)
        kept.append(store.put_bytes(f.data, pins))
    return tuple(dict.fromkeys(kept))
