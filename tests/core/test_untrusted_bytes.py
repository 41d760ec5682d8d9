"""Every core parser that reads bytes from outside (clients, upstream, files others write) never
raises on them and keeps its output bounded — property tests (hypothesis) beside the regressions
that found the holes: a deeply nested body, an `Infinity` status, a JWT time claim too large for a
float, a turn whose stream the tap could not read."""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codex_pool.core import conversation, ledger, quota
from codex_pool.core.auth_file import MAX_AUTH_FILE_BYTES, AuthFileError, parse_auth
from codex_pool.core.outcome import OK, Verdict, classify_http, classify_ws_error, error_object, stream_verdict
from codex_pool.core.sse import SSEParser, SSETap
from codex_pool.core.turn import TurnObserver
from tests.support.tokens import make_auth, make_jwt

FAST = settings(max_examples=150, deadline=None)

# JSON-shaped values, with the keys the parsers look for mixed into random ones
KEYS = st.sampled_from([
    "prompt_cache_key", "model", "tokens", "id_token", "access_token", "refresh_token", "account_id", "idToken",
    "accessToken", "rate_limits", "primary", "secondary", "used_percent", "window_minutes", "reset_at", "resets_at",
    "credits", "has_credits", "unlimited", "balance", "plan_type", "error", "type", "code", "message", "detail",
    "resets_in_seconds", "status", "headers", "last_refresh",
]) | st.text(max_size=8)
SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
JSON_VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=5),
                           max_leaves=25)


def json_bytes(value) -> bytes:
    return json.dumps(value).encode()  # allow_nan: Python writes (and reads) Infinity and NaN


BODIES = st.binary(max_size=512) | JSON_VALUES.map(json_bytes) | st.builds(
    lambda a, key, b: a + b'"prompt_cache_key": "' + key + b'"' + b, st.binary(max_size=64),
    st.binary(max_size=600), st.binary(max_size=64))


# --- conversation.from_body: the request body's prompt_cache_key -------------------------------------


@FAST
@given(BODIES)
def test_conversation_key_never_raises_and_is_bounded(body):
    key = conversation.from_body(body)
    assert key is None or (isinstance(key, str) and 0 < len(key) <= conversation.MAX_KEY_LENGTH)


def test_a_body_nested_past_the_parsers_recursion_has_no_key():
    """Two keys make the lookup parse the body; 100 000 nested arrays used to raise RecursionError,
    which the proxy answered 503 (its own failure) instead of forwarding the request."""
    body = b'{"prompt_cache_key":"a","x":{"prompt_cache_key":"b"},"y":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert conversation.from_body(body) is None


def test_an_ambiguous_body_too_large_to_parse_has_no_key():
    body = json.dumps({"x": {"prompt_cache_key": "b"}, "pad": "p" * conversation.MAX_PARSE_BYTES,
                       "prompt_cache_key": "top"}).encode()
    assert conversation.from_body(body) is None
    small = json.dumps({"x": {"prompt_cache_key": "b"}, "prompt_cache_key": "top"}).encode()
    assert conversation.from_body(small) == "top"


# --- ledger.model_from_body ----------------------------------------------------------------------------


@FAST
@given(BODIES)
def test_model_lookup_never_raises_and_is_bounded(body):
    model = ledger.model_from_body(body)
    assert model is None or (isinstance(model, str) and 0 < len(model) <= 100)


def test_model_lookup_reads_only_the_beginning():
    assert ledger.model_from_body(b" " * ledger.MODEL_SCAN_BYTES + b'"model": "late"') is None
    assert ledger.model_from_body(b'{"model": "gpt-5.1-codex", "input": "' + b"x" * 10**6 + b'"}') == "gpt-5.1-codex"


# --- auth_file.parse_auth: files anyone may drop into the pool folder ----------------------------------


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


JWTISH = st.text(max_size=40) | st.builds(lambda h, p, s: f"{b64(h)}.{b64(p)}.{b64(s)}",
                                          st.binary(max_size=40), JSON_VALUES.map(json_bytes) | st.binary(max_size=40),
                                          st.binary(max_size=8))
AUTH_DOCS = st.fixed_dictionaries({"tokens": st.dictionaries(KEYS, JWTISH | JSON_VALUES, max_size=5)}) | JSON_VALUES


@FAST
@given(st.binary(max_size=1024) | AUTH_DOCS.map(json_bytes))
def test_parse_auth_raises_only_auth_file_error(data):
    try:
        account = parse_auth(data, Path("/pool/x.json"))
    except AuthFileError as e:
        assert str(e)
    else:
        assert account.account_id and account.access_token


@pytest.mark.parametrize("doc,reason", [
    (b"[" * 200_000 + b"]" * 200_000, "nested too deep"),
    (b"\x00\xff\xfe binary \x89PNG\r\n", "not"),
    (b'{"tokens": {"access_token": "\\ud800", "id_token": "\\ud800"}}', "undecodable JWT"),  # a lone surrogate
    (b" " * (MAX_AUTH_FILE_BYTES + 1), "too large"),
])
def test_hostile_auth_files_are_refused_with_a_reason(doc, reason):
    with pytest.raises(AuthFileError, match=reason):
        parse_auth(doc, Path("/pool/x.json"))


@pytest.mark.parametrize("exp", [10**400, "Infinity"])
def test_a_time_claim_that_is_no_time_is_ignored(exp):
    """`exp` 10**400 used to raise OverflowError out of parse_auth (and out of the folder scan)."""
    doc = make_auth("acct-big")
    claims = {"exp": 0, "https://api.openai.com/auth": {"chatgpt_account_id": "acct-big"}}
    token = make_jwt(claims)
    header, _, signature = token.split(".")
    payload = b'{"exp": ' + str(exp).encode() + b', "https://api.openai.com/auth": {"chatgpt_account_id": "acct-big"}}'
    doc["tokens"]["access_token"] = f"{header}.{b64(payload)}.{signature}"
    account = parse_auth(json.dumps(doc).encode(), Path("/pool/big.json"))
    assert account.access_expires_at is None


# --- quota: rate-limit headers and events from upstream -----------------------------------------------

HEADER_NAMES = st.sampled_from([f"x-codex-{w}-{f}" for w in ("primary", "secondary")
                                for f in ("used-percent", "window-minutes", "reset-at")]
                               + [f"x-codex-credits-{f}" for f in ("has-credits", "unlimited", "balance")])
HEADER_VALUES = st.text(max_size=20) | st.sampled_from(["nan", "inf", "-inf", "1e999", "-5", "1e308", "True", " 7 "])


def windows_bounded(limits) -> bool:
    for w in (limits.primary, limits.secondary):
        if w is None:
            continue
        assert 0.0 <= w.used_percent <= 100.0
        assert w.reset_at is None or (math.isfinite(w.reset_at) and w.reset_at > 0)
        assert w.window_minutes is None or w.window_minutes > 0
    return True


@FAST
@given(st.dictionaries(HEADER_NAMES | st.text(max_size=10), HEADER_VALUES, max_size=8))
def test_quota_from_headers_never_raises_and_is_bounded(headers):
    limits = quota.from_headers(headers, 1000.0)
    assert limits is None or windows_bounded(limits)


@FAST
@given(JSON_VALUES | st.fixed_dictionaries({"rate_limits": st.dictionaries(
    st.sampled_from(["primary", "secondary", "credits"]), JSON_VALUES | st.dictionaries(KEYS, SCALARS, max_size=4)),
    "credits": JSON_VALUES}))
def test_quota_from_event_never_raises_and_is_bounded(event):
    limits = quota.from_event(event, 1000.0)
    assert limits is None or windows_bounded(limits)


# --- outcome: error bodies and frames from upstream --------------------------------------------------


@FAST
@given(st.binary(max_size=256) | st.text(max_size=256) | JSON_VALUES | JSON_VALUES.map(json_bytes))
def test_error_object_never_raises(body):
    assert isinstance(error_object(body), dict)


def verdict_bounded(verdict: Verdict) -> bool:
    assert verdict.kind in ("ok", "limited", "cooldown", "auth", "neutral", "retry")
    assert len(verdict.detail) <= 300
    assert verdict.until is None or math.isfinite(verdict.until)
    assert verdict.retry_after is None or 0 <= verdict.retry_after <= 86400
    return True


@FAST
@given(st.integers(min_value=100, max_value=999), st.dictionaries(st.just("retry-after"), HEADER_VALUES),
       st.binary(max_size=256) | JSON_VALUES.map(json_bytes) | st.fixed_dictionaries({"error": JSON_VALUES}).map(json_bytes))
def test_classify_http_never_raises_and_is_bounded(status, headers, body):
    assert verdict_bounded(classify_http(status, headers, body, 1000.0))


@FAST
@given(st.dictionaries(KEYS, JSON_VALUES, max_size=5) | st.fixed_dictionaries(
    {"type": st.just("error"), "status": SCALARS, "error": JSON_VALUES, "headers": JSON_VALUES}))
def test_classify_ws_error_never_raises_and_is_bounded(frame):
    assert verdict_bounded(classify_ws_error(frame, 1000.0))


@pytest.mark.parametrize("raw", [b'{"type":"error","status":Infinity,"error":{}}', b'{"type":"error","status":1e999}',
                                 b'{"type":"error","status":429,"error":{"code":"usage_limit_reached","resets_at":1e999}}'])
def test_a_frame_with_an_infinite_number_gets_a_finite_verdict(raw):
    """`int(inf)` used to raise OverflowError; an infinite `resets_at` put the account away for ever."""
    verdict = classify_ws_error(json.loads(raw), 1000.0)
    assert verdict_bounded(verdict)


# --- SSEParser and the tap: upstream's stream --------------------------------------------------------


@FAST
@given(st.lists(st.binary(max_size=300) | st.sampled_from([b"\n", b"\r", b"\r\n", b"\n\n", b"data: ", b"event: x\n"]),
                max_size=30), st.integers(min_value=1, max_value=200))
def test_sse_parser_memory_and_events_stay_under_its_cap(chunks, cap):
    parser = SSEParser(max_event_bytes=cap)
    for chunk in chunks:
        for event in parser.feed(chunk):
            assert len(event.data.encode("utf-8", "surrogatepass")) <= cap * 3  # U+FFFD is 3 bytes per bad byte
        assert len(parser._pending) <= cap  # the line being read never outgrows the cap
        assert sum(map(len, parser._data)) <= cap
    parser.close()


def pass_through(chunks: list[bytes], **kw) -> tuple[SSETap, TurnObserver]:
    observer = TurnObserver()
    tap = SSETap(None, observer, clock=lambda: 1.0, **kw)
    for chunk in [*chunks, b""]:
        assert tap(chunk) is chunk  # every byte goes on, untouched
    return tap, observer


CREATED = b'event: response.created\ndata: {"type":"response.created","response":{"id":"r1","model":"m"}}\n\n'


@pytest.mark.parametrize("tail", [
    b'event: response.completed\ndata: {"type":"response.completed","response":{"pad":"' + b"x" * 5000 + b'"}}\n\n',
    b"data: " + b"x" * 5000,  # a line that never ends
], ids=["enormous-event", "endless-line"])
def test_a_stream_the_tap_cannot_read_is_unparsed_not_incomplete(tail):
    """Before: the turn read as `stream_incomplete`, a cooldown for an account that did nothing wrong."""
    tap, observer = pass_through([CREATED, tail[:1000], tail[1000:]], max_event_bytes=1024, batch_bytes=512)
    assert tap.bytes_seen == len(CREATED) + len(tail) and tap.error is None
    assert observer.unparsed == "event_too_large" and not observer.terminal
    assert observer.summary()["unparsed"] == "event_too_large"
    verdict = stream_verdict(observer, 1000.0)
    assert (verdict.kind, verdict.reason, verdict.failed) == ("neutral", "unparsed", False)
    assert ledger.record_outcome("ok", observer.summary()) == "unparsed"


def test_an_oversize_event_before_the_end_leaves_a_complete_turn_as_it_is():
    big = b'event: response.output_item.done\ndata: {"item":"' + b"x" * 5000 + b'"}\n\n'
    done = b'event: response.completed\ndata: {"type":"response.completed","response":{"id":"r1"}}\n\n'
    tap, observer = pass_through([CREATED, big, done], max_event_bytes=1024)
    assert observer.unparsed == "event_too_large" and observer.completed
    assert stream_verdict(observer, 1000.0) is OK
    assert ledger.record_outcome("ok", observer.summary()) == "ok"


def test_an_undecodable_stream_is_unparsed():
    observer = TurnObserver()
    tap = SSETap("compress", observer, clock=lambda: 1.0)
    assert tap(CREATED) is CREATED and tap(b"") == b""
    assert observer.unparsed == "undecodable"
    assert stream_verdict(observer, 1000.0).reason == "unparsed"


def test_a_plainly_cut_stream_is_still_incomplete():
    tap, observer = pass_through([CREATED, b"data: {partial"])
    assert observer.unparsed is None and "unparsed" not in observer.summary()
    assert stream_verdict(observer, 1000.0).reason == "stream_incomplete"
    assert ledger.record_outcome("ok", observer.summary()) == "ok"
    assert ledger.record_outcome("failed_over", {"unparsed": "event_too_large", "terminal": False}) == "failed_over"
