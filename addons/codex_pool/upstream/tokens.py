"""Tokens and quota from upstream for the whole pool: the refresh schedule, refreshing one account
(shared with any refresh in flight), recovering a request that got a 401, and usage polling.

Shared by the addons that need a refresh (HTTP answers, WebSocket frames, the background loops);
applies every result to the `Pool`. No mitmproxy imports.
"""

from __future__ import annotations

import asyncio
import logging

import anyio._backends._asyncio  # noqa: F401  (see below)
import httpx

from codex_pool.core.config import Config
from codex_pool.core.exchange import Exchange
from codex_pool.core.outcome import Verdict
from codex_pool.core.pool import Pool
from codex_pool.core.redact import fingerprint
from codex_pool.upstream.refresher import PERMANENT, Refresher, RefreshResult
from codex_pool.upstream.token_keeper import TokenKeeper
from codex_pool.upstream.usage_poller import UsagePoller

log = logging.getLogger("codex_pool")

# httpcore loads anyio's asyncio backend (76 modules, ~25 ms) lazily, when our client first closes a
# connection: mid-traffic, on the event loop, a stall every proxied stream would feel. It is imported
# above, with the addon, instead.

REFRESH_WAIT_SECONDS = 20.0  # the longest a request waits for its account's token refresh (after a 401 too)
REAUTH_WINDOW = 60.0  # a 401 on tokens refreshed for a 401 this recently is a real auth problem
POLLS_PER_TICK = 4


def make_client() -> httpx.AsyncClient:
    """Our own upstream calls (refresh, usage polling): pooled, with timeouts, no proxy from the env."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(30.0, connect=10.0),
        limits=httpx.Limits(max_connections=20, max_keepalive_connections=10),
        trust_env=False,
        headers={"user-agent": "codex-pool"},
    )


class TokenService:
    def __init__(self, pool: Pool):
        self.pool = pool
        self.http: httpx.AsyncClient | None = None
        self.keeper: TokenKeeper | None = None
        self.poller: UsagePoller | None = None
        self.upstream_base: str | None = None  # the reverse-proxy target, for the proxy's own calls
        self._refreshed_after_401: dict[str, float] = {}
        self._work: set[asyncio.Task] = set()
        self._refreshing: dict[str, asyncio.Task[RefreshResult | None]] = {}

    def configure(self, config: Config, http: httpx.AsyncClient | None, upstream_base: str | None) -> None:
        """(Re)build the refresher and usage poller for the current settings."""
        self.http = http
        self.upstream_base = upstream_base.rstrip("/") if upstream_base else None
        if http is None:
            return
        if self.keeper is None:
            self.keeper = TokenKeeper(Refresher(http, config.token_url, config.client_id),
                                      config.refresh_margin_minutes * 60)
        else:
            self.keeper.refresher.token_url, self.keeper.refresher.client_id = config.token_url, config.client_id
            self.keeper.margin = config.refresh_margin_minutes * 60
        if config.usage_poll_seconds > 0 and upstream_base:
            if self.poller is None or self.poller.base_url != upstream_base.rstrip("/"):
                self.poller = UsagePoller(http, upstream_base, config.usage_poll_seconds)
            self.poller.interval = config.usage_poll_seconds
        else:
            self.poller = None

    def forget(self, name: str) -> None:
        """An account left the pool: drop its retry state and recovery memory."""
        if self.keeper is not None:
            self.keeper.forget(name)
        self._refreshed_after_401.pop(name, None)

    def due(self, now: float) -> list[tuple[str, str]]:
        """(account, reason) pairs to refresh now; disabled accounts are left alone."""
        if self.keeper is None:
            return []
        health = self.pool.registry.health
        skip = {n for n in self.pool.registry.accounts if health.peek(n).state == "disabled"}
        return [(a.name, reason) for a, reason in self.keeper.due(self.pool.registry.accounts, now, skip)]

    def refresh_shared(self, name: str, reason: str) -> asyncio.Task[RefreshResult | None]:
        """The refresh of one account as a task, started now or joined when one is already running
        (then `reason` is the first caller's): whoever needs it — the keeper, a request waiting for
        it, a 401 — shares one token call and one application of its result. The task runs to its
        end even when every waiter gives up."""
        task = self._refreshing.get(name)
        if task is None:
            task = asyncio.get_running_loop().create_task(self.refresh_account(name, reason))
            self._refreshing[name] = task
            self._work.add(task)
            task.add_done_callback(lambda t, n=name: (self._work.discard(t), self._refreshing.pop(n, None)
                                                      if self._refreshing.get(n) is t else None))
        return task

    async def refresh_account(self, name: str, reason: str) -> RefreshResult | None:
        """Refresh one account now and apply the result (callers share it via `refresh_shared`)."""
        account = self.pool.registry.accounts.get(name)
        if account is None or self.keeper is None:
            return None
        result = await self.keeper.refresh(account, reason, self.pool.now())
        self._apply(account, result, reason)
        return result

    async def refresh_for_request(self, names: tuple[str, ...], timeout: float = REFRESH_WAIT_SECONDS) -> bool:
        """A request waits for its account's tokens: refresh `names` (joining refreshes in flight)
        until one of them is refreshed (True), all have failed, or `timeout` has passed (False)."""
        if self.keeper is None:
            return False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        pending = {self.refresh_shared(name, "on_demand") for name in names}
        while pending:
            done, pending = await asyncio.wait(pending, timeout=max(0.0, deadline - loop.time()),
                                               return_when=asyncio.FIRST_COMPLETED)
            if not done:
                return False
            if any(not t.cancelled() and t.exception() is None and t.result() is not None and t.result().ok
                   for t in done):
                return True
        return False

    def _apply(self, before, result: RefreshResult, reason: str) -> None:
        pool, name, now = self.pool, before.name, self.pool.now()
        registry = pool.registry
        if name not in registry.accounts:  # removed while it refreshed: its file moved, with the newest tokens
            log.info("codex-pool: %s left the pool during its token refresh (%s); nothing to apply", name, result.outcome)
            return
        pool.metrics.refresh(name, result.outcome)
        if result.ok and result.account is not None:
            if before.refresh_token and result.account.refresh_token != before.refresh_token:
                registry.superseded.add(before.refresh_token)
            if name in registry.accounts:
                registry.accounts[name] = result.account
            pool.note(registry.health.file_replaced(name, now))
            if self.poller is not None:
                self.poller.resume(name)
            pool.events.emit("account.refreshed", account=name, how=result.outcome, reason=reason,
                             expires_at=result.account.access_expires_at)
            log.info("codex-pool: %s tokens %s (%s)", name, result.outcome, reason)
        elif result.outcome == PERMANENT:
            detail = f"token refresh failed ({result.code}); replace {before.path.name} with a fresh `codex login`"
            pool.note(registry.health.disable(name, "reauth_required", now, detail))
            pool.events.emit("account.refresh_failed", account=name, code=result.code, permanent=True)
        else:
            log.warning("codex-pool: refreshing %s failed (%s: %s); will retry", name, result.code, result.detail)
            pool.events.emit("account.refresh_failed", account=name, code=result.code, permanent=False)

    def may_recover(self, verdict: Verdict) -> bool:
        """Whether `recover_unauthorized` may change this verdict (a cheap check for the hot path)."""
        return verdict.reason == "unauthorized" and self.keeper is not None

    async def recover_unauthorized(self, exchange: Exchange, verdict: Verdict) -> Verdict:
        """A 401 first tries a refresh (shared with any other in flight). With fresh tokens the
        request is served again on the same account ("retry": the account is not to blame); a 401
        on tokens refreshed for that very reason within the last minute is a real auth problem."""
        if verdict.reason != "unauthorized" or self.keeper is None:
            return verdict
        name = exchange.account
        account = self.pool.registry.accounts.get(name)
        if account is None or not account.refresh_token:
            return verdict
        if fingerprint(account.access_token) == exchange.token:  # nobody refreshed it since we sent it
            last = self._refreshed_after_401.get(name)
            if last is not None and self.pool.now() - last < REAUTH_WINDOW:
                return verdict
            work = self.refresh_shared(name, "unauthorized_recovery")  # runs to its end even if we stop waiting
            try:
                result = await asyncio.wait_for(asyncio.shield(work), REFRESH_WAIT_SECONDS)
            except asyncio.TimeoutError:
                return Verdict("cooldown", "refresh_timeout", "the token refresh after a 401 took too long")
            if result is None:
                return verdict
            if not result.ok:
                if result.outcome == PERMANENT:
                    # _apply disabled it, saying why; the request goes on to another account like after
                    # any account failure: a pool 401 never reaches a client (which would refresh its own)
                    return Verdict("auth", "reauth_required", result.detail, disable_as="reauth_required")
                return Verdict("cooldown", "refresh_failed", result.detail)
            self._refreshed_after_401[name] = self.pool.now()
        return Verdict("retry", "token_refreshed", "retrying with refreshed tokens")

    async def poll_due(self) -> None:
        """One tick of usage polling: up to a few accounts whose poll is due. A 401 starts a
        refresh in the background (`refresh_shared`), so the tick never waits on it."""
        poller = self.poller
        if poller is None:
            return
        registry, now = self.pool.registry, self.pool.now()
        usable = [n for n in registry.accounts
                  if registry.health.peek(n).state != "disabled" and not registry.accounts[n].expired(now)]
        poller.schedule(usable, now)
        for name in poller.due(now)[:POLLS_PER_TICK]:
            account = registry.accounts.get(name)
            if account is None:
                continue
            result = await poller.poll(account, now)
            if result.kind == "ok" and result.limits is not None:
                registry.record_rate_limits(name, result.limits)
            elif result.kind == "unauthorized":
                self.refresh_shared(name, "unauthorized_recovery")
            elif result.kind == "forbidden":
                log.info("codex-pool: usage polling paused for %s (403); the account stays in service", name)
