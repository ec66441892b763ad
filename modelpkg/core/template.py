"""Prompt templates: Go ``text/template`` as chat templates use it, rendered the way Ollama renders them.

Models from Ollama's library and Modelfiles carry ``TEMPLATE`` in Go ``text/template`` syntax. This module
parses that language (the subset below) into frozen nodes and executes it with Go's semantics, then adds
Ollama's rules for turning a conversation into a prompt (``template/template.go``: ``Parse``, ``Execute``,
``collate``).

Public API::

    parse(source) -> Template            # cached by source; TemplateError "template line L, column C: ..."
    Template.execute(data) -> str        # plain text/template execution of one data value
    render(source, messages, **values)   # Ollama's Execute: .Messages templates and legacy per-turn ones
    uses_messages(source) -> bool        # does the template mention .Messages (Ollama's Vars check)

Supported: text and ``{{ }}`` actions with trim markers (``{{-`` / ``-}}`` trim all adjacent whitespace),
comments ``{{/* */}}``, pipelines with ``|``, fields ``.A.B``, ``$``, ``$.A``, variables (``$x := ...``,
``$x = ...``), ``if``/``else if``/``else``, ``range`` (``$i, $e :=``, ``else``, ``break``, ``continue``, range
over lists, maps in sorted key order, and integers), ``with``/``else with``, parentheses and ``(x).Field``
chains, literals (interpreted and raw strings, chars, numbers, ``true``/``false``/``nil``), and the functions
``and or not eq ne lt le gt ge len index slice print printf println html js urlquery`` (Go's builtins, with
``and``/``or`` short-circuiting and returning an operand) plus Ollama's ``json currentDate yesterdayDate
toTypeScriptType``. Values print as Go's ``fmt`` prints them (``[a b]``, ``map[k:v]``, ``true``, ``1e+06``)
and ``printf`` follows Go's verbs, flags, width and precision.

``render`` hands messages and tools to templates as the structs Ollama builds for them (at the commit in
shared/reference/ollama-behaviour.md): ``.Role``, ``.Content``, ``.ToolCalls``... on messages; tools, tool
call arguments and parameter properties print as JSON (their Go ``String`` methods), a tool's ``.Function``
prints as a Go struct, and ``json`` of a message uses Go field names.

Refused with a TemplateError: ``define``, ``template``, ``block`` and ``call`` (no recursion, no function
values), complex numbers, unknown functions. Deliberate differences from Go and Ollama: a missing map key, an
unknown field of a message, or a field of a missing value gives nil, and ``{{ }}`` prints nil as nothing (Go
prints ``<no value>`` for a missing key of a ``map[string]any`` even with ``missingkey=zero``); pointers
print as ``&{...}``, never as addresses; where Ollama's cut after ``.Response`` would panic (the cut inside
a branch that has an else), the else branch is dropped.

Limits, so a hostile template cannot hang or eat memory: the source size, the nesting depth of control
structures and parentheses, the total range iterations and evaluation steps, the text functions may build,
and the output (1 MiB) are all capped; going over raises TemplateError.

Pure module: no file, network or environment access. The one exception to "no clock" is that
``currentDate``/``yesterdayDate`` read the local date when a template calls them, as Ollama's do.
Imports nothing from modelpkg but ``modelpkg.core.errors``.
"""

from __future__ import annotations

import base64
import datetime
import functools
import math
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence
from urllib.parse import quote_from_bytes

from modelpkg.core.errors import TemplateError

__all__ = ["Template", "parse", "render", "uses_messages", "MAX_OUTPUT"]

# ------------------------------------------------------------------------------------------------------
# Limits

MAX_SOURCE = 1 << 20  # characters of template source
MAX_OUTPUT = 1 << 20  # characters a render may produce (1 MiB of text)
MAX_WORK = 16 << 20  # characters all function results together may build in one render
MAX_RANGE_ITERATIONS = 100_000  # range iterations in one render, all ranges together
MAX_STEPS = 1_000_000  # nodes and commands evaluated in one render (a 1000-message chat takes ~30k)
MAX_NESTING = 50  # nested control structures and parentheses
MAX_VALUE_DEPTH = 100  # nesting of a data value that printing or json will follow

_LIMIT_HINT = "the template loops or builds text without bound; check its range and printf actions"
_PARSE_HINT = "fix the TEMPLATE at that line and column; it uses Go text/template syntax"
_EXEC_HINT = "the template failed on this data; check the action at that line and column"

# ------------------------------------------------------------------------------------------------------
# Nodes (the parse tree). Positions are offsets into the source, turned into line:column for errors.


@dataclass(frozen=True, slots=True)
class _Text:
    text: str
    pos: int


@dataclass(frozen=True, slots=True)
class _Field:  # .A.B
    names: tuple[str, ...]
    pos: int


@dataclass(frozen=True, slots=True)
class _Variable:  # $x.A.B; names[0] is "$" or "$x"
    names: tuple[str, ...]
    pos: int


@dataclass(frozen=True, slots=True)
class _Chain:  # (pipeline).A.B
    node: Any
    names: tuple[str, ...]
    pos: int


@dataclass(frozen=True, slots=True)
class _Dot:
    pos: int


@dataclass(frozen=True, slots=True)
class _Nil:
    pos: int


@dataclass(frozen=True, slots=True)
class _Bool:
    value: bool
    pos: int


@dataclass(frozen=True, slots=True)
class _Number:
    text: str
    value: int | float | None  # None: an integer that does not fit Go's int
    pos: int


@dataclass(frozen=True, slots=True)
class _String:
    value: str
    pos: int


@dataclass(frozen=True, slots=True)
class _Identifier:  # a function name
    name: str
    pos: int


@dataclass(frozen=True, slots=True)
class _Command:
    args: tuple[Any, ...]
    pos: int


@dataclass(frozen=True, slots=True)
class _Pipe:
    decls: tuple[str, ...]
    is_assign: bool
    cmds: tuple[_Command, ...]
    pos: int


@dataclass(frozen=True, slots=True)
class _Action:
    pipe: _Pipe
    pos: int


@dataclass(frozen=True, slots=True)
class _If:
    pipe: _Pipe
    body: tuple[Any, ...]
    orelse: tuple[Any, ...] | None
    pos: int


@dataclass(frozen=True, slots=True)
class _With:
    pipe: _Pipe
    body: tuple[Any, ...]
    orelse: tuple[Any, ...] | None
    pos: int


@dataclass(frozen=True, slots=True)
class _Range:
    pipe: _Pipe
    body: tuple[Any, ...]
    orelse: tuple[Any, ...] | None
    pos: int


@dataclass(frozen=True, slots=True)
class _Break:
    pos: int


@dataclass(frozen=True, slots=True)
class _Continue:
    pos: int


@dataclass(frozen=True, slots=True)
class _End:  # parser marker only
    pos: int


@dataclass(frozen=True, slots=True)
class _Else:  # parser marker only
    pos: int


def _where(source: str, pos: int) -> str:
    pos = max(0, min(pos, len(source)))
    line = source.count("\n", 0, pos) + 1
    column = pos - (source.rfind("\n", 0, pos) + 1) + 1
    return f"template line {line}, column {column}"


def _error(source: str, pos: int, message: str, hint: str | None = None) -> TemplateError:
    return TemplateError(f"{_where(source, pos)}: {message}", hint)


# ------------------------------------------------------------------------------------------------------
# Lexer: Go's text/template/parse/lex.go state machine, producing a token list. A lexical error becomes an
# error token so that the parser reports problems in source order, as Go does.

_SPACE = " \t\r\n"
_KEYWORDS = frozenset({"block", "break", "continue", "define", "else", "end", "if", "range", "template", "with"})


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str
    val: str
    pos: int


def _is_alnum(c: str) -> bool:
    return c == "_" or c.isalpha() or c.isdecimal()


def _char_desc(c: str) -> str:  # Go's %#U
    code = ord(c)
    return f"U+{code:04X} '{c}'" if c.isprintable() else f"U+{code:04X}"


class _Lexer:
    def __init__(self, src: str):
        self.src = src
        self.n = len(src)
        self.pos = 0
        self.toks: list[_Token] = []
        self.parens: list[int] = []  # positions of the open left parens of the current action
        self.action_start = 0

    def run(self) -> list[_Token]:
        src = self.src
        while True:
            i = src.find("{{", self.pos)
            if i < 0:
                if self.pos < self.n:
                    self.toks.append(_Token("text", src[self.pos:], self.pos))
                self.toks.append(_Token("EOF", "", self.n))
                return self.toks
            trim = i + 3 < self.n and src[i + 2] == "-" and src[i + 3] in _SPACE
            text = src[self.pos:i]
            if trim:
                text = text.rstrip(_SPACE)
            if text:
                self.toks.append(_Token("text", text, self.pos))
            after = i + (4 if trim else 2)
            if src.startswith("/*", after):
                if not self._comment(i, after):
                    return self.toks
                continue
            self.toks.append(_Token("{{", "{{", i))
            self.action_start = i
            self.pos = after
            self.parens = []
            if not self._action():
                return self.toks

    def _fail(self, message: str, pos: int) -> bool:
        self.toks.append(_Token("error", message, pos))
        return False

    def _skip_space(self, p: int) -> int:
        while p < self.n and self.src[p] in _SPACE:
            p += 1
        return p

    def _right_delim(self, p: int) -> tuple[bool, bool]:
        """(at a right delimiter, it has a trim marker) for position p."""
        src = self.src
        if p < self.n and src[p] in _SPACE and src.startswith("-}}", p + 1):
            return True, True
        return src.startswith("}}", p), False

    def _at_terminator(self, p: int) -> bool:
        if p >= self.n:
            return True
        c = self.src[p]
        return c in _SPACE or c in ".,|:()" or self.src.startswith("}}", p)

    def _comment(self, start: int, after: int) -> bool:
        end = self.src.find("*/", after + 2)
        if end < 0:
            return self._fail("unclosed comment", start)
        p = end + 2
        delim, trim = self._right_delim(p)
        if not delim:
            return self._fail("comment ends before closing delimiter", start)
        p += 4 if trim else 2
        self.pos = self._skip_space(p) if trim else p
        return True

    def _emit(self, kind: str, start: int, end: int) -> None:
        self.toks.append(_Token(kind, self.src[start:end], start))
        self.pos = end

    def _action(self) -> bool:  # noqa: C901 - one branch per character class, as in Go's lexInsideAction
        src, n = self.src, self.n
        while True:
            p = self.pos
            delim, trim = self._right_delim(p)
            if delim:
                if self.parens:
                    return self._fail("unclosed left paren", self.parens[-1])
                if trim:
                    p += 2
                self.toks.append(_Token("}}", "}}", p))
                p += 2
                self.pos = self._skip_space(p) if trim else p
                return True
            if p >= n:
                return self._fail("unclosed action", self.action_start)
            c = src[p]
            if c in _SPACE:
                j = self._skip_space(p)
                if src.startswith("-}}", j):  # leave the last space to the trim-marked delimiter
                    j -= 1
                    if j == p:
                        continue
                self._emit("space", p, j)
            elif c == "=":
                self._emit("=", p, p + 1)
            elif c == ":":
                if not src.startswith(":=", p):
                    return self._fail("expected :=", p)
                self._emit(":=", p, p + 2)
            elif c == "|":
                self._emit("|", p, p + 1)
            elif c == '"' or c == "'":
                j = self._scan_quoted(p, c)
                if j < 0:
                    what = "quoted string" if c == '"' else "character constant"
                    return self._fail(f"unterminated {what}", p)
                self._emit("string" if c == '"' else "char", p, j)
            elif c == "`":
                j = src.find("`", p + 1)
                if j < 0:
                    return self._fail("unterminated raw quoted string", p)
                self._emit("rawstring", p, j + 1)
            elif c == "$":
                if not self._field_or_variable(p, "variable"):
                    return False
            elif c == "." and p + 1 < n and not ("0" <= src[p + 1] <= "9"):
                if not self._field_or_variable(p, "field"):
                    return False
            elif c in "+-." or "0" <= c <= "9":
                if not self._number(p):
                    return False
            elif _is_alnum(c):
                if not self._identifier(p):
                    return False
            elif c == "(":
                self.parens.append(p)
                self._emit("(", p, p + 1)
            elif c == ")":
                if not self.parens:
                    return self._fail("unexpected right paren", p)
                self.parens.pop()
                self._emit(")", p, p + 1)
            elif c <= "\x7f" and c.isprintable():
                self._emit("punct", p, p + 1)
            else:
                return self._fail(f"unrecognized character in action: {_char_desc(c)}", p)

    def _scan_quoted(self, p: int, quote: str) -> int:
        src, n, j = self.src, self.n, p + 1
        while j < n:
            c = src[j]
            if c == "\\":
                if j + 1 < n and src[j + 1] != "\n":
                    j += 2
                    continue
                return -1
            if c == "\n":
                return -1
            j += 1
            if c == quote:
                return j
        return -1

    def _field_or_variable(self, p: int, kind: str) -> bool:
        j = p + 1
        if self._at_terminator(j):
            self._emit("dot" if kind == "field" else "variable", p, j)
            return True
        while j < self.n and _is_alnum(self.src[j]):
            j += 1
        if not self._at_terminator(j):
            return self._fail(f"bad character {_char_desc(self.src[j])}", j)
        self._emit(kind, p, j)
        return True

    def _identifier(self, p: int) -> bool:
        j = p
        while j < self.n and _is_alnum(self.src[j]):
            j += 1
        if not self._at_terminator(j):
            return self._fail(f"bad character {_char_desc(self.src[j])}", j)
        word = self.src[p:j]
        if word in _KEYWORDS:
            kind = "keyword"
        elif word == "nil":
            kind = "nil"
        elif word in ("true", "false"):
            kind = "bool"
        else:
            kind = "identifier"
        self._emit(kind, p, j)
        return True

    def _scan_number(self, j: int) -> tuple[int, bool]:
        src, n = self.src, self.n
        if j < n and src[j] in "+-":
            j += 1
        digits = "0123456789_"
        if j < n and src[j] == "0":
            j += 1
            if j < n and src[j] in "xX":
                j, digits = j + 1, "0123456789abcdefABCDEF_"
            elif j < n and src[j] in "oO":
                j, digits = j + 1, "01234567_"
            elif j < n and src[j] in "bB":
                j, digits = j + 1, "01_"
        while j < n and src[j] in digits:
            j += 1
        if j < n and src[j] == ".":
            j += 1
            while j < n and src[j] in digits:
                j += 1
        if (len(digits) == 11 and j < n and src[j] in "eE") or (len(digits) == 23 and j < n and src[j] in "pP"):
            j += 1
            if j < n and src[j] in "+-":
                j += 1
            while j < n and src[j] in "0123456789_":
                j += 1
        if j < n and src[j] == "i":
            j += 1
        if j < n and _is_alnum(src[j]):
            return j + 1, False
        return j, True

    def _number(self, p: int) -> bool:
        j, ok = self._scan_number(p)
        if ok and j < self.n and self.src[j] in "+-":  # a complex constant such as 1+2i
            j, ok = self._scan_number(j)
            if ok and self.src[j - 1] == "i":
                self._emit("complex", p, j)
                return True
            ok = False
        if not ok:
            return self._fail(f"bad number syntax: {_go_quote(self.src[p:j])}", p)
        self._emit("number", p, j)
        return True


# ------------------------------------------------------------------------------------------------------
# Literals: Go's strconv.Unquote and the number rules of parse.newNumber / exec.idealConstant.

_SIMPLE_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\"}
_HEX = "0123456789abcdefABCDEF"


class _BadLiteral(Exception):
    pass


def _unquote_escape(s: str, i: int, quote: str) -> tuple[int | str, int]:
    """Decode the escape at s[i] == '\\'. Returns (a byte value as int, or a str) and the next index."""
    if i + 1 >= len(s):
        raise _BadLiteral("invalid syntax")
    c = s[i + 1]
    if c in _SIMPLE_ESCAPES:
        return _SIMPLE_ESCAPES[c], i + 2
    if c in "'\"":
        if c != quote:
            raise _BadLiteral("invalid syntax")
        return c, i + 2
    if c in "xuU":
        size = {"x": 2, "u": 4, "U": 8}[c]
        digits = s[i + 2:i + 2 + size]
        if len(digits) != size or any(d not in _HEX for d in digits):
            raise _BadLiteral("invalid syntax")
        value = int(digits, 16)
        if c == "x":
            return (value if quote == '"' else chr(value)), i + 2 + size
        if value > 0x10FFFF or 0xD800 <= value <= 0xDFFF:
            raise _BadLiteral("invalid syntax")
        return chr(value), i + 2 + size
    if "0" <= c <= "7":
        digits = s[i + 1:i + 4]
        if len(digits) != 3 or any(not ("0" <= d <= "7") for d in digits) or int(digits, 8) > 255:
            raise _BadLiteral("invalid syntax")
        value = int(digits, 8)
        return (value if quote == '"' else chr(value)), i + 4
    raise _BadLiteral("invalid syntax")


def _unquote(token: str) -> str:
    if token[0] == "`":
        return token[1:-1].replace("\r", "")  # strconv.Unquote drops carriage returns from raw strings
    body, out, pending, i = token[1:-1], [], bytearray(), 0
    while i < len(body):
        c = body[i]
        if c != "\\":
            j = body.find("\\", i)
            j = len(body) if j < 0 else j
            if pending:
                out.append(pending.decode("utf-8", "replace"))
                pending = bytearray()
            out.append(body[i:j])
            i = j
            continue
        value, i = _unquote_escape(body, i, '"')
        if isinstance(value, int):  # \x and octal escapes are bytes, which may form UTF-8 together
            pending.append(value)
        else:
            if pending:
                out.append(pending.decode("utf-8", "replace"))
                pending = bytearray()
            out.append(value)
    if pending:
        out.append(pending.decode("utf-8", "replace"))
    return "".join(out)


def _char_value(token: str) -> int:
    body = token[1:-1]
    if not body:
        raise _BadLiteral(f"malformed character constant: {token}")
    if body[0] == "\\":
        value, end = _unquote_escape(body, 0, "'")
        char = value if isinstance(value, str) else chr(value)
    else:
        char, end = body[0], 1
        if char == "'":
            raise _BadLiteral("invalid syntax")
    if end != len(body):
        raise _BadLiteral(f"malformed character constant: {token}")
    return ord(char)


_INT64 = (-(1 << 63), (1 << 63) - 1)


def _go_int(text: str) -> int | None:
    """strconv.ParseInt/ParseUint with base 0; None when the text is not an integer."""
    sign, body = (text[0], text[1:]) if text[:1] in "+-" else ("", text)
    try:
        if len(body) > 1 and body[0] == "0" and body[1] in "01234567_":
            value = int("0o" + body[1:], 0)
        else:
            value = int(body, 0)
    except ValueError:
        return None
    return -value if sign == "-" else value


def _go_float(text: str) -> float | None:
    body = text.lstrip("+-")
    try:
        if body[:2] in ("0x", "0X"):
            if "p" not in body.lower():
                return None
            value = float.fromhex(body.replace("_", ""))
        else:
            if not any(c.isdigit() for c in body):
                return None
            value = float(body)
    except (ValueError, OverflowError):
        return None
    if math.isinf(value):
        return None  # strconv.ParseFloat reports a range error
    return -value if text.startswith("-") else value


def _number_value(text: str) -> int | float | None:
    """The value Go gives a number constant when it is used: int, float64, or None when it overflows int."""
    if text.startswith("'"):
        return _char_value(text)
    if text.endswith("i"):
        raise _BadLiteral(f"complex number {text} is not supported")
    integer = _go_int(text)
    is_hex_int = text.lstrip("+-")[:2] in ("0x", "0X") and not any(c in "pP" for c in text)
    if integer is not None and not (_INT64[0] <= integer < 1 << 64):
        integer = None  # beyond int64 and uint64: Go parses it as a float, refused below
    if integer is not None:
        if any(c in ".eEpP" for c in text) and not is_hex_int:
            return float(integer)
        return integer if integer <= _INT64[1] else None  # a uint64: "overflows int" when used
    value = _go_float(text)
    if value is None:
        raise _BadLiteral(f"illegal number syntax: {_go_quote(text)}")
    if not any(c in ".eEpP" for c in text):
        raise _BadLiteral(f"integer overflow: {_go_quote(text)}")
    return value


# ------------------------------------------------------------------------------------------------------
# Parser: recursive descent following text/template/parse/parse.go, including its variable scoping.

_FUNCTIONS = frozenset({
    "and", "or", "not", "eq", "ne", "lt", "le", "gt", "ge", "len", "index", "slice", "print", "printf",
    "println", "html", "js", "urlquery", "json", "currentDate", "yesterdayDate", "toTypeScriptType",
})
_UNSUPPORTED_HINT = "modelpkg renders single templates: write the text inline instead of define/template/block"


def _describe(tok: _Token) -> str:  # Go's item.String()
    if tok.kind == "EOF":
        return "EOF"
    if tok.kind == "keyword":
        return f"<{tok.val}>"
    if len(tok.val) > 10:
        return _go_quote(tok.val[:10]) + "..."
    return _go_quote(tok.val)


class _Parser:
    def __init__(self, source: str, toks: list[_Token]):
        self.src = source
        self.toks = toks
        self.i = 0
        self.vars = ["$"]
        self.range_depth = 0
        self.depth = 0

    # token stream -----------------------------------------------------------------------------------
    def _tok(self) -> _Token:
        tok = self.toks[self.i] if self.i < len(self.toks) else self.toks[-1]
        if tok.kind == "error":
            raise _error(self.src, tok.pos, tok.val, _PARSE_HINT)
        return tok

    def next(self) -> _Token:
        tok = self._tok()
        self.i += 1
        return tok

    def peek(self) -> _Token:
        return self._tok()

    def peek_non_space(self) -> _Token:
        while self._tok().kind == "space":
            self.i += 1
        return self._tok()

    def next_non_space(self) -> _Token:
        self.peek_non_space()
        return self.next()

    def fail(self, pos: int, message: str, hint: str | None = None) -> TemplateError:
        return _error(self.src, pos, message, hint or _PARSE_HINT)

    def unexpected(self, tok: _Token, context: str) -> TemplateError:
        return self.fail(tok.pos, f"unexpected {_describe(tok)} in {context}")

    def enter(self, pos: int) -> None:
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise self.fail(pos, f"template nesting is deeper than {MAX_NESTING} levels", _LIMIT_HINT)

    # structure ----------------------------------------------------------------------------------------
    def parse(self) -> tuple[Any, ...]:
        nodes = []
        while self.peek().kind != "EOF":
            node = self.text_or_action()
            if isinstance(node, _End):
                raise self.fail(node.pos, "unexpected {{end}}")
            if isinstance(node, _Else):
                raise self.fail(node.pos, "unexpected {{else}}")
            nodes.append(node)
        return tuple(nodes)

    def text_or_action(self) -> Any:
        tok = self.next_non_space()
        if tok.kind == "text":
            return _Text(tok.val, tok.pos)
        if tok.kind == "{{":
            return self.action(tok)
        raise self.unexpected(tok, "input")

    def item_list(self, context: str, start: int) -> tuple[tuple[Any, ...], Any]:
        nodes = []
        while self.peek_non_space().kind != "EOF":
            node = self.text_or_action()
            if isinstance(node, (_End, _Else)):
                return tuple(nodes), node
            nodes.append(node)
        opened = _where(self.src, start).removeprefix("template ")
        raise self.fail(self.peek().pos, f"unexpected EOF: {{{{{context}}}}} at {opened} has no {{{{end}}}}")

    def action(self, left: _Token) -> Any:
        tok = self.next_non_space()
        if tok.kind == "keyword":
            word = tok.val
            if word in ("if", "range", "with"):
                return self.control(word, left.pos)
            if word == "end":
                self.expect_close("end")
                return _End(left.pos)
            if word == "else":
                after = self.peek_non_space()
                if not (after.kind == "keyword" and after.val in ("if", "with")):
                    self.expect_close("else")
                return _Else(left.pos)
            if word in ("break", "continue"):
                self.expect_close(f"{{{{{word}}}}}")
                if self.range_depth == 0:
                    raise self.fail(left.pos, f"{{{{{word}}}}} outside {{{{range}}}}")
                return _Break(left.pos) if word == "break" else _Continue(left.pos)
            raise self.fail(tok.pos, f"{{{{{word}}}}} is not supported", _UNSUPPORTED_HINT)
        self.i -= 1
        return _Action(self.pipeline("command", "}}"), left.pos)

    def expect_close(self, context: str) -> None:
        tok = self.next_non_space()
        if tok.kind != "}}":
            raise self.unexpected(tok, context)

    def control(self, context: str, pos: int) -> Any:
        self.enter(pos)
        mark = len(self.vars)
        if context == "range":
            self.range_depth += 1
        pipe = self.pipeline(context, "}}")
        body, nxt = self.item_list(context, pos)
        orelse = None
        if isinstance(nxt, _Else):
            after = self.peek()
            if context in ("if", "with") and after.kind == "keyword" and after.val == context:
                # {{else if x}} is {{else}}{{if x}}...{{end}} sharing the outer {{end}}
                self.next()
                orelse = (self.control(context, nxt.pos),)
            else:
                orelse, nxt = self.item_list(context, pos)
                if not isinstance(nxt, _End):
                    raise self.fail(nxt.pos, "expected end; found {{else}}")
        if context == "range":
            self.range_depth -= 1
        del self.vars[mark:]
        self.depth -= 1
        kind = {"if": _If, "with": _With, "range": _Range}[context]
        return kind(pipe, body, orelse, pos)

    def pipeline(self, context: str, end: str) -> _Pipe:
        pos = self.peek_non_space().pos
        decls: list[str] = []
        is_assign = False
        while self.peek_non_space().kind == "variable":
            save = self.i
            var = self.next()
            nxt = self.peek_non_space()
            if nxt.kind in (":=", "="):
                self.next()
                is_assign = nxt.kind == "="
                decls.append(var.val)
                self.vars.append(var.val)
                break
            if nxt.kind == "punct" and nxt.val == ",":
                self.next()
                decls.append(var.val)
                self.vars.append(var.val)
                if context == "range" and len(decls) < 2:
                    if self.peek_non_space().kind in ("variable", "}}", ")"):
                        continue
                    raise self.fail(nxt.pos, "range can only initialize variables")
                raise self.fail(nxt.pos, f"too many declarations in {context}")
            self.i = save
            break
        cmds: list[_Command] = []
        while True:
            tok = self.next_non_space()
            if tok.kind == end:
                if not cmds:
                    raise self.fail(tok.pos, f"missing value for {context}")
                for stage, cmd in enumerate(cmds[1:], start=2):
                    if isinstance(cmd.args[0], (_Bool, _Dot, _Nil, _Number, _String)):
                        raise self.fail(cmd.pos, f"non executable command in pipeline stage {stage}")
                return _Pipe(tuple(decls), is_assign, tuple(cmds), pos)
            if tok.kind in ("bool", "char", "complex", "dot", "field", "identifier", "number", "nil",
                            "rawstring", "string", "variable", "("):
                self.i -= 1
                cmds.append(self.command())
            else:
                raise self.unexpected(tok, context)

    def command(self) -> _Command:
        pos = self.peek_non_space().pos
        args = []
        while True:
            self.peek_non_space()
            operand = self.operand()
            if operand is not None:
                args.append(operand)
            tok = self.next()
            if tok.kind == "space":
                continue
            if tok.kind in ("}}", ")"):
                self.i -= 1
            elif tok.kind != "|":
                raise self.unexpected(tok, "operand")
            break
        if not args:
            raise self.fail(pos, "empty command")
        return _Command(tuple(args), pos)

    def operand(self) -> Any:
        node = self.term()
        if node is None or self.peek().kind != "field":
            return node
        names = []
        while self.peek().kind == "field":
            names.append(self.next().val[1:])
        if isinstance(node, _Field):
            return _Field(node.names + tuple(names), node.pos)
        if isinstance(node, _Variable):
            return _Variable(node.names + tuple(names), node.pos)
        if isinstance(node, (_Bool, _String, _Number, _Nil, _Dot)):
            raise self.fail(node.pos, "unexpected . after term")
        return _Chain(node, tuple(names), node.pos)

    def term(self) -> Any:
        tok = self.next_non_space()
        kind, pos = tok.kind, tok.pos
        if kind == "identifier":
            if tok.val == "call":
                raise self.fail(pos, 'function "call" is not supported', "templates cannot call function values")
            if tok.val not in _FUNCTIONS:
                raise self.fail(pos, f'function "{tok.val}" not defined')
            return _Identifier(tok.val, pos)
        if kind == "dot":
            return _Dot(pos)
        if kind == "nil":
            return _Nil(pos)
        if kind == "variable":
            if tok.val not in self.vars:
                raise self.fail(pos, f'undefined variable "{tok.val}"')
            return _Variable((tok.val,), pos)
        if kind == "field":
            return _Field((tok.val[1:],), pos)
        if kind == "bool":
            return _Bool(tok.val == "true", pos)
        if kind == "complex":
            raise self.fail(pos, f"complex number {tok.val} is not supported")
        if kind in ("number", "char"):
            try:
                return _Number(tok.val, _number_value(tok.val), pos)
            except _BadLiteral as e:
                raise self.fail(pos, str(e)) from None
        if kind == "(":
            self.enter(pos)
            pipe = self.pipeline("parenthesized pipeline", ")")
            self.depth -= 1
            return pipe
        if kind in ("string", "rawstring"):
            try:
                return _String(_unquote(tok.val), pos)
            except _BadLiteral as e:
                raise self.fail(pos, f"{e}: {_describe(tok)}") from None
        self.i -= 1
        return None


# ------------------------------------------------------------------------------------------------------
# The parsed template


@dataclass(frozen=True)
class Template:
    """A parsed template: its source, its nodes, and the identifiers it mentions (lowercased, as Ollama's
    ``Template.Vars``). ``str(template)`` is the source."""

    source: str
    nodes: tuple[Any, ...]
    identifiers: frozenset[str]

    def execute(self, data: Any) -> str:
        """Execute with ``data`` as dot and ``$`` (usually a dict, seen as a Go map)."""
        return _Exec(self.source).run(self.nodes, data)

    def __str__(self) -> str:
        return self.source


def parse(source: str) -> Template:
    """Parse Go text/template source. Raises TemplateError naming the line and column of the problem."""
    if not isinstance(source, str):
        raise TemplateError(f"a template must be text, not {type(source).__name__}")
    return _parse_cached(source)


@functools.lru_cache(maxsize=256)
def _parse_cached(source: str) -> Template:
    if len(source) > MAX_SOURCE:
        raise TemplateError(f"template is larger than {MAX_SOURCE // 1024} KiB", _LIMIT_HINT)
    nodes = _Parser(source, _Lexer(source).run()).parse()
    names: list[str] = []
    for node in nodes:
        _identifiers(node, names)
    return Template(source, nodes, frozenset(n.lower() for n in names))


def uses_messages(source: str) -> bool:
    """True when the template mentions ``.Messages``: Ollama then renders the whole conversation at once."""
    return "messages" in parse(source).identifiers


def _identifiers(node: Any, out: list[str]) -> None:
    """Field and variable names in actions and control pipelines, as Ollama's ``template.Identifiers``."""
    if isinstance(node, _Action):
        _identifiers(node.pipe, out)
    elif isinstance(node, (_If, _With, _Range)):
        _identifiers(node.pipe, out)
        for child in node.body + (node.orelse or ()):
            _identifiers(child, out)
    elif isinstance(node, _Pipe):
        for cmd in node.cmds:
            for arg in cmd.args:
                _identifiers(arg, out)
    elif isinstance(node, (_Field, _Variable)):
        out.extend(node.names)


# ------------------------------------------------------------------------------------------------------
# Go values. Python values stand for Go's: str string, int int, float float64, bool bool, None nil,
# list/tuple []any, Mapping map[string]any, bytes []byte. The types Ollama hands to templates (its
# template.templateMessage, templateTool, ..., api.ToolProperty) are _Record structs, and its typed slices and
# maps are _GoList/_GoMap, which remember whether they are nil and whether their Go type has a String method.


class _Fail(Exception):
    """A function or formatting failure; the executor adds the position."""


@dataclass(frozen=True, eq=False)
class _Record:
    schema: str  # key of _SCHEMAS
    fields: Mapping[str, Any]  # Go field name -> value, in declaration order

    @property
    def type_name(self) -> str:
        return _STRUCT_TYPES[self.schema]

    @property
    def stringer(self) -> bool:  # templateTool has a String method that gives its JSON
        return self.schema == "Tool"

    @property
    def pointer(self) -> bool:  # messages reach templates as *templateMessage
        return self.schema == "Message"


class _GoList(list):
    """A typed Go slice. style: "" plain, "json" (String() gives JSON), "ptype" (api.PropertyType)."""

    __slots__ = ("nil", "style", "type_name")

    def __init__(self, items: Any = (), *, nil: bool = False, style: str = "", type_name: str = "[]interface {}"):
        super().__init__(items)
        self.nil, self.style, self.type_name = nil and not self, style, type_name


class _GoMap(dict):
    """A typed Go map. style: "" plain, "json" (String() gives JSON, "{}" when nil), "ordered" (keeps
    insertion order, as api.ToolPropertiesMap)."""

    __slots__ = ("nil", "style", "type_name")

    def __init__(self, items: Any = (), *, nil: bool = False, style: str = "",
                 type_name: str = "map[string]interface {}"):
        super().__init__(items)
        self.nil, self.style, self.type_name = nil and not self, style, type_name


def _go_type(v: Any) -> str:
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
    if isinstance(v, (_GoList, _GoMap, _Record)):
        return v.type_name
    if isinstance(v, (bytes, bytearray)):
        return "[]uint8"
    if isinstance(v, (list, tuple)):
        return "[]interface {}"
    if isinstance(v, Mapping):
        return "map[string]interface {}"
    return type(v).__name__


def _truth(v: Any) -> bool:
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


def _sorted_items(m: Mapping) -> list[tuple[Any, Any]]:
    """Go sorts map keys when printing and ranging; api.ToolPropertiesMap keeps insertion order."""
    if isinstance(m, _GoMap) and m.style == "ordered":
        return list(m.items())
    return sorted(m.items(), key=lambda kv: _sort_key(kv[0]))


def _utf8(s: str) -> bytes:
    return s.encode("utf-8", "surrogatepass")


def _from_utf8(b: bytes) -> str:
    try:
        return b.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return b.decode("utf-8", "replace")


# ------------------------------------------------------------------------------------------------------
# Go's fmt: %v printing and Sprintf verbs, flags, width and precision.


@dataclass
class _Flags:
    plus: bool = False
    minus: bool = False
    sharp: bool = False
    space: bool = False
    zero: bool = False
    wid: int | None = None
    prec: int | None = None
    plus_v: bool = False
    sharp_v: bool = False

    def pad(self, s: str, zero: bool | None = None) -> str:
        if self.wid is None or len(s) >= self.wid:
            return s
        fill = self.wid - len(s)
        if self.minus:
            return s + " " * fill
        return ("0" if (self.zero if zero is None else zero) else " ") * fill + s


def _go_quote(s: str, quote: str = '"', ascii_only: bool = False) -> str:
    """strconv.Quote (or QuoteRune with quote="'"); QuoteToASCII when ascii_only."""
    out = [quote]
    for ch in s:
        o = ord(ch)
        if ch == quote or ch == "\\":
            out.append("\\" + ch)
        elif 0xD800 <= o <= 0xDFFF:  # not valid UTF-8 in Go: its bytes are escaped
            out.extend(f"\\x{b:02x}" for b in _utf8(ch))
        elif (o < 0x80 or not ascii_only) and ch.isprintable():
            out.append(ch)
        elif ch in "\a\b\f\n\r\t\v":
            out.append({"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t",
                        "\v": "\\v"}[ch])
        elif o < 0x20 or o == 0x7F:
            out.append(f"\\x{o:02x}")
        elif o < 0x10000:
            out.append(f"\\u{o:04x}")
        else:
            out.append(f"\\U{o:08x}")
    out.append(quote)
    return "".join(out)


def _can_backquote(s: str) -> bool:
    return not any(c == "`" or c == "\ufeff" or c == "\x7f" or (c < " " and c != "\t") or "\ud800" <= c <= "\udfff"
                   for c in s)


def _shortest_digits(a: float) -> tuple[str, int]:
    """Shortest round-trip decimal digits of a >= 0 and the decimal point position: a = 0.DIGITS x 10^dp."""
    return _digits_of(repr(a))


def _rounded_digits(a: float, n: int) -> tuple[str, int]:
    """a >= 0 correctly rounded to n significant digits."""
    return _digits_of(format(a, f".{max(n, 1) - 1}e"))


def _digits_of(text: str) -> tuple[str, int]:
    mant, _, exp = text.partition("e")
    ip, _, fp = mant.partition(".")
    all_digits = ip + fp
    stripped = all_digits.lstrip("0")
    digits = stripped.rstrip("0")
    if not digits:
        return "", 0
    return digits, len(ip) + (int(exp) if exp else 0) - (len(all_digits) - len(stripped))


def _fmt_e(digits: str, dp: int, prec: int, e: str) -> str:
    s = digits[:1] or "0"
    if prec > 0:
        s += "." + digits[1:1 + prec].ljust(prec, "0")
    exp = dp - 1 if digits else 0
    return f"{s}{e}{'-' if exp < 0 else '+'}{abs(exp):02d}"


def _fmt_f(digits: str, dp: int, prec: int) -> str:
    s = digits[:dp].ljust(dp, "0") if dp > 0 else "0"
    if prec > 0:
        frac = digits[dp:dp + prec] if dp >= 0 else "0" * min(-dp, prec) + digits[:max(prec + dp, 0)]
        s += "." + frac.ljust(prec, "0")
    return s


def _fmt_hex_float(a: float, prec: int, upper: bool) -> str:
    if a == 0:
        mant, exp = 0, 0
    else:
        m, e = math.frexp(a)
        mant, exp = int(m * (1 << 53)), e - 1  # 53-bit mantissa with its top bit set
        if prec >= 0 and prec < 13:
            shift = 52 - 4 * prec
            q, r = divmod(mant, 1 << shift)
            half = 1 << (shift - 1)
            if r > half or (r == half and q & 1):
                q += 1
            mant = q << shift
            if mant >> 53:
                mant >>= 1
                exp += 1
    frac = f"{mant & ((1 << 52) - 1):013x}" if mant else ""
    frac = frac.rstrip("0") if prec < 0 else frac[:prec].ljust(prec, "0")
    s = f"0x{1 if mant else 0}{'.' + frac if frac else ''}p{'-' if exp < 0 else '+'}{abs(exp):02d}"
    return s.upper() if upper else s


def _strconv_float(x: float, verb: str, prec: int) -> str:
    """strconv.FormatFloat(x, verb, prec, 64), always with a leading sign character."""
    if math.isnan(x):
        return "+NaN"
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    sign = "-" if math.copysign(1.0, x) < 0 else "+"
    a = abs(x)
    lower = verb.lower()
    if lower == "b":
        if a == 0:
            return sign + "0p-1074"
        m, e = math.frexp(a)
        mant, exp = int(m * (1 << 53)), e - 53
        if exp < -1074:
            mant, exp = mant >> (-1074 - exp), -1074
        return f"{sign}{mant}p{exp:+d}"
    if lower == "x":
        return sign + _fmt_hex_float(a, prec, verb == "X")
    if lower == "f":
        if prec >= 0:
            return sign + format(a, f".{prec}f")
        digits, dp = _shortest_digits(a) if a else ("", 0)
        return sign + _fmt_f(digits, dp, max(len(digits) - dp, 0))
    if lower == "e":
        if prec < 0:
            digits, dp = _shortest_digits(a) if a else ("", 0)
            prec = max(len(digits) - 1, 0)
        else:
            digits, dp = _rounded_digits(a, prec + 1) if a else ("", 0)
        return sign + _fmt_e(digits, dp, prec, verb)
    # g / G
    if prec < 0:
        digits, dp = _shortest_digits(a) if a else ("", 0)
        eprec, prec = 6, len(digits)
    else:
        prec = prec or 1
        digits, dp = _rounded_digits(a, prec) if a else ("", 0)
        eprec = len(digits) if prec > len(digits) >= dp else prec
    exp = dp - 1
    if exp < -4 or exp >= eprec:
        prec = min(prec, len(digits))
        return sign + _fmt_e(digits, dp, prec - 1, "e" if verb == "g" else "E")
    if prec > dp:
        prec = len(digits)
    return sign + _fmt_f(digits, dp, max(prec - dp, 0))


def _fmt_float(x: float, verb: str, f: _Flags) -> str:
    if verb == "v":
        verb, prec = "g", -1
    elif verb in "bgGxX":
        prec = -1
    elif verb in "feEF":
        prec = 6
    else:
        return _bad_verb(x, verb, f)
    if f.prec is not None:
        prec = f.prec
    num = _strconv_float(x, "f" if verb == "F" else verb, prec)
    if f.space and num[0] == "+" and not f.plus:
        num = " " + num[1:]
    if num[1] in "IN":  # infinities and NaN are never zero padded
        if num[1] == "N" and not f.space and not f.plus:
            num = num[1:]
        return f.pad(num, zero=False)
    if f.plus or num[0] != "+":
        if f.zero and not f.minus and f.wid is not None and f.wid > len(num):
            return num[0] + "0" * (f.wid - len(num)) + num[1:]
        return f.pad(num)
    return f.pad(num[1:])


def _rune(v: int) -> str:
    return chr(v) if 0 <= v <= 0x10FFFF and not 0xD800 <= v <= 0xDFFF else "\ufffd"


def _fmt_int(v: int, verb: str, f: _Flags) -> str:
    if verb == "c":
        return f.pad(_rune(v))
    if verb == "q":
        r = _rune(v)
        if f.sharp and _can_backquote(r):
            return f.pad(f"`{r}`")
        return f.pad(_go_quote(r, "'", ascii_only=f.plus))
    if verb == "U":
        u = v & 0xFFFFFFFFFFFFFFFF
        s = f"U+{u:0{max(4, f.prec or 0)}X}"
        if f.sharp and u <= 0x10FFFF and _rune(u).isprintable():
            s += f" '{chr(u)}'"
        return f.pad(s, zero=False)
    spec = {"d": "d", "v": "d", "b": "b", "o": "o", "O": "o", "x": "x", "X": "X"}.get(verb)
    if spec is None:
        return _bad_verb(v, verb, f)
    neg = v < 0
    digits = format(abs(v), spec)
    if f.prec is not None:
        if f.prec == 0 and v == 0:
            return f.pad("", zero=False)
        digits = digits.rjust(f.prec, "0")
    elif f.zero and not f.minus and f.wid is not None:
        digits = digits.rjust(f.wid - (1 if neg or f.plus or f.space else 0), "0")
    prefix = ""
    if verb == "O":
        prefix = "0o"
    elif f.sharp:
        prefix = {"b": "0b", "x": "0x", "X": "0X"}.get(verb, "")
        if verb == "o" and not digits.startswith("0"):
            prefix = "0"
    sign = "-" if neg else "+" if f.plus else " " if f.space else ""
    return f.pad(sign + prefix + digits, zero=False)


def _fmt_str(s: str, verb: str, f: _Flags) -> str:
    if verb in "vs" and not (verb == "v" and f.sharp_v):
        return f.pad(s if f.prec is None else s[:f.prec])
    if verb == "q" or verb == "v":
        s = s if f.prec is None else s[:f.prec]
        if f.sharp and _can_backquote(s):
            return f.pad(f"`{s}`")
        return f.pad(_go_quote(s, ascii_only=f.plus))
    if verb in "xX":
        data = _utf8(s)
        if f.prec is not None:
            data = data[:f.prec]
        if not data:
            return f.pad("", zero=False) if f.wid else ""
        hexes = [format(b, "02x" if verb == "x" else "02X") for b in data]
        prefix = ("0x" if verb == "x" else "0X") if f.sharp else ""
        return f.pad(" ".join(prefix + h for h in hexes) if f.space else prefix + "".join(hexes))
    return _bad_verb(s, verb, f)


def _bad_verb(v: Any, verb: str, f: _Flags) -> str:
    if v is None:
        return f"%!{verb}(<nil>)"
    return f"%!{verb}({_go_type(v)}={_fmt(v, 'v', f)})"


def _string_method(v: Any) -> str | None:
    """What the value's Go String method returns, or None when its Go type has none."""
    if isinstance(v, _Record):
        return _go_json(v) if v.stringer else None
    if isinstance(v, _GoList):
        if v.style == "json":
            return _go_json(v)
        if v.style == "ptype":  # api.PropertyType.String
            return "" if not v else v[0] if len(v) == 1 else "[" + " ".join(str(t) for t in v) + "]"
    if isinstance(v, _GoMap) and v.style == "json":
        return "{}" if v.nil else _go_json(v)
    return None


def _fmt(v: Any, verb: str, f: _Flags, depth: int = 0) -> str:  # noqa: C901 - fmt's printArg/printValue
    """Format one value as Go's fmt does for ``verb`` (``v`` for plain printing)."""
    if depth > MAX_VALUE_DEPTH:
        raise _Fail("value is nested too deeply to print")
    if v is None:
        if depth > 0:
            return "<nil>"
        return f.pad("<nil>") if verb in "Tv" else _bad_verb(v, verb, f)
    if verb == "T":
        return f.pad(_go_type(v))
    if isinstance(v, bool):
        return f.pad("true" if v else "false") if verb in "tv" else _bad_verb(v, verb, f)
    if isinstance(v, int):
        return _fmt_int(v, verb, f)
    if isinstance(v, float):
        return _fmt_float(v, verb, f)
    if isinstance(v, str):
        return _fmt_str(v, verb, f)
    if verb in "vsxXq" and not f.sharp_v:
        text = _string_method(v)
        if text is not None:
            return _fmt_str(text, verb, f)
    if isinstance(v, (bytes, bytearray)):
        if verb in "sxXq":
            return _fmt_str(_from_utf8(bytes(v)), verb, f)
        v = list(v)
    if isinstance(v, _Record):
        parts = []
        for name, value in v.fields.items():
            text = _fmt(value, verb, f, depth + 1)
            parts.append(f"{name}:{text}" if (f.plus_v or f.sharp_v) else text)
        if f.sharp_v:
            return f"{v.type_name}{{{', '.join(parts)}}}"
        return ("&" if v.pointer and depth == 0 else "") + "{" + " ".join(parts) + "}"
    if isinstance(v, (list, tuple)):
        items = [_fmt(e, verb, f, depth + 1) for e in v]
        if f.sharp_v:
            return _go_type(v) + "{" + ", ".join(items) + "}"
        return "[" + " ".join(items) + "]"
    if isinstance(v, Mapping):
        items = [f"{_fmt(k, verb, f, depth + 1)}:{_fmt(e, verb, f, depth + 1)}" for k, e in _sorted_items(v)]
        if f.sharp_v:
            return _go_type(v) + "{" + ", ".join(items) + "}"
        return "map[" + " ".join(items) + "]"
    text = str(v)  # a caller's own object: print what Python prints
    return f.pad(text) if verb in "vs" else _bad_verb(text, verb, f)


def _sprint(args: Sequence[Any]) -> str:
    """fmt.Sprint: spaces between operands when neither side is a string."""
    out, prev_string = [], False
    for i, arg in enumerate(args):
        is_string = isinstance(arg, str)
        if i > 0 and not is_string and not prev_string:
            out.append(" ")
        out.append(_fmt(arg, "v", _Flags()))
        prev_string = is_string
    return "".join(out)


def _sprintln(args: Sequence[Any]) -> str:
    return " ".join(_fmt(a, "v", _Flags()) for a in args) + "\n"


_TOO_LARGE = 1_000_000  # fmt refuses widths and precisions past this


def _parse_num(s: str, i: int, end: int) -> tuple[int | None, int]:
    """fmt's parsenum: (number or None, new index)."""
    num, start = 0, i
    while i < end and "0" <= s[i] <= "9":
        if num > _TOO_LARGE:
            return None, end
        num = num * 10 + ord(s[i]) - 48
        i += 1
    return (num if i > start else None), i


def _sprintf(fmt: str, args: Sequence[Any]) -> str:  # noqa: C901 - fmt.doPrintf
    out: list[str] = []
    end, argn, i, reordered = len(fmt), 0, 0, False

    def arg_number(argn: int, i: int) -> tuple[int, int, bool, bool]:
        """An explicit [n] index: (argn, i, found, ok)."""
        nonlocal reordered
        if i >= end or fmt[i] != "[":
            return argn, i, False, True
        reordered = True
        close = fmt.find("]", i + 1)
        if close < 0:
            return argn, i + 1, False, False
        num, j = _parse_num(fmt, i + 1, close)
        if num is None or j != close:
            return argn, close + 1, False, False
        if 1 <= num <= len(args):
            return num - 1, close + 1, True, True
        return argn, close + 1, True, False

    def int_arg(argn: int) -> tuple[int | None, int]:
        if argn >= len(args):
            return None, argn
        v = args[argn]
        if isinstance(v, bool) or not isinstance(v, int) or abs(v) > _TOO_LARGE:
            return None, argn + 1
        return v, argn + 1

    while i < end:
        j = fmt.find("%", i)
        if j < 0:
            out.append(fmt[i:])
            break
        out.append(fmt[i:j])
        i = j + 1
        f = _Flags()
        good = True
        while i < end and fmt[i] in "#0+- ":
            c = fmt[i]
            if c == "#":
                f.sharp = True
            elif c == "0":
                f.zero = not f.minus
            elif c == "+":
                f.plus = True
            elif c == "-":
                f.minus, f.zero = True, False
            else:
                f.space = True
            i += 1
        argn, i, after_index, ok = arg_number(argn, i)
        good = good and ok
        if i < end and fmt[i] == "*":
            i += 1
            f.wid, argn = int_arg(argn)
            if f.wid is None:
                out.append("%!(BADWIDTH)")
            elif f.wid < 0:
                f.wid, f.minus, f.zero = -f.wid, True, False
            after_index = False
        else:
            f.wid, i = _parse_num(fmt, i, end)
            if after_index and f.wid is not None:
                good = False
        if i + 1 < end and fmt[i] == ".":
            i += 1
            if after_index:
                good = False
            argn, i, after_index, ok = arg_number(argn, i)
            good = good and ok
            if i < end and fmt[i] == "*":
                i += 1
                f.prec, argn = int_arg(argn)
                if f.prec is not None and f.prec < 0:
                    f.prec = None
                if f.prec is None:
                    out.append("%!(BADPREC)")
                after_index = False
            else:
                f.prec, i = _parse_num(fmt, i, end)
                if f.prec is None:
                    f.prec = 0
        if not after_index:
            argn, i, after_index, ok = arg_number(argn, i)
            good = good and ok
        if i >= end:
            out.append("%!(NOVERB)")
            break
        verb = fmt[i]
        i += 1
        if verb == "%":
            out.append("%")
        elif not good:
            out.append(f"%!{verb}(BADINDEX)")
        elif argn >= len(args):
            out.append(f"%!{verb}(MISSING)")
        else:
            if verb == "v":
                f.sharp_v, f.sharp = f.sharp, False
                f.plus_v, f.plus = f.plus, False
            out.append(_fmt(args[argn], verb, f))
            argn += 1
    if not reordered and argn < len(args):
        extra = ["<nil>" if a is None else f"{_go_type(a)}={_fmt(a, 'v', _Flags())}" for a in args[argn:]]
        out.append("%!(EXTRA " + ", ".join(extra) + ")")
    return "".join(out)


# ------------------------------------------------------------------------------------------------------
# Escapers and JSON, as Go's text/template (html, js, urlquery) and encoding/json write them.

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
    return f"\\u{ord(_rune(ord(c))):04X}"


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
    s = _strconv_float(x, verb, -1).lstrip("+")
    if verb == "e" and len(s) >= 4 and s[-4] == "e" and s[-3] == "-" and s[-2] == "0":
        s = s[:-2] + s[-1]  # e-07 -> e-7
    return s


def _empty(v: Any) -> bool:  # encoding/json's omitempty
    return v is None or v is False or (isinstance(v, (int, float)) and not isinstance(v, bool) and v == 0) or (
        isinstance(v, (str, bytes, bytearray, list, tuple, Mapping)) and len(v) == 0)


def _json(v: Any, depth: int = 0) -> str:  # noqa: C901 - one case per Go kind, as encoding/json
    if depth > MAX_VALUE_DEPTH:
        raise _Fail("value is nested too deeply for json")
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
    if isinstance(v, (_GoList, _GoMap)) and v.nil:
        return "null"
    if isinstance(v, _GoList) and v.style == "ptype" and len(v) == 1:
        return _json(v[0], depth + 1)  # api.PropertyType marshals one type as a plain string
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_json(e, depth + 1) for e in v) + "]"
    if isinstance(v, Mapping):
        items = [(str(k), e) for k, e in v.items()]
        if not (isinstance(v, _GoMap) and v.style == "ordered"):
            items.sort(key=lambda kv: kv[0])
        return "{" + ",".join(f"{_json_str(k)}:{_json(e, depth + 1)}" for k, e in items) + "}"
    if isinstance(v, _Record):
        parts = []
        for go_name, _key, json_key, omitempty, _kind in _SCHEMAS[v.schema]:
            value = v.fields.get(go_name)
            if omitempty and not isinstance(value, _Record) and _empty(value):
                continue
            parts.append(f"{_json_str(json_key)}:{_json(value, depth + 1)}")
        return "{" + ",".join(parts) + "}"
    return _json_str(str(v))


def _go_json(v: Any) -> str:
    """Ollama's json function: json.Marshal, and an empty string where Marshal fails (NaN, Inf)."""
    try:
        return _json(v)
    except _JsonUnsupported:
        return ""


# ------------------------------------------------------------------------------------------------------
# Functions


def _fn_not(x: Any) -> bool:
    return not _truth(x)


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
        raise _Fail("missing argument for comparison")
    ka = _basic_kind(a)
    for b in others:
        kb = _basic_kind(b)
        if ka != kb:
            if a is not None and b is not None:
                raise _Fail("incompatible types for comparison")
            continue
        if ka == "invalid" or (ka != "other" and a == b):
            return True
        if ka == "other":
            raise _Fail(f"non-comparable type {_go_type(b)}")
    return False


def _fn_ne(a: Any, b: Any) -> bool:
    return not _fn_eq(a, b)


def _fn_lt(a: Any, b: Any) -> bool:
    ka, kb = _basic_kind(a), _basic_kind(b)
    if ka in ("invalid", "other") or kb in ("invalid", "other"):
        raise _Fail("invalid type for comparison")
    if ka != kb:
        raise _Fail("incompatible types for comparison")
    if ka == "bool":
        raise _Fail("invalid type for comparison")
    return a < b


def _fn_le(a: Any, b: Any) -> bool:
    return _fn_lt(a, b) or _fn_eq(a, b)


def _fn_gt(a: Any, b: Any) -> bool:
    return not _fn_le(a, b)


def _fn_ge(a: Any, b: Any) -> bool:
    return not _fn_lt(a, b)


def _fn_len(x: Any) -> int:
    if isinstance(x, str):
        return len(_utf8(x))  # Go counts bytes
    if isinstance(x, (list, tuple, Mapping)):
        return len(x)
    if x is None:
        raise _Fail("len of nil pointer")
    raise _Fail(f"len of type {_go_type(x)}")


def _index_arg(v: Any, cap: int) -> int:
    if v is None:
        raise _Fail("cannot index slice/array with nil")
    if isinstance(v, bool) or not isinstance(v, int):
        raise _Fail(f"cannot index slice/array with type {_go_type(v)}")
    if v < 0 or v > cap:
        raise _Fail(f"index out of range: {v}")
    return v


def _fn_index(item: Any, *indexes: Any) -> Any:
    if item is None:
        raise _Fail("index of untyped nil")
    for index in indexes:
        if item is None:
            raise _Fail("index of nil pointer")
        if isinstance(item, (str, list, tuple)):
            seq = _utf8(item) if isinstance(item, str) else item
            x = _index_arg(index, len(seq))
            if x == len(seq):
                raise _Fail(f"index out of range: {x}")
            item = seq[x]
        elif isinstance(item, Mapping):
            if index is None:
                raise _Fail("value is nil; should be of type string")
            if not isinstance(index, (str, int, float)):
                raise _Fail(f"value has type {_go_type(index)}; should be string")
            item = item.get(index)
        else:
            raise _Fail(f"can't index item of type {_go_type(item)}")
    return item


def _fn_slice(item: Any, *indexes: Any) -> Any:
    if item is None:
        raise _Fail("slice of untyped nil")
    if len(indexes) > 3:
        raise _Fail(f"too many slice indexes: {len(indexes)}")
    if isinstance(item, str):
        if len(indexes) == 3:
            raise _Fail("cannot 3-index slice a string")
        seq: Any = _utf8(item)
    elif isinstance(item, (list, tuple)):
        seq = item
    else:
        raise _Fail(f"can't slice item of type {_go_type(item)}")
    bounds = [0, len(seq), len(seq)]
    for k, index in enumerate(indexes):
        bounds[k] = _index_arg(index, len(seq))
    if bounds[0] > bounds[1]:
        raise _Fail(f"invalid slice index: {bounds[0]} > {bounds[1]}")
    if len(indexes) == 3 and bounds[1] > bounds[2]:
        raise _Fail(f"invalid slice index: {bounds[1]} > {bounds[2]}")
    part = seq[bounds[0]:bounds[1]]
    return _from_utf8(part) if isinstance(item, str) else list(part)


def _fn_printf(fmt: Any, *args: Any) -> str:
    if not isinstance(fmt, str):
        raise _Fail(f"printf format must be a string, not {_go_type(fmt)}")
    return _sprintf(fmt, args)


def _text_args(args: Sequence[Any]) -> str:  # text/template's evalArgs
    if len(args) == 1 and isinstance(args[0], str):
        return args[0]
    return _sprint(["" if a is None else a for a in args])


def _fn_html(*args: Any) -> str:
    return _text_args(args).translate(_HTML_ESCAPES)


def _fn_js(*args: Any) -> str:
    return _JS_RE.sub(_js_escape, _text_args(args))


def _fn_urlquery(*args: Any) -> str:
    return quote_from_bytes(_utf8(_text_args(args)), safe=" ").replace(" ", "+")


def _date_args(args: Sequence[Any]) -> None:
    for a in args:
        if not isinstance(a, str):
            raise _Fail(f"wrong type for value; expected string; got {_go_type(a)}")


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
    if not (isinstance(v, _Record) and v.schema == "ToolProperty"):
        return "any"
    any_of = v.fields.get("AnyOf") or ()
    if any_of:
        return " | ".join(_fn_typescript_type(p) for p in any_of)
    types = v.fields.get("Type") or ()
    if not types:
        return "any"
    return " | ".join(_TS_TYPES.get(t, "any") for t in types)


# name -> (minimum args, maximum args or None, implementation); and/or are evaluated by the executor
_BUILTINS: dict[str, tuple[int, int | None, Any]] = {
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
    "print": (0, None, lambda *a: _sprint(a)),
    "printf": (1, None, _fn_printf),
    "println": (0, None, lambda *a: _sprintln(a)),
    "html": (0, None, _fn_html),
    "js": (0, None, _fn_js),
    "urlquery": (0, None, _fn_urlquery),
    "json": (1, 1, _go_json),
    "currentDate": (0, None, _fn_current_date),
    "yesterdayDate": (0, None, _fn_yesterday_date),
    "toTypeScriptType": (1, 1, _fn_typescript_type),
}
# builtins whose Go parameters are reflect.Value, which a literal nil cannot be assigned to
_NO_NIL = frozenset({"and", "or", "not", "eq", "ne", "lt", "le", "gt", "ge", "len", "index", "slice"})


# ------------------------------------------------------------------------------------------------------
# Executor: text/template/exec.go over the frozen nodes, with the limits.


class _BreakLoop(Exception):
    pass


class _ContinueLoop(Exception):
    pass


_NO_FINAL = object()  # no value piped in from a previous command


class _Exec:
    def __init__(self, source: str):
        self.src = source
        self.out: list[str] = []
        self.size = 0
        self.work = 0
        self.steps = 0
        self.iterations = 0
        self.vars: list[list[Any]] = []

    def run(self, nodes: tuple[Any, ...], data: Any) -> str:
        start = len(self.out)
        self.vars = [["$", data]]
        self.walk(data, nodes)
        return "".join(self.out[start:])

    def fail(self, pos: int, message: str, hint: str | None = None) -> TemplateError:
        return _error(self.src, pos, message, hint or _EXEC_HINT)

    def tick(self, pos: int) -> None:
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise self.fail(pos, f"template execution took more than {MAX_STEPS} steps", _LIMIT_HINT)

    def charge(self, pos: int, text: str) -> None:
        self.work += len(text)
        if self.work > MAX_WORK:
            raise self.fail(pos, f"template functions built more than {MAX_WORK >> 20} MiB of text", _LIMIT_HINT)

    def emit(self, pos: int, text: str) -> None:
        self.size += len(text)
        if self.size > MAX_OUTPUT:
            raise self.fail(pos, f"template output is larger than {MAX_OUTPUT >> 20} MiB", _LIMIT_HINT)
        self.out.append(text)

    # statements ---------------------------------------------------------------------------------------
    def walk(self, dot: Any, nodes: tuple[Any, ...]) -> None:
        for node in nodes:
            self.tick(node.pos)
            kind = type(node)
            if kind is _Text:
                self.emit(node.pos, node.text)
            elif kind is _Action:
                value = self.pipe(dot, node.pipe)
                if not node.pipe.decls:
                    self.emit(node.pos, self.printable(node.pos, value))
            elif kind is _If or kind is _With:
                self.walk_if(dot, node)
            elif kind is _Range:
                self.walk_range(dot, node)
            elif kind is _Break:
                raise _BreakLoop
            elif kind is _Continue:
                raise _ContinueLoop

    def printable(self, pos: int, value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, str):
            return value
        try:
            return _fmt(value, "v", _Flags())
        except _Fail as e:
            raise self.fail(pos, str(e)) from None

    def walk_if(self, dot: Any, node: Any) -> None:
        mark = len(self.vars)
        try:
            value = self.pipe(dot, node.pipe)
            if _truth(value):
                self.walk(value if type(node) is _With else dot, node.body)
            elif node.orelse is not None:
                self.walk(dot, node.orelse)
        finally:
            del self.vars[mark:]

    def range_items(self, node: _Range, value: Any) -> list[tuple[Any, Any]]:
        if value is None:
            return []
        if isinstance(value, (list, tuple)):
            return list(enumerate(value))
        if isinstance(value, Mapping):
            return _sorted_items(value)
        if isinstance(value, int) and not isinstance(value, bool):
            if len(node.pipe.decls) > 1:
                raise self.fail(node.pos, f"can't use {value} to iterate over more than one variable")
            if value > MAX_RANGE_ITERATIONS:
                raise self.fail(node.pos, f"range over {value} is more than {MAX_RANGE_ITERATIONS} iterations",
                                _LIMIT_HINT)
            return [(i, i) for i in range(value)]
        raise self.fail(node.pos, f"range can't iterate over {self.printable(node.pos, value)}")

    def walk_range(self, dot: Any, node: _Range) -> None:
        mark = len(self.vars)
        try:
            value = self.pipe(dot, node.pipe)
            items = self.range_items(node, value)
            inner = len(self.vars)
            decls, assign = node.pipe.decls, node.pipe.is_assign
            for index, elem in items:
                self.iterations += 1
                if self.iterations > MAX_RANGE_ITERATIONS:
                    raise self.fail(node.pos, f"more than {MAX_RANGE_ITERATIONS} range iterations", _LIMIT_HINT)
                if decls:  # Go: one variable gets the element; with two, the first gets the index
                    if assign:
                        self.set_var(node.pos, decls[0], index if len(decls) > 1 else elem)
                        if len(decls) > 1:
                            self.set_var(node.pos, decls[1], elem)
                    else:
                        self.vars[inner - 1][1] = elem
                        if len(decls) > 1:
                            self.vars[inner - 2][1] = index
                try:
                    self.walk(elem, node.body)
                except _ContinueLoop:
                    pass
                except _BreakLoop:
                    return
                finally:
                    del self.vars[inner:]
            if not items and node.orelse is not None:
                try:
                    self.walk(dot, node.orelse)
                except (_BreakLoop, _ContinueLoop):
                    pass
        finally:
            del self.vars[mark:]

    # variables ----------------------------------------------------------------------------------------
    def set_var(self, pos: int, name: str, value: Any) -> None:
        for entry in reversed(self.vars):
            if entry[0] == name:
                entry[1] = value
                return
        raise self.fail(pos, f"undefined variable: {name}")

    def var_value(self, pos: int, name: str) -> Any:
        for entry in reversed(self.vars):
            if entry[0] == name:
                return entry[1]
        raise self.fail(pos, f"undefined variable: {name}")

    # expressions --------------------------------------------------------------------------------------
    def pipe(self, dot: Any, pipe: _Pipe) -> Any:
        value: Any = _NO_FINAL
        for cmd in pipe.cmds:
            value = self.command(dot, cmd, value)
        for name in pipe.decls:
            if pipe.is_assign:
                self.set_var(pipe.pos, name, value)
            else:
                self.vars.append([name, value])
        return value

    def not_a_function(self, node: Any, args: tuple[Any, ...], final: Any) -> None:
        if len(args) > 1 or final is not _NO_FINAL:
            raise self.fail(node.pos, "can't give argument to non-function")

    def command(self, dot: Any, cmd: _Command, final: Any) -> Any:
        self.tick(cmd.pos)
        first = cmd.args[0]
        kind = type(first)
        if kind is _Field:
            return self.field_chain(dot, first, first.names, cmd.args, final)
        if kind is _Variable:
            return self.variable(first, cmd.args, final)
        if kind is _Chain:
            return self.field_chain(self.arg(dot, first.node, ""), first, first.names, cmd.args, final)
        if kind is _Identifier:
            return self.call(dot, first, cmd.args, final)
        self.not_a_function(first, cmd.args, final)
        if kind is _Pipe:
            return self.pipe(dot, first)
        if kind is _Nil:
            raise self.fail(first.pos, "nil is not a command")
        return self.literal(dot, first)

    def literal(self, dot: Any, node: Any) -> Any:
        kind = type(node)
        if kind is _Dot:
            return dot
        if kind is _Number:
            if node.value is None:
                raise self.fail(node.pos, f"{node.text} overflows int")
            return node.value
        return node.value  # _Bool, _String

    def variable(self, node: _Variable, args: tuple[Any, ...], final: Any) -> Any:
        value = self.var_value(node.pos, node.names[0])
        if len(node.names) == 1:
            self.not_a_function(node, args, final)
            return value
        return self.field_chain(value, node, node.names[1:], args, final)

    def field_chain(self, receiver: Any, node: Any, names: tuple[str, ...], args: tuple[Any, ...],
                    final: Any) -> Any:
        for name in names[:-1]:
            receiver = self.field(node, receiver, name, False)
        has_args = len(args) > 1 or final is not _NO_FINAL
        return self.field(node, receiver, names[-1], has_args)

    def field(self, node: Any, receiver: Any, name: str, has_args: bool) -> Any:
        if isinstance(receiver, (_Record, Mapping)):
            if has_args:
                raise self.fail(node.pos, f"{name} is not a method but has arguments")
            fields = receiver.fields if isinstance(receiver, _Record) else receiver
            return fields.get(name)  # missingkey=zero: absent gives nil
        if receiver is None:
            return None  # a field of a missing value is missing too
        raise self.fail(node.pos, f"can't evaluate field {name} in type {_go_type(receiver)}")

    def arg(self, dot: Any, node: Any, func: str) -> Any:
        kind = type(node)
        if kind is _Field:
            return self.field_chain(dot, node, node.names, (node,), _NO_FINAL)
        if kind is _Variable:
            return self.variable(node, (node,), _NO_FINAL)
        if kind is _Chain:
            return self.field_chain(self.arg(dot, node.node, ""), node, node.names, (node,), _NO_FINAL)
        if kind is _Pipe:
            return self.pipe(dot, node)
        if kind is _Identifier:
            return self.call(dot, node, (node,), _NO_FINAL)
        if kind is _Nil:
            if func in _NO_NIL or func == "":
                raise self.fail(node.pos, f"cannot use nil as an argument{' to ' + func if func else ''}")
            return None
        return self.literal(dot, node)

    def call(self, dot: Any, ident: _Identifier, args: tuple[Any, ...], final: Any) -> Any:
        name = ident.name
        low, high, impl = _BUILTINS[name]
        argnodes = args[1:]
        count = len(argnodes) + (final is not _NO_FINAL)
        if count < low or (high is not None and count > high):
            want = f"at least {low}" if high is None else str(low)
            raise self.fail(ident.pos, f"wrong number of args for {name}: want {want} got {count}")
        if name in ("and", "or"):  # short-circuit, returning the deciding operand itself
            value = None
            for node in argnodes:
                value = self.arg(dot, node, name)
                if _truth(value) == (name == "or"):
                    return value
            return final if final is not _NO_FINAL else value
        values = [self.arg(dot, node, name) for node in argnodes]
        if final is not _NO_FINAL:
            values.append(final)
        try:
            result = impl(*values)
        except _Fail as e:
            raise self.fail(ident.pos, f"error calling {name}: {e}") from None
        if isinstance(result, str):
            self.charge(ident.pos, result)
        return result


# ------------------------------------------------------------------------------------------------------
# Ollama: api structs, collate, legacy per-turn execution, and the cut after {{ .Response }}.

# The structs Ollama hands to templates (template/template.go: templateMessage, templateToolCall,
# templateTool, ...; api.ToolProperty), built from messages and tools in Ollama's API JSON shape.
# Each field: Go name, key in the API JSON, key when the template marshals it with json, omitempty, kind.
# A kind is a scalar kind, a schema name, or (container, schema).
_SCHEMAS: dict[str, tuple[tuple[str, str, str, bool, Any], ...]] = {
    "Message": (("Role", "role", "Role", False, "str"), ("Content", "content", "Content", False, "str"),
                ("Thinking", "thinking", "Thinking", False, "str"),
                ("Images", "images", "Images", False, "images"),
                ("ToolCalls", "tool_calls", "ToolCalls", False, ("list", "ToolCall")),
                ("ToolName", "tool_name", "ToolName", False, "str"),
                ("ToolCallID", "tool_call_id", "ToolCallID", False, "str")),
    "ToolCall": (("ID", "id", "ID", False, "str"), ("Function", "function", "Function", False, "ToolCallFunction")),
    "ToolCallFunction": (("Index", "index", "Index", False, "int"), ("Name", "name", "Name", False, "str"),
                         ("Arguments", "arguments", "Arguments", False, "args")),
    "Tool": (("Type", "type", "type", False, "str"), ("Items", "items", "items", True, "any"),
             ("Function", "function", "function", False, "ToolFunction")),
    "ToolFunction": (("Name", "name", "name", False, "str"),
                     ("Description", "description", "description", False, "str"),
                     ("Parameters", "parameters", "parameters", False, "ToolFunctionParameters")),
    "ToolFunctionParameters": (("Type", "type", "type", False, "str"), ("Defs", "$defs", "$defs", True, "any"),
                               ("Items", "items", "items", True, "any"),
                               ("Required", "required", "required", True, "strings"),
                               ("Properties", "properties", "properties", False, ("props", "ToolProperty"))),
    "ToolProperty": (("AnyOf", "anyOf", "anyOf", True, ("list", "ToolProperty")),
                     ("Type", "type", "type", True, "ptype"), ("Items", "items", "items", True, "any"),
                     ("Description", "description", "description", True, "str"),
                     ("Enum", "enum", "enum", True, "anys"),
                     ("Properties", "properties", "properties", True, ("omap", "ToolProperty")),
                     ("Required", "required", "required", True, "strings")),
}
_STRUCT_TYPES = {
    "Message": "*template.templateMessage", "ToolCall": "template.templateToolCall",
    "ToolCallFunction": "template.templateToolCallFunction", "Tool": "template.templateTool",
    "ToolFunction": "template.templateToolFunction",
    "ToolFunctionParameters": "template.templateToolFunctionParameters", "ToolProperty": "api.ToolProperty",
}
_ABSENT = object()


def _convert(kind: Any, value: Any, where: str, depth: int) -> Any:  # noqa: C901 - one case per kind
    absent = value is _ABSENT or value is None
    if isinstance(kind, tuple):
        container, schema = kind
        if container == "list":
            if absent or (isinstance(value, (list, tuple)) and not value):
                return _GoList(nil=True)
            if isinstance(value, (list, tuple)):
                return _GoList(_to_record(schema, e, f"{where}[{i}]", depth + 1) for i, e in enumerate(value))
        else:
            style, type_name = {"props": ("json", "template.templateProperties"),
                                "omap": ("ordered", "*api.ToolPropertiesMap")}[container]
            if absent:
                return None if container == "omap" else _GoMap(nil=True, style=style, type_name=type_name)
            if isinstance(value, Mapping):
                return _GoMap(((str(k), _to_record(schema, e, f"{where}.{k}", depth + 1)) for k, e in value.items()),
                              style=style, type_name=type_name)
        raise TemplateError(f"{where} must be a {'list' if container == 'list' else 'mapping'}, "
                            f"not {type(value).__name__}")
    if kind in _SCHEMAS:
        return _to_record(kind, {} if absent else value, where, depth + 1)
    if kind == "any":
        return None if absent else value
    if kind == "str":
        if absent:
            return ""
        if isinstance(value, str):
            return value
    elif kind == "int":
        if absent:
            return 0
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind == "args":
        if absent:
            return _GoMap(nil=True, style="json", type_name="template.templateArgs")
        if isinstance(value, Mapping):
            return _GoMap(((str(k), e) for k, e in value.items()), style="json", type_name="template.templateArgs")
    elif kind == "ptype":
        if absent:
            return _GoList(nil=True, style="ptype", type_name="api.PropertyType")
        if isinstance(value, str) or (isinstance(value, (list, tuple)) and all(isinstance(t, str) for t in value)):
            return _GoList([value] if isinstance(value, str) else value, style="ptype", type_name="api.PropertyType")
    else:  # images, strings, anys: slices
        type_name = {"images": "[]api.ImageData", "strings": "[]string", "anys": "[]interface {}"}[kind]
        if absent:
            return _GoList(nil=True, type_name=type_name)
        if isinstance(value, (list, tuple)) and (kind != "strings" or all(isinstance(e, str) for e in value)):
            return _GoList(value, type_name=type_name)
    expected = {"str": "a string", "int": "an integer", "args": "a mapping", "ptype": "a type name or a list of them",
                "images": "a list", "strings": "a list of strings", "anys": "a list"}[kind]
    raise TemplateError(f"{where} must be {expected}, not {type(value).__name__}")


def _to_record(schema: str, raw: Any, where: str, depth: int = 0) -> _Record:
    if isinstance(raw, _Record) and raw.schema == schema:
        return raw
    if depth > MAX_VALUE_DEPTH:
        raise TemplateError(f"{where} is nested too deeply")
    if not isinstance(raw, Mapping):
        raise TemplateError(f"{where} must be a mapping, not {type(raw).__name__}")
    fields = {}
    for go_name, key, _json_key, _omit, kind in _SCHEMAS[schema]:
        value = raw[key] if key in raw else raw.get(go_name, _ABSENT)
        fields[go_name] = _convert(kind, value, f"{where}.{key}", depth)
    return _Record(schema, fields)


def _collate(messages: list[_Record]) -> tuple[str, list[_Record]]:
    """Ollama's collate: all system contents joined by a blank line, and consecutive messages of one role
    (except tool results) merged into the first, contents joined by a blank line."""
    system = [m.fields["Content"] for m in messages if m.fields["Role"] == "system"]
    collated: list[_Record] = []
    for m in messages:
        role = m.fields["Role"]
        if collated and collated[-1].fields["Role"] == role and role != "tool":
            last = collated[-1]
            collated[-1] = _Record(last.schema, {**last.fields, "Content": last.fields["Content"] + "\n\n"
                                                 + m.fields["Content"]})
        else:
            collated.append(m)
    return "\n\n".join(system), collated


_RESPONSE_NODE = _Action(_Pipe((), False, (_Command((_Field(("Response",), 0),), 0),), 0), 0)


def _with_response(template: Template) -> tuple[Any, ...]:
    """Ollama's Parse appends {{ .Response }} to a template that mentions neither Messages nor Response."""
    if "messages" in template.identifiers or "response" in template.identifiers:
        return template.nodes
    return template.nodes + (_RESPONSE_NODE,)


def _cut_after_response(nodes: tuple[Any, ...]) -> tuple[Any, ...]:
    """Ollama's deleteNode: keep everything up to the first action field naming Response, drop the rest.

    Like Ollama, control pipelines are not searched, only actions and the bodies of if/with/range. Where Ollama
    would panic (the cut happening inside a branch that has an else), the else branch is dropped."""
    cut = False

    def hit(node: Any) -> bool:
        nonlocal cut
        if isinstance(node, _Field) and "Response" in node.names:
            cut = True
            return False
        return cut

    def walk_list(nodes: tuple[Any, ...]) -> tuple[Any, ...]:
        kept = []
        for node in nodes:
            new = walk(node)
            if new is not None:
                kept.append(new)
        return tuple(kept)

    def walk_pipe(pipe: _Pipe) -> _Pipe | None:
        cmds = []
        for cmd in pipe.cmds:
            args = [a for a in (walk(arg) for arg in cmd.args) if a is not None]
            if not args:
                return None
            cmds.append(_Command(tuple(args), cmd.pos))
        return _Pipe(pipe.decls, pipe.is_assign, tuple(cmds), pipe.pos) if cmds else None

    def walk(node: Any) -> Any:
        if hit(node):
            return None
        if isinstance(node, (_If, _With, _Range)):
            body = walk_list(node.body)
            orelse = None if node.orelse is None or cut else walk_list(node.orelse)
            return type(node)(node.pipe, body, orelse, node.pos)
        if isinstance(node, _Action):
            pipe = walk_pipe(node.pipe)
            return None if pipe is None else _Action(pipe, node.pos)
        if isinstance(node, _Pipe):
            return walk_pipe(node)
        return node

    return walk_list(nodes)


def _go_key(name: str) -> str:
    """A keyword argument's template name: think_level -> ThinkLevel."""
    if name[:1].isupper():
        return name
    return "".join(part[:1].upper() + part[1:] for part in name.split("_"))


def render(source: str, messages: Sequence[Mapping[str, Any]], **values: Any) -> str:
    """Render a conversation with a template as Ollama's ``template.Execute`` does.

    ``messages`` are dicts in Ollama's API shape (``role``, ``content``, and optionally ``thinking``,
    ``images``, ``tool_calls``, ``tool_name``, ``tool_call_id``); templates see them as ``.Role``,
    ``.Content``, ``.ToolCalls``... Keyword values:

    - ``tools``: tool definitions in Ollama's API shape, seen as ``.Tools``;
    - ``think``: True/False or a level such as "high", giving ``.Think``, ``.ThinkLevel``, ``.IsThinkSet``;
    - ``system``: replaces the system messages of the conversation with this one text;
    - ``prompt``, ``response``: override ``.Prompt`` and ``.Response`` (for a legacy template, those of the
      last turn); ``prompt`` with ``suffix`` renders a fill-in-the-middle request as Ollama does;
    - anything else is passed to the template under its CamelCase name (``suffix`` -> ``.Suffix``).

    A template that mentions ``.Messages`` is executed once with the whole conversation. An older one is
    executed once per turn with ``.System``/``.Prompt``/``.Response``, and the last turn is cut right after
    ``{{ .Response }}`` so the prompt ends where the model's reply begins.
    """
    template = parse(source)
    nodes = _with_response(template)
    system = values.pop("system", None)
    prompt = values.pop("prompt", None)
    response = values.pop("response", None)
    suffix = values.pop("suffix", None)
    tools = values.pop("tools", None)
    think = values.pop("think", None)
    # server/routes.go: Think is think's truth, ThinkLevel its level ("medium" for a bare true)
    if think is not None and not isinstance(think, (bool, str)):
        raise TemplateError("think must be true, false or a level such as \"high\"")
    base: dict[str, Any] = {
        "Think": think is True or think in ("high", "medium", "low", "max"),
        "ThinkLevel": "medium" if think is True else think if isinstance(think, str) else "",
        "IsThinkSet": think is not None,
    }
    base.update({_go_key(k): v for k, v in values.items()})
    run = _Exec(template.source).run
    if prompt and suffix:
        return run(nodes, {"Prompt": prompt, "Suffix": suffix, "Response": "", **base})

    if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Sequence):
        raise TemplateError("messages must be a list of {'role': ..., 'content': ...} mappings")
    msgs = [_to_record("Message", m, f"message {i}") for i, m in enumerate(messages, 1)]
    if system is not None:
        msgs = [_to_record("Message", {"role": "system", "content": system}, "system")] + [
            m for m in msgs if m.fields["Role"] != "system"]
    system_text, collated = _collate(msgs)

    if "messages" in template.identifiers:
        if not isinstance(tools, (list, tuple, type(None))):
            raise TemplateError("tools must be a list of tool definitions")
        tool_list = _GoList((_to_record("Tool", t, f"tool {i}") for i, t in enumerate(tools or (), 1)),
                            nil=tools is None, style="json", type_name="template.templateTools")
        data = {"System": system_text, "Messages": _GoList(collated, type_name="[]*template.templateMessage"),
                "Tools": tool_list, "Response": response or "", "Prompt": prompt or "", **base}
        return run(nodes, data)

    # Legacy: one execution per user turn, as Ollama's Execute loop does
    out: list[str] = []
    turn = {"System": "", "Prompt": "", "Response": ""}

    def execute(nodes_: tuple[Any, ...]) -> None:
        out.append(run(nodes_, {**turn, **base}))
        turn.update(System="", Prompt="", Response="")

    for m in collated:
        role, content = m.fields["Role"], m.fields["Content"]
        if role == "system":
            if turn["Prompt"] or turn["Response"]:
                execute(nodes)
            turn["System"] = content
        elif role == "user":
            if turn["Response"]:
                execute(nodes)
            turn["Prompt"] = content
        elif role == "assistant":
            turn["Response"] = content
    if prompt is not None:
        turn["Prompt"] = prompt
    if response is not None:
        turn["Response"] = response
    execute(_cut_after_response(nodes))
    return "".join(out)
