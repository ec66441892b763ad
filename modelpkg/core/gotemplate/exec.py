"""The template executor: text/template/exec.go over the frozen nodes, with the limits of one render.

An ``Executor`` runs node lists against data; everything one render does is counted on it, across all the
lists it runs (Ollama's legacy path runs one per turn): evaluation steps, range iterations, the text
functions build and the output, each capped in ``limits``. Fields are looked up in ``Struct`` fields and
mappings, with ``missingkey=zero``: an absent key, or a field of a missing value, gives nil, and ``{{ }}``
prints nil as nothing.

Part of the template engine: imports the nodes, values, fmt, the functions and the limits; never the parser
(it runs trees, it does not make them) or prompt rendering.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from modelpkg.core.errors import TemplateError
from modelpkg.core.gotemplate.fmt import Flags, format_value
from modelpkg.core.gotemplate.funcs import BUILTINS, NO_NIL
from modelpkg.core.gotemplate.limits import (
    LIMIT_HINT,
    MAX_OUTPUT,
    MAX_RANGE_ITERATIONS,
    MAX_STEPS,
    MAX_WORK,
)
from modelpkg.core.gotemplate.nodes import (
    Action,
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
    Text,
    Variable,
    With,
    error_at,
)
from modelpkg.core.gotemplate.values import Fail, Struct, go_type, sorted_items, truth

_EXEC_HINT = "the template failed on this data; check the action at that line and column"


class _BreakLoop(Exception):
    pass


class _ContinueLoop(Exception):
    pass


_NO_FINAL = object()  # no value piped in from a previous command


class Executor:
    """One render of the template with this source (for positions in errors); ``run`` may be called more than
    once, and the limits count across the calls."""

    def __init__(self, source: str):
        self.src = source
        self.out: list[str] = []
        self.size = 0
        self.work = 0
        self.steps = 0
        self.iterations = 0
        self.vars: list[list[Any]] = []

    def run(self, nodes: tuple[Any, ...], data: Any) -> str:
        """Execute ``nodes`` with ``data`` as dot and ``$``; the text they produce."""
        start = len(self.out)
        self.vars = [["$", data]]
        self.walk(data, nodes)
        return "".join(self.out[start:])

    def fail(self, pos: int, message: str, hint: str | None = None) -> TemplateError:
        return error_at(self.src, pos, message, hint or _EXEC_HINT)

    def tick(self, pos: int) -> None:
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise self.fail(pos, f"template execution took more than {MAX_STEPS} steps", LIMIT_HINT)

    def charge(self, pos: int, text: str) -> None:
        self.work += len(text)
        if self.work > MAX_WORK:
            raise self.fail(pos, f"template functions built more than {MAX_WORK >> 20} MiB of text", LIMIT_HINT)

    def emit(self, pos: int, text: str) -> None:
        self.size += len(text)
        if self.size > MAX_OUTPUT:
            raise self.fail(pos, f"template output is larger than {MAX_OUTPUT >> 20} MiB", LIMIT_HINT)
        self.out.append(text)

    # statements ---------------------------------------------------------------------------------------
    def walk(self, dot: Any, nodes: tuple[Any, ...]) -> None:
        for node in nodes:
            self.tick(node.pos)
            kind = type(node)
            if kind is Text:
                self.emit(node.pos, node.text)
            elif kind is Action:
                value = self.pipe(dot, node.pipe)
                if not node.pipe.decls:
                    self.emit(node.pos, self.printable(node.pos, value))
            elif kind is If or kind is With:
                self.walk_if(dot, node)
            elif kind is Range:
                self.walk_range(dot, node)
            elif kind is Break:
                raise _BreakLoop
            elif kind is Continue:
                raise _ContinueLoop

    def printable(self, pos: int, value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, str):
            return value
        try:
            return format_value(value, "v", Flags())
        except Fail as e:
            raise self.fail(pos, str(e)) from None

    def walk_if(self, dot: Any, node: Any) -> None:
        mark = len(self.vars)
        try:
            value = self.pipe(dot, node.pipe)
            if truth(value):
                self.walk(value if type(node) is With else dot, node.body)
            elif node.orelse is not None:
                self.walk(dot, node.orelse)
        finally:
            del self.vars[mark:]

    def range_items(self, node: Range, value: Any) -> list[tuple[Any, Any]]:
        if value is None:
            return []
        if isinstance(value, (list, tuple)):
            return list(enumerate(value))
        if isinstance(value, Mapping):
            return sorted_items(value)
        if isinstance(value, int) and not isinstance(value, bool):
            if len(node.pipe.decls) > 1:
                raise self.fail(node.pos, f"can't use {value} to iterate over more than one variable")
            if value > MAX_RANGE_ITERATIONS:
                raise self.fail(node.pos, f"range over {value} is more than {MAX_RANGE_ITERATIONS} iterations",
                                LIMIT_HINT)
            return [(i, i) for i in range(value)]
        raise self.fail(node.pos, f"range can't iterate over {self.printable(node.pos, value)}")

    def walk_range(self, dot: Any, node: Range) -> None:
        mark = len(self.vars)
        try:
            value = self.pipe(dot, node.pipe)
            items = self.range_items(node, value)
            inner = len(self.vars)
            decls, assign = node.pipe.decls, node.pipe.is_assign
            for index, elem in items:
                self.iterations += 1
                if self.iterations > MAX_RANGE_ITERATIONS:
                    raise self.fail(node.pos, f"more than {MAX_RANGE_ITERATIONS} range iterations", LIMIT_HINT)
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
    def pipe(self, dot: Any, pipe: Pipe) -> Any:
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

    def command(self, dot: Any, cmd: Command, final: Any) -> Any:
        self.tick(cmd.pos)
        first = cmd.args[0]
        kind = type(first)
        if kind is Field:
            return self.field_chain(dot, first, first.names, cmd.args, final)
        if kind is Variable:
            return self.variable(first, cmd.args, final)
        if kind is Chain:
            return self.field_chain(self.arg(dot, first.node, ""), first, first.names, cmd.args, final)
        if kind is Identifier:
            return self.call(dot, first, cmd.args, final)
        self.not_a_function(first, cmd.args, final)
        if kind is Pipe:
            return self.pipe(dot, first)
        if kind is Nil:
            raise self.fail(first.pos, "nil is not a command")
        return self.literal(dot, first)

    def literal(self, dot: Any, node: Any) -> Any:
        kind = type(node)
        if kind is Dot:
            return dot
        if kind is Number:
            if node.value is None:
                raise self.fail(node.pos, f"{node.text} overflows int")
            return node.value
        return node.value  # Bool, String

    def variable(self, node: Variable, args: tuple[Any, ...], final: Any) -> Any:
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
        if isinstance(receiver, (Struct, Mapping)):
            if has_args:
                raise self.fail(node.pos, f"{name} is not a method but has arguments")
            fields = receiver.fields if isinstance(receiver, Struct) else receiver
            return fields.get(name)  # missingkey=zero: absent gives nil
        if receiver is None:
            return None  # a field of a missing value is missing too
        raise self.fail(node.pos, f"can't evaluate field {name} in type {go_type(receiver)}")

    def arg(self, dot: Any, node: Any, func: str) -> Any:
        kind = type(node)
        if kind is Field:
            return self.field_chain(dot, node, node.names, (node,), _NO_FINAL)
        if kind is Variable:
            return self.variable(node, (node,), _NO_FINAL)
        if kind is Chain:
            return self.field_chain(self.arg(dot, node.node, ""), node, node.names, (node,), _NO_FINAL)
        if kind is Pipe:
            return self.pipe(dot, node)
        if kind is Identifier:
            return self.call(dot, node, (node,), _NO_FINAL)
        if kind is Nil:
            if func in NO_NIL or func == "":
                raise self.fail(node.pos, f"cannot use nil as an argument{' to ' + func if func else ''}")
            return None
        return self.literal(dot, node)

    def call(self, dot: Any, ident: Identifier, args: tuple[Any, ...], final: Any) -> Any:
        name = ident.name
        low, high, impl = BUILTINS[name]
        argnodes = args[1:]
        count = len(argnodes) + (final is not _NO_FINAL)
        if count < low or (high is not None and count > high):
            want = f"at least {low}" if high is None else str(low)
            raise self.fail(ident.pos, f"wrong number of args for {name}: want {want} got {count}")
        if name in ("and", "or"):  # short-circuit, returning the deciding operand itself
            value = None
            for node in argnodes:
                value = self.arg(dot, node, name)
                if truth(value) == (name == "or"):
                    return value
            return final if final is not _NO_FINAL else value
        values = [self.arg(dot, node, name) for node in argnodes]
        if final is not _NO_FINAL:
            values.append(final)
        try:
            result = impl(*values)
        except Fail as e:
            raise self.fail(ident.pos, f"error calling {name}: {e}") from None
        if isinstance(result, str):
            self.charge(ident.pos, result)
        return result
