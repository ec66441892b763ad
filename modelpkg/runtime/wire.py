"""The runner process's wire format: length-prefixed JSON frames over a pipe, and errors as values.

A frame is a 4-byte big-endian length, then that many bytes of UTF-8 JSON (one object). Every message
carries the ``id`` of the request it belongs to, so several requests can be in flight on one pipe and a
generation's pieces come back tagged (``remote`` holds the server's side, ``worker`` the runner's). JSON
rather than pickle: the server never unpickles what a process that runs llama.cpp on hostile input wrote.

Messages, server -> runner: ``{"id", "op", ...arguments}`` (ops: load, tokenize, detokenize, format_chat,
reset, embed, generate, cancel). Runner -> server: ``{"id", "ok": value}`` or ``{"id", "error": {...}}``;
a generation answers ``{"id", "started": {...}}`` once its prompt is checked and its grammar built, then
``{"id", "piece": text}`` per piece and ``{"id", "done": result}`` at the end (or an error).

I/O helper: imports ``modelpkg.core.errors`` only.
"""

from __future__ import annotations

import json
import struct
from typing import Any, BinaryIO

from modelpkg.core import errors

HEADER = struct.Struct(">I")
MAX_FRAME = 256 * 1024 * 1024  # an embedding answer of many long vectors fits; a garbled length does not
EXIT_OUT_OF_MEMORY = 86  # the runner's exit status after a MemoryError (a native bad_alloc aborts instead)


class WireError(Exception):
    """The other side closed the pipe or sent something that is not a frame."""


def write_frame(stream: BinaryIO, message: dict[str, Any]) -> None:
    data = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(data) > MAX_FRAME:
        raise WireError(f"an answer of {len(data)} bytes is more than the runner sends ({MAX_FRAME})")
    stream.write(HEADER.pack(len(data)) + data)
    stream.flush()


def read_frame(stream: BinaryIO) -> dict[str, Any]:
    head = _read_exactly(stream, HEADER.size)
    (size,) = HEADER.unpack(head)
    if size > MAX_FRAME:
        raise WireError(f"a frame of {size} bytes (limit {MAX_FRAME})")
    try:
        message = json.loads(_read_exactly(stream, size))
    except (ValueError, UnicodeDecodeError) as e:
        raise WireError(f"a frame that is not JSON: {e}") from e
    if not isinstance(message, dict):
        raise WireError("a frame that is not a JSON object")
    return message


def _read_exactly(stream: BinaryIO, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = stream.read(left)
        if not chunk:
            raise WireError("the pipe was closed")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


# errors travel as their class name, message and hint; only ModelpkgError classes are rebuilt
def error_value(e: BaseException) -> dict[str, Any]:
    if isinstance(e, errors.ModelpkgError):
        return {"type": type(e).__name__, "message": e.message, "hint": e.hint}
    return {"type": "RunnerError", "message": f"the model runner failed: {type(e).__name__}: {e}"[:500],
            "hint": ""}


def error_from(value: Any) -> errors.ModelpkgError:
    value = value if isinstance(value, dict) else {}
    cls = getattr(errors, str(value.get("type", "")), None)
    if not (isinstance(cls, type) and issubclass(cls, errors.ModelpkgError)) or cls is errors.ModelfileError:
        cls = errors.RunnerError
    return cls(str(value.get("message") or "the model runner failed"), str(value.get("hint") or "") or None)
