"""OpenAI's Responses API on ``modelpkg serve``, through the official ``openai`` SDK (``client.responses``, its
streams parsed by the SDK), against a server on loopback with Gemma 3 270M behind the example chat template.
Greedy decoding makes answers comparable: ``/v1/responses`` must give what ``/api/chat`` gives for the same
conversation.
"""

from __future__ import annotations

import json

import pytest

from capabilities import require_module
from modelpkg.core.errors import InvalidInputError
from modelpkg.server.responses import Conversations, chat_call
from serve_helpers import REQUIRED, TIME_SCHEMA, TOOL_MODELFILE, WEATHER_SCHEMA, serving

openai = require_module("openai")
httpx = require_module("httpx")

CHAT = "gemma3-chat"
QUESTION = "Name three primary colors."
# Two example turns and a JSON format make the 270M model end its turn by itself (see test_serve's format test)
SHOTS = [{"role": "user", "content": "Name a fruit as JSON."}, {"role": "assistant", "content": '{"fruit": "apple"}'},
         {"role": "user", "content": "Name an animal as JSON."}, {"role": "assistant", "content": '{"animal": "cat"}'},
         {"role": "user", "content": "Name a color as JSON."}]
ENDS = {"input": SHOTS, "max_output_tokens": 64, "temperature": 0, "text": {"format": {"type": "json_object"}}}


# ------------------------------------------------------------------------------------------------------
# the translation, without a model


def test_input_items_become_an_ollama_conversation():
    call = chat_call({"instructions": "Be brief.", "max_output_tokens": 7, "top_p": 0.5, "input": [
        {"role": "developer", "content": "dev"},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "a"},
                                                        {"type": "input_text", "text": "b"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "c"}]},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{\"x\": 1}"},
        {"type": "function_call_output", "call_id": "c1", "output": "42"},
        {"type": "reasoning", "summary": []}]}, [{"role": "user", "content": "earlier"}])
    assert call.messages == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "earlier"},
        {"role": "system", "content": "dev"}, {"role": "user", "content": "ab"},
        {"role": "assistant", "content": "c", "tool_calls": [{"id": "c1", "function": {"name": "f",
                                                                                        "arguments": {"x": 1}}}]},
        {"role": "tool", "content": "42", "tool_call_id": "c1"}]
    assert call.options == {"temperature": 1.0, "top_p": 0.5, "num_predict": 7}  # OpenAI's default temperature
    assert chat_call({"input": "q", "text": {"format": {"type": "json_schema", "name": "x",
                                                        "schema": {"type": "object"}}}}, []).format == \
        {"type": "object"}
    tools = chat_call({"input": "q", "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
                       "tool_choice": {"type": "function", "name": "f"}}, [])
    assert tools.tools == [{"type": "function", "function": {"name": "f", "description": "",
                                                             "parameters": {"type": "object"}}}]
    assert tools.tool_choice == {"type": "function", "function": {"name": "f"}}


@pytest.mark.parametrize("body", [
    {}, {"input": ""}, {"input": 3}, {"input": [{"content": "no type or role"}]},
    {"input": [{"role": "tool", "content": "x"}]}, {"input": [{"type": "mystery"}]},
    {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "data:,"}]}]},
    {"input": "q", "max_output_tokens": 0}, {"input": "q", "background": True},
    {"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{nope"}]},
])
def test_bad_requests_are_invalid_input(body):
    with pytest.raises(InvalidInputError):
        chat_call(body, [])


def test_conversations_keep_the_most_recently_used():
    kept = Conversations(2)
    for name in ("a", "b"):
        kept.keep(name, [{"role": "user", "content": name}])
    assert kept.get("a") == [{"role": "user", "content": "a"}]   # a is now the most recent
    kept.keep("c", [])
    assert kept.get("b") is None and kept.get("a") is not None and kept.get("c") == []
    kept.get("a")[0]["content"] = "changed"                      # a copy: the kept one stays
    assert kept.get("a") == [{"role": "user", "content": "a"}]


# ------------------------------------------------------------------------------------------------------
# the real server, the official SDK


@pytest.fixture(scope="module")
def served(tmp_path_factory, gemma_gguf):
    with serving(tmp_path_factory, gemma_gguf, ("gemma3-chat",)) as server:
        yield server


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=served.url + "/v1", api_key="unused", timeout=120, max_retries=0)


def ollama_chat(served, messages, num_predict):
    answer = httpx.post(served.url + "/api/chat", timeout=120, json={
        "model": CHAT, "messages": messages, "stream": False,
        "options": {"temperature": 0, "num_predict": num_predict}}).json()
    return answer["message"]["content"], answer


def test_create_answers_as_the_chat_endpoint_does(client, served):
    response = client.responses.create(model=CHAT, input=QUESTION, instructions="Answer briefly.",
                                       max_output_tokens=12, temperature=0)
    text, chat = ollama_chat(served, [{"role": "system", "content": "Answer briefly."},
                                      {"role": "user", "content": QUESTION}], 12)
    assert response.object == "response" and response.id.startswith("resp_") and response.model == CHAT
    assert response.output_text == text and text
    assert [item.type for item in response.output] == ["message"]
    assert response.output[0].role == "assistant" and response.output[0].content[0].type == "output_text"
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert response.instructions == "Answer briefly." and response.max_output_tokens == 12
    assert response.usage.output_tokens == chat["eval_count"] == 12
    assert response.usage.input_tokens == chat["prompt_eval_count"]
    assert response.usage.total_tokens == response.usage.input_tokens + 12


def test_an_answer_that_ends_by_itself_is_completed(client):
    response = client.responses.create(model=CHAT, **ENDS)
    assert response.status == "completed" and response.incomplete_details is None
    assert 0 < response.usage.output_tokens < 64
    assert isinstance(json.loads(response.output_text)["color"], str)


def test_input_items_equal_instructions_and_text(client):
    as_text = client.responses.create(model=CHAT, instructions="Reply in French.", input=QUESTION,
                                      max_output_tokens=6, temperature=0)
    as_items = client.responses.create(model=CHAT, max_output_tokens=6, temperature=0, input=[
        {"role": "developer", "content": "Reply in French."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": QUESTION}]}])
    assert as_items.output_text == as_text.output_text
    assert as_items.usage.input_tokens == as_text.usage.input_tokens


def test_stream_parsed_by_the_sdk(client):
    whole = client.responses.create(model=CHAT, input=QUESTION, max_output_tokens=10, temperature=0)
    kinds, deltas = [], []
    with client.responses.stream(model=CHAT, input=QUESTION, max_output_tokens=10, temperature=0) as stream:
        for event in stream:
            kinds.append(event.type)
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        final = stream.get_final_response()
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    assert set(kinds[4:-4]) == {"response.output_text.delta"} and len(deltas) > 1
    assert "".join(deltas) == whole.output_text == final.output_text
    assert final.usage.output_tokens == 10 and final.status == "incomplete"


def test_raw_stream_events_are_numbered_and_end_completed(client):
    events = list(client.responses.create(model=CHAT, **ENDS, stream=True))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].type == "response.created" and events[0].response.status == "in_progress"
    assert events[-1].type == "response.completed" and events[-1].response.status == "completed"
    done = next(e for e in events if e.type == "response.output_text.done")
    assert events[-1].response.output_text == done.text


def test_previous_response_id_continues_the_conversation(client, served):
    first = client.responses.create(model=CHAT, input="My name is Ada.", max_output_tokens=8, temperature=0)
    second = client.responses.create(model=CHAT, previous_response_id=first.id, input="What is my name?",
                                     max_output_tokens=8, temperature=0)
    text, chat = ollama_chat(served, [{"role": "user", "content": "My name is Ada."},
                                      {"role": "assistant", "content": first.output_text},
                                      {"role": "user", "content": "What is my name?"}], 8)
    assert second.output_text == text and second.previous_response_id == first.id
    assert second.usage.input_tokens == chat["prompt_eval_count"] > first.usage.input_tokens
    third = client.responses.create(model=CHAT, previous_response_id=second.id, input="Thanks.",
                                    max_output_tokens=2, temperature=0)
    assert third.usage.input_tokens > second.usage.input_tokens  # the whole chain, not just the last turn


def test_unknown_or_unstored_previous_responses_are_refused(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=CHAT, previous_response_id="resp_nope", input="hi", max_output_tokens=2)
    assert e.value.code == "previous_response_not_found" and "resp_nope" in e.value.message
    unstored = client.responses.create(model=CHAT, input="hi", max_output_tokens=2, temperature=0, store=False)
    assert unstored.store is False
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model=CHAT, previous_response_id=unstored.id, input="hi", max_output_tokens=2)


def test_json_schema_format(client):
    schema = {"type": "object", "properties": {"count": {"type": "integer"}}, "required": ["count"]}
    response = client.responses.create(model=CHAT, input="How many primary colors are there?", temperature=0,
                                       max_output_tokens=40, text={"format": {"type": "json_schema",
                                                                              "name": "answer", "schema": schema}})
    assert isinstance(json.loads(response.output_text)["count"], int)


def test_errors(client, served):
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="no-such-model", input="hi")
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=CHAT, input="hi", tools=[{"type": "function", "name": "f",
                                                                "parameters": {"type": "object"}}])
    assert "does not support tools" in e.value.message
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model=CHAT, input=[{"type": "function_call_output", "call_id": "c", "output": "1"}])
    bad = httpx.post(served.url + "/v1/responses", content=b"{")
    assert bad.status_code == 400 and set(bad.json()["error"]) >= {"message", "type", "code"}


# ------------------------------------------------------------------------------------------------------
# tools: the Gemma weights behind a TEMPLATE that takes them; calls forced by tool_choice's grammar

TOOLS = "gemma-tools"
FUNCTIONS = [{"type": "function", "name": "get_current_weather", "description": "Get the current weather",
              "parameters": WEATHER_SCHEMA},
             {"type": "function", "name": "get_time", "description": "The time in a city", "parameters": TIME_SCHEMA}]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def tool_server(compat_server):
    return compat_server({TOOLS: TOOL_MODELFILE})


@pytest.fixture(scope="module")
def tool_client(tool_server):
    return openai.OpenAI(base_url=tool_server.url + "/v1", api_key="unused", timeout=120, max_retries=0)


def respond(client, stream: bool, **kwargs):
    """One response, whole or streamed (then assembled by the SDK's ``responses.stream`` helper)."""
    kwargs = {"model": TOOLS, "temperature": 0, "max_output_tokens": 64, **kwargs}
    if not stream:
        return client.responses.create(**kwargs)
    with client.responses.stream(**kwargs) as events:
        return events.get_final_response()


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_forced_function_call_round_trips_through_its_output(tool_client, stream):
    first = respond(tool_client, stream, input=ASK, tools=FUNCTIONS, tool_choice="required")
    assert [o.type for o in first.output] == ["function_call"], first.output  # no text item for a call
    call = first.output[0]
    assert call.name in REQUIRED and call.call_id.startswith("call_") and call.status == "completed"
    assert REQUIRED[call.name] <= set(json.loads(call.arguments))  # the grammar made it the tool's schema
    assert first.status == "completed"
    result = {"type": "function_call_output", "call_id": call.call_id, "output": "21 degrees celsius"}
    items = [*ASK, call.model_dump(exclude_none=True), result]
    second = respond(tool_client, stream, input=items, tools=FUNCTIONS)
    assert second.output and second.usage.input_tokens > first.usage.input_tokens  # call and result in the prompt
    # the stored response holds the call: its id continues the conversation with only the result sent
    again = respond(tool_client, stream, previous_response_id=first.id, input=[result], tools=FUNCTIONS)
    assert again.usage.input_tokens == second.usage.input_tokens


def test_a_named_function_streams_its_call_events(tool_server, tool_client):
    with httpx.stream("POST", tool_server.url + "/v1/responses", timeout=120, json={
            "model": TOOLS, "input": ASK, "tools": FUNCTIONS, "temperature": 0, "max_output_tokens": 64,
            "tool_choice": {"type": "function", "name": "get_time"}, "stream": True}) as streamed:
        events = [json.loads(line[6:]) for line in streamed.iter_lines() if line.startswith("data: ")]
    kinds = [e["type"] for e in events]
    assert kinds == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.function_call_arguments.delta", "response.function_call_arguments.done",
                     "response.output_item.done", "response.completed"], kinds
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    added, delta, done, item_done = events[2:6]
    assert added["item"]["type"] == "function_call" and added["item"]["arguments"] == ""
    assert added["item"]["name"] == "get_time" and delta["item_id"] == added["item"]["id"]
    assert done["arguments"] == delta["delta"] == item_done["item"]["arguments"]
    assert "city" in json.loads(done["arguments"])
    assert events[-1]["response"]["output"] == [item_done["item"]]
    whole = tool_client.responses.create(model=TOOLS, input=ASK, tools=FUNCTIONS, temperature=0, max_output_tokens=64,
                                         tool_choice={"type": "function", "name": "get_time"})
    assert [(o.name, o.arguments) for o in whole.output] == [("get_time", done["arguments"])]


def test_tool_choice_none_and_bad_tool_requests(tool_client):
    plain = tool_client.responses.create(model=TOOLS, input=ASK, tools=FUNCTIONS, tool_choice="none",
                                         temperature=0, max_output_tokens=4)
    assert [o.type for o in plain.output] == ["message"]
    with pytest.raises(openai.BadRequestError, match="not among the tools"):
        tool_client.responses.create(model=TOOLS, input=ASK, tools=FUNCTIONS,
                                     tool_choice={"type": "function", "name": "nope"})
    with pytest.raises(openai.BadRequestError, match="no tool call with id"):  # an output without its call
        tool_client.responses.create(model=TOOLS, input=[{"type": "function_call_output", "call_id": "c",
                                                           "output": "1"}])
