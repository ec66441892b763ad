"""The registry commands: ``pull``, ``outdated``, ``push``, ``login``, ``logout`` (loaded lazily by
``modelpkg.cli.app``).

Thin click commands: parse options, build the store, client and progress drawer, call one library
function, render the result. Errors are ``ModelpkgError``s and the group in ``modelpkg.cli.app`` prints them.

CLI layer: imports ``modelpkg.base.config``, ``modelpkg.cli.progress``, ``pull``/``push`` and ``registry``.
"""

from __future__ import annotations

import json
import re
import sys

import click

from modelpkg.base import config
from modelpkg.cli.common import emit_json, open_store, raise_failures, short
from modelpkg.core.errors import UsageError

_CA_HELP = "A CA bundle (PEM) to verify the registry's TLS certificate with (env MODELPKG_CA_BUNDLE)."
_INSECURE_HELP = "Use plain http (only for a registry you trust on your network; loopback hosts use it anyway)."




def _warnings(client) -> None:
    for text in client.warnings:
        click.echo(f"Warning: registry says {text}", err=True)


def _client(ref, insecure: bool, ca_bundle: str | None):
    from modelpkg.registry.connect import client_for

    return client_for(ref, insecure=insecure, ca_bundle=ca_bundle)


def _rate(text: str | None) -> int | None:
    from modelpkg.core.units import parse_rate

    return parse_rate(text) if text else None


@click.command()
@click.argument("name", required=False)
@click.option("--all", "all_", is_flag=True, help="Pull every pulled name again (created, imported and loaded "
              "names are local and skipped).")
@click.option("--insecure", is_flag=True, help=_INSECURE_HELP)
@click.option("--ca-bundle", type=click.Path(exists=True, dir_okay=False), envvar="MODELPKG_CA_BUNDLE", help=_CA_HELP)
@click.option("--platform", "platform_", metavar="OS/ARCH", help="Which entry of a multi-platform index to pull "
              "(default: this machine's).")
@click.option("--limit-rate", metavar="RATE", help="At most RATE bytes per second over all streams of the pull: "
              "800k, 20M, 1.5G (SI) or 20Mi (IEC) (default: $MODELPKG_LIMIT_RATE, else no limit).")
@click.option("--concurrency", type=click.IntRange(1, 64), metavar="N", help="Blobs downloaded at once, and "
              "ranged parts of one large blob (default: 3 blobs, 4 parts).")
@click.option("--json", "as_json", is_flag=True, help="Print progress as JSON lines on stdout, for scripts.")
def pull(name: str | None, all_: bool, insecure: bool, ca_bundle: str | None, platform_: str | None,
         limit_rate: str | None, concurrency: int | None, as_json: bool) -> None:
    """Pull a model from a registry, by tag or by digest; or, with --all, every pulled name again.

    Any dialect: CNCF ModelPack (modelpkg's own), Ollama's, Docker Model Runner's, a plain ORAS artifact
    whose layer is a .gguf file, or a KitOps ModelKit (its GGUF is extracted from the model tar); and
    Hugging Face GGUF repositories, hf.co/USER/REPO[:QUANT], as Ollama pulls them.

    Blobs already in the store are not downloaded again, and an interrupted pull resumes where it
    stopped. Credentials come from 'modelpkg login', Docker's or podman's config, or
    MODELPKG_REGISTRY_USER / MODELPKG_REGISTRY_PASSWORD (for the default registry and the hosts
    MODELPKG_REGISTRY_HOSTS lists; MODELPKG_REGISTRY_USER_<HOST> for any other; HF_TOKEN for Hugging
    Face). HTTPS_PROXY, HTTP_PROXY and NO_PROXY are honoured.

    \b
    Examples:
      modelpkg pull localhost:5000/acme/tiny:q4
      modelpkg pull ghcr.io/acme/gemma3@sha256:3f4c...
      modelpkg pull hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M
      modelpkg pull --limit-rate 20M --concurrency 2 registry.example.com/team/model:v2
      modelpkg pull --all                    # refresh every pulled name; one manifest request each if unchanged
      modelpkg pull --json registry.example.com/team/model:v2 | jq -r .status
    """
    from modelpkg.cli.progress import for_terminal
    from modelpkg.ops.pull import pull as pull_model

    if all_:
        if name or platform_:
            raise UsageError("--all pulls every pulled name: give no NAME (and no --platform)")
        return _pull_all(insecure, _rate(limit_rate), concurrency, as_json)
    if not name:
        raise UsageError("pull needs a NAME, or --all", "modelpkg pull gemma3:270m")
    ref = config.reference(name)
    platform = None
    if platform_:
        if not re.fullmatch(r"[a-z0-9]+/[a-z0-9_]+", platform_):
            raise UsageError(f"invalid platform {platform_!r}", "write it as os/arch, e.g. linux/amd64")
        platform = tuple(platform_.split("/", 1))
    progress = for_terminal(as_json)
    rate = _rate(limit_rate)
    with _client(ref, insecure, ca_bundle) as client:
        entry = pull_model(open_store(), ref, progress=progress, client=client, platform=platform,
                           workers=concurrency, limit_rate=rate)
        _warnings(client)
    if as_json:
        click.echo(json.dumps({"status": "pulled", "name": entry.name, "digest": str(entry.digest)}))
    else:
        click.echo(f"pulled {short(entry.name)} ({entry.digest.short})", err=True)


def _pull_all(insecure: bool, rate: int | None, concurrency: int | None, as_json: bool) -> None:
    from modelpkg.cli.progress import for_terminal
    from modelpkg.ops.refresh import FAILED, LOCAL, UPDATED, pull_all

    results = pull_all(open_store(), progress=for_terminal(as_json), insecure=insecure, workers=concurrency,
                       limit_rate=rate)
    for r in results:
        if as_json:
            click.echo(json.dumps(r.to_json()))
        elif r.status == LOCAL:
            click.echo(f"{short(r.name)}: local, skipped", err=True)
        elif r.status == UPDATED:
            click.echo(f"{short(r.name)}: updated ({r.local.short} -> {r.remote.short})", err=True)
        elif r.status != FAILED:
            click.echo(f"{short(r.name)}: {r.status}", err=True)
    raise_failures([(short(r.name), r.error) for r in results if r.status == FAILED], "pulls")


@click.command()
@click.option("--insecure", is_flag=True, help=_INSECURE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def outdated(insecure: bool, as_json: bool) -> None:
    """Say which pulled names their registry now names differently (one manifest request each).

    Created, imported and loaded names are local: listed, never checked. A name that cannot be checked
    is reported and the rest are still checked; the exit code then says so.

    \b
    Examples:
      modelpkg outdated
      modelpkg outdated --json | jq -r '.[] | select(.status == "outdated") | .name'
      modelpkg pull --all                       # then bring them up to date
    """
    from modelpkg.ops.refresh import FAILED
    from modelpkg.ops.refresh import outdated as check

    results = check(open_store(), insecure=insecure)
    if as_json:
        emit_json([r.to_json() for r in results])
    else:
        for r in results:
            if r.status != FAILED:
                remote = f"  (registry: {r.remote.short})" if r.status == "outdated" and r.remote else ""
                click.echo(f"{short(r.name):<60} {r.status}{remote}")
    raise_failures([(short(r.name), r.error) for r in results if r.status == FAILED], "checks")


@click.command()
@click.argument("name")
@click.option("--insecure", is_flag=True, help=_INSECURE_HELP)
@click.option("--ca-bundle", type=click.Path(exists=True, dir_okay=False), envvar="MODELPKG_CA_BUNDLE", help=_CA_HELP)
@click.option("--chunked", is_flag=True, help="Upload blobs in PATCH chunks (for registries that need it).")
@click.option("--format", "format_", type=click.Choice(["modelpack", "ollama", "docker"]), default=None,
              help="The artifact dialect to send: CNCF ModelPack (modelpkg's own), Ollama's (for 'ollama pull'), "
              "or Docker Model Runner's (for 'docker model pull'). Default: as stored (ModelPack for what "
              "'modelpkg create' made; a pulled model in the dialect it came in).")
@click.option("--json", "as_json", is_flag=True, help="Print progress as JSON lines on stdout, for scripts.")
def push(name: str, insecure: bool, ca_bundle: str | None, chunked: bool, format_: str | None, as_json: bool) -> None:
    """Push a local model to the registry its name points at.

    To push under another name, copy it to that name first. --format ollama and --format docker send
    the same weights and text blobs with that tool's manifest and config; the local model is unchanged.
    Docker Model Runner's format cannot carry a Go TEMPLATE, SYSTEM, PARAMETERs other than num_ctx, or
    MESSAGEs: push says what it left out.

    \b
    Examples:
      modelpkg push localhost:5000/acme/tiny:q4
      modelpkg cp tiny ghcr.io/acme/tiny:q4 && modelpkg push ghcr.io/acme/tiny:q4
      modelpkg push --format ollama localhost:5000/library/tiny:q4   # then: ollama pull --insecure ...
      modelpkg push --format docker registry.example.com/ai/tiny:q4  # then: docker model pull ...
      modelpkg push --chunked registry.example.com/team/model:v2
    """
    from modelpkg.cli.progress import for_terminal
    from modelpkg.ops.push import push as push_model

    ref = config.reference(name)
    progress = for_terminal(as_json)
    with _client(ref, insecure, ca_bundle) as client:
        notes: list[str] = []
        digest = push_model(open_store(), ref, progress=progress, client=client, chunked=chunked, format=format_,
                            notes=notes)
        _warnings(client)
    for note in notes:
        click.echo(f"Warning: the {format_} format cannot carry {note}; it was left out", err=True)
    if as_json:
        click.echo(json.dumps({"status": "pushed", "name": str(ref), "digest": str(digest), "format": format_,
                               "left_out": notes}))
    else:
        shape = f" as {format_}" if format_ else ""
        click.echo(f"pushed {short(str(ref))}{shape} ({digest})", err=True)


def _host(text: str) -> str:
    """``https://ghcr.io/v2/`` or ``ghcr.io`` -> ``ghcr.io``; validated like a reference's host."""
    from modelpkg.core.errors import InvalidInputError
    from modelpkg.core.reference import mask_password

    host = re.sub(r"^[a-z]+://", "", text.strip()).split("/", 1)[0]
    shown = mask_password(text, host=True)
    try:
        ref = config.reference(f"{host}/x")
    except InvalidInputError as e:
        raise UsageError(f"invalid registry host {shown!r}", "write it as host or host:port") from e
    if ref.host != host:
        raise UsageError(f"invalid registry host {shown!r}",
                         "write it as host or host:port, e.g. ghcr.io")
    return host


@click.command()
@click.argument("host")
@click.option("-u", "--username", help="The user name (prompted for when missing).")
@click.option("-p", "--password", help="The password or token (prefer --password-stdin: this one shows in ps).")
@click.option("--password-stdin", is_flag=True, help="Read the password or token from standard input.")
@click.option("--insecure", is_flag=True, help=_INSECURE_HELP)
@click.option("--ca-bundle", type=click.Path(exists=True, dir_okay=False), envvar="MODELPKG_CA_BUNDLE", help=_CA_HELP)
def login(host: str, username: str | None, password: str | None, password_stdin: bool, insecure: bool,
          ca_bundle: str | None) -> None:
    """Log in to a registry: checks the credentials with it, then saves them (file mode 0600).

    \b
    Examples:
      modelpkg login ghcr.io -u alice --password-stdin < token.txt
      modelpkg login localhost:5000 -u alice
    """
    from modelpkg.registry import credentials
    from modelpkg.registry.client import RegistryClient

    host = _host(host)
    if password and password_stdin:
        raise UsageError("give --password or --password-stdin, not both")
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    if not username:
        username = click.prompt("Username", err=True)
    if not password:
        password = click.prompt("Password", hide_input=True, err=True)
    if not username or not password:
        raise UsageError("a username and a password are needed")
    credential = credentials.Credential(username, password, source="login")
    with RegistryClient(host, insecure=insecure, credentials=credential, ca_bundle=ca_bundle) as client:
        how = client.check_auth()
    path = credentials.save_login(host, credential)
    if how == "none":
        click.echo(f"Warning: {host} did not ask for credentials, so they could not be checked", err=True)
    click.echo(f"Login Succeeded (saved in {path})", err=True)


@click.command()
@click.argument("host")
def logout(host: str) -> None:
    """Forget the credentials 'modelpkg login' saved for a registry.

    \b
    Examples:
      modelpkg logout ghcr.io
    """
    from modelpkg.registry import credentials

    host = _host(host)
    credentials.remove_login(host)
    click.echo(f"Removed login credentials for {host}", err=True)
