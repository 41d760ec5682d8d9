"""The live account registry: what the pool folder holds plus what we learned while serving.

It is the one place that answers "is this account usable now, and if not, why". Later
health states (cooling, limited, disabled) extend `_unusable_reason`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

from .auth_file import Account
from .pool_folder import PoolScan, Problem
from .quota import RateLimits
from .selection import Candidate


@dataclass
class Runtime:
    """What we know of one account beyond its file."""

    last_used: float = 0.0
    requests: int = 0
    in_flight: int = 0
    rate_limits: RateLimits | None = None


@dataclass
class AccountRegistry:
    accounts: dict[str, Account] = field(default_factory=dict)
    problems: dict[str, Problem] = field(default_factory=dict)
    duplicates: dict[str, str] = field(default_factory=dict)
    shadowed: dict[str, Account] = field(default_factory=dict)
    folder_error: str | None = None
    runtime: dict[str, Runtime] = field(default_factory=dict)
    pool_label: str = "pool/"  # how messages name the pool folder

    def apply_scan(self, scan: PoolScan) -> None:
        self.accounts = dict(scan.accounts)
        self.problems = dict(scan.problems)
        self.duplicates = dict(scan.duplicates)
        self.shadowed = dict(scan.shadowed)
        self.folder_error = scan.folder_error
        for name in list(self.runtime):
            if name not in self.accounts:
                del self.runtime[name]

    def rt(self, name: str) -> Runtime:
        return self.runtime.setdefault(name, Runtime())

    def unusable_reason(self, name: str, now: float) -> str | None:
        account = self.accounts.get(name)
        if account is None:
            return "not in the pool"
        if account.expired(now):
            return f"access token expired at {iso(account.access_expires_at)}; replace {account.path.name} with a fresh login"
        return None

    def usable_names(self, now: float) -> list[str]:
        return [n for n in sorted(self.accounts) if self.unusable_reason(n, now) is None]

    def candidates(self, now: float, last_picked: dict[str, float]) -> list[Candidate]:
        """Usable accounts for selection; `last_picked` is the caller's own LRU record."""
        out = []
        for name in self.usable_names(now):
            rt = self.runtime.get(name)
            out.append(
                Candidate(
                    name=name,
                    last_used=last_picked.get(name, 0.0),
                    headroom=rt.rate_limits.headroom(now) if rt and rt.rate_limits else None,
                )
            )
        return out

    def why_none_usable(self, now: float) -> str:
        """A sentence for the 503 answer when no account can serve."""
        if self.folder_error:
            return f"the pool folder is unusable: {self.folder_error}"
        if not self.accounts:
            if self.problems:
                names = ", ".join(f"{p.path.name}" for p in list(self.problems.values())[:5])
                return f"{self.pool_label} has no usable account: every file is invalid ({names}); see the proxy log, fix or replace them"
            return f"{self.pool_label} has no usable account — drop a Codex auth.json there (or POST /admin/reload after adding one)"
        reasons = "; ".join(f"{n}: {self.unusable_reason(n, now)}" for n in sorted(self.accounts)[:5])
        return f"no pool account is usable now ({reasons})"

    def record_rate_limits(self, name: str, limits: RateLimits) -> None:
        if name in self.accounts:
            self.rt(name).rate_limits = limits

    def describe(self, now: float, sticky_counts: dict[str, int]) -> list[dict]:
        """Admin view of every pool file: served accounts, duplicates and invalid files. No tokens."""
        rows: list[dict] = []
        for name, account in sorted(self.accounts.items()):
            reason = self.unusable_reason(name, now)
            rt = self.runtime.get(name) or Runtime()
            rows.append(
                {
                    "name": name,
                    "file": account.path.name,
                    "email": account.email,
                    "account_id": account.account_id,
                    "plan": account.plan,
                    "state": "usable" if reason is None else "unusable",
                    "usable": reason is None,
                    "reason": reason,
                    "access_expires_at": iso(account.access_expires_at),
                    "last_used": iso(rt.last_used) if rt.last_used else None,
                    "requests": rt.requests,
                    "in_flight": rt.in_flight,
                    "sticky_conversations": sticky_counts.get(name, 0),
                    "rate_limits": rt.rate_limits.to_dict() if rt.rate_limits else None,
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
