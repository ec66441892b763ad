"""modelpkg.core.prompt: Ollama's conformance data, the .Messages path (collate, tools, think), the legacy
per-turn path, and a fuzz property (only TemplateError ever escapes, nothing hangs).

The conformance data is read from the steering repo's shared/ folder (``../shared/conformance`` beside the
repo), or from ``$MODELPKG_CONFORMANCE``; it is never copied here.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelpkg.core.errors import TemplateError
from modelpkg.core.gotemplate import parse
from modelpkg.core.prompt import render, uses_messages


def _conformance_dir() -> Path:
    root = os.environ.get("MODELPKG_CONFORMANCE")
    base = Path(root) if root else Path(__file__).resolve().parents[2].parent / "shared" / "conformance"
    return base / "ollama-templates"


CONFORMANCE = _conformance_dir()
TEMPLATE_NAMES = sorted(p.name for p in CONFORMANCE.iterdir() if p.is_dir()) if CONFORMANCE.is_dir() else []

USER_1 = {"role": "user", "content": "Hello, how are you?"}
ASSISTANT = {"role": "assistant", "content": "I'm doing great. How can I help you today?"}
USER_2 = {"role": "user", "content": "I'd like to show off how chat templating works!"}
SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
CONVERSATIONS = {
    "user": [USER_1],
    "user-assistant-user": [USER_1, ASSISTANT, USER_2],
    "system-user-assistant-user": [SYSTEM, USER_1, ASSISTANT, USER_2],
}
# The conformance README's one rule: for these, one trailing space at the very end is dropped before comparing.
TRAILING_SPACE_QUIRK = {"chatqa", "llama2-chat", "mistral-instruct", "openchat", "vicuna"}


def test_conformance_data_is_there():
    assert len(TEMPLATE_NAMES) == 13, f"expected 13 template folders in {CONFORMANCE}"


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
def test_conformance(name, conversation):
    folder = CONFORMANCE / name
    source = (folder / "template.gotmpl").read_text(encoding="utf-8")
    expected = (folder / f"{conversation}.expected").read_bytes()
    got = render(source, CONVERSATIONS[conversation])
    if name in TRAILING_SPACE_QUIRK and got.endswith(" "):
        got = got[:-1]
    assert got.encode("utf-8") == expected


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_conformance_templates_use_messages(name):
    assert uses_messages((CONFORMANCE / name / "template.gotmpl").read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------------------------------
# Ollama's legacy path: templates without .Messages run once per turn, the last turn cut after .Response.
# Expectations are computed by hand from template.Execute in Ollama's template/template.go.

LEGACY = "{{ if .System }}[SYS]{{ .System }}[/SYS]{{ end }}[U]{{ .Prompt }}[/U][A]{{ .Response }}[/A]"
NO_RESPONSE = "<{{ .Prompt }}>"  # Ollama appends {{ .Response }} to this


def _msg(role, content):
    return {"role": role, "content": content}


@pytest.mark.parametrize("source, messages, expected", [
    # one execution per user turn with its reply; the last turn stops right after {{ .Response }}
    (LEGACY, [_msg("system", "S"), _msg("user", "u1"), _msg("assistant", "a1"), _msg("user", "u2")],
     "[SYS]S[/SYS][U]u1[/U][A]a1[/A][U]u2[/U][A]"),
    # the conversation ends with the assistant: its text is a prefill, and nothing follows it
    (LEGACY, [_msg("user", "u1"), _msg("assistant", "a1")], "[U]u1[/U][A]a1"),
    # a system message after a turn starts a new execution
    (LEGACY, [_msg("user", "u1"), _msg("assistant", "a1"), _msg("system", "S2"), _msg("user", "u2")],
     "[U]u1[/U][A]a1[/A][SYS]S2[/SYS][U]u2[/U][A]"),
    # {{ .Response }} is appended when the template mentions neither Messages nor Response
    (NO_RESPONSE, [_msg("user", "u1"), _msg("assistant", "a1"), _msg("user", "u2")], "<u1>a1<u2>"),
    # consecutive messages of one role are merged with a blank line
    (NO_RESPONSE, [_msg("user", "u1"), _msg("user", "u2")], "<u1\n\nu2>"),
    # tool messages have no place in the legacy path
    (NO_RESPONSE, [_msg("user", "u1"), _msg("tool", "t1")], "<u1>"),
    # no messages at all: one execution with empty values
    (LEGACY, [], "[U][/U][A]"),
    # the cut looks at actions only (not if pipelines) and drops everything after the first .Response action
    ("{{ .Prompt }}{{ if .Response }}={{ .Response }}!{{ end }}END",
     [_msg("user", "u1"), _msg("assistant", "a1"), _msg("user", "u2")], "u1=a1!ENDu2"),
    # where Ollama's cut would panic (an else after the cut), the else branch is dropped
    ("{{ .Prompt }}{{ if .Response }}={{ .Response }}{{ else }}?{{ end }}!",
     [_msg("user", "u1"), _msg("assistant", "a1"), _msg("user", "u2")], "u1=a1!u2"),
    # Ollama's own mistral example, legacy form without .Response
    ("[INST] {{ if .System }}{{ .System }}\n\n{{ end }}{{ .Prompt }}[/INST] ",
     [_msg("system", "Be brief."), _msg("user", "Hi"), _msg("assistant", "Hello"), _msg("user", "Name?")],
     "[INST] Be brief.\n\nHi[/INST] Hello[INST] Name?[/INST] "),
])
def test_legacy_path(source, messages, expected):
    assert not uses_messages(source)
    assert render(source, messages) == expected


def test_legacy_overrides_apply_to_the_last_turn():
    assert render(LEGACY, [], system="S", prompt="p") == "[SYS]S[/SYS][U]p[/U][A]"
    assert render(LEGACY, [_msg("user", "u1")], response="partial") == "[U]u1[/U][A]partial"


def test_suffix_renders_fill_in_the_middle():
    source = "<PRE> {{ .Prompt }} <SUF>{{ .Suffix }} <MID>"
    assert render(source, [], prompt="def f(", suffix="return 1") == "<PRE> def f( <SUF>return 1 <MID>"


# ------------------------------------------------------------------------------------------------------
# Ollama's .Messages path: collate, tools, tool calls, think


def test_messages_path_collates_and_joins_system():
    source = "{{ .System }}|{{ range .Messages }}{{ .Role }}:{{ .Content }};{{ end }}|{{ .Response }}|{{ .Prompt }}"
    msgs = [_msg("system", "S1"), _msg("system", "S2"), _msg("user", "u"), _msg("system", "S3"),
            _msg("tool", "t1"), _msg("tool", "t2")]
    assert render(source, msgs) == "S1\n\nS2\n\nS3|system:S1\n\nS2;user:u;system:S3;tool:t1;tool:t2;||"


def test_system_override_replaces_system_messages():
    source = "{{ .System }}|{{ range .Messages }}{{ .Role }}={{ .Content }};{{ end }}"
    assert render(source, [_msg("system", "old"), _msg("user", "u")], system="new") == "new|system=new;user=u;"


TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the weather",
    "parameters": {"type": "object", "required": ["city"], "properties": {
        "city": {"type": "string", "description": "City"},
        "days": {"type": ["integer", "null"]},
        "unit": {"anyOf": [{"type": "string"}, {"type": "null"}]},
    }}}}
MESSAGES_MARK = "{{- range .Messages }}{{ end }}"  # makes a template take the .Messages path


def test_tools_in_templates():
    source = MESSAGES_MARK + ("{{ range .Tools }}{{ .Function.Name }}("
                              "{{ range $k, $v := .Function.Parameters.Properties }}"
                              "{{ $k }}: {{ toTypeScriptType $v }}, {{ end }}){{ end }}")
    assert render(source, [_msg("user", "hi")], tools=[TOOL]) == \
        "get_weather(city: string, days: number | null, unit: string | null, )"


def test_tools_print_as_ollama_prints_them():
    simple = {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"x": {"type": "string", "description": "X"}}}}}
    tool_json = ('{"type":"function","function":{"name":"f","description":"","parameters":{"type":"object",'
                 '"properties":{"x":{"type":"string","description":"X"}}}}}')
    # templateTools and templateTool have String methods that give JSON ...
    assert render(MESSAGES_MARK + "{{ .Tools }}", [], tools=[simple]) == f"[{tool_json}]"
    assert render(MESSAGES_MARK + "{{ range .Tools }}{{ . }}|{{ json . }}{{ end }}", [], tools=[simple]) == \
        f"{tool_json}|{tool_json}"
    # ... and so does the function (api.ToolFunction's String in Ollama v0.5.0: llama3-groq-tool-use's rendering)
    assert render(MESSAGES_MARK + "{{ range .Tools }}{{ .Function }}{{ end }}", [], tools=[simple]) == \
        '{"name":"f","description":"","parameters":{"type":"object","properties":{"x":{"type":"string",' \
        '"description":"X"}}}}'
    assert render(MESSAGES_MARK + "{{ if .Tools }}yes{{ else }}no{{ end }} {{ .Tools }}", []) == "no null"


def test_tool_calls_arguments_print_as_json():
    call = {"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "get_weather", "arguments": {"unit": "c", "city": "Paris <&>"}}}]}
    source = ("{{ range .Messages }}{{ range .ToolCalls }}{{ .Function.Name }} {{ .Function.Arguments }} "
              "{{ json .Function.Arguments }} {{ range $k, $v := .Function.Arguments }}{{ $k }}={{ $v }};{{ end }}"
              "{{ end }}{{ end }}")
    args = '{"city":"Paris \\u003c\\u0026\\u003e","unit":"c"}'
    assert render(source, [call]) == f"get_weather {args} {args} city=Paris <&>;unit=c;"


def test_messages_marshal_with_go_field_names():
    got = render("{{ range .Messages }}{{ json . }}{{ end }}", [_msg("user", "hi")])
    assert got == ('{"Role":"user","Content":"hi","Thinking":"","Images":null,"ToolCalls":null,'
                   '"ToolName":"","ToolCallID":""}')


def test_message_fields_default_to_zero_values():
    source = ("{{ range .Messages }}[{{ .Thinking }}|{{ .ToolCalls }}|{{ .Images }}|{{ len .ToolCalls }}"
              "|{{ .Nope }}]{{ end }}")
    assert render(source, [_msg("user", "hi")]) == "[|[]|[]|0|]"
    thinking = {"role": "assistant", "content": "a", "thinking": "hmm"}
    assert render("{{ range .Messages }}{{ .Thinking }}{{ end }}", [thinking]) == "hmm"


@pytest.mark.parametrize("think, expected", [
    (None, "false||false"), (True, "true|medium|true"), (False, "false||true"), ("high", "true|high|true"),
])
def test_think_values(think, expected):
    source = MESSAGES_MARK + "{{ .Think }}|{{ .ThinkLevel }}|{{ .IsThinkSet }}"
    values = {} if think is None else {"think": think}
    assert render(source, [], **values) == expected


def test_bad_messages_are_template_errors():
    with pytest.raises(TemplateError, match=r"message 1\.content must be a string"):
        render("{{ .Prompt }}", [{"role": "user", "content": 3}])
    with pytest.raises(TemplateError, match="message 1 must be a mapping"):
        render("{{ .Prompt }}", ["hello"])


# ------------------------------------------------------------------------------------------------------
# Fuzzing: parse and render raise TemplateError and nothing else, and finish

FUZZ_CONVERSATION = [SYSTEM, USER_1, ASSISTANT, USER_2]
TOKENS = ["{{", "}}", "{{-", "-}}", " ", "\n", ".", ".Messages", ".Role", ".Content", ".System", ".Prompt",
          ".Response", "$", "$x", ":=", "=", "|", "(", ")", ",", "if", "else", "end", "range", "with", "break",
          "continue", "eq", "ne", "lt", "and", "or", "not", "len", "index", "slice", "printf", "print", "json",
          "html", "js", "urlquery", "toTypeScriptType", '"%s%d%v%q"', '"', "`", "'a'", "1", "-1", "0x1f", "1e3",
          "2.5", "true", "nil", "/*", "*/", "text", "\\", "%", "\u00e9", "\ud800"]


def _check(source: str) -> None:
    try:
        template = parse(source)
        assert parse(str(template)) == template
        render(source, FUZZ_CONVERSATION, tools=[TOOL], think=True)
    except TemplateError:
        pass


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=200))
def test_fuzz_arbitrary_text(source):
    _check(source)


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(TOKENS), max_size=60).map("".join))
def test_fuzz_template_tokens(source):
    _check(source)


REAL_TEMPLATES = [(CONFORMANCE / n / "template.gotmpl").read_text(encoding="utf-8") for n in TEMPLATE_NAMES] or [
    "{{ range .Messages }}{{ .Role }}: {{ .Content }}{{ end }}"]


@st.composite
def _mutated_templates(draw):
    source = draw(st.sampled_from(REAL_TEMPLATES))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(source)))
        j = draw(st.integers(i, min(len(source), i + 12)))
        insert = draw(st.sampled_from(["", *TOKENS]))
        source = source[:i] + insert + source[j:]
    return source


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutated_templates())
def test_fuzz_mutated_real_templates(source):
    _check(source)
