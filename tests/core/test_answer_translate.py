"""The backend's Responses stream → chat chunks (on the fly) and whole objects."""

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from codex_pool.core.answer_translate import (
    ChatStream,
    EventFilter,
    ResponsesCollector,
    chat_completion,
    events_of,
    is_backend_event,
)

USAGE = {"input_tokens": 120, "input_tokens_details": {"cached_tokens": 100}, "output_tokens": 30,
         "output_tokens_details": {"reasoning_tokens": 8}, "total_tokens": 150}


def sse(*events):
    return b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events)


def response(status="in_progress", output=(), usage=None, **extra):
    return {"id": "resp_abc", "object": "response", "created_at": 1700000000, "model": "gpt-5.1-codex",
            "status": status, "output": list(output), "usage": usage, **extra}


MESSAGE = {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
           "content": [{"type": "output_text", "text": "Hello there", "annotations": []}]}
CALL = {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Oslo"}'}

TEXT_STREAM = sse(
    {"type": "response.created", "response": response()},
    {"type": "response.output_item.added", "output_index": 0, "item": {**MESSAGE, "content": []}},
    {"type": "response.output_text.delta", "output_index": 0, "delta": "Hello "},
    {"type": "response.output_text.delta", "output_index": 0, "delta": "there"},
    {"type": "response.output_item.done", "output_index": 0, "item": MESSAGE},
    {"type": "codex.rate_limits", "rate_limits": {"primary": {"used_percent": 3}}},
    {"type": "response.completed", "response": response("completed", [MESSAGE], USAGE)},
)
TOOL_STREAM = sse(
    {"type": "response.created", "response": response()},
    {"type": "response.output_item.added", "output_index": 0, "item": {**CALL, "arguments": ""}},
    {"type": "response.function_call_arguments.delta", "output_index": 0, "delta": '{"city":'},
    {"type": "response.function_call_arguments.delta", "output_index": 0, "delta": '"Oslo"}'},
    {"type": "response.output_item.done", "output_index": 0, "item": CALL},
    {"type": "response.completed", "response": response("completed", [CALL], USAGE)},
)


def run(stream: bytes, cuts=(), include_usage=True) -> list:
    """The chat chunks a ChatStream sends for `stream` cut at `cuts`; [DONE] as the string."""
    translator = ChatStream("gpt-5.1-codex", include_usage, 0)
    out, start = b"", 0
    for cut in sorted(set(cuts)) + [len(stream)]:
        out += translator(stream[start:cut]) if cut > start else b""
        start = cut
    out += translator(b"")
    return [json.loads(line[6:]) if line != b"data: [DONE]" else "[DONE]" for line in out.split(b"\n\n") if line]


def test_text_stream_becomes_chat_chunks_with_usage_last():
    chunks = run(TEXT_STREAM)
    assert chunks[-1] == "[DONE]"
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-2]) == "Hello there"
    assert chunks[-3]["choices"][0]["finish_reason"] == "stop"
    usage = chunks[-2]
    assert usage["choices"] == [] and usage["usage"] == {
        "prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150,
        "prompt_tokens_details": {"cached_tokens": 100}, "completion_tokens_details": {"reasoning_tokens": 8}}
    assert {c["id"] for c in chunks[:-1]} == {"chatcmpl-abc"} and all(c["object"] == "chat.completion.chunk"
                                                                      for c in chunks[:-1])


def test_each_delta_leaves_as_it_arrives():
    translator = ChatStream("m", False, 0)
    head = sse({"type": "response.created", "response": response()},
               {"type": "response.output_text.delta", "output_index": 0, "delta": "Hi"})
    out = translator(head)
    assert b'"content":"Hi"' in out and b"[DONE]" not in out


def test_without_include_usage_there_is_no_usage_chunk():
    chunks = run(TEXT_STREAM, include_usage=False)
    assert all("usage" not in c for c in chunks[:-1]) and chunks[-2]["choices"][0]["finish_reason"] == "stop"


def test_tool_calls_stream_as_tool_call_deltas():
    chunks = run(TOOL_STREAM)
    calls = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks[:-1] if c.get("choices")
             and "tool_calls" in c["choices"][0]["delta"]]
    assert calls[0] == {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
    assert "".join(c["function"]["arguments"] for c in calls) == '{"city":"Oslo"}'
    assert chunks[-3]["choices"][0]["finish_reason"] == "tool_calls"


def test_an_item_sent_only_whole_is_still_delivered():
    stream = sse({"type": "response.created", "response": response()},
                 {"type": "response.output_item.done", "output_index": 0, "item": CALL},
                 {"type": "response.output_item.done", "output_index": 1, "item": MESSAGE},
                 {"type": "response.completed", "response": response("completed", [], USAGE)})
    chunks = run(stream)
    deltas = [c["choices"][0]["delta"] for c in chunks[:-2]]
    assert any(d.get("content") == "Hello there" for d in deltas)
    assert any(d.get("tool_calls", [{}])[0].get("function", {}).get("arguments") == '{"city":"Oslo"}' for d in deltas)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from([TEXT_STREAM, TOOL_STREAM]), st.lists(st.integers(0, len(TOOL_STREAM)), max_size=12))
def test_any_chunking_gives_the_same_chunks(stream, cuts):
    whole = run(stream)
    split = run(stream, [c for c in cuts if c <= len(stream)])
    strip = lambda cs: [c if c == "[DONE]" else {**c, "created": 0} for c in cs]
    assert strip(split) == strip(whole)


def test_a_failed_response_ends_with_an_error_event():
    stream = sse({"type": "response.created", "response": response()},
                 {"type": "response.failed", "response": response("failed", error={
                     "code": "context_length_exceeded", "message": "too long"})})
    chunks = run(stream)
    assert chunks[-1] == {"error": {"message": "too long", "type": "server_error", "code": "context_length_exceeded",
                                    "param": None}}


def test_a_stream_cut_before_its_end_has_no_done_and_an_empty_chunk_ends_nothing():
    """mitmproxy passes an empty HTTP/2 DATA frame mid-stream as b"", like its end-of-body call."""
    cut = run(TEXT_STREAM[:200])
    assert "[DONE]" not in cut and all("error" not in c for c in cut)
    translator = ChatStream("m", False, 0)
    mid = len(TEXT_STREAM) // 2
    out = translator(TEXT_STREAM[:mid]) + translator(b"") + translator(TEXT_STREAM[mid:])
    assert out.endswith(b"data: [DONE]\n\n") and b'"content":"there"' in out


def test_incomplete_is_finish_reason_length():
    stream = sse({"type": "response.created", "response": response()},
                 {"type": "response.incomplete", "response": response("incomplete", [], USAGE,
                                                                      incomplete_details={"reason": "max_output_tokens"})})
    assert run(stream)[-3]["choices"][0]["finish_reason"] == "length"


def test_a_translator_that_fails_ends_the_stream_with_an_error():
    translator = ChatStream("m", False, 0)
    translator.collector = None  # its own code breaks on the next event
    out = translator(sse({"type": "response.created", "response": response()}))
    assert b"codex-pool failed translating" in out and translator(b"more") == b""


def test_non_stream_chat_completion_and_responses_object():
    collector = ResponsesCollector()
    for kind, data in events_of(TOOL_STREAM):
        collector.feed(kind, data)
    done = chat_completion(collector, "m", 0)
    assert done["object"] == "chat.completion" and done["choices"][0]["finish_reason"] == "tool_calls"
    assert done["choices"][0]["message"]["tool_calls"] == [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}]
    assert done["usage"]["prompt_tokens"] == 120
    text = ResponsesCollector()
    for kind, data in events_of(TEXT_STREAM):
        text.feed(kind, data)
    obj = text.response_object()
    assert obj["status"] == "completed" and obj["output"] == [MESSAGE] and "output_text" not in obj
    assert chat_completion(text, "m", 0)["choices"][0]["message"]["content"] == "Hello there"


def test_a_completed_event_without_output_is_filled_from_the_items():
    stream = sse({"type": "response.created", "response": response()},
                 {"type": "response.output_item.done", "output_index": 0, "item": MESSAGE},
                 {"type": "response.completed", "response": response("completed", [], USAGE)})
    collector = ResponsesCollector()
    for kind, data in events_of(stream):
        collector.feed(kind, data)
    assert collector.response_object()["output"] == [MESSAGE]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, len(TEXT_STREAM)), max_size=10))
def test_responses_clients_get_every_event_but_the_backends_own(cuts):
    """codex.rate_limits is not a Responses API event; openai-python fails on one that comes first."""
    stream = sse({"type": "codex.rate_limits", "rate_limits": {}}) + TEXT_STREAM
    f = EventFilter(is_backend_event)
    out, start = b"", 0
    for cut in sorted(set(cuts)) + [len(stream)]:
        if cut > start:
            out += f(stream[start:cut])
            start = cut
    out += f(b"")
    kinds = [kind for kind, _ in events_of(out)]
    assert "codex.rate_limits" not in kinds and kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert [d for _, d in events_of(out)] == [d for k, d in events_of(stream) if not k.startswith("codex.")]
