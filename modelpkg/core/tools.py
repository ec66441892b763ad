"""Tool calls in a model's output, found the way Ollama's parser finds them (v0.5.0 ``server/model.go``
``parseToolCalls``, whose cases are in shared/conformance/ollama-tools/parse-cases.json)::

    parse_tool_calls(template, text) -> list of {"function": {"name", "arguments"}}   # [] = plain text
    ToolCallStream(template)         # the same, fed piece by piece: what may be a call is held back

The template teaches the format: its ``range`` over ``.ToolCalls``, executed with a sample call
(``prompt.tool_call_sample``), gives a JSON object whose string-valued key names the function (``name``,
``tool_name``...) and whose object-valued key holds the arguments (``arguments``, ``parameters``...). Then
every JSON value in the output is decoded, left to right, as Go's ``json.Decoder`` would decode it into a
map: an object is kept, anything else is skipped (an array is entered, so the objects in it are found), a
syntax error skips one character, and a value cut off by the end of the text ends the search -- so a
truncated call is no call. Every object kept, and every object nested in it, that has both keys is a call.

Pure module: imports the core's errors and prompt only.
"""

from __future__ import annotations

import json
from typing import Any

from modelpkg.core.errors import InvalidInputError
from modelpkg.core.prompt import tool_call_prefix, tool_call_sample

__all__ = ["ToolCallStream", "arguments_object", "call_keys", "parse_objects", "parse_tool_calls"]

_WS = " \t\n\r"
_MAX_DEPTH = 100  # deeper nesting is no call (Go allows 10000; Python's recursion limit would not)


class _EndOfText(Exception):
    """The value runs past the end of the text (Go's io.ErrUnexpectedEOF)."""


class _BadCharacter(Exception):
    def __init__(self, pos: int):
        self.pos = pos


def _need(s: str, i: int) -> None:
    if i >= len(s):
        raise _EndOfText()


def _space(s: str, i: int) -> int:
    while i < len(s) and s[i] in _WS:
        i += 1
    return i


def _string_end(s: str, i: int) -> int:
    """``s[i]`` is a quote: the index after the closing quote."""
    i += 1
    while True:
        _need(s, i)
        c = s[i]
        if c == '"':
            return i + 1
        if c == "\\":
            _need(s, i + 1)
            e = s[i + 1]
            if e == "u":
                for k in range(i + 2, i + 6):
                    _need(s, k)
                    if s[k] not in "0123456789abcdefABCDEF":
                        raise _BadCharacter(k)
                i += 6
                continue
            if e not in '"\\/bfnrt':
                raise _BadCharacter(i + 1)
            i += 2
            continue
        if ord(c) < 0x20:
            raise _BadCharacter(i)
        i += 1


def _digits(s: str, i: int) -> int:
    while i < len(s) and s[i].isascii() and s[i].isdigit():
        i += 1
    return i


def _number_end(s: str, i: int, top: bool) -> int:
    """A JSON number from ``s[i]``; at the end of the text a top-level number is complete (Go feeds a space)."""
    start = i
    if s[i] == "-":
        i += 1
        if i >= len(s):
            raise _EndOfText()
        if not (s[i].isascii() and s[i].isdigit()):
            raise _BadCharacter(i)
    i = i + 1 if s[i] == "0" else _digits(s, i)
    for mark, signs in ((".", ""), ("eE", "+-")):
        if i < len(s) and s[i] in mark:
            i += 1
            if signs and i < len(s) and s[i] in signs:
                i += 1
            if i >= len(s):
                raise _EndOfText()
            if not (s[i].isascii() and s[i].isdigit()):
                raise _BadCharacter(i)
            i = _digits(s, i)
    if i >= len(s) and not top:
        raise _EndOfText()
    return i if i > start else start + 1


def _container_end(s: str, i: int, depth: int) -> int:
    """The end of the object or array that opens at ``s[i]``."""
    opening = s[i]
    close = "}" if opening == "{" else "]"
    i = _space(s, i + 1)
    _need(s, i)
    if s[i] == close:
        return i + 1
    while True:
        if opening == "{":
            if s[i] != '"':
                raise _BadCharacter(i)
            i = _space(s, _string_end(s, i))
            _need(s, i)
            if s[i] != ":":
                raise _BadCharacter(i)
            i = _space(s, i + 1)
            _need(s, i)
        i = _space(s, _value_end(s, i, depth + 1))
        _need(s, i)
        if s[i] == close:
            return i + 1
        if s[i] != ",":
            raise _BadCharacter(i)
        i = _space(s, i + 1)
        _need(s, i)


def _value_end(s: str, i: int, depth: int = 0) -> int:
    """The end of the JSON value that starts at ``s[i]`` (not whitespace)."""
    if depth > _MAX_DEPTH:
        raise _BadCharacter(i)
    c = s[i]
    if c in "{[":
        return _container_end(s, i, depth)
    if c == '"':
        return _string_end(s, i)
    if c == "-" or (c.isascii() and c.isdigit()):
        return _number_end(s, i, depth == 0)
    for word in ("true", "false", "null"):
        if c == word[0]:
            for k, expected in enumerate(word):
                _need(s, i + k)
                if s[i + k] != expected:
                    raise _BadCharacter(i + k)
            return i + len(word)
    raise _BadCharacter(i)


def parse_objects(text: str) -> list[dict[str, Any]]:
    """Every JSON object in ``text``, as Ollama's ``parseObjects`` finds them with Go's decoder."""
    objects: list[dict[str, Any]] = []
    offset = 0
    while offset < len(text):
        start = _space(text, offset)
        if start >= len(text):
            break
        try:
            end = _value_end(text, start)
        except _EndOfText:
            break
        except _BadCharacter as e:
            offset = e.pos + 1
            continue
        if text[start] == "{":
            objects.append(json.loads(text[start:end]))
            offset = end
        elif text[start] == "[":
            offset = start + 1  # Go reports the array's type error just inside it: its items are read next
        else:
            offset = end
    return objects


def call_keys(template: str) -> tuple[str, str] | None:
    """The keys that hold a call's name and its arguments in the template's tool-call format."""
    sample = tool_call_sample(template)
    objects = parse_objects(sample) if sample else []
    if not objects:
        return None
    name = arguments = ""
    for key, value in objects[0].items():
        if isinstance(value, str):
            name = key
        elif isinstance(value, dict):
            arguments = key
    return (name, arguments) if name and arguments else None


def _nested(value: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    if isinstance(value, dict):
        found.append(value)
        for item in value.values():
            found += _nested(item)
    elif isinstance(value, list):
        for item in value:
            found += _nested(item)
    return found


def parse_tool_calls(template: str | None, text: str, keys: tuple[str, str] | None = None) -> list[dict[str, Any]]:
    """The tool calls in a model's ``text``, in Ollama's API shape; ``[]`` when it is plain text (or the
    template has no tool-call format). ``keys`` (name, arguments) instead of the template's: for a Jinja
    template, which cannot be executed with a sample call here."""
    keys = keys or (call_keys(template) if template is not None else None)
    if keys is None:
        return []
    name, arguments = keys
    calls = []
    for obj in parse_objects(text):
        for candidate in _nested(obj):
            if isinstance(candidate.get(name), str) and isinstance(candidate.get(arguments), dict):
                calls.append({"function": {"name": candidate[name], "arguments": candidate[arguments]}})
    return calls


def arguments_object(arguments: Any, where: str = "tool call") -> dict[str, Any]:
    """A call's arguments as an object: OpenAI clients send them as a JSON string, Ollama's as an object."""
    if isinstance(arguments, dict):
        return arguments
    if arguments is None or arguments == "":
        return {}
    if isinstance(arguments, str):
        try:
            value = json.loads(arguments)
        except ValueError as e:
            raise InvalidInputError(f"{where}: the arguments are not valid JSON: {e}") from e
        if isinstance(value, dict):
            return value
    raise InvalidInputError(f"{where}: the arguments must be a JSON object")


class ToolCallStream:
    """``parse_tool_calls`` for a streamed answer. ``feed`` returns the text that can be shown now: while the
    answer (leading whitespace aside) may still be the start of a call -- the template's text before its
    calls, ``{`` or ``[`` -- it is held back; ``finish`` gives the calls in the whole answer, and the text
    still held when there are none."""

    def __init__(self, template: str | None, keys: tuple[str, str] | None = None):
        self.template, self.keys = template, keys
        prefix = tool_call_prefix(template) if template is not None else "<tool_call>"
        self.openers = [o for o in (prefix, "{", "[") if o]
        self.text = ""
        self.held = ""
        self.streaming = False

    def feed(self, piece: str) -> str:
        self.text += piece
        if self.streaming:
            return piece
        self.held += piece
        head = self.held.lstrip()
        if not head or any(o.startswith(head) or head.startswith(o) for o in self.openers):
            return ""
        self.streaming = True
        out, self.held = self.held, ""
        return out

    def finish(self) -> tuple[str, list[dict[str, Any]]]:
        calls = parse_tool_calls(self.template, self.text, self.keys)
        if calls:
            return "", calls
        out, self.held = self.held, ""
        return out, []
