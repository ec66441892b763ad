"""Go's fmt, as templates print values: ``%v`` printing and Sprintf's verbs, flags, width and precision.

``format_value(v, verb, flags)`` is fmt's printArg/printValue for one value: ``[a b]``, ``map[k:v]``, ``true``,
``1e+06``, a ``Struct`` as ``{...}`` (``&{...}`` for a pointer), and a value whose Go type has a String method
(``StructType.stringer``, a JSON-styled ``GoList``/``GoMap``) as that method's text. ``sprint``, ``sprintln``
and ``sprintf`` are fmt.Sprint, Sprintln and Sprintf, with Go's ``%!verb(...)`` complaints instead of errors.

Part of the template engine: imports its values, strconv, marshal (for String methods that give JSON) and
limits; never the functions, the executor or anything above them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from modelpkg.core.gotemplate.limits import MAX_VALUE_DEPTH
from modelpkg.core.gotemplate.marshal import go_json
from modelpkg.core.gotemplate.strconv import can_backquote, format_float, from_utf8, go_quote, rune, utf8
from modelpkg.core.gotemplate.values import Fail, GoList, GoMap, Struct, go_type, sorted_items


@dataclass
class Flags:
    """One verb's flags, width and precision (fmt's fmtFlags); ``plus_v``/``sharp_v`` mark %+v and %#v."""

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


def _fmt_float(x: float, verb: str, f: Flags) -> str:
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
    num = format_float(x, "f" if verb == "F" else verb, prec)
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


def _fmt_int(v: int, verb: str, f: Flags) -> str:
    if verb == "c":
        return f.pad(rune(v))
    if verb == "q":
        r = rune(v)
        if f.sharp and can_backquote(r):
            return f.pad(f"`{r}`")
        return f.pad(go_quote(r, "'", ascii_only=f.plus))
    if verb == "U":
        u = v & 0xFFFFFFFFFFFFFFFF
        s = f"U+{u:0{max(4, f.prec or 0)}X}"
        if f.sharp and u <= 0x10FFFF and rune(u).isprintable():
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


def _fmt_str(s: str, verb: str, f: Flags) -> str:
    if verb in "vs" and not (verb == "v" and f.sharp_v):
        return f.pad(s if f.prec is None else s[:f.prec])
    if verb == "q" or verb == "v":
        s = s if f.prec is None else s[:f.prec]
        if f.sharp and can_backquote(s):
            return f.pad(f"`{s}`")
        return f.pad(go_quote(s, ascii_only=f.plus))
    if verb in "xX":
        data = utf8(s)
        if f.prec is not None:
            data = data[:f.prec]
        if not data:
            return f.pad("", zero=False) if f.wid else ""
        hexes = [format(b, "02x" if verb == "x" else "02X") for b in data]
        prefix = ("0x" if verb == "x" else "0X") if f.sharp else ""
        return f.pad(" ".join(prefix + h for h in hexes) if f.space else prefix + "".join(hexes))
    return _bad_verb(s, verb, f)


def _bad_verb(v: Any, verb: str, f: Flags) -> str:
    if v is None:
        return f"%!{verb}(<nil>)"
    return f"%!{verb}({go_type(v)}={format_value(v, 'v', f)})"


def _string_method(v: Any) -> str | None:
    """What the value's Go String method returns, or None when its Go type has none."""
    if isinstance(v, Struct):
        return go_json(v) if v.type.stringer else None
    if isinstance(v, GoList):
        if v.style == "json":
            return go_json(v)
        if v.style == "ptype":  # api.PropertyType.String
            return "" if not v else v[0] if len(v) == 1 else "[" + " ".join(str(t) for t in v) + "]"
    if isinstance(v, GoMap) and v.style == "json":
        return "{}" if v.nil else go_json(v)
    return None


def format_value(v: Any, verb: str, f: Flags, depth: int = 0) -> str:  # noqa: C901 - fmt's printArg/printValue
    """Format one value as Go's fmt does for ``verb`` (``v`` for plain printing)."""
    if depth > MAX_VALUE_DEPTH:
        raise Fail("value is nested too deeply to print")
    if v is None:
        if depth > 0:
            return "<nil>"
        return f.pad("<nil>") if verb in "Tv" else _bad_verb(v, verb, f)
    if verb == "T":
        return f.pad(go_type(v))
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
            return _fmt_str(from_utf8(bytes(v)), verb, f)
        v = list(v)
    if isinstance(v, Struct):
        parts = []
        for name, value in v.fields.items():
            text = format_value(value, verb, f, depth + 1)
            parts.append(f"{name}:{text}" if (f.plus_v or f.sharp_v) else text)
        if f.sharp_v:
            return f"{v.type_name}{{{', '.join(parts)}}}"
        return ("&" if v.type.pointer and depth == 0 else "") + "{" + " ".join(parts) + "}"
    if isinstance(v, (list, tuple)):
        items = [format_value(e, verb, f, depth + 1) for e in v]
        if f.sharp_v:
            return go_type(v) + "{" + ", ".join(items) + "}"
        return "[" + " ".join(items) + "]"
    if isinstance(v, Mapping):
        items = [f"{format_value(k, verb, f, depth + 1)}:{format_value(e, verb, f, depth + 1)}"
                 for k, e in sorted_items(v)]
        if f.sharp_v:
            return go_type(v) + "{" + ", ".join(items) + "}"
        return "map[" + " ".join(items) + "]"
    text = str(v)  # a caller's own object: print what Python prints
    return f.pad(text) if verb in "vs" else _bad_verb(text, verb, f)


def sprint(args: Sequence[Any]) -> str:
    """fmt.Sprint: spaces between operands when neither side is a string."""
    out, prev_string = [], False
    for i, arg in enumerate(args):
        is_string = isinstance(arg, str)
        if i > 0 and not is_string and not prev_string:
            out.append(" ")
        out.append(format_value(arg, "v", Flags()))
        prev_string = is_string
    return "".join(out)


def sprintln(args: Sequence[Any]) -> str:
    return " ".join(format_value(a, "v", Flags()) for a in args) + "\n"


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


def sprintf(fmt: str, args: Sequence[Any]) -> str:  # noqa: C901 - fmt.doPrintf
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
        f = Flags()
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
            out.append(format_value(args[argn], verb, f))
            argn += 1
    if not reordered and argn < len(args):
        extra = ["<nil>" if a is None else f"{go_type(a)}={format_value(a, 'v', Flags())}" for a in args[argn:]]
        out.append("%!(EXTRA " + ", ".join(extra) + ")")
    return "".join(out)
