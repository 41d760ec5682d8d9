"""What an upstream answer says about the account that got it: a `Verdict`, from a pure table.

| answer | verdict |
|---|---|
| 1xx/2xx/3xx | ok (resets backoff) |
| 429 `usage_limit_reached` / `usage_not_included` | limited until `resets_at`, else `resets_in_seconds`, else the exhausted window's reset, else a default |
| 403 with usage-limit wording | limited, as above |
| 401, other 403 | auth: out until its file is replaced (`deactivated` when upstream says so) |
| plain 429, 5xx, `server_is_overloaded` / `slow_down`, connect/read failure | cooldown (Retry-After honoured) |
| `response.failed` in a 200 stream | by its code: quota → limited, rate limit / overload / server error → cooldown, else neutral |
| WebSocket error frame `{"type":"error","status":S}` | as an HTTP answer with status S |
| other 4xx, client disconnect | neutral: not the account's doing |
| a stream that ends without response.completed | cooldown (`stream_incomplete`); `response.incomplete` is ok |
| such a stream the tap could not read whole (an event past its cap, an encoding it cannot undo) | neutral (`unparsed`): its end may be in what was not read |

Every parser here reads what upstream sent and never raises on it: numbers that are not finite
(JSON's `Infinity`, `1e999`) count as absent, and any body or error object gives a verdict.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from codex_pool.core.quota import RateLimits

USAGE_LIMIT_CODES = frozenset({"usage_limit_reached", "usage_not_included", "insufficient_quota"})
OVERLOAD_CODES = frozenset({"server_is_overloaded", "slow_down"})
RATE_LIMIT_CODES = frozenset({"rate_limit_exceeded", "rate_limited", "too_many_requests"})
SERVER_CODES = frozenset({"server_error", "internal_error", "service_unavailable"})
DEACTIVATED_CODES = frozenset({"account_deactivated", "deactivated_workspace", "account_suspended"})
_USAGE_WORDING = re.compile(r"usage[ _-]?limit|usage_not_included|insufficient[ _]quota|quota", re.I)
_TRY_AGAIN = re.compile(r"try again in\s+([0-9]+(?:\.[0-9]+)?)\s*(ms|s|sec|seconds?|m|min|minutes?)?", re.I)
MAX_DETAIL = 300


@dataclass(frozen=True)
class Verdict:
    kind: str  # "ok" | "limited" | "cooldown" | "auth" | "neutral" | "retry" (serve again, account not to blame)
    reason: str  # short machine reason, e.g. "usage_limit_reached", "server_error", "unauthorized"
    detail: str = ""  # upstream's own words, trimmed (never a token: error bodies carry none)
    until: float | None = None  # limited: when the limit resets (unix s)
    retry_after: float | None = None  # cooldown: seconds upstream asked us to wait
    disable_as: str | None = None  # auth: "reauth_required" | "deactivated"

    @property
    def failed(self) -> bool:
        return self.kind in ("limited", "cooldown", "auth", "retry")


OK = Verdict("ok", "ok")


def error_object(body: Any) -> dict[str, Any]:
    """The `error` object of an error body (`{"error": {...}}`, `{"error": "code"}` or top-level fields)."""
    if isinstance(body, (bytes, str)):
        try:
            body = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
            return {"message": text[:MAX_DETAIL]} if text.strip() else {}
    if not isinstance(body, dict):
        return {}
    err = body.get("error")
    if isinstance(err, dict):
        return err
    if isinstance(err, str):
        return {"code": err, "message": str(body.get("error_description") or body.get("message") or err)}
    return {k: body[k] for k in ("type", "code", "message", "detail", "resets_at", "resets_in_seconds") if k in body}


def _codes(err: Mapping[str, Any]) -> set[str]:
    return {str(err[k]).lower() for k in ("type", "code") if isinstance(err.get(k), str)}


def _detail(err: Mapping[str, Any]) -> str:
    text = err.get("message") or err.get("detail") or ""
    if not isinstance(text, str):
        text = json.dumps(text)[:MAX_DETAIL]
    return " ".join(text.split())[:MAX_DETAIL]


def _num(value: Any) -> float | None:
    """A finite number, or None (an infinite `resets_at` or status would put an account away for
    ever, or fail `int()`)."""
    if isinstance(value, bool):
        return None
    try:
        n = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return n if math.isfinite(n) else None


def retry_after_seconds(value: str | None) -> float | None:
    """A Retry-After header in seconds (HTTP-date forms are ignored)."""
    n = _num(value.strip()) if isinstance(value, str) else None
    return n if n is not None and 0 <= n <= 86400 else None


def limit_reset(err: Mapping[str, Any], now: float, latest: RateLimits | None) -> float | None:
    """When a usage limit lifts: `resets_at`, else `resets_in_seconds`, else the exhausted window's reset."""
    at = _num(err.get("resets_at"))
    if at is not None and at > now:
        return at
    within = _num(err.get("resets_in_seconds"))
    if within is not None and within > 0:
        return now + within
    if latest is not None:
        windows = [w for w in (latest.primary, latest.secondary) if w is not None and w.reset_at and w.reset_at > now]
        exhausted = [w.reset_at for w in windows if w.used_percent >= 100.0]
        if exhausted:
            return max(exhausted)
        if windows:
            return max(w.reset_at for w in windows if w.reset_at)
    return None


def classify_http(status: int, headers: Mapping[str, str], body: bytes | str | dict | None, now: float,
                  latest: RateLimits | None = None) -> Verdict:
    """An HTTP answer (or a WebSocket error frame's status and error object)."""
    if status < 400:
        return OK
    err = error_object(body if body is not None else b"")
    codes = _codes(err)
    detail = _detail(err)
    retry = retry_after_seconds(headers.get("retry-after"))
    wording = " ".join([*codes, detail])
    if status == 429 and codes & {"usage_limit_reached", "usage_not_included"} or (
        status == 403 and _USAGE_WORDING.search(wording)
    ):
        reason = next(iter(sorted(codes & USAGE_LIMIT_CODES)), "usage_limit_reached")
        return Verdict("limited", reason, detail, until=limit_reset(err, now, latest))
    if status in (401, 403):
        if codes & DEACTIVATED_CODES or re.search(r"deactivated|suspended", detail, re.I):
            return Verdict("auth", "deactivated", detail, disable_as="deactivated")
        return Verdict("auth", "unauthorized" if status == 401 else "forbidden", detail, disable_as="reauth_required")
    if status == 429:
        return Verdict("cooldown", "rate_limited", detail, retry_after=retry)
    if status >= 500 or codes & OVERLOAD_CODES:
        reason = next(iter(sorted(codes & OVERLOAD_CODES)), f"server_error_{status}")
        return Verdict("cooldown", reason, detail, retry_after=retry)
    return Verdict("neutral", f"client_error_{status}", detail)


def classify_stream_failure(error: Mapping[str, Any] | None, now: float, latest: RateLimits | None = None) -> Verdict:
    """The error object of a `response.failed` event inside a 200 stream."""
    err = dict(error or {})
    codes = _codes(err)
    detail = _detail(err)
    if codes & USAGE_LIMIT_CODES:
        return Verdict("limited", sorted(codes & USAGE_LIMIT_CODES)[0], detail, until=limit_reset(err, now, latest))
    if codes & (RATE_LIMIT_CODES | OVERLOAD_CODES | SERVER_CODES):
        return Verdict("cooldown", sorted(codes & (RATE_LIMIT_CODES | OVERLOAD_CODES | SERVER_CODES))[0], detail,
                       retry_after=try_again_seconds(detail))
    return Verdict("neutral", sorted(codes)[0] if codes else "response_failed", detail)


def classify_ws_error(frame: Mapping[str, Any], now: float, latest: RateLimits | None = None) -> Verdict:
    """A WebSocket error frame `{"type": "error", "status": 429, "error": {...}}`."""
    status = _num(frame.get("status", frame.get("status_code")))
    err = frame.get("error") if isinstance(frame.get("error"), dict) else {}
    headers = frame.get("headers") if isinstance(frame.get("headers"), dict) else {}
    headers = {str(k).lower(): str(v) for k, v in headers.items()}
    if status is None:
        return classify_stream_failure(err, now, latest)
    return classify_http(int(status), headers, {"error": err}, now, latest)


def classify_transport_error(message: str) -> Verdict:
    """mitmproxy's flow.error message: the client leaving is neutral, anything else cools the account."""
    text = message or ""
    if "client disconnected" in text.lower() or "client closed" in text.lower():
        return Verdict("neutral", "client_disconnected", text[:MAX_DETAIL])
    return Verdict("cooldown", "connection_error", text[:MAX_DETAIL])


def try_again_seconds(text: str) -> float | None:
    """"Please try again in 20s" → 20.0 (the wording Codex itself honours in response.failed)."""
    m = _TRY_AGAIN.search(text or "")
    if not m:
        return None
    value = float(m.group(1))
    unit = (m.group(2) or "s").lower()
    if unit == "ms":
        return value / 1000
    if unit.startswith("m"):
        return value * 60
    return value


def stream_verdict(observer: Any, now: float, latest: RateLimits | None = None) -> Verdict:
    """What a finished stream (an SSE answer, or one WebSocket turn) says about its account.
    `observer` is the turn's TurnObserver (or None when nothing was parsed)."""
    if observer is None or observer.completed:
        return OK
    if observer.failed is not None:
        return classify_stream_failure(observer.failed, now, latest)
    if observer.error is not None:
        return classify_ws_error(observer.error, now, latest)
    if observer.incomplete:
        return OK  # e.g. max_output_tokens: the account did its job
    unparsed = getattr(observer, "unparsed", None)
    if unparsed:  # the end may be in what could not be read: nothing to hold against the account
        return Verdict("neutral", "unparsed",
                       f"the proxy could not read the whole answer ({unparsed}); it was passed on untouched")
    return Verdict("cooldown", "stream_incomplete", "the answer ended before response.completed")
