"""modelpkg.core.tools and core.thinking: Ollama's tool-call renderings and parse cases (shared/conformance/
ollama-tools, read from there), the streamed parser against the whole one, thinking split by template tags,
and what a template says about a model's capabilities.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from modelpkg.core.prompt import capabilities, render, thinking_tags, tool_call_prefix
from modelpkg.core.thinking import ThinkingSplitter, check_think, split_thinking
from modelpkg.core.tools import ToolCallStream, arguments_object, call_keys, parse_objects, parse_tool_calls

root = os.environ.get("MODELPKG_CONFORMANCE")
TOOLS = (Path(root) if root else Path(__file__).resolve().parents[2].parent / "shared" / "conformance") / \
    "ollama-tools"
NAMES = sorted(p.stem for p in TOOLS.glob("*.gotmpl"))
CASES = json.loads((TOOLS / "parse-cases.json").read_text()) if TOOLS.is_dir() else []

THINKING_TEMPLATE = """{{- range .Messages }}<|{{ .Role }}|>
{{- if and (eq .Role "assistant") .Thinking }}<think>{{ .Thinking }}</think>{{ end }}{{ .Content }}
{{ end }}<|assistant|>{{ if .Think }}<think>{{ end }}"""


def template(name: str) -> str:
    return (TOOLS / f"{name}.gotmpl").read_text()


def test_conformance_data_is_there():
    assert NAMES == ["command-r-plus", "firefunction", "llama3-groq-tool-use", "mistral"]
    assert len(CASES) == 10


@pytest.mark.parametrize("name", NAMES)
def test_tool_templates_render_as_ollama_renders_them(name):
    messages = json.loads((TOOLS / "messages.json").read_text())
    tools = json.loads((TOOLS / "tools.json").read_text())
    assert render(template(name), messages, tools=tools) == (TOOLS / f"{name}.out").read_text()


@pytest.mark.parametrize("case", CASES, ids=[f"{c['template']}-{i}" for i, c in enumerate(CASES)])
def test_tool_calls_parse_as_ollama_parses_them(case):
    calls = parse_tool_calls(template(case["template"]), case["output"])
    assert bool(calls) == case["is_tool_call"]
    if case["is_tool_call"]:
        assert calls == case["calls"]  # dicts: argument order does not matter


@pytest.mark.parametrize("case", CASES, ids=[f"{c['template']}-{i}" for i, c in enumerate(CASES)])
def test_streamed_tool_calls_match_the_whole_answer(case):
    text = case["output"]
    for size in (1, 3, 17):
        stream = ToolCallStream(template(case["template"]))
        shown = "".join(stream.feed(text[i:i + size]) for i in range(0, len(text), size))
        rest, calls = stream.finish()
        assert calls == parse_tool_calls(template(case["template"]), text)
        if not calls:
            assert shown + rest == text  # plain text comes through whole
        elif text.lstrip().startswith(("[", "{", "<tool_call>", "functools", "Action:")):
            assert shown == "" and rest == ""  # an answer that is a call never shows as text


def test_the_template_teaches_the_call_format():
    assert call_keys(template("mistral")) == ("name", "arguments")
    assert call_keys(template("command-r-plus")) == ("tool_name", "parameters")
    assert call_keys("{{ .Prompt }}") is None
    assert parse_tool_calls("{{ .Prompt }}", '{"name": "f", "arguments": {}}') == []
    assert tool_call_prefix(template("mistral")) == "[TOOL_CALLS] ["
    assert tool_call_prefix(template("llama3-groq-tool-use")) == "<tool_call>"


def test_objects_are_found_as_gos_decoder_finds_them():
    assert parse_objects('x {"a": 1} y [{"b": [2]}, {"c": "}"}] "s" 3 true') == [{"a": 1}, {"b": [2]}, {"c": "}"}]
    assert parse_objects('[{"a": 1}, {"b": 2') == []  # a value cut off by the end ends the search
    assert parse_objects('{"a": 1} {"b": 2') == [{"a": 1}]
    assert parse_objects('{"a": tru} {"b": 1}') == [{"b": 1}]
    assert parse_objects("[" * 2000 + "]" * 2000) == []  # deep nesting is no call, and no crash
    assert parse_objects('{"a": "\\u00e9\\n"}') == [{"a": "é\n"}]
    nested = parse_tool_calls(template("mistral"), '{"calls": [{"name": "f", "arguments": {"x": 1}}]}')
    assert nested == [{"function": {"name": "f", "arguments": {"x": 1}}}]


def test_arguments_given_as_a_string_or_an_object():
    assert arguments_object('{"x": 1}') == {"x": 1}
    assert arguments_object({"x": 1}) == {"x": 1}
    assert arguments_object("") == {}
    for bad in ("{not json", "[1]", 3):
        with pytest.raises(Exception, match="arguments"):
            arguments_object(bad)


def test_capabilities_from_a_template():
    assert capabilities(template("mistral")) == ["tools"]
    assert capabilities("{{ .Prompt }}") == []
    assert capabilities("<PRE> {{ .Prompt }} <SUF>{{ .Suffix }} <MID>") == ["insert"]
    assert capabilities(THINKING_TEMPLATE) == ["thinking"]
    assert thinking_tags(THINKING_TEMPLATE) == ("<think>", "</think>")
    # .Thinking outside a range over .Messages says nothing about tags
    assert thinking_tags("{{ if .Thinking }}<think>{{ .Thinking }}</think>{{ end }}") == ("", "")


def test_thinking_split_by_tags_streamed_and_whole():
    recorded = "  <think>\nThe user greets me.\n</think>\n\nHello! How can I help?"
    assert split_thinking("<think>", "</think>", recorded) == ("The user greets me.\n", "Hello! How can I help?")
    for size in (1, 2, 5):
        splitter = ThinkingSplitter("<think>", "</think>")
        parts = [splitter.feed(recorded[i:i + size]) for i in range(0, len(recorded), size)] + [splitter.flush()]
        assert ("".join(t for t, _ in parts), "".join(c for _, c in parts)) == \
            ("The user greets me.\n", "Hello! How can I help?")
    # the prompt ended with <think>: the answer starts inside the thinking
    assert split_thinking("<think>", "</think>", "hmm</think>ok", thinking=True) == ("hmm", "ok")
    assert split_thinking("<think>", "</think>", "no tags here") == ("", "no tags here")
    assert split_thinking("<think>", "</think>", "<thi") == ("", "<thi")  # held, then given back
    assert split_thinking("<think>", "</think>", "<think>cut off") == ("cut off", "")


def test_think_values_as_ollama_accepts_them():
    assert [check_think(v) for v in (None, True, False, "low", "medium", "high", "max")] == \
        [None, True, False, "low", "medium", "high", "max"]
    with pytest.raises(ValueError, match="invalid think value"):
        check_think("extreme")
    with pytest.raises(ValueError, match="think must be a boolean or string"):
        check_think(1)
