"""``modelpkg serve``: Ollama's and OpenAI's HTTP APIs over the store (``modelpkg.server.app``).

CLI layer: parses options, builds the server, runs it until Ctrl-C.

On a non-loopback address without a token it starts, with a warning on stderr (``app.exposure_warning``),
rather than refusing: ``--host 0.0.0.0`` is how a server in a container is reached at all (Docker, Compose,
Kubernetes, Open WebUI's recipe), and whether that is open to a network is decided by the port mapping
outside, which the process cannot see. A refusal would make the common safe case type a flag whose name
says "insecure", and that teaches people to type it everywhere.
"""

from __future__ import annotations

import signal

import click

from modelpkg.cli.common import open_store
from modelpkg.core.errors import UsageError


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0 for every interface: set a --token then; without one "
                   "serve warns that anyone who can reach it can use it).")
@click.option("--port", default=11434, type=click.IntRange(0, 65535), show_default=True,
              help="Port to listen on (Ollama's; 0 picks a free one).")
@click.option("--token", envvar="MODELPKG_SERVE_TOKEN", metavar="TOKEN",
              help="Require 'Authorization: Bearer TOKEN' on every endpoint but HEAD / and GET /api/version "
                   "(or set MODELPKG_SERVE_TOKEN).")
@click.option("--keep-alive", "keep_alive", default="5m", show_default=True, metavar="DURATION",
              help="How long a model stays loaded after a request when the request does not say "
                   "(seconds, or a Go duration: 30s, 5m, 1h30m; -1 forever; 0 unloads at once).")
@click.option("--max-loaded", "max_loaded", default=3, type=click.IntRange(1), show_default=True, metavar="N",
              help="Models kept in memory at once; loading one more unloads the least recently used idle one.")
@click.option("--parallel", "parallel", type=click.IntRange(1), metavar="N",
              help="Requests each loaded model answers at once, decoded together, each with num_ctx of context "
                   "(default MODELPKG_NUM_PARALLEL, else OLLAMA_NUM_PARALLEL, else 4 where 4 contexts fit in memory).")
@click.option("--max-queue", "max_queue", type=click.IntRange(0), metavar="N",
              help="Requests that may wait for a free slot; one more gets 503 (default MODELPKG_MAX_QUEUE, "
                   "else OLLAMA_MAX_QUEUE, else 512).")
@click.option("--origins", envvar="MODELPKG_ORIGINS", metavar="LIST", default="",
              help="More browser origins allowed to call the API, comma-separated, * as a wildcard "
                   "(e.g. 'https://app.example.com,chrome-extension://*'; '*' allows any web page). This "
                   "machine's own pages and desktop-app schemes are always allowed (or set MODELPKG_ORIGINS).")
def serve(host: str, port: int, token: str | None, keep_alive: str, max_loaded: int, origins: str,
          parallel: int | None = None, max_queue: int | None = None) -> None:
    """Serve the store over Ollama's API and OpenAI's /v1 API.

    Ollama's clients, Open WebUI and OpenAI's SDKs work unchanged against it. Models load on first use
    and stay in memory for the keep-alive time; each answers up to --parallel requests at once, decoded
    together, and queues the rest.
    Browsers may call it only from this machine's pages and desktop apps unless --origins allows more;
    on a loopback address, requests whose Host is not this machine are refused (DNS rebinding).

    \b
    Examples:
      modelpkg serve
      modelpkg serve --port 8080 --keep-alive 30m
      modelpkg serve --parallel 8 --max-queue 64
      MODELPKG_SERVE_TOKEN=s3cret modelpkg serve --host 0.0.0.0
      modelpkg serve --origins 'https://chat.example.com,chrome-extension://*'
      curl http://127.0.0.1:11434/api/tags
      OLLAMA_HOST=http://127.0.0.1:11434 python -c "import ollama; print(ollama.list())"
    """
    from modelpkg.base import config
    from modelpkg.server.app import exposure_warning, make_server
    from modelpkg.server.cache import parse_keep_alive
    from modelpkg.server.http import stderr_log

    seconds = parse_keep_alive(keep_alive)  # seconds or a Go duration (1h30m); negative: forever
    parallel = parallel if parallel is not None else config.num_parallel()  # a bad value: one line, now
    max_queue = max_queue if max_queue is not None else config.max_queue()
    store = open_store()
    store.init()
    try:
        server = make_server(store, host, port, token=token, keep_alive=seconds, max_loaded=max_loaded,
                             log=stderr_log, origins=tuple(o.strip() for o in origins.split(",") if o.strip()),
                             parallel=parallel, max_queue=max_queue)
    except OSError as e:
        raise UsageError(f"cannot listen on {host}:{port}: {e.strerror or e}",
                         "is another server (ollama serve?) using the port? pick another with --port") from e
    try:  # from here on, Ctrl-C or SIGTERM (a service manager's stop) unloads the models and exits 0
        signal.signal(signal.SIGTERM, _stop)
        slots = f"{parallel} parallel requests per model" if parallel else "parallel requests per model: auto"
        click.echo(f"modelpkg serve: listening on {server.url} (store {store.root}; {slots})"
                   + (" with a bearer token" if token else ""), err=True)
        warning = exposure_warning(host, token)
        if warning:
            click.echo(f"modelpkg serve: {warning}", err=True)
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        click.echo("modelpkg serve: stopping", err=True)
    finally:
        server.close()


def _stop(signum, frame) -> None:
    raise KeyboardInterrupt
