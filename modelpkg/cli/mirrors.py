"""The ``mirrors`` command: show the pull mirrors configured in config.toml (loaded lazily by ``modelpkg.cli.app``).

CLI layer: imports ``modelpkg.base.config`` and ``modelpkg.registry.mirrors``.
"""

from __future__ import annotations

import json

import click

from modelpkg.base import config


@click.command()
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout, for scripts.")
def mirrors(name: str | None, as_json: bool) -> None:
    """Show the pull mirrors of config.toml, or where NAME would be pulled from.

    The file is $MODELPKG_CONFIG_FILE, else config.toml in the config dir. Mirrors are tried in
    order before the upstream, for pulls only; see 'Mirrors' in the README for the format.

    \b
    Examples:
      modelpkg mirrors
      modelpkg mirrors gemma3@sha256:3f4c...
      modelpkg mirrors --json ghcr.io/acme/tiny:q4 | jq -r '.sources[].name'
    """
    from modelpkg.registry import mirrors as mirror_config

    path = mirror_config.config_path()
    cfg = mirror_config.load()
    if name is not None:
        sources = cfg.sources_for(config.reference(name))
        if as_json:
            click.echo(json.dumps({"config": str(path), "name": name, "sources": [
                {"name": s.name, "mirror": s.mirror, "insecure": s.insecure, "pull-from-mirror": s.pull_from,
                 "resolves-tags": s.serves_tags} for s in sources]}))
            return
        for source in sources:
            role = f"mirror ({source.pull_from}{', insecure' if source.insecure else ''})" if source.mirror \
                else "upstream"
            click.echo(f"{source.name}\t{role}")
        return
    if as_json:
        click.echo(json.dumps({"config": str(path), "registries": [
            {"prefix": r.prefix, "mirrors": [{"location": m.location, "insecure": m.insecure,
                                              "pull-from-mirror": m.pull_from} for m in r.mirrors]}
            for r in cfg.registries]}))
        return
    if not cfg.registries:
        click.echo(f"no mirrors configured ({path})", err=True)
        return
    click.echo(f"# {path}", err=True)
    for entry in cfg.registries:
        for mirror in entry.mirrors or ():
            insecure = ", insecure" if mirror.insecure else ""
            click.echo(f"{entry.prefix}\t{mirror.location}\t{mirror.pull_from}{insecure}")
        if not entry.mirrors:
            click.echo(f"{entry.prefix}\t-\t(no mirrors)")
