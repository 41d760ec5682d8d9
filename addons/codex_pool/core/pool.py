"""The pool: the one object every addon shares, passed in explicitly at construction.

It holds the live state (accounts and their health and quota, the router with its sticky map,
failover chains, the settings, the clock) and the decisions that touch more than one of them:
which answer a failed exchange gets (`settle`, the one path for HTTP and WebSocket), admin
steering (`steer`, for /admin/* and mitmproxy commands alike), and accounting of a finished
exchange (`account_for`). Pure: no mitmproxy, no I/O; where things go (event log, ledger) is
handed in as sinks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from codex_pool.core import failover
from codex_pool.core.accounts import AccountRegistry
from codex_pool.core.config import Config
from codex_pool.core.exchange import Exchange
from codex_pool.core.health import HealthEvent, HealthPolicy
from codex_pool.core.key_book import KeyBook
from codex_pool.core.ledger import TURN_KINDS
from codex_pool.core.metrics import PoolMetrics
from codex_pool.core.outcome import Verdict
from codex_pool.core.pool_quota import AccountQuota, PoolQuota, pool_quota
from codex_pool.core.quota import RateLimits
from codex_pool.core.router import NoRoute, Route, Router

STEER_ACTIONS = ("pin", "unpin", "disable", "enable")


class EventSink(Protocol):
    def emit(self, event: str, **fields: Any) -> None: ...


class RecordSink(Protocol):
    def record(self, record: dict) -> None: ...


class _Nowhere:
    def emit(self, event: str, **fields: Any) -> None:
        pass

    def record(self, record: dict) -> None:
        pass


@dataclass(frozen=True)
class Settlement:
    """What to do with an exchange's answer: let it through (PASS), send the client to another
    account (RETRY, with the chain to continue), or replace it with the pool's honest answer."""

    action: str  # failover.PASS | failover.RETRY | failover.ANSWER
    reason: str = "ok"
    chain: failover.Chain | None = None
    no_route: NoRoute | None = None


PASS = Settlement(failover.PASS)


class Pool:
    def __init__(self, clock: Callable[[], float]):
        self.clock = clock
        self.registry = AccountRegistry()
        self.router = Router(self.registry, "usage_balanced", 7200.0)
        self.chains = failover.Chains()
        self.config: Config | None = None
        self.secret = b""  # key for hashing conversation ids (set from data_dir)
        self.events: EventSink = _Nowhere()
        self.ledger: RecordSink = _Nowhere()
        self.metrics = PoolMetrics(self.live_snapshot, clock)
        self.exchanges: dict[str, Exchange] = {}  # by flow id, while the flow lives
        self.keys = KeyBook()  # client keys in force and their usage (off until a keys file is loaded)
        self._client_quota: tuple[tuple[int, int, int], PoolQuota] | None = None
        self._health_changes = 0  # bumped by note(): the pool quota clients see is computed again

    def now(self) -> float:
        return self.clock()

    # ---- settings --------------------------------------------------------------------------

    def apply_config(self, config: Config) -> None:
        self.config = config
        self.keys.prices = config.prices
        self.router.reconfigure(config.policy, config.sticky_ttl_seconds, config.repin_after_seconds)
        self.registry.health.policy = HealthPolicy(
            config.cooldown_base_seconds, config.cooldown_max_seconds, config.usage_limit_default_minutes * 60
        )
        self.registry.pool_label = f"{config.pool_dir}/"

    @property
    def max_attempts(self) -> int:
        return self.config.max_attempts if self.config else 3

    # ---- one exchange ----------------------------------------------------------------------

    def open_exchange(self, flow_id: str, route: Route, chain: failover.Chain | None, kind: str, token: str,
                      upgrade: bool = False) -> Exchange:
        """A routed request is about to go upstream on `route.account` (`upgrade`: a WebSocket one)."""
        name = route.account.name
        exchange = Exchange(
            account=name, reason=route.reason, conversation=route.conversation, pinned_to=route.pinned_to,
            kind=kind, token=token, attempt=chain.attempt if chain else 1, chain=chain.id if chain else None,
            tried=tuple(chain.tried) if chain else (), upgrade=upgrade, opened_at=self.now(),
        )
        if chain is not None:
            chain.tried.append(name)
        self.registry.rt(name).in_flight += 1
        self.exchanges[flow_id] = exchange
        return exchange

    def close_exchange(self, flow_id: str) -> Exchange | None:
        """The flow is over: its account has one request less in flight."""
        exchange = self.exchanges.pop(flow_id, None)
        if exchange is not None and exchange.in_flight:
            exchange.in_flight = False
            rt = self.registry.runtime.get(exchange.account)
            if rt is not None and rt.in_flight > 0:
                rt.in_flight -= 1
        return exchange

    def latest_limits(self, name: str) -> RateLimits | None:
        rt = self.registry.runtime.get(name)
        return rt.rate_limits if rt else None

    def client_quota(self, now: float) -> PoolQuota:
        """The pool's quota as clients are shown it (core/pool_quota.py has the formula). Computed
        again when accounts, their figures or their health changed, else at most once a second (a
        cooldown or a reset that passes with time shows within that second)."""
        registry = self.registry
        key = (registry.changes, self._health_changes, int(now))
        cached = self._client_quota
        if cached is not None and cached[0] == key:
            return cached[1]
        quota = pool_quota((AccountQuota(registry.state(name, now), self.latest_limits(name), account.plan)
                            for name, account in registry.accounts.items()), now)
        self._client_quota = (key, quota)
        return quota

    def settle(self, exchange: Exchange, verdict: Verdict, now: float, *, answer_sent: bool,
               transport: str = "http", status: int | None = None, served: bool = True,
               started: float | None = None) -> Settlement:
        """Fold an upstream outcome into the account's health, then decide what the client gets.
        The one decision path for HTTP answers and WebSocket error frames: chains, `max_attempts`
        and never the same account twice apply to both. `served=False` for an answer that does not
        yet serve the request (a WebSocket upgrade: its first turn does), so an OK keeps the chain.
        `started`: when the answered request began (default: when the exchange was routed; a
        WebSocket turn passes its own start)."""
        account = exchange.account
        exchange.judged = True
        exchange.outcome = verdict.kind if verdict.kind != "neutral" else "ok"
        exchange.outcome_reason = verdict.reason if verdict.kind not in ("ok", "neutral") else None
        self.note(self.registry.health.apply(account, verdict, now,
                                             started=exchange.opened_at if started is None else started,
                                             turn=served and exchange.kind in TURN_KINDS))
        if verdict.failed and verdict.kind != "retry":
            self.release_fresh_pin(exchange)
        chain = self.chains.get(exchange.chain)
        if not verdict.failed:
            if chain is not None and verdict.kind == "ok" and served:
                self.chains.end(chain.id)
            return PASS
        tried = list(chain.tried) if chain is not None else [account]
        if verdict.kind == "retry":  # fresh tokens: this account is not to blame and may serve again
            if chain is None:
                chain = self.chains.start(account, exchange.conversation, now, fresh=exchange.placed_fresh())
                exchange.chain = chain.id
            chain.refreshed.add(account)
            if account in chain.tried:
                chain.tried.remove(account)
            tried = list(chain.tried)
        action = failover.decide(
            verdict,
            attempt=max(1, len(tried)),  # distinct accounts tried: a retry after a refresh is free
            max_attempts=self.max_attempts,
            has_alternative=self.router.has_alternative(now, frozenset(tried)),
            answer_sent=answer_sent,
        )
        if action == failover.PASS:
            return PASS
        if action == failover.ANSWER:
            return Settlement(failover.ANSWER, verdict.reason, chain, self.router.unavailable(now, frozenset(tried)))
        if chain is None:
            chain = self.chains.start(account, exchange.conversation, now, fresh=exchange.placed_fresh())
            exchange.chain = chain.id
        exchange.failover = verdict.reason
        self.metrics.failover(verdict.reason)
        self.events.emit("request.failover", account=account, reason=verdict.reason, status=status,
                         attempt=exchange.attempt, conversation=exchange.conversation, transport=transport)
        return Settlement(failover.RETRY, verdict.reason, chain)

    def release_fresh_pin(self, exchange: Exchange) -> None:
        """A conversation's first placement failed before serving anything: it is not that account's
        yet, so its pin goes and the next try (a failover, or the client's own retry after a 502 or a
        cut) is placed — and pinned — where it is served, instead of coming back here later."""
        if exchange.placed_fresh():
            self.router.sticky.forget(exchange.conversation, exchange.account)

    def account_for(self, record: dict) -> None:
        """One finished exchange (or WebSocket turn): into the ledger and the metrics, same record."""
        self.ledger.record(record)
        self.metrics.observe_record(record)
        self.keys.record(record)

    # ---- steering and state ----------------------------------------------------------------

    def steer(self, name: str, action: str) -> str | None:
        """Admin steering: pin (every request goes there while usable), unpin, disable, enable.
        Returns None when done, else why not (unknown account or action)."""
        if action not in STEER_ACTIONS:
            return f"unknown action {action!r}; one of {', '.join(STEER_ACTIONS)}"
        if name not in self.registry.accounts:
            return f"no pool account {name!r}; accounts: {', '.join(sorted(self.registry.accounts)) or 'none'}"
        now = self.now()
        if action == "pin":
            self.router.pinned = name
        elif action == "unpin":
            if self.router.pinned == name:
                self.router.pinned = None
        elif action == "disable":
            self.note(self.registry.health.disable(name, "manual", now, "disabled by an admin"))
        else:
            self.note(self.registry.health.enable(name, now))
        self.events.emit("admin." + action, account=name)
        return None

    def describe_account(self, name: str) -> dict | None:
        now = self.now()
        return next((r for r in self.registry.describe(now, self.router.sticky.counts(now)) if r["name"] == name), None)

    def note(self, events: list[HealthEvent]) -> None:
        """Account state changes go to the event sink (which also logs them)."""
        if events:
            self._health_changes += 1
        for e in events:
            self.events.emit(e.event, account=e.account, **e.fields)

    def live_snapshot(self, now: float) -> dict:
        """What the scrape-time gauges read: each served account's state and quota, sticky count."""
        rows = []
        registry = self.registry
        for name in sorted(registry.accounts):
            state = registry.state(name, now)
            rt = registry.runtime.get(name)
            latest = rt.quota.latest if rt else None
            rows.append({
                "name": name, "usable": registry.unusable_reason(name, now) is None, "state": state,
                "in_flight": rt.in_flight if rt else 0,
                "primary": latest.primary.to_dict() if latest and latest.primary else None,
                "secondary": latest.secondary.to_dict() if latest and latest.secondary else None,
            })
        return {"accounts": rows, "sticky": len(self.router.sticky)}
