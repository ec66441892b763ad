"""Go ``text/template``, as chat templates use it: parse a template once, execute it with Go's semantics.

Models from Ollama's library and Modelfiles carry ``TEMPLATE`` in Go ``text/template`` syntax. This package
parses that language (the subset below) into frozen nodes and executes it as Go does; turning a conversation
into a prompt with it, Ollama's way, is ``modelpkg.core.prompt``.

Public API::

    parse(source) -> Template            # cached by source; TemplateError "template line L, column C: ..."
    Template.execute(data) -> str        # plain text/template execution of one data value
    Template.identifiers                 # field and variable names it mentions (Ollama's Vars)

Supported: text and ``{{ }}`` actions with trim markers (``{{-`` / ``-}}`` trim all adjacent whitespace),
comments ``{{/* */}}``, pipelines with ``|``, fields ``.A.B``, ``$``, ``$.A``, variables (``$x := ...``,
``$x = ...``), ``if``/``else if``/``else``, ``range`` (``$i, $e :=``, ``else``, ``break``, ``continue``, range
over lists, maps in sorted key order, and integers), ``with``/``else with``, parentheses and ``(x).Field``
chains, literals (interpreted and raw strings, chars, numbers, ``true``/``false``/``nil``), and the functions
``and or not eq ne lt le gt ge len index slice print printf println html js urlquery`` (Go's builtins, with
``and``/``or`` short-circuiting and returning an operand) plus Ollama's ``json currentDate yesterdayDate
toTypeScriptType``. Values print as Go's ``fmt`` prints them (``[a b]``, ``map[k:v]``, ``true``, ``1e+06``)
and ``printf`` follows Go's verbs, flags, width and precision.

Refused with a TemplateError: ``define``, ``template``, ``block`` and ``call`` (no recursion, no function
values), complex numbers, unknown functions. Deliberate differences from Go: a missing map key, an unknown
field of a struct, or a field of a missing value gives nil, and ``{{ }}`` prints nil as nothing (Go prints
``<no value>`` for a missing key of a ``map[string]any`` even with ``missingkey=zero``); pointers print as
``&{...}``, never as addresses.

Limits, so a hostile template cannot hang or eat memory: the source size, the nesting depth of control
structures and parentheses, the total range iterations and evaluation steps, the text functions may build,
and the output (1 MiB) are all capped (``limits``); going over raises TemplateError.

The modules, bottom up: ``limits``; ``strconv`` (quoting, literals, float formatting); ``lex``; ``nodes``;
``values`` (Go values in Python); ``marshal`` (encoding/json); ``fmt``; ``funcs``; ``parser``; ``exec``.

Pure package: no file, network or environment access. The one exception to "no clock" is that
``currentDate``/``yesterdayDate`` read the local date when a template calls them, as Ollama's do. Imports
nothing from modelpkg but ``modelpkg.core.errors``, and never ``modelpkg.core.prompt``, which builds on it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from modelpkg.core.errors import TemplateError
from modelpkg.core.gotemplate.exec import Executor
from modelpkg.core.gotemplate.limits import LIMIT_HINT, MAX_OUTPUT, MAX_SOURCE
from modelpkg.core.gotemplate.nodes import Action, Field, If, Pipe, Range, Variable, With
from modelpkg.core.gotemplate.parser import parse_nodes

__all__ = ["MAX_OUTPUT", "Template", "parse"]


@dataclass(frozen=True)
class Template:
    """A parsed template: its source, its nodes, and the identifiers it mentions (lowercased, as Ollama's
    ``Template.Vars``). ``str(template)`` is the source."""

    source: str
    nodes: tuple[Any, ...]
    identifiers: frozenset[str]

    def execute(self, data: Any) -> str:
        """Execute with ``data`` as dot and ``$`` (usually a dict, seen as a Go map)."""
        return Executor(self.source).run(self.nodes, data)

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
        raise TemplateError(f"template is larger than {MAX_SOURCE // 1024} KiB", LIMIT_HINT)
    nodes = parse_nodes(source)
    names: list[str] = []
    for node in nodes:
        _identifiers(node, names)
    return Template(source, nodes, frozenset(n.lower() for n in names))


def _identifiers(node: Any, out: list[str]) -> None:
    """Field and variable names in actions and control pipelines, as Ollama's ``template.Identifiers``."""
    if isinstance(node, Action):
        _identifiers(node.pipe, out)
    elif isinstance(node, (If, With, Range)):
        _identifiers(node.pipe, out)
        for child in node.body + (node.orelse or ()):
            _identifiers(child, out)
    elif isinstance(node, Pipe):
        for cmd in node.cmds:
            for arg in cmd.args:
                _identifiers(arg, out)
    elif isinstance(node, (Field, Variable)):
        out.extend(node.names)
