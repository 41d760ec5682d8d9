"""Chat Completions → Responses: every row of the translation table in core/chat_request.py."""

import pytest

from codex_pool.core.chat_request import DROPPED, KEY_PREFIX, HANDLED, translate
from codex_pool.core.client_bodies import DEFAULT_INSTRUCTIONS, BodyRefused

TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather",
                                         "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                                         "strict": True}}


def chat(*messages, **extra):
    return {"model": "gpt-5.1-codex", "messages": list(messages), **extra}


def test_opencode_compatible_request_is_translated():
    """The shape OpenCode's @ai-sdk/openai-compatible sends (seen, 1.18.33)."""
    out = translate(chat({"role": "system", "content": "You are OpenCode."}, {"role": "user", "content": "hi"},
                         max_tokens=32000, reasoning_effort="high", tools=[TOOL], stream=True,
                         stream_options={"include_usage": True}, temperature=0.5))
    body = out.body
    assert body["instructions"] == "You are OpenCode."
    assert body["input"] == [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}]
    assert body["tools"] == [{"type": "function", "name": "get_weather", "description": "Weather",
                              "parameters": TOOL["function"]["parameters"], "strict": True}]
    assert body["reasoning"] == {"effort": "high"} and body["store"] is False and body["stream"] is True
    assert "max_tokens" not in body and "temperature" not in body
    assert out.stream and out.include_usage and set(out.dropped) == {"max_tokens", "temperature"}


def test_a_tool_round_trip_becomes_function_call_items():
    out = translate(chat(
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ))
    assert out.body["input"][1:] == [
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Oslo"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
    ]


def test_images_text_parts_and_assistant_text():
    out = translate(chat({"role": "user", "content": [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR", "detail": "low"}}]},
        {"role": "assistant", "content": "a cat"}, {"role": "developer", "content": "later rule"}))
    first, answer, later = out.body["input"]
    assert first["content"] == [{"type": "input_text", "text": "what is this"},
                                {"type": "input_image", "image_url": "data:image/png;base64,iVBOR", "detail": "low"}]
    assert answer == {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "a cat"}]}
    assert later["role"] == "developer"  # only the leading system messages become instructions
    assert out.body["instructions"] == DEFAULT_INSTRUCTIONS


@pytest.mark.parametrize("given,expected", [
    ("auto", "auto"), ("none", "none"), ("required", "required"),
    ({"type": "function", "function": {"name": "f"}}, {"type": "function", "name": "f"}),
])
def test_tool_choice(given, expected):
    assert translate(chat({"role": "user", "content": "x"}, tool_choice=given, tools=[TOOL])).body["tool_choice"] == expected


def test_legacy_functions_become_tools():
    out = translate(chat({"role": "user", "content": "x"}, functions=[TOOL["function"]], function_call={"name": "get_weather"}))
    assert out.body["tools"][0]["name"] == "get_weather"
    assert out.body["tool_choice"] == {"type": "function", "name": "get_weather"}


def test_response_formats():
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    out = translate(chat({"role": "user", "content": "x"}, verbosity="low", response_format={
        "type": "json_schema", "json_schema": {"name": "thing", "schema": schema, "strict": True}}))
    assert out.body["text"] == {"format": {"type": "json_schema", "name": "thing", "schema": schema, "strict": True},
                                "verbosity": "low"}
    assert translate(chat({"role": "user", "content": "x"}, response_format={"type": "json_object"})).body["text"] == {
        "format": {"type": "json_object"}}
    assert "text" not in translate(chat({"role": "user", "content": "x"}, response_format={"type": "text"})).body


@pytest.mark.parametrize("doc,param", [
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 2}, "n"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "modalities": ["text", "audio"]}, "audio"),
    ({"model": "m", "messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
     "messages[0].content[0]"),
    ({"messages": [{"role": "user", "content": "x"}]}, "model"),
    ({"model": "m", "messages": []}, "messages"),
    ({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ({"model": "m", "messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "retrieval"}]}, "tools[0]"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "tool_choice": "sometimes"}, "tool_choice"),
])
def test_what_cannot_be_served_is_refused_naming_the_parameter(doc, param):
    with pytest.raises(BodyRefused) as e:
        translate(doc)
    assert e.value.param == param


def test_n_one_and_every_dropped_parameter_are_dropped():
    doc = chat({"role": "user", "content": "x"}, **{name: 1 for name in DROPPED})
    out = translate(doc)
    assert not set(DROPPED) & (set(out.body) - {"store"}) and set(out.dropped) == set(DROPPED)
    assert not set(DROPPED) & HANDLED


def test_the_conversation_key_is_stable_as_the_conversation_grows():
    first = translate(chat({"role": "system", "content": "S"}, {"role": "user", "content": "hello"}))
    later = translate(chat({"role": "system", "content": "S"}, {"role": "user", "content": "hello"},
                           {"role": "assistant", "content": "hi"}, {"role": "user", "content": "more"}))
    other = translate(chat({"role": "system", "content": "S"}, {"role": "user", "content": "different"}))
    key = first.body["prompt_cache_key"]
    assert key.startswith(KEY_PREFIX) and key == later.body["prompt_cache_key"] != other.body["prompt_cache_key"]


def test_the_conversation_key_prefers_prompt_cache_key_then_user():
    assert translate(chat({"role": "user", "content": "x"}, prompt_cache_key="k", user="u")).body["prompt_cache_key"] == "k"
    out = translate(chat({"role": "user", "content": "x"}, user="user-1234"))
    key = out.body["prompt_cache_key"]
    assert key.startswith(KEY_PREFIX) and "user-1234" not in key and "user" not in out.body
    assert key == translate(chat({"role": "user", "content": "other"}, user="user-1234")).body["prompt_cache_key"]


def test_the_readme_tables_list_every_dropped_parameter_with_its_reason():
    """One place for each rule: the README's tables are the code's tables."""
    from pathlib import Path

    from codex_pool.core import client_bodies
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for table in (client_bodies.DROPPED, DROPPED):
        for name, why in table.items():
            assert f"| `{name}` | {why} |" in readme, f"README: no row for {name} ({why})"
