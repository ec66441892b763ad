"""cosign v2 and v3, for real, against modelpkg's signatures, on distribution 2.8 and on the referrers-API
registry (``any_registry``).

Offline, as the README says: signing with ``--tlog-upload=false`` (v3 also ``--use-signing-config=false``),
verifying with ``--insecure-ignore-tlog``; plain http on loopback with ``--allow-insecure-registry``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelpkg.base import config, keys
from modelpkg.core.errors import TrustError
from modelpkg.ops.push import push
from modelpkg.store import Store

pytestmark = [pytest.mark.registry, pytest.mark.timeout(240)]

COSIGNS = ["cosign2", "cosign3"]
PASSWORD = "cosign-test-password"


def store() -> Store:
    return Store(config.home())


def pushed(tiny_model, registry, repo: str) -> tuple[str, str]:
    """Push a tiny model; returns (name, name@digest)."""
    name = f"{registry.host}/{repo}"
    ref = tiny_model(name, "SYSTEM signed\n")
    push(store(), ref)
    entry, _ = store().manifest(config.reference(name))
    return name, f"{name.rsplit(':', 1)[0]}@{entry.digest}"


def sign_flags(cosign: str, *, classic: bool = True) -> list[str]:
    flags = ["--tlog-upload=false", "--allow-insecure-registry", "-y"]
    if cosign == "cosign3":
        flags.append("--use-signing-config=false")
        if classic:
            flags.append("--new-bundle-format=false")
    return flags


def verify_flags(cosign: str, *, classic: bool = True) -> list[str]:
    flags = ["--insecure-ignore-tlog=true", "--allow-insecure-registry"]
    if cosign == "cosign3" and classic:
        flags.append("--new-bundle-format=false")
    return flags


def cosign_keypair(peer_run, cosign: str, folder: Path) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    peer_run(cosign, "generate-key-pair", env={"COSIGN_PASSWORD": PASSWORD}, cwd=folder)
    return folder / "cosign.key", folder / "cosign.pub"


@pytest.mark.parametrize("cosign", COSIGNS)
def test_cosign_verify_accepts_what_modelpkg_signed(cosign, any_registry, tiny_model, peer_run, modelpkg,
                                                    tmp_path):
    name, by_digest = pushed(tiny_model, any_registry, f"cosign/by-modelpkg-{cosign}:v1")
    private, public, _ = keys.generate(tmp_path / "keys")
    signed = modelpkg("sign", name, "--key", str(private), "--json")
    assert signed.exit_code == 0, signed.stderr
    digest = json.loads(signed.stdout)["digest"]

    result = peer_run(cosign, "verify", "--key", str(public), *verify_flags(cosign), by_digest)
    [claims] = json.loads(result.stdout)
    assert claims["critical"]["image"]["docker-manifest-digest"] == digest
    assert claims["critical"]["identity"]["docker-reference"] == name.rsplit(":", 1)[0]
    # by tag too: cosign resolves the tag to the digest modelpkg signed
    assert peer_run(cosign, "verify", "--key", str(public), *verify_flags(cosign), name).returncode == 0

    _other_private, other_public, _ = keys.generate(tmp_path / "other", name="other")
    refused = peer_run(cosign, "verify", "--key", str(other_public), *verify_flags(cosign), by_digest,
                       check=False)
    assert refused.returncode != 0
    assert b"no matching signatures" in refused.stderr


@pytest.mark.parametrize("cosign", COSIGNS)
def test_modelpkg_verifies_what_cosign_signed_in_the_sig_tag_layout(cosign, any_registry, tiny_model, peer_run,
                                                                   modelpkg, tmp_path, monkeypatch):
    name, by_digest = pushed(tiny_model, any_registry, f"cosign/by-{cosign}:v1")
    key, public = cosign_keypair(peer_run, cosign, tmp_path / "cosign-keys")
    peer_run(cosign, "sign", "--key", str(key), *sign_flags(cosign), by_digest, env={"COSIGN_PASSWORD": PASSWORD})

    verified = modelpkg("verify-signature", name, "--key", str(public), "--json")
    assert verified.exit_code == 0, verified.stderr
    verdict = json.loads(verified.stdout)
    assert verdict["verified"] and verdict["signers"][0]["key"] == "cosign.pub"
    assert verdict["signers"][0]["fingerprint"] == keys.load_public(public).fingerprint
    _other_private, other_public, _ = keys.generate(tmp_path / "other", name="other")
    assert modelpkg("verify-signature", name, "--key", str(other_public)).exit_code == TrustError.exit_code

    # the trust policy enforces cosign's signature: pulled with its key, refused with another
    policy = tmp_path / "policy.toml"
    monkeypatch.setenv("MODELPKG_POLICY", str(policy))
    prefix = name.split("/")[0] + "/cosign"
    policy.write_text(f'[[trust]]\nprefix = "{prefix}"\nmode = "enforce"\nkeys = ["{other_public}"]\n')
    monkeypatch.setenv("MODELPKG_HOME", str(tmp_path / "puller-refused"))
    refused = modelpkg("pull", name)
    assert refused.exit_code == TrustError.exit_code, refused.stderr
    assert [p for p in (tmp_path / "puller-refused").rglob("*") if p.is_file() and p.stat().st_size > 1000] == []
    policy.write_text(f'[[trust]]\nprefix = "{prefix}"\nmode = "enforce"\nkeys = ["{public}"]\n')
    monkeypatch.setenv("MODELPKG_HOME", str(tmp_path / "puller"))
    pulled = modelpkg("pull", name)
    assert pulled.exit_code == 0, pulled.stderr
    local = modelpkg("verify-signature", "--local", name, "--key", str(public))
    assert local.exit_code == 0, local.stderr


@pytest.mark.parametrize("cosign", COSIGNS)
def test_cosign_import_key_pair_of_a_modelpkg_key(cosign, registry, tiny_model, peer_run, modelpkg, tmp_path):
    """The README: to sign with cosign itself, ``cosign import-key-pair --key modelpkg.key``."""
    name, by_digest = pushed(tiny_model, registry, f"cosign/imported-{cosign}:v1")
    private, public, _ = keys.generate(tmp_path / "keys")
    peer_run(cosign, "import-key-pair", "--key", str(private), "--output-key-prefix", "imported",
             env={"COSIGN_PASSWORD": PASSWORD}, cwd=tmp_path)
    assert (tmp_path / "imported.pub").read_bytes().strip() == public.read_bytes().strip()
    peer_run(cosign, "sign", "--key", str(tmp_path / "imported.key"), *sign_flags(cosign), by_digest,
             env={"COSIGN_PASSWORD": PASSWORD})
    verified = modelpkg("verify-signature", name, "--key", str(public), "--json")
    assert verified.exit_code == 0, verified.stderr
    assert json.loads(verified.stdout)["signers"][0]["fingerprint"] == keys.load_public(public).fingerprint


@pytest.mark.parametrize("registry_kind", ["distribution", "referrers-api"])
def test_modelpkg_verifies_cosign_v3s_bundle_referrers(registry_kind, request, tiny_model, peer_run, modelpkg,
                                                      tmp_path, monkeypatch):
    """cosign v3's default layout: a Sigstore bundle (DSSE envelope, in-toto statement) as an OCI referrer."""
    registry = request.getfixturevalue("registry" if registry_kind == "distribution" else "referrers_registry")
    name, by_digest = pushed(tiny_model, registry, "cosign/bundle-v3:v1")
    key, public = cosign_keypair(peer_run, "cosign3", tmp_path / "cosign-keys")
    peer_run("cosign3", "sign", "--key", str(key), *sign_flags("cosign3", classic=False), by_digest,
             env={"COSIGN_PASSWORD": PASSWORD})
    # cosign itself accepts it (so this is the layout cosign v3 users have)
    peer_run("cosign3", "verify", "--key", str(public), *verify_flags("cosign3", classic=False), by_digest)

    verified = modelpkg("verify-signature", name, "--key", str(public), "--json")
    assert verified.exit_code == 0, verified.stderr
    verdict = json.loads(verified.stdout)
    assert verdict["verified"] and verdict["signers"][0]["source"] == "referrer"
    _other_private, other_public, _ = keys.generate(tmp_path / "other", name="other")
    assert modelpkg("verify-signature", name, "--key", str(other_public)).exit_code == TrustError.exit_code

    policy = tmp_path / "policy.toml"
    monkeypatch.setenv("MODELPKG_POLICY", str(policy))
    policy.write_text(f'[[trust]]\nprefix = "{registry.host}/cosign"\nmode = "enforce"\nkeys = ["{public}"]\n')
    monkeypatch.setenv("MODELPKG_HOME", str(tmp_path / "puller"))
    pulled = modelpkg("pull", name)
    assert pulled.exit_code == 0, pulled.stderr
    local = modelpkg("verify-signature", "--local", name, "--key", str(public))
    assert local.exit_code == 0, local.stderr


# ---------------------------------------------------------------------------------------------------------
# the bundle layout, pure: what must be refused even when the key verifies


def _bundle(private, statement: dict, payload_type: str = "application/vnd.in-toto+json") -> bytes:
    import base64

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    from modelpkg.core import signing

    body = json.dumps(statement).encode()
    sig = private.sign(signing.pae(payload_type, body), ec.ECDSA(hashes.SHA256()))
    return json.dumps({"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
                       "verificationMaterial": {"publicKey": {"hint": "x"}},
                       "dsseEnvelope": {"payload": base64.b64encode(body).decode(), "payloadType": payload_type,
                                        "signatures": [{"sig": base64.b64encode(sig).decode()}]}}).encode()


def test_bundle_candidates_check_the_statement(tmp_path):
    from modelpkg.core import mediatypes as mt
    from modelpkg.core import signing
    from modelpkg.core.digest import Digest
    from modelpkg.core.manifest import Descriptor

    private_path, public_path, _ = keys.generate(tmp_path / "k")
    private, trusted = keys.load_private(private_path), keys.load_public(public_path)
    digest, other = Digest.of(b"model"), Digest.of(b"other")

    def verdict(statement: dict, payload_type: str = mt.IN_TOTO_PAYLOAD):
        blob = _bundle(private, statement, payload_type)
        layer = Descriptor(mt.SIGSTORE_BUNDLE, Digest.of(blob), len(blob))
        return signing.evaluate(signing.layer_candidates(layer, blob, "referrer"), digest, [trusted])

    good = {"_type": "https://in-toto.io/Statement/v1", "predicateType": mt.COSIGN_SIGN_PREDICATE,
            "subject": [{"name": "r", "digest": {"sha256": digest.hex}}], "predicate": {}}
    assert verdict(good).ok
    assert not verdict({**good, "subject": [{"name": "r", "digest": {"sha256": other.hex}}]}).ok
    wrong_type = verdict({**good, "predicateType": "https://slsa.dev/provenance/v1"})
    assert not wrong_type.ok and "predicate type" in wrong_type.reason()
    assert not verdict(good, payload_type="text/plain").ok
    assert not verdict({**good, "_type": "nope"}).ok
