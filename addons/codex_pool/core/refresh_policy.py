"""When to refresh an account's tokens, and what a failed refresh means. Pure.

Refresh tokens rotate and are single-use. Permanent failures (HTTP 401, `invalid_grant`,
`refresh_token_expired`, `refresh_token_reused`, `refresh_token_invalidated`) mean the user must
log in again; 5xx and network errors are transient and retried with backoff.
"""

from __future__ import annotations

import json
from typing import Any

from codex_pool.core.auth_file import Account
from codex_pool.core.backoff import exponential

# what a refresh can come to (upstream/refresher.py; the metrics' `result` label)
REFRESHED, ADOPTED, PERMANENT, TRANSIENT = "refreshed", "adopted", "failed_permanent", "failed_transient"
OUTCOMES = (REFRESHED, ADOPTED, PERMANENT, TRANSIENT)
STALE_AFTER = 8 * 24 * 3600  # Codex's rule for tokens without `exp`
PERMANENT_CODES = frozenset(
    {"invalid_grant", "refresh_token_expired", "refresh_token_reused", "refresh_token_invalidated"}
)
CODEX_CLIENT_ID = "app_EMoamEEZ73f0CkXaXp7hrann"


MIN_INTERVAL = 300.0  # seconds between proactive refreshes of one long-lived token
LEAD_SHARE = 0.5  # a short-lived token is refreshed once this share of its lifetime is left
PACE_SHARE = 0.25  # ... and not again before this share of the new lifetime has passed


def lead_time(account: Account, margin: float) -> float:
    """How long before its expiry an access token is refreshed: `margin`, but at most half the
    token's lifetime, so a token issued for less than twice the margin is not refreshed at once
    (and again, and again) but still well before it runs out."""
    lifetime = account.token_lifetime()
    return margin if lifetime is None else min(margin, lifetime * LEAD_SHARE)


def pace(account: Account | None) -> float:
    """After a successful refresh, how long before the next proactive one may start: enough to
    stop a token endpoint that hands out nearly expired tokens from being asked in a loop, never
    so long that a short-lived token runs out first (its lead time is half its lifetime)."""
    lifetime = account.token_lifetime() if account is not None else None
    return MIN_INTERVAL if lifetime is None else min(MIN_INTERVAL, lifetime * PACE_SHARE)


def refresh_due(account: Account, now: float, margin: float) -> str | None:
    """Why the account should be refreshed now, or None."""
    if account.refresh_token is None:
        return None
    if account.access_expires_at is not None:
        return "proactive_expiry" if account.access_expires_at - now <= lead_time(account, margin) else None
    if account.last_refresh is None or now - account.last_refresh.timestamp() > STALE_AFTER:
        return "stale_last_refresh"
    return None


def error_code(body: bytes | str | Any) -> str | None:
    """The error code of a token-endpoint answer: `error.code`, `error` as a string, or `code`."""
    if isinstance(body, (bytes, str)):
        try:
            body = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return None
    if not isinstance(body, dict):
        return None
    err = body.get("error")
    if isinstance(err, dict):
        code = err.get("code") or err.get("type")
        return str(code) if code else None
    if isinstance(err, str) and err:
        return err
    code = body.get("code")
    return str(code) if isinstance(code, str) and code else None


def classify_failure(status: int | None, body: bytes | str | None) -> tuple[str, str]:
    """("permanent" | "transient", code) for a failed refresh; status None = network error."""
    code = error_code(body) if body else None
    if status == 401 or (code and code.lower() in PERMANENT_CODES):
        return "permanent", code or "unauthorized"
    if status is None:
        return "transient", "network_error"
    return "transient", code or f"http_{status}"


def backoff(failures: int, base: float = 5.0, cap: float = 300.0) -> float:
    return exponential(failures, base, cap)
