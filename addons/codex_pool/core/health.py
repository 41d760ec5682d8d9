"""Per-account health: the one place that decides whether an account may serve now.

States: `usable`; `cooling` (until, reason, last upstream error) after a transient failure, with
exponential backoff per account; `limited` (until) after a usage limit; `disabled`
(`reauth_required`, `deactivated`, `manual`) until its file is replaced or an admin enables it.
Every transition returns `HealthEvent`s for the event log; nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from codex_pool.core.backoff import exponential
from codex_pool.core.outcome import Verdict

USABLE, COOLING, LIMITED, DISABLED = "usable", "cooling", "limited", "disabled"


@dataclass(frozen=True)
class HealthPolicy:
    cooldown_base: float = 5.0
    cooldown_max: float = 300.0
    limit_default: float = 3600.0


@dataclass
class Health:
    state: str = USABLE
    until: float | None = None
    reason: str | None = None
    detail: str | None = None  # the last upstream error text
    failures: int = 0  # consecutive transient failures, for backoff
    out_since: float | None = None  # when the current outage began
    since: float | None = None  # when the current state was entered (not kept across restarts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "until": self.until,
            "reason": self.reason,
            "last_error": self.detail,
            "failures": self.failures,
            "out_since": self.out_since,
        }


@dataclass(frozen=True)
class HealthEvent:
    event: str  # account.cooldown | account.limited | account.disabled | account.recovered
    account: str
    fields: dict[str, Any] = field(default_factory=dict)


class HealthBook:
    def __init__(self, policy: HealthPolicy | None = None):
        self.policy = policy or HealthPolicy()
        self._health: dict[str, Health] = {}

    def get(self, name: str) -> Health:
        h = self._health.get(name)
        if h is None:
            h = self._health[name] = Health()
        return h

    def peek(self, name: str) -> Health:
        return self._health.get(name) or Health()

    def usable(self, name: str, now: float) -> bool:
        h = self._health.get(name)
        if h is None or h.state == USABLE:
            return True
        return h.state in (COOLING, LIMITED) and h.until is not None and h.until <= now

    def out_for(self, name: str, now: float) -> float:
        """How long the account has been out, plus how long it is still expected to be (seconds);
        infinite when disabled."""
        h = self._health.get(name)
        if h is None or self.usable(name, now):
            return 0.0
        if h.state == DISABLED:
            return float("inf")
        ahead = max(0.0, (h.until or now) - now)
        behind = max(0.0, now - (h.out_since or now))
        return max(ahead, behind)

    def apply(self, name: str, verdict: Verdict, now: float, *, started: float | None = None,
              turn: bool = True) -> list[HealthEvent]:
        """Fold one classified outcome into the account's state. A success brings a cooling or
        limited account back only when it proves the account serves again: the request `started`
        after the account went out (one already under way says nothing of what happened since), and
        for a usage limit it was a `turn` (the backend answers side requests such as the model list
        from a limited account too)."""
        h = self.get(name)
        if verdict.kind == "ok":
            if h.state in (COOLING, LIMITED):
                if started is not None and h.since is not None and started < h.since:
                    return []
                if h.state == LIMITED and not turn:
                    return []
                events = self._recover(name, h, now, "success")
            else:
                events = []
            h.failures = 0
            return events
        if verdict.kind in ("neutral", "retry") or h.state == DISABLED:
            return []
        h.detail = verdict.detail or h.detail
        if h.out_since is None or h.state == USABLE:
            h.out_since = now
        if verdict.kind == "limited":
            h.state, h.reason, h.since = LIMITED, verdict.reason, now
            h.until = verdict.until if verdict.until and verdict.until > now else now + self.policy.limit_default
            return [HealthEvent("account.limited", name, {"reason": h.reason, "until": h.until, "detail": h.detail})]
        if verdict.kind == "cooldown":
            h.failures += 1
            backoff = exponential(h.failures, self.policy.cooldown_base, self.policy.cooldown_max)
            wait = max(backoff, min(verdict.retry_after or 0.0, 86400.0))
            until = now + wait
            if h.state == LIMITED and h.until and h.until > until:
                return []  # already out for longer
            h.state, h.reason, h.until, h.since = COOLING, verdict.reason, until, now
            return [HealthEvent("account.cooldown", name,
                                {"reason": h.reason, "until": h.until, "seconds": round(wait, 1),
                                 "failures": h.failures, "detail": h.detail})]
        if verdict.kind == "auth":
            return self.disable(name, verdict.disable_as or "reauth_required", now, verdict.detail)
        return []

    def disable(self, name: str, why: str, now: float, detail: str | None = None) -> list[HealthEvent]:
        h = self.get(name)
        if h.state == DISABLED and h.reason == why:
            return []
        h.state, h.reason, h.until = DISABLED, why, None
        h.detail = detail or h.detail
        h.out_since = h.out_since if h.out_since is not None else now
        return [HealthEvent("account.disabled", name, {"reason": why, "detail": h.detail})]

    def enable(self, name: str, now: float, why: str = "manual") -> list[HealthEvent]:
        """Clear a disabled or cooling state (a usage limit is upstream's fact and stays)."""
        h = self.get(name)
        if h.state in (DISABLED, COOLING):
            return self._recover(name, h, now, why)
        return []

    def file_replaced(self, name: str, now: float) -> list[HealthEvent]:
        """New credentials in the account's file: an auth problem is presumed fixed."""
        h = self._health.get(name)
        if h is not None and h.state == DISABLED and h.reason != "manual":
            return self._recover(name, h, now, "file replaced")
        return []

    def tick(self, now: float) -> list[HealthEvent]:
        """Turn expired cooldowns and limits back to usable (called periodically)."""
        events = []
        for name, h in self._health.items():
            if h.state in (COOLING, LIMITED) and h.until is not None and h.until <= now:
                events += self._recover(name, h, now, f"{h.state} ended")
        return events

    def forget(self, name: str) -> None:
        self._health.pop(name, None)

    def _recover(self, name: str, h: Health, now: float, why: str) -> list[HealthEvent]:
        was, reason = h.state, h.reason
        out = round(now - h.out_since, 1) if h.out_since else None
        h.state, h.until, h.reason, h.out_since, h.since = USABLE, None, None, None, None
        if why != "success":
            h.failures = 0
        return [HealthEvent("account.recovered", name, {"was": was, "reason": reason, "why": why, "out_seconds": out})]
