"""Rate-limit figures of one account, from whichever signal brought them.

Three sources carry the same facts: the `x-codex-primary-*` / `x-codex-secondary-*` response
headers, the `codex.rate_limits` stream/WebSocket event, and `GET /backend-api/wham/usage`.
Primary is the 5-hour window, secondary the weekly one. Each parser returns a `RateLimits` or None
when the input says nothing usable; none of them raises on malformed input.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Window:
    used_percent: float
    window_minutes: int | None = None
    reset_at: float | None = None  # unix seconds

    def used_now(self, now: float) -> float:
        """Used percent, taking a reset that has already happened into account."""
        if self.reset_at is not None and self.reset_at <= now:
            return 0.0
        return self.used_percent

    def to_dict(self) -> dict[str, Any]:
        return {"used_percent": self.used_percent, "window_minutes": self.window_minutes, "reset_at": self.reset_at}


@dataclass(frozen=True)
class Credits:
    has_credits: bool | None = None
    unlimited: bool | None = None
    balance: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"has_credits": self.has_credits, "unlimited": self.unlimited, "balance": self.balance}


@dataclass(frozen=True)
class RateLimits:
    primary: Window | None
    secondary: Window | None
    credits: Credits | None
    observed_at: float
    source: str  # "headers" | "event" | "usage"
    plan: str | None = None

    def headroom(self, now: float) -> float | None:
        """Percent left in the tightest known window, or None when no window is known."""
        used = [w.used_now(now) for w in (self.primary, self.secondary) if w is not None]
        if not used:
            return None
        return max(0.0, 100.0 - max(used))

    def to_dict(self) -> dict[str, Any]:
        return {
            "primary": self.primary.to_dict() if self.primary else None,
            "secondary": self.secondary.to_dict() if self.secondary else None,
            "credits": self.credits.to_dict() if self.credits else None,
            "plan": self.plan,
            "observed_at": self.observed_at,
            "source": self.source,
        }


def _num(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def _bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    return None


def _window(used: Any, minutes: Any, reset_at: Any) -> Window | None:
    used_percent = _num(used)
    if used_percent is None:
        return None
    mins = _num(minutes)
    reset = _num(reset_at)
    return Window(
        used_percent=min(max(used_percent, 0.0), 100.0),
        window_minutes=int(mins) if mins is not None and mins > 0 else None,
        reset_at=reset if reset is not None and reset > 0 else None,
    )


def from_headers(headers: Mapping[str, str], now: float) -> RateLimits | None:
    """From `x-codex-*` response headers (names compared case-insensitively by the mapping)."""
    def get(name: str) -> str | None:
        return headers.get(name)

    windows = {}
    for which in ("primary", "secondary"):
        windows[which] = _window(
            get(f"x-codex-{which}-used-percent"),
            get(f"x-codex-{which}-window-minutes"),
            get(f"x-codex-{which}-reset-at"),
        )
    credits = None
    if any(get(f"x-codex-credits-{k}") is not None for k in ("has-credits", "unlimited", "balance")):
        credits = Credits(
            has_credits=_bool(get("x-codex-credits-has-credits")),
            unlimited=_bool(get("x-codex-credits-unlimited")),
            balance=get("x-codex-credits-balance"),
        )
    if windows["primary"] is None and windows["secondary"] is None and credits is None:
        return None
    return RateLimits(windows["primary"], windows["secondary"], credits, now, "headers")


def _credits_obj(obj: Any) -> Credits | None:
    if not isinstance(obj, dict):
        return None
    balance = obj.get("balance")
    return Credits(
        has_credits=_bool(obj.get("has_credits")),
        unlimited=_bool(obj.get("unlimited")),
        balance=str(balance) if balance is not None else None,
    )


def from_event(event: Any, now: float) -> RateLimits | None:
    """From a `codex.rate_limits` event: {"rate_limits": {"primary": {...}, "secondary": {...}}, "credits": {...}}."""
    if not isinstance(event, dict):
        return None
    limits = event.get("rate_limits")
    if not isinstance(limits, dict):
        return None
    windows = {}
    for which in ("primary", "secondary"):
        w = limits.get(which)
        windows[which] = (
            _window(w.get("used_percent"), w.get("window_minutes"), w.get("reset_at") or w.get("resets_at"))
            if isinstance(w, dict)
            else None
        )
    credits = _credits_obj(event.get("credits", limits.get("credits")))
    if windows["primary"] is None and windows["secondary"] is None and credits is None:
        return None
    plan = event.get("plan_type") if isinstance(event.get("plan_type"), str) else None
    return RateLimits(windows["primary"], windows["secondary"], credits, now, "event", plan)


def from_usage_payload(payload: Any, now: float) -> RateLimits | None:
    """From `GET /backend-api/wham/usage`."""
    if not isinstance(payload, dict):
        return None
    rate = payload.get("rate_limit") if isinstance(payload.get("rate_limit"), dict) else {}
    windows = {}
    for which in ("primary", "secondary"):
        w = rate.get(f"{which}_window")
        if not isinstance(w, dict):
            windows[which] = None
            continue
        seconds = _num(w.get("limit_window_seconds"))
        reset_at = _num(w.get("reset_at"))
        if reset_at is None and _num(w.get("reset_after_seconds")) is not None:
            reset_at = now + float(_num(w.get("reset_after_seconds")) or 0)
        windows[which] = _window(w.get("used_percent"), seconds / 60 if seconds else None, reset_at)
    credits = _credits_obj(payload.get("credits"))
    plan = payload.get("plan_type") if isinstance(payload.get("plan_type"), str) else None
    if windows["primary"] is None and windows["secondary"] is None and credits is None:
        return None
    return RateLimits(windows["primary"], windows["secondary"], credits, now, "usage", plan)
