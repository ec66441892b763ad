"""Tool calling through the real clients (``ollama``, ``openai``) against a real server with the Gemma weights
behind Ollama's tool templates (shared/conformance/ollama-tools, read from there): the capability error, the
rendering of tools, calls and results, calls parsed from the output, and -- where the client can force a
call (OpenAI's ``tool_choice``) -- a grammar-forced call that round-trips through the tool result, streamed
and not. Greedy decoding keeps answers repeatable.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from capabilities import require_module

httpx = require_module("httpx")
ollama = require_module("ollama")
openai = require_module("openai")

# Ollama's conformance data, found as tests/core/test_prompt.py finds it; never copied here
TOOLS_DIR = Path(os.environ.get("MODELPKG_CONFORMANCE") or Path(__file__).resolve().parents[3] / "shared" /
                 "conformance") / "ollama-tools"
BASE, GROQ, COMMAND_R = "base", "groq-tools", "command-r-tools"
WEATHER = {"type": "function", "function": {
    "name": "get_current_weather", "description": "Get the current weather",
    "parameters": {"type": "object", "required": ["location", "format"], "properties": {
        "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
        "format": {"type": "string", "enum": ["celsius", "fahrenheit"]}}}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "The time in a city",
    "parameters": {"type": "object", "required": ["city"], "properties": {"city": {"type": "string"}}}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
GREEDY = {"temperature": 0, "num_predict": 48}


# command-r-plus's own template cannot be written in a Modelfile (a line of it ends with three quotes): this one
# writes calls its way (tool_name, parameters) in a few lines
COMMAND_R_STYLE = """{{- if .Tools }}Tools: {{ .Tools }}
{{ end }}{{- range .Messages }}<{{ .Role }}>{{ if .ToolCalls }}Action: ```json
[{{ range .ToolCalls }}{"tool_name": "{{ .Function.Name }}", "parameters": {{ .Function.Arguments }}}{{ end }}]
```{{ else }}{{ .Content }}{{ end }}
{{ end }}<assistant>"""


def modelfile(template: str) -> str:
    return f'TEMPLATE """{template}"""\nPARAMETER num_ctx 2048\n'


@pytest.fixture(scope="module")
def server(compat_server):
    groq = (TOOLS_DIR / "llama3-groq-tool-use.gotmpl").read_text()
    return compat_server({BASE: "PARAMETER num_ctx 2048\n", GROQ: modelfile(groq),
                          COMMAND_R: modelfile(COMMAND_R_STYLE)})


@pytest.fixture(scope="module")
def client(server):
    return ollama.Client(host=server.url, timeout=120)


@pytest.fixture(scope="module")
def oai(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", timeout=120, max_retries=0)


def rendered(server, body):
    answer = httpx.post(server.url + "/api/chat", json={**body, "_debug_render_only": True}, timeout=120)
    assert answer.status_code == 200, answer.text
    return answer.json()["debug_info"]["rendered_template"]


def test_capabilities_come_from_the_template(client):
    assert client.show(BASE).capabilities == ["completion"]
    assert client.show(GROQ).capabilities == ["completion", "tools"]


def test_a_model_without_tools_refuses_them_as_ollama_does(client, oai):
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(BASE, ASK, tools=[WEATHER])
    assert e.value.status_code == 400 and e.value.error == f"{BASE} does not support tools"
    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(model=BASE, messages=ASK, tools=[WEATHER])
    assert e.value.body["message"] == f"{BASE} does not support tools"


def test_tools_calls_and_results_render_as_ollama_renders_them(server):
    messages = json.loads((TOOLS_DIR / "messages.json").read_text())
    tools = json.loads((TOOLS_DIR / "tools.json").read_text())
    expected = (TOOLS_DIR / "llama3-groq-tool-use.out").read_text()
    # the model's own conversation goes through /api/chat as a client sends it
    assert rendered(server, {"model": GROQ, "messages": messages, "tools": tools}) == expected
    # the same conversation in OpenAI's shape (arguments as JSON strings) renders the same through the SDK's path
    openai_shape = [{**m, "tool_calls": [{**c, "function": {**c["function"],
                                                            "arguments": json.dumps(c["function"]["arguments"])}}
                                         for c in m["tool_calls"]]} if m.get("tool_calls") else m for m in messages]
    assert rendered(server, {"model": GROQ, "messages": openai_shape, "tools": tools}) == expected


def test_calls_in_the_output_are_parsed_streamed_and_not(client):
    # /api/chat has no tool_choice; a JSON schema (format) makes the 270M model write a call-shaped object,
    # which the template's format (name, arguments) recognises as a call
    shape = {"type": "object", "required": ["name", "arguments"], "properties": {
        "name": {"type": "string", "enum": ["get_current_weather"]},
        "arguments": WEATHER["function"]["parameters"]}}
    whole = client.chat(GROQ, ASK, tools=[WEATHER], format=shape, options=GREEDY)
    calls = whole.message.tool_calls
    assert calls and calls[0].function.name == "get_current_weather", whole.message
    assert set(calls[0].function.arguments) == {"location", "format"}
    assert whole.message.content == ""
    parts = list(client.chat(GROQ, ASK, tools=[WEATHER], format=shape, options=GREEDY, stream=True))
    streamed = [c for p in parts for c in (p.message.tool_calls or [])]
    assert [c.function.model_dump() for c in streamed] == [c.function.model_dump() for c in calls]
    assert "".join(p.message.content for p in parts) == "" and parts[-1].done
    raw = httpx.post(client._client.base_url.join("/api/chat"), json={
        "model": GROQ, "messages": ASK, "tools": [WEATHER], "format": shape, "options": GREEDY, "stream": False},
        timeout=120).json()
    assert raw["message"]["tool_calls"][0]["id"].startswith("call_")
    # without tools the same output is plain text
    plain = client.chat(GROQ, ASK, format=shape, options=GREEDY)
    assert not plain.message.tool_calls and json.loads(plain.message.content)["name"] == "get_current_weather"


def forced_call(oai, stream: bool, **extra):
    """One OpenAI chat completion, streamed or not, as (finish_reason, message dict, usage or None)."""
    if not stream:
        done = oai.chat.completions.create(model=COMMAND_R, temperature=0, max_tokens=64, **extra)
        return done.choices[0].finish_reason, done.choices[0].message.model_dump(exclude_none=True), done.usage
    chunks = list(oai.chat.completions.create(model=COMMAND_R, temperature=0, max_tokens=64, stream=True,
                                              stream_options={"include_usage": True}, **extra))
    calls: dict[int, dict] = {}
    content = ""
    for chunk in chunks:
        for choice in chunk.choices:
            content += choice.delta.content or ""
            for t in choice.delta.tool_calls or []:
                call = calls.setdefault(t.index, {"id": t.id, "type": "function",
                                                  "function": {"name": "", "arguments": ""}})
                call["function"]["name"] += t.function.name or ""
                call["function"]["arguments"] += t.function.arguments or ""
    reason = next(c.choices[0].finish_reason for c in reversed(chunks) if c.choices)
    message = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = [calls[i] for i in sorted(calls)]
    return reason, message, chunks[-1].usage


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_forced_call_round_trips_through_the_tool_result(oai, stream):
    reason, message, usage = forced_call(oai, stream, messages=ASK, tools=[WEATHER, TIME], tool_choice="required")
    assert reason == "tool_calls", message
    call = message["tool_calls"][0]
    assert call["id"].startswith("call_") and call["type"] == "function"
    assert call["function"]["name"] in ("get_current_weather", "get_time")
    arguments = json.loads(call["function"]["arguments"])  # the grammar made it valid JSON of the tool's schema
    required = {"get_current_weather": {"location", "format"}, "get_time": {"city"}}[call["function"]["name"]]
    assert required <= set(arguments)
    history = [*ASK, message, {"role": "tool", "tool_call_id": call["id"],
                               "content": '{"temperature": 21, "unit": "celsius"}'}]
    reason, answer, second = forced_call(oai, stream, messages=history, tools=[WEATHER, TIME])
    assert reason in ("stop", "length", "tool_calls") and answer["role"] == "assistant"
    assert second.prompt_tokens > usage.prompt_tokens  # the call and its result reached the prompt


def test_a_named_function_is_the_one_called_streamed(oai):
    chosen = {"type": "function", "function": {"name": "get_time"}}
    stream = oai.chat.completions.create(model=GROQ, messages=ASK, tools=[WEATHER, TIME], tool_choice=chosen,
                                         temperature=0, max_tokens=48, stream=True)
    chunks = list(stream)
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    calls = [t for d in deltas for t in (d.tool_calls or [])]
    assert len(calls) == 1 and calls[0].index == 0 and calls[0].id.startswith("call_")
    assert calls[0].function.name == "get_time" and "city" in json.loads(calls[0].function.arguments)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert "".join(d.content or "" for d in deltas) == ""
    whole = oai.chat.completions.create(model=GROQ, messages=ASK, tools=[WEATHER, TIME], tool_choice=chosen,
                                        temperature=0, max_tokens=48)
    assert whole.choices[0].message.tool_calls[0].function.arguments == calls[0].function.arguments


def test_tool_choice_none_and_bad_choices(oai, server):
    none = oai.chat.completions.create(model=GROQ, messages=ASK, tools=[WEATHER], tool_choice="none",
                                       temperature=0, max_tokens=4)
    assert none.choices[0].finish_reason in ("stop", "length") and not none.choices[0].message.tool_calls
    with pytest.raises(openai.BadRequestError, match="not among the tools"):
        oai.chat.completions.create(model=GROQ, messages=ASK, tools=[WEATHER],
                                    tool_choice={"type": "function", "function": {"name": "nope"}})
    with pytest.raises(openai.BadRequestError, match="tools must be a list"):
        oai.chat.completions.create(model=GROQ, messages=ASK, tools=[{"type": "function"}])


def test_arguments_that_do_not_parse_are_a_clean_error(oai, client):
    broken = [*ASK, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_current_weather", "arguments": "{not json"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "21"}]
    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(model=GROQ, messages=broken, tools=[WEATHER])
    assert "arguments are not valid JSON" in e.value.body["message"] and "\n" not in e.value.body["message"]
    for calls in ([{"function": "x"}], [{"function": {"name": "f", "arguments": "[1]"}}]):  # the SDK would refuse
        answer = httpx.post(client._client.base_url.join("/api/chat"), json={
            "model": GROQ, "messages": [*ASK, {"role": "assistant", "content": "", "tool_calls": calls}],
            "tools": [WEATHER]}, timeout=120)
        assert answer.status_code == 400 and "tool" in answer.json()["error"], answer.text


def test_langchain_chat_ollama_bind_tools_and_structured_output(server):
    require_module("langchain_ollama")
    from langchain_ollama import ChatOllama, OllamaEmbeddings

    shape = {"type": "object", "required": ["name", "arguments"], "properties": {
        "name": {"type": "string", "enum": ["get_current_weather"]},
        "arguments": WEATHER["function"]["parameters"]}}
    llm = ChatOllama(model=GROQ, base_url=server.url, temperature=0, num_predict=48, format=shape)
    message = llm.bind_tools([WEATHER]).invoke("What is the weather in Paris?")
    assert message.tool_calls and message.tool_calls[0]["name"] == "get_current_weather"
    assert set(message.tool_calls[0]["args"]) == {"location", "format"}
    city = {"title": "City", "type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    structured = ChatOllama(model=GROQ, base_url=server.url, temperature=0, num_predict=32)
    answer = structured.with_structured_output(city, method="json_schema").invoke("Name the capital of France.")
    assert isinstance(answer["name"], str)
    # OllamaEmbeddings sends every option it knows, the unset ones as null (the first failure)
    vector = OllamaEmbeddings(model=BASE, base_url=server.url).embed_query("hello")
    assert len(vector) == 640
