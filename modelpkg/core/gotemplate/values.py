"""Go values as templates see them, standing in Python: their Go types, truth, and map order.

Python values stand for Go's: str string, int int, float float64, bool bool, None nil, list/tuple []any,
Mapping map[string]any, bytes []byte. Typed Go values a caller hands to templates (Ollama's message and tool
structs, its typed slices and maps) are ``Struct`` values of a ``StructType``, and ``GoList``/``GoMap``,
which remember whether they are nil and whether their Go type has a String method.

Part of the template engine: imports nothing from modelpkg. What the structs are is the caller's business
(``modelpkg.core.prompt`` declares Ollama's); this module only says how any struct behaves.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class Fail(Exception):
    """A function or formatting failure; the executor adds the position."""


@dataclass(frozen=True)
class StructType:
    """A Go struct type: the name ``%T`` prints, its fields as encoding/json writes them, and the two facts
    of its Go declaration that change how it prints."""

    name: str  # "*template.templateMessage", "api.ToolProperty"
    json_fields: tuple[tuple[str, str, bool], ...]  # (Go field name, json key, omitempty), in declaration order
    stringer: bool = False  # it has a String method that gives its JSON (Ollama's templateTool)
    pointer: bool = False  # it reaches templates as a pointer, so it prints as &{...} (Ollama's messages)


@dataclass(frozen=True, eq=False)
class Struct:
    """A Go struct value: its type, and its fields (Go field name -> value, in declaration order)."""

    type: StructType
    fields: Mapping[str, Any]

    @property
    def type_name(self) -> str:
        return self.type.name


class GoList(list):
    """A typed Go slice. style: "" plain, "json" (String() gives JSON), "ptype" (api.PropertyType)."""

    __slots__ = ("nil", "style", "type_name")

    def __init__(self, items: Any = (), *, nil: bool = False, style: str = "", type_name: str = "[]interface {}"):
        super().__init__(items)
        self.nil, self.style, self.type_name = nil and not self, style, type_name


class GoMap(dict):
    """A typed Go map. style: "" plain, "json" (String() gives JSON, "{}" when nil), "ordered" (keeps
    insertion order, as api.ToolPropertiesMap)."""

    __slots__ = ("nil", "style", "type_name")

    def __init__(self, items: Any = (), *, nil: bool = False, style: str = "",
                 type_name: str = "map[string]interface {}"):
        super().__init__(items)
        self.nil, self.style, self.type_name = nil and not self, style, type_name


def go_type(v: Any) -> str:
    """The Go type of a value, as ``%T`` prints it."""
    if v is None:
        return "<nil>"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float64"
    if isinstance(v, str):
        return "string"
    if isinstance(v, (GoList, GoMap, Struct)):
        return v.type_name
    if isinstance(v, (bytes, bytearray)):
        return "[]uint8"
    if isinstance(v, (list, tuple)):
        return "[]interface {}"
    if isinstance(v, Mapping):
        return "map[string]interface {}"
    return type(v).__name__


def truth(v: Any) -> bool:
    """Go's truth for if, with, and, or, not: zero values and empty things are false."""
    if v is None:
        return False
    if isinstance(v, (bool, int, float)):
        return v != 0
    if isinstance(v, (str, bytes, bytearray, list, tuple, Mapping)):
        return len(v) > 0
    return True  # structs and anything else


def _sort_key(k: Any) -> tuple[int, Any]:
    if k is None:
        return (0, 0)
    if isinstance(k, bool):
        return (1, k)
    if isinstance(k, (int, float)):
        return (2, k)
    if isinstance(k, str):
        return (3, k)
    return (4, repr(k))


def sorted_items(m: Mapping) -> list[tuple[Any, Any]]:
    """Go sorts map keys when printing and ranging; api.ToolPropertiesMap keeps insertion order."""
    if isinstance(m, GoMap) and m.style == "ordered":
        return list(m.items())
    return sorted(m.items(), key=lambda kv: _sort_key(kv[0]))
