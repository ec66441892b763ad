"""The store commands, loaded with the group: ``create``, ``list``, ``show``, ``rm``, ``cp``, ``gc``, ``verify``.

Each parses its options, calls one ``modelpkg.ops`` function and renders the result (``modelpkg.cli.common``).
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from modelpkg.base import config
from modelpkg.cli.common import emit_json, open_store, parse_duration, short, show_summary
from modelpkg.core.errors import UsageError


@click.command()
@click.argument("name")
@click.option("-f", "--file", "modelfile", type=click.Path(dir_okay=False, path_type=Path), default=Path("Modelfile"),
              show_default=True, help="The Modelfile to build.")
@click.option("--link", is_flag=True, help="Hard-link the GGUF into the store instead of copying it (same filesystem "
              "only; editing the source file later would corrupt the stored model).")
@click.option("-q", "--quantize", metavar="TYPE", help="Quantize the F32, F16 or BF16 weights with llama.cpp: "
              "F32, F16, Q8_0, Q4_K_S or Q4_K_M (any case).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def create(name: str, modelfile: Path, link: bool, quantize: str | None, as_json: bool) -> None:
    """Create a model from a Modelfile.

    \b
    Examples:
      modelpkg create gemma3-base -f Modelfile.examples/gemma3-base.Modelfile
      modelpkg create mychat            # reads ./Modelfile
      modelpkg create mymodel -f Modelfile --quantize q4_K_M   # FROM an F16 GGUF
    """
    from modelpkg.cli.progress import for_terminal
    from modelpkg.core.errors import NotFoundError, StoreError
    from modelpkg.ops.create import create as create_model

    ref = config.reference(name)
    try:
        text = modelfile.read_text(encoding="utf-8-sig")
    except FileNotFoundError as e:
        raise NotFoundError(f"Modelfile not found: {modelfile}", "pass one with -f PATH") from e
    except UnicodeDecodeError as e:
        raise UsageError(f"{modelfile} is not UTF-8 text") from e
    except OSError as e:
        raise StoreError(f"cannot read {modelfile}: {e.strerror}") from e
    progress = for_terminal()
    result = create_model(open_store(), ref, text, modelfile.resolve().parent, link=link, progress=progress,
                          resolve_name=config.reference, quantize=quantize)
    if as_json:
        emit_json({"name": result.entry.name, "digest": str(result.entry.digest),
                   "layers": [layer.to_json() for layer in result.layers]})
    else:
        click.echo(f"created {short(result.entry.name)} ({result.entry.digest.short})", err=True)


@click.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def list_(as_json: bool) -> None:
    """List the models in the store.

    \b
    Examples:
      modelpkg list
      modelpkg list --json | jq -r '.[].name'
    """
    from modelpkg.cli.progress import human_bytes
    from modelpkg.ops.models import list_models

    models = list_models(open_store(), short)
    if as_json:
        emit_json([{"name": m.name, "id": m.digest.short, "digest": str(m.digest), "size": m.size,
                    "modified": m.modified} for m in models])
        return
    rows = [("NAME", "ID", "SIZE", "MODIFIED")]
    rows += [(m.name, m.digest.short, human_bytes(m.size), _ago(m.modified)) for m in models]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        click.echo(f"{r[0]:<{widths[0]}}    {r[1]:<{widths[1]}}    {r[2]:<{widths[2]}}    {r[3]}".rstrip())


def _ago(timestamp: float) -> str:
    if not timestamp:
        return "unknown"
    seconds = max(time.time() - timestamp, 0)
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = int(seconds // size)
            return f"{n} {unit}{'s' if n > 1 else ''} ago"
    return "just now"


@click.command()
@click.argument("name")
@click.option("--modelfile", "part", flag_value="modelfile", help="Print a Modelfile that recreates the model.")
@click.option("--parameters", "part", flag_value="parameters", help="Print the parameters.")
@click.option("--template", "part", flag_value="template", help="Print the prompt template.")
@click.option("--system", "part", flag_value="system", help="Print the system prompt.")
@click.option("--license", "part", flag_value="license", help="Print the license.")
@click.option("--json", "as_json", is_flag=True, help="Print everything as one JSON object.")
def show(name: str, part: str | None, as_json: bool) -> None:
    """Show a model's details, or one part of it.

    \b
    Examples:
      modelpkg show gemma3-base
      modelpkg show gemma3-base --modelfile > Modelfile
      modelpkg show gemma3-base --json | jq .parameters
    """
    from modelpkg.core import modelfile as mf
    from modelpkg.ops.models import describe, modelfile_for

    ref = config.reference(name)
    store = open_store()
    details = describe(store, ref)
    if as_json:
        data = details.to_json()
        data["name"] = short(details.name)
        data["signatures"] = _signatures(store, ref)
        emit_json(data)
    elif part == "modelfile":
        click.echo(modelfile_for(details, short(details.name)), nl=False)
    elif part == "parameters":
        for key in sorted(details.parameters):
            value = details.parameters[key]
            for item in value if isinstance(value, list) else [value]:
                click.echo(f"{key:<20} {mf.format_parameter_value(item)}")
    elif part in ("template", "system"):
        click.echo(getattr(details, part) or "")
    elif part == "license":
        click.echo("\n\n".join(details.licenses))
    else:
        show_summary(details, _signatures(store, ref))


def _signatures(store, ref) -> list[dict]:
    """The signatures pull kept with the model, each with the trust-policy key that verifies it (if any)."""
    entry = store.resolve(ref)
    if not entry.attached:
        return []
    from modelpkg.ops.sign import signers_for_show

    return signers_for_show(store, entry)


@click.command()
@click.argument("names", nargs=-1, required=True)
def rm(names: tuple[str, ...]) -> None:
    """Remove models, and the blobs no other model uses.

    \b
    Examples:
      modelpkg rm gemma3-base
      modelpkg rm a b c
    """
    from modelpkg.cli.progress import human_bytes
    from modelpkg.ops.models import remove

    removed, plan = remove(open_store(), [config.reference(n) for n in names])
    for entry in removed:
        click.echo(f"deleted '{short(entry.name)}'", err=True)
    if plan.bytes:
        click.echo(f"freed {human_bytes(plan.bytes)}", err=True)


@click.command()
@click.argument("source")
@click.argument("destination")
def cp(source: str, destination: str) -> None:
    """Copy a model to a new name (no data is copied; the blobs are shared).

    \b
    Examples:
      modelpkg cp gemma3-base localhost:5000/acme/gemma3:base
    """
    from modelpkg.ops.models import copy

    entry = copy(open_store(), config.reference(source), config.reference(destination))
    click.echo(f"copied '{source}' to '{short(entry.name)}'", err=True)


@click.command()
@click.option("--dry-run", is_flag=True, help="Only print what would be deleted.")
@click.option("--grace", default="1h", show_default=True,
              help="Keep unreferenced blobs younger than this (protects work in progress).")
@click.option("--partial-grace", default="7d", show_default=True,
              help="Keep interrupted downloads younger than this, so pulls can resume.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def gc(dry_run: bool, grace: str, partial_grace: str, as_json: bool) -> None:
    """Delete blobs no model references, and stale partial files.

    \b
    Examples:
      modelpkg gc --dry-run
      modelpkg gc --grace 0
    """
    from modelpkg.cli.progress import human_bytes

    plan = open_store().gc(parse_duration(grace), parse_duration(partial_grace), dry_run=dry_run)
    if as_json:
        emit_json({"dry_run": dry_run, "bytes": plan.bytes,
                   "blobs": [{"digest": str(d), "size": s} for d, s in plan.blobs],
                   "partials": [{"path": str(p), "size": s} for p, s in plan.partials]})
        return
    verb = "would delete" if dry_run else "deleted"
    for digest, size in plan.blobs:
        click.echo(f"{verb} blob {digest} ({human_bytes(size)})")
    for path, size in plan.partials:
        click.echo(f"{verb} partial file {path.name} ({human_bytes(size)})")
    click.echo(f"{'would free' if dry_run else 'freed'} {human_bytes(plan.bytes)} "
               f"({len(plan.blobs)} blobs, {len(plan.partials)} partial files)", err=True)


@click.command()
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the problems as JSON.")
def verify(name: str | None, as_json: bool) -> None:
    """Re-hash blobs and report any whose content does not match its digest.

    With NAME, checks that model's manifest, config and layers; without, every blob in the store.

    \b
    Examples:
      modelpkg verify
      modelpkg verify gemma3-base
    """
    from modelpkg.cli.progress import for_terminal
    from modelpkg.core.errors import IntegrityError

    store = open_store()
    digests = None
    if name:
        entry, manifest = store.manifest(config.reference(name))
        digests = [entry.digest, *(d.digest for d in manifest.blobs())]
    problems = store.verify(digests, progress=for_terminal())
    if as_json:
        emit_json({"ok": not problems, "problems": [{"digest": str(d), "problem": p} for d, p in problems]})
    for digest, problem in problems:
        if not as_json:
            click.echo(f"{digest}: {problem}")
    if problems:
        raise IntegrityError(f"{len(problems)} blob(s) failed verification",
                             "pull the affected models again (or rm them) to repair the store")
    if not as_json:
        click.echo("all blobs verified", err=True)
