"""The ``modelpkg`` command line: a thin click layer over the library.

Each command parses its options, builds what it needs (the store, a progress drawer), calls one library
function and renders the result: data on stdout, messages on stderr, ``--json`` for scripts. Every
``ModelpkgError`` becomes ``Error: <message>`` plus a hint and the error's exit code; never a traceback
(``MODELPKG_DEBUG=1`` shows it).

The store's commands (``modelpkg.cli.models``) load with the group; the others need heavy modules
(requests, llama_cpp) and load only when called (``LAZY_COMMANDS``), so ``modelpkg list`` starts fast.
Command modules share ``modelpkg.cli.common`` and never import this module back.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import traceback

import click

from modelpkg import __version__
from modelpkg.base import config
from modelpkg.cli import models
from modelpkg.core.errors import ModelpkgError

# name -> "module:attribute"; a module that is not installed yet simply does not offer its commands
LAZY_COMMANDS: dict[str, str] = {
    "pull": "modelpkg.cli.registry:pull",
    "outdated": "modelpkg.cli.registry:outdated",
    "push": "modelpkg.cli.registry:push",
    "login": "modelpkg.cli.registry:login",
    "logout": "modelpkg.cli.registry:logout",
    "run": "modelpkg.cli.run:run",
    "keygen": "modelpkg.cli.sign:keygen",
    "sign": "modelpkg.cli.sign:sign",
    "verify-signature": "modelpkg.cli.sign:verify_signature",
    "import-ollama": "modelpkg.cli.interop:import_ollama",
    "import-hf": "modelpkg.cli.interop:import_hf",
    "import-lmstudio": "modelpkg.cli.interop:import_lmstudio",
    "export-ollama": "modelpkg.cli.interop:export_ollama",
    "save": "modelpkg.cli.interop:save",
    "load": "modelpkg.cli.interop:load",
    "export": "modelpkg.cli.interop:export",
    "serve": "modelpkg.cli.serve:serve",
    "mirrors": "modelpkg.cli.mirrors:mirrors",
    "ps": "modelpkg.cli.ps:ps",
    "stop": "modelpkg.cli.ps:stop",
}


class ModelpkgGroup(click.Group):
    """A group that loads some commands lazily and turns ModelpkgError into one clean line."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        lazy = [name for name, target in LAZY_COMMANDS.items() if _module_exists(target.split(":")[0])]
        return sorted(set(super().list_commands(ctx)) | set(lazy))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        if command is None and name in LAZY_COMMANDS and _module_exists(LAZY_COMMANDS[name].split(":")[0]):
            module, attribute = LAZY_COMMANDS[name].split(":")
            command = getattr(importlib.import_module(module), attribute)
        return command

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ModelpkgError as e:
            _report(e)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            ctx.exit(130)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except Exception as e:  # noqa: BLE001 - the last line of defence: one line, not a traceback
            if config.debug():
                traceback.print_exc()
            click.echo(f"Error: internal error: {type(e).__name__}: {str(e)[:300]}", err=True)
            click.echo("Hint: this is a bug in modelpkg; run with MODELPKG_DEBUG=1 and report the traceback", err=True)
            ctx.exit(70)


def _module_exists(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _report(e: ModelpkgError) -> None:
    if config.debug():
        traceback.print_exception(e)
    click.echo(f"Error: {e.message}", err=True)
    if e.hint:
        click.echo(f"Hint: {e.hint}", err=True)


@click.group(cls=ModelpkgGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="modelpkg")
def cli() -> None:
    """Package, move and run local LLMs the way Docker does programs.

    \b
    A Modelfile (Ollama's syntax) becomes an OCI artifact in a local store;
    push and pull move it to and from any OCI registry; run chats with it.

    \b
    Examples:
      modelpkg create tiny -f Modelfile
      modelpkg list
      modelpkg push localhost:5000/acme/tiny:q4
      modelpkg run tiny "Why is the sky blue?"

    The store lives in MODELPKG_HOME (default: the user data folder).
    """


for _command in (models.create, models.list_, models.show, models.rm, models.cp, models.gc, models.verify):
    cli.add_command(_command)


def main() -> None:
    cli.main(prog_name="modelpkg")


if __name__ == "__main__":
    sys.exit(main())
