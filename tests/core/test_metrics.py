"""PoolMetrics: counters and histograms kept in plain dicts, written in Prometheus' text format."""

from prometheus_client.parser import text_string_to_metric_families

from codex_pool.core import metrics as metrics_mod
from codex_pool.core.metrics import PoolMetrics


def samples(m: PoolMetrics) -> dict:
    out = {}
    for family in text_string_to_metric_families(m.render().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def get(s, name, **labels):
    """The sample with exactly these labels (`client` defaults to "none": records without a key)."""
    if name in ("codex_pool_requests_total", "codex_pool_tokens_total"):
        labels.setdefault("client", "none")
    return s.get((name, tuple(sorted(labels.items()))))


def record(**kw):
    base = {"account": "alice", "kind": "sse_turn", "status": 200, "input_tokens": 0, "cached_input_tokens": 0,
            "output_tokens": 0, "reasoning_tokens": 0, "ttfb_ms": None, "duration_ms": None}
    return {**base, **kw}


def test_records_become_request_and_token_counters():
    m = PoolMetrics()
    m.observe_record(record(input_tokens=100, cached_input_tokens=40, output_tokens=7, model="gpt-5.1-codex"))
    m.observe_record(record(input_tokens=5, status=429, model="gpt-5.1-codex"))  # a name served before: kept
    m.observe_record(record(status=400, model="made-up-model"))  # never served: "other"
    m.observe_record(record(account="bob", kind="usage", status=None))
    s = samples(m)
    model = "gpt-5.1-codex"
    assert get(s, "codex_pool_requests_total", account="alice", kind="sse_turn", status_class="2xx", model=model) == 1
    assert get(s, "codex_pool_requests_total", account="alice", kind="sse_turn", status_class="4xx", model=model) == 1
    assert get(s, "codex_pool_requests_total", account="bob", kind="usage", status_class="none", model="none") == 1
    assert get(s, "codex_pool_requests_total", account="alice", kind="sse_turn", status_class="4xx", model="other") == 1
    assert get(s, "codex_pool_tokens_total", account="alice", type="input", model=model) == 105
    assert get(s, "codex_pool_tokens_total", account="alice", type="cached_input", model=model) == 40
    assert get(s, "codex_pool_tokens_total", account="alice", type="output", model=model) == 7
    assert get(s, "codex_pool_tokens_total", account="alice", type="reasoning", model=model) is None  # never a zero series


def test_model_labels_are_bounded():
    """Any client can name any model: past MAX_MODELS names (or an absurdly long one) count as "other"."""
    m = PoolMetrics()
    for i in range(metrics_mod.MAX_MODELS + 5):
        m.observe_record(record(model=f"model-{i}"))
    m.observe_record(record(model="x" * 500))
    m.observe_record(record(model="model-0"))
    s = samples(m)
    assert get(s, "codex_pool_requests_total", account="alice", kind="sse_turn", status_class="2xx", model="other") == 6
    assert get(s, "codex_pool_requests_total", account="alice", kind="sse_turn", status_class="2xx", model="model-0") == 2


def test_histograms_are_cumulative_with_le_buckets():
    m = PoolMetrics()
    for ms in (10, 50, 50.5, 999, 120_000):  # 0.05 s lands in the le="0.05" bucket; 120 s only in +Inf
        m.observe_record(record(ttfb_ms=ms, duration_ms=ms))
    m.observe_record(record(ttfb_ms=-1, duration_ms="x"))  # not a duration: ignored
    s = samples(m)
    b = lambda le: get(s, "codex_pool_upstream_ttfb_seconds_bucket", kind="sse_turn", le=le)
    assert (b("0.05"), b("0.1"), b("1.0"), b("60.0"), b("+Inf")) == (2, 3, 4, 4, 5)
    assert get(s, "codex_pool_upstream_ttfb_seconds_count", kind="sse_turn") == 5
    assert abs(get(s, "codex_pool_upstream_ttfb_seconds_sum", kind="sse_turn") - 121.1095) < 1e-9
    assert get(s, "codex_pool_upstream_duration_seconds_bucket", kind="sse_turn", le="600.0") == 5
    assert get(s, "codex_pool_upstream_duration_seconds_bucket", kind="sse_turn", le="0.1") == 3


def test_failovers_and_refreshes_are_counted():
    m = PoolMetrics()
    m.failover("usage_limit_reached")
    m.failover("usage_limit_reached")
    m.refresh("alice", "refreshed")
    s = samples(m)
    assert get(s, "codex_pool_failovers_total", reason="usage_limit_reached") == 2
    assert get(s, "codex_pool_token_refreshes_total", account="alice", result="refreshed") == 1


def test_every_accounts_refresh_results_start_at_zero_so_the_first_failure_is_an_increase():
    m = PoolMetrics()
    m.seed_refreshes(["alice"])
    for result in ("refreshed", "adopted", "failed_transient", "failed_permanent"):
        assert get(samples(m), "codex_pool_token_refreshes_total", account="alice", result=result) == 0
    m.refresh("alice", "failed_transient")
    m.seed_refreshes(["alice", "bob"])  # an account added later; alice's count stays
    s = samples(m)
    assert get(s, "codex_pool_token_refreshes_total", account="alice", result="failed_transient") == 1
    assert get(s, "codex_pool_token_refreshes_total", account="bob", result="failed_permanent") == 0


def test_every_family_is_documented_even_before_the_first_request():
    text = PoolMetrics().render().decode()
    for name in ("codex_pool_requests", "codex_pool_tokens", "codex_pool_upstream_ttfb_seconds",
                 "codex_pool_upstream_duration_seconds", "codex_pool_failovers", "codex_pool_token_refreshes"):
        assert f"# HELP {name}" in text and f"# TYPE {name}" in text


def test_series_are_capped(monkeypatch):
    monkeypatch.setattr(metrics_mod, "MAX_SERIES", 3)
    m = PoolMetrics()
    for i in range(10):
        m.failover(f"reason-{i}")
        m.observe_record(record(kind=f"kind-{i}", ttfb_ms=1))
    m.failover("reason-0")  # an existing series still counts
    s = samples(m)
    assert len([k for k in s if k[0] == "codex_pool_failovers_total"]) == 3
    assert get(s, "codex_pool_failovers_total", reason="reason-0") == 2
    assert len([k for k in s if k[0] == "codex_pool_upstream_ttfb_seconds_count"]) == 3


def test_live_gauges_come_from_the_snapshot_at_scrape_time():
    state = {"accounts": [{"name": "alice", "usable": True, "state": "usable", "in_flight": 2,
                           "primary": {"used_percent": 25.0, "reset_at": 1_800_000_000}, "secondary": None}],
             "sticky": 3}
    m = PoolMetrics(lambda now: state, clock=lambda: 0.0)
    s = samples(m)
    assert get(s, "codex_pool_account_usable", account="alice") == 1
    assert get(s, "codex_pool_account_in_flight_requests", account="alice") == 2
    assert get(s, "codex_pool_account_used_ratio", account="alice", window="primary") == 0.25
    assert get(s, "codex_pool_sticky_conversations") == 3
    state["accounts"] = []
    assert get(samples(m), "codex_pool_account_usable", account="alice") is None  # gone with the account


def test_client_keys_label_requests_and_tokens_and_refusals_are_counted():
    m = PoolMetrics()
    m.observe_record(record(input_tokens=10, model="gpt-5.1-codex", key="alice-laptop"))
    m.refusal("unknown")
    m.refusal("unknown")
    s = samples(m)
    assert get(s, "codex_pool_requests_total", account="alice", kind="sse_turn", status_class="2xx",
               model="gpt-5.1-codex", client="alice-laptop") == 1
    assert get(s, "codex_pool_tokens_total", account="alice", type="input", model="gpt-5.1-codex",
               client="alice-laptop") == 10
    assert get(s, "codex_pool_client_refusals_total", reason="unknown") == 2
