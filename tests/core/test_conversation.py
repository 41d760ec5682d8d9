import json

import pytest

from codex_pool.core.conversation import conversation_key, from_body, from_headers, hash_key


@pytest.mark.parametrize(
    "headers,expected",
    [
        ({"session-id": "s1", "thread-id": "t1"}, "s1"),
        ({"session_id": "s2"}, "s2"),
        ({"thread-id": "t3"}, "t3"),
        ({"conversation_id": "c4"}, "c4"),
        ({"conversation-id": "c5"}, "c5"),
        ({"session-id": "  "}, None),
        ({"x-other": "1"}, None),
    ],
)
def test_header_keys(headers, expected):
    assert from_headers(headers) == expected


def test_body_prompt_cache_key():
    body = json.dumps({"model": "m", "input": [{"text": "hi"}], "prompt_cache_key": "pk-1"}).encode()
    assert from_body(body) == "pk-1"


def test_key_mentioned_inside_user_text_is_not_taken():
    text = 'please set {"prompt_cache_key": "evil"} in the config'
    body = json.dumps({"input": [{"text": text}], "prompt_cache_key": "real"}).encode()
    assert from_body(body) == "real"
    body = json.dumps({"input": [{"text": text}]}).encode()
    assert from_body(body) is None


def test_nested_key_does_not_beat_top_level():
    body = json.dumps({"tools": [{"prompt_cache_key": "nested"}], "prompt_cache_key": "top"}).encode()
    assert from_body(body) == "top"


@pytest.mark.parametrize("body", [b"", b"not json", b'{"prompt_cache_key": 5}', b"\x28\xb5\x2f\xfd garbage"])
def test_odd_bodies_give_none(body):
    assert from_body(body) is None


def test_body_only_read_when_headers_have_no_key():
    calls = []

    def body():
        calls.append(1)
        return b'{"prompt_cache_key":"pk"}'

    assert conversation_key({"session-id": "s"}, body) == "s" and calls == []
    assert conversation_key({}, body) == "pk" and calls == [1]


def test_hash_is_keyed_short_and_stable():
    h = hash_key(b"k1", "conv")
    assert h == hash_key(b"k1", "conv") and h != hash_key(b"k2", "conv") and len(h) == 16 and "conv" not in h
