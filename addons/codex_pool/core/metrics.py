"""Prometheus metrics with the addon's own registry (never the process-global one).

Counters and histograms are fed from the same events as the ledger (one call per ledger record,
failover and refresh); per-account and pool gauges are computed at scrape time from the live
state, so an account that leaves the pool leaves the output too. Labels are bounded: account
names, kinds, status classes, reasons — never conversation ids. No mitmproxy imports.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from codex_pool.core.health import COOLING, DISABLED, LIMITED, USABLE

STATES = (USABLE, COOLING, LIMITED, DISABLED, "expired")
TOKEN_TYPES = (("input_tokens", "input"), ("cached_input_tokens", "cached_input"), ("output_tokens", "output"),
               ("reasoning_tokens", "reasoning"))
TTFB_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)
DURATION_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600)
CONTENT_TYPE = CONTENT_TYPE_LATEST


def status_class(status: int | None) -> str:
    return f"{status // 100}xx" if isinstance(status, int) and 100 <= status < 600 else "none"


class PoolMetrics:
    def __init__(self, snapshot: Callable[[float], dict[str, Any]] | None = None,
                 clock: Callable[[], float] | None = None):
        """`snapshot(now)` returns {"accounts": [{name, state, usable, in_flight, primary, secondary}],
        "sticky": n} for the scrape-time gauges; `clock()` gives that `now`."""
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("codex_pool_requests", "Requests that reached upstream, by account, kind and status class.",
                                ["account", "kind", "status_class"], registry=self.registry)
        self.tokens = Counter("codex_pool_tokens", "Tokens reported by upstream in response.completed, by account and type.",
                              ["account", "type"], registry=self.registry)
        self.ttfb = Histogram("codex_pool_upstream_ttfb_seconds", "Time from sending a request upstream to its first byte.",
                              ["kind"], buckets=TTFB_BUCKETS, registry=self.registry)
        self.duration = Histogram("codex_pool_upstream_duration_seconds", "Duration of upstream exchanges (turns included).",
                                  ["kind"], buckets=DURATION_BUCKETS, registry=self.registry)
        self.failovers = Counter("codex_pool_failovers", "Requests sent to another account, by the first account's failure.",
                                 ["reason"], registry=self.registry)
        self.refreshes = Counter("codex_pool_token_refreshes", "Token refreshes by account and result.",
                                 ["account", "result"], registry=self.registry)
        self._children: dict[tuple, Any] = {}  # labelled series, looked up once (labels() is not cheap)
        if snapshot is not None:
            if clock is None:
                raise ValueError("PoolMetrics: a snapshot needs a clock")
            self.registry.register(_LiveCollector(snapshot, clock))

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            if len(self._children) > 10_000:  # label values are bounded, but never let this grow unchecked
                self._children.clear()
            child = self._children[key] = metric.labels(*labels)
        return child

    def observe_record(self, record: dict[str, Any]) -> None:
        """One ledger record (a request, or one WebSocket turn)."""
        account, kind = record.get("account") or "?", record.get("kind") or "other"
        self._child(self.requests, account, kind, status_class(record.get("status"))).inc()
        for field, name in TOKEN_TYPES:
            value = record.get(field) or 0
            if value > 0:
                self._child(self.tokens, account, name).inc(value)
        if isinstance(record.get("ttfb_ms"), (int, float)) and record["ttfb_ms"] >= 0:
            self._child(self.ttfb, kind).observe(record["ttfb_ms"] / 1000)
        if isinstance(record.get("duration_ms"), (int, float)) and record["duration_ms"] >= 0:
            self._child(self.duration, kind).observe(record["duration_ms"] / 1000)

    def failover(self, reason: str) -> None:
        self._child(self.failovers, reason).inc()

    def refresh(self, account: str, result: str) -> None:
        self._child(self.refreshes, account, result).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _LiveCollector:
    """Per-account and pool gauges, read from the live state at each scrape."""

    def __init__(self, snapshot: Callable[[float], dict[str, Any]], clock: Callable[[], float]):
        self.snapshot = snapshot
        self.clock = clock

    def describe(self) -> Iterable:
        return []  # computed at scrape time; nothing to describe up front

    def collect(self) -> Iterable:
        snap = self.snapshot(self.clock())
        usable = GaugeMetricFamily("codex_pool_account_usable", "1 when the account can serve now, else 0.",
                                   labels=["account"])
        state = GaugeMetricFamily("codex_pool_account_state", "The account's state (1 for the current one).",
                                  labels=["account", "state"])
        used = GaugeMetricFamily("codex_pool_account_used_ratio", "Share of the rate-limit window used (0 to 1).",
                                 labels=["account", "window"])
        reset = GaugeMetricFamily("codex_pool_account_window_reset_timestamp_seconds",
                                  "When the rate-limit window resets (unix time).", labels=["account", "window"])
        in_flight = GaugeMetricFamily("codex_pool_account_in_flight_requests",
                                      "Requests (streams included) in flight on the account.", labels=["account"])
        by_state = GaugeMetricFamily("codex_pool_accounts", "Pool accounts by state.", labels=["state"])
        sticky = GaugeMetricFamily("codex_pool_sticky_conversations", "Conversations currently pinned to an account.")
        counts = dict.fromkeys(STATES, 0)
        for a in snap.get("accounts", []):
            name = a["name"]
            usable.add_metric([name], 1.0 if a.get("usable") else 0.0)
            current = a.get("state") if a.get("state") in STATES else USABLE
            counts[current] += 1
            for s in STATES:
                state.add_metric([name, s], 1.0 if s == current else 0.0)
            in_flight.add_metric([name], float(a.get("in_flight") or 0))
            for window in ("primary", "secondary"):
                w = a.get(window)
                if w is not None:
                    used.add_metric([name, window], max(0.0, min(1.0, w["used_percent"] / 100.0)))
                    if w.get("reset_at"):
                        reset.add_metric([name, window], float(w["reset_at"]))
        for s, n in counts.items():
            by_state.add_metric([s], float(n))
        sticky.add_metric([], float(snap.get("sticky", 0)))
        return [usable, state, used, reset, in_flight, by_state, sticky]
