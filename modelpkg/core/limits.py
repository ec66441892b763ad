"""Bounds on what one API request may make the engine build, checked before anything reaches llama.cpp.

A JSON schema in ``format`` becomes a llama.cpp grammar. llama-cpp-python's converter spells a repetition
bound (``maxItems``, ``maxLength``, ...) of N as N nested optional groups and a lower bound as N copies, and
llama.cpp walks those nested groups recursively while sampling: on this machine ``maxItems`` 2000 or
``maxLength`` 5000 overflowed its stack (SIGSEGV) while 1000 did not, and a ``minItems`` of 10 million
makes a 170 MB grammar (11 s of work per request; the issue saw ``std::bad_alloc`` with larger ones). So
every repetition count in the schema, their sum, the schema's depth and size, the regex repetitions in
``pattern`` and the grammar text itself are bounded here, each with a 400-class error
(``InvalidInputError``) that names the limit. ``kv_cache_bytes`` estimates a context's KV cache from
the model's shape so a ``num_ctx`` that cannot fit in memory is refused before a load tries it.

Pure: numbers and JSON values in, an error or a number out (imports ``modelpkg.core.errors`` only).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from modelpkg.core.errors import InvalidInputError

# schema keywords whose number becomes a repetition in the grammar
REPEAT_KEYWORDS = ("maxItems", "minItems", "maxLength", "minLength", "maxProperties", "minProperties",
                   "maxContains", "minContains")
_REGEX_REPEAT = re.compile(r"\{\s*(\d+)\s*(?:,\s*(\d*)\s*)?\}")
MAX_NUM_PREDICT = 1 << 31  # beyond a C int; the context bounds it long before


@dataclass(frozen=True)
class GrammarLimits:
    """The bounds a request's ``format`` must keep (``0`` switches one off)."""

    max_repeat: int = 500           # any one repetition count (half of the largest seen to work)
    max_total_repeat: int = 2000    # their sum over the schema (nested ones add up on the stack)
    max_depth: int = 64             # JSON nesting of the schema (objects and lists)
    max_nodes: int = 2000           # schema objects, in all
    max_pattern: int = 1000         # characters of one ``pattern``
    max_grammar_bytes: int = 256 * 1024  # the GBNF text the schema becomes


def _bounded(value: int, limit: int) -> bool:
    return limit <= 0 or value <= limit


def _refuse(what: str, value: Any, limit: int, hint: str = "") -> InvalidInputError:
    return InvalidInputError(f"format: {what} {value} is more than this server allows ({limit})",
                             hint or "lower it, or ask the server's operator to raise MODELPKG_GRAMMAR_* limits")


def check_format(fmt: Any, limits: GrammarLimits) -> None:
    """Refuse a ``format`` (``"json"`` or a JSON schema) whose grammar would exceed ``limits``."""
    if fmt is None or fmt == "" or fmt == "json" or not isinstance(fmt, dict):
        return  # the fixed JSON grammar, no grammar, or a type error the runner reports
    counts = {"nodes": 0, "repeat": 0}
    stack: list[tuple[Any, int]] = [(fmt, 1)]
    while stack:  # iterative: a schema nested past Python's stack is refused, not a RecursionError
        node, depth = stack.pop()
        if not _bounded(depth, limits.max_depth):
            raise _refuse("a schema nested", f"{depth} levels deep, which", limits.max_depth)
        if isinstance(node, dict):
            _check_node(node, counts, limits)
            stack.extend((value, depth + 1) for value in node.values() if isinstance(value, (dict, list)))
        else:
            stack.extend((value, depth + 1) for value in node if isinstance(value, (dict, list)))


def _check_node(node: Mapping[str, Any], counts: dict[str, int], limits: GrammarLimits) -> None:
    counts["nodes"] += 1
    if not _bounded(counts["nodes"], limits.max_nodes):
        raise _refuse("a schema of more than", f"{limits.max_nodes} objects, which", limits.max_nodes)
    for keyword in REPEAT_KEYWORDS:
        value = node.get(keyword)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise InvalidInputError(f"format: {keyword} must be a non-negative integer, not {value!r}")
        if not _bounded(value, limits.max_repeat):
            raise _refuse(keyword, int(value) if float(value).is_integer() else value, limits.max_repeat)
        counts["repeat"] += int(value)
        if not _bounded(counts["repeat"], limits.max_total_repeat):
            raise _refuse("the schema's repetition counts add up to", counts["repeat"], limits.max_total_repeat)
    pattern = node.get("pattern")
    if isinstance(pattern, str):
        if not _bounded(len(pattern), limits.max_pattern):
            raise _refuse("a pattern of", f"{len(pattern)} characters, which", limits.max_pattern)
        for low, high in _REGEX_REPEAT.findall(pattern):
            n = max(int(low), int(high) if high else 0)
            if not _bounded(n, limits.max_repeat):
                raise _refuse("a pattern repetition of", n, limits.max_repeat)
            counts["repeat"] += n
            if not _bounded(counts["repeat"], limits.max_total_repeat):
                raise _refuse("the schema's repetition counts add up to", counts["repeat"],
                              limits.max_total_repeat)


def check_grammar_size(grammar: str, limits: GrammarLimits) -> None:
    """Refuse a generated grammar text longer than ``limits.max_grammar_bytes``."""
    size = len(grammar.encode("utf-8"))
    if not _bounded(size, limits.max_grammar_bytes):
        raise _refuse("the schema makes a grammar of", f"{size} bytes, which", limits.max_grammar_bytes,
                      "simplify the schema (fewer properties, smaller bounds)")


def check_num_predict(value: int) -> None:
    if not -2 <= value < MAX_NUM_PREDICT:
        raise InvalidInputError(f"num_predict must be -1 (no limit), -2 (fill the context) or a count, not {value}")


@dataclass(frozen=True)
class ModelShape:
    """What the KV cache's size depends on (the GGUF's ``<arch>.block_count`` and attention fields)."""

    n_layer: int
    n_head_kv: int
    key_length: int
    value_length: int


def kv_cache_bytes(shape: ModelShape, n_ctx: int, n_seq: int = 1, bytes_per_value: int = 2) -> int:
    """The bytes of a K and V cache of ``n_ctx`` tokens for each of ``n_seq`` sequences (f16 by default,
    llama.cpp's cache type). Sliding-window layers need less; this is the upper bound."""
    per_token = shape.n_layer * shape.n_head_kv * (shape.key_length + shape.value_length) * bytes_per_value
    return per_token * n_ctx * n_seq


def check_context_memory(shape: ModelShape, n_ctx: int, n_seq: int, available: int) -> None:
    """Refuse a context whose KV cache alone would not fit in ``available`` bytes of memory."""
    need = kv_cache_bytes(shape, n_ctx, n_seq)
    if need > available:
        mib = 1024 * 1024
        slots = f" x {n_seq} parallel sequences" if n_seq > 1 else ""
        raise InvalidInputError(
            f"num_ctx {n_ctx}{slots} needs a {need // mib} MiB KV cache; {available // mib} MiB of memory is available",
            "ask for a smaller num_ctx")
