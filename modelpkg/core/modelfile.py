"""Modelfiles: Ollama's Modelfile syntax parsed into frozen values, and formatted back.

``parse(text)`` follows Ollama's parser (``parser/parser.go`` ``ParseFile``; notes in
``ollama-behaviour.md`` section 1) rule for rule: the same instructions, quoting, comments and
accepted input, with clearer errors that name the right line (CRLF counted once). ``format(m)`` is
its inverse, ``parse(format(m)) == m``, and refuses values the syntax cannot hold. PARAMETER
values stay text here; ``Modelfile.parameters()`` types them as Ollama's ``api.FormatParams`` does.

Resolving FROM, ADAPTER and DRAFT paths is not done here.

Pure module: no file, env, network or clock access. Imports only ``modelpkg.core.errors`` (and the
standard library).
"""

from __future__ import annotations

import difflib
import math
import re
import struct
from dataclasses import dataclass, field
from typing import NamedTuple

from modelpkg.core.errors import ModelfileError

__all__ = [
    "DEPRECATED_PARAMETERS",
    "KEYWORDS",
    "PARAMETER_TYPES",
    "ROLES",
    "Instruction",
    "Modelfile",
    "convert_parameter",
    "format",
    "format_parameter_value",
    "parse",
]

#: Instruction keywords, lowercase (Ollama's ``isValidCommand``); matched case-insensitively.
KEYWORDS = (
    "from", "parameter", "template", "system", "adapter", "license",
    "message", "draft", "renderer", "parser", "requires",
)
#: MESSAGE roles, matched exactly (case-sensitive), as Ollama does.
ROLES = ("system", "user", "assistant")

#: Every PARAMETER Ollama accepts (``api.Options``/``api.Runner``), with its type.
PARAMETER_TYPES: dict[str, type] = {
    **dict.fromkeys(
        ("num_keep", "seed", "num_predict", "top_k", "repeat_last_n", "num_ctx", "num_batch",
         "num_gpu", "main_gpu", "num_thread", "draft_num_predict"),
        int,
    ),
    **dict.fromkeys(
        ("temperature", "top_p", "min_p", "typical_p", "repeat_penalty", "presence_penalty",
         "frequency_penalty"),
        float,
    ),
    "use_mmap": bool,
    "stop": list,
}
#: Accepted and dropped with a warning (Ollama's ``deprecatedParameters``).
DEPRECATED_PARAMETERS = frozenset({
    "penalize_newline", "low_vram", "f16_kv", "logits_all", "vocab_only", "use_mlock",
    "mirostat", "mirostat_tau", "mirostat_eta",
})

ParameterValue = int | float | bool | list

_BLANKS = (" ", "\t")          # the only whitespace between words
_SPACE = " \t\r\n"             # the only whitespace a value keeps once non-printables are dropped
_LINE_BREAK = re.compile(r"\r\n|\r|\n")   # Ollama: \r and \n each end a line
_LETTERS = re.compile(r"[A-Za-z]*")
_NAME_CHARS = re.compile(r"[A-Za-z0-9_]*")
_WORD = re.compile(r"[^ \t]*")


@dataclass(frozen=True)
class Instruction:
    """One instruction. ``name`` is the PARAMETER name or the MESSAGE role, else None."""

    keyword: str
    value: str
    name: str | None = None
    line: int = field(default=0, compare=False)


@dataclass(frozen=True)
class Modelfile:
    """A parsed Modelfile: its instructions in order, with convenience views."""

    instructions: tuple[Instruction, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "instructions", tuple(self.instructions))

    def get(self, keyword: str) -> list[Instruction]:
        """Every instruction with this keyword (any case), in order."""
        keyword = keyword.lower()
        return [i for i in self.instructions if i.keyword == keyword]

    @property
    def from_(self) -> str:
        """The first FROM value (Ollama merges later file FROMs; see section 1.4)."""
        froms = self.get("from")
        if not froms:
            raise _no_from()
        return froms[0].value

    @property
    def template(self) -> str | None:
        return self._last("template")

    @property
    def system(self) -> str | None:
        return self._last("system")

    @property
    def adapter(self) -> str | None:
        return self._last("adapter")

    @property
    def licenses(self) -> list[str]:
        return [i.value for i in self.get("license")]

    @property
    def messages(self) -> list[dict]:
        return [{"role": i.name, "content": i.value} for i in self.get("message")]

    def parameters(self) -> dict[str, ParameterValue]:
        """The PARAMETERs typed: ``stop`` lines append, other repeats keep the last value.

        Deprecated names are dropped (see ``warnings()``). Raises ModelfileError naming the line.
        """
        typed: dict[str, ParameterValue] = {}
        for p in self.get("parameter"):
            if p.name in DEPRECATED_PARAMETERS:
                continue
            try:
                value = convert_parameter(p.name, p.value)
            except ModelfileError as e:
                raise ModelfileError(e.reason, line=p.line, hint=e.hint) from None
            if isinstance(value, list):
                typed.setdefault(p.name, []).extend(value)
            else:
                typed[p.name] = value
        return typed

    def warnings(self) -> list[str]:
        """Things Ollama accepts but ignores: today, deprecated PARAMETER names."""
        return [
            f"{_where(p.line)}parameter '{p.name}' is deprecated and ignored"
            for p in self.get("parameter")
            if p.name in DEPRECATED_PARAMETERS
        ]

    def _last(self, keyword: str) -> str | None:
        found = self.get(keyword)
        return found[-1].value if found else None


# ---------------------------------------------------------------------------------------------
# parse


class _Line(NamedTuple):
    number: int
    body: str   # without its line break
    end: str    # the line break, or "" on the last line


def parse(text: str | bytes) -> Modelfile:
    """Parse Modelfile text; bytes are decoded as Ollama does (UTF-8, or UTF-16 with a BOM)."""
    if isinstance(text, bytes):
        text = _decode(text)
    lines = _split_lines(text.removeprefix("\ufeff"))
    instructions = []
    i = 0
    while i < len(lines):
        head = lines[i].body.lstrip(" \t")
        if not head or head.startswith("#"):   # blank line or comment (only at a line start)
            i += 1
            continue
        instruction, i = _read_instruction(lines, i, head)
        instructions.append(instruction)
    if not any(x.keyword == "from" for x in instructions):
        raise _no_from()
    return Modelfile(tuple(instructions))


def _decode(data: bytes) -> str:
    # Ollama reads through unicode.BOMOverride(UTF8 decoder): a BOM picks UTF-16 LE/BE.
    if data.startswith(b"\xff\xfe"):
        return data[2:].decode("utf-16-le", "replace")
    if data.startswith(b"\xfe\xff"):
        return data[2:].decode("utf-16-be", "replace")
    return data.decode("utf-8", "replace")


def _split_lines(text: str) -> list[_Line]:
    lines, start = [], 0
    for m in _LINE_BREAK.finditer(text):
        lines.append(_Line(len(lines) + 1, text[start:m.start()], m.group()))
        start = m.end()
    lines.append(_Line(len(lines) + 1, text[start:], ""))
    return lines


def _read_instruction(lines: list[_Line], i: int, head: str) -> tuple[Instruction, int]:
    number = lines[i].number
    # Ollama takes any first character (dropping it if non-printable), then letters only.
    letters = _LETTERS.match(head, 1).group()
    word = (head[0] if head[0].isprintable() else "") + letters
    keyword, rest = word.lower(), head[1 + len(letters):]
    if keyword in KEYWORDS and not rest:
        raise ModelfileError(
            f"missing value after {keyword.upper()}", line=number,
            hint=f'write the value on the same line: {keyword.upper()} <value>, or """...""" '
                 "for text over several lines")
    if keyword not in KEYWORDS or rest[0] not in _BLANKS:
        raise _unknown_instruction(_WORD.match(head).group(), keyword, number)
    rest, name = rest[1:], None
    if keyword == "parameter":
        name, rest = _read_parameter_name(rest, number)
    elif keyword == "message":
        name, rest = _read_role(rest, number)
    value, i = _read_value(lines, i, rest)
    return Instruction(keyword, value, name, number), i


def _read_parameter_name(rest: str, number: int) -> tuple[str, str]:
    name = _NAME_CHARS.match(rest).group()
    after = rest[len(name):]
    if name and after[:1] in _BLANKS:
        return name, after[1:]
    if not name and after[:1] in ("", *_BLANKS):
        # Ollama reads "PARAMETER  x 1" (two spaces) as a parameter named '' and fails later.
        raise ModelfileError(
            "missing parameter name after PARAMETER", line=number,
            hint="write PARAMETER <name> <value>, with one space after PARAMETER")
    if not after:
        raise ModelfileError(
            f"missing value for PARAMETER {name}", line=number,
            hint=f"write PARAMETER {name} <value> on one line")
    raise ModelfileError(
        f"invalid parameter name {_show(_WORD.match(rest).group())}", line=number,
        hint="parameter names use only letters, digits and '_', such as num_ctx")


def _read_role(rest: str, number: int) -> tuple[str, str]:
    role = _LETTERS.match(rest).group()
    after = rest[len(role):]
    if role in ROLES and after[:1] in _BLANKS:
        return role, after[1:]
    if role in ROLES and not after:
        raise ModelfileError(
            f"missing content for MESSAGE {role}", line=number,
            hint=f"write MESSAGE {role} <text> on one line, or \"\"\"...\"\"\" for several lines")
    if not role and after[:1] in ("", *_BLANKS):
        raise ModelfileError(
            "missing message role after MESSAGE", line=number,
            hint="write MESSAGE <role> <text>, with one space after MESSAGE")
    shown = _WORD.match(rest).group()
    hint = "roles are lowercase" if shown.lower() in ROLES else "write MESSAGE <role> <text>"
    raise ModelfileError(
        f"invalid message role {_show(shown)}; use system, user or assistant", line=number,
        hint=hint)


def _read_value(lines: list[_Line], i: int, first: str) -> tuple[str, int]:
    """The value starting at ``first`` on line ``i``, and the index of the line after it.

    Ollama's rule: the value is the trimmed rest of the line; if that starts with a quote, it
    stays open, newlines and all, until a line break or EOF finds the trimmed text so far ending
    with the same quote (three quotes if it opened with three). No escapes.
    """
    text = _printable(first).lstrip(_SPACE)
    closed = text.rstrip(_SPACE)
    quote = '"""' if closed.startswith('"""') else '"' if closed.startswith('"') else ""
    if not quote:
        return closed, i + 1
    if len(closed) >= 2 * len(quote) and closed.endswith(quote):
        return closed[len(quote):-len(quote)], i + 1
    parts = [text]
    for j in range(i + 1, len(lines)):
        body = _printable(lines[j].body)
        parts += [lines[j - 1].end, body]
        if body.rstrip(_SPACE).endswith(quote):
            closed = "".join(parts).rstrip(_SPACE)
            return closed[len(quote):-len(quote)], j + 1
    raise ModelfileError(
        f"unclosed {quote} quote: the file ends before a line that ends with {quote}",
        line=lines[i].number,
        hint=f"end the value with {quote} at the end of a line; nothing may follow the closing "
             "quote on its line")


def _printable(s: str) -> str:
    # Ollama keeps only strconv.IsPrint runes (plus tab and line breaks) in a value.
    if s.isprintable():
        return s
    return "".join(c for c in s if c.isprintable() or c == "\t")


def _unknown_instruction(shown: str, keyword: str, number: int) -> ModelfileError:
    names = [k.upper() for k in KEYWORDS]
    if keyword in KEYWORDS:
        hint = f"put a space between {keyword.upper()} and its value"
    elif guess := difflib.get_close_matches(shown.upper(), names, n=1, cutoff=0.7):
        hint = f"did you mean {guess[0]}?"
    else:
        hint = 'comments start with "#"; text over several lines goes inside """ quotes'
    return ModelfileError(
        f"unknown instruction {_show(shown)}; expected one of {', '.join(names)}",
        line=number, hint=hint)


def _no_from() -> ModelfileError:
    return ModelfileError(
        "no FROM line",
        hint="add a FROM line naming the base model or weights, e.g. FROM ./model.gguf")


def _show(word: str) -> str:
    return repr(word if len(word) <= 40 else word[:40] + "...")


def _where(line: int) -> str:
    return f"line {line}: " if line else ""


# ---------------------------------------------------------------------------------------------
# format


def format(m: Modelfile) -> str:
    """Modelfile text for ``m``; ``parse(format(m)) == m``.

    Values are quoted only when needed. Raises ModelfileError for what the syntax cannot hold:
    no FROM, unknown keywords, bad names or roles, non-printable characters (parse drops them),
    and values with a line ending in three quotes that need quoting (Ollama has no escapes).
    """
    if not m.get("from"):
        raise _no_from()
    return "".join(_format_instruction(i) + "\n" for i in m.instructions)


def _format_instruction(ins: Instruction) -> str:
    if ins.keyword not in KEYWORDS:
        raise ModelfileError(
            f"cannot write instruction {_show(str(ins.keyword))}; keywords are lowercase, one of "
            f"{', '.join(KEYWORDS)}", line=ins.line)
    head = ins.keyword.upper()
    if ins.keyword == "parameter":
        if not (isinstance(ins.name, str) and ins.name and _NAME_CHARS.fullmatch(ins.name)):
            raise ModelfileError(
                f"cannot write PARAMETER named {ins.name!r}", line=ins.line,
                hint="parameter names use only letters, digits and '_'")
        head += " " + ins.name
    elif ins.keyword == "message":
        if ins.name not in ROLES:
            raise ModelfileError(
                f"cannot write MESSAGE with role {ins.name!r}; use system, user or assistant",
                line=ins.line)
        head += " " + ins.name
    elif ins.name is not None:
        raise ModelfileError(
            f"cannot write {head} with a name ({ins.name!r}); only PARAMETER and MESSAGE have one",
            line=ins.line)
    return f"{head} {_quote(ins.value, head, ins.line)}"


def _quote(value: str, head: str, line: int) -> str:
    bad = next((c for c in value if not (c.isprintable() or c in "\t\r\n")), None)
    if bad is not None:
        raise ModelfileError(
            f"cannot write {head}: its value holds U+{ord(bad):04X}, which Modelfiles drop",
            line=line, hint="remove control and other non-printable characters from the value")
    if (value and value[0] not in _SPACE and value[-1] not in _SPACE
            and not value.startswith('"') and "\n" not in value and "\r" not in value):
        return value
    quote = '"""' if '"' in value else '"'
    text = quote + value + quote
    lines = _split_lines(text)
    if _read_value(lines, 0, lines[0].body) != (value, len(lines)):
        raise ModelfileError(
            f'cannot write {head}: a line of its value ends with """, which would end the quotes',
            line=line, hint="Modelfiles have no escapes (ollama/ollama#5715); reword that line")
    return text


# ---------------------------------------------------------------------------------------------
# parameter values


def convert_parameter(name: str, value: str) -> ParameterValue:
    """One PARAMETER value typed as Ollama's ``api.FormatParams`` does; ``stop`` gives [value]."""
    kind = PARAMETER_TYPES.get(name)
    if kind is None:
        raise _unknown_parameter(name)
    if kind is list:
        return [value]
    if kind is bool:
        return _parse_bool(name, value)
    if kind is int:
        return _parse_int(name, value)
    return _parse_float(name, value)


def format_parameter_value(value: int | float | bool | str) -> str:
    """A typed value back to Modelfile text: bools true/false, floats in their shortest repr.

    A list (``stop``) is written one PARAMETER line per item; pass the items one at a time.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, str)):
        return str(value)
    if isinstance(value, float):
        return repr(value)   # shortest text that reads back to the same float; inf and nan too
    raise TypeError(f"cannot format a parameter value of type {type(value).__name__}")


def _unknown_parameter(name: str) -> ModelfileError:
    if name in DEPRECATED_PARAMETERS:
        return ModelfileError(f"parameter '{name}' is deprecated and has no effect",
                              hint="remove it")
    guess = difflib.get_close_matches(name.lower(), list(PARAMETER_TYPES), n=1)
    if guess:
        hint = f"did you mean '{guess[0]}'? (names are case-sensitive)"
    else:
        hint = "valid parameters: " + ", ".join(PARAMETER_TYPES)
    return ModelfileError(f"unknown parameter '{name}'", hint=hint)


_TRUE = ("1", "t", "T", "TRUE", "true", "True")     # Go strconv.ParseBool
_FALSE = ("0", "f", "F", "FALSE", "false", "False")


def _parse_bool(name: str, value: str) -> bool:
    if value in _TRUE or value in _FALSE:
        return value in _TRUE
    raise ModelfileError(f"invalid bool value for parameter '{name}': {value!r}",
                         hint="use true or false")


_INT = re.compile(r"[+-]?[0-9]+")   # Go strconv.ParseInt(v, 10, 64): no _, no prefixes


def _parse_int(name: str, value: str) -> int:
    if not _INT.fullmatch(value):
        raise ModelfileError(f"invalid int value for parameter '{name}': {value!r}",
                             hint="use a whole number in base 10, such as 4096")
    number = int(value)
    if not -(2**63) <= number < 2**63:
        raise ModelfileError(f"int value out of range for parameter '{name}': {value!r}",
                             hint="ints are 64-bit")
    return number


# Go strconv.ParseFloat syntax: decimal or hex (with a p exponent), '_' only between digits.
_DEC = r"[0-9](?:_?[0-9])*"
_HEX = r"[0-9a-fA-F](?:_?[0-9a-fA-F])*"
_DECIMAL_FLOAT = re.compile(rf"[+-]?(?:{_DEC}(?:\.(?:{_DEC})?)?|\.{_DEC})(?:[eE][+-]?{_DEC})?")
_HEX_FLOAT = re.compile(rf"[+-]?0[xX](?:_?{_HEX}(?:\.(?:{_HEX})?)?|\.{_HEX})[pP][+-]?{_DEC}")
_SPECIAL_FLOAT = re.compile(r"[+-]?inf(?:inity)?|nan", re.IGNORECASE)


def _parse_float(name: str, value: str) -> float:
    """The value as a Python float, range-checked as Ollama's float32 (ParseFloat(v, 32))."""
    if _SPECIAL_FLOAT.fullmatch(value):
        return float(value)
    try:
        if _DECIMAL_FLOAT.fullmatch(value):
            number = float(value.replace("_", ""))
        elif _HEX_FLOAT.fullmatch(value):
            number = float.fromhex(value.replace("_", ""))
        else:
            raise ModelfileError(f"invalid float value for parameter '{name}': {value!r}",
                                 hint="use a number such as 0.7")
        struct.pack("<f", number)   # OverflowError if it rounds past float32
        if math.isinf(number):
            raise OverflowError
    except OverflowError:
        raise ModelfileError(f"float value out of range for parameter '{name}': {value!r}",
                             hint="floats are 32-bit, at most about 3.4e38") from None
    return number
