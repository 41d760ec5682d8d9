"""Tests for codex_pool.core.turn: Usage parsing and the per-turn event observer."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from codex_pool.core.turn import MAX_RATE_LIMIT_EVENTS, TurnObserver, Usage, is_delta_event

FULL_USAGE = {
    "input_tokens": 1200,
    "input_tokens_details": {"cached_tokens": 1024},
    "output_tokens": 300,
    "output_tokens_details": {"reasoning_tokens": 128},
    "total_tokens": 1500,
}

RATE_LIMITS = {
    "type": "codex.rate_limits",
    "rate_limits": {
        "primary": {"used_percent": 42.0, "window_minutes": 300, "reset_at": 1795255894},
        "secondary": {"used_percent": 7.5, "window_minutes": 10080, "reset_at": 1795800000},
    },
    "credits": {"has_credits": False, "unlimited": False, "balance": "0"},
}


def codex_turn_events() -> list[dict[str, Any]]:
    """A realistic Codex turn, as decoded JSON events."""
    msg = {"type": "message", "id": "msg_1", "role": "assistant", "content": []}
    return [
        {"type": "response.created", "response": {"id": "resp_abc", "model": "gpt-5-codex", "status": "in_progress"}},
        {"type": "response.in_progress", "response": {"id": "resp_abc"}},
        {"type": "response.output_item.added", "output_index": 0, "item": msg},
        {"type": "response.output_text.delta", "output_index": 0, "delta": "Hel"},
        {"type": "response.output_text.delta", "output_index": 0, "delta": "lo"},
        {"type": "response.output_text.delta", "output_index": 0, "delta": "!"},
        {"type": "response.output_item.done", "output_index": 0,
         "item": {**msg, "content": [{"type": "output_text", "text": "Hello!"}]}},
        RATE_LIMITS,
        {"type": "response.completed",
         "response": {"id": "resp_abc", "model": "gpt-5-codex", "status": "completed", "usage": FULL_USAGE}},
    ]


# --- Usage ---------------------------------------------------------------------------

@pytest.mark.parametrize(
    "obj, expected",
    [
        (FULL_USAGE, Usage(1200, 1024, 300, 128, 1500)),
        ({"input_tokens": 10, "output_tokens": 5, "total_tokens": 15}, Usage(10, 0, 5, 0, 15)),
        ({"input_tokens": 10, "output_tokens": 5}, Usage(10, 0, 5, 0, 15)),
        ({"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}, Usage(0, 0, 0, 0, 0)),
        # details that are not objects or hold junk count as 0
        ({"input_tokens": 3, "output_tokens": 4, "input_tokens_details": None,
          "output_tokens_details": {"reasoning_tokens": "7"}}, Usage(3, 0, 4, 0, 7)),
        ({"input_tokens": 3, "output_tokens": 4, "input_tokens_details": {"cached_tokens": -1}},
         Usage(3, 0, 4, 0, 7)),
        ({"input_tokens": 3, "output_tokens": 4, "input_tokens_details": {}}, Usage(3, 0, 4, 0, 7)),
        # the three plain counts must be non-negative ints
        ({"input_tokens": True, "output_tokens": 5, "total_tokens": 6}, None),
        ({"input_tokens": 1, "output_tokens": False, "total_tokens": 1}, None),
        ({"input_tokens": 1, "output_tokens": 2, "total_tokens": True}, None),
        ({"input_tokens": -1, "output_tokens": 5, "total_tokens": 4}, None),
        ({"input_tokens": 1.0, "output_tokens": 5, "total_tokens": 6}, None),
        ({"input_tokens": "1", "output_tokens": 5, "total_tokens": 6}, None),
        ({"input_tokens": 1, "output_tokens": 5, "total_tokens": None}, None),
        ({"output_tokens": 5, "total_tokens": 5}, None),
        ({"input_tokens": 5}, None),
        ({}, None),
        (None, None),
        ([1, 2, 3], None),
        ("usage", None),
    ],
)
def test_usage_from_response_usage(obj: object, expected: Usage | None) -> None:
    assert Usage.from_response_usage(obj) == expected


def test_usage_to_dict() -> None:
    assert Usage(1, 2, 3, 4, 5).to_dict() == {
        "input_tokens": 1,
        "cached_input_tokens": 2,
        "output_tokens": 3,
        "reasoning_tokens": 4,
        "total_tokens": 5,
    }


def test_usage_is_frozen() -> None:
    u = Usage(1, 0, 1, 0, 2)
    with pytest.raises(AttributeError):
        u.input_tokens = 5  # type: ignore[misc]


@given(
    st.integers(min_value=0, max_value=2**40),
    st.integers(min_value=0, max_value=2**40),
    st.integers(min_value=0, max_value=2**40),
    st.integers(min_value=0, max_value=2**40),
)
def test_usage_roundtrip(inp: int, cached: int, out: int, reasoning: int) -> None:
    obj = {
        "input_tokens": inp,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": out,
        "output_tokens_details": {"reasoning_tokens": reasoning},
    }
    usage = Usage.from_response_usage(obj)
    assert usage == Usage(inp, cached, out, reasoning, inp + out)


# --- TurnObserver ----------------------------------------------------------------------

def test_observer_realistic_turn() -> None:
    obs = TurnObserver()
    for ev in codex_turn_events():
        obs.observe(ev)
    assert obs.response_id == "resp_abc"
    assert obs.model == "gpt-5-codex"
    assert obs.completed is True
    assert obs.terminal is True
    assert obs.failed is None
    assert obs.incomplete is False
    assert obs.error is None
    assert obs.usage == Usage(1200, 1024, 300, 128, 1500)
    assert obs.rate_limits == [RATE_LIMITS]
    assert obs.latest_rate_limits == RATE_LIMITS
    assert obs.events == 9
    assert obs.deltas == 3
    assert obs.garbled == 0


def test_observer_summary_is_json_friendly() -> None:
    obs = TurnObserver()
    for ev in codex_turn_events():
        obs.observe(ev)
    summary = json.loads(json.dumps(obs.summary()))
    assert summary == {
        "response_id": "resp_abc",
        "model": "gpt-5-codex",
        "completed": True,
        "failed": None,
        "incomplete": False,
        "incomplete_reason": None,
        "error": None,
        "terminal": True,
        "usage": {"input_tokens": 1200, "cached_input_tokens": 1024, "output_tokens": 300,
                  "reasoning_tokens": 128, "total_tokens": 1500},
        "rate_limits": RATE_LIMITS,
        "events": 9,
        "deltas": 3,
        "garbled": 0,
    }


def test_observer_fresh_state() -> None:
    obs = TurnObserver()
    assert obs.terminal is False
    assert obs.summary()["usage"] is None
    assert obs.summary()["rate_limits"] is None
    assert (obs.events, obs.garbled, obs.deltas) == (0, 0, 0)


def test_observer_response_failed() -> None:
    obs = TurnObserver()
    obs.observe({"type": "response.created", "response": {"id": "resp_f"}})
    err = {"code": "rate_limit_exceeded", "message": "Rate limit reached. Please try again in 11.054s."}
    obs.observe({"type": "response.failed", "response": {"id": "resp_f", "status": "failed", "error": err}})
    assert obs.failed == err
    assert obs.completed is False
    assert obs.usage is None
    assert obs.terminal is True
    assert obs.response_id == "resp_f"
    assert obs.summary()["failed"] == err


@pytest.mark.parametrize(
    "response",
    [{"id": "r"}, {"id": "r", "error": None}, {"id": "r", "error": "boom"}, None, "nope"],
)
def test_observer_response_failed_without_error_object(response: object) -> None:
    obs = TurnObserver()
    obs.observe({"type": "response.failed", "response": response})
    assert obs.failed == {}
    assert obs.terminal is True


@pytest.mark.parametrize(
    "response, reason",
    [
        ({"id": "r", "status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}},
         "max_output_tokens"),
        ({"id": "r", "incomplete_details": {"reason": "content_filter"}}, "content_filter"),
        ({"id": "r", "incomplete_details": None}, None),
        ({"id": "r", "incomplete_details": {"reason": 3}}, None),
        ({"id": "r"}, None),
    ],
)
def test_observer_response_incomplete(response: dict[str, Any], reason: str | None) -> None:
    obs = TurnObserver()
    obs.observe({"type": "response.incomplete", "response": response})
    assert obs.incomplete is True
    assert obs.incomplete_reason == reason
    assert obs.terminal is True
    assert obs.completed is False


def test_observer_websocket_error_frame() -> None:
    frame = {
        "type": "error",
        "status": 429,
        "error": {"type": "usage_limit_reached", "message": "The usage limit has been reached",
                  "plan_type": "plus", "resets_at": 1795255894},
    }
    obs = TurnObserver()
    obs.observe({"type": "response.created", "response": {"id": "resp_ws"}})
    obs.observe(frame)
    assert obs.error == frame
    assert obs.error["status"] == 429
    assert obs.terminal is True
    assert obs.completed is False
    assert obs.summary()["error"] == frame


def test_observer_keeps_last_rate_limits_only() -> None:
    obs = TurnObserver()
    frames = [{"type": "codex.rate_limits", "rate_limits": {"primary": {"used_percent": i}}}
              for i in range(MAX_RATE_LIMIT_EVENTS + 5)]
    for f in frames:
        obs.observe(f)
    assert MAX_RATE_LIMIT_EVENTS == 8
    assert obs.rate_limits == frames[-8:]
    assert obs.latest_rate_limits is frames[-1]
    assert obs.terminal is False


@pytest.mark.parametrize("junk", [None, 3, "text", b"bytes", [1, 2], 1.5, True])
def test_observer_counts_non_dicts_as_garbled(junk: object) -> None:
    obs = TurnObserver()
    obs.observe(junk)
    assert obs.garbled == 1
    assert obs.events == 0


@pytest.mark.parametrize(
    "event",
    [
        {"type": "response.output_item.added", "item": {}},
        {"type": "response.reasoning_summary_part.added"},
        {"type": "something.new"},
        {"type": 7},
        {"no": "type"},
        {"type": "response.created", "response": {"id": 5, "model": ["x"]}},
        {"type": "response.completed", "response": {"id": "r"}},  # completed without usage
    ],
)
def test_observer_tolerates_odd_events(event: dict[str, Any]) -> None:
    obs = TurnObserver()
    obs.observe(event)
    assert obs.events == 1
    assert obs.garbled == 0
    assert obs.usage is None
    assert obs.response_id in (None, "r")
    assert obs.model is None


def test_observer_does_not_retain_deltas() -> None:
    obs = TurnObserver()
    big = "x" * 100_000
    for _ in range(50):
        obs.observe({"type": "response.output_text.delta", "delta": big})
    assert obs.deltas == 50
    assert obs.events == 50
    # nothing kept holds the delta text
    assert big not in json.dumps(obs.summary())
    assert obs.rate_limits == []


@pytest.mark.parametrize(
    "data, event_type, expected",
    [
        ('{"type":"response.output_text.delta","delta":"x"}', None, True),
        ('{"type": "response.reasoning_summary_text.delta", "delta": "x"}', None, True),
        ('{ "type" : "response.function_call_arguments.delta"}', None, True),
        (b'{"type":"response.output_text.delta","delta":"x"}', None, True),
        ('{"type":"response.completed","response":{}}', None, False),
        ('{"delta":"x","type":"response.output_text.delta"}', None, False),  # type not first: decoded
        ('{"type":"response.output_text.done"}', None, False),
        ("[DONE]", None, False),
        ("", None, False),
        ("anything", "response.output_text.delta", True),
        ('{"type":"response.output_text.delta"}', "response.completed", False),
    ],
)
def test_is_delta_event(data: str | bytes, event_type: str | None, expected: bool) -> None:
    assert is_delta_event(data, event_type) is expected


@pytest.mark.parametrize(
    "data, event_type, counts",
    # counts = (events, deltas, garbled)
    [
        ('{"type":"response.output_text.delta","delta":"x"}', None, (1, 1, 0)),
        ("{not json", "response.output_text.delta", (1, 1, 0)),  # skipped, never decoded
        ("{not json", "response.completed", (0, 0, 1)),
        ("{not json", None, (0, 0, 1)),
        ("[DONE]", None, (0, 0, 0)),
        ('"a string"', None, (0, 0, 1)),
        ("[" * 100_000, None, (0, 0, 1)),  # deep nesting must not escape as RecursionError
        (b'{"type":"response.created","response":{"id":"r"}}', None, (1, 0, 0)),
        (b"\xff\xfe", None, (0, 0, 1)),
    ],
)
def test_observe_json_counts(data: str | bytes, event_type: str | None, counts: tuple[int, int, int]) -> None:
    obs = TurnObserver()
    obs.observe_json(data, event_type)
    assert (obs.events, obs.deltas, obs.garbled) == counts


def test_observe_json_uses_event_field_when_type_missing() -> None:
    obs = TurnObserver()
    obs.observe_json('{"response":{"id":"r1","usage":{"input_tokens":2,"output_tokens":3}}}',
                     "response.completed")
    assert obs.completed is True
    assert obs.response_id == "r1"
    assert obs.usage == Usage(2, 0, 3, 0, 5)


def test_observe_json_matches_observe() -> None:
    a, b = TurnObserver(), TurnObserver()
    for ev in codex_turn_events():
        a.observe(ev)
        b.observe_json(json.dumps(ev))
    assert a.summary() == b.summary()


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=8,
)
EVENT_TYPES = st.sampled_from(
    ["response.created", "response.completed", "response.failed", "response.incomplete",
     "codex.rate_limits", "error", "response.output_text.delta", "other"]
)


@given(st.lists(JSON | st.builds(lambda t, r, e: {"type": t, "response": r, **e},
                                 EVENT_TYPES, JSON, st.dictionaries(st.text(), JSON, max_size=3)),
                max_size=10))
def test_observer_never_raises(events: list[object]) -> None:
    obs = TurnObserver()
    for ev in events:
        obs.observe(ev)
        obs.observe_json(json.dumps(ev))
    assert obs.events + obs.garbled == 2 * len(events)
    assert len(obs.rate_limits) <= MAX_RATE_LIMIT_EVENTS
    json.dumps(obs.summary())
