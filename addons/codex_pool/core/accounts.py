"""The live account registry: what the pool folder holds plus what we learned while serving.

It is the one place that answers "is this account usable now, and if not, why". Later
health states (cooling, limited, disabled) extend `_unusable_reason`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

from codex_pool.core.auth_file import Account
from codex_pool.core.health import DISABLED, HealthBook, HealthEvent
from codex_pool.core.pool_scan import PoolScan, Problem
from codex_pool.core.quota import QuotaTracker, RateLimits
from codex_pool.core.selection import Candidate


@dataclass
class Runtime:
    """What we know of one account beyond its file."""

    last_used: float = 0.0
    requests: int = 0
    in_flight: int = 0
    quota: QuotaTracker = field(default_factory=QuotaTracker)

    @property
    def rate_limits(self) -> RateLimits | None:
        return self.quota.latest


@dataclass
class AccountRegistry:
    accounts: dict[str, Account] = field(default_factory=dict)
    problems: dict[str, Problem] = field(default_factory=dict)
    duplicates: dict[str, str] = field(default_factory=dict)
    shadowed: dict[str, Account] = field(default_factory=dict)
    folder_error: str | None = None
    runtime: dict[str, Runtime] = field(default_factory=dict)
    pool_label: str = "pool/"  # how messages name the pool folder

    health: HealthBook = field(default_factory=HealthBook)
    superseded: set[str] = field(default_factory=set)  # refresh tokens we rotated away from
    changes: int = 0  # bumped when accounts or their quota figures change (Pool.client_quota's cache)

    def apply_scan(self, scan: PoolScan, now: float) -> list[HealthEvent]:
        """Take a new view of the pool folder. A file whose tokens changed clears an auth problem."""
        previous = self.accounts
        self.changes += 1
        self.accounts = dict(scan.accounts)
        for name, account in self.accounts.items():  # a scan that raced our own write-back
            current = previous.get(name)
            if current is not None and account.refresh_token in self.superseded and current.refresh_token != account.refresh_token:
                self.accounts[name] = current
        self.problems = dict(scan.problems)
        self.duplicates = dict(scan.duplicates)
        self.shadowed = dict(scan.shadowed)
        self.folder_error = scan.folder_error
        events: list[HealthEvent] = []
        for name, account in self.accounts.items():
            old = previous.get(name)
            if old is not None and (old.access_token, old.refresh_token) != (account.access_token, account.refresh_token):
                events += self.health.file_replaced(name, now)
        for name in list(self.runtime):
            if name not in self.accounts:
                del self.runtime[name]
        for name in set(previous) - set(self.accounts):
            self.health.forget(name)
        return events

    def rt(self, name: str) -> Runtime:
        rt = self.runtime.get(name)
        if rt is None:  # not setdefault: that would build a Runtime on every call
            rt = self.runtime[name] = Runtime()
        return rt

    def unusable_reason(self, name: str, now: float) -> str | None:
        account = self.accounts.get(name)
        if account is None:
            return "not in the pool"
        h = self.health.peek(name)
        if h.state == DISABLED:
            fix = {
                "manual": "POST /admin/accounts/{n}/enable to use it again",
                "deactivated": "upstream says the account is deactivated; remove {f} or replace it",
            }.get(h.reason or "", "replace {f} with a fresh `codex login` to use it again")
            return f"disabled ({h.reason}): {fix.format(n=name, f=account.path.name)}"
        if not self.health.usable(name, now):
            return f"{h.state} until {iso(h.until)} ({h.reason})"
        if account.expired(now):
            if account.refresh_token:  # never re-login advice while a refresh may work
                return f"access token expired at {iso(account.access_expires_at)}; refreshing it (requests wait for it)"
            return (f"access token expired at {iso(account.access_expires_at)} and {account.path.name} has no refresh "
                    "token; replace it with a fresh login")
        return None

    def state(self, name: str, now: float) -> str:
        """The account's state as admin views show it: usable | refreshing | expired | cooling |
        limited | disabled (then `unusable_reason` says what to do)."""
        account = self.accounts.get(name)
        h = self.health.peek(name)
        if account is None:
            return "gone"
        if h.state == DISABLED:
            return DISABLED
        if not self.health.usable(name, now):
            return h.state
        if account.expired(now):
            return "refreshing" if account.refresh_token else "expired"
        return "usable"

    def needs_refresh(self, name: str, now: float) -> bool:
        """Only an expired access token keeps the account from serving, and its refresh token may
        still work: a request can wait for the refresh instead of leaving it."""
        account = self.accounts.get(name)
        return (account is not None and account.refresh_token is not None and account.expired(now)
                and self.health.usable(name, now))

    def refreshable_names(self, now: float) -> list[str]:
        return [n for n in sorted(self.accounts) if self.needs_refresh(n, now)]

    def is_usable(self, name: str, now: float) -> bool:
        """`unusable_reason(name, now) is None`, without building the reason (the request path)."""
        account = self.accounts.get(name)
        return account is not None and not account.expired(now) and self.health.usable(name, now)

    def usable_names(self, now: float) -> list[str]:
        return [n for n in sorted(self.accounts) if self.is_usable(n, now)]

    def candidates(self, now: float, last_picked: dict[str, float]) -> list[Candidate]:
        """Usable accounts for selection, by name; `last_picked` is the caller's own LRU record."""
        runtime = self.runtime
        out = []
        for name in self.usable_names(now):
            rt = runtime.get(name)
            out.append(Candidate(name, last_picked.get(name, 0.0), rt.quota.effective_headroom(now) if rt else None))
        return out

    def record_rate_limits(self, name: str, limits: RateLimits) -> None:
        if name in self.accounts:
            self.rt(name).quota.record(limits)
            self.changes += 1

    def describe(self, now: float, sticky_counts: dict[str, int]) -> list[dict]:
        """Admin view of every pool file: served accounts, duplicates and invalid files. No tokens."""
        rows: list[dict] = []
        for name, account in sorted(self.accounts.items()):
            reason = self.unusable_reason(name, now)
            rt = self.runtime.get(name) or Runtime()
            health = self.health.peek(name)
            state = self.state(name, now)
            rows.append(
                {
                    "name": name,
                    "file": account.path.name,
                    "email": account.email,
                    "account_id": account.account_id,
                    "plan": account.plan,
                    "state": state,
                    "usable": reason is None,
                    "reason": reason,
                    "until": iso(health.until) if state in ("cooling", "limited") else None,
                    "last_error": health.detail,
                    "consecutive_failures": health.failures,
                    "access_expires_at": iso(account.access_expires_at),
                    "last_refresh": iso(account.last_refresh.timestamp()) if account.last_refresh else None,
                    "last_used": iso(rt.last_used) if rt.last_used else None,
                    "requests": rt.requests,
                    "in_flight": rt.in_flight,
                    "sticky_conversations": sticky_counts.get(name, 0),
                    "rate_limits": rt.quota.to_dict(),
                }
            )
        for name, served in sorted(self.duplicates.items()):
            dup = self.shadowed.get(name)
            rows.append(
                {
                    "name": name,
                    "file": f"{name}.json",
                    "email": dup.email if dup else None,
                    "account_id": dup.account_id if dup else None,
                    "plan": dup.plan if dup else None,
                    "state": "duplicate",
                    "usable": False,
                    "reason": f"same account as {served}.json, which is served; remove one of the two",
                    "duplicate_of": served,
                }
            )
        for name, problem in sorted(self.problems.items()):
            rows.append(
                {"name": name, "file": problem.path.name, "state": "invalid", "usable": False, "reason": problem.reason}
            )
        return rows


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
