"""Signatures in cosign's layout, OCI 1.1 referrers, and the trust policy: the pure parts.

What a signature is (sigstore/cosign ``specs/SIGNATURE_SPEC.md``; oci-model-artifacts.md section 9):

- the *payload* is cosign's "simple signing" JSON naming the signed manifest digest;
- the signature is ECDSA P-256 over the payload bytes with SHA-256, ASN.1 DER, base64, kept in the layer
  annotation ``dev.cosignproject.cosign/signature``;
- the payloads are the layers (``application/vnd.dev.cosign.simplesigning.v1+json``) of an OCI image manifest
  with an image config, tagged ``sha256-<hex>.sig`` in the model's repository (cosign's tag discovery);
- the same layer is also attached as an OCI 1.1 referrer (``subject`` = the model manifest, ``artifactType``
  = cosign's ``application/vnd.dev.cosign.artifact.sig.v1+json``), through the referrers API or, where the
  registry lacks it, the referrers tag schema (an index tagged ``sha256-<hex>``; distribution-spec
  "Referrers Tag Schema", oci-model-artifacts.md section 7.6).

- cosign v3 signs by default in the *bundle* layout instead: a referrer whose one layer is a Sigstore bundle
  (``application/vnd.dev.sigstore.bundle.v0.3+json``) holding a DSSE envelope; the signature is ECDSA over
  DSSE's pre-authentication encoding of an in-toto statement whose subject is the signed digest and whose
  predicate type is ``https://sigstore.dev/cosign/sign/v1``. Both layouts are read; modelpkg writes the first.

Trust comes from the key, never from names: ``docker-reference`` is written (cosign writes the repository)
but not used to decide anything, as cosign does not.

The policy file (TOML) maps reference prefixes to a mode and the keys accepted; the longest prefix wins::

    [[trust]]
    prefix = "registry.example.com/models"
    mode = "enforce"            # off | warn | enforce
    keys = ["keys/team.pub"]    # relative to the policy file

Pure module: bytes and values in, values out; ``cryptography`` verifies but nothing here reads a file.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import tomllib

from modelpkg.core import mediatypes as mt
from modelpkg.core.digest import Digest
from modelpkg.core.errors import InvalidInputError
from modelpkg.core.manifest import Descriptor, Index, Manifest, canonical_json, load_json

SIGNATURE_TYPE = "cosign container image signature"
MAX_PAYLOAD = 64 * 1024  # a simple-signing payload is a few hundred bytes
MODES = ("off", "warn", "enforce")
ZERO_TIME = "0001-01-01T00:00:00Z"  # Go's zero time, as go-containerregistry writes history entries


# ---------------------------------------------------------------------------------------------------------
# tags


def signature_tag(digest: Digest) -> str:
    """cosign's tag for the signatures of ``digest``: ``sha256-<hex>.sig``."""
    return f"{referrers_tag(digest)}.sig"


def referrers_tag(digest: Digest) -> str:
    """The referrers tag schema's tag: ``<alg>-<ref>``, alg cut to 32 and ref to 64 characters, other
    characters than ``[a-zA-Z0-9._-]`` turned into ``-`` (distribution-spec "Referrers Tag Schema")."""
    alg, _, hexpart = str(digest).partition(":")
    clean = lambda s: re.sub(r"[^a-zA-Z0-9._-]", "-", s)  # noqa: E731
    return f"{clean(alg)[:32]}-{clean(hexpart)[:64]}"


# ---------------------------------------------------------------------------------------------------------
# the simple-signing payload


@dataclass(frozen=True)
class Payload:
    """cosign's simple-signing claim: ``digest`` is what is signed; ``docker_reference`` is informative."""

    docker_reference: str
    digest: Digest
    optional: Mapping[str, Any] | None = None


def format_payload(payload: Payload) -> bytes:
    """The payload's bytes, in the key order cosign (sigstore/sigstore ``payload.Cosign``) writes."""
    obj = {
        "critical": {
            "identity": {"docker-reference": payload.docker_reference},
            "image": {"docker-manifest-digest": str(payload.digest)},
            "type": SIGNATURE_TYPE,
        },
        "optional": dict(payload.optional) if payload.optional is not None else None,
    }
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def parse_payload(data: bytes) -> Payload:
    """Parse a simple-signing payload; ``InvalidInputError`` when it is not one."""
    obj = load_json(data, "signature payload", limit=MAX_PAYLOAD)
    critical = obj.get("critical") if isinstance(obj, dict) else None
    if not isinstance(critical, dict):
        raise InvalidInputError("signature payload has no 'critical' section")
    if critical.get("type") != SIGNATURE_TYPE:
        raise InvalidInputError(f"signature payload type {str(critical.get('type'))[:60]!r} is not "
                                f"{SIGNATURE_TYPE!r}")
    image = critical.get("image")
    identity = critical.get("identity")
    digest_text = image.get("docker-manifest-digest") if isinstance(image, dict) else None
    if not isinstance(digest_text, str):
        raise InvalidInputError("signature payload names no docker-manifest-digest")
    reference = identity.get("docker-reference", "") if isinstance(identity, dict) else ""
    optional = obj.get("optional")
    return Payload(str(reference), Digest.parse(digest_text), optional if isinstance(optional, dict) else None)


# ---------------------------------------------------------------------------------------------------------
# signature manifests


def signature_layer(payload: bytes, signature: bytes) -> Descriptor:
    """The layer descriptor of one signature: the payload blob, the DER signature base64 in its annotation."""
    return Descriptor(mt.COSIGN_SIMPLESIGNING, Digest.of(payload), len(payload),
                      {mt.COSIGN_SIGNATURE: base64.b64encode(signature).decode("ascii")})


def signature_config(layers: Sequence[Descriptor], created: str) -> bytes:
    """The image config cosign's signature images carry (go-containerregistry ``empty.Image`` with the
    payloads appended: one diff_id and one history entry per layer). Verifiers read only the layers."""
    obj = {
        "architecture": "",
        "created": created,
        "history": [{"created": ZERO_TIME} for _ in layers],
        "os": "",
        "rootfs": {"type": "layers", "diff_ids": [str(layer.digest) for layer in layers]},
        "config": {},
    }
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


def signature_manifest(config: bytes, layers: Sequence[Descriptor], *, subject: Descriptor | None = None
                       ) -> Manifest:
    """A signature manifest: cosign's ``.sig`` image, or with ``subject`` its OCI 1.1 referrer form
    (``artifactType`` and config media type = cosign's signature artifact type, as cosign's
    ``WriteSignaturesExperimentalOCI`` writes)."""
    config_type = mt.COSIGN_SIG_ARTIFACT if subject is not None else mt.OCI_CONFIG
    config_desc = Descriptor(config_type, Digest.of(config), len(config))
    return Manifest(mt.OCI_MANIFEST, config_desc, tuple(layers),
                    artifact_type=mt.COSIGN_SIG_ARTIFACT if subject is not None else None, subject=subject)


def merge_layers(existing: Sequence[Descriptor], new: Descriptor, replaces) -> tuple[Descriptor, ...]:
    """``existing`` signature layers plus ``new``; layers for which ``replaces(layer)`` is true (the same
    key's earlier signature of the same payload) are dropped, so signing twice does not pile up."""
    return (*(layer for layer in existing if not replaces(layer)), new)


def signature_layers(manifest: Manifest) -> list[Descriptor]:
    """The layers of a signature manifest that carry a simple-signing payload and a signature."""
    return [layer for layer in manifest.layers
            if layer.media_type == mt.COSIGN_SIMPLESIGNING and layer.annotations.get(mt.COSIGN_SIGNATURE)]


def bundle_layers(manifest: Manifest) -> list[Descriptor]:
    """The layers of a referrer that are Sigstore bundles (cosign v3's layout)."""
    return [layer for layer in manifest.layers
            if layer.media_type.startswith(mt.SIGSTORE_BUNDLE_PREFIX) and layer.media_type.endswith("+json")]


def signed_layers(manifest: Manifest) -> list[Descriptor]:
    """Every layer of a signature manifest that carries a signature, in either layout."""
    return [*signature_layers(manifest), *bundle_layers(manifest)]


def pae(payload_type: str, body: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what a DSSE signature signs (secure-systems-lab/dsse protocol)."""
    kind = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(body), body)


def _b64(text: object) -> bytes | None:
    if not isinstance(text, str):
        return None
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def layer_candidates(layer: Descriptor, blob: bytes, source: str) -> list[Candidate]:
    """The signatures one signed layer holds: a simple-signing payload with its annotation, or a bundle's DSSE
    envelope (one candidate per signature in it; one with no signature when the bundle is not a usable one)."""
    if layer.media_type == mt.COSIGN_SIMPLESIGNING:
        return [Candidate(blob, decode_signature(layer), source)]
    try:
        bundle = load_json(blob, "Sigstore bundle", limit=MAX_PAYLOAD)
    except InvalidInputError:
        bundle = None
    envelope = bundle.get("dsseEnvelope") if isinstance(bundle, dict) else None
    if not isinstance(envelope, dict) or envelope.get("payloadType") != mt.IN_TOTO_PAYLOAD:
        return [Candidate(blob, None, source, statement=b"")]
    body = _b64(envelope.get("payload"))
    signatures = envelope.get("signatures")
    if body is None or not isinstance(signatures, list) or not signatures:
        return [Candidate(blob, None, source, statement=b"")]
    signed = pae(mt.IN_TOTO_PAYLOAD, body)
    return [Candidate(signed, _b64(entry.get("sig")) if isinstance(entry, dict) else None, source, statement=body)
            for entry in signatures[:8]]


def statement_digests(data: bytes) -> list[Digest]:
    """The sha256 subjects of an in-toto statement of ``cosign sign``'s predicate type; ``InvalidInputError``
    for any other statement (an attestation of something else is not a signature of the model)."""
    obj = load_json(data, "in-toto statement", limit=MAX_PAYLOAD)
    if not isinstance(obj, dict) or not str(obj.get("_type", "")).startswith("https://in-toto.io/Statement/"):
        raise InvalidInputError("the signed DSSE payload is not an in-toto statement")
    if obj.get("predicateType") != mt.COSIGN_SIGN_PREDICATE:
        raise InvalidInputError(f"the statement's predicate type {str(obj.get('predicateType'))[:80]!r} is not "
                                f"{mt.COSIGN_SIGN_PREDICATE!r}")
    subjects = obj.get("subject") if isinstance(obj.get("subject"), list) else []
    out = []
    for subject in subjects:
        digests = subject.get("digest") if isinstance(subject, dict) else None
        sha = digests.get("sha256") if isinstance(digests, dict) else None
        if isinstance(sha, str):
            try:
                out.append(Digest.parse(f"sha256:{sha}"))
            except InvalidInputError:
                continue
    if not out:
        raise InvalidInputError("the statement names no sha256 subject")
    return out


def decode_signature(layer: Descriptor) -> bytes | None:
    """The DER signature in a layer's annotation, or None when it is not valid base64."""
    try:
        return base64.b64decode(layer.annotations.get(mt.COSIGN_SIGNATURE, ""), validate=True)
    except (binascii.Error, ValueError):
        return None


# ---------------------------------------------------------------------------------------------------------
# referrers


def referrer_descriptor(manifest: Manifest) -> Descriptor:
    """The referrers-index entry for a pushed manifest: its artifactType (or config media type) and all
    its annotations (image-spec / distribution-spec referrers)."""
    data = manifest.to_bytes()
    return Descriptor(manifest.media_type, Digest.of(data), len(data), dict(manifest.annotations),
                      artifact_type=manifest.artifact_type or manifest.config.media_type)


def add_referrer(index: Index | None, entry: Descriptor) -> Index | None:
    """The referrers index with ``entry`` added; None when it is already there (nothing to write)."""
    entries = tuple(index.manifests) if index is not None else ()
    if any(e.digest == entry.digest for e in entries):
        return None
    return Index(mt.OCI_INDEX, (*entries, entry))


def index_bytes(index: Index) -> bytes:
    return canonical_json({"schemaVersion": 2, "mediaType": index.media_type,
                           "manifests": [m.to_json() for m in index.manifests]})


def signature_referrers(index: Index) -> list[Descriptor]:
    """Entries of a referrers index that are cosign signatures, in either layout."""
    return [m for m in index.manifests if m.artifact_type == mt.COSIGN_SIG_ARTIFACT
            or (m.artifact_type or "").startswith(mt.SIGSTORE_BUNDLE_PREFIX)]


# ---------------------------------------------------------------------------------------------------------
# verification


@dataclass(frozen=True)
class TrustedKey:
    """A public key a user trusts: ``name`` (the file name) and ``fingerprint`` say who; ``key`` is a
    ``cryptography`` public key object."""

    name: str
    fingerprint: str
    key: Any = field(compare=False, repr=False)


@dataclass(frozen=True)
class Candidate:
    """One signature found: the signed bytes, the DER signature and where it was found. ``statement`` is
    None for a simple-signing payload (``payload`` is then the claim itself); for a bundle's DSSE envelope it
    is the in-toto statement and ``payload`` its pre-authentication encoding."""

    payload: bytes
    signature: bytes | None
    source: str  # "tag" (sha256-<hex>.sig) or "referrer"
    statement: bytes | None = None


@dataclass(frozen=True)
class Signer:
    key: str
    fingerprint: str
    source: str

    def to_json(self) -> dict[str, str]:
        return {"key": self.key, "fingerprint": self.fingerprint, "source": self.source}


@dataclass(frozen=True)
class Verdict:
    """The outcome of checking the signatures of ``digest`` against some keys."""

    digest: Digest
    signers: tuple[Signer, ...]
    found: int
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return bool(self.signers)

    def reason(self) -> str:
        """Why no signature was accepted, in one phrase."""
        if not self.found:
            return "it is not signed"
        return "; ".join(dict.fromkeys(self.problems)) or "no signature verifies"

    def to_json(self) -> dict[str, Any]:
        return {"digest": str(self.digest), "verified": self.ok, "signers": [s.to_json() for s in self.signers],
                "signatures_found": self.found, "problems": list(dict.fromkeys(self.problems))}


def verifies(key: TrustedKey, payload: bytes, signature: bytes) -> bool:
    """True when ``signature`` is ``key``'s ECDSA/SHA-256 signature of ``payload``."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    if not isinstance(key.key, ec.EllipticCurvePublicKey):
        return False
    try:
        key.key.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return False
    return True


def evaluate(candidates: Sequence[Candidate], digest: Digest, keys: Sequence[TrustedKey]) -> Verdict:
    """Check every candidate: the signature must verify with one of ``keys`` *and* its payload must name
    ``digest`` with cosign's type (the order cosign follows: signature first, then the claims)."""
    signers: dict[str, Signer] = {}
    problems: list[str] = []
    seen: set[tuple[bytes, bytes | None]] = set()
    for c in candidates:
        if (c.payload, c.signature) in seen:
            continue
        seen.add((c.payload, c.signature))
        if c.signature is None:
            problems.append("a signature annotation is not valid base64")
            continue
        key = next((k for k in keys if verifies(k, c.payload, c.signature)), None)
        if key is None:
            problems.append("no trusted key verifies the signature (wrong key, or the payload was altered)")
            continue
        try:
            named = statement_digests(c.statement) if c.statement is not None else [parse_payload(c.payload).digest]
        except InvalidInputError as e:
            problems.append(f"the signed payload is unusable: {e.message}")
            continue
        if digest not in named:
            problems.append(f"the signature is for {named[0].short}, not {digest.short} "
                            "(the tag now points at other content)")
            continue
        signers.setdefault(key.fingerprint, Signer(key.name, key.fingerprint, c.source))
    return Verdict(digest, tuple(signers.values()), len(seen), tuple(problems))


# ---------------------------------------------------------------------------------------------------------
# the trust policy


@dataclass(frozen=True)
class Rule:
    prefix: str  # "" matches everything
    mode: str
    keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class Policy:
    rules: tuple[Rule, ...] = ()

    def match(self, name: str) -> Rule:
        """The rule for a full reference (``host/repo:tag``): the longest prefix that ends at a path
        boundary; no match is mode ``off``."""
        best: Rule | None = None
        for rule in self.rules:
            if _prefix_matches(rule.prefix, name) and (best is None or len(rule.prefix) > len(best.prefix)):
                best = rule
        return best or Rule("", "off")


def _prefix_matches(prefix: str, name: str) -> bool:
    prefix = prefix.rstrip("/")
    if not prefix:
        return True
    return name == prefix or (name.startswith(prefix) and name[len(prefix)] in "/:@")


def parse_policy(text: str, source: str = "policy.toml") -> Policy:
    """Parse a policy file's text; every mistake is an ``InvalidInputError`` naming ``source``."""
    try:
        obj = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError) as e:  # RecursionError: nesting deeper than Python's stack
        raise InvalidInputError(f"{source}: {e}", "see 'modelpkg verify-signature --help' for the format") from e
    entries = obj.get("trust", [])
    if not isinstance(entries, list):
        raise InvalidInputError(f"{source}: 'trust' must be an array of tables ([[trust]])")
    rules = []
    for i, entry in enumerate(entries, 1):
        where = f"{source}: trust rule {i}"
        if not isinstance(entry, dict):
            raise InvalidInputError(f"{where} is not a table")
        unknown = set(entry) - {"prefix", "mode", "keys"}
        if unknown:
            raise InvalidInputError(f"{where}: unknown key {sorted(unknown)[0]!r}", "known: prefix, mode, keys")
        prefix, mode, keys = entry.get("prefix", ""), entry.get("mode", "enforce"), entry.get("keys", [])
        if not isinstance(prefix, str):
            raise InvalidInputError(f"{where}: 'prefix' must be a string")
        if mode not in MODES:
            raise InvalidInputError(f"{where}: mode {str(mode)[:40]!r} is not one of {', '.join(MODES)}")
        if not isinstance(keys, list) or not all(isinstance(k, str) and k for k in keys):
            raise InvalidInputError(f"{where}: 'keys' must be a list of paths to public key files")
        if mode != "off" and not keys:
            raise InvalidInputError(f"{where}: mode {mode} needs at least one key")
        rules.append(Rule(prefix.rstrip("/"), mode, tuple(keys)))
    return Policy(tuple(rules))


def format_policy(policy: Policy) -> str:
    """The policy as TOML that ``parse_policy`` reads back to the same value."""
    out = []
    for rule in policy.rules:
        keys = ", ".join(json.dumps(k) for k in rule.keys)
        out.append(f"[[trust]]\nprefix = {json.dumps(rule.prefix)}\nmode = {json.dumps(rule.mode)}\n"
                   f"keys = [{keys}]\n")
    return "\n".join(out)
