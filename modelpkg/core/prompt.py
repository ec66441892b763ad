"""Prompts from conversations: a chat template rendered the way Ollama renders it, on the gotemplate engine.

Ollama's rules for turning a conversation into a prompt (``template/template.go``: ``Parse``, ``Execute``,
``collate``), over the Go ``text/template`` engine in ``modelpkg.core.gotemplate``::

    render(source, messages, **values)   # Ollama's Execute: .Messages templates and legacy per-turn ones
    uses_messages(source) -> bool        # does the template mention .Messages (Ollama's Vars check)

``render`` hands messages and tools to templates as the structs Ollama builds for them (at the commit in
shared/reference/ollama-behaviour.md): ``.Role``, ``.Content``, ``.ToolCalls``... on messages; tools, tool
call arguments, parameter properties and a tool's ``.Function`` print as JSON (their Go ``String`` methods; the
function's as in Ollama v0.5.0, whose conformance renderings need it), and ``json`` of a message uses Go field
names. An unknown field of a message gives nil, as any missing field does in the engine. A template that
mentions ``.Messages`` is executed once with the whole conversation; an older one once per turn, the last
turn cut right after ``{{ .Response }}``. One deliberate difference from Ollama: where its cut after
``.Response`` would panic (the cut inside a branch that has an else), the else branch is dropped.

``capabilities``, ``thinking_tags``, ``tool_call_sample`` and ``tool_call_prefix`` read what a template says
about its model (Ollama's ``goTemplateCapabilities``, ``thinking.InferTags`` and the tool-call format its
parser learns from the template).

Pure module: no file, network, environment or clock access (the engine's date functions aside). Imports
``modelpkg.core.errors`` and ``modelpkg.core.gotemplate``; the engine never imports this module.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from modelpkg.core.errors import TemplateError
from modelpkg.core.gotemplate import Template, parse
from modelpkg.core.gotemplate.exec import Executor
from modelpkg.core.gotemplate.limits import MAX_VALUE_DEPTH
from modelpkg.core.gotemplate.nodes import Action, Command, Field, If, Pipe, Range, Text, With
from modelpkg.core.gotemplate.values import GoList, GoMap, Struct, StructType

__all__ = ["capabilities", "render", "thinking_tags", "tool_call_prefix", "tool_call_sample", "uses_messages"]

# ------------------------------------------------------------------------------------------------------
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


def _struct_type(schema: str) -> StructType:
    return StructType(
        _STRUCT_TYPES[schema],
        tuple((go_name, json_key, omitempty) for go_name, _key, json_key, omitempty, _kind in _SCHEMAS[schema]),
        # templateTool has a String method that gives its JSON; so had api.ToolFunction in Ollama v0.5.0, whose
        # renderings of {{ .Function }} (shared/conformance/ollama-tools) print it as JSON, as its templates mean
        stringer=schema in ("Tool", "ToolFunction"),
        pointer=schema == "Message",  # messages reach templates as *templateMessage
    )


_TYPES = {schema: _struct_type(schema) for schema in _SCHEMAS}


def _convert(kind: Any, value: Any, where: str, depth: int) -> Any:  # noqa: C901 - one case per kind
    absent = value is _ABSENT or value is None
    if isinstance(kind, tuple):
        container, schema = kind
        if container == "list":
            if absent or (isinstance(value, (list, tuple)) and not value):
                return GoList(nil=True)
            if isinstance(value, (list, tuple)):
                return GoList(_to_struct(schema, e, f"{where}[{i}]", depth + 1) for i, e in enumerate(value))
        else:
            style, type_name = {"props": ("json", "template.templateProperties"),
                                "omap": ("ordered", "*api.ToolPropertiesMap")}[container]
            if absent:
                return None if container == "omap" else GoMap(nil=True, style=style, type_name=type_name)
            if isinstance(value, Mapping):
                return GoMap(((str(k), _to_struct(schema, e, f"{where}.{k}", depth + 1)) for k, e in value.items()),
                              style=style, type_name=type_name)
        raise TemplateError(f"{where} must be a {'list' if container == 'list' else 'mapping'}, "
                            f"not {type(value).__name__}")
    if kind in _SCHEMAS:
        return _to_struct(kind, {} if absent else value, where, depth + 1)
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
            return GoMap(nil=True, style="json", type_name="template.templateArgs")
        if isinstance(value, Mapping):
            return GoMap(((str(k), e) for k, e in value.items()), style="json", type_name="template.templateArgs")
    elif kind == "ptype":
        if absent:
            return GoList(nil=True, style="ptype", type_name="api.PropertyType")
        if isinstance(value, str) or (isinstance(value, (list, tuple)) and all(isinstance(t, str) for t in value)):
            return GoList([value] if isinstance(value, str) else value, style="ptype", type_name="api.PropertyType")
    else:  # images, strings, anys: slices
        type_name = {"images": "[]api.ImageData", "strings": "[]string", "anys": "[]interface {}"}[kind]
        if absent:
            return GoList(nil=True, type_name=type_name)
        if isinstance(value, (list, tuple)) and (kind != "strings" or all(isinstance(e, str) for e in value)):
            return GoList(value, type_name=type_name)
    expected = {"str": "a string", "int": "an integer", "args": "a mapping", "ptype": "a type name or a list of them",
                "images": "a list", "strings": "a list of strings", "anys": "a list"}[kind]
    raise TemplateError(f"{where} must be {expected}, not {type(value).__name__}")


def _to_struct(schema: str, raw: Any, where: str, depth: int = 0) -> Struct:
    if isinstance(raw, Struct) and raw.type == _TYPES[schema]:
        return raw
    if depth > MAX_VALUE_DEPTH:
        raise TemplateError(f"{where} is nested too deeply")
    if not isinstance(raw, Mapping):
        raise TemplateError(f"{where} must be a mapping, not {type(raw).__name__}")
    fields = {}
    for go_name, key, _json_key, _omit, kind in _SCHEMAS[schema]:
        value = raw[key] if key in raw else raw.get(go_name, _ABSENT)
        fields[go_name] = _convert(kind, value, f"{where}.{key}", depth)
    return Struct(_TYPES[schema], fields)


# ------------------------------------------------------------------------------------------------------
# Ollama's Execute: collate, the legacy per-turn path, and the cut after {{ .Response }}.


def _collate(messages: list[Struct]) -> tuple[str, list[Struct]]:
    """Ollama's collate: all system contents joined by a blank line, and consecutive messages of one role
    (except tool results) merged into the first, contents joined by a blank line."""
    system = [m.fields["Content"] for m in messages if m.fields["Role"] == "system"]
    collated: list[Struct] = []
    for m in messages:
        role = m.fields["Role"]
        if collated and collated[-1].fields["Role"] == role and role != "tool":
            last = collated[-1]
            content = last.fields["Content"] + "\n\n" + m.fields["Content"]
            collated[-1] = Struct(last.type, {**last.fields, "Content": content})
        else:
            collated.append(m)
    return "\n\n".join(system), collated


_RESPONSE_NODE = Action(Pipe((), False, (Command((Field(("Response",), 0),), 0),), 0), 0)


def _with_response(template: Template) -> tuple[Any, ...]:
    """Ollama's Parse appends {{ .Response }} to a template that mentions neither Messages nor Response."""
    if "messages" in template.identifiers or "response" in template.identifiers:
        return template.nodes
    return (*template.nodes, _RESPONSE_NODE)


def _cut_after_response(nodes: tuple[Any, ...]) -> tuple[Any, ...]:
    """Ollama's deleteNode: keep everything up to the first action field naming Response, drop the rest.

    Like Ollama, control pipelines are not searched, only actions and the bodies of if/with/range. Where Ollama
    would panic (the cut happening inside a branch that has an else), the else branch is dropped."""
    cut = False

    def hit(node: Any) -> bool:
        nonlocal cut
        if isinstance(node, Field) and "Response" in node.names:
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

    def walk_pipe(pipe: Pipe) -> Pipe | None:
        cmds = []
        for cmd in pipe.cmds:
            args = [a for a in (walk(arg) for arg in cmd.args) if a is not None]
            if not args:
                return None
            cmds.append(Command(tuple(args), cmd.pos))
        return Pipe(pipe.decls, pipe.is_assign, tuple(cmds), pipe.pos) if cmds else None

    def walk(node: Any) -> Any:
        if hit(node):
            return None
        if isinstance(node, (If, With, Range)):
            body = walk_list(node.body)
            orelse = None if node.orelse is None or cut else walk_list(node.orelse)
            return type(node)(node.pipe, body, orelse, node.pos)
        if isinstance(node, Action):
            pipe = walk_pipe(node.pipe)
            return None if pipe is None else Action(pipe, node.pos)
        if isinstance(node, Pipe):
            return walk_pipe(node)
        return node

    return walk_list(nodes)


def _go_key(name: str) -> str:
    """A keyword argument's template name: think_level -> ThinkLevel."""
    if name[:1].isupper():
        return name
    return "".join(part[:1].upper() + part[1:] for part in name.split("_"))


# ------------------------------------------------------------------------------------------------------
# The public face: render and uses_messages


def uses_messages(source: str) -> bool:
    """True when the template mentions ``.Messages``: Ollama then renders the whole conversation at once."""
    return "messages" in parse(source).identifiers


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
    base = {**_think_values(values.pop("think", None)), **{_go_key(k): v for k, v in values.items()}}
    # one executor for the whole render: the limits count across the legacy path's executions
    executor = Executor(template.source)
    if prompt and suffix:
        return executor.run(nodes, {"Prompt": prompt, "Suffix": suffix, "Response": "", **base})

    system_text, collated = _collate(_conversation(messages, system))
    if "messages" in template.identifiers:
        data = {"System": system_text, "Messages": GoList(collated, type_name="[]*template.templateMessage"),
                "Tools": _tools(tools), "Response": response or "", "Prompt": prompt or "", **base}
        return executor.run(nodes, data)
    return _per_turn(executor, nodes, collated, base, prompt, response)


def _think_values(think: Any) -> dict[str, Any]:
    """.Think, .ThinkLevel and .IsThinkSet: as server/routes.go sets them, Think is think's truth and
    ThinkLevel its level ("medium" for a bare true)."""
    if think is not None and not isinstance(think, (bool, str)):
        raise TemplateError("think must be true, false or a level such as \"high\"")
    return {
        "Think": think is True or think in ("high", "medium", "low", "max"),
        "ThinkLevel": "medium" if think is True else think if isinstance(think, str) else "",
        "IsThinkSet": think is not None,
    }


def _conversation(messages: Sequence[Mapping[str, Any]], system: str | None) -> list[Struct]:
    """The messages as Ollama's structs; ``system``, when given, replaces the conversation's system messages."""
    if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Sequence):
        raise TemplateError("messages must be a list of {'role': ..., 'content': ...} mappings")
    msgs = [_to_struct("Message", m, f"message {i}") for i, m in enumerate(messages, 1)]
    if system is None:
        return msgs
    return [_to_struct("Message", {"role": "system", "content": system}, "system")] + [
        m for m in msgs if m.fields["Role"] != "system"]


def _tools(tools: Any) -> GoList:
    """.Tools: Ollama's templateTools, nil when no tools were given."""
    if not isinstance(tools, (list, tuple, type(None))):
        raise TemplateError("tools must be a list of tool definitions")
    return GoList((_to_struct("Tool", t, f"tool {i}") for i, t in enumerate(tools or (), 1)),
                  nil=tools is None, style="json", type_name="template.templateTools")


def _per_turn(executor: Executor, nodes: tuple[Any, ...], collated: list[Struct], base: dict[str, Any],
              prompt: str | None, response: str | None) -> str:
    """The legacy path: one execution per user turn, as Ollama's Execute loop does; ``prompt`` and
    ``response`` override those of the last turn, which is cut after its {{ .Response }}."""
    out: list[str] = []
    turn = {"System": "", "Prompt": "", "Response": ""}

    def execute(nodes_: tuple[Any, ...]) -> None:
        out.append(executor.run(nodes_, {**turn, **base}))
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


# ------------------------------------------------------------------------------------------------------
# What a template says about the model: Ollama's capabilities, thinking tags and tool-call format


def capabilities(source: str) -> list[str]:
    """What a Go template gives a model, as Ollama's ``goTemplateCapabilities``: ``tools`` when it mentions
    ``.Tools``, ``insert`` when it mentions ``.Suffix``, ``thinking`` when thinking tags can be inferred."""
    template = parse(source)
    caps = [name for name, ident in (("tools", "tools"), ("insert", "suffix")) if ident in template.identifiers]
    opening, closing = thinking_tags(source)
    if opening and closing:
        caps.append("thinking")
    return caps


def thinking_tags(source: str) -> tuple[str, str]:
    """The tags around a thinking trace, as Ollama's ``thinking.InferTags`` guesses them: for each ``.Thinking``
    inside a ``range`` over ``.Messages``, the first and last text of the nearest enclosing list (trimmed);
    the last such reference wins. ``("", "")`` when there is none."""
    tags = ["", ""]

    def visit(node: Any, ranges: tuple[Range, ...], nearest: tuple[Any, ...]) -> None:
        if isinstance(node, Field):
            if node.names[0] == "Thinking" and ranges and _mentions(ranges[-1].pipe, "Messages") and nearest:
                if isinstance(nearest[0], Text):
                    tags[0] = nearest[0].text.strip()
                if isinstance(nearest[-1], Text):
                    tags[1] = nearest[-1].text.strip()
        elif isinstance(node, (If, With, Range)):
            inner = (*ranges, node) if isinstance(node, Range) else ranges
            visit(node.pipe, inner, nearest)
            for body in (node.body, node.orelse):
                for child in body or ():
                    visit(child, inner, body)
        elif isinstance(node, Action):
            visit(node.pipe, ranges, nearest)
        elif isinstance(node, Pipe):
            for cmd in node.cmds:
                for arg in cmd.args:
                    visit(arg, ranges, nearest)

    nodes = parse(source).nodes
    for node in nodes:
        visit(node, (), nodes)
    return tags[0], tags[1]


def _mentions(pipe: Pipe, name: str) -> bool:
    return any(isinstance(arg, Field) and arg.names[0] == name for cmd in pipe.cmds for arg in cmd.args)


SAMPLE_NAME, SAMPLE_ARGUMENT = "@@name@@", "@@argument@@"


def tool_call_sample(source: str) -> str | None:
    """How the template writes a tool call: its first ``range`` over ``.ToolCalls`` executed alone with one
    call named ``@@name@@`` taking ``{"@@argument@@": 1}``, as Ollama's ``parseToolCalls`` does to learn the
    format (v0.5.0 ``server/model.go``). None when the template never ranges over ``.ToolCalls`` or the
    sample does not execute."""
    node = _find_tool_calls_range(parse(source).nodes)
    if node is None:
        return None
    call = _to_struct("ToolCall", {"function": {"name": SAMPLE_NAME, "arguments": {SAMPLE_ARGUMENT: 1}}}, "sample")
    try:
        return Executor(source).run((node,), {"ToolCalls": GoList([call])})
    except TemplateError:
        return None


def tool_call_prefix(source: str) -> str:
    """The text the template writes just before its tool calls (``[TOOL_CALLS] [``, ``<tool_call>``...),
    trimmed; "" when there is none. A streamed answer that begins with it is held back as a likely call."""
    found = _find_tool_calls_range(parse(source).nodes, with_list=True)
    if found is None:
        return ""
    siblings, index = found
    before = siblings[index - 1] if index > 0 else None
    return before.text.strip() if isinstance(before, Text) else ""


def _find_tool_calls_range(nodes: tuple[Any, ...], with_list: bool = False) -> Any:
    """Ollama's ``Template.Subtree``: depth first through lists and branch bodies (not pipelines); the range
    node, or (its list, its index) with ``with_list``."""
    for index, node in enumerate(nodes):
        if isinstance(node, Range) and _names_in(node.pipe) & {"ToolCalls"}:
            return (nodes, index) if with_list else node
        if isinstance(node, (If, With, Range)):
            found = (_find_tool_calls_range(node.body, with_list)
                     or _find_tool_calls_range(node.orelse or (), with_list))
            if found is not None:
                return found
    return None


def _names_in(pipe: Pipe) -> set[str]:
    names: set[str] = set()
    for cmd in pipe.cmds:
        for arg in cmd.args:
            if isinstance(arg, Field):
                names.update(arg.names)
    return names
