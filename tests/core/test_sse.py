"""Tests for codex_pool.core.sse: content decoding, SSE parsing and the pass-through stream tap."""

from __future__ import annotations

import gzip
import json
import zlib
from typing import Any

import brotli
import pytest
from codex_pool.core import zstd
from hypothesis import given, settings
from hypothesis import strategies as st

from codex_pool.core.sse import ContentDecoder, SSEEvent, SSEParser, SSETap
from codex_pool.core.turn import TurnObserver

USAGE = {
    "input_tokens": 5230,
    "input_tokens_details": {"cached_tokens": 4864},
    "output_tokens": 412,
    "output_tokens_details": {"reasoning_tokens": 256},
    "total_tokens": 5642,
}
RATE_LIMITS = {
    "type": "codex.rate_limits",
    "rate_limits": {
        "primary": {"used_percent": 12.0, "window_minutes": 300, "reset_at": 1795255894},
        "secondary": {"used_percent": 3.0, "window_minutes": 10080, "reset_at": 1795800000},
    },
    "credits": {"has_credits": False, "unlimited": False, "balance": "0"},
}


def codex_events() -> list[dict[str, Any]]:
    """The JSON events of a realistic Codex turn."""
    msg = {"type": "message", "id": "msg_7", "role": "assistant", "status": "in_progress", "content": []}
    deltas = ["Sure", " — ", "héllo wörld ", "✓ ", "日本語 ", "🙂", " done."]
    return [
        {"type": "response.created",
         "response": {"id": "resp_0123", "model": "gpt-5.1-codex", "status": "in_progress", "output": []}},
        {"type": "response.output_item.added", "output_index": 0, "item": msg},
        *({"type": "response.output_text.delta", "item_id": "msg_7", "output_index": 0,
           "content_index": 0, "delta": d} for d in deltas),
        {"type": "response.output_item.done", "output_index": 0,
         "item": {**msg, "status": "completed",
                  "content": [{"type": "output_text", "text": "".join(deltas), "annotations": []}]}},
        RATE_LIMITS,
        {"type": "response.completed",
         "response": {"id": "resp_0123", "model": "gpt-5.1-codex", "status": "completed", "usage": USAGE}},
    ]


N_DELTAS = 7
N_EVENTS = len(codex_events())


def sse(events: list[dict[str, Any]], *, named: bool = True, eol: str = "\n") -> bytes:
    """Encode events the way the backend does: ``event: <type>\\ndata: <json>\\n\\n``."""
    out = []
    for ev in events:
        lines = [f"event: {ev['type']}"] if named else []
        lines.append("data: " + json.dumps(ev, ensure_ascii=False, separators=(",", ":")))
        out.append(eol.join(lines) + eol + eol)
    return "".join(out).encode()


CODEX_STREAM = sse(codex_events())
EXPECTED_SUMMARY = {
    "response_id": "resp_0123",
    "model": "gpt-5.1-codex",
    "completed": True,
    "failed": None,
    "incomplete": False,
    "incomplete_reason": None,
    "error": None,
    "terminal": True,
    "usage": {"input_tokens": 5230, "cached_input_tokens": 4864, "output_tokens": 412,
              "reasoning_tokens": 256, "total_tokens": 5642},
    "rate_limits": RATE_LIMITS,
    "events": N_EVENTS,
    "deltas": N_DELTAS,
    "garbled": 0,
}


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    """Split ``data`` at the given offsets (any order, duplicates allowed)."""
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:]) if b > a]


def run_tap(chunks: list[bytes], encoding: str | None = None, **kw: Any) -> tuple[SSETap, TurnObserver]:
    """Feed chunks and the final b"" through a tap; assert every chunk comes back as is."""
    obs = kw.pop("observer", None) or TurnObserver()
    kw.setdefault("clock", lambda: 0.0)
    tap = SSETap(encoding, obs, **kw)
    returned = []
    for chunk in [*chunks, b""]:
        out = tap(chunk)
        assert out is chunk
        returned.append(out)
    assert b"".join(returned) == b"".join(chunks)
    tap.drain()  # what the response hook does once the stream is over
    return tap, obs


def parse_all(chunks: list[bytes], **kw: Any) -> tuple[list[SSEEvent], SSEParser]:
    parser = SSEParser(**kw)
    events: list[SSEEvent] = []
    for c in chunks:
        events += parser.feed(c)
    events += parser.close()
    return events, parser


# --- the realistic stream through SSETap -------------------------------------------------

@pytest.mark.parametrize("named", [True, False], ids=["event-field", "data-only"])
@pytest.mark.parametrize("mode", ["whole", "bytewise"])
def test_tap_codex_stream(named: bool, mode: str) -> None:
    body = sse(codex_events(), named=named)
    chunks = [body] if mode == "whole" else [body[i:i + 1] for i in range(len(body))]
    tap, obs = run_tap(chunks)
    assert obs.summary() == EXPECTED_SUMMARY
    assert tap.events == N_EVENTS
    assert tap.ended is True
    assert tap.error is None
    assert tap.bytes_seen == len(body)
    assert tap.parser.truncated == 0


@given(st.lists(st.integers(min_value=0), max_size=40))
def test_tap_codex_stream_random_splits(cuts: list[int]) -> None:
    chunks = split_at(CODEX_STREAM, cuts)
    tap, obs = run_tap(chunks)
    assert obs.summary() == EXPECTED_SUMMARY
    assert tap.events == N_EVENTS


@pytest.mark.parametrize("eol", ["\n", "\r\n", "\r"], ids=["LF", "CRLF", "CR"])
@pytest.mark.parametrize("mode", ["whole", "bytewise"])
def test_tap_line_endings(eol: str, mode: str) -> None:
    body = sse(codex_events(), eol=eol)
    assert (b"\r" in body) is (eol != "\n")
    chunks = [body] if mode == "whole" else [body[i:i + 1] for i in range(len(body))]
    tap, obs = run_tap(chunks)
    assert obs.summary() == EXPECTED_SUMMARY


@given(st.sampled_from(["\n", "\r\n", "\r"]), st.lists(st.integers(min_value=0), max_size=30))
def test_tap_line_endings_random_splits(eol: str, cuts: list[int]) -> None:
    tap, obs = run_tap(split_at(sse(codex_events(), eol=eol), cuts))
    assert obs.summary() == EXPECTED_SUMMARY


def test_tap_clock_and_counters() -> None:
    calls: list[float] = []

    def clock() -> float:
        calls.append(10.0 * (len(calls) + 1))
        return calls[-1]

    tap = SSETap(None, TurnObserver(), clock=clock)
    assert tap(b"") == b"" and tap.first_byte_at is None  # an empty chunk is not a first byte
    assert tap.ended is True and calls == []
    tap = SSETap(None, TurnObserver(), clock=clock)
    tap(CODEX_STREAM[:10])
    tap(CODEX_STREAM[10:])
    assert calls == [10.0]  # clock read once, at the first non-empty chunk
    assert tap.first_byte_at == 10.0
    assert tap.ended is False
    assert tap.bytes_seen == len(CODEX_STREAM)
    tap(b"")
    assert tap.ended is True
    assert (tap.bytes_seen, tap.first_byte_at, tap.events, tap.error) == (len(CODEX_STREAM), 10.0, N_EVENTS, None)
    assert (tap.decoder.error, tap.parser.truncated, tap.parser.overflows) == (None, 0, 0)


def test_tap_without_observer_counts_events() -> None:
    tap = SSETap(None, None, clock=lambda: 0.0)
    assert tap(CODEX_STREAM) is CODEX_STREAM
    tap(b"")
    assert tap.events == N_EVENTS


def test_tap_ignores_done_and_counts_bad_json() -> None:
    body = CODEX_STREAM + b"data: [DONE]\n\n" + b"event: codex.rate_limits\ndata: {oops\n\n"
    tap, obs = run_tap([body])
    assert tap.events == N_EVENTS + 2
    assert obs.garbled == 1
    assert obs.events == N_EVENTS
    assert obs.completed is True


def test_tap_skips_json_for_deltas() -> None:
    # invalid JSON inside a delta event is never decoded, so it is not garbled
    body = (b"event: response.output_text.delta\ndata: {definitely not json\n\n"
            b'data: {"type":"response.reasoning_text.delta","delta":"\\u00ff"\n\n')
    tap, obs = run_tap([body])
    assert (obs.events, obs.deltas, obs.garbled) == (2, 2, 0)


def test_tap_skips_json_for_response_events_it_does_not_read() -> None:
    # output items and content parts carry nothing a turn's facts come from: counted, not decoded
    body = (b"event: response.output_item.done\ndata: {not json\n\n"
            b"event: response.content_part.added\ndata: {nor this\n\n"
            b'event: response.completed\ndata: {"type":"response.completed","response":{"id":"r1","model":"m",'
            b'"usage":{"input_tokens":3,"output_tokens":2,"total_tokens":5}}}\n\n')
    tap, obs = run_tap([body])
    assert (obs.events, obs.deltas, obs.garbled) == (3, 0, 0)
    assert obs.completed and obs.response_id == "r1" and obs.usage.total_tokens == 5


def test_a_gzip_stream_gives_the_same_turn() -> None:
    tap, obs = run_tap([gzip.compress(CODEX_STREAM)], "gzip")
    assert obs.summary() == EXPECTED_SUMMARY
    assert tap.ended is True and tap.events == N_EVENTS


# --- turn outcomes through the tap --------------------------------------------------------

def test_tap_response_failed() -> None:
    err = {"code": "rate_limit_exceeded", "message": "Rate limit reached. Please try again in 8s."}
    body = sse([codex_events()[0],
                {"type": "response.failed", "response": {"id": "resp_0123", "status": "failed", "error": err}}])
    tap, obs = run_tap([body])
    assert obs.failed == err
    assert obs.completed is False
    assert obs.terminal is True
    assert obs.usage is None


def test_tap_response_incomplete() -> None:
    body = sse([codex_events()[0],
                {"type": "response.incomplete",
                 "response": {"id": "resp_0123", "incomplete_details": {"reason": "max_output_tokens"}}}])
    tap, obs = run_tap([body])
    assert obs.incomplete is True
    assert obs.incomplete_reason == "max_output_tokens"
    assert obs.completed is False
    assert obs.terminal is True


@pytest.mark.parametrize(
    "cut, truncated",
    [
        # mid-way through the response.completed event (data line never finished)
        (len(CODEX_STREAM) - 40, 1),
        # after its data line but before the blank line that would dispatch it
        (len(CODEX_STREAM) - 1, 1),
        # right after the rate-limits event: nothing pending, just no completion
        (CODEX_STREAM.index(b"event: response.completed"), 0),
        # inside the event: line of response.completed
        (CODEX_STREAM.index(b"event: response.completed") + 8, 1),
    ],
)
def test_tap_stream_cut_before_completed(cut: int, truncated: int) -> None:
    tap, obs = run_tap([CODEX_STREAM[:cut]])
    assert obs.completed is False
    assert obs.usage is None
    assert obs.terminal is False
    assert obs.response_id == "resp_0123"
    assert obs.rate_limits == [RATE_LIMITS]
    assert tap.parser.truncated == truncated
    assert tap.events == N_EVENTS - 1


# --- compression ------------------------------------------------------------------------

def _zstd(data: bytes) -> bytes:
    # streamed in two frames' worth of flushes, like a server writing as it goes
    c = zstd.ZstdCompressor()
    mid = len(data) // 2
    return (c.compress(data[:mid]) + c.flush(zstd.ZstdCompressor.FLUSH_BLOCK) + c.compress(data[mid:])
            + c.flush(zstd.ZstdCompressor.FLUSH_FRAME))


def _raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=-15)
    return c.compress(data) + c.flush()


COMPRESSORS = {
    "gzip": gzip.compress,
    "x-gzip": gzip.compress,
    "deflate": zlib.compress,  # zlib-wrapped, as RFC 9110 says
    "deflate-raw": _raw_deflate,  # raw, as some servers send it
    "br": brotli.compress,
    "zstd": _zstd,
    "gzip, identity": gzip.compress,
    "identity": lambda b: b,
    "": lambda b: b,
    "br, gzip": lambda b: gzip.compress(brotli.compress(b)),
}


@pytest.mark.parametrize("name", list(COMPRESSORS))
@given(cuts=st.lists(st.integers(min_value=0), max_size=30))
@settings(deadline=None, max_examples=40)
def test_tap_compressed_random_splits(name: str, cuts: list[int]) -> None:
    body = COMPRESSORS[name](CODEX_STREAM)
    encoding = "deflate" if name == "deflate-raw" else name
    tap, obs = run_tap(split_at(body, cuts), encoding)
    assert tap.decoder.error is None
    assert obs.summary() == EXPECTED_SUMMARY
    assert tap.bytes_seen == len(body)


@pytest.mark.parametrize("name", ["gzip", "deflate", "deflate-raw", "br", "zstd"])
def test_decoder_bytewise(name: str) -> None:
    body = COMPRESSORS[name](CODEX_STREAM)
    dec = ContentDecoder("deflate" if name == "deflate-raw" else name)
    out = b"".join(dec.feed(body[i:i + 1]) for i in range(len(body))) + dec.flush()
    assert out == CODEX_STREAM
    assert dec.error is None


def test_decoder_multi_member_gzip() -> None:
    body = gzip.compress(b"data: 1\n\n") + gzip.compress(b"data: 2\n\n")
    dec = ContentDecoder("GZIP")
    assert dec.feed(body[:25]) + dec.feed(body[25:]) + dec.flush() == b"data: 1\n\ndata: 2\n\n"


def test_decoder_zstd_multi_frame() -> None:
    body = zstd.compress(b"data: 1\n\n") + zstd.compress(b"data: 2\n\n")
    dec = ContentDecoder("zstd")
    assert dec.feed(body) + dec.flush() == b"data: 1\n\ndata: 2\n\n"


@pytest.mark.parametrize("encoding", ["compress", "gzip, snappy", "x-unknown"])
def test_decoder_unknown_encoding(encoding: str) -> None:
    dec = ContentDecoder(encoding)
    assert dec.error is not None and "unsupported" in dec.error
    assert dec.feed(b"data: x\n\n") == b""
    assert dec.flush() == b""


@pytest.mark.parametrize("encoding", [None, "", "identity", " Identity "])
def test_decoder_identity_passes_same_bytes(encoding: str | None) -> None:
    dec = ContentDecoder(encoding)
    data = b"data: x\n\n"
    assert dec.feed(data) is data
    assert dec.flush() == b""
    assert dec.error is None


@pytest.mark.parametrize(
    "encoding, corrupt",
    [
        ("gzip", b"this is definitely not gzip data at all"),
        ("gzip", gzip.compress(CODEX_STREAM)[:30] + b"\x00\xff" * 40 + gzip.compress(CODEX_STREAM)[110:]),
        ("deflate", b"\xff\xff\xff\xff garbage"),
        ("br", b"\xff\xff\xff\xff garbage that is not brotli"),
        ("zstd", b"\x28\xb5\x2f\xfd garbage garbage garbage"),
    ],
)
def test_tap_corrupt_compressed_stream(encoding: str, corrupt: bytes) -> None:
    tail = b"more bytes after the corruption"
    chunks = [corrupt[:10], corrupt[10:], tail]
    tap, obs = run_tap(chunks, encoding)  # run_tap asserts every chunk passed through unchanged
    assert tap.decoder.error is not None
    assert tap.error is None
    assert obs.completed is False
    assert obs.garbled == 0
    assert tap.bytes_seen == len(corrupt) + len(tail)
    assert tap.decoder.feed(b"x") == b""


def test_tap_truncated_gzip_stream() -> None:
    body = gzip.compress(CODEX_STREAM)
    tap, obs = run_tap([body[: len(body) // 2]], "gzip")
    assert tap.decoder.error is None
    assert obs.completed is False
    assert obs.response_id == "resp_0123"


# --- SSEParser: the WHATWG rules -------------------------------------------------------------

@pytest.mark.parametrize(
    "stream, expected",
    [
        (b"data: a\n\n", [SSEEvent(None, "a", None)]),
        (b"data: a\r\n\r\n", [SSEEvent(None, "a", None)]),
        (b"data: a\r\r", [SSEEvent(None, "a", None)]),
        (b"data: a\ndata: b\n\n", [SSEEvent(None, "a\nb", None)]),
        (b"data: a\r\ndata:\r\ndata: c\r\r\n", [SSEEvent(None, "a\n\nc", None)]),
        (b"data:a\n\n", [SSEEvent(None, "a", None)]),
        (b"data:  two spaces\n\n", [SSEEvent(None, " two spaces", None)]),
        (b"data\n\n", [SSEEvent(None, "", None)]),
        (b"data:\n\n", [SSEEvent(None, "", None)]),
        (b"data: a:b: c\n\n", [SSEEvent(None, "a:b: c", None)]),
        (b": comment\ndata: a\n: another\n\n", [SSEEvent(None, "a", None)]),
        (b":\n\n", []),
        (b"event: x\n\n", []),  # no data lines: not dispatched
        (b"event: x\n\ndata: y\n\n", [SSEEvent(None, "y", None)]),  # event type does not leak
        (b"event: ping\ndata: 1\n\n", [SSEEvent("ping", "1", None)]),
        (b"event:\ndata: 1\n\n", [SSEEvent(None, "1", None)]),
        (b"id: 7\ndata: 1\n\ndata: 2\n\n", [SSEEvent(None, "1", "7"), SSEEvent(None, "2", "7")]),
        (b"id: a\0b\ndata: 1\n\n", [SSEEvent(None, "1", None)]),  # id with NUL is ignored
        (b"retry: 1000\ndata: 1\n\n", [SSEEvent(None, "1", None)]),
        (b"foo: bar\ndata: 1\n\n", [SSEEvent(None, "1", None)]),
        (b"DATA: no\n\n", []),  # field names are case-sensitive
        (b"\xef\xbb\xbfdata: bom\n\n", [SSEEvent(None, "bom", None)]),
        # only a BOM at the very start is stripped; later it makes an unknown field name
        (b"data: 1\n\n\xef\xbb\xbfdata: 2\n\n", [SSEEvent(None, "1", None)]),
        (b"\n\xef\xbb\xbfdata: 2\n\n", []),
        (b"data: 1\n\xef\xbb\xbfdata: 2\n\n", [SSEEvent(None, "1", None)]),
        (b"data: \xe2\x82\xac \xf0\x9f\x99\x82\n\n", [SSEEvent(None, "€ 🙂", None)]),
        (b"data: \xff\xfe bad\n\n", [SSEEvent(None, "\ufffd\ufffd bad", None)]),
        (b"\n\n\n", []),
        (b"data: 1\n\ndata: 2\n\ndata: 3", [SSEEvent(None, "1", None), SSEEvent(None, "2", None)]),
    ],
)
@pytest.mark.parametrize("mode", ["whole", "bytewise"])
def test_parser_rules(stream: bytes, expected: list[SSEEvent], mode: str) -> None:
    chunks = [stream] if mode == "whole" else [stream[i:i + 1] for i in range(len(stream))]
    events, _ = parse_all(chunks)
    assert events == expected


def test_parser_cr_at_chunk_end_then_lf_is_one_line_end() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    # if the LF were a second line end it would be a blank line and dispatch "a" alone
    assert parser.feed(b"\ndata: b\r") == []
    assert parser.feed(b"\n\r") == [SSEEvent(None, "a\nb", None)]
    assert parser.feed(b"\n") == []  # a lone LF after CR: still one line end, no blank line
    assert parser.feed(b"data: c\n\n") == [SSEEvent(None, "c", None)]


def test_parser_cr_then_cr_is_two_line_ends() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\r") == [SSEEvent(None, "a", None)]


def test_parser_utf8_split_across_chunks() -> None:
    text = "data: 日本語 🙂 ünïcödé\n\n".encode()
    for i in range(len(text) + 1):
        events, _ = parse_all([text[:i], text[i:]])
        assert events == [SSEEvent(None, "日本語 🙂 ünïcödé", None)]


@pytest.mark.parametrize(
    "stream, truncated",
    [
        (b"data: 1\n\n", 0),
        (b"data: 1\n\ndata: 2", 1),  # unterminated line
        (b"data: 1\n\ndata: 2\n", 1),  # terminated line, missing blank line
        (b"data: 1\n\nevent: x\n", 1),
        (b"data: 1\n\n: keep-alive", 0),  # a trailing comment is not an event
        (b"data: 1\n\n", 0),
        (b"", 0),
    ],
)
def test_parser_close_drops_unterminated_event(stream: bytes, truncated: int) -> None:
    events, parser = parse_all([stream])
    assert events == ([SSEEvent(None, "1", None)] if stream else [])
    assert parser.truncated == truncated


@pytest.mark.parametrize("mode", ["whole", "bytewise", "halves"])
def test_parser_oversize_event_dropped(mode: str) -> None:
    stream = (b"data: first\n\n"
              b"event: big\ndata: " + b"x" * 3000 + b"\ndata: more\n\n"
              b"data: after\n\n")
    if mode == "whole":
        chunks = [stream]
    elif mode == "bytewise":
        chunks = [stream[i:i + 1] for i in range(len(stream))]
    else:
        chunks = [stream[:1000], stream[1000:]]
    events, parser = parse_all(chunks, max_event_bytes=1024)
    assert events == [SSEEvent(None, "first", None), SSEEvent(None, "after", None)]
    assert parser.overflows == 1
    assert parser.truncated == 0


def test_parser_oversize_by_many_data_lines() -> None:
    stream = b"".join(b"data: 0123456789\n" for _ in range(200)) + b"\ndata: ok\n\n"
    events, parser = parse_all([stream], max_event_bytes=1024)
    assert events == [SSEEvent(None, "ok", None)]
    assert parser.overflows == 1


def test_parser_oversize_pending_line_memory_is_bounded() -> None:
    parser = SSEParser(max_event_bytes=1000)
    assert parser.feed(b"data: ") == []
    for _ in range(100):
        assert parser.feed(b"y" * 500) == []
    assert parser.overflows == 1
    assert len(parser._pending) <= 1  # nothing of the oversize line is kept
    assert parser.feed(b"\n\ndata: next\n\n") == [SSEEvent(None, "next", None)]


def test_tap_oversize_event_counted() -> None:
    big = {"type": "response.output_item.done", "item": {"text": "z" * 5000}}
    body = sse([codex_events()[0], big, codex_events()[-1]])
    tap, obs = run_tap([body], max_event_bytes=2048)
    assert tap.parser.overflows == 1
    assert tap.events == 2
    assert obs.completed is True
    assert obs.usage is not None and obs.usage.total_tokens == 5642


@given(st.binary(), st.lists(st.binary(max_size=64), max_size=8))
def test_parser_never_raises_on_garbage(data: bytes, more: list[bytes]) -> None:
    parser = SSEParser(max_event_bytes=256)
    events = parser.feed(data)
    for m in more:
        events += parser.feed(m)
    events += parser.close()
    assert all(isinstance(e, SSEEvent) and isinstance(e.data, str) for e in events)


@given(st.lists(st.integers(min_value=0), max_size=20))
def test_parser_split_invariance(cuts: list[int]) -> None:
    stream = (b"\xef\xbb\xbf: hi\r\nevent: a\r\ndata: x\rdata: \xe2\x82\xac\n\r\n"
              b"id: 9\ndata: y\n\n" + b"data: z\r")
    assert parse_all(split_at(stream, cuts))[0] == parse_all([stream])[0] == [
        SSEEvent("a", "x\n€", None), SSEEvent(None, "y", "9")]


# --- the tap never breaks the stream -----------------------------------------------------

ENCODINGS = st.sampled_from([None, "gzip", "deflate", "br", "zstd", "bogus"])


@given(st.lists(st.binary(), max_size=10), ENCODINGS)
def test_tap_garbage_passes_through(chunks: list[bytes], encoding: str | None) -> None:
    tap, obs = run_tap(chunks, encoding)
    assert tap.error is None
    assert tap.bytes_seen == sum(map(len, chunks))
    assert tap.ended is True


@given(st.binary(min_size=1))
def test_tap_garbage_after_valid_events(garbage: bytes) -> None:
    tap, obs = run_tap([CODEX_STREAM, garbage])
    assert tap.error is None
    assert obs.completed is True
    assert obs.usage is not None and obs.usage.cached_input_tokens == 4864
    assert obs.response_id == "resp_0123"


def test_tap_garbage_lines_after_valid_events_are_garbled() -> None:
    tap, obs = run_tap([CODEX_STREAM, b"data: <html>oops</html>\n\ndata: 42\n\n\x00\x01"])
    assert obs.completed is True
    assert obs.garbled == 2
    assert tap.events == N_EVENTS + 2
    assert tap.parser.truncated == 1


class ExplodingObserver(TurnObserver):
    """An observer whose observe() raises, as a buggy one might."""

    def observe(self, event: object, event_type: str | None = None) -> None:
        raise RuntimeError("observer exploded")


class ExplodingJSONObserver(TurnObserver):
    def observe_json(self, data: str | bytes, event_type: str | None = None) -> None:
        raise ValueError("no")


@pytest.mark.parametrize("observer_cls", [ExplodingObserver, ExplodingJSONObserver])
def test_tap_failing_observer_does_not_raise(observer_cls: type[TurnObserver]) -> None:
    chunks = [CODEX_STREAM[i:i + 50] for i in range(0, len(CODEX_STREAM), 50)]
    tap, obs = run_tap(chunks, observer=observer_cls(), batch_bytes=1)  # parsed chunk by chunk; asserts pass-through
    assert tap.error is not None
    assert "observer exploded" in tap.error or "ValueError" in tap.error
    assert tap.bytes_seen == len(CODEX_STREAM)
    assert tap.ended is True
    assert tap.events == 1  # parsing stopped at the first failure


def test_tap_failing_clock_does_not_raise() -> None:
    def clock() -> float:
        raise OSError("clock broke")

    tap, obs = run_tap([CODEX_STREAM], clock=clock)
    assert tap.error == "OSError: clock broke"
    assert tap.bytes_seen == len(CODEX_STREAM)


# --- the counting fast paths (one whole delta event per chunk; whole events per chunk) -----------

@given(st.lists(st.integers(min_value=0), max_size=20), st.booleans())
def test_delta_fast_paths_count_exactly_what_the_line_parser_sees(cuts, one_event_per_chunk) -> None:
    events = codex_events()
    chunks = [sse([e]) for e in events] if one_event_per_chunk else split_at(CODEX_STREAM, cuts)
    tap, obs = run_tap(chunks)
    assert obs.summary() == EXPECTED_SUMMARY and obs.deltas == N_DELTAS
    assert tap.events == N_EVENTS
    if one_event_per_chunk:
        assert tap.parser.deltas_counted == N_DELTAS  # every delta took the counting path
    # a viewer's parser (no counting) still gets every delta with its text
    viewer = SSEParser()
    texts = [e.data for c in chunks for e in viewer.feed(c) if e.event == "response.output_text.delta"]
    assert len(texts) == N_DELTAS and all('"delta"' in t for t in texts)


_BLOCKS = [
    b'event: response.output_text.delta\ndata: {"delta":"a"}\n\n',  # the common delta
    b': keep-alive\nevent: x.delta\ndata: d\n\n',  # comment first
    b"event: x.delta\ndata: one\ndata: two\n\n",  # two data lines: not the fast shape
    b"event:x.delta\ndata: d\n\n",  # no space after the colon
    b"id: 7\nevent: x.delta\ndata: d\n\n",  # an id line first
    b"event: x.delta\ndata: d\nid: 8\n\n",  # an id line after
    b"event: x.delta\n\n",  # no data: nothing to dispatch
    b'event: response.completed\ndata: {"type":"response.completed"}\n\n',
    b"data: no event name\n\n",
    b"event: a:b.delta\ndata: d\n\n",  # a colon in the name
    b"\n",  # an extra blank line
    b": just a comment\n\n",
    b"event: y.delta\ndata: \n\n",  # empty data
]


@settings(max_examples=300)
@given(st.lists(st.sampled_from(_BLOCKS), max_size=30), st.lists(st.integers(min_value=0), max_size=8),
       st.sampled_from([1, 64, 1 << 20]))
def test_counting_deltas_sees_exactly_the_events_a_viewer_sees(blocks, cuts, batch_bytes) -> None:
    """Whatever the mix of event shapes and chunking, the counting parser (deltas counted, the
    rest returned) and a viewer's parser (everything returned) agree event for event."""
    stream = b"".join(blocks)
    p = SSEParser()
    viewer = [e for c in split_at(stream, cuts) for e in p.feed(c)]
    tap = SSETap(None, None, clock=lambda: 0.0, batch_bytes=batch_bytes)
    tap.parser = counting = SSEParser(count_deltas=True)
    returned: list[SSEEvent] = []
    tap._dispatch = returned.extend  # what the tap would hand on
    for c in split_at(stream, cuts):
        assert tap(c) == c
    tap(b"")
    is_delta = lambda e: (e.event or "").endswith(".delta")  # noqa: E731
    assert counting.deltas_counted + len(returned) == len(viewer)
    assert [e for e in returned if not is_delta(e)] == [e for e in viewer if not is_delta(e)]
    rest = iter(viewer)
    assert all(any(e == v for v in rest) for e in returned)  # in the viewer's order


@pytest.mark.parametrize("batch_bytes", [1, 64, 1 << 20])
def test_batching_changes_nothing_but_when_events_are_parsed(batch_bytes) -> None:
    chunks = [sse([e]) for e in codex_events()]
    tap, obs = run_tap(chunks, batch_bytes=batch_bytes)
    assert obs.summary() == EXPECTED_SUMMARY and tap.events == N_EVENTS


def test_drain_parses_what_is_queued_before_the_stream_ends() -> None:
    tap = SSETap(None, TurnObserver(), clock=lambda: 1.0)
    tap(sse(codex_events()[:3]))
    assert tap.observer.events == 0  # queued, not parsed yet
    tap.drain()
    assert tap.observer.events == 3 and tap.events == 3 and not tap.ended


def test_a_leading_bom_is_dropped_on_the_fast_path_too() -> None:
    p = SSEParser()
    events = p.feed(b"\xef\xbb\xbfevent: response.output_text.delta\ndata: {}\n\n")
    assert [(e.event, e.data) for e in events] == [("response.output_text.delta", "{}")]


@pytest.mark.parametrize("batch_bytes,keep", [(1, 100), (64, 100), (1 << 20, 100), (64, 1 << 20)])
def test_the_kept_copy_is_the_first_bytes_of_the_stream_however_it_is_batched(batch_bytes, keep) -> None:
    chunks = split_at(CODEX_STREAM, [37, 300, 301, 900])
    tap, _ = run_tap(chunks, batch_bytes=batch_bytes, keep_bytes=keep)
    assert bytes(tap.kept) == CODEX_STREAM[:keep]


@pytest.mark.parametrize("cut", [1, 2, 3, 4])
def test_a_bom_split_across_the_first_chunks_is_still_dropped(cut) -> None:
    data = b"\xef\xbb\xbfevent: response.completed\ndata: {}\n\n"
    p = SSEParser()
    events = p.feed(data[:cut]) + p.feed(data[cut:])
    assert [(e.event, e.data) for e in events] == [("response.completed", "{}")]


def test_an_empty_chunk_mid_stream_is_not_the_end() -> None:
    """mitmproxy passes an empty HTTP/2 DATA frame (no END_STREAM) to the stream callable as b"", the
    same as its end-of-body call: the tap keeps parsing when more data follows."""
    mid = len(CODEX_STREAM) // 2
    tap, obs = run_tap([CODEX_STREAM[:mid], b"", CODEX_STREAM[mid:]])
    assert obs.completed is True and obs.usage is not None and tap.events == N_EVENTS


def test_a_raising_transform_is_dropped_and_the_bytes_go_on() -> None:
    tap = SSETap(None, TurnObserver(), clock=lambda: 0.0)
    tap.transform = lambda chunk: 1 / 0
    assert tap(b"data: {}\n\n") == b"data: {}\n\n" and tap.transform is None
    assert "ZeroDivisionError" in tap.transform_error and tap.error is None  # its own parsing goes on
