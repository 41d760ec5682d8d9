import json

import pytest

from codex_pool.core import quota
from codex_pool.core.outcome import (classify_http, classify_stream_failure, classify_transport_error, classify_ws_error,
                                try_again_seconds)

NOW = 1_800_000_000.0


def body(**err):
    return json.dumps({"error": err}).encode()


LIMITS = quota.RateLimits(quota.Window(100.0, 300, NOW + 900), quota.Window(40.0, 10080, NOW + 90000), None, NOW, "headers")

HTTP = [
    # (label, status, headers, body, latest, kind, reason, until, retry_after, disable_as)
    ("200", 200, {}, None, None, "ok", "ok", None, None, None),
    ("101 upgrade", 101, {}, None, None, "ok", "ok", None, None, None),
    ("usage limit resets_at", 429, {}, body(type="usage_limit_reached", resets_at=NOW + 3600, resets_in_seconds=5),
     None, "limited", "usage_limit_reached", NOW + 3600, None, None),
    ("usage limit resets_in_seconds", 429, {}, body(type="usage_limit_reached", resets_in_seconds=120),
     None, "limited", "usage_limit_reached", NOW + 120, None, None),
    ("usage limit from rate-limit data", 429, {}, body(type="usage_limit_reached"), LIMITS,
     "limited", "usage_limit_reached", NOW + 900, None, None),
    ("usage limit, nothing known", 429, {}, body(type="usage_limit_reached"), None, "limited", "usage_limit_reached", None, None, None),
    ("usage not included (code)", 429, {}, body(code="usage_not_included"), None, "limited", "usage_not_included", None, None, None),
    ("403 usage wording", 403, {}, body(message="You have reached your usage limit."), None,
     "limited", "usage_limit_reached", None, None, None),
    ("403 other", 403, {}, body(message="Forbidden"), None, "auth", "forbidden", None, None, "reauth_required"),
    ("403 deactivated", 403, {}, body(code="account_deactivated", message="deactivated"), None,
     "auth", "deactivated", None, None, "deactivated"),
    ("401", 401, {}, body(code="token_expired", message="expired"), None, "auth", "unauthorized", None, None, "reauth_required"),
    ("plain 429 with retry-after", 429, {"retry-after": "7"}, body(message="slow down"), None,
     "cooldown", "rate_limited", None, 7.0, None),
    ("plain 429 no body", 429, {}, b"", None, "cooldown", "rate_limited", None, None, None),
    ("500", 500, {}, b"<html>oops</html>", None, "cooldown", "server_error_500", None, None, None),
    ("503 retry-after", 503, {"retry-after": "3"}, b"", None, "cooldown", "server_error_503", None, 3.0, None),
    ("overloaded", 503, {}, body(code="server_is_overloaded"), None, "cooldown", "server_is_overloaded", None, None, None),
    ("slow_down 400?", 400, {}, body(code="slow_down"), None, "cooldown", "slow_down", None, None, None),
    ("400 client error", 400, {}, body(message="bad input"), None, "neutral", "client_error_400", None, None, None),
    ("404", 404, {}, b'{"detail":"Not Found"}', None, "neutral", "client_error_404", None, None, None),
    ("413", 413, {}, b"", None, "neutral", "client_error_413", None, None, None),
]


@pytest.mark.parametrize("label,status,headers,body_,latest,kind,reason,until,retry,disable", HTTP, ids=[h[0] for h in HTTP])
def test_http_outcomes(label, status, headers, body_, latest, kind, reason, until, retry, disable):
    v = classify_http(status, headers, body_, NOW, latest)
    assert (v.kind, v.reason, v.until, v.retry_after, v.disable_as) == (kind, reason, until, retry, disable)


STREAM = [
    ({"code": "rate_limit_exceeded", "message": "Rate limit reached. Please try again in 20s."}, "cooldown", "rate_limit_exceeded", 20.0),
    ({"code": "insufficient_quota", "message": "quota"}, "limited", "insufficient_quota", None),
    ({"code": "usage_limit_reached"}, "limited", "usage_limit_reached", None),
    ({"code": "server_is_overloaded"}, "cooldown", "server_is_overloaded", None),
    ({"code": "server_error", "message": "try again in 1.5s"}, "cooldown", "server_error", 1.5),
    ({"code": "context_length_exceeded"}, "neutral", "context_length_exceeded", None),
    ({}, "neutral", "response_failed", None),
    (None, "neutral", "response_failed", None),
]


@pytest.mark.parametrize("error,kind,reason,retry", STREAM)
def test_response_failed_in_a_stream(error, kind, reason, retry):
    v = classify_stream_failure(error, NOW)
    assert (v.kind, v.reason, v.retry_after) == (kind, reason, retry)


def test_ws_error_frames_read_like_http():
    v = classify_ws_error({"type": "error", "status": 429, "error": {"type": "usage_limit_reached", "resets_at": NOW + 60}}, NOW)
    assert (v.kind, v.until) == ("limited", NOW + 60)
    assert classify_ws_error({"type": "error", "status": 503, "error": {}}, NOW).kind == "cooldown"
    assert classify_ws_error({"type": "error", "status_code": 401, "error": {}}, NOW).kind == "auth"
    assert classify_ws_error({"type": "error", "error": {"code": "rate_limit_exceeded"}}, NOW).kind == "cooldown"


@pytest.mark.parametrize("msg,kind", [("Client disconnected.", "neutral"), ("Server disconnected.", "cooldown"),
                                      ("Connection refused", "cooldown"), ("", "cooldown")])
def test_transport_errors(msg, kind):
    assert classify_transport_error(msg).kind == kind


@pytest.mark.parametrize("text,seconds", [("try again in 20s", 20), ("Try again in 250ms.", 0.25), ("try again in 2 minutes", 120),
                                          ("later", None)])
def test_try_again(text, seconds):
    assert try_again_seconds(text) == seconds
