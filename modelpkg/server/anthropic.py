"""Anthropic's Messages API (``/v1/messages``, ``/v1/messages/count_tokens``), as Ollama's ``anthropic``
middleware serves it: the request becomes an Ollama chat (system, messages, options), the answer Anthropic's
``message`` object or its server-sent event stream, errors Anthropic's ``{"type": "error", "error": {...}}``.

What is translated (Anthropic's API reference; Ollama's ``anthropic/anthropic.go``):

- ``system``: a string or a list of text blocks (joined as Ollama joins them, with nothing between);
  ``messages``: ``user``/``assistant``, content a string or blocks; text blocks of one message are joined.
  ``tool_use`` blocks become the assistant's ``tool_calls``, ``tool_result`` blocks ``role: "tool"``
  messages (before the user's own text, as Ollama orders them); ``thinking`` blocks are dropped.
- ``max_tokens`` (required) is ``num_predict``; ``temperature``, ``top_p``, ``top_k``; ``stop_sequences``
  are stop strings.
- ``stop_reason``: ``end_turn`` (an end token), ``max_tokens``, ``stop_sequence`` (with ``stop_sequence``
  naming the string; Ollama reports ``end_turn`` there); ``usage`` counts the prompt and answer tokens.
- A stream is ``message_start``, ``content_block_start``, ``ping``, ``content_block_delta`` (``text_delta``)
  per piece, ``content_block_stop``, ``message_delta`` (stop reason, usage), ``message_stop``; an error
  after the stream began is an ``error`` event.
- ``count_tokens`` renders the prompt the model would get and counts its tokens (Ollama estimates length/4).

- ``tools`` go to the template as the chat's tools (a model whose template takes none refuses them, as
  Ollama); ``tool_choice`` ``any`` or ``tool`` forces a call with a grammar from the tools' schemas (as
  ``/v1/chat/completions`` does, ``backend.tool_plan``), ``none`` hides the tools. Calls parsed from the
  answer are ``tool_use`` blocks (``stop_reason`` ``tool_use``); streamed, each is a ``content_block_start``
  with the block and its input as one ``input_json_delta``.

Not supported, a 400 that says so: images, ``thinking``.

Built on ``http``, ``cache`` and ``backend``; never imports ``ollama``, ``openai`` or ``app`` (``app`` routes
here), nor the CLI.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from modelpkg.base import config
from modelpkg.core.errors import InvalidInputError
from modelpkg.ops.chat import AnswerSplitter, Session, chat_messages, conversation, typed_options
from modelpkg.ops.models import ModelDetails
from modelpkg.runtime.runner import Result
from modelpkg.server.backend import Backend, ChatCall, ToolPlan, answer_splitter, with_tool_names
from modelpkg.server.http import ApiError, ClientGone, Request

Route = Callable[[Request], None]
PATH = "/v1/messages"

# Anthropic's error types by HTTP status (its "Errors" page; Ollama's anthropic.NewError)
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
               503: "overloaded_error", 529: "overloaded_error"}


# --------------------------------------------------------------------------------------------------------
# Anthropic's request as an Ollama chat (pure)


def system_text(system: Any) -> str | None:
    """``system``: a string, or a list of ``{"type": "text", "text"}`` blocks (joined, as Ollama does)."""
    if system is None or isinstance(system, str):
        return system or None
    if not isinstance(system, list):
        raise InvalidInputError("system must be a string or a list of text blocks")
    texts = []
    for block in system:
        if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
            raise InvalidInputError("system blocks must be {\"type\": \"text\", \"text\": ...} objects")
        texts.append(block["text"])
    return "".join(texts) or None


def tool_result_text(content: Any) -> str:
    """A ``tool_result``'s content: a string, or text blocks (joined)."""
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        texts = []
        for block in content:
            if isinstance(block, dict) and block.get("type") == "image":
                raise InvalidInputError("images in tool results are not supported")
            if isinstance(block, dict) and block.get("type") == "text":
                texts.append(str(block.get("text", "")))
        return "".join(texts)
    raise InvalidInputError("tool_result content must be a string or a list of text blocks")


def _blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list) or not all(isinstance(b, dict) for b in content):
        raise InvalidInputError("message content must be a string or a list of content blocks")
    return content


def convert_message(message: Any) -> list[dict[str, Any]]:
    """One Anthropic message -> Ollama messages (``convertMessage``: tool results first for a user)."""
    if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
        raise InvalidInputError("each message must be an object with role \"user\" or \"assistant\"")
    role = message["role"]
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for block in _blocks(message.get("content")):
        kind = block.get("type")
        if kind == "text":
            texts.append(str(block.get("text") or ""))
        elif kind == "image":
            raise InvalidInputError("image content is not supported: this model has no vision capability")
        elif kind == "tool_use":
            if not block.get("id") or not block.get("name"):
                raise InvalidInputError("a tool_use block needs an 'id' and a 'name'")
            calls.append({"id": str(block["id"]), "function": {"name": str(block["name"]),
                                                                "arguments": block.get("input") or {}}})
        elif kind == "tool_result":
            results.append({"role": "tool", "content": tool_result_text(block.get("content")),
                            "tool_call_id": str(block.get("tool_use_id") or "")})
        # thinking, redacted_thinking and server blocks carry nothing the prompt uses here
    out: list[dict[str, Any]] = list(results) if role == "user" else []
    if texts or calls:
        msg: dict[str, Any] = {"role": role, "content": "".join(texts)}
        if calls:
            msg["tool_calls"] = calls
        out.append(msg)
    if role != "user":
        out += results
    return out


def convert_tools(tools: Any) -> list[dict[str, Any]]:
    """Anthropic tools (``name``, ``description``, ``input_schema``) -> OpenAI's function tools."""
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise InvalidInputError("tools must be a list")
    out = []
    for tool in tools:
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str) or not tool["name"]:
            raise InvalidInputError("each tool needs a name")
        schema = tool.get("input_schema")
        if schema is not None and not isinstance(schema, dict):
            raise InvalidInputError(f"input_schema of tool {tool['name']!r} must be a JSON schema object")
        out.append({"type": "function", "function": {"name": tool["name"], "description": tool.get("description", ""),
                                                     "parameters": schema or {"type": "object", "properties": {}}}})
    return out


def convert_tool_choice(choice: Any) -> Any:
    """``{"type": "auto"|"any"|"tool"|"none", "name"}`` -> OpenAI's ``tool_choice``."""
    if choice is None:
        return None
    if not isinstance(choice, dict):
        raise InvalidInputError("tool_choice must be an object with a type")
    kind = choice.get("type")
    if kind in ("auto", "none"):
        return kind
    if kind == "any":
        return "required"
    if kind == "tool" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise InvalidInputError("tool_choice type must be auto, any, tool (with a name) or none")


def anthropic_options(body: Mapping[str, Any], *, need_max_tokens: bool = True) -> dict[str, Any]:
    """``max_tokens``, ``temperature``, ``top_p``, ``top_k``, ``stop_sequences`` -> Ollama options."""
    out: dict[str, Any] = {}
    limit = body.get("max_tokens")
    if limit is None:
        if need_max_tokens:
            raise InvalidInputError("max_tokens: field required")
    elif isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InvalidInputError("max_tokens must be a positive integer")
    else:
        out["num_predict"] = limit
    for key in ("temperature", "top_p", "top_k"):
        if body.get(key) is not None:
            out[key] = body[key]
    stops = body.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise InvalidInputError("stop_sequences must be a list of strings")
        out["stop"] = stops
    return typed_options(out)


def chat_call(body: Mapping[str, Any], *, need_max_tokens: bool = True) -> ChatCall:
    """The whole request as a ``ChatCall``."""
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise InvalidInputError("messages: at least one message is required")
    messages = [m for message in raw for m in convert_message(message)]
    system = system_text(body.get("system"))
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") == "enabled":
        raise InvalidInputError(f"\"{body.get('model')}\" does not support thinking")
    return ChatCall(messages, anthropic_options(body, need_max_tokens=need_max_tokens),
                    convert_tools(body.get("tools")), convert_tool_choice(body.get("tool_choice")))


def stop_reason(result: Result, calls: bool = False) -> tuple[str, str | None]:
    """Anthropic's ``stop_reason`` and ``stop_sequence`` for a finished generation (``tool_use`` when the
    answer is calls)."""
    if calls:
        return "tool_use", None
    if result.done_reason == "length":
        return "max_tokens", None
    if result.stop_sequence is not None:
        return "stop_sequence", result.stop_sequence
    return "end_turn", None


def tool_use(call: Mapping[str, Any]) -> dict[str, Any]:
    """A parsed call as Anthropic's ``tool_use`` content block (an id of Anthropic's form)."""
    return {"type": "tool_use", "id": "toolu_" + uuid.uuid4().hex[:24], "name": call["function"]["name"],
            "input": call["function"]["arguments"]}


class Blocks:
    """A stream's content blocks, numbered in order: text deltas go to an open text block (opened first, with
    ``ping`` after the first block as Anthropic sends it); a ``tool_use`` block closes it."""

    def __init__(self, req: Request):
        self.req = req
        self.index = -1
        self.open: str | None = None

    def _start(self, block: dict[str, Any]) -> None:
        self.close()
        self.index += 1
        self.open = block["type"]
        self.req.write_named_event("content_block_start", {"type": "content_block_start", "index": self.index,
                                                           "content_block": block})
        if self.index == 0:
            self.req.write_named_event("ping", {"type": "ping"})

    def _delta(self, delta: dict[str, Any]) -> None:
        self.req.write_named_event("content_block_delta", {"type": "content_block_delta", "index": self.index,
                                                           "delta": delta})

    def text(self, text: str) -> None:
        if self.open != "text":
            self._start({"type": "text", "text": ""})
        if text:
            self._delta({"type": "text_delta", "text": text})

    def tool_use(self, block: dict[str, Any]) -> None:
        self._start({**block, "input": {}})
        self._delta({"type": "input_json_delta", "partial_json": json.dumps(block["input"])})
        self.close()

    def close(self) -> None:
        if self.open is not None:
            self.req.write_named_event("content_block_stop", {"type": "content_block_stop", "index": self.index})
            self.open = None


def is_anthropic(path: str) -> bool:
    """Is ``path`` one of Anthropic's (its errors then take Anthropic's shape)?"""
    return path == PATH or path.startswith(PATH + "/")


def error_body(err: ApiError) -> dict[str, Any]:
    """Anthropic's error object."""
    kind = ERROR_TYPES.get(err.status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": err.message}}


def send_error(req: Request, err: ApiError) -> None:
    """An error in Anthropic's shape: the answer, or the stream's ``error`` event."""
    try:
        if req.streaming:
            req.write_named_event("error", error_body(err))
            req.end_stream()
        else:
            req.send_json(error_body(err), err.status)
    except ClientGone:
        pass


# --------------------------------------------------------------------------------------------------------
# the handlers


class AnthropicApi:
    """``/v1/messages`` and ``/v1/messages/count_tokens`` over the backend's store and model cache."""

    def __init__(self, backend: Backend):
        self.backend = backend
        self.cache = backend.cache

    def routes(self) -> dict[tuple[str, str], Route]:
        return {("POST", PATH): self.messages, ("POST", PATH + "/count_tokens"): self.count_tokens}

    def _request(self, req: Request, *, need_max_tokens: bool) -> tuple[dict[str, Any], ModelDetails, ChatCall,
                                                                        ToolPlan]:
        body = req.json()
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise ApiError(400, "model: field required")
        details = self.backend.details(model, config.reference(model))
        call = chat_call(body, need_max_tokens=need_max_tokens)
        plan = self.backend.tool_plan(model, details, call.tools, call.tool_choice, None)
        call.messages = with_tool_names(chat_messages(call.messages))
        return body, details, call, plan

    def messages(self, req: Request) -> None:
        body, details, call, plan = self._request(req, need_max_tokens=True)
        model = body["model"]
        ident = "msg_" + uuid.uuid4().hex[:24]
        with self.cache.use(details, None) as loaded:
            generation = self.backend.chat_generation(details, loaded, call.messages, call.options, plan.format,
                                                      tools=plan.tools)
            splitter = answer_splitter(details, loaded, generation, plan.tools, None)
            if body.get("stream"):
                self._stream(req, ident, model, generation, splitter)
                return
            result = self.backend.drain(req, PATH, model, generation, None)
        _, text = splitter.feed(result.text)
        _, more, calls = splitter.finish()
        text += more
        content = [{"type": "text", "text": text}] if text else []
        content += [tool_use(c) for c in calls]
        reason, sequence = stop_reason(result, bool(calls))
        req.send_json({"id": ident, "type": "message", "role": "assistant", "model": model,
                       "content": content, "stop_reason": reason, "stop_sequence": sequence,
                       "usage": {"input_tokens": result.prompt_tokens, "output_tokens": result.eval_count}})

    def _stream(self, req: Request, ident: str, model: str, generation, splitter: AnswerSplitter) -> None:
        """The answer as Anthropic's events: a text block opened with the first text (calls held back by the
        splitter never show as text), then one ``tool_use`` block per call, its input as one
        ``input_json_delta``."""
        usage = {"input_tokens": generation.result.prompt_tokens, "output_tokens": 0}
        req.start_stream("text/event-stream")
        req.write_named_event("message_start", {"type": "message_start", "message": {
            "id": ident, "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": usage}})
        blocks = Blocks(req)

        def emit(piece: str) -> None:
            _, text = splitter.feed(piece)
            if text:
                blocks.text(text)

        result = self.backend.drain(req, PATH, model, generation, emit)
        _, text, calls = splitter.finish()
        if text or not calls:
            blocks.text(text)
        for call in calls:
            blocks.tool_use(tool_use(call))
        blocks.close()
        reason, sequence = stop_reason(result, bool(calls))
        req.write_named_event("message_delta", {
            "type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": sequence},
            "usage": {"input_tokens": result.prompt_tokens, "output_tokens": result.eval_count}})
        req.write_named_event("message_stop", {"type": "message_stop"})
        req.end_stream()

    def count_tokens(self, req: Request) -> None:
        """The tokens of the prompt the model would be given (the model is loaded to tokenize it)."""
        _, details, call, plan = self._request(req, need_max_tokens=False)
        with self.cache.use(details, None) as loaded:
            session = Session(details, call.options, load=loaded.load)
            runner = session.runner()
            prompt = session.build_prompt(conversation(details.messages, call.messages, details.system), runner,
                                          tools=plan.tools)
            count = len(runner.tokenize(prompt.text, prompt.add_bos))
        req.send_json({"input_tokens": count})

