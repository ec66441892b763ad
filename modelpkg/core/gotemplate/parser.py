"""The template parser: recursive descent following text/template/parse/parse.go, including its variable scoping.

``parse_nodes(source)`` lexes and parses a whole template into the frozen nodes of ``nodes``, or raises a
TemplateError naming the line and column of the first problem, in Go's words. Refused here, not at run
time: ``define``, ``template`` and ``block`` (modelpkg renders single templates), ``call``, complex numbers,
functions that are not builtins, undefined variables, and nesting deeper than ``MAX_NESTING``.

Part of the template engine: imports the lexer, the nodes, strconv, the limits and the builtin functions'
names; never the executor or prompt rendering.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modelpkg.core.errors import TemplateError
from modelpkg.core.gotemplate.funcs import BUILTINS
from modelpkg.core.gotemplate.lex import Token, lex
from modelpkg.core.gotemplate.limits import LIMIT_HINT, MAX_NESTING
from modelpkg.core.gotemplate.nodes import (
    Action,
    Bool,
    Break,
    Chain,
    Command,
    Continue,
    Dot,
    Field,
    Identifier,
    If,
    Nil,
    Number,
    Pipe,
    Range,
    String,
    Text,
    Variable,
    With,
    error_at,
    where,
)
from modelpkg.core.gotemplate.strconv import BadLiteral, go_quote, number_value, unquote

_PARSE_HINT = "fix the TEMPLATE at that line and column; it uses Go text/template syntax"
_UNSUPPORTED_HINT = "modelpkg renders single templates: write the text inline instead of define/template/block"
_LITERALS = frozenset({"bool", "char", "complex", "number", "rawstring", "string"})


@dataclass(frozen=True, slots=True)
class _End:  # parser marker only
    pos: int


@dataclass(frozen=True, slots=True)
class _Else:  # parser marker only
    pos: int


def _describe(tok: Token) -> str:  # Go's item.String()
    if tok.kind == "EOF":
        return "EOF"
    if tok.kind == "keyword":
        return f"<{tok.val}>"
    if len(tok.val) > 10:
        return go_quote(tok.val[:10]) + "..."
    return go_quote(tok.val)


class _Parser:
    def __init__(self, source: str, toks: list[Token]):
        self.src = source
        self.toks = toks
        self.i = 0
        self.vars = ["$"]
        self.range_depth = 0
        self.depth = 0

    # token stream -----------------------------------------------------------------------------------
    def _tok(self) -> Token:
        tok = self.toks[self.i] if self.i < len(self.toks) else self.toks[-1]
        if tok.kind == "error":
            raise error_at(self.src, tok.pos, tok.val, _PARSE_HINT)
        return tok

    def next(self) -> Token:
        tok = self._tok()
        self.i += 1
        return tok

    def peek(self) -> Token:
        return self._tok()

    def peek_non_space(self) -> Token:
        while self._tok().kind == "space":
            self.i += 1
        return self._tok()

    def next_non_space(self) -> Token:
        self.peek_non_space()
        return self.next()

    def fail(self, pos: int, message: str, hint: str | None = None) -> TemplateError:
        return error_at(self.src, pos, message, hint or _PARSE_HINT)

    def unexpected(self, tok: Token, context: str) -> TemplateError:
        return self.fail(tok.pos, f"unexpected {_describe(tok)} in {context}")

    def enter(self, pos: int) -> None:
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise self.fail(pos, f"template nesting is deeper than {MAX_NESTING} levels", LIMIT_HINT)

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
            return Text(tok.val, tok.pos)
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
        opened = where(self.src, start).removeprefix("template ")
        raise self.fail(self.peek().pos, f"unexpected EOF: {{{{{context}}}}} at {opened} has no {{{{end}}}}")

    def action(self, left: Token) -> Any:
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
                return Break(left.pos) if word == "break" else Continue(left.pos)
            raise self.fail(tok.pos, f"{{{{{word}}}}} is not supported", _UNSUPPORTED_HINT)
        self.i -= 1
        return Action(self.pipeline("command", "}}"), left.pos)

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
        kind = {"if": If, "with": With, "range": Range}[context]
        return kind(pipe, body, orelse, pos)

    def pipeline(self, context: str, end: str) -> Pipe:
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
        cmds: list[Command] = []
        while True:
            tok = self.next_non_space()
            if tok.kind == end:
                if not cmds:
                    raise self.fail(tok.pos, f"missing value for {context}")
                for stage, cmd in enumerate(cmds[1:], start=2):
                    if isinstance(cmd.args[0], (Bool, Dot, Nil, Number, String)):
                        raise self.fail(cmd.pos, f"non executable command in pipeline stage {stage}")
                return Pipe(tuple(decls), is_assign, tuple(cmds), pos)
            if tok.kind in ("bool", "char", "complex", "dot", "field", "identifier", "number", "nil",
                            "rawstring", "string", "variable", "("):
                self.i -= 1
                cmds.append(self.command())
            else:
                raise self.unexpected(tok, context)

    def command(self) -> Command:
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
        return Command(tuple(args), pos)

    def operand(self) -> Any:
        node = self.term()
        if node is None or self.peek().kind != "field":
            return node
        names = []
        while self.peek().kind == "field":
            names.append(self.next().val[1:])
        if isinstance(node, Field):
            return Field(node.names + tuple(names), node.pos)
        if isinstance(node, Variable):
            return Variable(node.names + tuple(names), node.pos)
        if isinstance(node, (Bool, String, Number, Nil, Dot)):
            raise self.fail(node.pos, "unexpected . after term")
        return Chain(node, tuple(names), node.pos)

    def term(self) -> Any:
        """One operand (Go's parser.term): a function name, dot, nil, a variable or field, a literal or a
        parenthesized pipeline; None, with the token left unread, when the next token starts none of them."""
        tok = self.next_non_space()
        kind, pos = tok.kind, tok.pos
        if kind == "identifier":
            return self.function(tok)
        if kind == "dot":
            return Dot(pos)
        if kind == "nil":
            return Nil(pos)
        if kind == "variable":
            if tok.val not in self.vars:
                raise self.fail(pos, f'undefined variable "{tok.val}"')
            return Variable((tok.val,), pos)
        if kind == "field":
            return Field((tok.val[1:],), pos)
        if kind == "(":
            return self.parenthesized(pos)
        if kind in _LITERALS:
            return self.literal(tok)
        self.i -= 1
        return None

    def function(self, tok: Token) -> Identifier:
        if tok.val == "call":
            raise self.fail(tok.pos, 'function "call" is not supported', "templates cannot call function values")
        if tok.val not in BUILTINS:
            raise self.fail(tok.pos, f'function "{tok.val}" not defined')
        return Identifier(tok.val, tok.pos)

    def parenthesized(self, pos: int) -> Pipe:
        self.enter(pos)
        pipe = self.pipeline("parenthesized pipeline", ")")
        self.depth -= 1
        return pipe

    def literal(self, tok: Token) -> Any:
        """A bool, number, character or string constant; complex numbers are refused."""
        kind, pos = tok.kind, tok.pos
        if kind == "bool":
            return Bool(tok.val == "true", pos)
        if kind == "complex":
            raise self.fail(pos, f"complex number {tok.val} is not supported")
        if kind in ("number", "char"):
            try:
                return Number(tok.val, number_value(tok.val), pos)
            except BadLiteral as e:
                raise self.fail(pos, str(e)) from None
        try:  # string, rawstring
            return String(unquote(tok.val), pos)
        except BadLiteral as e:
            raise self.fail(pos, f"{e}: {_describe(tok)}") from None


def parse_nodes(source: str) -> tuple[Any, ...]:
    """The top-level nodes of ``source``; TemplateError "template line L, column C: ..." when it does not parse."""
    return _Parser(source, lex(source)).parse()
