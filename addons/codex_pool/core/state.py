"""Serving state that survives a restart: sticky conversations, account health (cooling / limited
until, disabled and why), the admin pin, and quota figures.

`snapshot()` and `restore()` are pure translations between the live objects and a JSON document;
storage.state_file keeps that document on disk.
A restart therefore neither moves conversations to new accounts (cold prompt caches) nor sends
traffic to an account known to be limited.
"""

from __future__ import annotations

from typing import Any

from codex_pool.core import quota
from codex_pool.core.redact import fingerprint
from codex_pool.core.accounts import AccountRegistry
from codex_pool.core.health import DISABLED, USABLE
from codex_pool.core.router import Router

VERSION = 1
# How stale the saved document may get. What decides where traffic may go (an account cooling,
# limited or disabled, the admin pin) is saved within one tick of changing; sticky conversations
# and quota figures change with every request, cost the most to write (a document of every live
# conversation) and are saved at least this often, and at shutdown.
FULL_SAVE_SECONDS = 60.0


def urgent(router: Router, registry: AccountRegistry) -> dict[str, Any]:
    """The part of the state that must reach the disk soon after it changes (cheap to build)."""
    return {"pinned": router.pinned, "health": _health(registry)}


def save_due(saved_urgent: dict[str, Any] | None, current_urgent: dict[str, Any], saved_at: float | None,
             now: float) -> bool:
    """Whether the periodic save should write now: something urgent changed, or the last full save
    is FULL_SAVE_SECONDS old."""
    return saved_at is None or current_urgent != saved_urgent or now - saved_at >= FULL_SAVE_SECONDS


def _health(registry: AccountRegistry) -> dict[str, Any]:
    health = {}
    for name in registry.accounts:
        h = registry.health.peek(name)
        if h.state != USABLE or h.failures:
            account = registry.accounts[name]
            health[name] = {**h.to_dict(), "detail": h.detail, "token": fingerprint(account.refresh_token or account.access_token)}
    return health


def snapshot(router: Router, registry: AccountRegistry, now: float) -> dict[str, Any]:
    health = _health(registry)
    quotas = {}
    for name, rt in registry.runtime.items():
        if rt.quota.latest is not None:
            quotas[name] = rt.quota.latest.to_dict()
    return {
        "version": VERSION,
        "saved_at": now,
        "pinned": router.pinned,
        "sticky": router.sticky.export(now),
        "health": health,
        "quota": quotas,
    }


def restore(doc: dict[str, Any], router: Router, registry: AccountRegistry, now: float) -> dict[str, int]:
    """Apply a saved snapshot to freshly loaded objects; returns counts of what was restored."""
    if not isinstance(doc, dict) or doc.get("version") != VERSION:
        return {}
    counts = {"sticky": 0, "health": 0, "quota": 0, "pinned": 0}
    pinned = doc.get("pinned")
    if isinstance(pinned, str) and pinned in registry.accounts:
        router.pinned = pinned
        counts["pinned"] = 1
    counts["sticky"] = router.sticky.import_(doc.get("sticky") or [], now)
    for name, saved in (doc.get("health") or {}).items():
        account = registry.accounts.get(name)
        if account is None or not isinstance(saved, dict):
            continue
        state = saved.get("state")
        until = saved.get("until")
        if state == DISABLED and saved.get("reason") != "manual" and \
                saved.get("token") != fingerprint(account.refresh_token or account.access_token):
            continue  # the file was replaced while we were down: the auth problem is presumed fixed
        if state in ("cooling", "limited") and (not isinstance(until, (int, float)) or until <= now):
            continue
        h = registry.health.get(name)
        h.state = state if state in ("cooling", "limited", DISABLED) else USABLE
        h.until = until if h.state in ("cooling", "limited") else None
        h.reason = saved.get("reason")
        h.detail = saved.get("detail")
        h.failures = int(saved.get("failures") or 0)
        h.out_since = saved.get("out_since")
        h.since = now  # requests under way before the restart are gone
        counts["health"] += 1
    for name, saved in (doc.get("quota") or {}).items():
        if name in registry.accounts and isinstance(saved, dict):
            limits = _limits_from_dict(saved)
            if limits is not None:
                registry.rt(name).quota.record(limits)
                counts["quota"] += 1
    return counts


def _limits_from_dict(d: dict[str, Any]) -> quota.RateLimits | None:
    def window(w: Any) -> quota.Window | None:
        if not isinstance(w, dict) or not isinstance(w.get("used_percent"), (int, float)):
            return None
        return quota.Window(float(w["used_percent"]), w.get("window_minutes"), w.get("reset_at"))

    c = d.get("credits")
    credits = quota.Credits(c.get("has_credits"), c.get("unlimited"), c.get("balance")) if isinstance(c, dict) else None
    observed = d.get("observed_at")
    if not isinstance(observed, (int, float)):
        return None
    return quota.RateLimits(window(d.get("primary")), window(d.get("secondary")), credits, float(observed),
                            str(d.get("source") or "saved"), d.get("plan"))
