"""OpenAI's Responses API (``POST /v1/responses``), as Ollama's ``openai/responses.go`` serves it: the request
becomes an Ollama chat, the answer a ``response`` object or its stream of typed server-sent events.

What is translated (OpenAI's API reference; Ollama's ``FromResponsesRequest``/``ToResponse``):

- ``input``: a string (one user message) or items: messages (``role`` user, assistant, system or
  developer; content a string or ``input_text``/``output_text`` parts), ``function_call`` items (the
  assistant's ``tool_calls``) and ``function_call_output`` items (``role: "tool"`` messages); ``reasoning``
  items are dropped. ``instructions`` is a system message first.
- ``max_output_tokens`` is ``num_predict``; ``temperature`` (1.0 when absent, as OpenAI and Ollama default
  it) and ``top_p``; ``text.format`` ``json_schema``/``json_object`` constrain the output as ``format`` does.
- ``previous_response_id``: the conversation of an earlier response (its input and output, without its
  ``instructions``, as OpenAI does) is kept in memory for the server's life, the last ``KEPT`` responses
  (least recently used first out); ``store: false`` keeps none. An id not kept is a 400 that says so.
- The answer's ``status`` is ``completed``, or ``incomplete`` with ``incomplete_details.reason``
  ``max_output_tokens`` when the limit cut it (OpenAI's rule; Ollama always says ``completed``).
- A stream: ``response.created``, ``response.in_progress``, ``response.output_item.added``,
  ``response.content_part.added``, ``response.output_text.delta`` per piece, ``response.output_text.done``,
  ``response.content_part.done``, ``response.output_item.done``, then ``response.completed``, each with its
  ``sequence_number``. The last event is ``response.completed`` even when the response is incomplete (its
  ``status`` says so), as Ollama sends it: the SDK's ``responses.stream`` helper waits for that event and
  fails on OpenAI's ``response.incomplete``.

- ``tools`` (function tools) go to the template as the chat's tools (a model whose template takes none
  refuses them, as Ollama); ``tool_choice`` ``required`` or a named function forces a call with a grammar
  from the tools' schemas (``backend.tool_plan``, as ``/v1/chat/completions``), ``none`` hides them;
  ``parallel_tool_calls: false`` keeps the first call. Calls parsed from the answer are ``function_call``
  output items (after the message, which is left out when the answer is calls only); streamed, each is
  ``response.output_item.added``, ``response.function_call_arguments.delta`` (the arguments whole) and
  ``.done``, ``response.output_item.done``.

Not supported, a 400 that says so: images and files, ``background``.

Built on ``http``, ``cache`` and ``backend``; never imports the other API modules or ``app``, nor the CLI.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from modelpkg.base import config
from modelpkg.core.errors import InvalidInputError
from modelpkg.ops.chat import AnswerSplitter, chat_messages, typed_options
from modelpkg.runtime.runner import Result
from modelpkg.server.backend import Backend, ChatCall, answer_splitter, with_tool_names
from modelpkg.server.http import ApiError, Request

Route = Callable[[Request], None]
PATH = "/v1/responses"
KEPT = 256  # responses kept for previous_response_id
ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}


# --------------------------------------------------------------------------------------------------------
# the request as an Ollama chat (pure)


def content_text(content: Any) -> str:
    """A message's content: a string, or ``input_text``/``output_text`` parts (joined, as Ollama does)."""
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise InvalidInputError("content must be a string or a list of content parts")
    texts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text"):
            texts.append(str(part.get("text") or ""))
        elif kind == "input_image":
            raise InvalidInputError("image input is not supported: this model has no vision capability")
        elif kind == "input_file":
            raise InvalidInputError("file inputs are not supported")
        elif kind not in ("refusal",):
            raise InvalidInputError(f"unknown content type: {kind!r}")
    return "".join(texts)


def function_call(item: Mapping[str, Any]) -> dict[str, Any]:
    """A ``function_call`` item as an Ollama tool call (its JSON arguments parsed)."""
    try:
        arguments = json.loads(item.get("arguments") or "{}")
    except ValueError as e:
        raise InvalidInputError(f"function_call {item.get('call_id')!r}: arguments are not JSON: {e}") from e
    return {"id": str(item.get("call_id") or ""), "function": {"name": str(item.get("name") or ""),
                                                                "arguments": arguments}}


def input_messages(value: Any) -> list[dict[str, Any]]:
    """``input`` -> Ollama messages (``FromResponsesRequest``)."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}] if value else []
    if not isinstance(value, list):
        raise InvalidInputError("input must be a string or a list of input items")
    out: list[dict[str, Any]] = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise InvalidInputError(f"input[{i}] must be an object")
        kind = item.get("type") or ("message" if item.get("role") else "")
        if kind == "message":
            role = ROLES.get(item.get("role"))
            if role is None:
                raise InvalidInputError(f"input[{i}]: role must be user, assistant, system or developer")
            out.append({"role": role, "content": content_text(item.get("content"))})
        elif kind == "function_call":
            if out and out[-1]["role"] == "assistant":  # calls join the assistant message before them
                out[-1].setdefault("tool_calls", []).append(function_call(item))
            else:
                out.append({"role": "assistant", "content": "", "tool_calls": [function_call(item)]})
        elif kind == "function_call_output":
            output = item.get("output")
            text = output if isinstance(output, str) else content_text(output)
            out.append({"role": "tool", "content": text, "tool_call_id": str(item.get("call_id") or "")})
        elif kind == "reasoning":
            continue
        else:
            raise InvalidInputError(f"input[{i}]: unknown input item type {kind!r}" if kind else
                                    f"input[{i}] is missing its 'type'")
    return out


def convert_tools(tools: Any) -> list[dict[str, Any]]:
    """Responses tools (``{"type": "function", "name", "description", "parameters"}``) -> chat tools."""
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise InvalidInputError("tools must be a list")
    out = []
    for tool in tools:
        if not isinstance(tool, dict) or tool.get("type") != "function" or not tool.get("name"):
            raise InvalidInputError("only function tools with a name are supported")
        out.append({"type": "function", "function": {
            "name": tool["name"], "description": tool.get("description") or "",
            "parameters": tool.get("parameters") or {"type": "object", "properties": {}}}})
    return out


def convert_tool_choice(choice: Any) -> Any:
    """``"auto"|"none"|"required"`` or ``{"type": "function", "name"}`` -> the chat's ``tool_choice``."""
    if choice is None or choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and choice.get("name"):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise InvalidInputError("tool_choice must be auto, none, required or {\"type\": \"function\", \"name\"}")


def text_format(body: Mapping[str, Any]) -> Any:
    """``text.format`` -> Ollama's ``format``."""
    fmt = (body.get("text") or {}).get("format") if isinstance(body.get("text"), dict) else None
    if not isinstance(fmt, dict):
        return None
    if fmt.get("type") == "json_schema":
        return fmt["schema"] if isinstance(fmt.get("schema"), dict) else "json"
    if fmt.get("type") == "json_object":
        return "json"
    return None


def responses_options(body: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"temperature": 1.0 if body.get("temperature") is None else body["temperature"]}
    if body.get("top_p") is not None:
        out["top_p"] = body["top_p"]
    limit = body.get("max_output_tokens")
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidInputError("max_output_tokens must be a positive integer")
        out["num_predict"] = limit
    return typed_options(out)


def chat_call(body: Mapping[str, Any], history: list[dict[str, Any]]) -> ChatCall:
    """The request as a ``ChatCall``: instructions, then ``history`` (a previous response's), then ``input``."""
    if body.get("background"):
        raise InvalidInputError("background responses are not supported")
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise InvalidInputError("instructions must be a string")
    turns = history + input_messages(body.get("input"))
    if not turns:
        raise InvalidInputError("input is required")
    messages = ([{"role": "system", "content": instructions}] if instructions else []) + turns
    return ChatCall(messages, responses_options(body), convert_tools(body.get("tools")),
                    convert_tool_choice(body.get("tool_choice")), text_format(body))


# --------------------------------------------------------------------------------------------------------
# the answer


def output_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    return {"id": item_id, "type": "message", "status": status, "role": "assistant",
            "content": [output_part(text)] if status == "completed" else []}


def output_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def function_call_item(call: Mapping[str, Any]) -> dict[str, Any]:
    """A parsed call (Ollama's shape) as a ``function_call`` output item; one already an item stays as it is."""
    if call.get("type") == "function_call":
        return dict(call)
    return {"id": "fc_" + uuid.uuid4().hex, "type": "function_call", "status": "completed",
            "call_id": "call_" + uuid.uuid4().hex[:24], "name": call["function"]["name"],
            "arguments": json.dumps(call["function"]["arguments"])}


def usage(result: Result) -> dict[str, Any]:
    return {"input_tokens": result.prompt_tokens, "output_tokens": result.eval_count,
            "total_tokens": result.prompt_tokens + result.eval_count,
            "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}}


class Events:
    """The stream's events, numbered (``sequence_number``) in the order they are sent."""

    def __init__(self, req: Request):
        self.req = req
        self.sequence = 0

    def send(self, name: str, data: dict[str, Any]) -> None:
        self.req.write_named_event(name, {"type": name, "sequence_number": self.sequence, **data})
        self.sequence += 1


class Conversations:
    """The conversations of the last ``limit`` responses, by response id (for ``previous_response_id``)."""

    def __init__(self, limit: int = KEPT):
        self.limit = limit
        self._kept: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, response_id: str) -> list[dict[str, Any]] | None:
        with self._lock:
            messages = self._kept.get(response_id)
            if messages is not None:
                self._kept.move_to_end(response_id)
            return None if messages is None else [dict(m) for m in messages]

    def keep(self, response_id: str, messages: list[dict[str, Any]]) -> None:
        with self._lock:
            self._kept[response_id] = messages
            while len(self._kept) > self.limit:
                self._kept.popitem(last=False)


class ResponsesApi:
    """``POST /v1/responses`` over the backend's store and model cache; remembers the last responses."""

    def __init__(self, backend: Backend, kept: int = KEPT):
        self.backend = backend
        self.cache = backend.cache
        self.conversations = Conversations(kept)

    def routes(self) -> dict[tuple[str, str], Route]:
        return {("POST", PATH): self.create}

    def _history(self, body: Mapping[str, Any]) -> list[dict[str, Any]]:
        previous = body.get("previous_response_id")
        if previous is None:
            return []
        history = self.conversations.get(previous) if isinstance(previous, str) else None
        if history is None:
            raise ApiError(400, f"previous response with id {previous!r} not found (modelpkg keeps the last "
                                f"{self.conversations.limit} stored responses in memory, until the server stops)",
                           "invalid_request_error", "previous_response_not_found")
        return history

    def create(self, req: Request) -> None:
        body = req.json()
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise ApiError(400, "model is required")
        details = self.backend.details(model, config.reference(model))
        history = self._history(body)
        call = chat_call(body, history)
        plan = self.backend.tool_plan(model, details, call.tools, call.tool_choice, call.format,
                                      parallel=body.get("parallel_tool_calls") is True)
        messages = with_tool_names(chat_messages(call.messages))
        ident = "resp_" + uuid.uuid4().hex
        item_id = "msg_" + uuid.uuid4().hex
        stream = bool(body.get("stream"))
        keep = body.get("store", True) is not False
        head = self._head(body, ident, model, keep)
        single = body.get("parallel_tool_calls") is False
        with self.cache.use(details, body.get("keep_alive")) as loaded:
            generation = self.backend.chat_generation(details, loaded, messages, call.options, plan.format,
                                                      tools=plan.tools)
            splitter = answer_splitter(details, loaded, generation, plan.tools, None)
            events = Events(req)
            if stream:
                result, text, calls = self._stream(events, head, item_id, generation, splitter, single)
            else:
                result = self.backend.drain(req, PATH, model, generation, None)
                _, text = splitter.feed(result.text)
                _, more, calls = splitter.finish()
                text += more
        calls = [function_call_item(c) for c in (calls[:1] if single else calls)]
        answer = self._final(head, item_id, result, text, calls)
        if keep:
            turns = history + input_messages(body.get("input"))
            reply: dict[str, Any] = {"role": "assistant", "content": text}
            if calls:
                reply["tool_calls"] = [function_call(c) for c in calls]
            self.conversations.keep(ident, turns + [reply])
        if not stream:
            req.send_json(answer)
            return
        events.send("response.completed", {"response": answer})
        req.end_stream()

    @staticmethod
    def _head(body: Mapping[str, Any], ident: str, model: str, keep: bool) -> dict[str, Any]:
        """The response object's fields known before the answer (echoing the request, as OpenAI does)."""
        fmt = (body.get("text") or {}).get("format") if isinstance(body.get("text"), dict) else None
        return {
            "id": ident, "object": "response", "created_at": int(time.time()), "status": "in_progress",
            "completed_at": None, "error": None, "incomplete_details": None,
            "instructions": body.get("instructions"), "max_output_tokens": body.get("max_output_tokens"),
            "model": model, "output": [], "parallel_tool_calls": body.get("parallel_tool_calls") is not False,
            "previous_response_id": body.get("previous_response_id"), "reasoning": None,
            "store": keep, "temperature": 1.0 if body.get("temperature") is None else body["temperature"],
            "text": {"format": fmt if isinstance(fmt, dict) else {"type": "text"}},
            "tool_choice": body.get("tool_choice") or "auto", "tools": body.get("tools") or [],
            "top_p": 1.0 if body.get("top_p") is None else body["top_p"], "truncation": "disabled",
            "usage": None, "metadata": body.get("metadata") or {}, "background": False,
            "service_tier": "default", "top_logprobs": 0}

    @staticmethod
    def _final(head: dict[str, Any], item_id: str, result: Result, text: str,
               calls: list[dict[str, Any]]) -> dict[str, Any]:
        """The whole response: the message item (when there is text, or nothing else), then the calls."""
        cut = result.done_reason == "length" and not calls
        output = [output_item(item_id, text, "completed")] if text or not calls else []
        return {**head, "status": "incomplete" if cut else "completed", "completed_at": int(time.time()),
                "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
                "output": output + calls, "usage": usage(result)}

    def _stream(self, events: Events, head: dict[str, Any], item_id: str, generation, splitter: AnswerSplitter,
                single: bool) -> tuple[Result, str, list[dict[str, Any]]]:
        """The stream's events; the message item opened with the first text (calls held back by the splitter
        never show as text), then each call as a ``function_call`` item with its arguments as one delta."""
        req = events.req
        req.start_stream("text/event-stream")
        events.send("response.created", {"response": head})
        events.send("response.in_progress", {"response": head})
        where = {"item_id": item_id, "output_index": 0}
        texts: list[str] = []

        def open_message() -> None:
            events.send("response.output_item.added", {"output_index": 0,
                                                            "item": output_item(item_id, "", "in_progress")})
            events.send("response.content_part.added", {**where, "content_index": 0, "part": output_part("")})

        def emit(piece: str) -> None:
            _, text = splitter.feed(piece)
            if not text:
                return
            if not texts:
                open_message()
            texts.append(text)
            events.send("response.output_text.delta", {**where, "content_index": 0, "delta": text,
                                                            "logprobs": []})

        result = self.backend.drain(req, PATH, head["model"], generation, emit)
        _, rest, calls = splitter.finish()
        if rest or not (texts or calls):
            if not texts:
                open_message()
            texts.append(rest)
            if rest:
                events.send("response.output_text.delta", {**where, "content_index": 0, "delta": rest,
                                                                "logprobs": []})
        text = "".join(texts)
        if texts:
            events.send("response.output_text.done", {**where, "content_index": 0, "text": text, "logprobs": []})
            events.send("response.content_part.done", {**where, "content_index": 0, "part": output_part(text)})
            events.send("response.output_item.done", {"output_index": 0,
                                                           "item": output_item(item_id, text, "completed")})
        first = 1 if texts else 0
        items = [function_call_item(c) for c in (calls[:1] if single else calls)]
        for n, item in enumerate(items):
            at = {"item_id": item["id"], "output_index": first + n}
            events.send("response.output_item.added", {"output_index": first + n,
                                                            "item": {**item, "arguments": "", "status": "in_progress"}})
            events.send("response.function_call_arguments.delta", {**at, "delta": item["arguments"]})
            events.send("response.function_call_arguments.done", {**at, "name": item["name"],
                                                                       "arguments": item["arguments"]})
            events.send("response.output_item.done", {"output_index": first + n, "item": item})
        return result, text, items
