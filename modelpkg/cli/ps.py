"""``modelpkg ps`` and ``modelpkg stop NAME``: the models a running ``modelpkg serve`` holds in memory, and
unloading one (Ollama's ``ollama ps`` / ``ollama stop``: ``/api/ps``, and a request with ``keep_alive: 0``).

The server is found as ``run`` finds it (``remote.serve_url``: ``MODELPKG_HOST``, else ``OLLAMA_HOST``).
CLI layer: imports click, ``cli.common``, ``cli.progress`` (sizes) and ``cli.remote``.
"""

from __future__ import annotations

from datetime import datetime, timezone

import click

from modelpkg.base import config
from modelpkg.cli.common import emit_json
from modelpkg.cli.progress import human_bytes
from modelpkg.cli.remote import ServeClient, serve_url


def _client() -> ServeClient:
    return ServeClient(serve_url(), config.serve_token())


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the server's answer as JSON.")
def ps(as_json: bool) -> None:
    """List the models a running modelpkg serve has loaded.

    The server is MODELPKG_HOST (else OLLAMA_HOST, else 127.0.0.1:11434).

    \b
    Examples:
      modelpkg ps
      MODELPKG_HOST=127.0.0.1:8080 modelpkg ps --json
    """
    answer = _client().json("GET", "/api/ps")
    models = answer.get("models") or []
    if as_json:
        emit_json({"models": models})
        return
    rows = [("NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL")]
    for m in models:
        rows.append((m.get("name", ""), str(m.get("digest", ""))[:12], human_bytes(int(m.get("size") or 0)),
                     "100% CPU" if not m.get("size_vram") else "GPU", str(m.get("context_length", "")),
                     until(m.get("expires_at", ""))))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("    ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def until(expires_at: str, now: datetime | None = None) -> str:
    """``expires_at`` as Ollama's ps shows it: ``4 minutes from now``, ``Forever``, ``Stopping...``."""
    try:
        when = datetime.fromisoformat(expires_at.replace("Z", "+00:00"))
    except ValueError:
        return expires_at
    if when.year > 2300:
        return "Forever"
    seconds = (when - (now or datetime.now(timezone.utc))).total_seconds()
    if seconds <= 0:
        return "Stopping..."
    for unit, size in (("hour", 3600), ("minute", 60), ("second", 1)):
        if seconds >= size or unit == "second":
            count = int(seconds // size)
            return f"{count} {unit}{'s' if count != 1 else ''} from now"
    return expires_at


@click.command()
@click.argument("name")
def stop(name: str) -> None:
    """Unload a model from a running modelpkg serve.

    \b
    Examples:
      modelpkg stop gemma3-chat
    """
    _client().json("POST", "/api/generate", {"model": name, "keep_alive": 0})
