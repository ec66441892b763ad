"""Ollama's API (``/api/*``, ``server/routes.go``): the models in the store (list, show, copy, delete, pull,
push, create, blobs) and generation (``generate``, ``chat``, ``embed``, ``embeddings``), with Ollama's JSON
fields, NDJSON streams and status codes. Pull, push and create run in a worker thread and stream Ollama's
status lines. Create runs in ``create``'s API mode: a request names blobs uploaded to ``/api/blobs`` and models
in the store, never a file on the server (any path is one 400, whatever exists). Requests are read as Ollama
reads them (options by ``Options.FromMap``'s rules, ``think`` values, ``raw``'s limits); what a model cannot
do (tools, thinking, insert, vision: its capabilities) is refused with Ollama's error; answers are split into
thinking, content and tool calls as its ChatHandler does.

Built on ``http``, ``cache`` and ``backend``; never imports ``openai`` or ``app`` (``app`` routes here), nor the
CLI. ``create``, ``pull``, ``push`` and ``models``' copy and remove are imported when called.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from modelpkg import __version__
from modelpkg.base import config
from modelpkg.core import modelfile as mf
from modelpkg.core.digest import Digest
from modelpkg.core.errors import InvalidInputError, ModelpkgError, NotFoundError
from modelpkg.core.progress import Progress
from modelpkg.core.reference import Reference
from modelpkg.core.thinking import check_think
from modelpkg.ops.chat import (
    AnswerSplitter,
    Session,
    chat_messages,
    check_tools,
    conversation,
    with_call_ids,
)
from modelpkg.ops.models import ModelDetails, describe, modelfile_for
from modelpkg.runtime.runner import Result, load_options, sampling_options
from modelpkg.server.backend import (
    Backend,
    LogprobCursor,
    answer_splitter,
    display_name,
    logprob_json,
    normalised,
    options_from,
    with_logprobs,
)
from modelpkg.server.cache import kv_bytes, parse_keep_alive
from modelpkg.server.http import ApiError, Request, iso_time
from modelpkg.store import ingest

Route = Callable[[Request], None]
# The Ollama release whose API surface this server implements (tools, thinking, think levels, logprobs,
# /v1/responses and the Anthropic /v1/messages came by 0.14.0): clients such as LangChain and Open WebUI
# compare it to decide what to send. modelpkg's own version is answered beside it.
OLLAMA_VERSION = "0.14.0"
LONG_ARRAY = 5  # Ollama's show empties metadata arrays longer than this unless verbose

# --------------------------------------------------------------------------------------------------------
# create's JSON fields and show's parameters

def parameters_text(parameters: Mapping[str, Any]) -> str:
    """``/api/show``'s ``parameters``: one ``name value`` line per value, as Ollama prints them."""
    lines = []
    for name in sorted(parameters):
        value = parameters[name]
        for item in value if isinstance(value, list) else [value]:
            shown = json.dumps(item) if isinstance(item, str) else mf.format_parameter_value(item)
            lines.append(f"{name:<30} {shown}")
    return "\n".join(lines)


def modelfile_from_fields(body: Mapping[str, Any]) -> str:
    """An ``/api/create`` request's JSON fields (``from``, ``files``, ``adapters``, ``template``, ``system``,
    ``parameters``, ``messages``, ``license``) as Modelfile text, for ``create`` in its API mode: ``files``
    and ``adapters`` map file names to the digests of blobs uploaded to ``/api/blobs``, which become
    ``FROM sha256:<hex>`` and ``ADAPTER sha256:<hex>`` (never a path in the store). The file names only pick
    the GGUF; like Ollama, a name that is not a clean relative path is refused."""
    items = _from_and_adapters(body)
    for key in ("template", "system"):
        if body.get(key) is not None:
            if not isinstance(body[key], str):
                raise InvalidInputError(f"{key} must be a string")
            items.append(mf.Instruction(key, body[key]))
    parameters = body.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidInputError("parameters must be an object of parameter names to values")
    # Ollama keeps the map in the params layer and reads it at each request with Options.FromMap: a null
    # is unset and an unknown name ignored there; here they are dropped now (and logged), a wrong type refused
    for name, value in options_from(parameters).items():
        for item in value if isinstance(value, list) else [value]:
            items.append(mf.Instruction("parameter", mf.format_parameter_value(item), name))
    licenses = body.get("license") or []
    for text in [licenses] if isinstance(licenses, str) else licenses:
        items.append(mf.Instruction("license", str(text)))
    for m in body.get("messages") or []:
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise InvalidInputError("messages must be {\"role\", \"content\"} objects")
        items.append(mf.Instruction("message", m["content"], str(m.get("role", ""))))
    return mf.format(mf.Modelfile(tuple(items)))


def _from_and_adapters(body: Mapping[str, Any]) -> list[mf.Instruction]:
    """``from`` (a model) or the GGUF of ``files``, and ``adapters``: FROM and ADAPTER lines."""
    files, adapters = body.get("files") or {}, body.get("adapters") or {}
    if not isinstance(files, dict) or not isinstance(adapters, dict):
        raise InvalidInputError("files and adapters must map file names to sha256 digests")
    for name, digest in (*files.items(), *adapters.items()):
        if not _relative_name(name):
            raise InvalidInputError("file path must be relative")  # Ollama's words (server/create.go)
        if not isinstance(digest, str):
            raise InvalidInputError("files and adapters must map file names to sha256 digests")
    if body.get("from"):
        if not isinstance(body["from"], str):
            raise InvalidInputError("from must be a model name")
        items = [mf.Instruction("from", body["from"])]
    elif files:
        ggufs = [d for name, d in files.items() if name.lower().endswith(".gguf")] or list(files.values())
        if len(ggufs) != 1:
            raise InvalidInputError("give one GGUF file in files", "safetensors folders are not supported")
        items = [mf.Instruction("from", str(Digest.parse(ggufs[0])))]
    else:
        raise InvalidInputError("neither 'from' nor 'files' was specified")
    return items + [mf.Instruction("adapter", str(Digest.parse(d))) for d in adapters.values()]


def _relative_name(name: Any) -> bool:
    """Go's ``fs.ValidPath``, which Ollama checks ``files`` names with: slash-separated, relative, no empty,
    ``.`` or ``..`` element (``.`` alone is the root)."""
    if not isinstance(name, str) or not name:
        return False
    return name == "." or all(part not in ("", ".", "..") for part in name.split("/"))


def model_info(details: ModelDetails, verbose: bool = False) -> dict[str, Any]:
    """``/api/show``'s ``model_info``: the GGUF's metadata as Ollama's GetModelInfo gives it -- arrays longer
    than five items emptied unless ``verbose``, ``general.name`` and ``tokenizer.chat_template`` left out,
    ``general.parameter_count`` the sum of the tensors' elements (``fs/ggml/gguf.go``)."""
    from modelpkg.runtime import ggufkv, ggufmeta

    if details.model_path is None:
        return {"general.architecture": details.architecture}
    try:
        gguf = ggufmeta.read_info(details.model_path)
        info = ggufkv.read_metadata(details.model_path) if verbose else dict(gguf.metadata)
    except ModelpkgError:  # weights that cannot be read: what the manifest says
        info = {"general.architecture": details.architecture}
        if details.context_length:
            info[f"{details.architecture or 'general'}.context_length"] = details.context_length
        return info
    for key in ("general.name", "tokenizer.chat_template"):
        info.pop(key, None)
    if not verbose:
        info = {k: [] if v is None or (isinstance(v, list) and len(v) > LONG_ARRAY) else v for k, v in info.items()}
    info["general.parameter_count"] = gguf.param_count
    return info


# --------------------------------------------------------------------------------------------------------
# progress of pull, push and create as Ollama's status lines

class StatusLines(Progress):
    """Turns progress events into Ollama's ``{"status", "digest", "total", "completed"}`` objects on a
    queue (the work runs in another thread; the handler streams the queue)."""

    def __init__(self, out: queue.Queue):
        self.out = out
        self._tasks: dict[str, list] = {}  # task -> [label, total, completed, last sent]
        self._lock = threading.Lock()

    def start(self, task: str, total: int | None, label: str = "") -> None:
        with self._lock:
            self._tasks[task] = [label or task, total, 0, 0.0]
        self._send(task, force=True)

    def advance(self, task: str, amount: int) -> None:
        with self._lock:
            if task not in self._tasks:
                self._tasks[task] = [task, None, 0, 0.0]
            self._tasks[task][2] += amount
        self._send(task)

    def finish(self, task: str, status: str = "done") -> None:
        with self._lock:
            state = self._tasks.get(task)
            if state and state[1] is not None:
                state[2] = state[1]
        self._send(task, force=True)

    def message(self, text: str) -> None:
        self.out.put({"status": text})

    def _send(self, task: str, force: bool = False) -> None:
        with self._lock:
            label, total, completed, last = self._tasks[task]
            now = time.monotonic()
            if not force and now - last < 0.1:
                return
            self._tasks[task][3] = now
        line = {"status": label, "digest": task}
        if total is not None:
            line.update(total=total, completed=completed)
        self.out.put(line)


# --------------------------------------------------------------------------------------------------------
# the handlers


class OllamaApi:
    """The ``/api`` handlers, over the store and the model cache that ``backend`` holds."""

    def __init__(self, backend: Backend):
        self.backend = backend
        self.store = backend.store
        self.cache = backend.cache

    def routes(self) -> dict[tuple[str, str], Route]:
        """(method, path) -> handler; ``blob`` answers the paths under ``/api/blobs/``."""
        return {
            ("GET", "/"): self.root, ("HEAD", "/"): self.root,
            ("GET", "/api/version"): self.version, ("HEAD", "/api/version"): self.version,
            ("GET", "/api/tags"): self.tags, ("HEAD", "/api/tags"): self.tags,
            ("GET", "/api/ps"): self.ps,
            ("POST", "/api/show"): self.show,
            ("POST", "/api/copy"): self.copy,
            ("DELETE", "/api/delete"): self.delete,
            ("POST", "/api/pull"): self.pull,
            ("POST", "/api/push"): self.push,
            ("POST", "/api/create"): self.create,
            ("POST", "/api/generate"): self.generate,
            ("POST", "/api/chat"): self.chat,
            ("POST", "/api/embed"): self.embed,
            ("POST", "/api/embeddings"): self.embeddings,
        }

    # ----- models

    def reference(self, body: Mapping[str, Any], key: str = "model") -> tuple[str, Reference]:
        name = body.get(key) or body.get("name")
        if not isinstance(name, str) or not name:
            raise ApiError(400, "model is required")
        return name, config.reference(name)

    def _model_details_json(self, details: ModelDetails) -> dict[str, Any]:
        family = details.architecture or ""
        return {"parent_model": "", "format": "gguf", "family": family, "families": [family] if family else None,
                "parameter_size": details.parameters_size, "quantization_level": details.quantization}

    def root(self, req: Request) -> None:
        req.send_text("Ollama is running")

    def version(self, req: Request) -> None:
        """The Ollama version whose API this server speaks (clients gate features on it), and modelpkg's own."""
        # "modelpkg" tells `modelpkg run` that this is a modelpkg serve and which store it serves (by its random
        # id, not a path); a real Ollama has no such field, so it is never taken for one
        try:
            store_id: str | None = self.store.store_id()
        except ModelpkgError:  # a read-only store without an id yet: no `run` can match it
            store_id = None
        req.send_json({"version": OLLAMA_VERSION, "modelpkg": {"version": __version__, "store_id": store_id}})

    def tags(self, req: Request) -> None:
        models = []
        for entry in self.store.refs():
            try:
                details = describe(self.store, config.reference(entry.name))
                size, info = details.size, self._model_details_json(details)
            except ModelpkgError:
                size, info = entry.size, {}
            short = display_name(entry.name)
            models.append({"name": short, "model": short, "modified_at": iso_time(entry.modified),
                           "size": size, "digest": entry.digest.hex, "details": info})
        req.send_json({"models": sorted(models, key=lambda m: m["name"])})

    def ps(self, req: Request) -> None:
        models = []
        for entry, expires in self.cache.loaded():
            details, short = entry.details, display_name(entry.name)
            # as Ollama: the context of all the slots together, and the memory with their KV cache (on a CPU:
            # none of it in VRAM)
            kv = kv_bytes(details, entry.n_ctx, entry.parallel)
            models.append({"name": short, "model": short, "size": details.size + kv, "digest": details.digest.hex,
                           "details": self._model_details_json(details),
                           "expires_at": iso_time(expires) if expires is not None else "2318-11-25T00:00:00Z",
                           "size_vram": 0, "context_length": entry.context_length})
        req.send_json({"models": models})

    def show(self, req: Request) -> None:
        body = req.json()
        name, ref = self.reference(body)
        try:
            details = describe(self.store, ref)
        except NotFoundError as e:
            raise ApiError(404, f"model '{name}' not found") from e
        entry = self.store.resolve(ref)
        info = model_info(details, verbose=body.get("verbose") is True)
        answer = {"modelfile": modelfile_for(details, display_name(details.name)),
                  "parameters": parameters_text(details.parameters),
                  "template": details.template if details.template is not None else "{{ .Prompt }}",
                  "details": self._model_details_json(details), "model_info": info,
                  "capabilities": self.backend.capabilities(details), "modified_at": iso_time(entry.modified)}
        if details.system is not None:
            answer["system"] = details.system
        if details.licenses:
            answer["license"] = "\n\n".join(details.licenses)
        if details.messages:
            answer["messages"] = list(details.messages)
        req.send_json(answer)

    def copy(self, req: Request) -> None:
        from modelpkg.ops.models import copy

        body = req.json()
        src, dst = body.get("source"), body.get("destination")
        if not isinstance(src, str) or not src or not isinstance(dst, str) or not dst:
            raise ApiError(400, "source and destination are required")
        source = config.reference(src)
        if not self.backend.exists(source):
            raise ApiError(404, f"model '{src}' not found")
        copy(self.store, source, config.reference(dst))
        req.send_empty()

    def delete(self, req: Request) -> None:
        from modelpkg.ops.models import remove

        body = req.json()
        name, ref = self.reference(body)
        if not self.backend.exists(ref):
            raise ApiError(404, f"model '{name}' not found")
        full = self.store.resolve(ref).name
        self.cache.unload(full)
        remove(self.store, [ref])
        req.send_empty()

    # ----- pull, push, create: progress lines from a worker thread

    def _progress_job(self, req: Request, body: Mapping[str, Any], work: Callable[[Progress], None]) -> None:
        lines: queue.Queue = queue.Queue()
        progress = StatusLines(lines)
        done = object()
        failure: list[BaseException] = []

        def run() -> None:
            try:
                work(progress)
            except BaseException as e:  # noqa: BLE001 - handed to the request thread
                failure.append(e)
            finally:
                lines.put(done)

        worker = threading.Thread(target=run, name="modelpkg-job", daemon=True)
        worker.start()
        if body.get("stream") is False:
            worker.join()
            if failure:
                raise failure[0]
            req.send_json({"status": "success"})
            return
        req.start_stream("application/x-ndjson")
        while True:
            item = lines.get()
            if item is done:
                break
            req.write_json_line(item)  # a client that goes away leaves the work running, as Ollama's does
        if failure:
            req.write_json_line({"error": self.backend.public_error(failure[0]).message})
        req.end_stream()

    def pull(self, req: Request) -> None:
        from modelpkg.ops.pull import pull

        body = req.json()
        _, ref = self.reference(body)
        insecure = bool(body.get("insecure"))
        self._progress_job(req, body, lambda p: pull(self.store, ref, progress=p, insecure=insecure))

    def push(self, req: Request) -> None:
        from modelpkg.ops.push import push

        body = req.json()
        name, ref = self.reference(body)
        if not self.backend.exists(ref):
            raise ApiError(404, f"model '{name}' not found")
        insecure = bool(body.get("insecure"))

        def work(progress: Progress) -> None:
            progress.message("retrieving manifest")
            push(self.store, ref, progress=progress, insecure=insecure)

        self._progress_job(req, body, work)

    def create(self, req: Request) -> None:
        """``/api/create`` in ``create``'s API mode: FROM and ADAPTER name blobs and models in the store, never
        a path (refused here, before anything streams, with one 400 whatever the path)."""
        from modelpkg.ops.create import check_api_modelfile, create

        body = req.json()
        _, ref = self.reference(body)
        quantize = body.get("quantize") or body.get("quantization")  # Ollama reads both (the second is older)
        if quantize is not None and not isinstance(quantize, str):
            raise ApiError(400, "quantize must be a string")
        if quantize:
            from modelpkg.runtime.quantize import parse_type

            quantize = parse_type(quantize)  # a type it does not know: a 400 now, before anything streams
        text = body.get("modelfile")
        if text is not None and not isinstance(text, str):
            raise ApiError(400, "modelfile must be a string")
        if text is None:
            text = modelfile_from_fields(body)
        check_api_modelfile(mf.parse(text))  # a Modelfile that does not parse, or names a path: a 400 now
        self.store.init()

        def work(progress: Progress) -> None:
            progress.message("parsing modelfile")
            create(self.store, ref, text, None, progress=progress, resolve_name=config.reference,
                   quantize=quantize or None)
            self.cache.unload(str(ref))
            progress.message("success")

        self._progress_job(req, body, work)

    def blob(self, req: Request) -> None:
        """``HEAD``/``POST /api/blobs/sha256:<hex>``: does the store have it; upload it (checked)."""
        try:
            digest = Digest.parse(req.path.rsplit("/", 1)[1])
        except InvalidInputError as e:
            raise ApiError(400, e.message) from e
        if req.method == "HEAD":
            if not self.store.has_blob(digest):
                raise ApiError(404, "blob not found")
            req.send_empty()
            return
        def mismatch(staged: ingest.Staged) -> ApiError:
            return ApiError(400, f"digest mismatch, expected {str(digest)!r}, got {str(staged.digest)!r}")

        with self.store.session() as pins:
            ingest.receive(self.store, req.body_stream(), pins, expected=digest, prefix="upload", error=mismatch)
        req.send_empty(201)

    # ----- generation

    def _stats(self, result: Result, load_duration: float) -> dict[str, Any]:
        ns = 1_000_000_000
        return {"done_reason": result.done_reason, "total_duration": int((result.total_duration + load_duration) * ns),
                "load_duration": int(load_duration * ns), "prompt_eval_count": result.prompt_eval_count,
                "prompt_eval_duration": int(result.prompt_eval_duration * ns), "eval_count": result.eval_count,
                "eval_duration": int(result.eval_duration * ns)}

    def _requested(self, body: Mapping[str, Any], model: str, details: ModelDetails, *,
                   chat: bool) -> tuple[list[dict[str, Any]] | None, bool | str | None]:
        """The request's tools and think, checked against the model's capabilities with Ollama's errors."""
        caps = self.backend.capabilities(details)
        if body.get("images") or any(isinstance(m, dict) and m.get("images") for m in body.get("messages") or []):
            if "vision" not in caps:
                raise ApiError(400, f"{model} does not support vision")
            raise ApiError(400, "images are not supported by modelpkg serve", "invalid_request_error")
        tools = check_tools(body.get("tools")) if chat else None
        if tools and "tools" not in caps:
            raise ApiError(400, f"{model} does not support tools")
        if not chat and body.get("suffix") and "insert" not in caps:
            raise ApiError(400, f"{model} does not support insert")
        try:
            think = check_think(body.get("think"))
        except ValueError as e:
            raise ApiError(400, str(e)) from e
        if "thinking" in caps:
            think = True if think is None else think  # Ollama thinks by default where the model can
        elif think:
            raise ApiError(400, f"{json.dumps(model)} does not support thinking")
        return tools, think

    def _load_only(self, req: Request, details: ModelDetails, model: str, keep_alive: Any, chat: bool) -> None:
        """An empty prompt loads the model (or, with keep_alive 0, unloads it), as ``ollama run``/``stop``."""
        seconds = parse_keep_alive(keep_alive, self.cache.default_keep_alive)
        if seconds == 0:
            self.cache.unload(details.name, details.digest)
            reason = "unload"
        else:
            with self.cache.use(details, keep_alive) as loaded:
                loaded.load(load_options(Session(details).parameters(), details.model_path,
                                         details.adapter_paths, details.context_length, details.shard_paths))
            reason = "load"
        answer = {"model": model, "created_at": iso_time(), "done": True, "done_reason": reason}
        if chat:
            answer["message"] = {"role": "assistant", "content": ""}
        else:
            answer["response"] = ""
        req.send_json(answer)

    def generate(self, req: Request) -> None:
        body = req.json()
        model, ref = self.reference(body)
        details = self.backend.details(model, ref)
        _, think = self._requested(body, model, details, chat=False)
        prompt, context = body.get("prompt") or "", body.get("context") or []
        if not isinstance(prompt, str) or not isinstance(context, list):
            raise ApiError(400, "prompt must be a string and context a list of tokens")
        if not prompt and not context:
            self._load_only(req, details, model, body.get("keep_alive"), chat=False)
            return
        if body.get("raw") and (body.get("template") or body.get("system") or context):
            raise ApiError(400, "raw mode does not support template, system, or context")
        suffix = body.get("suffix") or ""
        if not isinstance(suffix, str):
            raise ApiError(400, "suffix must be a string")
        if body.get("template"):
            details = replace(details, template=str(body["template"]))
        options = with_logprobs(options_from(body.get("options")), bool(body.get("logprobs")),
                                body.get("top_logprobs"))
        system = body.get("system")
        if system is not None and not isinstance(system, str):
            raise ApiError(400, "system must be a string")
        stream = body.get("stream", True) is not False
        think = None if body.get("raw") else think
        with self.cache.use(details, body.get("keep_alive")) as loaded:
            session = Session(details, options, load=loaded.load)
            generation = self._start_generation(session, body, prompt, context, system, suffix, think)
            runner = session.loaded
            if body.get("_debug_render_only"):
                self._rendered(req, model, generation, runner.last_prompt or "", chat=False)
                return
            created = iso_time()
            splitter = AnswerSplitter(details.template, None, tools=False, think=bool(think),
                                      prompt=runner.last_prompt or "")
            cursor = LogprobCursor(generation.result)
            pending: list = []  # log probabilities of pieces the splitter still holds

            def emit(piece: str) -> None:
                thinking, text = splitter.feed(piece)
                if generation.result.logprobs is not None:
                    pending.extend(cursor.take(piece))
                if thinking or text:
                    req.write_json_line({"model": model, "created_at": iso_time(), "response": text,
                                         **({"thinking": thinking} if thinking else {}), "done": False,
                                         **self._logprobs(generation.result, pending)})
                    pending.clear()

            if stream:
                req.start_stream("application/x-ndjson")
            result = self.backend.drain(req, "/api/generate", model, generation, emit if stream else None)
            thinking, text = ("", "") if stream else splitter.feed(result.text)
            more_thinking, more_text, _ = splitter.finish()
            final = {"model": model, "created_at": created if not stream else iso_time(),
                     "response": text + more_text, "done": True, **self._stats(result, loaded.load_duration),
                     **(self._logprobs(result) if not stream else self._logprobs(result, pending) if pending else {})}
            if thinking + more_thinking:
                final["thinking"] = thinking + more_thinking
            if not body.get("raw"):  # Ollama gives a raw prompt no context
                final["context"] = list(runner.last_prompt_tokens) + list(result.tokens)
        self._answer(req, stream, final)

    def _start_generation(self, session: Session, body: Mapping[str, Any], prompt: str, context: list,
                          system: str | None, suffix: str, think: Any):
        """``/api/generate``'s generation: a ``raw`` prompt, or a prompt after an earlier answer's
        ``context``, goes to the runner as it is; a ``suffix`` fills in the middle (the template's
        ``.Suffix``, else the GGUF's FIM tokens); any other prompt goes through the session's template."""
        fmt = body.get("format")
        if not (body.get("raw") or context or suffix):
            return session.request(prompt=prompt, system=system, format=fmt, think=think)
        runner = session.runner()
        sampling = sampling_options(session.parameters())
        if suffix and not body.get("raw"):
            text, bos = session.insert_prompt(prompt, suffix, think), True
        elif body.get("raw"):
            text, bos = prompt, True
        else:  # Ollama: the earlier context's text, then this prompt rendered without the MESSAGEs
            turns = [{"role": "user", "content": prompt}]
            built = session.build_prompt(conversation([], turns, system or session.details.system), runner)
            text, bos = runner.detokenize(context) + built.text, False
        runner.reset()
        return runner.generate(text, sampling, add_bos=bos, format=fmt)

    @staticmethod
    def _logprobs(result: Result, entries: list | None = None) -> dict[str, Any]:
        """Ollama's ``logprobs`` field when the request asked for it: a streamed line's tokens, or all."""
        if result.logprobs is None:
            return {}
        entries = result.logprobs if entries is None else entries
        return {"logprobs": [logprob_json(e) for e in entries]}

    @staticmethod
    def _answer(req: Request, stream: bool, final: dict[str, Any]) -> None:
        """The last object: the stream's final line, or the whole answer."""
        if stream:
            req.write_json_line(final)
            req.end_stream()
        else:
            req.send_json(final)

    def chat(self, req: Request) -> None:
        body = req.json()
        model, ref = self.reference(body)
        details = self.backend.details(model, ref)
        tools, think = self._requested(body, model, details, chat=True)
        raw_messages = body.get("messages") or []
        if not raw_messages:
            self._load_only(req, details, model, body.get("keep_alive"), chat=True)
            return
        messages = chat_messages(raw_messages)
        options = with_logprobs(options_from(body.get("options")), bool(body.get("logprobs")),
                                body.get("top_logprobs"))
        stream = body.get("stream", True) is not False
        with self.cache.use(details, body.get("keep_alive")) as loaded:
            generation = self.backend.chat_generation(details, loaded, messages, options, body.get("format"),
                                                      tools=tools, think=think)
            if body.get("_debug_render_only"):
                self._rendered(req, model, generation, generation.prompt.text, chat=True)
                return
            splitter = answer_splitter(details, loaded, generation, tools, think)
            cursor = LogprobCursor(generation.result)
            pending: list = []  # log probabilities of pieces the splitter still holds

            def line(content: str, thinking: str = "", calls: list | None = None) -> dict[str, Any]:
                message: dict[str, Any] = {"role": "assistant", "content": content}
                if thinking:
                    message["thinking"] = thinking
                if calls:
                    message["tool_calls"] = calls
                return {"model": model, "created_at": iso_time(), "message": message, "done": False}

            def emit(piece: str) -> None:
                thinking, content = splitter.feed(piece)
                if generation.result.logprobs is not None:
                    pending.extend(cursor.take(piece))
                if thinking or content:
                    req.write_json_line({**line(content, thinking), **self._logprobs(generation.result, pending)})
                    pending.clear()

            if stream:
                req.start_stream("application/x-ndjson")
            result = self.backend.drain(req, "/api/chat", model, generation, emit if stream else None)
            thinking, content = ("", "") if stream else splitter.feed(result.text)
            more_thinking, more_content, calls = splitter.finish()
            calls = with_call_ids(calls)
            if stream and (more_thinking or more_content or calls):
                req.write_json_line({**line(more_content, more_thinking, calls), **self._logprobs(result, pending)})
                pending.clear()
                more_thinking = more_content = ""
                calls = []
            final = {**line(content + more_content, thinking + more_thinking, calls), "done": True,
                     **self._stats(result, loaded.load_duration),
                     **(self._logprobs(result) if not stream else self._logprobs(result, pending) if pending else {})}
        self._answer(req, stream, final)

    @staticmethod
    def _rendered(req: Request, model: str, generation: Any, prompt: str, chat: bool) -> None:
        """Ollama's ``_debug_render_only``: the prompt the template rendered, and no generation."""
        generation.close()
        answer = {"model": model, "created_at": iso_time(), "done": False,
                  "debug_info": {"rendered_template": prompt, "image_count": 0}}
        answer.update({"message": {"role": "assistant", "content": ""}} if chat else {"response": ""})
        req.send_json(answer)

    # ----- embeddings

    def embed(self, req: Request) -> None:
        body = req.json()
        model, ref = self.reference(body)
        details = self.backend.details(model, ref)
        texts = body.get("input", "")
        texts = [texts] if isinstance(texts, str) else texts
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise ApiError(400, "input must be a string or a list of strings")
        texts = [t for t in texts if t] if len(texts) == 1 and not texts[0] else texts
        truncate = body.get("truncate", True) is not False
        vectors, count, load, total = self.backend.embed(details, texts, body.get("options"), body.get("keep_alive"),
                                                         truncate)
        dims = body.get("dimensions")
        if isinstance(dims, int) and dims > 0:
            vectors = [normalised(v[:dims]) for v in vectors]
        ns = 1_000_000_000
        req.send_json({"model": model, "embeddings": vectors, "total_duration": int(total * ns),
                       "load_duration": int(load * ns), "prompt_eval_count": count})

    def embeddings(self, req: Request) -> None:
        body = req.json()
        model, ref = self.reference(body)
        details = self.backend.details(model, ref)
        prompt = body.get("prompt") or ""
        if not isinstance(prompt, str):
            raise ApiError(400, "prompt must be a string")
        vectors, *_ = self.backend.embed(details, [prompt] if prompt else [], body.get("options"),
                                         body.get("keep_alive"))
        req.send_json({"embedding": vectors[0] if vectors else []})
