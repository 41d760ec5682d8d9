from codex_pool.core import quota

NOW = 1_000_000.0


def test_from_headers():
    rl = quota.from_headers(
        {
            "x-codex-primary-used-percent": "42.5",
            "x-codex-primary-window-minutes": "300",
            "x-codex-primary-reset-at": str(int(NOW + 600)),
            "x-codex-secondary-used-percent": "10",
            "x-codex-secondary-window-minutes": "10080",
            "x-codex-credits-has-credits": "False",
            "x-codex-credits-balance": "0",
        },
        NOW,
    )
    assert rl.primary == quota.Window(42.5, 300, NOW + 600)
    assert rl.secondary == quota.Window(10.0, 10080, None)
    assert rl.credits == quota.Credits(False, None, "0")
    assert rl.headroom(NOW) == 57.5
    assert rl.headroom(NOW + 601) == 90.0  # the primary window has reset since


def test_headers_without_signals_give_none():
    assert quota.from_headers({"content-type": "text/event-stream"}, NOW) is None
    assert quota.from_headers({"x-codex-primary-used-percent": "lots"}, NOW) is None


def test_from_event():
    event = {
        "type": "codex.rate_limits",
        "rate_limits": {"primary": {"used_percent": 80, "window_minutes": 300, "reset_at": NOW + 10}, "secondary": None},
        "credits": {"has_credits": True, "unlimited": False, "balance": "5"},
    }
    rl = quota.from_event(event, NOW)
    assert rl.primary.used_percent == 80 and rl.secondary is None and rl.credits.balance == "5"
    assert rl.headroom(NOW) == 20


def test_from_usage_payload():
    payload = {
        "plan_type": "plus",
        "rate_limit": {
            "primary_window": {"used_percent": 42, "limit_window_seconds": 18000, "reset_after_seconds": 100},
            "secondary_window": {"used_percent": 7, "limit_window_seconds": 604800, "reset_at": NOW + 5000},
        },
        "credits": {"has_credits": False, "unlimited": False, "balance": "0"},
    }
    rl = quota.from_usage_payload(payload, NOW)
    assert rl.plan == "plus" and rl.primary == quota.Window(42, 300, NOW + 100)
    assert rl.secondary.window_minutes == 10080 and rl.headroom(NOW) == 58


def test_garbage_never_raises():
    for junk in (None, 1, "x", [], {"rate_limits": 5}, {"rate_limits": {"primary": "x"}}):
        assert quota.from_event(junk, NOW) is None
        assert quota.from_usage_payload(junk, NOW) is None


def test_tracker_burn_rate_and_effective_headroom():
    t = quota.QuotaTracker()
    reset = NOW + 4 * 3600
    for minutes, used in [(0, 40.0), (10, 50.0), (20, 60.0)]:
        t.record(quota.RateLimits(quota.Window(used, 300, reset), None, None, NOW + minutes * 60, "headers"))
    later = NOW + 20 * 60
    assert round(t.burn_per_hour("primary")) == 60  # 20 points in 20 minutes
    assert round(t.seconds_to_exhaustion("primary", later)) == 40 * 60
    # 40 % left but gone in 40 minutes, well before the reset: worth 40 × 40/60
    assert round(t.effective_headroom(later), 1) == round(40 * 40 / 60, 1)
    t.record(quota.RateLimits(quota.Window(90.0, 300, reset), None, None, NOW + 30 * 60, "headers"))
    assert round(t.burn_per_hour("primary")) == 100  # a new sample counts at once: 50 points in 30 minutes


def test_tracker_near_full_and_new_window():
    t = quota.QuotaTracker()
    t.record(quota.RateLimits(quota.Window(96.0, 300, NOW + 3600), None, None, NOW, "headers"))
    assert t.effective_headroom(NOW) == 1.0  # 4 % left counts as 1
    t.record(quota.RateLimits(quota.Window(2.0, 300, NOW + 5 * 3600), None, None, NOW + 120, "event"))
    assert t.burn_per_hour("primary") is None  # a new window: no mixing with the old one
    assert t.effective_headroom(NOW + 120) == 98.0


def test_tracker_keeps_what_a_new_observation_does_not_say():
    t = quota.QuotaTracker()
    t.record(quota.RateLimits(None, quota.Window(10.0, 10080, None), quota.Credits(True, False, "5"), NOW, "usage", "plus"))
    t.record(quota.RateLimits(quota.Window(3.0, 300, None), None, None, NOW + 1, "headers"))
    assert t.latest.secondary.used_percent == 10.0 and t.latest.plan == "plus" and t.latest.primary.used_percent == 3.0
    t.record(quota.RateLimits(quota.Window(50.0, 300, None), None, None, NOW - 100, "headers"))
    assert t.latest.primary.used_percent == 3.0  # older news is ignored
