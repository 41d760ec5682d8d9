"""Keeping every account's tokens fresh: which accounts to refresh now, and retry backoff.

A background loop asks `due()` which accounts to refresh (access token within its lead time of
expiry — the margin, or half the lifetime of a short-lived token — or no `exp` and `last_refresh`
older than 8 days), skipping accounts paced after a refresh or in backoff after a transient
failure; an expired token is never held back. No mitmproxy imports.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from codex_pool.core import refresh_policy
from codex_pool.core.auth_file import Account
from codex_pool.upstream.refresher import PERMANENT, RefreshResult, Refresher



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
            # tokens that come back already inside their lead time are not refreshed again at once
            self._retry[name] = _Retry(0, now + refresh_policy.pace(result.account))
            return
        if result.outcome == PERMANENT:
            self._retry.pop(name, None)
            return
        retry = self._retry.setdefault(name, _Retry())
        retry.failures += 1
        retry.next_at = now + refresh_policy.backoff(retry.failures)

    def forget(self, name: str) -> None:
        self._retry.pop(name, None)
