"""``modelpkg ps``, ``modelpkg stop`` and the warm ``modelpkg run`` against a real ``modelpkg serve`` on loopback.

``run`` must use a serve only when it is modelpkg serving this same store (its random store id), with the token
when one is needed, and must then answer exactly as in-process (one-shot, ``--format json``, ``--batch``, the
REPL); anything else (a dead port, an Ollama-like server, another store) runs in-process. The server's event
log tells which way a request went.
"""

from __future__ import annotations

import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from click.testing import CliRunner

from capabilities import require_module
from modelpkg.base import config
from modelpkg.cli.app import cli
from modelpkg.cli.ps import until
from modelpkg.cli.remote import RemoteSession, ServeClient, find_serve, serve_url
from modelpkg.cli.run import Repl
from modelpkg.core.errors import UsageError
from modelpkg.ops.chat import Session, open_model
from modelpkg.store import Store
from serve_helpers import serving

CHAT = "gemma3-chat"
BASE = "gemma3-base"
FAST = ["--temperature", "0", "--num-predict", "8"]


# ------------------------------------------------------------------------------------------------------
# pure parts


@pytest.mark.parametrize("given, url", [
    ("", "http://127.0.0.1:11434"), ("0.0.0.0", "http://127.0.0.1:11434"), (":8080", "http://127.0.0.1:8080"),
    ("example.com", "http://example.com:11434"), ("10.0.0.2:5", "http://10.0.0.2:5"),
    ("http://h:1/", "http://h:1"), ("https://h", "https://h:443"), ("[::1]:7", "http://[::1]:7"),
    ("0.0.0.0:9000", "http://127.0.0.1:9000"),
])
def test_host_forms_are_ollamas(given, url):
    assert serve_url(given) == url


@pytest.mark.parametrize("bad", ["ftp://h", "h:port"])
def test_bad_hosts(bad):
    with pytest.raises(UsageError):
        serve_url(bad)


def test_modelpkg_host_wins_over_ollama_host(monkeypatch):
    monkeypatch.setenv("OLLAMA_HOST", "o:1")
    monkeypatch.delenv("MODELPKG_HOST", raising=False)
    assert serve_url() == "http://o:1"
    monkeypatch.setenv("MODELPKG_HOST", "m:2")
    assert serve_url() == "http://m:2"


def test_until_reads_like_ollamas_ps():
    from datetime import datetime, timezone

    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert until("2026-01-01T00:04:30Z", now) == "4 minutes from now"
    assert until("2026-01-01T00:00:01Z", now) == "1 second from now"
    assert until("2318-11-25T00:00:00Z", now) == "Forever"
    assert until("2025-12-31T23:59:00Z", now) == "Stopping..."


def test_store_id_is_made_once_and_shared(tmp_path):
    first = Store(tmp_path / "s").store_id()
    assert len(first) == 32 and int(first, 16) >= 0
    assert Store(tmp_path / "s").store_id() == first                 # another process's view: the same id
    assert Store(tmp_path / "other").store_id() != first
    ids = []
    threads = [threading.Thread(target=lambda: ids.append(Store(tmp_path / "race").store_id())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 1 and ids[0] == (tmp_path / "race" / ".store-id").read_text().strip()
    assert not [p for p in (tmp_path / "race" / "ingest").iterdir() if p.name.startswith("store-id")]


class _OllamaLike(BaseHTTPRequestHandler):
    """A server that answers like a real Ollama: no "modelpkg" in /api/version."""

    def do_GET(self):
        body = json.dumps({"version": "0.12.11"}).encode() if self.path == "/api/version" else b"{}"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_run_never_takes_another_server_for_its_serve(home, monkeypatch):
    store = Store(config.home())
    assert find_serve(store) is None                                   # the dead port of the `home` fixture
    fake = ThreadingHTTPServer(("127.0.0.1", 0), _OllamaLike)
    threading.Thread(target=fake.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("MODELPKG_HOST", f"127.0.0.1:{fake.server_address[1]}")
        assert ServeClient(serve_url()).identity() is None
        assert find_serve(store) is None
    finally:
        fake.shutdown()
        fake.server_close()


def test_ps_without_a_server_is_one_clean_error(home):
    result = CliRunner().invoke(cli, ["ps"])
    assert result.exit_code == 10 and "cannot reach modelpkg serve at http://127.0.0.1:9" in result.output
    assert "Traceback" not in result.output


# ------------------------------------------------------------------------------------------------------
# a real serve of the same store


@pytest.fixture(scope="module")
def served(tmp_path_factory, gemma_gguf):
    with serving(tmp_path_factory, gemma_gguf, (BASE, CHAT, "gemma3-history")) as server:
        yield server


@pytest.fixture
def warm(served, monkeypatch):
    """The environment of a `modelpkg` command next to the serve: its store, its address."""
    monkeypatch.setenv("MODELPKG_HOST", served.url)
    monkeypatch.delenv("MODELPKG_SERVE_TOKEN", raising=False)
    return served


def run(*args, input=""):
    result = CliRunner().invoke(cli, ["run", *args], input=input, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def served_requests(server) -> int:
    return sum(1 for e in server.app.events if e.path == "/api/chat")


def test_warm_run_answers_as_the_local_run_does(warm):
    before = served_requests(warm)
    remote = run(CHAT, "Name three primary colors.", *FAST)
    assert served_requests(warm) == before + 1                         # the serve answered it
    local = run(CHAT, "Name three primary colors.", *FAST, "--local")
    assert served_requests(warm) == before + 1                         # --local did not ask the serve
    assert remote.stdout == local.stdout and remote.stdout.strip()
    base_remote = run(BASE, "Here is a list of three primary colors:\n1.", *FAST)
    base_local = run(BASE, "Here is a list of three primary colors:\n1.", *FAST, "--local")
    assert base_remote.stdout == base_local.stdout


def test_warm_run_format_json_and_system(warm):
    args = [CHAT, "Name three primary colors.", *FAST, "--format", "json", "--system", "Reply in French."]
    remote, local = json.loads(run(*args).stdout), json.loads(run(*args, "--local").stdout)
    for key in ("response", "done_reason", "eval_count", "prompt_eval_count", "prompt_tokens", "model"):
        assert remote[key] == local[key], key
    plain = json.loads(run(CHAT, "Name three primary colors.", *FAST, "--format", "json").stdout)
    assert plain["prompt_eval_count"] != remote["prompt_eval_count"]  # the --system prompt was sent


def test_warm_batch_answers_as_the_local_batch_does(warm, tmp_path):
    lines = [{"prompt": "Name a color.", "options": {"temperature": 0, "num_predict": 6}},
             {"messages": [{"role": "user", "content": "Hi"}], "options": {"temperature": 0, "num_predict": 6},
              "id": "x"},
             {"prompt": "bad", "options": {"no_such_option": 1}},
             {"prompt": "Name a fruit.", "system": "Be brief.", "options": {"temperature": 0, "num_predict": 6}}]
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    before = served_requests(warm)
    remote = [json.loads(line) for line in run(CHAT, "--batch", str(source)).stdout.splitlines()]
    assert served_requests(warm) == before + 3
    local = [json.loads(line) for line in run(CHAT, "--batch", str(source), "--local").stdout.splitlines()]
    assert [r.get("response") for r in remote] == [r.get("response") for r in local]
    assert [r.get("eval_count") for r in remote] == [r.get("eval_count") for r in local]
    assert remote[1]["id"] == "x" and "no_such_option" in remote[2]["error"] and "error" in local[2]


def test_warm_repl_behaves_as_the_local_repl(warm):
    store = Store(config.home())
    client = find_serve(store)
    assert client is not None and client.url == warm.url
    lines = ["/set parameter temperature 0", "/set parameter num_predict 6", "Name a color.", "And another?",
             "/show parameters", "/clear", "Name a color.", "/bye"]

    def transcript(session) -> str:
        read = iter(lines)
        out, err = io.StringIO(), io.StringIO()
        try:
            Repl(session, CHAT, read=lambda prompt: next(read), out=out, err=err).run()
        finally:
            session.close()
        return out.getvalue() + err.getvalue()

    details = open_model(store, config.reference("gemma3-history"), pull=False)
    before = served_requests(warm)
    remote = transcript(RemoteSession(details, client))
    assert served_requests(warm) == before + 3
    local = transcript(Session(details))
    assert remote == local and "Paris." in remote                      # the MESSAGE history was shown


def test_ps_and_stop(warm):
    run(BASE, "Hello", *FAST)
    listed = CliRunner().invoke(cli, ["ps"])
    assert listed.exit_code == 0, listed.output
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]
    assert any(row.startswith("gemma3-base:latest") and "from now" in row for row in rows)
    as_json = json.loads(CliRunner().invoke(cli, ["ps", "--json"]).stdout)
    assert "gemma3-base:latest" in [m["name"] for m in as_json["models"]]
    stopped = CliRunner().invoke(cli, ["stop", BASE])
    assert stopped.exit_code == 0, stopped.output
    after = json.loads(CliRunner().invoke(cli, ["ps", "--json"]).stdout)
    assert "gemma3-base:latest" not in [m["name"] for m in after["models"]]
    missing = CliRunner().invoke(cli, ["stop", "no-such-model"])
    assert missing.exit_code == 4 and "not found" in missing.output


def test_a_serve_with_a_token(served, tmp_path_factory, gemma_gguf, monkeypatch):
    require_module("llama_cpp")
    from modelpkg.server.app import make_server

    guarded = make_server(served.app.store, "127.0.0.1", 0, token="s3cret")
    threading.Thread(target=guarded.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("MODELPKG_HOST", guarded.url)
        monkeypatch.delenv("MODELPKG_SERVE_TOKEN", raising=False)
        store = Store(config.home())
        assert find_serve(store) is None                               # no token: run answers in-process
        refused = CliRunner().invoke(cli, ["ps"])
        assert refused.exit_code == 2 and "MODELPKG_SERVE_TOKEN" in refused.output
        monkeypatch.setenv("MODELPKG_SERVE_TOKEN", "s3cret")
        assert find_serve(store) is not None
        before = sum(1 for e in guarded.app.events if e.path == "/api/chat")
        run(BASE, "Hello", *FAST)
        assert sum(1 for e in guarded.app.events if e.path == "/api/chat") == before + 1
    finally:
        guarded.shutdown()
        guarded.close()


THINKING_TEMPLATE = """{{- range .Messages }}<|{{ .Role }}|>
{{- if and (eq .Role "assistant") .Thinking }}<think>{{ .Thinking }}</think>{{ end }}{{ .Content }}
{{ end }}<|assistant|>{{ if .Think }}<think>{{ end }}"""


def test_warm_run_thinks_as_the_local_run_does(warm, gemma_gguf, tmp_path):
    """--think and --hidethinking reach the serve: the thinking it splits off prints as the local run prints it
    (the prompt opens the thinking tag, so the 8 tokens are all thinking)."""
    from modelpkg.ops.create import create

    (tmp_path / "gemma.gguf").symlink_to(gemma_gguf)
    create(warm.app.store, config.reference("thinker"), f'FROM ./gemma.gguf\nTEMPLATE """{THINKING_TEMPLATE}"""\n',
           tmp_path, resolve_name=config.reference)
    before = served_requests(warm)
    remote = run("thinker", "Hi", *FAST, "--think")
    assert served_requests(warm) == before + 1
    local = run("thinker", "Hi", *FAST, "--think", "--local")
    assert remote.stdout == local.stdout and remote.stdout.startswith("Thinking...\n"), remote.stdout
    assert "...done thinking." in remote.stdout
    hidden = run("thinker", "Hi", *FAST, "--hidethinking")
    assert "Thinking..." not in hidden.stdout and hidden.stdout == run("thinker", "Hi", *FAST, "--hidethinking",
                                                                        "--local").stdout
    as_json = json.loads(run("thinker", "Hi", *FAST, "--think", "--format", "json").stdout)
    assert as_json["thinking"] and as_json["response"] == ""
