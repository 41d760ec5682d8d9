import json

from codex_pool.core import stream_view


def sse(events):
    return "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events).encode()


EVENTS = [
    {"type": "response.created", "response": {"id": "resp_1", "model": "gpt-5.1-codex"}},
    {"type": "response.reasoning_summary_text.delta", "delta": "Thinking about "},
    {"type": "response.reasoning_summary_text.delta", "delta": "it."},
    {"type": "response.output_text.delta", "item_id": "m1", "delta": "Hello "},
    {"type": "response.output_text.delta", "item_id": "m1", "delta": "world\nsecond line"},
    {"type": "response.output_item.done", "item": {"type": "function_call", "call_id": "c1", "name": "exec_command",
                                                   "arguments": '{"cmd":"ls"}'}},
    {"type": "codex.rate_limits", "rate_limits": {"primary": {"used_percent": 12, "window_minutes": 300, "reset_at": 5}}},
    {"type": "response.completed", "response": {"usage": {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 4},
                                                          "output_tokens": 3, "output_tokens_details": {"reasoning_tokens": 1},
                                                          "total_tokens": 13}}},
]


def test_render_a_turn():
    lines = stream_view.render(stream_view.events_from_sse(sse(EVENTS)))
    assert lines == [
        ("response", "resp_1 model=gpt-5.1-codex"),
        ("reasoning", "Thinking about it."),
        ("text", "Hello world"),
        ("", "second line"),
        ("tool call", 'exec_command({"cmd":"ls"})'),
        ("", "(2 text delta events)"),
        ("rate limits", "primary 12% of 300 min, resets 5"),
        ("usage", "input 10 (cached 4), output 3 (reasoning 1), total 13"),
        ("status", "completed"),
    ]


def test_render_failures_and_frames():
    failed = {"type": "response.failed", "response": {"error": {"code": "rate_limit_exceeded", "message": "slow"}}}
    assert ("status", "FAILED rate_limit_exceeded: slow") in stream_view.render([failed])
    frame = json.dumps({"type": "error", "status": 429, "error": {"type": "usage_limit_reached"}}).encode()
    assert stream_view.render(stream_view.events_from_frame(frame))[0][0] == "error"
    create = {"type": "response.create", "model": "m", "generate": False}
    assert stream_view.render([create]) == [("request", "response.create model=m (prewarm)")]


def test_garbage_renders_nothing_and_does_not_raise():
    assert stream_view.render(stream_view.events_from_sse(b"\x00\xff garbage")) == []
    assert stream_view.events_from_frame(b"not json") == []
    assert not stream_view.looks_like_codex_stream(b"<html>")
