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
    if not headers:
        return None  # most answers carry none
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


SOON_SECONDS = 3600.0  # an account predicted to run out within this much time is worth less
NEAR_FULL = 95.0


class QuotaTracker:
    """One account's latest figures plus a short history, to estimate how fast it burns quota."""

    def __init__(self, max_samples: int = 32):
        self.latest: RateLimits | None = None
        self._samples: list[RateLimits] = []
        self._max = max_samples
        self._burn: dict[str, float | None] = {}  # burn_per_hour by window, until the next sample

    def record(self, limits: RateLimits) -> None:
        if self.latest is not None and limits.observed_at < self.latest.observed_at:
            return
        self.latest = _merged(self.latest, limits)
        self._samples.append(self.latest)
        del self._samples[: -self._max]
        self._burn.clear()

    def burn_per_hour(self, which: str) -> float | None:
        """Percent per hour used in the current window, from samples at least a minute apart.
        A function of the samples alone, so it is computed once per new sample (every routing
        decision asks for every account's)."""
        if which not in self._burn:
            self._burn[which] = self._burn_per_hour(which)
        return self._burn[which]

    def _burn_per_hour(self, which: str) -> float | None:
        current = getattr(self.latest, which) if self.latest else None
        if current is None:
            return None
        # the oldest sample of the current window (the newest sample is `latest`, always in it)
        last = self._samples[-1]
        first = next(s for s in self._samples if (w := getattr(s, which)) is not None and _same_window(w, current))
        if first is last:
            return None
        span = last.observed_at - first.observed_at
        if span < 60:
            return None
        delta = getattr(last, which).used_percent - getattr(first, which).used_percent
        return max(0.0, delta / span * 3600.0)

    def seconds_to_exhaustion(self, which: str, now: float) -> float | None:
        window = getattr(self.latest, which) if self.latest else None
        rate = self.burn_per_hour(which)
        if window is None or not rate:
            return None
        return (100.0 - window.used_now(now)) / rate * 3600.0

    def effective_headroom(self, now: float) -> float | None:
        """Headroom as selection should weigh it: an account about to hit a window (≥ 95 % used, or
        predicted by its recent burn rate to run out within the hour and before the window resets)
        counts for less."""
        if self.latest is None:
            return None
        headroom = self.latest.headroom(now)
        if headroom is None:
            return None
        for which in ("primary", "secondary"):
            window = getattr(self.latest, which)
            if window is None:
                continue
            left = 100.0 - window.used_now(now)
            if 100.0 - left >= NEAR_FULL:
                headroom = min(headroom, left / 4)
            eta = self.seconds_to_exhaustion(which, now)
            resets_in = (window.reset_at - now) if window.reset_at else float("inf")
            if eta is not None and eta < SOON_SECONDS and eta < resets_in:
                headroom = min(headroom, left * eta / SOON_SECONDS)
        return headroom

    def to_dict(self) -> dict | None:
        if self.latest is None:
            return None
        out = self.latest.to_dict()
        for which in ("primary", "secondary"):
            rate = self.burn_per_hour(which)
            if out.get(which) and rate is not None:
                out[which]["burn_percent_per_hour"] = round(rate, 2)
        return out


def _same_window(a: Window, b: Window) -> bool:
    if a.reset_at is None or b.reset_at is None:
        return a.reset_at is None and b.reset_at is None
    return abs(a.reset_at - b.reset_at) <= 120


def _merged(old: RateLimits | None, new: RateLimits) -> RateLimits:
    """A new observation, keeping what it does not say (e.g. a header set without credits)."""
    if old is None:
        return new
    return RateLimits(
        primary=new.primary or old.primary,
        secondary=new.secondary or old.secondary,
        credits=new.credits or old.credits,
        observed_at=new.observed_at,
        source=new.source,
        plan=new.plan or old.plan,
    )
