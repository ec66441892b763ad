"""What the command modules share: the store, short names, JSON output, durations, a model's summary.

Every command module imports this, never ``modelpkg.cli.app`` (the group loads them, so that would be a cycle).
"""

from __future__ import annotations

import json

import click

from modelpkg.base import config
from modelpkg.core.errors import ModelpkgError, UsageError


def open_store():
    from modelpkg.store import Store

    return Store(config.home())


def short(name: str) -> str:
    """The display form of a full name from the store."""
    try:
        return config.reference(name).short(config.default_registry())
    except ModelpkgError:
        return name


def emit_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, ensure_ascii=False))


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``1h``, ``7d`` -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = text.strip().lower()
    try:
        if text and text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError as e:
        raise UsageError(f"invalid duration {text!r}", "use a number of seconds or 30s, 15m, 1h, 7d") from e


def show_summary(details, signatures: list[dict] = ()) -> None:
    from modelpkg.core import modelfile as mf

    click.echo("  Model")
    for label, value in (("architecture", details.architecture), ("parameters", details.parameters_size),
                         ("context length", details.context_length), ("quantization", details.quantization)):
        if value:
            click.echo(f"    {label:<20}{value}")
    if details.weight_format and details.weight_format != "gguf":  # safetensors: kept, llama.cpp cannot run it
        click.echo(f"    {'format':<20}{details.weight_format}")
    if details.shards:
        click.echo(f"    {'split':<20}{len(details.shards)} GGUF files")
    if signatures:
        who = sorted({f"{s['key']} ({s['fingerprint'][:19]})" for s in signatures if s["verified"]})
        unknown = sum(1 for s in signatures if not s["verified"])
        text = ", ".join(who + ([f"{unknown} signature(s) by keys the trust policy does not name"] if unknown else []))
        click.echo(f"    {'signed by':<20}{text}")
    _files("Shards", details.shards)
    _files("Projector", details.projectors)
    if details.parameters:
        click.echo("\n  Parameters")
        for key in sorted(details.parameters):
            value = details.parameters[key]
            for item in value if isinstance(value, list) else [value]:
                click.echo(f"    {key:<20}{mf.format_parameter_value(item)}")
    for title, text in (("System", details.system), ("Template", details.template)):
        if text:
            click.echo(f"\n  {title}")
            for line in text.splitlines()[:8]:
                click.echo(f"    {line}")
    if details.licenses:
        click.echo("\n  License")
        for line in details.licenses[0].splitlines()[:4]:
            click.echo(f"    {line}")
    click.echo()


def _files(title: str, layers) -> None:
    """A section listing weight files by name (the shards of a split GGUF, projectors) with their sizes."""
    from modelpkg.cli.progress import human_bytes

    if layers:
        click.echo(f"\n  {title}")
        for n, layer in enumerate(layers, 1):
            click.echo(f"    {(layer.title or f'file {n}'):<40}{human_bytes(layer.size):>10}  {layer.digest.short}")


def raise_failures(failed: list, what: str) -> None:
    """After a command that goes on past failures: ``failed`` is ``[(subject, ModelpkgError)]``. Prints all
    but the first as ``failed SUBJECT: message`` and raises one error for the first, with its exit code."""
    if not failed:
        return
    for subject, e in failed[1:]:
        click.echo(f"failed {subject}: {e.message}", err=True)
    subject, first = failed[0]
    text = (f"{subject}: {first.message}" if len(failed) == 1 else
            f"{len(failed)} {what} failed; the first, {subject}: {first.message}")
    error = ModelpkgError(text, first.hint)
    error.exit_code = first.exit_code
    raise error
