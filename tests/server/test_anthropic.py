"""Anthropic's Messages API on ``modelpkg serve``, through the official ``anthropic`` SDK (its streams parsed
by the SDK), against a server on loopback with Gemma 3 270M behind the example chat template. Greedy decoding
makes the answers comparable across endpoints: ``/v1/messages`` must give what ``/api/chat`` gives for the same
conversation and options.
"""

from __future__ import annotations

import json

import pytest

from capabilities import require_module
from modelpkg.core.errors import InvalidInputError
from modelpkg.runtime.runner import Result
from modelpkg.server.anthropic import chat_call, stop_reason
from serve_helpers import REQUIRED, TIME_SCHEMA, TOOL_MODELFILE, WEATHER_SCHEMA, serving

anthropic = require_module("anthropic")
httpx = require_module("httpx")

CHAT = "gemma3-chat"
QUESTION = [{"role": "user", "content": "Name three primary colors."}]
# today's SDK no longer has temperature/top_k/top_p arguments (Anthropic dropped them); the API still takes them
GREEDY = {"extra_body": {"temperature": 0}}


# ------------------------------------------------------------------------------------------------------
# the translation, without a model


def test_system_and_blocks_become_an_ollama_conversation():
    call = chat_call({"model": "m", "max_tokens": 5, "system": [{"type": "text", "text": "Be "},
                                                                {"type": "text", "text": "brief."}],
                      "messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
                                                                {"type": "text", "text": "b"}]},
                                   {"role": "assistant", "content": "c"}],
                      "temperature": 0, "top_k": 3, "top_p": 0.5, "stop_sequences": ["x", "y"]})
    assert call.messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "ab"},
                             {"role": "assistant", "content": "c"}]
    assert call.options == {"num_predict": 5, "temperature": 0.0, "top_k": 3, "top_p": 0.5, "stop": ["x", "y"]}


def test_tool_blocks_are_translated_for_the_chat_call():
    call = chat_call({"model": "m", "max_tokens": 5, "tool_choice": {"type": "tool", "name": "f"},
                      "tools": [{"name": "f", "description": "d", "input_schema": {"type": "object"}}],
                      "messages": [
                          {"role": "user", "content": "weather?"},
                          {"role": "assistant", "content": [{"type": "text", "text": "let me see"},
                                                            {"type": "tool_use", "id": "t1", "name": "f",
                                                             "input": {"city": "Paris"}}]},
                          {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1",
                                                        "content": [{"type": "text", "text": "sunny"}]},
                                                       {"type": "text", "text": "and?"}]}]})
    assert call.messages[1] == {"role": "assistant", "content": "let me see", "tool_calls": [
        {"id": "t1", "function": {"name": "f", "arguments": {"city": "Paris"}}}]}
    assert call.messages[2:] == [{"role": "tool", "content": "sunny", "tool_call_id": "t1"},
                                 {"role": "user", "content": "and?"}]
    assert call.tools == [{"type": "function", "function": {"name": "f", "description": "d",
                                                            "parameters": {"type": "object"}}}]
    assert call.tool_choice == {"type": "function", "function": {"name": "f"}}


@pytest.mark.parametrize("body", [
    {"messages": QUESTION},                                        # no max_tokens
    {"max_tokens": 0, "messages": QUESTION},
    {"max_tokens": 5, "messages": []},
    {"max_tokens": 5, "messages": [{"role": "system", "content": "x"}]},
    {"max_tokens": 5, "messages": QUESTION, "system": 3},
    {"max_tokens": 5, "messages": QUESTION, "stop_sequences": "x"},
    {"max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]},
    {"max_tokens": 5, "messages": QUESTION, "thinking": {"type": "enabled", "budget_tokens": 1024}},
])
def test_bad_requests_are_invalid_input(body):
    with pytest.raises(InvalidInputError):
        chat_call({"model": "m", **body})


def test_stop_reasons():
    assert stop_reason(Result(done_reason="length")) == ("max_tokens", None)
    assert stop_reason(Result(done_reason="stop")) == ("end_turn", None)
    assert stop_reason(Result(done_reason="stop", stop_sequence="\n")) == ("stop_sequence", "\n")


# ------------------------------------------------------------------------------------------------------
# the real server, the official SDK


@pytest.fixture(scope="module")
def served(tmp_path_factory, gemma_gguf):
    with serving(tmp_path_factory, gemma_gguf, ("gemma3-chat",)) as server:
        yield server


@pytest.fixture(scope="module")
def client(served):
    return anthropic.Anthropic(base_url=served.url, api_key="unused", timeout=120, max_retries=0)


def ollama_chat(served, messages, options):
    answer = httpx.post(served.url + "/api/chat", timeout=120, json={
        "model": CHAT, "messages": messages, "options": options, "stream": False}).json()
    return answer["message"]["content"], answer


def test_messages_answer_as_the_chat_endpoint_does(client, served):
    message = client.messages.create(model=CHAT, max_tokens=12, **GREEDY, messages=QUESTION,
                                     system="Answer briefly.")
    text, chat = ollama_chat(served, [{"role": "system", "content": "Answer briefly."}, *QUESTION],
                             {"temperature": 0, "num_predict": 12})
    assert message.type == "message" and message.role == "assistant" and message.model == CHAT
    assert message.id.startswith("msg_")
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == text and text
    assert message.stop_reason == "max_tokens" and message.stop_sequence is None
    assert message.usage.output_tokens == chat["eval_count"] == 12
    assert message.usage.input_tokens == chat["prompt_eval_count"] > 10


def test_stream_parsed_by_the_sdk_gives_the_same_answer(client):
    whole = client.messages.create(model=CHAT, max_tokens=10, **GREEDY, messages=QUESTION)
    with client.messages.stream(model=CHAT, max_tokens=10, **GREEDY, messages=QUESTION) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) > 1 and "".join(pieces) == whole.content[0].text
    assert final.content[0].text == whole.content[0].text
    assert final.stop_reason == "max_tokens"
    assert final.usage.output_tokens == 10 and final.usage.input_tokens == whole.usage.input_tokens


def test_stream_event_sequence(served):
    events = []
    with httpx.stream("POST", served.url + "/v1/messages", timeout=120, json={
            "model": CHAT, "max_tokens": 4, "temperature": 0, "messages": QUESTION, "stream": True}) as answer:
        assert answer.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in answer.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
                assert data["type"] == name
                events.append(data)
    kinds = [e["type"] for e in events]
    assert kinds[:3] == ["message_start", "content_block_start", "ping"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(kinds[3:-3]) == {"content_block_delta"}
    assert events[0]["message"]["usage"]["input_tokens"] > 0
    assert events[1]["content_block"] == {"type": "text", "text": ""}
    assert all(e["delta"]["type"] == "text_delta" for e in events[3:-3])
    assert events[-2]["delta"] == {"stop_reason": "max_tokens", "stop_sequence": None}
    assert events[-2]["usage"]["output_tokens"] == 4


def test_stop_sequences_end_the_answer_and_are_named(client):
    free = client.messages.create(model=CHAT, max_tokens=16, **GREEDY, messages=QUESTION).content[0].text
    words = [w for w in free.split() if len(w) > 2]
    assert len(words) >= 2, free
    stop = words[1]
    message = client.messages.create(model=CHAT, max_tokens=16, **GREEDY, messages=QUESTION,
                                     stop_sequences=["no such text", stop])
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == stop
    assert message.content[0].text == free[:free.index(stop)]
    with client.messages.stream(model=CHAT, max_tokens=16, **GREEDY, messages=QUESTION,
                                stop_sequences=[stop]) as stream:
        assert "".join(stream.text_stream) == free[:free.index(stop)]
        final = stream.get_final_message()
    assert final.stop_reason == "stop_sequence" and final.stop_sequence == stop


def test_system_blocks_equal_a_system_string(client):
    as_text = client.messages.create(model=CHAT, max_tokens=6, **GREEDY, messages=QUESTION,
                                     system="Reply in French.")
    as_blocks = client.messages.create(model=CHAT, max_tokens=6, **GREEDY, messages=QUESTION,
                                       system=[{"type": "text", "text": "Reply in "},
                                               {"type": "text", "text": "French."}])
    assert as_text.content[0].text == as_blocks.content[0].text
    assert as_text.usage.input_tokens == as_blocks.usage.input_tokens


def test_count_tokens_counts_the_prompt_the_model_gets(client):
    counted = client.messages.count_tokens(model=CHAT, messages=QUESTION, system="Reply in French.")
    sent = client.messages.create(model=CHAT, max_tokens=1, **GREEDY, messages=QUESTION,
                                  system="Reply in French.")
    shorter = client.messages.count_tokens(model=CHAT, messages=QUESTION, system="French.")
    assert counted.input_tokens == sent.usage.input_tokens
    assert shorter.input_tokens < counted.input_tokens


def test_errors_have_anthropics_shape(client, served):
    with pytest.raises(anthropic.NotFoundError) as e:
        client.messages.create(model="no-such-model", max_tokens=5, messages=QUESTION)
    assert e.value.body == {"type": "error", "error": {"type": "not_found_error",
                                                       "message": "model 'no-such-model' not found"}}
    for body in ({"model": CHAT, "messages": QUESTION},                 # max_tokens missing
                 b"{not json",
                 {"model": CHAT, "max_tokens": 5, "messages": QUESTION,
                  "tools": [{"name": "f", "input_schema": {"type": "object"}}]}):
        kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
        answer = httpx.post(served.url + "/v1/messages", timeout=60, **kwargs)
        assert answer.status_code == 400
        assert answer.json()["type"] == "error" and answer.json()["error"]["type"] == "invalid_request_error"
    assert "does not support tools" in answer.json()["error"]["message"]
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.create(model=CHAT, max_tokens=5, messages=QUESTION,
                               tools=[{"name": "f", "input_schema": {"type": "object"}}])
    assert e.value.body["error"]["type"] == "invalid_request_error"
    # the OpenAI endpoints keep OpenAI's shape
    assert set(httpx.post(served.url + "/v1/chat/completions", content=b"[").json()["error"]) >= {"message", "type"}


def test_x_api_key_is_the_serve_token(tmp_path, served):
    from modelpkg.server.app import App

    app = App(served.app.store, token="s3cret")
    try:
        import threading

        from modelpkg.server.http import ApiServer

        server = ApiServer(("127.0.0.1", 0), app)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        wrong = anthropic.Anthropic(base_url=server.url, api_key="nope", max_retries=0)
        with pytest.raises(anthropic.AuthenticationError) as e:
            wrong.messages.count_tokens(model="no-such-model", messages=QUESTION)
        assert e.value.body["error"]["type"] == "authentication_error"
        right = anthropic.Anthropic(base_url=server.url, api_key="s3cret", max_retries=0)
        with pytest.raises(anthropic.NotFoundError):  # past the token check: the model is what is missing
            right.messages.count_tokens(model="no-such-model", messages=QUESTION)
        bearer = anthropic.Anthropic(base_url=server.url, auth_token="s3cret", max_retries=0)
        with pytest.raises(anthropic.NotFoundError):
            bearer.messages.count_tokens(model="no-such-model", messages=QUESTION)
        server.shutdown()
        server.server_close()
    finally:
        app.close()


# ------------------------------------------------------------------------------------------------------
# tools: the Gemma weights behind a TEMPLATE that takes them; calls forced by tool_choice's grammar

TOOLS = "gemma-tools"
TOOL_DEFS = [{"name": "get_current_weather", "description": "Get the current weather",
              "input_schema": WEATHER_SCHEMA},
             {"name": "get_time", "description": "The time in a city", "input_schema": TIME_SCHEMA}]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def tool_server(compat_server):
    return compat_server({TOOLS: TOOL_MODELFILE})


@pytest.fixture(scope="module")
def tool_client(tool_server):
    return anthropic.Anthropic(base_url=tool_server.url, api_key="unused", timeout=120, max_retries=0)


def answer(client, stream: bool, **kwargs):
    """One message, whole or streamed (then assembled by the SDK's stream helper)."""
    kwargs = {"model": TOOLS, "max_tokens": 64, **GREEDY, **kwargs}
    if not stream:
        return client.messages.create(**kwargs)
    with client.messages.stream(**kwargs) as events:
        return events.get_final_message()


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_forced_tool_use_round_trips_through_the_tool_result(tool_client, stream):
    first = answer(tool_client, stream, messages=ASK, tools=TOOL_DEFS, tool_choice={"type": "any"})
    assert first.stop_reason == "tool_use", first
    uses = [b for b in first.content if b.type == "tool_use"]
    assert len(uses) == 1 and uses[0].id.startswith("toolu_") and uses[0].name in REQUIRED
    assert REQUIRED[uses[0].name] <= set(uses[0].input)  # the grammar made it an input of the tool's schema
    assert [b.type for b in first.content] == ["tool_use"]  # the call's text never shows as text
    history = [*ASK, {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": uses[0].id,
                                             "content": [{"type": "text", "text": "21 degrees celsius"}]}]}]
    second = answer(tool_client, stream, messages=history, tools=TOOL_DEFS)
    assert second.stop_reason in ("end_turn", "max_tokens", "tool_use")
    assert second.usage.input_tokens > first.usage.input_tokens  # the call and its result reached the prompt
    counted = tool_client.messages.count_tokens(model=TOOLS, messages=history, tools=TOOL_DEFS)
    assert counted.input_tokens == second.usage.input_tokens  # count_tokens renders the tools too


def test_a_named_tool_streams_as_a_tool_use_block_with_its_input(tool_server, tool_client):
    events = []
    with httpx.stream("POST", tool_server.url + "/v1/messages", timeout=120, json={
            "model": TOOLS, "max_tokens": 64, "temperature": 0, "messages": ASK, "tools": TOOL_DEFS,
            "tool_choice": {"type": "tool", "name": "get_time"}, "stream": True}) as streamed:
        events = [json.loads(line[6:]) for line in streamed.iter_lines() if line.startswith("data: ")]
    kinds = [e["type"] for e in events]
    assert kinds == ["message_start", "content_block_start", "ping", "content_block_delta", "content_block_stop",
                     "message_delta", "message_stop"], kinds
    block = events[1]["content_block"]
    assert block["type"] == "tool_use" and block["name"] == "get_time" and block["input"] == {}
    assert events[3]["delta"]["type"] == "input_json_delta"
    streamed_input = json.loads(events[3]["delta"]["partial_json"])
    assert "city" in streamed_input
    assert events[-2]["delta"]["stop_reason"] == "tool_use"
    whole = tool_client.messages.create(model=TOOLS, max_tokens=64, **GREEDY, messages=ASK, tools=TOOL_DEFS,
                                        tool_choice={"type": "tool", "name": "get_time"})
    assert [(b.type, b.name, b.input) for b in whole.content] == [("tool_use", "get_time", streamed_input)]


def test_tool_choice_none_and_bad_tool_requests(tool_client):
    plain = tool_client.messages.create(model=TOOLS, max_tokens=4, **GREEDY, messages=ASK, tools=TOOL_DEFS,
                                        tool_choice={"type": "none"})
    assert plain.stop_reason in ("end_turn", "max_tokens") and all(b.type == "text" for b in plain.content)
    with pytest.raises(anthropic.BadRequestError, match="not among the tools"):
        tool_client.messages.create(model=TOOLS, max_tokens=4, messages=ASK, tools=TOOL_DEFS,
                                    tool_choice={"type": "tool", "name": "nope"})
    with pytest.raises(anthropic.BadRequestError, match="no tool call with id"):  # a result without its call
        tool_client.messages.create(model=TOOLS, max_tokens=4, messages=[
            *ASK, {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_x", "content": "1"}]}])
