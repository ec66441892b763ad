"""encoding/json's Marshal, as the ``json`` template function and Go String methods that give JSON use it.

``go_json(v)`` is Ollama's ``json`` function: ``json.Marshal`` of a value with Go's escaping (``<``, ``>``,
``&`` as ``\\u003c``...), map keys sorted (an ordered ``GoMap`` keeps its order), ``Struct`` fields under their
json keys with ``omitempty``, float64 as Go writes it, and an empty string where Marshal fails (NaN, Inf).

Part of the template engine: imports its values, strconv and limits; never fmt or anything above it.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Mapping
from typing import Any

from modelpkg.core.gotemplate.limits import MAX_VALUE_DEPTH
from modelpkg.core.gotemplate.strconv import format_float
from modelpkg.core.gotemplate.values import Fail, GoList, GoMap, Struct

_JSON_RE = re.compile("[\x00-\x1f\"\\\\<>&\u2028\u2029\ud800-\udfff]")
_JSON_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}


def _json_escape(m: re.Match) -> str:
    c = m.group()
    if c in _JSON_ESCAPES:
        return _JSON_ESCAPES[c]
    if "\ud800" <= c <= "\udfff":
        return "\\ufffd"
    return f"\\u{ord(c):04x}"


def _json_str(s: str) -> str:
    return '"' + _JSON_RE.sub(_json_escape, s) + '"'


class _JsonUnsupported(Exception):
    pass


def _json_float(x: float) -> str:
    if math.isnan(x) or math.isinf(x):
        raise _JsonUnsupported
    a = abs(x)
    verb = "e" if a != 0 and (a < 1e-6 or a >= 1e21) else "f"
    s = format_float(x, verb, -1).lstrip("+")
    if verb == "e" and len(s) >= 4 and s[-4] == "e" and s[-3] == "-" and s[-2] == "0":
        s = s[:-2] + s[-1]  # e-07 -> e-7
    return s


def _empty(v: Any) -> bool:  # encoding/json's omitempty
    return v is None or v is False or (isinstance(v, (int, float)) and not isinstance(v, bool) and v == 0) or (
        isinstance(v, (str, bytes, bytearray, list, tuple, Mapping)) and len(v) == 0)


def _json(v: Any, depth: int = 0) -> str:  # noqa: C901 - one case per Go kind, as encoding/json
    if depth > MAX_VALUE_DEPTH:
        raise Fail("value is nested too deeply for json")
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return _json_float(v)
    if isinstance(v, str):
        return _json_str(v)
    if isinstance(v, (bytes, bytearray)):
        return '"' + base64.b64encode(bytes(v)).decode("ascii") + '"'
    if isinstance(v, (GoList, GoMap)) and v.nil:
        return "null"
    if isinstance(v, GoList) and v.style == "ptype" and len(v) == 1:
        return _json(v[0], depth + 1)  # api.PropertyType marshals one type as a plain string
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_json(e, depth + 1) for e in v) + "]"
    if isinstance(v, Mapping):
        items = [(str(k), e) for k, e in v.items()]
        if not (isinstance(v, GoMap) and v.style == "ordered"):
            items.sort(key=lambda kv: kv[0])
        return "{" + ",".join(f"{_json_str(k)}:{_json(e, depth + 1)}" for k, e in items) + "}"
    if isinstance(v, Struct):
        parts = []
        for go_name, json_key, omitempty in v.type.json_fields:
            value = v.fields.get(go_name)
            if omitempty and not isinstance(value, Struct) and _empty(value):
                continue
            parts.append(f"{_json_str(json_key)}:{_json(value, depth + 1)}")
        return "{" + ",".join(parts) + "}"
    return _json_str(str(v))


def go_json(v: Any) -> str:
    """Ollama's json function: json.Marshal, and an empty string where Marshal fails (NaN, Inf)."""
    try:
        return _json(v)
    except _JsonUnsupported:
        return ""
