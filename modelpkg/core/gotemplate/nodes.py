"""The parse tree of a template: frozen nodes, and where in the source a node is.

Every node keeps ``pos``, its offset into the source; ``where`` turns an offset into Go's "template line L,
column C" and ``error_at`` makes the TemplateError that starts with it, for the parser and the executor alike.
The nodes follow text/template/parse/node.go, as far as the supported language needs them.

Part of the template engine: imports only ``modelpkg.core.errors``; the parser, the executor and prompt
rendering build on it, never the other way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modelpkg.core.errors import TemplateError


@dataclass(frozen=True, slots=True)
class Text:
    text: str
    pos: int


@dataclass(frozen=True, slots=True)
class Field:  # .A.B
    names: tuple[str, ...]
    pos: int


@dataclass(frozen=True, slots=True)
class Variable:  # $x.A.B; names[0] is "$" or "$x"
    names: tuple[str, ...]
    pos: int


@dataclass(frozen=True, slots=True)
class Chain:  # (pipeline).A.B
    node: Any
    names: tuple[str, ...]
    pos: int


@dataclass(frozen=True, slots=True)
class Dot:
    pos: int


@dataclass(frozen=True, slots=True)
class Nil:
    pos: int


@dataclass(frozen=True, slots=True)
class Bool:
    value: bool
    pos: int


@dataclass(frozen=True, slots=True)
class Number:
    text: str
    value: int | float | None  # None: an integer that does not fit Go's int
    pos: int


@dataclass(frozen=True, slots=True)
class String:
    value: str
    pos: int


@dataclass(frozen=True, slots=True)
class Identifier:  # a function name
    name: str
    pos: int


@dataclass(frozen=True, slots=True)
class Command:
    args: tuple[Any, ...]
    pos: int


@dataclass(frozen=True, slots=True)
class Pipe:
    decls: tuple[str, ...]
    is_assign: bool
    cmds: tuple[Command, ...]
    pos: int


@dataclass(frozen=True, slots=True)
class Action:
    pipe: Pipe
    pos: int


@dataclass(frozen=True, slots=True)
class If:
    pipe: Pipe
    body: tuple[Any, ...]
    orelse: tuple[Any, ...] | None
    pos: int


@dataclass(frozen=True, slots=True)
class With:
    pipe: Pipe
    body: tuple[Any, ...]
    orelse: tuple[Any, ...] | None
    pos: int


@dataclass(frozen=True, slots=True)
class Range:
    pipe: Pipe
    body: tuple[Any, ...]
    orelse: tuple[Any, ...] | None
    pos: int


@dataclass(frozen=True, slots=True)
class Break:
    pos: int


@dataclass(frozen=True, slots=True)
class Continue:
    pos: int


def where(source: str, pos: int) -> str:
    pos = max(0, min(pos, len(source)))
    line = source.count("\n", 0, pos) + 1
    column = pos - (source.rfind("\n", 0, pos) + 1) + 1
    return f"template line {line}, column {column}"


def error_at(source: str, pos: int, message: str, hint: str | None = None) -> TemplateError:
    return TemplateError(f"{where(source, pos)}: {message}", hint)
