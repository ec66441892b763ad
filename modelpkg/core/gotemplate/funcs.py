"""The functions templates can call: Go's builtins, and the ones Ollama's template package adds.

Go's: ``and or not eq ne lt le gt ge len index slice print printf println html js urlquery``, with Go's
argument rules and error messages (``and``/``or`` are evaluated by the executor, which short-circuits them).
Ollama's: ``json`` (encoding/json), ``currentDate``/``yesterdayDate`` (the local date, format arguments
accepted and ignored) and ``toTypeScriptType`` (an ``api.ToolProperty``'s JSON Schema type as TypeScript).
``BUILTINS`` is the one table of them: the parser takes the names from it, the executor the arity and the
implementation.

Part of the template engine, and pure but for one thing: ``currentDate``/``yesterdayDate`` read the local
date when a template calls them, as Ollama's do. Imports fmt, marshal, strconv and values; never the parser
or the executor.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote_from_bytes

from modelpkg.core.gotemplate.fmt import sprint, sprintf, sprintln
from modelpkg.core.gotemplate.marshal import go_json
from modelpkg.core.gotemplate.strconv import from_utf8, rune, utf8
from modelpkg.core.gotemplate.values import Fail, Struct, go_type, truth

# ------------------------------------------------------------------------------------------------------
# Comparisons, len, index, slice



def _fn_not(x: Any) -> bool:
    return not truth(x)


def _basic_kind(v: Any) -> str:
    if v is None:
        return "invalid"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float"
    if isinstance(v, str):
        return "string"
    return "other"


def _fn_eq(a: Any, *others: Any) -> bool:
    if not others:
        raise Fail("missing argument for comparison")
    ka = _basic_kind(a)
    for b in others:
        kb = _basic_kind(b)
        if ka != kb:
            if a is not None and b is not None:
                raise Fail("incompatible types for comparison")
            continue
        if ka == "invalid" or (ka != "other" and a == b):
            return True
        if ka == "other":
            raise Fail(f"non-comparable type {go_type(b)}")
    return False


def _fn_ne(a: Any, b: Any) -> bool:
    return not _fn_eq(a, b)


def _fn_lt(a: Any, b: Any) -> bool:
    ka, kb = _basic_kind(a), _basic_kind(b)
    if ka in ("invalid", "other") or kb in ("invalid", "other"):
        raise Fail("invalid type for comparison")
    if ka != kb:
        raise Fail("incompatible types for comparison")
    if ka == "bool":
        raise Fail("invalid type for comparison")
    return a < b


def _fn_le(a: Any, b: Any) -> bool:
    return _fn_lt(a, b) or _fn_eq(a, b)


def _fn_gt(a: Any, b: Any) -> bool:
    return not _fn_le(a, b)


def _fn_ge(a: Any, b: Any) -> bool:
    return not _fn_lt(a, b)


def _fn_len(x: Any) -> int:
    if isinstance(x, str):
        return len(utf8(x))  # Go counts bytes
    if isinstance(x, (list, tuple, Mapping)):
        return len(x)
    if x is None:
        raise Fail("len of nil pointer")
    raise Fail(f"len of type {go_type(x)}")


def _index_arg(v: Any, cap: int) -> int:
    if v is None:
        raise Fail("cannot index slice/array with nil")
    if isinstance(v, bool) or not isinstance(v, int):
        raise Fail(f"cannot index slice/array with type {go_type(v)}")
    if v < 0 or v > cap:
        raise Fail(f"index out of range: {v}")
    return v


def _fn_index(item: Any, *indexes: Any) -> Any:
    if item is None:
        raise Fail("index of untyped nil")
    for index in indexes:
        if item is None:
            raise Fail("index of nil pointer")
        if isinstance(item, (str, list, tuple)):
            seq = utf8(item) if isinstance(item, str) else item
            x = _index_arg(index, len(seq))
            if x == len(seq):
                raise Fail(f"index out of range: {x}")
            item = seq[x]
        elif isinstance(item, Mapping):
            if index is None:
                raise Fail("value is nil; should be of type string")
            if not isinstance(index, (str, int, float)):
                raise Fail(f"value has type {go_type(index)}; should be string")
            item = item.get(index)
        else:
            raise Fail(f"can't index item of type {go_type(item)}")
    return item


def _fn_slice(item: Any, *indexes: Any) -> Any:
    if item is None:
        raise Fail("slice of untyped nil")
    if len(indexes) > 3:
        raise Fail(f"too many slice indexes: {len(indexes)}")
    if isinstance(item, str):
        if len(indexes) == 3:
            raise Fail("cannot 3-index slice a string")
        seq: Any = utf8(item)
    elif isinstance(item, (list, tuple)):
        seq = item
    else:
        raise Fail(f"can't slice item of type {go_type(item)}")
    bounds = [0, len(seq), len(seq)]
    for k, index in enumerate(indexes):
        bounds[k] = _index_arg(index, len(seq))
    if bounds[0] > bounds[1]:
        raise Fail(f"invalid slice index: {bounds[0]} > {bounds[1]}")
    if len(indexes) == 3 and bounds[1] > bounds[2]:
        raise Fail(f"invalid slice index: {bounds[1]} > {bounds[2]}")
    part = seq[bounds[0]:bounds[1]]
    return from_utf8(part) if isinstance(item, str) else list(part)


# ------------------------------------------------------------------------------------------------------
# Printing and the escapers, as Go's text/template (html, js, urlquery) writes them

_HTML_ESCAPES = str.maketrans({'"': "&#34;", "'": "&#39;", "&": "&amp;", "<": "&lt;", ">": "&gt;", "\0": "\ufffd"})
_JS_RE = re.compile(r"[\\'\"<>&=\x00-\x1f]|[^\x00-\x7f]")
_JS_ESCAPES = {"\\": "\\\\", "'": "\\'", '"': '\\"', "<": "\\u003C", ">": "\\u003E", "&": "\\u0026", "=": "\\u003D"}


def _js_escape(m: re.Match) -> str:
    c = m.group()
    if c in _JS_ESCAPES:
        return _JS_ESCAPES[c]
    if c < " ":
        return f"\\u00{ord(c):02X}"
    if c.isprintable():
        return c
    return f"\\u{ord(rune(ord(c))):04X}"


def _fn_printf(fmt: Any, *args: Any) -> str:
    if not isinstance(fmt, str):
        raise Fail(f"printf format must be a string, not {go_type(fmt)}")
    return sprintf(fmt, args)


def _text_args(args: Sequence[Any]) -> str:  # text/template's evalArgs
    if len(args) == 1 and isinstance(args[0], str):
        return args[0]
    return sprint(["" if a is None else a for a in args])


def _fn_html(*args: Any) -> str:
    return _text_args(args).translate(_HTML_ESCAPES)


def _fn_js(*args: Any) -> str:
    return _JS_RE.sub(_js_escape, _text_args(args))


def _fn_urlquery(*args: Any) -> str:
    return quote_from_bytes(utf8(_text_args(args)), safe=" ").replace(" ", "+")


# ------------------------------------------------------------------------------------------------------
# Ollama's additions (template/template.go funcs)


def _date_args(args: Sequence[Any]) -> None:
    for a in args:
        if not isinstance(a, str):
            raise Fail(f"wrong type for value; expected string; got {go_type(a)}")


def _fn_current_date(*args: Any) -> str:
    """Ollama's currentDate: today's local date as 2006-01-02; format arguments are accepted and ignored.
    This, and yesterdayDate, are the only places the module reads the clock."""
    _date_args(args)
    return datetime.date.today().isoformat()


def _fn_yesterday_date(*args: Any) -> str:
    _date_args(args)
    return (datetime.date.today() - datetime.timedelta(days=1)).isoformat()


_TS_TYPES = {"string": "string", "number": "number", "integer": "number", "boolean": "boolean", "array": "any[]",
             "object": "Record<string, any>", "null": "null"}


def _fn_typescript_type(v: Any) -> str:
    """Ollama's toTypeScriptType: an api.ToolProperty's JSON Schema type(s) as TypeScript; "any" otherwise."""
    if not (isinstance(v, Struct) and v.type.name == "api.ToolProperty"):  # Ollama switches on the Go type
        return "any"
    any_of = v.fields.get("AnyOf") or ()
    if any_of:
        return " | ".join(_fn_typescript_type(p) for p in any_of)
    types = v.fields.get("Type") or ()
    if not types:
        return "any"
    return " | ".join(_TS_TYPES.get(t, "any") for t in types)


# name -> (minimum args, maximum args or None, implementation); and/or are evaluated by the executor
BUILTINS: dict[str, tuple[int, int | None, Any]] = {
    "and": (1, None, None),
    "or": (1, None, None),
    "not": (1, 1, _fn_not),
    "eq": (1, None, _fn_eq),
    "ne": (2, 2, _fn_ne),
    "lt": (2, 2, _fn_lt),
    "le": (2, 2, _fn_le),
    "gt": (2, 2, _fn_gt),
    "ge": (2, 2, _fn_ge),
    "len": (1, 1, _fn_len),
    "index": (1, None, _fn_index),
    "slice": (1, None, _fn_slice),
    "print": (0, None, lambda *a: sprint(a)),
    "printf": (1, None, _fn_printf),
    "println": (0, None, lambda *a: sprintln(a)),
    "html": (0, None, _fn_html),
    "js": (0, None, _fn_js),
    "urlquery": (0, None, _fn_urlquery),
    "json": (1, 1, go_json),
    "currentDate": (0, None, _fn_current_date),
    "yesterdayDate": (0, None, _fn_yesterday_date),
    "toTypeScriptType": (1, 1, _fn_typescript_type),
}
# builtins whose Go parameters are reflect.Value, which a literal nil cannot be assigned to
NO_NIL = frozenset({"and", "or", "not", "eq", "ne", "lt", "le", "gt", "ge", "len", "index", "slice"})
