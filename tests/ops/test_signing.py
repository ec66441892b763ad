"""Signing and the trust policy: the pure layout, key files, and sign/verify/pull against the real registry.

The registry is CNCF distribution 2.8 (tests/registry_env.py), which has no referrers API: the referrers
tag-schema fallback is exercised for real. Tampering is done the way an attacker with write access to the
registry would: moving a tag, copying a signature, rewriting a payload.
"""

from __future__ import annotations

import base64
import json
import os
import stat

import pytest
import requests
from click.testing import CliRunner

from modelpkg.base import config, keys
from modelpkg.cli.app import cli
from modelpkg.core import mediatypes as mt
from modelpkg.core import signing
from modelpkg.core.digest import Digest
from modelpkg.core.errors import AuthError, InvalidInputError, TrustError
from modelpkg.core.manifest import Descriptor, Index, parse_manifest
from modelpkg.core.signing import Policy, Rule
from modelpkg.ops.pull import pull
from modelpkg.ops.push import push
from modelpkg.registry.client import RegistryClient
from modelpkg.store import Store

D1 = Digest.of(b"one")
D2 = Digest.of(b"two")


def run(*args, input=None):
    return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)


def store() -> Store:
    return Store(config.home())


# ---------------------------------------------------------------------------------------------------------
# pure


def test_payload_is_cosigns_simple_signing_and_round_trips():
    payload = signing.Payload("localhost:5000/acme/tiny", D1)
    data = signing.format_payload(payload)
    assert data == (b'{"critical":{"identity":{"docker-reference":"localhost:5000/acme/tiny"},"image":'
                    b'{"docker-manifest-digest":"' + str(D1).encode() + b'"},"type":"cosign container image '
                    b'signature"},"optional":null}')
    assert signing.parse_payload(data) == payload
    with_optional = signing.Payload("r/x", D2, {"by": "ci"})
    assert signing.parse_payload(signing.format_payload(with_optional)) == with_optional


@pytest.mark.parametrize("bad", [b"[]", b'{"critical":{"type":"other","image":{"docker-manifest-digest":"x"}}}',
                                 b'{"critical":{"type":"cosign container image signature"}}', b"not json"])
def test_bad_payloads_are_refused(bad):
    with pytest.raises(InvalidInputError):
        signing.parse_payload(bad)


def test_tags():
    assert signing.signature_tag(D1) == f"sha256-{D1.hex}.sig"
    assert signing.referrers_tag(D1) == f"sha256-{D1.hex}"


def test_signature_manifest_has_cosigns_layout():
    layer = signing.signature_layer(b"payload", b"\x30\x01")
    config_bytes = signing.signature_config([layer], "2026-01-01T00:00:00Z")
    manifest = signing.signature_manifest(config_bytes, [layer])
    obj = json.loads(manifest.to_bytes())
    assert obj["mediaType"] == mt.OCI_MANIFEST and obj["config"]["mediaType"] == mt.OCI_CONFIG
    assert obj["layers"][0]["mediaType"] == "application/vnd.dev.cosign.simplesigning.v1+json"
    signature = base64.b64encode(b"\x30\x01").decode()
    assert obj["layers"][0]["annotations"] == {"dev.cosignproject.cosign/signature": signature}
    assert "subject" not in obj and "artifactType" not in obj
    assert json.loads(config_bytes)["rootfs"]["diff_ids"] == [str(Digest.of(b"payload"))]
    subject = Descriptor(mt.OCI_MANIFEST, D1, 10)
    referrer = json.loads(signing.signature_manifest(config_bytes, [layer], subject=subject).to_bytes())
    assert referrer["artifactType"] == mt.COSIGN_SIG_ARTIFACT and referrer["subject"]["digest"] == str(D1)


def test_referrers_index_adds_once():
    entry = Descriptor(mt.OCI_MANIFEST, D1, 5, {"a": "b"}, artifact_type=mt.COSIGN_SIG_ARTIFACT)
    index = signing.add_referrer(None, entry)
    assert index.manifests == (entry,)
    assert signing.add_referrer(index, entry) is None
    parsed = parse_manifest(signing.index_bytes(index))
    assert isinstance(parsed, Index) and signing.signature_referrers(parsed) == [entry]


def test_policy_round_trips_and_longest_prefix_wins():
    text = """
[[trust]]
prefix = "localhost:5000"
mode = "warn"
keys = ["a.pub"]

[[trust]]
prefix = "localhost:5000/acme/"
mode = "enforce"
keys = ["team.pub", "ci.pub"]

[[trust]]
prefix = "localhost:5000/acme/scratch"
mode = "off"
"""
    policy = signing.parse_policy(text)
    assert signing.parse_policy(signing.format_policy(policy)) == policy
    assert policy.match("localhost:5000/acme/tiny:v1").mode == "enforce"
    assert policy.match("localhost:5000/acme/tiny:v1").keys == ("team.pub", "ci.pub")
    assert policy.match("localhost:5000/acme/scratch:v1").mode == "off"
    assert policy.match("localhost:5000/acme/scratchpad:v1").mode == "enforce"  # prefixes end at a boundary
    assert policy.match("localhost:5000/other/x:v1").mode == "warn"
    assert policy.match("ghcr.io/x/y:v1") == Rule("", "off")
    assert Policy((Rule("", "enforce", ("k",)),)).match("any/thing:v1").mode == "enforce"


@pytest.mark.parametrize("text, words", [
    ('[[trust]]\nprefix = "x"\nmode = "strict"\nkeys = ["k"]', "strict"),
    ('[[trust]]\nprefix = "x"\nmode = "enforce"', "needs at least one key"),
    ('[[trust]]\nprefix = "x"\nkey = ["k"]', "unknown key"),
    ("[[trust]\n", "policy.toml"),
])
def test_bad_policies_name_the_mistake(text, words):
    with pytest.raises(InvalidInputError, match=words):
        signing.parse_policy(text)


# ---------------------------------------------------------------------------------------------------------
# key files


def test_keygen_writes_a_0600_private_key_and_a_public_key(home, tmp_path):
    result = run("keygen", "-o", str(tmp_path / "k"), "--json")
    assert result.exit_code == 0, result.stderr
    info = json.loads(result.stdout)
    private, public = tmp_path / "k" / "modelpkg.key", tmp_path / "k" / "modelpkg.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert public.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert not info["encrypted"]
    assert keys.load_public(public).fingerprint == info["fingerprint"]
    assert keys.fingerprint(keys.load_private(private).public_key()) == info["fingerprint"]
    again = run("keygen", "-o", str(tmp_path / "k"))
    assert again.exit_code == 2 and "already exists" in again.stderr


def test_encrypted_private_key_needs_its_password(home, tmp_path):
    result = run("keygen", "-o", str(tmp_path), "--password-stdin", "--name", "team", "--json", input="s3cret\n")
    assert json.loads(result.stdout)["encrypted"]
    private = tmp_path / "team.key"
    assert "ENCRYPTED" in private.read_text().splitlines()[0]
    with pytest.raises(AuthError, match="encrypted and no password"):
        keys.load_private(private)
    with pytest.raises(AuthError, match="wrong password"):
        keys.load_private(private, b"nope")
    assert keys.load_private(private, b"s3cret") is not None


def test_a_private_key_others_can_read_is_refused(home, tmp_path):
    private, _, _ = keys.generate(tmp_path)
    os.chmod(private, 0o644)
    with pytest.raises(AuthError, match="readable by others"):
        keys.load_private(private)


# ---------------------------------------------------------------------------------------------------------
# against the registry

@pytest.fixture
def keypair(tmp_path):
    private, public, _fingerprint = keys.generate(tmp_path / "keys")
    return private, public


@pytest.fixture
def other_keypair(tmp_path):
    private, public, _ = keys.generate(tmp_path / "other", name="other")
    return private, public


def pushed(tiny_model, registry, repo: str, extra: str = ""):
    ref = tiny_model(f"{registry.host}/{repo}", extra)
    push(store(), ref)
    return ref


def client(registry) -> RegistryClient:
    return RegistryClient(registry.host)


def registry_get(registry, path: str, accept: str = mt.OCI_MANIFEST) -> requests.Response:
    return requests.get(f"{registry.url}/v2/{path}", headers={"Accept": accept}, timeout=10)


@pytest.mark.registry
def test_sign_pushes_cosigns_layout_and_a_tag_schema_referrer(registry, tiny_model, keypair):
    ref = pushed(tiny_model, registry, "sig/layout:v1")
    result = run("sign", str(ref), "--key", str(keypair[0]), "--json")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    digest = Digest.parse(out["digest"])
    assert out["referrers"] == "tag-schema"  # distribution 2.8 has no referrers API
    assert registry_get(registry, f"sig/layout/referrers/{digest}", mt.OCI_INDEX).status_code == 404

    sig = registry_get(registry, f"sig/layout/manifests/sha256-{digest.hex}.sig").json()
    assert sig["mediaType"] == mt.OCI_MANIFEST and sig["config"]["mediaType"] == mt.OCI_CONFIG
    [layer] = sig["layers"]
    assert layer["mediaType"] == "application/vnd.dev.cosign.simplesigning.v1+json"
    payload = registry_get(registry, f"sig/layout/blobs/{layer['digest']}").content
    claims = json.loads(payload)
    assert claims["critical"]["image"]["docker-manifest-digest"] == str(digest)
    assert claims["critical"]["type"] == "cosign container image signature"
    assert claims["critical"]["identity"]["docker-reference"] == f"{registry.host}/sig/layout"
    # the signature is plain ECDSA P-256 / SHA-256 over the payload bytes, as cosign verifies it
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    public = keys.load_public(keypair[1]).key
    public.verify(base64.b64decode(layer["annotations"]["dev.cosignproject.cosign/signature"]), payload,
                  ec.ECDSA(hashes.SHA256()))
    config_blob = registry_get(registry, f"sig/layout/blobs/{sig['config']['digest']}").json()
    assert config_blob["rootfs"]["diff_ids"] == [layer["digest"]]

    index = registry_get(registry, f"sig/layout/manifests/sha256-{digest.hex}", mt.OCI_INDEX)
    assert index.headers["Content-Type"] == mt.OCI_INDEX
    [entry] = index.json()["manifests"]
    assert entry["artifactType"] == mt.COSIGN_SIG_ARTIFACT and entry["digest"] == out["referrer"]
    referrer = registry_get(registry, f"sig/layout/manifests/{entry['digest']}").json()
    assert referrer["subject"]["digest"] == str(digest) and referrer["layers"] == [layer]

    verified = run("verify-signature", str(ref), "--key", str(keypair[1]), "--json")
    assert verified.exit_code == 0, verified.stderr
    verdict = json.loads(verified.stdout)
    assert verdict["verified"] and verdict["signers"][0]["key"] == "modelpkg.pub"
    assert verdict["signers"][0]["fingerprint"] == keys.load_public(keypair[1]).fingerprint


@pytest.mark.registry
def test_signing_again_replaces_the_same_keys_signature_and_keeps_others(registry, tiny_model, keypair,
                                                                         other_keypair, tmp_path):
    ref = pushed(tiny_model, registry, "sig/again:v1")
    for key in (keypair[0], keypair[0], other_keypair[0]):
        assert run("sign", str(ref), "--key", str(key)).exit_code == 0
    digest = client(registry).get_manifest("sig/again", "v1")[2]
    sig = registry_get(registry, f"sig/again/manifests/sha256-{digest.hex}.sig").json()
    assert len(sig["layers"]) == 2
    index = registry_get(registry, f"sig/again/manifests/sha256-{digest.hex}", mt.OCI_INDEX).json()
    assert len(index["manifests"]) == 3  # one referrer per signing; every one names the subject
    folder = tmp_path / "trusted"
    folder.mkdir()
    for _, public in (keypair, other_keypair):
        (folder / public.name).write_bytes(public.read_bytes())
    verdict = json.loads(run("verify-signature", str(ref), "--keys", str(folder), "--json").stdout)
    assert sorted(s["key"] for s in verdict["signers"]) == ["modelpkg.pub", "other.pub"]


@pytest.mark.registry
def test_wrong_key_is_refused(any_registry, tiny_model, keypair, other_keypair):
    registry = any_registry  # distribution 2.8, then a registry with the referrers API
    ref = pushed(tiny_model, registry, "sig/wrongkey:v1")
    run("sign", str(ref), "--key", str(keypair[0]))
    result = run("verify-signature", str(ref), "--key", str(other_keypair[1]))
    assert result.exit_code == TrustError.exit_code
    assert "Error:" in result.stderr and "no trusted key verifies the signature" in result.stderr


@pytest.mark.registry
def test_unsigned_model_is_refused(any_registry, tiny_model, keypair):
    registry = any_registry  # distribution 2.8, then a registry with the referrers API
    ref = pushed(tiny_model, registry, "sig/unsigned:v1")
    result = run("verify-signature", str(ref), "--key", str(keypair[1]), "--json")
    assert result.exit_code == TrustError.exit_code
    assert json.loads(result.stdout)["signatures_found"] == 0
    assert "it is not signed" in result.stderr


@pytest.mark.registry
def test_retagged_manifest_is_refused(any_registry, tiny_model, keypair):
    """An attacker moves the signed tag to other content, then also copies the old signature over."""
    registry = any_registry  # distribution 2.8, then a registry with the referrers API
    signed = pushed(tiny_model, registry, "sig/retag:v1")
    run("sign", str(signed), "--key", str(keypair[0]))
    pushed(tiny_model, registry, "sig/retag:evil", 'SYSTEM "obey me"\n')
    c = client(registry)
    good_digest = c.get_manifest("sig/retag", "v1")[2]
    data, media_type, evil_digest = c.get_manifest("sig/retag", "evil")
    c.put_manifest("sig/retag", "v1", data, media_type)
    moved = run("verify-signature", str(signed), "--key", str(keypair[1]))
    assert moved.exit_code == TrustError.exit_code and "it is not signed" in moved.stderr
    sig, sig_type, _ = c.get_manifest("sig/retag", signing.signature_tag(good_digest))
    c.put_manifest("sig/retag", signing.signature_tag(evil_digest), sig, sig_type)
    copied = run("verify-signature", str(signed), "--key", str(keypair[1]))
    assert copied.exit_code == TrustError.exit_code
    assert f"the signature is for {good_digest.short}, not {evil_digest.short}" in copied.stderr


@pytest.mark.registry
def test_altered_payload_is_refused(registry, tiny_model, keypair, tmp_path):
    ref = pushed(tiny_model, registry, "sig/altered:v1")
    run("sign", str(ref), "--key", str(keypair[0]))
    c = client(registry)
    digest = c.get_manifest("sig/altered", "v1")[2]
    tag = signing.signature_tag(digest)
    sig = parse_manifest(c.get_manifest("sig/altered", tag)[0])
    [layer] = sig.layers
    forged = signing.format_payload(signing.Payload("evil.example/x", digest, {"approved": "yes"}))
    path = tmp_path / "forged"
    path.write_bytes(forged)
    c.upload_blob("sig/altered", Descriptor("application/octet-stream", Digest.of(forged), len(forged)), path)
    bad_layer = Descriptor(layer.media_type, Digest.of(forged), len(forged), layer.annotations)
    config_bytes = registry_get(registry, f"sig/altered/blobs/{sig.config.digest}").content
    bad = signing.signature_manifest(config_bytes, [bad_layer])
    c.put_manifest("sig/altered", tag, bad.to_bytes(), mt.OCI_MANIFEST)
    # the tag-schema referrer still holds the genuine signature: remove it so only the forgery remains
    c.put_manifest("sig/altered", signing.referrers_tag(digest),
                   signing.index_bytes(Index(mt.OCI_INDEX, ())), mt.OCI_INDEX)
    result = run("verify-signature", str(ref), "--key", str(keypair[1]), "--json")
    assert result.exit_code == TrustError.exit_code
    assert "payload was altered" in result.stderr
    assert json.loads(result.stdout)["signatures_found"] == 1


@pytest.mark.registry
def test_the_referrer_alone_verifies(any_registry, tiny_model, keypair):
    """A registry that lost (or never had) the .sig tag: the referrers tag-schema index is enough."""
    registry = any_registry  # distribution 2.8, then a registry with the referrers API
    ref = pushed(tiny_model, registry, "sig/referrer:v1")
    run("sign", str(ref), "--key", str(keypair[0]))
    c = client(registry)
    digest = c.get_manifest("sig/referrer", "v1")[2]
    empty = signing.signature_manifest(b"{}", [])  # the .sig tag now holds no signature
    path = config.home().parent / "empty-config"
    path.write_bytes(b"{}")
    c.upload_blob("sig/referrer", Descriptor("application/octet-stream", Digest.of(b"{}"), 2), path)
    c.put_manifest("sig/referrer", signing.signature_tag(digest), empty.to_bytes(), mt.OCI_MANIFEST)
    verdict = json.loads(run("verify-signature", str(ref), "--key", str(keypair[1]), "--json").stdout)
    assert verdict["verified"] and verdict["signers"][0]["source"] == "referrer"


@pytest.mark.registry
def test_encrypted_key_signs_with_its_password(registry, tiny_model, tmp_path, monkeypatch):
    ref = pushed(tiny_model, registry, "sig/encrypted:v1")
    run("keygen", "-o", str(tmp_path / "enc"), "--password-stdin", input="pw\n")
    key = tmp_path / "enc" / "modelpkg.key"
    wrong = run("sign", str(ref), "--key", str(key), "--password-stdin", input="nope\n")
    assert wrong.exit_code == AuthError.exit_code and "wrong password" in wrong.stderr
    assert run("sign", str(ref), "--key", str(key), "--password-stdin", input="pw\n").exit_code == 0
    monkeypatch.setenv("MODELPKG_KEY_PASSWORD", "pw")
    assert run("sign", str(ref), "--key", str(key)).exit_code == 0
    assert run("verify-signature", str(ref), "--key", str(tmp_path / "enc" / "modelpkg.pub")).exit_code == 0


# ---------------------------------------------------------------------------------------------------------
# the trust policy on pull


def write_policy(tmp_path, monkeypatch, prefix: str, mode: str, public) -> None:
    path = tmp_path / "policy" / "policy.toml"
    path.parent.mkdir(exist_ok=True)
    (path.parent / "trusted.pub").write_bytes(public.read_bytes())
    path.write_text(signing.format_policy(Policy((Rule(prefix, mode, ("trusted.pub",)),))))
    monkeypatch.setenv("MODELPKG_POLICY", str(path))


def fresh_home(tmp_path, monkeypatch, name: str):
    monkeypatch.setenv("MODELPKG_HOME", str(tmp_path / name))
    return tmp_path / name


def snapshot(root) -> dict:
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*"))
            if p.is_file() and ".lock" not in p.name and "pins" not in p.parts}


@pytest.mark.registry
def test_enforce_refuses_an_unsigned_model_and_writes_nothing(registry, tiny_model, keypair, tmp_path, monkeypatch):
    ref = pushed(tiny_model, registry, "trust/unsigned:v1")
    write_policy(tmp_path, monkeypatch, f"{registry.host}/trust", "enforce", keypair[1])
    home = fresh_home(tmp_path, monkeypatch, "puller")
    result = run("pull", str(ref))
    assert result.exit_code == TrustError.exit_code
    assert "has no signature the trust policy accepts: it is not signed" in result.stderr
    assert "nothing was written to the store" in result.stderr
    assert snapshot(home) == {}


@pytest.mark.registry
def test_enforce_pulls_a_signed_model_and_keeps_its_signature(any_registry, tiny_model, keypair, other_keypair,
                                                              tmp_path, monkeypatch):
    registry = any_registry  # distribution 2.8, then a registry with the referrers API
    ref = pushed(tiny_model, registry, "trust/signed:v1")
    run("sign", str(ref), "--key", str(keypair[0]))
    write_policy(tmp_path, monkeypatch, f"{registry.host}/trust", "enforce", keypair[1])
    fresh_home(tmp_path, monkeypatch, "puller")
    result = run("pull", "--json", str(ref))
    assert result.exit_code == 0, result.stderr
    assert any(json.loads(line).get("status", "").startswith("signed by trusted.pub")
               for line in result.stdout.splitlines())
    entry = store().resolve(ref)
    assert entry.attached
    shown = json.loads(run("show", "--json", str(ref)).stdout)
    assert shown["signatures"] and shown["signatures"][0]["key"] == "trusted.pub" and shown["signatures"][0]["verified"]
    summary = run("show", str(ref)).stdout
    assert "signed by" in summary and "trusted.pub" in summary
    # gc keeps the signatures: verify offline afterwards
    assert run("gc", "--grace", "0s").exit_code == 0
    for digest in entry.attached:  # kept whole: manifest, config and payloads
        kept = parse_manifest(store().read_blob(digest))
        assert all(store().has_blob(blob.digest, blob.size) for blob in kept.blobs())
    local = run("verify-signature", "--local", str(ref), "--key", str(keypair[1]), "--json")
    assert local.exit_code == 0, local.stderr
    assert json.loads(local.stdout)["signers"][0]["source"] == "store"
    wrong = run("verify-signature", "--local", str(ref), "--key", str(other_keypair[1]))
    assert wrong.exit_code == TrustError.exit_code


@pytest.mark.registry
def test_enforce_refuses_a_signature_by_another_key(any_registry, tiny_model, keypair, other_keypair, tmp_path,
                                                    monkeypatch):
    registry = any_registry  # distribution 2.8, then a registry with the referrers API
    ref = pushed(tiny_model, registry, "trust/otherkey:v1")
    run("sign", str(ref), "--key", str(other_keypair[0]))
    write_policy(tmp_path, monkeypatch, f"{registry.host}/trust", "enforce", keypair[1])
    home = fresh_home(tmp_path, monkeypatch, "puller")
    with pytest.raises(TrustError, match="no trusted key verifies"):
        pull(store(), ref)
    assert snapshot(home) == {}


@pytest.mark.registry
def test_warn_pulls_an_unsigned_model_with_a_warning(registry, tiny_model, keypair, tmp_path, monkeypatch):
    ref = pushed(tiny_model, registry, "trust/warn:v1")
    write_policy(tmp_path, monkeypatch, f"{registry.host}/trust", "warn", keypair[1])
    fresh_home(tmp_path, monkeypatch, "puller")
    result = run("pull", "--json", str(ref))
    assert result.exit_code == 0, result.stderr
    statuses = [json.loads(line).get("status", "") for line in result.stdout.splitlines()]
    assert any(s.startswith("warning:") and "it is not signed" in s for s in statuses)
    assert store().resolve(ref).attached == ()
    assert json.loads(run("show", "--json", str(ref)).stdout)["signatures"] == []


@pytest.mark.registry
def test_off_pulls_and_still_keeps_signatures(registry, tiny_model, keypair, tmp_path, monkeypatch):
    ref = pushed(tiny_model, registry, "trust/off:v1")
    run("sign", str(ref), "--key", str(keypair[0]))
    write_policy(tmp_path, monkeypatch, f"{registry.host}/elsewhere", "enforce", keypair[1])  # does not match
    fresh_home(tmp_path, monkeypatch, "puller")
    entry = pull(store(), ref)
    assert len(entry.attached) == 1
    shown = json.loads(run("show", "--json", str(ref)).stdout)["signatures"]
    assert [s["key"] for s in shown] == ["trusted.pub"]  # show names any key the policy file knows
    monkeypatch.delenv("MODELPKG_POLICY")
    shown = json.loads(run("show", "--json", str(ref)).stdout)["signatures"]
    assert shown == [{"key": None, "fingerprint": None, "verified": False}]  # no known key: signed, but by whom?
    assert "1 signature(s) by keys the trust policy does not name" in run("show", str(ref)).stdout
    assert run("verify-signature", "--local", str(ref), "--key", str(keypair[1])).exit_code == 0
    again = pull(store(), ref)  # a no-op pull keeps what was kept
    assert again.attached == entry.attached


@pytest.mark.registry
def test_signing_a_model_that_is_not_pushed_says_push_first(registry, keypair, home):
    result = run("sign", f"{registry.host}/sig/nowhere:v1", "--key", str(keypair[0]))
    assert result.exit_code == 4 and "push it first" in result.stderr


@pytest.mark.registry
def test_a_registry_that_indexes_referrers_gets_no_tag_schema_index(registry, fault_proxy, tiny_model, keypair):
    """Distribution 2.8 has no referrers API; the proxy plays one that has it by answering the referrer's
    PUT with ``OCI-Subject`` (distribution-spec): then the sha256-<hex> index must not be written."""
    proxy = fault_proxy(registry)
    pushed(tiny_model, registry, "sig/api:v1")
    digest = client(registry).get_manifest("sig/api", "v1")[2]
    proxy.add("status", "PUT", r"/manifests/sha256:", status=201, headers={"OCI-Subject": str(digest)})
    out = json.loads(run("sign", f"{proxy.host}/sig/api:v1", "--key", str(keypair[0]), "--json").stdout)
    assert out["referrers"] == "api"
    assert registry_get(registry, f"sig/api/manifests/sha256-{digest.hex}", mt.OCI_INDEX).status_code == 404
    assert registry_get(registry, f"sig/api/manifests/sha256-{digest.hex}.sig").status_code == 200


@pytest.mark.registry
def test_referrers_api_answers_are_read_and_checked(registry, fault_proxy, tiny_model, keypair, tmp_path):
    """A referrers API answer is used instead of the tag schema, and an entry whose manifest names another
    subject (GitLab resolves sha256-<hex> tags to the subject itself, oras-go#1396) is skipped."""
    proxy = fault_proxy(registry)
    ref = pushed(tiny_model, registry, "sig/api-read:v1")
    other = pushed(tiny_model, registry, "sig/api-read:v2", 'SYSTEM "other"\n')
    for r in (ref, other):
        run("sign", str(r), "--key", str(keypair[0]))
    c = client(registry)
    digest, other_digest = c.get_manifest("sig/api-read", "v1")[2], c.get_manifest("sig/api-read", "v2")[2]
    own = registry_get(registry, f"sig/api-read/manifests/sha256-{digest.hex}", mt.OCI_INDEX).json()["manifests"]
    foreign = registry_get(registry, f"sig/api-read/manifests/sha256-{other_digest.hex}",
                           mt.OCI_INDEX).json()["manifests"]
    # only the referrers remain: empty the .sig tag and the tag-schema index of v1
    path = tmp_path / "empty-config"
    path.write_bytes(b"{}")
    c.upload_blob("sig/api-read", Descriptor("application/octet-stream", Digest.of(b"{}"), 2), path)
    c.put_manifest("sig/api-read", signing.signature_tag(digest), signing.signature_manifest(b"{}", []).to_bytes(),
                   mt.OCI_MANIFEST)
    c.put_manifest("sig/api-read", signing.referrers_tag(digest), signing.index_bytes(Index(mt.OCI_INDEX, ())),
                   mt.OCI_INDEX)
    name = f"{proxy.host}/sig/api-read:v1"
    answer = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": foreign}
    proxy.add("status", "GET", r"/referrers/", status=200, body=json.dumps(answer).encode(),
              headers={"Content-Type": mt.OCI_INDEX})
    refused = run("verify-signature", name, "--key", str(keypair[1]))
    assert refused.exit_code == TrustError.exit_code and "it is not signed" in refused.stderr
    answer["manifests"] = foreign + own
    proxy.add("status", "GET", r"/referrers/", status=200, body=json.dumps(answer).encode(),
              headers={"Content-Type": mt.OCI_INDEX})
    verdict = json.loads(run("verify-signature", name, "--key", str(keypair[1]), "--json").stdout)
    assert verdict["verified"] and verdict["signers"][0]["source"] == "referrer"


@pytest.mark.registry
def test_noop_pull_under_enforce_is_one_request(registry, fault_proxy, tiny_model, keypair, tmp_path, monkeypatch):
    """The kept signatures of an unchanged model are verified locally: a no-op pull stays one request."""
    proxy = fault_proxy(registry)
    ref = tiny_model(f"{proxy.host}/trust/noop:v1")
    push(store(), ref)
    run("sign", str(ref), "--key", str(keypair[0]))
    write_policy(tmp_path, monkeypatch, f"{proxy.host}/trust", "enforce", keypair[1])
    fresh_home(tmp_path, monkeypatch, "puller")
    pull(store(), ref)
    proxy.clear()
    pull(store(), ref)
    assert [(r.method, r.path) for r in proxy.requests] == [("GET", "/v2/trust/noop/manifests/v1")]


# ---------------------------------------------------------------------------------------------------------
# a model pulled through a multi-platform index; signatures carried by push


def publish_index(registry, tiny_model, repo: str) -> tuple[str, str, str]:
    """Two models as the linux/amd64 and linux/arm64 entries of an index tagged ``idx``; returns the index
    reference and the two manifest digests."""
    digests = []
    for tag, extra in (("amd64", ""), ("arm64", "SYSTEM arm\n")):
        ref = tiny_model(f"{registry.host}/{repo}:{tag}", extra)
        digests.append(str(push(store(), ref)))
    entries = []
    for digest, arch in zip(digests, ("amd64", "arm64"), strict=True):
        raw = registry_get(registry, f"{repo}/manifests/{digest}").content
        entries.append({"mediaType": mt.OCI_MANIFEST, "digest": digest, "size": len(raw),
                        "platform": {"os": "linux", "architecture": arch}})
    index = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": entries}).encode()
    client(registry).put_manifest(repo, "idx", index, mt.OCI_INDEX)
    return f"{registry.host}/{repo}:idx", digests[0], digests[1]


@pytest.mark.registry
def test_local_verification_of_a_model_pulled_through_a_signed_index(registry, tiny_model, keypair, other_keypair,
                                                                     tmp_path, monkeypatch):
    name, _, arm = publish_index(registry, tiny_model, "sig/multi")
    signed = run("sign", name, "--key", str(keypair[0]), "--json")
    assert signed.exit_code == 0, signed.stderr
    index_digest = Digest.parse(json.loads(signed.stdout)["digest"])  # what the tag names: the index
    fresh_home(tmp_path, monkeypatch, "puller")
    ref = config.reference(name)
    entry = pull(store(), ref, platform=("linux", "arm64"))
    assert str(entry.digest) == arm and entry.index == index_digest and entry.attached
    assert run("gc", "--grace", "0s").exit_code == 0  # gc keeps the index bytes with the name
    assert store().has_blob(index_digest)
    local = run("verify-signature", "--local", name, "--key", str(keypair[1]), "--json")
    assert local.exit_code == 0, local.stderr
    assert json.loads(local.stdout)["digest"] == str(index_digest)
    assert run("verify-signature", "--local", name, "--key", str(other_keypair[1])).exit_code == TrustError.exit_code
    assert pull(store(), ref, platform=("linux", "arm64")).attached == entry.attached  # a no-op pull keeps them
    write_policy(tmp_path, monkeypatch, f"{registry.host}/elsewhere", "warn", keypair[1])  # show names its keys
    shown = json.loads(run("show", "--json", name).stdout)["signatures"]
    assert [(s["key"], s["verified"]) for s in shown] == [("trusted.pub", True)]
    # pushing the arm64 manifest alone: the signatures name the index, so they stay behind, and push says so
    copy = f"{registry.host}/sig/multi-copy:v1"
    assert run("cp", name, copy).exit_code == 0
    # a copy keeps the index it came through, so it verifies offline too
    copied = run("verify-signature", "--local", copy, "--key", str(keypair[1]))
    assert copied.exit_code == 0, copied.stderr
    # ... and so does a save/rm/load round trip (the archive carries the index's bytes and the record)
    archive_file = tmp_path / "multi.tar"
    assert run("save", copy, "-o", str(archive_file)).exit_code == 0
    assert run("rm", copy).exit_code == 0
    assert run("load", "-i", str(archive_file)).exit_code == 0
    reloaded = run("verify-signature", "--local", copy, "--key", str(keypair[1]))
    assert reloaded.exit_code == 0, reloaded.stderr
    pushed_copy = run("push", "--json", copy)
    assert pushed_copy.exit_code == 0, pushed_copy.stderr
    assert any("name the index it was pulled through" in json.loads(line).get("status", "")
               for line in pushed_copy.stdout.splitlines())
    assert run("verify-signature", copy, "--key", str(keypair[1])).exit_code == TrustError.exit_code
    # an index that does not list the model proves nothing, whoever signed it
    with store().session() as pins:
        other = store().put_bytes(signing.index_bytes(Index(mt.OCI_INDEX, (Descriptor(mt.OCI_MANIFEST, D1, 3),))),
                                  pins)
        store().set_ref(ref, entry.digest, entry.media_type, entry.size, entry.attached, index=other)
    broken = run("verify-signature", "--local", name, "--key", str(keypair[1]))
    assert broken.exit_code != 0 and "does not list its manifest" in broken.stderr


@pytest.mark.registry
def test_push_carries_the_kept_signatures_to_another_repository(registry, tiny_model, keypair, tmp_path,
                                                                monkeypatch):
    ref = pushed(tiny_model, registry, "sig/carry-a:v1")
    assert run("sign", str(ref), "--key", str(keypair[0])).exit_code == 0
    fresh_home(tmp_path, monkeypatch, "puller")
    assert pull(store(), ref).attached
    target = f"{registry.host}/sig/carry-b:v1"
    assert run("verify-signature", target, "--key", str(keypair[1])).exit_code != 0  # not there yet
    assert run("cp", str(ref), target).exit_code == 0
    result = run("push", target)
    assert result.exit_code == 0, result.stderr
    verified = run("verify-signature", target, "--key", str(keypair[1]), "--json")
    assert verified.exit_code == 0, verified.stderr
    assert json.loads(verified.stdout)["signers"][0]["source"] == "tag"
    assert run("push", target).exit_code == 0  # again: the signature is there already, nothing piles up
    digest = store().resolve(config.reference(target)).digest
    sig = registry_get(registry, f"sig/carry-b/manifests/{signing.signature_tag(digest)}").json()
    assert len(sig["layers"]) == 1
    # a conversion has another digest: the signatures stay behind, and push says so
    converted = f"{registry.host}/sig/carry-c:v1"
    assert run("cp", str(ref), converted).exit_code == 0
    result = run("push", "--format", "docker", converted)
    assert result.exit_code == 0, result.stderr
    assert "signatures" in result.stderr
    assert run("verify-signature", converted, "--key", str(keypair[1])).exit_code == TrustError.exit_code


@pytest.mark.registry
def test_push_adds_kept_signatures_to_a_sig_tag_already_there(registry, tiny_model, keypair, other_keypair,
                                                               tmp_path, monkeypatch):
    ref = pushed(tiny_model, registry, "sig/merge-a:v1")
    assert run("sign", str(ref), "--key", str(keypair[0])).exit_code == 0
    fresh_home(tmp_path, monkeypatch, "puller")
    pull(store(), ref)
    target = f"{registry.host}/sig/merge-b:v1"
    assert run("cp", str(ref), target).exit_code == 0
    assert run("push", target).exit_code == 0
    tag = signing.signature_tag(store().resolve(config.reference(target)).digest)
    monkeypatch.setenv("MODELPKG_HOME", str(tmp_path / "other-signer"))  # someone else signs the copy in B
    assert run("sign", target, "--key", str(other_keypair[0])).exit_code == 0
    # leave only the other signer's signature under the .sig tag
    sig = registry_get(registry, f"sig/merge-b/manifests/{tag}").json()
    sig["layers"] = sig["layers"][-1:]
    client(registry).put_manifest("sig/merge-b", tag, json.dumps(sig).encode(), mt.OCI_MANIFEST)
    assert run("verify-signature", target, "--key", str(keypair[1])).exit_code == TrustError.exit_code
    monkeypatch.setenv("MODELPKG_HOME", str(tmp_path / "puller"))
    assert run("push", target).exit_code == 0
    assert len(registry_get(registry, f"sig/merge-b/manifests/{tag}").json()["layers"]) == 2
    for public in (keypair[1], other_keypair[1]):  # both signatures stand
        assert run("verify-signature", target, "--key", str(public)).exit_code == 0
