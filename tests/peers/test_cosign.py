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
