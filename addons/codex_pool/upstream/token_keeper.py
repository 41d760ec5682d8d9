"""Keeping every account's tokens fresh: which accounts to refresh now, and retry backoff.

A background loop asks `due()` which accounts to refresh (access token expiring within the
margin, or no `exp` and `last_refresh` older than 8 days), skipping accounts in backoff after a
transient failure. No mitmproxy imports.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from codex_pool.core import refresh_policy
from codex_pool.core.auth_file import Account
from codex_pool.upstream.refresher import PERMANENT, RefreshResult, Refresher


MIN_INTERVAL = 300.0  # seconds between proactive refreshes of one account


@dataclass
class _Retry:
    failures: int = 0
    next_at: float = 0.0


@dataclass
class TokenKeeper:
    refresher: Refresher
    margin: float = 3600.0
    _retry: dict[str, _Retry] = field(default_factory=dict)

    def due(self, accounts: dict[str, Account], now: float, skip: set[str] = frozenset()) -> list[tuple[Account, str]]:
        out = []
        for name, account in sorted(accounts.items()):
            if name in skip:
                continue
            reason = refresh_policy.refresh_due(account, now, self.margin)
            retry = self._retry.get(name)
            if reason and (retry is None or retry.next_at <= now or account.expired(now)):
                out.append((account, reason))
        return out

    async def refresh(self, account: Account, reason: str, now: float) -> RefreshResult:
        result = await self.refresher.refresh(account, reason)
        self.record(account.name, result, now)
        return result

    def record(self, name: str, result: RefreshResult, now: float) -> None:
        if result.ok:
            # tokens that come back already inside the margin are not refreshed again at once
            self._retry[name] = _Retry(0, now + MIN_INTERVAL)
            return
        if result.outcome == PERMANENT:
            self._retry.pop(name, None)
            return
        retry = self._retry.setdefault(name, _Retry())
        retry.failures += 1
        retry.next_at = now + refresh_policy.backoff(retry.failures)

    def forget(self, name: str) -> None:
        self._retry.pop(name, None)
