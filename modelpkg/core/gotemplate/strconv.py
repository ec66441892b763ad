"""Go's strconv, as the template engine needs it: quoting, literal parsing and float formatting.

``go_quote`` is strconv.Quote (and QuoteRune, QuoteToASCII); ``unquote`` and ``number_value`` turn string,
character and number constants into values as Go's ``strconv.Unquote`` and the number rules of
``parse.newNumber`` / ``exec.idealConstant`` do; ``format_float`` is ``strconv.FormatFloat(x, verb, prec, 64)``.
With them, the conversions Go makes between strings, their UTF-8 bytes and runes (``utf8``, ``from_utf8``,
``rune``).

The bottom of the engine: imports nothing from modelpkg, and is pure (no I/O).
"""

from __future__ import annotations

import math

# ------------------------------------------------------------------------------------------------------
# Strings, bytes and runes: a Go string is UTF-8 bytes; lone surrogates stand for bytes that are not UTF-8.


def utf8(s: str) -> bytes:
    """A string's bytes, as Go's ``[]byte(s)`` and ``len(s)`` see them."""
    return s.encode("utf-8", "surrogatepass")


def from_utf8(b: bytes) -> str:
    """``string(b)``: bytes back to text; where they are not UTF-8, U+FFFD stands in."""
    try:
        return b.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return b.decode("utf-8", "replace")


def rune(v: int) -> str:
    """``string(rune(v))``: U+FFFD for what is no code point."""
    return chr(v) if 0 <= v <= 0x10FFFF and not 0xD800 <= v <= 0xDFFF else "\ufffd"


# ------------------------------------------------------------------------------------------------------
# Quoting: strconv.Quote


def go_quote(s: str, quote: str = '"', ascii_only: bool = False) -> str:
    """strconv.Quote (or QuoteRune with quote="'"); QuoteToASCII when ascii_only."""
    out = [quote]
    for ch in s:
        o = ord(ch)
        if ch == quote or ch == "\\":
            out.append("\\" + ch)
        elif 0xD800 <= o <= 0xDFFF:  # not valid UTF-8 in Go: its bytes are escaped
            out.extend(f"\\x{b:02x}" for b in utf8(ch))
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


def can_backquote(s: str) -> bool:
    return not any(c == "`" or c == "\ufeff" or c == "\x7f" or (c < " " and c != "\t") or "\ud800" <= c <= "\udfff"
                   for c in s)


# ------------------------------------------------------------------------------------------------------
# Literals: Go's strconv.Unquote and the number rules of parse.newNumber / exec.idealConstant.

_SIMPLE_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\"}
_HEX = "0123456789abcdefABCDEF"


class BadLiteral(Exception):
    """A constant Go refuses; the parser adds the position."""


def _unquote_escape(s: str, i: int, quote: str) -> tuple[int | str, int]:
    """Decode the escape at s[i] == '\\'. Returns (a byte value as int, or a str) and the next index."""
    if i + 1 >= len(s):
        raise BadLiteral("invalid syntax")
    c = s[i + 1]
    if c in _SIMPLE_ESCAPES:
        return _SIMPLE_ESCAPES[c], i + 2
    if c in "'\"":
        if c != quote:
            raise BadLiteral("invalid syntax")
        return c, i + 2
    if c in "xuU":
        size = {"x": 2, "u": 4, "U": 8}[c]
        digits = s[i + 2:i + 2 + size]
        if len(digits) != size or any(d not in _HEX for d in digits):
            raise BadLiteral("invalid syntax")
        value = int(digits, 16)
        if c == "x":
            return (value if quote == '"' else chr(value)), i + 2 + size
        if value > 0x10FFFF or 0xD800 <= value <= 0xDFFF:
            raise BadLiteral("invalid syntax")
        return chr(value), i + 2 + size
    if "0" <= c <= "7":
        digits = s[i + 1:i + 4]
        if len(digits) != 3 or any(not ("0" <= d <= "7") for d in digits) or int(digits, 8) > 255:
            raise BadLiteral("invalid syntax")
        value = int(digits, 8)
        return (value if quote == '"' else chr(value)), i + 4
    raise BadLiteral("invalid syntax")


def unquote(token: str) -> str:
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
        raise BadLiteral(f"malformed character constant: {token}")
    if body[0] == "\\":
        value, end = _unquote_escape(body, 0, "'")
        char = value if isinstance(value, str) else chr(value)
    else:
        char, end = body[0], 1
        if char == "'":
            raise BadLiteral("invalid syntax")
    if end != len(body):
        raise BadLiteral(f"malformed character constant: {token}")
    return ord(char)


_INT64 = (-(1 << 63), (1 << 63) - 1)


def _go_int(text: str) -> int | None:
    """strconv.ParseInt/ParseUint with base 0; None when the text is not an integer."""
    sign, body = (text[0], text[1:]) if text[:1] in "+-" else ("", text)
    octal = len(body) > 1 and body[0] == "0" and body[1] in "01234567_"  # Go's 0755; Python wants 0o755
    try:
        value = int("0o" + body[1:], 0) if octal else int(body, 0)
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


def number_value(text: str) -> int | float | None:
    """The value Go gives a number constant when it is used: int, float64, or None when it overflows int."""
    if text.startswith("'"):
        return _char_value(text)
    if text.endswith("i"):
        raise BadLiteral(f"complex number {text} is not supported")
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
        raise BadLiteral(f"illegal number syntax: {go_quote(text)}")
    if not any(c in ".eEpP" for c in text):
        raise BadLiteral(f"integer overflow: {go_quote(text)}")
    return value


# ------------------------------------------------------------------------------------------------------
# strconv.FormatFloat: digits, the e/f/x layouts, and the shortest round-trip form.


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


def format_float(x: float, verb: str, prec: int) -> str:
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
