"""``modelpkg run``: chat on a terminal, answer one prompt, or answer a batch of requests.

The command parses options, opens the model (``chat.open_model``: pulling and verifying it) and hands a
``chat.Session`` to one of three drivers: ``one_shot`` (a prompt argument or piped stdin), ``run_batch``
(``--batch FILE``: one JSON request a line, one JSON result a line) and ``Repl`` (Ollama's interactive
loop, ``cmd/interactive.go``: ``>>> `` prompts, ``\"\"\"`` multi-line input, ``/set``, ``/show``, ``/clear``,
``/bye``; Ctrl-C stops an answer, Ctrl-D leaves). Answers go to stdout; stats and messages to stderr.

CLI layer: imports click, ``modelpkg.cli.common``, ``chat`` and the runner's option names.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

import click

from modelpkg.base import config
from modelpkg.cli.common import open_store, short
from modelpkg.core.errors import InvalidInputError, ModelpkgError, NotFoundError, StoreError, UsageError
from modelpkg.core.thinking import check_think
from modelpkg.ops.chat import (
    COMPLETION,
    GGUF_TEMPLATE,
    GO_TEMPLATE,
    AnswerSplitter,
    Session,
    open_model,
    parse_assignments,
    result_json,
    typed_options,
)
from modelpkg.runtime.runner import Generation, Result


@click.command()
@click.argument("name")
@click.argument("prompt", nargs=-1)
@click.option("--param", "params", multiple=True, metavar="NAME=VALUE",
              help="Set a parameter (as PARAMETER in a Modelfile; repeat it; repeated stop values add up).")
@click.option("--ctx", type=int, metavar="N", help="Context length in tokens (num_ctx).")
@click.option("--seed", type=int, help="Random seed (seed); -1 for a random one.")
@click.option("--temperature", type=float, help="Sampling temperature; 0 picks the likeliest token.")
@click.option("--num-predict", type=int, metavar="N", help="Stop after N tokens (num_predict); -1: no limit.")
@click.option("--system", help="System prompt, replacing the model's SYSTEM.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="json: print one JSON object (response, token counts, timings) instead of streaming text.")
@click.option("--verbose", is_flag=True, help="Print load time, token counts and speed to stderr after each answer.")
@click.option("--batch", "batch", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
              help="Answer each line of a JSONL file ({\"prompt\": ...} or {\"messages\": [...]}, "
                   "optional \"options\"); '-' reads stdin.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="With --batch: write the results to this file instead of stdout.")
@click.option("--parallel", "parallel", type=click.IntRange(1), default=1, show_default=True, metavar="N",
              help="With --batch: answer N lines at once, decoded together by one runner (results stay in "
                   "input order; each line gets num_ctx of context).")
@click.option("--insecure", is_flag=True, help="Allow plain http when the model has to be pulled first.")
@click.option("--think", "think", is_flag=False, flag_value="true", default=None,
              metavar="[true|false|high|medium|low]",
              help="Think before answering (models whose template can); --think alone is true.")
@click.option("--hidethinking", is_flag=True, help="Think, but do not print the thinking.")
@click.option("--local", is_flag=True,
              help="Load the model in this process even when a modelpkg serve of this store is running.")
def run(name: str, prompt: tuple[str, ...], params: tuple[str, ...], ctx: int | None, seed: int | None,
        temperature: float | None, num_predict: int | None, system: str | None, fmt: str, verbose: bool,
        batch: Path | None, output: Path | None, insecure: bool, think: str | None = None,
        hidethinking: bool = False, local: bool = False, parallel: int = 1) -> None:
    """Run a model: chat on a terminal, answer a prompt, or answer a batch.

    Pulls the model first if it is not in the store. Options override the model's parameters.
    In a chat, type /? for help and /bye (or Ctrl-D) to leave; Ctrl-C stops an answer.

    When a modelpkg serve of this same store is running (MODELPKG_HOST, else OLLAMA_HOST, else
    127.0.0.1:11434; MODELPKG_SERVE_TOKEN is sent), the answers come from it and the model stays
    loaded between runs; --local loads it in this process instead.

    \b
    Examples:
      modelpkg run gemma3-chat
      modelpkg run gemma3-base "Here is a list of three primary colors:"
      echo "Why is the sky blue?" | modelpkg run gemma3-chat
      modelpkg run gemma3-base "Once upon a time" --temperature 0 --seed 1 --num-predict 32
      modelpkg run gemma3-base "2 + 2 =" --param stop=. --format json | jq -r .response
      modelpkg run gemma3-chat --batch prompts.jsonl -o answers.jsonl
      modelpkg run gemma3-chat --batch prompts.jsonl --parallel 4 -o answers.jsonl
      modelpkg run gemma3-chat --local "Hello"
    """
    from modelpkg.cli.progress import for_terminal

    if output is not None and batch is None:
        raise UsageError("-o/--output is for --batch", "redirect stdout to save a single answer")
    if parallel > 1 and batch is None:
        raise UsageError("--parallel is for --batch", "answer a file of prompts: --batch FILE --parallel N")
    overrides = parse_assignments(params)
    for key, value in (("num_ctx", ctx), ("seed", seed), ("temperature", temperature), ("num_predict", num_predict)):
        if value is not None:
            overrides[key] = value
    interactive = batch is None and not prompt and _is_terminal(sys.stdin)
    if interactive and fmt == "json":
        raise UsageError("--format json answers one prompt", "pass the prompt as an argument or on stdin")
    text = None if batch is not None or interactive else _prompt_text(prompt)
    store = open_store()
    details = open_model(store, config.reference(name), progress=for_terminal(), insecure=insecure)
    if batch is not None and parallel > 1:
        try:
            run_parallel_batch(_SessionMaker(store, details, overrides, system, local, verbose, think, name),
                               batch, output, short(details.name), parallel)
        except BrokenPipeError:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return
    session = _session(store, details, overrides, system, local, verbose)
    try:
        session.runner()  # load now: a model that does not load fails before any input is read
        display = short(details.name)
        set_think(session, think, name)
        if batch is not None:
            run_batch(session, batch, output, display)
        elif interactive:
            Repl(session, display, verbose, hide_thinking=hidethinking).run()
        else:
            one_shot(session, text, display, fmt == "json", verbose, hidethinking)
    except BrokenPipeError:
        # the reader went away (| head): stop quietly, and keep Python from complaining at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    finally:
        session.close()


def _session(store, details, overrides: dict[str, Any], system: str | None, local: bool, verbose: bool) -> Session:
    """A session answered by the running serve of this store, or (none, or ``--local``) in this process."""
    from modelpkg.cli.remote import RemoteSession, find_serve

    client = None if local else find_serve(store)
    if client is None:
        return Session(details, overrides, system=system)
    if verbose:
        click.echo(f"using modelpkg serve at {client.url}", err=True)
    return RemoteSession(details, client, overrides, system=system)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _prompt_text(words: tuple[str, ...]) -> str:
    """The prompt: piped stdin first, then the arguments, joined by a space (as ``ollama run`` does)."""
    parts = []
    if not _is_terminal(sys.stdin):
        piped = sys.stdin.read()
        if piped.strip():
            parts.append(piped)
    parts += list(words)
    text = " ".join(parts)
    if not text.strip():
        raise UsageError("no prompt given", "pass one as an argument, pipe it to stdin, or run on a terminal to chat")
    return text


# --------------------------------------------------------------------------------------------------------
# one prompt


def set_think(session: Session, value: str | None, model: str) -> None:
    """``--think`` / ``/set think``: true, false or a level; a model that cannot think refuses, as Ollama."""
    if value is None:
        return
    word = value.strip().lower()
    think: bool | str = {"true": True, "false": False}.get(word, word)
    try:
        check_think(think)
    except ValueError as e:
        raise UsageError(str(e)) from e
    session.think = None
    if think and not session.thinking():
        raise UsageError(f"{json.dumps(model)} does not support thinking",
                         "its template has no thinking tags; run it without --think")
    session.think = think


def one_shot(session: Session, text: str, model: str, as_json: bool, verbose: bool,
             hide_thinking: bool = False) -> None:
    generation = session.send(text)
    if as_json:
        generation.text()
        answer = result_json(generation.result, model, session.loaded.load_duration, _now())
        if session.thinking():
            splitter = session.splitter()
            thinking, content = splitter.feed(generation.result.text)
            more_thinking, more_content, _ = splitter.finish()
            answer["response"] = content + more_content
            if thinking + more_thinking:
                answer["thinking"] = thinking + more_thinking
        _emit(sys.stdout, answer)
    else:
        _stream(generation, sys.stdout, session.splitter() if session.thinking() else None, hide_thinking)
        sys.stdout.write("\n")
        sys.stdout.flush()
    if verbose:
        click.echo(format_stats(generation.result, session.loaded.load_duration), err=True)


def _stream(generation: Generation, out: TextIO, splitter: AnswerSplitter | None = None,
            hide_thinking: bool = False) -> None:
    """Print the answer as it comes; its thinking (unless hidden) between Ollama's "Thinking..." and
    "...done thinking." lines."""
    if splitter is None:
        for piece in generation:
            out.write(piece)
            out.flush()
        return
    thinking_open = False

    def show(thinking: str, content: str) -> None:
        nonlocal thinking_open
        if thinking and not hide_thinking:
            if not thinking_open:
                out.write("Thinking...\n")
                thinking_open = True
            out.write(thinking)
        if content:
            if thinking_open:
                out.write("\n...done thinking.\n\n")
                thinking_open = False
            out.write(content)
        out.flush()

    for piece in generation:
        show(*splitter.feed(piece))
    thinking, content, _ = splitter.finish()
    show(thinking, content)
    if thinking_open:
        out.write("\n...done thinking.\n")
        out.flush()


def _emit(out: TextIO, obj: dict[str, Any]) -> None:
    out.write(json.dumps(obj, ensure_ascii=False) + "\n")
    out.flush()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def format_stats(result: Result, load_duration: float) -> str:
    """``ollama run --verbose``'s block of timings."""
    def rate(count: int, seconds: float) -> str:
        return f"{count / seconds:.2f} tokens/s" if seconds > 0 else "n/a"

    rows = [
        ("total duration", go_duration(result.total_duration + load_duration)),
        ("load duration", go_duration(load_duration)),
        ("prompt eval count", f"{result.prompt_eval_count} token(s)"),
        ("prompt eval duration", go_duration(result.prompt_eval_duration)),
        ("prompt eval rate", rate(result.prompt_eval_count, result.prompt_eval_duration)),
        ("eval count", f"{result.eval_count} token(s)"),
        ("eval duration", go_duration(result.eval_duration)),
        ("eval rate", rate(result.eval_count, result.eval_duration)),
    ]
    return "\n".join(f"{label + ':':<22}{value}" for label, value in rows)


def go_duration(seconds: float) -> str:
    """A duration as Go's ``time.Duration.String`` prints it: ``1.234567s``, ``201.402ms``, ``5.1µs``."""
    if seconds <= 0:
        return "0s"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale or unit == "µs":
            value = f"{seconds / scale:.6f}".rstrip("0").rstrip(".")
            return f"{value}{unit}"
    return "0s"


# --------------------------------------------------------------------------------------------------------
# a batch


def run_batch(session: Session, source: Path, output: Path | None, model: str) -> None:
    """Answer every non-blank line of ``source``; one JSON result per line, in order. A line that fails
    gives ``{"line": N, "error": ...}`` and the batch goes on."""
    lines = _read_lines(source)
    total = sum(1 for line in lines if line.strip())
    out, close = (_open_output(output), True) if output is not None else (sys.stdout, False)
    progress = _BatchProgress(total) if _is_terminal(sys.stderr) else None
    errors = 0
    last_runner = None
    try:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            previous = last_runner
            record, runner = _answer_line(session, line, number, model,
                                          lambda r, p=previous: r.load_duration if r is not p else 0.0)
            last_runner = runner or last_runner
            errors += "error" in record
            _emit(out, record)
            if progress:
                progress.advance(errors)
    finally:
        if progress:
            progress.done()
        if close:
            out.close()
    click.echo(f"{total} request(s), {total - errors} answered, {errors} failed", err=True)


def _answer_line(session: Session, line: str, number: int, model: str,
                 load_of: Callable[[Any], float]) -> tuple[dict, Any]:
    """One line's record and the runner that answered it; ``load_of(runner)``: the load time to report."""
    record: dict[str, Any] = {"line": number}
    try:
        try:
            request = json.loads(line)
        except json.JSONDecodeError as e:
            raise InvalidInputError(f"not valid JSON: {e.msg} (column {e.colno})") from e
        except RecursionError as e:  # arrays or objects nested deeper than Python's stack
            raise InvalidInputError("not valid JSON: nested too deeply") from e
        if not isinstance(request, dict):
            raise InvalidInputError("a line must be a JSON object with \"prompt\" or \"messages\"")
        if "id" in request:
            record["id"] = request["id"]
        generation = session.request(prompt=request.get("prompt"), messages=request.get("messages"),
                                     system=request.get("system"), options=typed_options(request.get("options")))
        generation.text()
    except ModelpkgError as e:
        record["error"] = e.message + (f" ({e.hint})" if e.hint else "")
        return record, None
    runner = session.loaded
    record.update(result_json(generation.result, model, load_of(runner), _now()))
    return record, runner


class _SessionMaker:
    """Sessions for ``--batch --parallel``: each line gets a session of its own. Local ones share one runner
    process loaded with ``n_parallel`` sequences (the model cache of ``serve``: slots, reloads when a line's
    options need other load-time options); with a running serve of this store, each line is a request to it."""

    def __init__(self, store, details, overrides: dict[str, Any], system: str | None, local: bool, verbose: bool,
                 think: str | None, name: str):
        from modelpkg.cli.remote import find_serve

        self.details, self.overrides, self.system = details, overrides, system
        self.think, self.name = think, name
        self.client = None if local else find_serve(store)
        if self.client is not None and verbose:
            click.echo(f"using modelpkg serve at {self.client.url}", err=True)
        self.cache = None

    def start(self, parallel: int) -> float:
        """Load the model now (a model that does not load fails before any line is read); the seconds it took."""
        if self.client is None:
            from modelpkg.server.cache import FOREVER, ModelCache

            self.cache = ModelCache(FOREVER, parallel=parallel, max_queue=1 << 30, max_loaded=1)
        with self.session() as (session, load_of):
            return load_of(session.runner())

    @contextlib.contextmanager
    def session(self) -> Iterator[tuple[Session, Callable[[Any], float]]]:
        """A session for one line, and how to tell the load time it caused."""
        if self.client is not None:
            from modelpkg.cli.remote import RemoteSession

            session = RemoteSession(self.details, self.client, self.overrides, system=self.system)
            set_think(session, self.think, self.name)
            yield session, lambda runner: runner.load_duration
            return
        assert self.cache is not None
        with self.cache.use(self.details, -1) as slot:
            session = Session(self.details, self.overrides, system=self.system, load=slot.load)
            set_think(session, self.think, self.name)
            yield session, lambda runner: slot.load_duration

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()


def run_parallel_batch(maker: _SessionMaker, source: Path, output: Path | None, model: str, parallel: int) -> None:
    """``run_batch`` with ``parallel`` lines in flight at once (threads, each line in a session of its own);
    the records are written in input order, each as soon as it and every line before it are done."""
    from concurrent.futures import ThreadPoolExecutor

    lines = [(number, line) for number, line in enumerate(_read_lines(source), 1) if line.strip()]
    loading = maker.start(parallel)  # reported by the first line answered, as run_batch reports it
    out, close = (_open_output(output), True) if output is not None else (sys.stdout, False)
    progress = _BatchProgress(len(lines)) if _is_terminal(sys.stderr) else None
    errors = 0

    def answer(number: int, line: str) -> dict[str, Any]:
        try:
            with maker.session() as (session, load_of):
                return _answer_line(session, line, number, model, load_of)[0]
        except ModelpkgError as e:
            return {"line": number, "error": e.message + (f" ({e.hint})" if e.hint else "")}

    try:
        with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="modelpkg-batch") as pool:
            futures = [pool.submit(answer, number, line) for number, line in lines]
            try:
                for future in futures:
                    record = future.result()
                    if loading and "error" not in record:
                        ns = int(loading * 1_000_000_000)
                        record["load_duration"] += ns
                        record["total_duration"] += ns
                        loading = 0.0
                    errors += "error" in record
                    _emit(out, record)
                    if progress:
                        progress.advance(errors)
            finally:
                for future in futures:
                    future.cancel()  # a failed write (| head): the lines not started yet are dropped
    finally:
        maker.close()
        if progress:
            progress.done()
        if close:
            out.close()
    click.echo(f"{len(lines)} request(s), {len(lines) - errors} answered, {errors} failed", err=True)


def _read_lines(source: Path) -> list[str]:
    if str(source) == "-":
        return sys.stdin.read().splitlines()
    try:
        return source.read_text(encoding="utf-8-sig").splitlines()
    except FileNotFoundError as e:
        raise NotFoundError(f"batch file not found: {source}") from e
    except UnicodeDecodeError as e:
        raise InvalidInputError(f"{source} is not UTF-8 text") from e
    except OSError as e:
        raise StoreError(f"cannot read {source}: {e.strerror}") from e


def _open_output(path: Path) -> TextIO:
    try:
        return open(path, "w", encoding="utf-8")
    except OSError as e:
        raise StoreError(f"cannot write {path}: {e.strerror}") from e


class _BatchProgress:
    """One line on stderr, redrawn in place: done/total, failures, elapsed time."""

    def __init__(self, total: int):
        self.total = total
        self.count = 0
        self.started = time.monotonic()
        self._draw(0)

    def advance(self, errors: int) -> None:
        self.count += 1
        self._draw(errors)

    def _draw(self, errors: int) -> None:
        width = 25
        filled = int(width * self.count / self.total) if self.total else width
        bar = "█" * filled + " " * (width - filled)
        failed = f", {errors} failed" if errors else ""
        sys.stderr.write(f"\r\x1b[2Kbatch ▕{bar}▏ {self.count}/{self.total}{failed}  "
                         f"{time.monotonic() - self.started:.0f}s")
        sys.stderr.flush()

    def done(self) -> None:
        sys.stderr.write("\n")
        sys.stderr.flush()


# --------------------------------------------------------------------------------------------------------
# the interactive loop

HELP = '''Available Commands:
  /set            Set session variables
  /show           Show model information
  /clear          Clear session context
  /bye            Exit
  /?, /help       Help for a command
  /? shortcuts    Help for keyboard shortcuts

Use """ to begin a multi-line message.
'''

HELP_SET = '''Available Commands:
  /set parameter ...     Set a parameter
  /set system <string>   Set system message
  /set think [level]     Think before answering (true, or high, medium, low)
  /set nothink           Answer without thinking
  /set verbose           Show LLM stats
  /set quiet             Disable LLM stats
'''

HELP_SHOW = '''Available Commands:
  /show info         Show details for this model
  /show license      Show model license
  /show modelfile    Show Modelfile for this model
  /show parameters   Show parameters for this model
  /show system       Show system message
  /show template     Show prompt template
'''

HELP_PARAMETERS = '''Available Parameters:
  /set parameter seed <int>             Random number seed
  /set parameter num_predict <int>      Max number of tokens to predict
  /set parameter top_k <int>            Pick from top k num of tokens
  /set parameter top_p <float>          Pick token based on sum of probabilities
  /set parameter min_p <float>          Pick token based on top token probability * min_p
  /set parameter num_ctx <int>          Set the context size
  /set parameter temperature <float>    Set creativity level
  /set parameter repeat_penalty <float> How strongly to penalize repetitions
  /set parameter repeat_last_n <int>    Set how far back to look for repetitions
  /set parameter num_gpu <int>          The number of layers to send to the GPU
  /set parameter stop <string> <string> ...   Set the stop parameters
'''

HELP_SHORTCUTS = '''Available keyboard shortcuts:
  Ctrl + a            Move to the beginning of the line (Home)
  Ctrl + e            Move to the end of the line (End)
  Ctrl + k            Delete the sentence after the cursor
  Ctrl + u            Delete the sentence before the cursor
  Ctrl + w            Delete the word before the cursor
  Up / Down           Recall earlier input (history)

  Ctrl + l            Clear the screen
  Ctrl + c            Stop the model from responding
  Ctrl + d            Exit modelpkg (/bye)
'''


class Repl:
    """Ollama's interactive loop over a Session. ``read`` is ``input`` (with readline on a terminal)."""

    PROMPT = ">>> "
    MORE = "... "

    def __init__(self, session: Session, model: str, verbose: bool = False, *, read=input,
                 out: TextIO | None = None, err: TextIO | None = None, hide_thinking: bool = False):
        self.session = session
        self.model = model
        self.verbose = verbose
        self.hide_thinking = hide_thinking
        self.read = read
        self.out = out or sys.stdout
        self.err = err or sys.stderr

    def say(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def run(self) -> None:
        history = _Readline(config.config_dir() / "history") if self.read is input else None
        try:
            self._replay_history()
            while True:
                try:
                    line = self._read_input()
                except EOFError:
                    self.say()
                    return
                except KeyboardInterrupt:
                    self.say("\nUse Ctrl + d or /bye to exit.")
                    continue
                if line.startswith("/") and not line.startswith('/"'):
                    if self.command(line) == "bye":
                        return
                elif line.strip():
                    self.answer(line)
        finally:
            if history:
                history.save()

    def _replay_history(self) -> None:
        """Show the model's MESSAGE history as if it had been typed, as ``ollama run`` does."""
        for message in self.session.details.messages:
            if message.get("role") == "user":
                self.say(f"{self.PROMPT}{message.get('content', '')}")
            elif message.get("role") == "assistant":
                self.say(f"{message.get('content', '')}\n")

    def _read_input(self) -> str:
        """One message: a line, or a ``\"\"\"`` block that ends at a line ending with ``\"\"\"``."""
        line = self.read(self.PROMPT)
        if line.startswith('"""'):
            return self._multiline(line[3:])
        if line.startswith("/set system ") and line[len("/set system "):].lstrip().startswith('"""'):
            rest = line[len("/set system "):].lstrip()[3:]
            return "/set system " + self._multiline(rest)
        return line

    def _multiline(self, first: str) -> str:
        if first.endswith('"""'):
            return first[:-3]
        parts = [first]
        while True:
            line = self.read(self.MORE)
            if line.endswith('"""'):
                parts.append(line[:-3])
                return "\n".join(parts)
            parts.append(line)

    def answer(self, text: str) -> None:
        try:
            generation = self.session.send(text)
        except ModelpkgError as e:
            self._error(e)
            return
        try:
            splitter = self.session.splitter() if self.session.thinking() else None
            _stream(generation, self.out, splitter, self.hide_thinking)
        except KeyboardInterrupt:
            self.say()
            return
        except ModelpkgError as e:
            self.say()
            self._error(e)
            return
        self.say("\n")
        if self.verbose:
            self.err.write(format_stats(generation.result, 0.0) + "\n\n")
            self.err.flush()

    def _error(self, e: ModelpkgError) -> None:
        self.err.write(f"Error: {e.message}\n" + (f"Hint: {e.hint}\n" if e.hint else ""))
        self.err.flush()

    # ----- commands

    def command(self, line: str) -> str | None:
        words = line.split()
        head = words[0]
        if head in ("/bye", "/exit"):
            return "bye"
        if head == "/clear":
            self.session.clear()
            self.say("Cleared session context")
        elif head in ("/?", "/help"):
            topic = words[1] if len(words) > 1 else ""
            self.out.write({"set": HELP_SET, "show": HELP_SHOW, "shortcut": HELP_SHORTCUTS,
                            "shortcuts": HELP_SHORTCUTS}.get(topic, HELP) + "\n")
        elif head == "/set":
            self._set(line, words)
        elif head == "/show":
            self._show(words)
        else:
            self.say(f"Unknown command '{head}'. Type /? for help")
        self.out.flush()
        return None

    def _set(self, line: str, words: list[str]) -> None:
        if len(words) < 2:
            self.out.write(HELP_SET + "\n")
            return
        what = words[1]
        if what == "parameter":
            if len(words) < 4:
                self.out.write(HELP_PARAMETERS + "\n")
                return
            try:
                self.session.set_parameter(words[2], words[3:])
            except ModelpkgError as e:
                self._error(e)
                return
            self.say(f"Set parameter '{words[2]}' to '{', '.join(words[3:])}'")
        elif what == "system":
            text = line.split("system", 1)[1].strip(" ")
            self.session.set_system(text)
            self.say("Set system message.")
        elif what in ("think", "nothink"):
            value = "false" if what == "nothink" else (words[2] if len(words) > 2 else "true")
            try:
                set_think(self.session, value, self.model)
            except ModelpkgError as e:
                self._error(e)
                return
            self.say("Set 'nothink' mode." if self.session.think is False else
                     f"Set 'think' mode{'' if self.session.think is True else ' to ' + repr(self.session.think)}.")
        elif what == "verbose":
            self.verbose = True
            self.say("Set 'verbose' mode.")
        elif what == "quiet":
            self.verbose = False
            self.say("Set 'quiet' mode.")
        else:
            self.say(f"Unknown command '/set {what}'. Type /? for help")

    def _show(self, words: list[str]) -> None:
        if len(words) < 2:
            self.out.write(HELP_SHOW + "\n")
            return
        what = words[1]
        details = self.session.details
        if what == "info":
            from modelpkg.cli.common import show_summary

            show_summary(details)
            self.say(f"  Prompt\n    {_PROMPT_PATHS[self.session.kind()]}\n")
        elif what == "parameters":
            self._show_parameters()
        elif what == "system":
            self.say(self.session.system or "No system message was specified for this model.")
        elif what == "template":
            text = self.session.template_text()
            if text is None:
                self.say("No prompt template was specified for this model.")
            else:
                if self.session.kind() == GGUF_TEMPLATE:
                    self.say("(the GGUF's own chat template, Jinja)")
                self.say(text)
        elif what == "license":
            self.say("\n\n".join(details.licenses) or "No license was specified for this model.")
        elif what == "modelfile":
            from modelpkg.ops.models import modelfile_for

            self.out.write(modelfile_for(details, self.model))
        else:
            self.say(f"Unknown command '/show {what}'. Type /? for help")

    def _show_parameters(self) -> None:
        from modelpkg.core.modelfile import format_parameter_value

        def lines(params: dict[str, Any]) -> None:
            for key in sorted(params):
                value = params[key]
                for item in value if isinstance(value, list) else [value]:
                    shown = format_parameter_value(item)
                    self.say(f"{key:<30} {json.dumps(shown) if key == 'stop' else shown}")

        user = self.session.user_parameters()
        if user:
            self.say("User defined parameters:")
            lines(user)
            self.say()
        if self.session.details.parameters:
            self.say("Model defined parameters:")
            lines(self.session.details.parameters)
        elif not user:
            self.say("No parameters were specified for this model.")


_PROMPT_PATHS = {
    GO_TEMPLATE: "the model's TEMPLATE (Go template)",
    GGUF_TEMPLATE: "the GGUF's own chat template (Jinja)",
    COMPLETION: "none: plain completion, the prompt is sent as it is",
}


class _Readline:
    """Line editing and a history file, when the ``readline`` module exists (not on Windows)."""

    def __init__(self, path: Path):
        self.path = path
        try:
            import readline
        except ImportError:
            self.readline = None
            return
        self.readline = readline
        readline.set_history_length(1000)
        try:
            readline.read_history_file(str(path))
        except (OSError, ValueError):
            pass

    def save(self) -> None:
        if self.readline is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.readline.write_history_file(str(self.path))
        except OSError:
            pass
