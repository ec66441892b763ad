"""The interop commands: ``import-ollama``, ``import-hf``, ``import-lmstudio``, ``export-ollama``, ``save``,
``load``, ``export`` (loaded lazily).

Thin click commands: parse options, build the store and progress drawer, call one function of
``modelpkg.ops.interop``, render the result (data on stdout, messages on stderr, ``--json`` for scripts).

CLI layer: imports ``modelpkg.base.config``, ``modelpkg.cli.progress``, ``interop``, ``ollama_store``, ``store``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from modelpkg.base import config
from modelpkg.cli.common import emit_json, open_store, raise_failures, short
from modelpkg.core.errors import StoreError, UsageError

_MODELS_HELP = "The Ollama models folder (default: $OLLAMA_MODELS, else ~/.ollama/models)."
_COPY_HELP = "Copy the weights instead of sharing them (reflink, else hard link, is the default)."



def _ollama(models: Path | None):
    from modelpkg.store.ollama import OllamaStore, default_models_dir

    return OllamaStore(models or default_models_dir())




def _methods(methods: dict[str, int]) -> str:
    words = {"present": "already there", "reflink": "reflinked", "link": "hard-linked", "copy": "copied"}
    return ", ".join(f"{n} {words.get(k, k)}" for k, n in sorted(methods.items())) or "no blobs"


@click.command(name="import-ollama")
@click.argument("names", nargs=-1)
@click.option("--models", type=click.Path(file_okay=False, path_type=Path), help=_MODELS_HELP)
@click.option("--copy", "copy_", is_flag=True, help=_COPY_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def import_ollama(names: tuple[str, ...], models: Path | None, copy_: bool, as_json: bool) -> None:
    """Import models from Ollama's models folder, under the same names (no NAME: all of them).

    The weights are not copied where the filesystem allows: a reflink shares the blocks copy-on-write
    (btrfs, XFS); otherwise a hard link shares the file itself. Caveat: with a hard link an in-place edit
    of either file would change both; Ollama never edits a blob in place (it writes new files and renames
    them), so this is safe in practice. --copy makes independent copies. Every blob is hashed and must
    match its digest; if any blob is missing or damaged, no model is imported.

    \b
    Examples:
      modelpkg import-ollama                      # every model Ollama has
      modelpkg import-ollama gemma3:270m qwen3    # just these
      modelpkg import-ollama --models /usr/share/ollama/.ollama/models --copy
    """
    from modelpkg.cli.progress import for_terminal
    from modelpkg.ops.interop import LINK_CAVEAT
    from modelpkg.ops.interop import import_ollama as run

    result = run(open_store(), _ollama(models), list(names) or None, allow_link=not copy_, progress=for_terminal())
    if as_json:
        emit_json(result.to_json())
        return
    for m in result.models:
        click.echo(f"imported {m.ollama_name} as {short(m.name)} ({m.digest.short})", err=True)
    if not result.models:
        click.echo("no models found", err=True)
    click.echo(f"blobs: {_methods(result.methods)}", err=True)
    if result.methods.get("link"):
        click.echo(f"Note: {LINK_CAVEAT}", err=True)


def _report_imports(report, as_json: bool) -> None:
    """Print what ``ops.imports.import_files`` did; fail (with the first failure's exit code) if any file failed."""
    if as_json:
        emit_json(report.to_json())
    else:
        words = {"present": "already there", "reflink": "reflinked", "link": "hard-linked", "copy": "copied"}
        for m in report.models:
            click.echo(f"imported {m.path} as {short(m.name)} ({words.get(m.how, m.how)})", err=True)
        for path, why in report.skipped:
            click.echo(f"skipped {path}: {why}", err=True)
        if not report.models and not report.failed:
            click.echo("no GGUF files found", err=True)
        if any(m.how == "link" for m in report.models):
            click.echo("Note: hard links share the file with the other tool: do not edit it in place; "
                       "--copy makes independent copies", err=True)
    raise_failures(report.failed, "files")


@click.command(name="import-hf")
@click.argument("repos", nargs=-1)
@click.option("--cache", type=click.Path(file_okay=False, path_type=Path),
              help="The hub cache (default: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub).")
@click.option("--copy", "copy_", is_flag=True, help="Copy the weights instead of sharing them.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def import_hf(repos: tuple[str, ...], cache: Path | None, copy_: bool, as_json: bool) -> None:
    """Import the GGUFs in Hugging Face's download cache, as hf.co/USER/REPO:QUANT (no REPO: all of them).

    Each file is reflinked, else hard-linked, into the store (no copy; --copy to copy), hashed once, and
    made a model as 'create' makes one (its chat template is the GGUF's own). The name is the one 'pull'
    gives it: the quantization from the file name (-Q4_K_M.gguf -> Q4_K_M), else the file's stem.
    Projector (mmproj) files and split GGUFs are skipped, and said so.

    \b
    Examples:
      hf download bartowski/Llama-3.2-1B-Instruct-GGUF --include '*Q4_K_M*'
      modelpkg import-hf                                     # everything in the cache
      modelpkg import-hf bartowski/Llama-3.2-1B-Instruct-GGUF
      modelpkg run hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M
    """
    from modelpkg.cli.progress import for_terminal
    from modelpkg.ops import imports

    found, skipped = imports.hf_cache_files(cache or config.hf_hub_cache(), list(repos) or None)
    report = imports.import_files(open_store(), found, allow_link=not copy_, progress=for_terminal())
    report.skipped[:0] = skipped
    _report_imports(report, as_json)


@click.command(name="import-lmstudio")
@click.argument("repos", nargs=-1)
@click.option("--models", type=click.Path(file_okay=False, path_type=Path),
              help="LM Studio's models folder (default: ~/.lmstudio/models, else ~/.cache/lm-studio/models).")
@click.option("--copy", "copy_", is_flag=True, help="Copy the weights instead of sharing them.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def import_lmstudio(repos: tuple[str, ...], models: Path | None, copy_: bool, as_json: bool) -> None:
    """Import the GGUFs in LM Studio's models folder (PUBLISHER/MODEL/*.gguf) as hf.co/PUBLISHER/MODEL:QUANT.

    As import-hf: reflink, else hard link (--copy to copy), hashed once, the GGUF's own chat template.

    \b
    Examples:
      modelpkg import-lmstudio
      modelpkg import-lmstudio lmstudio-community/Meta-Llama-3.1-8B-Instruct-GGUF
      modelpkg import-lmstudio --models /data/lmstudio/models --copy
    """
    from modelpkg.cli.progress import for_terminal
    from modelpkg.ops import imports

    found, skipped = imports.lmstudio_files(models or imports.default_lmstudio_dir(), list(repos) or None)
    report = imports.import_files(open_store(), found, allow_link=not copy_, progress=for_terminal())
    report.skipped[:0] = skipped
    _report_imports(report, as_json)


@click.command(name="export-ollama")
@click.argument("name")
@click.option("--as", "as_name", metavar="OLLAMA_NAME", help="The name in Ollama (default: the same name).")
@click.option("--models", type=click.Path(file_okay=False, path_type=Path), help=_MODELS_HELP)
@click.option("--copy", "copy_", is_flag=True, help=_COPY_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def export_ollama(name: str, as_name: str | None, models: Path | None, copy_: bool, as_json: bool) -> None:
    """Write a model into Ollama's models folder, so 'ollama list' and 'ollama run' see it.

    The manifest is Ollama's format (a model pulled or imported from Ollama keeps its own bytes); the
    blobs are reflinked, else hard-linked, else copied (same caveat as import-ollama: Ollama never edits
    blobs in place), verified, and the manifest is written last.

    \b
    Examples:
      modelpkg export-ollama tiny                       # -> tiny:latest in Ollama
      modelpkg export-ollama localhost:5000/acme/tiny:q4 --as acme/tiny:q4
      OLLAMA_MODELS=/srv/ollama modelpkg export-ollama gemma3:270m --copy
    """
    from modelpkg.cli.progress import for_terminal
    from modelpkg.ops.interop import LINK_CAVEAT
    from modelpkg.ops.interop import export_ollama as run

    result = run(open_store(), config.reference(name), _ollama(models), as_name=as_name, allow_link=not copy_,
                 progress=for_terminal())
    if as_json:
        emit_json(result.to_json())
        return
    click.echo(f"exported {short(result.name)} to Ollama as {result.ollama_name} ({result.digest.hex[:12]})", err=True)
    click.echo(f"blobs: {_methods(result.methods)}", err=True)
    for title in result.dropped:
        click.echo(f"Warning: layer {title} has no Ollama equivalent and was left out", err=True)
    if result.methods.get("link"):
        click.echo(f"Note: {LINK_CAVEAT}", err=True)


@click.command()
@click.argument("names", nargs=-1, required=True)
@click.option("-o", "--output", required=True, metavar="FILE", help="The archive to write; '-' for stdout.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary (not with -o -).")
def save(names: tuple[str, ...], output: str, as_json: bool) -> None:
    """Save models to an OCI image layout archive, for machines without network access.

    The archive is what 'skopeo copy oci-archive:FILE:NAME ...' and podman read; 'modelpkg load' brings
    it back in. It is streamed from the store's files: memory use does not grow with the model.

    \b
    Examples:
      modelpkg save tiny gemma3:270m -o models.tar
      modelpkg save tiny -o - | ssh airgapped modelpkg load
      skopeo copy oci-archive:models.tar:registry.ollama.ai/library/tiny:latest dir:/tmp/tiny
    """
    from modelpkg.cli.progress import for_terminal
    from modelpkg.ops.interop import save as run

    refs = [config.reference(n) for n in names]
    progress = for_terminal()
    if output == "-":
        if as_json:
            raise UsageError("--json cannot share stdout with the archive (-o -)")
        if sys.stdout.isatty():
            raise UsageError("refusing to write an archive to a terminal", "redirect stdout, or use -o FILE")
        result = run(open_store(), refs, sys.stdout.buffer, progress=progress)
        sys.stdout.buffer.flush()
    else:
        from modelpkg.base import fsutil

        target = Path(output)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.partial")
        try:
            with open(tmp, "wb") as f:
                result = run(open_store(), refs, f, progress=progress)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except OSError as e:
            fsutil.unlink_quietly(tmp)
            raise fsutil.os_error(e, target, "writing") from e
        except BaseException:
            fsutil.unlink_quietly(tmp)
            raise
    if as_json:
        emit_json(result.to_json())
    else:
        click.echo(f"saved {', '.join(short(n) for n in result.names)}: {result.blobs} blobs, "
                   f"{result.bytes} bytes", err=True)



@click.command()
@click.option("-i", "--input", "input_", default="-", show_default=True, metavar="FILE",
              help="The archive to read; '-' for stdin.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def load(input_: str, as_json: bool) -> None:
    """Load models from an OCI image layout archive (written by 'modelpkg save', skopeo or podman).

    Every blob is checked (size and digest) as it streams in; links, absolute or '..' names and oversized
    manifests are refused; the names are written last, so a damaged archive changes nothing.

    \b
    Examples:
      modelpkg load -i models.tar
      ssh builder modelpkg save tiny -o - | modelpkg load
      skopeo copy docker://localhost:5000/acme/tiny:q4 oci-archive:tiny.tar:acme/tiny:q4 && modelpkg load -i tiny.tar
    """
    from modelpkg.cli.progress import for_terminal
    from modelpkg.ops.interop import load as run

    progress = for_terminal()
    if input_ == "-":
        if sys.stdin.isatty():
            raise UsageError("no archive on stdin", "pass -i FILE, or pipe one in")
        result = run(open_store(), sys.stdin.buffer, resolve_name=config.reference, progress=progress)
    else:
        try:
            f = open(input_, "rb")  # noqa: SIM115 - closed by the `with f` below, once opening has succeeded
        except FileNotFoundError as e:
            from modelpkg.core.errors import NotFoundError

            raise NotFoundError(f"archive not found: {input_}") from e
        except OSError as e:
            raise StoreError(f"cannot read {input_}: {e.strerror}") from e
        with f:
            result = run(open_store(), f, resolve_name=config.reference, progress=progress)
    if as_json:
        emit_json(result.to_json())
        return
    for name in result.names:
        note = " (replaced)" if name in result.replaced else ""
        click.echo(f"loaded {short(name)}{note}", err=True)
    if result.unnamed:
        click.echo(f"Warning: {result.unnamed} unnamed image(s) in the archive were not loaded", err=True)


@click.command()
@click.argument("name")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option("--copy", "copy_", is_flag=True, help="Copy the weights instead of reflinking or hard-linking them.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def export(name: str, folder: Path, copy_: bool, as_json: bool) -> None:
    """Write a model's files into FOLDER under their file names, for other tools.

    model.gguf (or the layer's own file name), template, system.txt, params.json, messages.json, LICENSE...
    for llama-server, LM Studio and the like. The weights are reflinked, else hard-linked (do not edit the
    exported GGUF in place: with a hard link that would change the stored model; 'modelpkg verify' would
    report it), else copied; text files are always copied. File names from the manifest are sanitised.

    \b
    Examples:
      modelpkg export gemma3:270m ./gemma
      llama-server -m ./gemma/model.gguf
      modelpkg export --copy tiny /mnt/usb/tiny
    """
    from modelpkg.cli.progress import for_terminal
    from modelpkg.ops.interop import export_files

    result = export_files(open_store(), config.reference(name), folder, allow_link=not copy_, progress=for_terminal())
    if as_json:
        emit_json(result.to_json())
        return
    for note in result.notes:
        click.echo(f"Warning: {note}", err=True)
    for f in result.files:
        click.echo(str(result.folder / f.path))
    click.echo(f"exported {short(result.name)} to {result.folder}", err=True)
