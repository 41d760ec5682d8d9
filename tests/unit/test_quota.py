from codex_pool import quota

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
