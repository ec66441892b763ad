"""The template lexer: Go's text/template/parse/lex.go state machine, producing a token list.

``lex(source)`` gives every token up to EOF. A lexical error becomes an ``error`` token, not an exception, so
that the parser reports problems in source order, as Go does. Trim markers (``{{-`` / ``-}}``) and comments
are handled here: the text around a trim marker arrives already trimmed, and comments never arrive.

Part of the template engine: imports only its strconv (for quoting in messages); never the parser or anything
above it.
"""

from __future__ import annotations

from dataclasses import dataclass

from modelpkg.core.gotemplate.strconv import go_quote

_SPACE = " \t\r\n"
_KEYWORDS = frozenset({"block", "break", "continue", "define", "else", "end", "if", "range", "template", "with"})


@dataclass(frozen=True, slots=True)
class Token:
    """One token: its kind ("text", "{{", "identifier", "error"...), its source text, its offset."""

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
        self.toks: list[Token] = []
        self.parens: list[int] = []  # positions of the open left parens of the current action
        self.action_start = 0

    def run(self) -> list[Token]:
        src = self.src
        while True:
            i = src.find("{{", self.pos)
            if i < 0:
                if self.pos < self.n:
                    self.toks.append(Token("text", src[self.pos:], self.pos))
                self.toks.append(Token("EOF", "", self.n))
                return self.toks
            trim = i + 3 < self.n and src[i + 2] == "-" and src[i + 3] in _SPACE
            text = src[self.pos:i]
            if trim:
                text = text.rstrip(_SPACE)
            if text:
                self.toks.append(Token("text", text, self.pos))
            after = i + (4 if trim else 2)
            if src.startswith("/*", after):
                if not self._comment(i, after):
                    return self.toks
                continue
            self.toks.append(Token("{{", "{{", i))
            self.action_start = i
            self.pos = after
            self.parens = []
            if not self._action():
                return self.toks

    def _fail(self, message: str, pos: int) -> bool:
        self.toks.append(Token("error", message, pos))
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
        self.toks.append(Token(kind, self.src[start:end], start))
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
                self.toks.append(Token("}}", "}}", p))
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
            return self._fail(f"bad number syntax: {go_quote(self.src[p:j])}", p)
        self._emit("number", p, j)
        return True


def lex(source: str) -> list[Token]:
    """The tokens of ``source``, ending with EOF or with the first error token."""
    return _Lexer(source).run()
