"""Bodies every client can send: a non-Codex Responses body made into one the backend accepts."""

import pytest

from codex_pool.core.client_bodies import (
    DEFAULT_INSTRUCTIONS,
    DROPPED,
    BodyRefused,
    is_codex_client,
    normalise_responses,
    parse_json_object,
)


def dev(text, role="developer"):
    return {"type": "message", "role": role, "content": [{"type": "input_text", "text": text}]}


def user(text):
    return {"role": "user", "content": text}


@pytest.mark.parametrize("headers,codex", [
    ({"originator": "codex_exec", "user-agent": "codex_exec/0.169.0 (Debian)"}, True),
    ({"originator": "codex_cli_rs"}, True),
    ({"user-agent": "codex_vscode/1.2"}, True),
    ({"originator": "opencode", "user-agent": "ai-sdk/openai/2.0"}, False),
    ({"user-agent": "OpenAI/Python 2.3.0"}, False),
    ({}, False),
])
def test_codex_is_recognised_by_originator_or_user_agent(headers, codex):
    assert is_codex_client(headers) is codex


def test_opencode_body_gets_instructions_from_its_developer_item_and_loses_what_the_backend_rejects():
    """OpenCode's @ai-sdk/openai body (seen, 1.18.33): no instructions, a developer item, max_output_tokens."""
    body = {"model": "gpt-5.1-codex", "input": [dev("You are OpenCode."), dev("Tools: bash."), user("hi")],
            "max_output_tokens": 32000, "store": False, "stream": True, "prompt_cache_key": "ses_1",
            "temperature": 0.2, "top_p": 1, "metadata": {"a": 1}, "user": "me", "truncation": "auto",
            "safety_identifier": "x", "prompt_cache_retention": "24h", "tools": [{"type": "function", "name": "bash"}]}
    out = normalise_responses(body)
    assert out.body["instructions"] == "You are OpenCode.\n\nTools: bash."
    assert out.body["input"] == [user("hi")]
    assert out.body["store"] is False and out.body["stream"] is True and out.client_stream is True
    assert set(out.dropped) == {"max_output_tokens", "temperature", "top_p", "metadata", "user", "truncation",
                                "safety_identifier", "prompt_cache_retention"}
    assert out.body["prompt_cache_key"] == "ses_1" and out.body["tools"] == body["tools"]  # the rest unchanged
    assert body["input"][0] == dev("You are OpenCode.")  # the client's object is not modified


def test_given_instructions_are_kept_and_the_developer_item_stays():
    out = normalise_responses({"model": "m", "instructions": "Be terse.", "input": [dev("more"), user("x")]})
    assert out.body["instructions"] == "Be terse." and len(out.body["input"]) == 2


def test_a_string_input_becomes_a_user_message_and_default_instructions_fill_in():
    out = normalise_responses({"model": "m", "input": "hello", "store": True})
    assert out.body["input"] == [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hello"}]}]
    assert out.body["instructions"] == DEFAULT_INSTRUCTIONS
    assert out.body["store"] is False and out.client_stream is False and out.body["stream"] is True


def test_a_system_item_with_an_image_stays_in_input_as_a_developer_item():
    image = {"role": "system", "content": [{"type": "input_image", "image_url": "data:image/png;base64,AA"}]}
    out = normalise_responses({"model": "m", "input": [image, user("x")]})
    assert out.body["input"][0] == {**image, "role": "developer"} and out.body["instructions"] == DEFAULT_INSTRUCTIONS


def test_background_true_is_refused_naming_it():
    with pytest.raises(BodyRefused) as e:
        normalise_responses({"model": "m", "input": "x", "background": True})
    assert e.value.param == "background"
    assert "background" not in normalise_responses({"model": "m", "input": "x", "background": False}).body


def test_every_dropped_parameter_is_dropped():
    body = {"model": "m", "input": "x", **{name: 1 for name in DROPPED}}
    out = normalise_responses(body)
    assert not set(DROPPED) & set(out.body) and set(out.dropped) == set(DROPPED)


@pytest.mark.parametrize("data,words", [
    (b"", "empty"), (b"{oops", "not valid JSON"), (b"[1, 2]", "JSON object"), (b"\xff\xfe", "not valid JSON"),
    (b"[" * 100_000, "not valid JSON"),
])
def test_bodies_that_are_not_a_json_object_are_refused_with_a_message(data, words):
    with pytest.raises(BodyRefused) as e:
        parse_json_object(data)
    assert words in str(e.value)


def test_input_of_the_wrong_type_is_refused():
    with pytest.raises(BodyRefused) as e:
        normalise_responses({"model": "m", "input": 5})
    assert e.value.param == "input"


def test_later_system_messages_become_developer_messages():
    out = normalise_responses({"model": "m", "instructions": "I", "input": [user("x"), dev("rule", role="system")]})
    assert [i["role"] for i in out.body["input"]] == ["user", "developer"]


def test_previous_response_id_is_refused_and_priority_tier_kept():
    with pytest.raises(BodyRefused) as e:
        normalise_responses({"model": "m", "input": "x", "previous_response_id": "resp_1"})
    assert e.value.param == "previous_response_id"
    assert normalise_responses({"model": "m", "input": "x", "service_tier": "priority"}).body["service_tier"] == "priority"
    assert "service_tier" not in normalise_responses({"model": "m", "input": "x", "service_tier": "flex"}).body


def test_item_references_are_refused():
    with pytest.raises(BodyRefused) as e:
        normalise_responses({"model": "m", "input": [user("x"), {"type": "item_reference", "id": "msg_1"}]})
    assert e.value.param == "input[1]" and "store" in str(e.value)
