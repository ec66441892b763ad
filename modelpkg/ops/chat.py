"""Running a model from the store: which prompt path applies, what the conversation is, which options win.

What ``modelpkg run`` does, without the terminal: ``open_model`` resolves a name (pulling it when it is not
in the store) and checks the weights' digest; a ``Session`` holds one conversation with one loaded model
and turns each request into a prompt, the way Ollama's server does (reference/ollama-behaviour.md §5):

- **Prompt path.** A Modelfile ``TEMPLATE`` (Go text/template) is rendered with ``modelpkg.core.prompt.render``
  (Ollama's ``template.Execute``). Without one, a Jinja chat template -- the model's own template layer
  (Docker Model Runner's ``chat.template.jinja``), else the GGUF's ``tokenizer.chat_template`` -- is
  rendered with llama-cpp-python's chat formatting (what ``create_chat_completion`` would use; newer
  Ollama sends such models to llama-server's Jinja too). With neither -- a base model such as Gemma 3
  270M -- Ollama's default template ``{{ .Prompt }}`` applies: the prompt is sent as it is, the SYSTEM
  prompt is not added (that template does not mention it), and in a conversation earlier turns are
  concatenated (prompt, answer, prompt, ...), as Ollama's per-turn execution of that template gives
  (``completion_prompt``).
- **Conversation.** The model's MESSAGE history, then this session's turns; the system prompt (the
  model's SYSTEM, or the one set with ``--system`` / ``/set system``) goes first unless the conversation
  already starts with a system message (``routes.go`` ChatHandler). When the prompt does not fit the
  context, the oldest turns are dropped (never the system prompt or the newest message), as Ollama's
  ``chatPrompt`` truncates.
- **Options.** Ollama's defaults, then the model's PARAMETERs, then the command line, then ``/set
  parameter`` or a batch line's ``options``: later wins; a ``stop`` list replaces, it does not append.
  Changing a load-time parameter (num_ctx, num_batch, ...) reloads the model, as Ollama restarts its runner.

- **Tools and thinking.** ``tools`` and ``think`` reach the template (``.Tools``, ``.Think``...; a Jinja
  template gets ``tools`` and ``enable_thinking``); ``AnswerSplitter`` splits the answer into thinking and
  content by the template's tags and finds tool calls in it (``core.thinking``, ``core.tools``);
  ``model_capabilities`` says what a model can do, as Ollama's ``Model.Capabilities``.

Orchestration: imports the core (errors, modelfile; template when a model has one), the store, ``models``
and the runner adapter; ``llama_cpp`` only through the runner.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from modelpkg.base import fsutil
from modelpkg.core import modelfile as mf
from modelpkg.core.digest import Digest
from modelpkg.core.errors import (
    IntegrityError,
    InvalidInputError,
    ModelfileError,
    ModelpkgError,
    NetworkError,
    NotFoundError,
    RunnerError,
    UsageError,
)
from modelpkg.core.manifest import SAFETENSORS, model_layers, split_problem
from modelpkg.core.progress import NullProgress, Progress
from modelpkg.core.reference import Reference
from modelpkg.ops.models import ModelDetails, describe
from modelpkg.runtime.runner import (
    Generation,
    LoadOptions,
    Result,
    Runner,
    effective_parameters,
    load_options,
    sampling_options,
)
from modelpkg.store import Store

GO_TEMPLATE = "template"     # the Modelfile's TEMPLATE, Go text/template
GGUF_TEMPLATE = "gguf"       # the GGUF's tokenizer.chat_template, Jinja
COMPLETION = "completion"    # neither: Ollama's default template, the prompt as it is
DEFAULT_TEMPLATE = "{{ .Prompt }}"  # Ollama's, for a model without a template
ROLES = ("system", "user", "assistant", "tool")


# --------------------------------------------------------------------------------------------------------
# finding the model


def open_model(store: Store, ref: Reference, *, progress: Progress | None = None, insecure: bool = False,
               pull: bool = True) -> ModelDetails:
    """The model named ``ref``, pulled first when it is not in the store, with its weights checked."""
    progress = progress or NullProgress()
    try:
        store.resolve(ref)
    except NotFoundError:
        if not pull:
            raise
        _pull(store, ref, progress, insecure)
    details = describe(store, ref)
    if details.model_path is None and details.weight_format == SAFETENSORS:
        raise RunnerError(f"{ref.short()} has safetensors weights, and llama.cpp runs GGUF only",
                          "convert them with llama.cpp's convert_hf_to_gguf.py, then 'modelpkg create NAME' with "
                          "FROM the .gguf it writes")
    if details.model_path is None:
        raise RunnerError(f"{ref.short()} has no model weights layer", "create it FROM a GGUF file")
    problem = split_problem(model_layers(details.manifest))
    if problem is not None:
        raise RunnerError(f"{ref.short()} is a split GGUF whose {problem}",
                          "pull the model again, or create it again FROM the first shard with every shard beside it")
    verify_weights(store, details, progress)
    return details


def _pull(store: Store, ref: Reference, progress: Progress, insecure: bool) -> None:
    try:
        from modelpkg.ops.pull import pull
    except ImportError as e:
        raise NotFoundError(f"model not found: {ref}",
                            "pulling is not available in this version; create the model with "
                            "'modelpkg create NAME -f Modelfile'") from e
    progress.message(f"pulling {ref.short()}")
    try:
        pull(store, ref, progress=progress, insecure=insecure)
    except NotFoundError as e:  # the registry has no such model either
        raise NotFoundError(f"model not found: {ref.short()}",
                            "not in the store, and the registry has no such model; 'modelpkg list' shows "
                            "local models") from e
    except NetworkError as e:  # nor can it be asked: still one line saying the model is not here
        raise NotFoundError(f"model not found: {ref.short()} (not in the store, and {e.message})",
                            "check the name ('modelpkg list' shows local models), or the network") from e


def verify_weights(store: Store, details: ModelDetails, progress: Progress | None = None) -> None:
    """Re-hash the weights and adapter blobs before llama.cpp reads them, unless they were verified
    unchanged since (same size, mtime and inode: a marker in ``ingest/verified/``). A 4 GB model is then
    hashed once, not at every run; hashing 240 MB takes about 0.2 s."""
    layers = model_layers(details.manifest)
    for layer in (layers.model, *layers.shards[1:], *layers.adapters):
        if layer is not None:
            digest = layer.digest
            if layer is layers.model and details.model_path is not None and details.model_path.name != digest.hex:
                digest = Digest(details.model_path.name)  # a derived blob: the GGUF out of a KitOps tar
            _verify_blob(store, digest, details.name, progress or NullProgress())


def _verify_blob(store: Store, digest: Digest, name: str, progress: Progress) -> None:
    path = store.blob_path(digest)
    try:
        size = path.stat().st_size
    except FileNotFoundError as e:
        raise NotFoundError(f"blob {digest} of {name} is missing from the store",
                            "pull the model again, or create it again") from e
    except OSError as e:
        raise fsutil.os_error(e, path, "reading") from e
    if store.is_verified(digest):
        return
    progress.start(digest.short, size, f"verifying {digest.short}")
    try:
        actual, _ = fsutil.hash_file(path, progress, digest.short)
    except OSError as e:
        raise fsutil.os_error(e, path, "reading") from e
    progress.finish(digest.short)
    if actual != digest:
        store.forget_verified(digest)
        raise IntegrityError(f"the weights of {name} are corrupted: blob {digest} now has digest {actual}",
                             "pull the model again (or create it again); 'modelpkg verify' checks the whole store")
    store.mark_verified(digest)


# --------------------------------------------------------------------------------------------------------
# parameters from the command line, the REPL and batch lines


def parse_assignments(pairs: Sequence[str]) -> dict[str, Any]:
    """``["temperature=0", "stop=a", "stop=b"]`` -> typed values; ``stop`` items accumulate."""
    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise UsageError(f"--param {pair!r} is not NAME=VALUE", "for example --param temperature=0.2")
        typed = typed_parameter(name.strip(), value)
        out[name.strip()] = out.get(name.strip(), []) + typed if isinstance(typed, list) else typed
    return out


def typed_parameter(name: str, value: str, error: type[ModelpkgError] = UsageError) -> Any:
    """One parameter value from text, typed as a Modelfile's PARAMETER is (Ollama's FormatParams)."""
    try:
        return mf.convert_parameter(name, value)
    except ModelfileError as e:
        raise error(e.reason, e.hint) from e


def typed_options(options: Any) -> dict[str, Any]:
    """A batch line's ``options`` object: Ollama parameter names, JSON values (or strings, typed as above)."""
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise InvalidInputError("options must be a JSON object of parameter names to values")
    out: dict[str, Any] = {}
    for name, value in options.items():
        kind = mf.PARAMETER_TYPES.get(name)
        if kind is None:
            typed_parameter(name, "", InvalidInputError)  # raises the unknown-parameter error with its hint
        if isinstance(value, str) and kind is not list:
            out[name] = typed_parameter(name, value, InvalidInputError)
        elif kind is list:
            items = [value] if isinstance(value, str) else value
            if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
                raise InvalidInputError(f"option {name} must be a string or a list of strings")
            out[name] = list(items)
        elif (kind is bool and isinstance(value, bool)) or (
                kind is int and isinstance(value, int) and not isinstance(value, bool)):
            out[name] = value
        elif kind is int and isinstance(value, float) and value.is_integer():
            out[name] = int(value)
        elif kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
        else:
            raise InvalidInputError(f"option {name} must be {kind.__name__}, not {json.dumps(value)}")
    return out


def request_options(options: Any) -> tuple[dict[str, Any], list[str]]:
    """An API request's ``options`` read as Ollama's ``Options.FromMap`` reads them (``api/types.go``): a
    ``null`` value leaves the option unset, an unknown or deprecated name is ignored (the names are returned
    for the caller to log, as Ollama logs "invalid option provided"), a number for an integer option is
    truncated; a value of the wrong type is still an error. A Modelfile's PARAMETER stays strict
    (``typed_parameter``), as Ollama's ``FormatParams`` is."""
    if options is None:
        return {}, []
    if not isinstance(options, dict):
        raise InvalidInputError("options must be a JSON object of parameter names to values")
    known: dict[str, Any] = {}
    ignored: list[str] = []
    for name, value in options.items():
        kind = mf.PARAMETER_TYPES.get(name)
        if kind is None:
            ignored.append(str(name))
        elif value is not None:
            finite = isinstance(value, float) and math.isfinite(value)
            known[name] = int(value) if kind is int and finite else value  # Go's int64(float64): truncated
    return typed_options(known), ignored


# --------------------------------------------------------------------------------------------------------
# conversations and prompts (pure)


def conversation(model_messages: Sequence[Mapping[str, Any]], turns: Sequence[Mapping[str, Any]],
                 system: str | None) -> list[dict[str, Any]]:
    """Ollama's ChatHandler: the model's MESSAGEs, then ``turns``; ``system`` first unless ``turns`` starts
    with a system message of its own."""
    messages = [dict(m) for m in model_messages] + [dict(m) for m in turns]
    if system and not (turns and turns[0].get("role") == "system"):
        messages.insert(0, {"role": "system", "content": system})
    return messages


def check_messages(messages: Any) -> list[dict[str, Any]]:
    """A list of ``{"role", "content"}`` objects, as a batch line or an API client gives them."""
    if not isinstance(messages, list) or not messages:
        raise InvalidInputError("messages must be a non-empty list of {\"role\", \"content\"} objects")
    out = []
    for i, m in enumerate(messages, 1):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise InvalidInputError(f"message {i} must be an object with a role ({', '.join(ROLES)}) "
                                    "and a string content")
        out.append(dict(m))
    return out


def prompt_kind(template: str | None, gguf_template: str | None) -> str:
    if template is not None:
        return GO_TEMPLATE
    if gguf_template:
        return GGUF_TEMPLATE
    return COMPLETION


def completion_prompt(messages: Sequence[Mapping[str, Any]]) -> str:
    """What Ollama's default template ``{{ .Prompt }}`` renders for ``messages``: executed once per turn it
    gives each prompt followed by its answer (``{{ .Response }}`` is appended to a template that lacks it),
    system messages print nothing, consecutive messages of one role are joined by a blank line (``collate``),
    and nothing follows the last turn's answer (usually empty). The same text as
    ``prompt.render(DEFAULT_TEMPLATE, messages)`` (a property test checks it), without loading the
    template engine for a base model."""
    collated: list[list[str]] = []
    for m in messages:
        role, content = str(m.get("role", "")), str(m.get("content", ""))
        if collated and collated[-1][0] == role and role != "tool":
            collated[-1][1] += "\n\n" + content
        else:
            collated.append([role, content])
    out: list[str] = []
    prompt = response = ""
    for role, content in collated:  # template.go Execute's loop over a legacy template's turns
        if (role == "system" and (prompt or response)) or (role == "user" and response):
            out.append(prompt + response)
            prompt = response = ""
        if role == "user":
            prompt = content
        elif role == "assistant":
            response = content
    # the last turn's template is cut right after {{ .Response }}: an answer begun by the caller is continued
    return "".join(out) + prompt + response


@dataclass(frozen=True)
class Prompt:
    """What is sent to the model: the text, whether BOS is prepended, and the messages it was made from."""

    text: str
    add_bos: bool
    messages: tuple[dict[str, Any], ...]
    kind: str


# --------------------------------------------------------------------------------------------------------
# a session: one loaded model, one conversation


class Session:
    """One model and one conversation. ``load`` builds the runner (``Runner.load``; tests may pass another).

    ``overrides`` are the command line's parameters; ``set_parameter`` adds the session's own on top.
    """

    def __init__(self, details: ModelDetails, overrides: Mapping[str, Any] | None = None, *,
                 system: str | None = None, load: Callable[[LoadOptions], Runner] = Runner.load):
        self.details = details
        self.cli_parameters = dict(overrides or {})
        self.session_parameters: dict[str, Any] = {}
        self.system = system if system is not None else details.system
        self.turns: list[dict[str, Any]] = []
        self._load = load
        self._runner: Runner | None = None
        self.last_prompt: Prompt | None = None
        self.think: bool | str | None = None  # run --think / /set think; None: as the model can (Ollama's default)

    # ----- options

    def parameters(self, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Every parameter in force: defaults < model < command line < session < ``extra``."""
        return effective_parameters(self.details.parameters, self.cli_parameters, self.session_parameters, extra)

    def user_parameters(self) -> dict[str, Any]:
        return {**self.cli_parameters, **self.session_parameters}

    def set_parameter(self, name: str, words: Sequence[str]) -> Any:
        """``/set parameter NAME VALUE...``: typed as PARAMETER; ``stop`` takes every word."""
        if not words:
            raise UsageError(f"no value for parameter '{name}'", "use /set parameter NAME VALUE")
        if mf.PARAMETER_TYPES.get(name) is list:
            value: Any = list(words)
        else:
            value = typed_parameter(name, " ".join(words))
        self.session_parameters[name] = value
        return value

    def set_system(self, text: str) -> None:
        self.system = text

    def clear(self) -> None:
        """Forget this session's turns (the model's MESSAGE history stays, as in Ollama)."""
        self.turns.clear()

    # ----- the model

    def runner(self, extra: Mapping[str, Any] | None = None) -> Runner:
        """The loaded model, (re)loaded when the load-time options in force differ from the loaded ones."""
        params = self.parameters(extra)
        wanted = load_options(params, self.details.model_path, self.details.adapter_paths,
                              self.details.context_length, self.details.shard_paths)
        if self._runner is not None and self._runner.options != wanted:
            self._runner.close()
            self._runner = None
        if self._runner is None:
            self._runner = self._load(wanted)
        return self._runner

    @property
    def loaded(self) -> Runner | None:
        return self._runner

    def close(self) -> None:
        if self._runner is not None:
            self._runner.close()
            self._runner = None

    def kind(self) -> str:
        return prompt_kind(self.details.template, self.jinja_template(self.runner()))

    def jinja_template(self, runner: Runner) -> str | None:
        """The Jinja chat template: the model's own template layer (Docker Model Runner ships one) before
        the GGUF's ``tokenizer.chat_template``."""
        return self.details.chat_template or runner.chat_template

    def template_text(self) -> str | None:
        """The template in use (Go or Jinja), or None for plain completion."""
        kind = self.kind()
        if kind == GO_TEMPLATE:
            return self.details.template
        if kind == GGUF_TEMPLATE:
            return self.jinja_template(self.runner())
        return None

    # ----- prompts

    def build_prompt(self, messages: Sequence[Mapping[str, Any]], runner: Runner,
                     reserve: int = 0, **values: Any) -> Prompt:
        """Render ``messages`` for the model, dropping the oldest turns while the prompt does not fit;
        ``values`` (``tools``, ``think``) go to the template."""
        messages = [dict(m) for m in messages]
        while True:
            prompt = self._render(messages, runner, **values)
            if len(messages) <= 1 or self._fits(prompt, runner, reserve):
                return prompt
            droppable = [i for i, m in enumerate(messages[:-1]) if m.get("role") != "system"]
            if not droppable:
                return prompt
            del messages[droppable[0]]

    @staticmethod
    def _fits(prompt: Prompt, runner: Runner, reserve: int) -> bool:
        # a token is at least one byte (BOS aside), so a short prompt fits without tokenizing it
        if len(prompt.text.encode()) + 1 + reserve < runner.n_ctx:
            return True
        return len(runner.tokenize(prompt.text, prompt.add_bos)) + reserve < runner.n_ctx

    def _render(self, messages: list[dict[str, Any]], runner: Runner, *, tools: Any = None,
                think: Any = None) -> Prompt:
        kind = prompt_kind(self.details.template, self.jinja_template(runner))
        if kind == GGUF_TEMPLATE:
            # llama-cpp-python's chat handlers tokenize the rendered text without adding BOS: the Jinja
            # template writes {{ bos_token }} itself when the model wants one. Tools and thinking reach it as
            # llama.cpp passes them (``tools``, ``enable_thinking``).
            extra: dict[str, Any] = {"tools": tools} if tools else {}
            if think is not None:
                extra["enable_thinking"] = bool(think)
            text = runner.format_chat(messages, self.jinja_template(runner), **extra)
            return Prompt(text, False, tuple(messages), kind)
        if kind == COMPLETION:
            return Prompt(completion_prompt(messages), True, tuple(messages), kind)
        from modelpkg.core.prompt import render  # imported when used: it takes ~60 ms

        return Prompt(render(self.details.template, messages, tools=tools, think=think), True, tuple(messages), kind)

    def insert_prompt(self, prompt: str, suffix: str, think: Any = None) -> str:
        """Fill-in-the-middle: the template run with ``.Prompt`` and ``.Suffix`` only, as Ollama's
        GenerateHandler does; for a template without ``.Suffix``, llama.cpp's infill order with the GGUF's
        FIM tokens (prefix, suffix, middle). Neither: an error saying so."""
        template = self.details.template
        if template is not None:
            from modelpkg.core.prompt import capabilities, render

            if "insert" in capabilities(template):
                return render(template, [], prompt=prompt, suffix=suffix, think=think)
        from modelpkg.runtime import ggufmeta

        meta = ggufmeta.read_info(self.details.model_path).metadata if self.details.model_path else {}
        if not all(isinstance(meta.get(k), int) for k in FIM_TOKENS):
            raise InvalidInputError(f"{self.details.name} does not support insert",
                                    "give it a TEMPLATE that uses {{ .Suffix }}, or use a model with FIM tokens")
        runner = self.runner()
        pre, suf, mid = (runner.token_text(int(meta[key])) for key in FIM_TOKENS)
        return f"{pre}{prompt}{suf}{suffix}{mid}"

    # ----- generation

    def thinking(self) -> bool | str | None:
        """The think value in force: the one set, else True where the template can think (as Ollama's
        ChatHandler defaults it), else None."""
        if self.think is not None:
            return self.think
        template = self.template_text()
        if template is None:
            return None
        if self.kind() == GO_TEMPLATE:
            from modelpkg.core.prompt import capabilities

            can = "thinking" in capabilities(template)
        else:
            can = "thinking" in jinja_capabilities(template)
        return True if can else None

    def splitter(self) -> AnswerSplitter:
        """Splits the last prompt's answer into thinking and content (by the template's thinking tags)."""
        kind = self.last_prompt.kind if self.last_prompt else self.kind()
        return AnswerSplitter(self.details.template if kind == GO_TEMPLATE else None,
                              self.template_text() if kind == GGUF_TEMPLATE else None, tools=False,
                              think=bool(self.thinking()), prompt=self.last_prompt.text if self.last_prompt else "")

    def send(self, text: str) -> Generation:
        """One turn of the conversation: the answer streams; the turn is kept once it ends (an answer
        interrupted with Ctrl-C is dropped with its question). ``splitter()`` then splits its thinking."""
        user = {"role": "user", "content": text}
        think = self.thinking()
        generation = self.generate(conversation(self.details.messages, [*self.turns, user], self.system),
                                   think=think)
        return Generation(self._record(generation, user, bool(think)), generation.result)

    def _record(self, generation: Generation, user: dict[str, Any], think: bool) -> Iterator[str]:
        yield from generation
        if generation.result.done_reason != "interrupted":
            answer: dict[str, Any] = {"role": "assistant", "content": generation.result.text}
            if think:  # the turn keeps its thinking apart, as Ollama's CLI sends it back
                splitter = self.splitter()
                thinking, content = splitter.feed(generation.result.text)
                more_thinking, more_content, _ = splitter.finish()
                answer = {"role": "assistant", "content": content + more_content}
                if thinking + more_thinking:
                    answer["thinking"] = thinking + more_thinking
            self.turns += [user, answer]

    def request(self, *, prompt: str | None = None, messages: Any = None, system: str | None = None,
                options: Mapping[str, Any] | None = None, fresh: bool = True,
                format: Any = None, think: Any = None) -> Generation:  # "format": Ollama's field name
        """One independent request (a batch line): ``prompt`` (with the model's history and system) or a
        whole ``messages`` conversation, with ``options`` on top of the session's parameters.

        ``fresh`` clears the KV cache first: llama.cpp's numbers differ slightly between evaluating a
        prompt whole and on top of a cached prefix, so each request then gives what a fresh run gives.
        """
        if (prompt is None) == (messages is None):
            raise InvalidInputError("give either a prompt or messages")
        if prompt is not None:
            if not isinstance(prompt, str):
                raise InvalidInputError("prompt must be a string")
            turns = [{"role": "user", "content": prompt}]
        else:
            turns = check_messages(messages)
        if system is not None and not isinstance(system, str):
            raise InvalidInputError("system must be a string")
        msgs = conversation(self.details.messages, turns, system if system is not None else self.system)
        return self.generate(msgs, options, fresh=fresh, format=format, think=think)

    def generate(self, messages: Sequence[Mapping[str, Any]], extra: Mapping[str, Any] | None = None, *,
                 fresh: bool = False, format: Any = None, tools: Any = None, think: Any = None) -> Generation:
        """Render ``messages`` and stream the answer; ``format`` is Ollama's (``"json"`` or a schema);
        ``tools`` and ``think`` are handed to the template (``.Tools``, ``.Think``...)."""
        params = self.parameters(extra)
        runner = self.runner(extra)
        sampling = sampling_options(params)
        reserve = min(sampling.max_tokens if sampling.max_tokens > 0 else runner.n_ctx // 4, runner.n_ctx // 2)
        prompt = self.build_prompt(messages, runner, reserve, tools=tools, think=think)
        self.last_prompt = prompt
        if fresh:
            runner.reset()
        return runner.generate(prompt.text, sampling, add_bos=prompt.add_bos, format=format)


def result_json(result: Result, model: str, load_duration: float, created_at: str) -> dict[str, Any]:
    """A finished answer in the shape of Ollama's ``/api/generate`` final object (durations in ns)."""
    ns = 1_000_000_000
    return {
        "model": model,
        "created_at": created_at,
        "response": result.text,
        "done": True,
        "done_reason": result.done_reason,
        "total_duration": int((result.total_duration + load_duration) * ns),
        "load_duration": int(load_duration * ns),
        "prompt_eval_count": result.prompt_eval_count,
        "prompt_eval_duration": int(result.prompt_eval_duration * ns),
        "eval_count": result.eval_count,
        "eval_duration": int(result.eval_duration * ns),
        "prompt_tokens": result.prompt_tokens,
    }



# --------------------------------------------------------------------------------------------------------
# capabilities, and the answer split into thinking, content and tool calls

FIM_TOKENS = ("tokenizer.ggml.fim_pre_token_id", "tokenizer.ggml.fim_suf_token_id", "tokenizer.ggml.fim_mid_token_id")


def jinja_capabilities(template: str) -> list[str]:
    """What a Jinja chat template gives a model, by Ollama's ``chatTemplateCapabilities`` substring rules."""
    caps = []
    if "tools" in template or "tool_call" in template:
        caps.append("tools")
    if "<think>" in template and "</think>" in template:
        caps.append("thinking")
    return caps


def model_capabilities(details: ModelDetails, metadata: Mapping[str, Any]) -> list[str]:
    """Ollama's ``Model.Capabilities`` for a model and its GGUF's metadata: ``embedding`` (a pooling type)
    or ``completion``, ``vision`` (a vision tower), then what the template gives (``tools``, ``insert``,
    ``thinking``: a Modelfile TEMPLATE by its variables and thinking tags, else the Jinja template by
    substrings); ``insert`` also when the GGUF names fill-in-the-middle tokens (llama.cpp's infill)."""
    arch = str(metadata.get("general.architecture") or details.architecture or "")
    caps = ["embedding" if f"{arch}.pooling_type" in metadata else "completion"]
    if f"{arch}.vision.block_count" in metadata:
        caps.append("vision")
    if details.template is not None:
        from modelpkg.core.prompt import capabilities

        try:
            caps += capabilities(details.template)
        except ModelpkgError:  # a template that does not parse gives nothing (Ollama logs it)
            pass
    else:
        jinja = details.chat_template or metadata.get("tokenizer.chat_template")
        if isinstance(jinja, str) and jinja.strip():
            caps += jinja_capabilities(jinja)
    if "insert" not in caps and all(isinstance(metadata.get(k), int) for k in FIM_TOKENS):
        caps.append("insert")
    return caps


class AnswerSplitter:
    """A streamed answer split as Ollama's ChatHandler splits it: the thinking (between the template's
    thinking tags, when thinking is on), then tool calls out of the rest (when tools were given).

    ``feed(piece) -> (thinking, content)`` gives what can be shown now; ``finish() -> (thinking, content,
    calls)`` the rest, and the calls found in the whole answer (then the content held back is dropped)."""

    def __init__(self, template: str | None, jinja: str | None, *, tools: bool, think: bool, prompt: str):
        from modelpkg.core.prompt import thinking_tags
        from modelpkg.core.thinking import ThinkingSplitter
        from modelpkg.core.tools import ToolCallStream

        self.thinking: ThinkingSplitter | None = None
        tags = thinking_tags(template) if template is not None else (
            ("<think>", "</think>") if jinja and "thinking" in jinja_capabilities(jinja) else ("", ""))
        if think and tags[0] and tags[1]:
            self.thinking = ThinkingSplitter(*tags, thinking=prompt.rstrip().endswith(tags[0]))
        self.calls: ToolCallStream | None = None
        if tools and (template is not None or jinja):
            self.calls = ToolCallStream(template, keys=None if template is not None else ("name", "arguments"))

    def feed(self, piece: str) -> tuple[str, str]:
        thinking, content = self.thinking.feed(piece) if self.thinking else ("", piece)
        if self.calls is not None and content:
            content = self.calls.feed(content)
        return thinking, content

    def finish(self) -> tuple[str, str, list[dict[str, Any]]]:
        thinking, content = self.thinking.flush() if self.thinking else ("", "")
        calls: list[dict[str, Any]] = []
        if self.calls is not None:
            content = self.calls.feed(content) if content else ""
            rest, calls = self.calls.finish()
            content += rest
        return thinking, content, calls


# --------------------------------------------------------------------------------------------------------
# tools and messages in Ollama's API shape


def check_tools(tools: Any) -> list[dict[str, Any]] | None:
    """A request's ``tools``: None (or []) for none, else a list of ``{"type": "function", "function":
    {"name", "description", "parameters"}}`` objects (Ollama's ``api.Tool``)."""
    if tools is None or tools == []:
        return None
    if not isinstance(tools, list) or not all(
            isinstance(t, dict) and isinstance(t.get("function"), dict)
            and isinstance(t["function"].get("name"), str) and t["function"]["name"] for t in tools):
        raise InvalidInputError('tools must be a list of {"type": "function", "function": {"name": ...}} objects')
    for t in tools:
        parameters = t["function"].get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise InvalidInputError(f"the parameters of tool {t['function']['name']} must be a JSON schema object")
    return tools


def chat_messages(raw: Any) -> list[dict[str, Any]]:
    """A chat request's messages with Ollama's fields (``content``, ``thinking``, ``tool_calls``,
    ``tool_name``, ``tool_call_id``): a missing or null content is "", a call's arguments given as a JSON
    string (OpenAI's way) become an object, and one that does not parse is a clear error."""
    from modelpkg.core.tools import arguments_object

    if not isinstance(raw, list):
        raise InvalidInputError("messages must be a list")
    out = []
    for i, m in enumerate(raw, 1):
        if not isinstance(m, dict):
            raise InvalidInputError(f"message {i} must be an object")
        message = {k: v for k, v in m.items() if v is not None}
        message["content"] = m.get("content") or ""
        calls = m.get("tool_calls")
        if calls:
            if not isinstance(calls, list) or not all(isinstance(c, dict) and isinstance(c.get("function"), dict)
                                                      for c in calls):
                raise InvalidInputError(f"message {i}: tool_calls must be a list of {{\"function\": ...}} objects")
            message["tool_calls"] = [
                {**c, "function": {**c["function"], "arguments": arguments_object(
                    c["function"].get("arguments"), f"message {i}: tool call {c['function'].get('name')}")}}
                for c in calls]
        for key in ("thinking", "tool_name", "tool_call_id"):
            if key in message and not isinstance(message[key], str):
                raise InvalidInputError(f"message {i}: {key} must be a string")
        out.append(message)
    return check_messages(out)


def with_call_ids(calls: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Calls as Ollama's ChatHandler answers them: each with an ``id`` (``call_`` and 8 random characters)
    and its ``function.index``."""
    import secrets

    return [{"id": "call_" + secrets.token_hex(4),
             "function": {"index": i, "name": c["function"]["name"], "arguments": c["function"]["arguments"]}}
            for i, c in enumerate(calls)]
