import json
import time
from pathlib import Path

from codex_pool.core import quota
from codex_pool.core.accounts import AccountRegistry
from codex_pool.core.auth_file import parse_auth
from codex_pool.core.outcome import Verdict
from codex_pool.core.pool_scan import PoolScan
from codex_pool.core.router import Router
from codex_pool.core.state import restore, snapshot
from tests.support.tokens import make_auth

NOW = time.time()


def world(refresh_tokens=None):
    refresh_tokens = refresh_tokens or {}
    accounts = {}
    for n in ("a", "b", "c"):
        doc = make_auth(f"acct-{n}", refresh_token=refresh_tokens.get(n, f"rt_{n}_original_token"))
        accounts[n] = parse_auth(json.dumps(doc).encode(), Path(f"/pool/{n}.json"))
    reg = AccountRegistry()
    reg.apply_scan(PoolScan(accounts=accounts), NOW)
    return Router(reg, "round_robin", 3600), reg


def saved_world():
    router, reg = world()
    router.route("conv-1", NOW)  # a
    router.route("conv-2", NOW)  # b
    reg.health.apply("b", Verdict("limited", "usage_limit_reached", until=NOW + 7200), NOW)
    reg.health.apply("a", Verdict("cooldown", "server_error_503"), NOW)
    reg.health.apply("c", Verdict("auth", "unauthorized", disable_as="reauth_required"), NOW)
    router.pinned = "a"
    reg.record_rate_limits("a", quota.RateLimits(quota.Window(42.0, 300, NOW + 100), None, None, NOW, "headers"))
    return json.loads(json.dumps(snapshot(router, reg, NOW)))  # through JSON, as on disk


def test_round_trip_restores_stickiness_health_pin_and_quota():
    doc = saved_world()
    router, reg = world()
    counts = restore(doc, router, reg, NOW + 1)
    assert counts == {"sticky": 2, "health": 3, "quota": 1, "pinned": 1}
    assert router.sticky.get("conv-1", NOW + 1) == "a" and router.sticky.get("conv-2", NOW + 1) == "b"
    assert reg.health.peek("b").state == "limited" and reg.health.peek("b").until == NOW + 7200
    assert reg.health.peek("c").state == "disabled" and router.pinned == "a"
    assert reg.health.peek("b").since == NOW + 1  # requests under way before the restart are gone with it
    assert reg.runtime["a"].quota.latest.primary.used_percent == 42.0


def test_expired_states_and_replaced_files_are_not_restored():
    doc = saved_world()
    router, reg = world(refresh_tokens={"c": "rt_c_replaced_by_the_user"})
    restore(doc, router, reg, NOW + 60)  # a's 5 s cooldown is over by now
    assert reg.health.peek("a").state == "usable"
    assert reg.health.peek("c").state == "usable"  # new credentials in c's file
    assert reg.health.peek("b").state == "limited"


def test_bad_documents_restore_nothing():
    router, reg = world()
    for doc in (None, [], {"version": 99}, {"version": 1, "sticky": [["k", 1, "x"]], "health": {"a": "x"}, "quota": {"a": {}}}):
        assert not any(restore(doc, router, reg, NOW).values())


def test_what_decides_traffic_is_saved_at_once_the_rest_at_least_every_minute():
    from codex_pool.core.state import FULL_SAVE_SECONDS, save_due, urgent

    router, reg = world()
    saved = urgent(router, reg)
    assert save_due(None, saved, None, NOW)  # never saved: now
    router.route("conv-1", NOW + 1)  # a new conversation, new quota figures: can wait
    reg.record_rate_limits("a", quota.RateLimits(quota.Window(42.0, 300, NOW + 100), None, None, NOW, "headers"))
    assert urgent(router, reg) == saved
    assert not save_due(saved, urgent(router, reg), NOW, NOW + 5)
    assert save_due(saved, urgent(router, reg), NOW, NOW + FULL_SAVE_SECONDS)  # ...but not forever
    reg.health.apply("b", Verdict("limited", "usage_limit_reached", until=NOW + 7200), NOW + 6)
    assert save_due(saved, urgent(router, reg), NOW, NOW + 10)  # a limited account: at once
    saved = urgent(router, reg)
    router.pinned = "c"
    assert save_due(saved, urgent(router, reg), NOW, NOW + 11)  # the admin pin: at once
