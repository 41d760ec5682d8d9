"""Polling `GET /backend-api/wham/usage` per account, spread out in time.

Each account gets its first poll at a random point within one interval (so a restart does not
burst) and later ones every interval ± 10 %. 200 → rate-limit figures; 401 → the caller refreshes
the account; 403 → polling pauses for that account (it is not disabled); 5xx and network errors
change nothing. No mitmproxy imports; the HTTP client is injected.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import httpx

from codex_pool.core import quota
from codex_pool.core.auth_file import Account

PAUSE_AFTER_403 = 6 * 3600.0
USAGE_PATH = "/backend-api/wham/usage"


@dataclass(frozen=True)
class PollResult:
    kind: str  # "ok" | "unauthorized" | "forbidden" | "error"
    limits: quota.RateLimits | None = None
    detail: str = ""


class UsagePoller:
    def __init__(self, client: httpx.AsyncClient, base_url: str, interval: float, rng: random.Random | None = None):
        self.client = client
        self.base_url = base_url.rstrip("/")
        self.interval = interval
        self.rng = rng or random.Random()
        self._next: dict[str, float] = {}
        self._paused_until: dict[str, float] = {}

    def schedule(self, names: list[str], now: float) -> None:
        """Know the current accounts: new ones get a spread first poll, gone ones are dropped."""
        for name in names:
            if name not in self._next:
                self._next[name] = now + self.rng.uniform(0, self.interval)
        for name in set(self._next) - set(names):
            del self._next[name]
            self._paused_until.pop(name, None)

    def due(self, now: float) -> list[str]:
        return sorted(n for n, at in self._next.items() if at <= now and self._paused_until.get(n, 0.0) <= now)

    def next_poll(self, name: str) -> float | None:
        return self._next.get(name)

    def paused_until(self, name: str) -> float | None:
        return self._paused_until.get(name)

    def resume(self, name: str) -> None:
        """New credentials: poll again (e.g. after the file was replaced)."""
        self._paused_until.pop(name, None)

    async def poll(self, account: Account, now: float) -> PollResult:
        self._next[account.name] = now + self.interval * self.rng.uniform(0.9, 1.1)
        headers = {
            "authorization": f"Bearer {account.access_token}",
            "chatgpt-account-id": account.account_id,
            "accept": "application/json",
            "user-agent": "codex-pool",
        }
        try:
            resp = await self.client.get(self.base_url + USAGE_PATH, headers=headers, timeout=20.0)
        except httpx.HTTPError as e:
            return PollResult("error", None, type(e).__name__)
        if resp.status_code == 200:
            try:
                limits = quota.from_usage_payload(resp.json(), now)
            except ValueError:
                return PollResult("error", None, "answer was not JSON")
            return PollResult("ok", limits)
        if resp.status_code == 401:
            return PollResult("unauthorized", None, "401")
        if resp.status_code == 403:
            self._paused_until[account.name] = now + PAUSE_AFTER_403
            return PollResult("forbidden", None, "403: polling paused for this account")
        return PollResult("error", None, f"HTTP {resp.status_code}")
