"""The trust commands: ``keygen``, ``sign``, ``verify-signature`` (loaded lazily by ``modelpkg.cli.app``).

Thin click commands over ``modelpkg.base.keys`` and ``modelpkg.ops.sign``; errors are ``ModelpkgError``s that the
group in ``modelpkg.cli.app`` prints.

CLI layer: imports ``base.config``, ``base.keys``, ``ops.sign``, ``cli.progress`` and ``registry.connect.client_for``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from modelpkg.base import config
from modelpkg.cli.common import open_store, short
from modelpkg.core.errors import TrustError, UsageError

_INSECURE_HELP = "Use plain http (only for a registry you trust on your network; loopback hosts use it anyway)."
_CA_HELP = "A CA bundle (PEM) to verify the registry's TLS certificate with (env MODELPKG_CA_BUNDLE)."


def _password_from_stdin() -> bytes:
    line = sys.stdin.readline().rstrip("\r\n")
    if not line:
        raise UsageError("--password-stdin got an empty password")
    return line.encode("utf-8")


@click.command()
@click.option("-o", "--output", "folder", type=click.Path(file_okay=False, path_type=Path), default=".",
              show_default=True, help="The folder to write <name>.key and <name>.pub in.")
@click.option("--name", default="modelpkg", show_default=True, help="The key files' base name.")
@click.option("--password-stdin", is_flag=True, help="Encrypt the private key with a password read from stdin.")
@click.option("--force", is_flag=True, help="Overwrite existing key files.")
@click.option("--json", "as_json", is_flag=True, help="Print the paths and fingerprint as JSON.")
def keygen(folder: Path, name: str, password_stdin: bool, force: bool, as_json: bool) -> None:
    """Create a signing key pair: ECDSA P-256, PEM.

    The private key (<name>.key) is written with mode 0600, encrypted when a password is given
    (--password-stdin, or MODELPKG_KEY_PASSWORD). Keep it secret. Give the public key (<name>.pub) to
    whoever verifies your models; 'cosign verify --key <name>.pub' reads it too.

    \b
    Examples:
      modelpkg keygen -o ~/.config/modelpkg/keys
      echo "$PASSWORD" | modelpkg keygen --password-stdin --name team
    """
    from modelpkg.base import keys

    password = (_password_from_stdin() if password_stdin
                else config.key_password())
    private, public, fingerprint = keys.generate(folder, password, name=name, force=force)
    if as_json:
        click.echo(json.dumps({"private_key": str(private), "public_key": str(public), "fingerprint": fingerprint,
                               "encrypted": password is not None}))
    else:
        click.echo(f"private key: {private}{' (encrypted)' if password else ''}", err=True)
        click.echo(f"public key:  {public}", err=True)
        click.echo(f"fingerprint: {fingerprint}", err=True)


@click.command()
@click.argument("name")
@click.option("--key", "key_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The private key (PEM) from 'modelpkg keygen'.")
@click.option("--password-stdin", is_flag=True, help="Read the private key's password from stdin "
              "(else MODELPKG_KEY_PASSWORD, else a prompt on a terminal).")
@click.option("--insecure", is_flag=True, help=_INSECURE_HELP)
@click.option("--ca-bundle", type=click.Path(exists=True, dir_okay=False), envvar="MODELPKG_CA_BUNDLE", help=_CA_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def sign(name: str, key_path: Path, password_stdin: bool, insecure: bool, ca_bundle: str | None,
         as_json: bool) -> None:
    """Sign a pushed model and push the signature next to it.

    What is signed is the manifest digest the registry serves for NAME, so push first. The signature
    goes where cosign looks for it (tag sha256-<hex>.sig, simple-signing payload) and is also attached
    as an OCI 1.1 referrer (the referrers API, or the sha256-<hex> index where the registry lacks it).
    Signing again with the same key replaces that key's earlier signature.

    \b
    Examples:
      modelpkg push localhost:5000/acme/tiny:q4
      modelpkg sign localhost:5000/acme/tiny:q4 --key modelpkg.key
      cosign verify --key modelpkg.pub --insecure-ignore-tlog localhost:5000/acme/tiny:q4
    """
    from modelpkg.base import keys
    from modelpkg.cli.progress import for_terminal
    from modelpkg.ops import sign as signer
    from modelpkg.registry.connect import client_for

    ref = config.reference(name)
    password = None
    if keys.is_encrypted(key_path):
        if password_stdin:
            password = _password_from_stdin()
        elif (from_env := config.key_password()) is not None:
            password = from_env
        elif sys.stdin.isatty():
            password = click.prompt(f"Password for {key_path}", hide_input=True, err=True).encode()
    private = keys.load_private(key_path, password)
    with client_for(ref, insecure=insecure, ca_bundle=ca_bundle) as client:
        result = signer.sign(ref, private, client, progress=for_terminal(False) if not as_json else None)
    if as_json:
        click.echo(json.dumps(result.to_json()))
    else:
        where = "referrers API" if result.referrers == "api" else f"referrers index {result.signature_tag[:-4]}"
        click.echo(f"signed {short(result.name)} ({result.digest.short}) with {result.fingerprint[:23]}...", err=True)
        click.echo(f"  signature: {result.signature_tag}; referrer {result.referrer.short} ({where})", err=True)


@click.command("verify-signature")
@click.argument("name")
@click.option("--key", "key_paths", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="A trusted public key (PEM); repeatable.")
@click.option("--keys", "keys_dir", type=click.Path(file_okay=False, path_type=Path),
              help="A folder of trusted public keys (*.pub, *.pem).")
@click.option("--local", is_flag=True, help="Check the copy in the local store (signatures kept by pull), offline.")
@click.option("--insecure", is_flag=True, help=_INSECURE_HELP)
@click.option("--ca-bundle", type=click.Path(exists=True, dir_okay=False), envvar="MODELPKG_CA_BUNDLE", help=_CA_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the verdict as JSON (also when it fails).")
def verify_signature(name: str, key_paths: tuple[Path, ...], keys_dir: Path | None, local: bool, insecure: bool,
                     ca_bundle: str | None, as_json: bool) -> None:
    """Check that a model is signed by a trusted key.

    A signature counts when a trusted key verifies it and it names the exact manifest digest checked.
    Without --key or --keys, the keys the trust policy (policy.toml in the config folder, or
    MODELPKG_POLICY) gives for NAME are used. Exits with code 11 when no signature is accepted.

    \b
    Policy file example (longest prefix wins; mode off | warn | enforce; key paths relative to it):
      [[trust]]
      prefix = "registry.example.com/models"
      mode = "enforce"
      keys = ["keys/team.pub"]

    \b
    Examples:
      modelpkg verify-signature localhost:5000/acme/tiny:q4 --key modelpkg.pub
      modelpkg verify-signature tiny:q4 --local --keys ~/.config/modelpkg/keys --json
    """
    from modelpkg.base import keys
    from modelpkg.ops import sign as signer
    ref = config.reference(name)
    trusted = [keys.load_public(p) for p in key_paths]
    if keys_dir is not None:
        trusted += keys.load_public_dir(keys_dir)
    if not trusted:
        policy, base = keys.load_policy()
        rule = policy.match(str(ref))
        if not rule.keys:
            raise UsageError("no trusted keys: pass --key or --keys", f"or name keys for {ref.name} in "
                             f"{keys.policy_path()}")
        trusted = keys.policy_keys(rule.keys, base)
    if local:
        verdict = signer.verify_local(open_store(), ref, trusted)
    else:
        from modelpkg.registry.connect import client_for

        with client_for(ref, insecure=insecure, ca_bundle=ca_bundle) as client:
            verdict, _ = signer.verify_remote(client, ref, trusted)
    if as_json:
        click.echo(json.dumps({"name": str(ref), **verdict.to_json()}))
    if not verdict.ok:
        raise TrustError(f"{short(str(ref))} ({verdict.digest.short}) is not verified: {verdict.reason()}",
                         "check the key, and that the model was signed after its last push")
    if not as_json:
        for s in verdict.signers:
            click.echo(f"verified {short(str(ref))} ({verdict.digest.short}): signed by {s.key} ({s.fingerprint})")

