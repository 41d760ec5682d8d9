"""Prometheus metrics with the addon's own registry (never the process-global one).

Counters and histograms are fed from the same events as the ledger (one call per ledger record,
failover and refresh); per-account and pool gauges are computed at scrape time from the live
state, so an account that leaves the pool leaves the output too. Labels are bounded: account
names, kinds, status classes, reasons, at most MAX_MODELS model names — never conversation ids. No mitmproxy imports.

The request path only adds numbers to plain dicts (`_Tally`, `_Histogram`): a prometheus_client
Counter or Histogram takes a lock per increment and a labels() lookup per series, which on a
forwarded request costs more than the rest of its accounting. prometheus_client still writes the
exposition format, from families built at scrape time.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.utils import floatToGoString

from codex_pool.core.health import COOLING, DISABLED, LIMITED, USABLE
from codex_pool.core.refresh_policy import OUTCOMES as REFRESH_RESULTS

STATES = (USABLE, "refreshing", COOLING, LIMITED, DISABLED, "expired")  # AccountRegistry.state
TOKEN_TYPES = (("input_tokens", "input"), ("cached_input_tokens", "cached_input"), ("output_tokens", "output"),
               ("reasoning_tokens", "reasoning"))
TTFB_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)
DURATION_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600)
CONTENT_TYPE = CONTENT_TYPE_LATEST
MAX_SERIES = 10_000  # label values are bounded, but never let a family grow unchecked
MAX_MODELS = 64  # distinct `model` label values; later ones count as "other"


def status_class(status: int | None) -> str:
    return f"{status // 100}xx" if isinstance(status, int) and 100 <= status < 600 else "none"


class _Tally:
    """A counter family: value by label values."""

    def __init__(self, name: str, doc: str, labels: tuple[str, ...]):
        self.name, self.doc, self.labels = name, doc, labels
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, labels: tuple[str, ...], amount: float = 1.0) -> None:
        values = self.values
        if labels in values:
            values[labels] += amount
        elif len(values) < MAX_SERIES:
            values[labels] = amount

    def family(self) -> CounterMetricFamily:
        family = CounterMetricFamily(self.name, self.doc, labels=self.labels)
        for labels, value in list(self.values.items()):  # a copy: a scrape never races an increment
            family.add_metric(labels, value)
        return family


class _Histogram:
    """A histogram family with one label: per label value, the count in each bucket (not yet
    cumulative; the last one is +Inf) and the sum."""

    def __init__(self, name: str, doc: str, label: str, bounds: tuple[float, ...]):
        self.name, self.doc, self.label = name, doc, label
        self.bounds = tuple(float(b) for b in bounds)
        self.series: dict[str, list[float]] = {}  # label value -> [bucket counts..., +Inf count, sum]

    def observe(self, label: str, value: float) -> None:
        series = self.series.get(label)
        if series is None:
            if len(self.series) >= MAX_SERIES:
                return
            series = self.series[label] = [0.0] * (len(self.bounds) + 2)
        series[bisect_left(self.bounds, value)] += 1  # le: a value equal to a bound is in its bucket
        series[-1] += value

    def family(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(self.name, self.doc, labels=[self.label])
        for label, series in list(self.series.items()):
            counts, total = series[:-1], series[-1]
            buckets, running = [], 0.0
            for bound, count in zip((*self.bounds, float("inf")), counts):
                running += count
                buckets.append((floatToGoString(bound), running))
            family.add_metric([label], buckets, total)
        return family


class PoolMetrics:
    def __init__(self, snapshot: Callable[[float], dict[str, Any]] | None = None,
                 clock: Callable[[], float] | None = None):
        """`snapshot(now)` returns {"accounts": [{name, state, usable, in_flight, primary, secondary}],
        "sticky": n} for the scrape-time gauges; `clock()` gives that `now`."""
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = _Tally("codex_pool_requests",
                               "Requests that reached upstream, by account, kind, status class, model and client key.",
                               ("account", "kind", "status_class", "model", "client"))
        self.tokens = _Tally("codex_pool_tokens",
                             "Tokens reported by upstream in response.completed, by account, type, model and client key.",
                             ("account", "type", "model", "client"))
        self.refusals = _Tally("codex_pool_client_refusals",
                               "Requests refused before upstream for their client key, by reason.", ("reason",))
        self._models: set[str] = set()  # model label values so far (bounded: clients name models)
        self.ttfb = _Histogram("codex_pool_upstream_ttfb_seconds", "Time from sending a request upstream to its first byte.",
                               "kind", TTFB_BUCKETS)
        self.duration = _Histogram("codex_pool_upstream_duration_seconds",
                                   "Duration of upstream exchanges (turns included).", "kind", DURATION_BUCKETS)
        self.failovers = _Tally("codex_pool_failovers", "Requests sent to another account, by the first account's failure.",
                                ("reason",))
        self.refreshes = _Tally("codex_pool_token_refreshes", "Token refreshes by account and result.", ("account", "result"))
        self.registry.register(_CountedCollector((self.requests, self.tokens, self.ttfb, self.duration,
                                                  self.failovers, self.refreshes, self.refusals)))
        if snapshot is not None:
            if clock is None:
                raise ValueError("PoolMetrics: a snapshot needs a clock")
            self.registry.register(_LiveCollector(snapshot, clock))

    def observe_record(self, record: dict[str, Any]) -> None:
        """One ledger record (a request, or one WebSocket turn)."""
        account, kind = record.get("account") or "?", record.get("kind") or "other"
        model = self._model_label(record.get("model"), record.get("status"))
        client = record.get("key") or "none"  # a key's name: as many values as the keys file has
        self.requests.inc((account, kind, status_class(record.get("status")), model, client))
        for field, name in TOKEN_TYPES:
            value = record.get(field)
            if value and value > 0:
                self.tokens.inc((account, name, model, client), value)
        ttfb_ms = record.get("ttfb_ms")
        if isinstance(ttfb_ms, (int, float)) and ttfb_ms >= 0:
            self.ttfb.observe(kind, ttfb_ms / 1000)
        duration_ms = record.get("duration_ms")
        if isinstance(duration_ms, (int, float)) and duration_ms >= 0:
            self.duration.observe(kind, duration_ms / 1000)

    def _model_label(self, model: Any, status: Any) -> str:
        """The model as a label value: "none" when unknown. Any client can name any model, so a name
        becomes a label value only once upstream served it (a 2xx), and at most MAX_MODELS of them;
        the rest count as "other"."""
        if not isinstance(model, str) or not model:
            return "none"
        if model in self._models:
            return model
        if len(self._models) >= MAX_MODELS or len(model) > 100 or not (isinstance(status, int) and 200 <= status < 300):
            return "other"
        self._models.add(model)
        return model

    def refusal(self, reason: str) -> None:
        self.refusals.inc((reason,))

    def failover(self, reason: str) -> None:
        self.failovers.inc((reason,))

    def refresh(self, account: str, result: str) -> None:
        self.refreshes.inc((account, result))

    def seed_refreshes(self, accounts: Iterable[str]) -> None:
        """Every result of every pool account's refreshes is shown from 0 (called when accounts are
        loaded, before any refresh of theirs): a counter series that first appears at 1 shows
        Prometheus no increase, so an alert on the first failure after a start would never fire."""
        values = self.refreshes.values
        for account in accounts:
            for result in REFRESH_RESULTS:
                if (account, result) not in values and len(values) < MAX_SERIES:
                    values[(account, result)] = 0.0

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _CountedCollector:
    """The counters and histograms, as families at each scrape."""

    def __init__(self, families: tuple[_Tally | _Histogram, ...]):
        self.families = families

    def describe(self) -> Iterable:
        return []

    def collect(self) -> Iterable:
        return [f.family() for f in self.families]


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
