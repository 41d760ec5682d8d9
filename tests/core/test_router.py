import time
from pathlib import Path

from codex_pool.core.accounts import AccountRegistry
from codex_pool.core.auth_file import parse_auth
from codex_pool.core.pool_scan import PoolScan
from codex_pool.core.router import REFRESH_RETRY_SECONDS, AwaitRefresh, NoRoute, Router
import json

from tests.support.tokens import make_auth


def registry(*names, expired=(), no_refresh=()):
    now = int(time.time())
    accounts = {}
    for n in names:
        doc = make_auth(f"acct-{n}", exp=now - 10 if n in expired else None,
                        refresh_token=None if n in no_refresh else f"rt-{n}")
        accounts[n] = parse_auth(json.dumps(doc).encode(), Path(f"/pool/{n}.json"))
    reg = AccountRegistry()
    reg.apply_scan(PoolScan(accounts=accounts), 0.0)
    return reg


def test_conversation_sticks_and_new_ones_spread():
    router = Router(registry("a", "b", "c"), "round_robin", 3600)
    now = time.time()
    first = router.route("conv1", now)
    assert first.account.name == "a" and first.reason == "round_robin"
    assert router.route("conv1", now + 1).account.name == "a"
    assert router.route("conv1", now + 2).reason == "sticky"
    assert router.route("conv2", now + 3).account.name == "b"
    assert [router.route(None, now + 4 + i).account.name for i in range(4)] == ["a", "b", "c", "a"]  # keyless spread too
    assert router.route("conv3", now + 9).account.name == "c"  # ...in their own lane
    assert router.route("conv1", now + 10).account.name == "a"


def test_usage_balanced_spreads_new_conversations_by_lru():
    router = Router(registry("a", "b"), "usage_balanced", 3600)
    now = time.time()
    names = [router.route(f"c{i}", now + i).account.name for i in range(4)]
    assert names == ["a", "b", "a", "b"]
    for i in range(3):  # keyless chatter in between does not skew conversation placement
        router.route(None, now + 10 + i)
    assert router.route("c-next", now + 20).account.name == "a"


def test_sticky_moves_when_account_leaves_pool():
    reg = registry("a", "b")
    router = Router(reg, "fill_first", 3600)
    now = time.time()
    assert router.route("k", now).account.name == "a"
    reg.apply_scan(PoolScan(accounts={"b": reg.accounts["b"]}), 0.0)
    assert router.route("k", now + 1).account.name == "b"
    assert router.route("k", now + 2).reason == "sticky"


def test_sticky_expires_after_idle_ttl():
    router = Router(registry("a", "b"), "round_robin", 60)
    now = time.time()
    assert router.route("k", now).account.name == "a"
    assert router.route("k", now + 61).account.name == "b"


def test_expired_tokens_are_not_usable_and_empty_pool_says_why():
    router = Router(registry("a", "b", expired=("a",)), "fill_first", 60)
    assert router.route("k", time.time()).account.name == "b"
    none = Router(registry(), "fill_first", 60).route("k", time.time())
    assert isinstance(none, NoRoute) and none.status == 503 and "drop a Codex auth.json there" in none.message
    no_refresh = Router(registry("a", expired=("a",), no_refresh=("a",)), "fill_first", 60).route(None, time.time())
    assert isinstance(no_refresh, NoRoute) and "access token expired" in no_refresh.message
    assert "no refresh token; replace it with a fresh login" in no_refresh.message


def test_a_request_waits_for_a_refresh_when_only_refreshable_accounts_are_left():
    """#11.1: expired access tokens with a working refresh token are refreshed on demand, not 503."""
    now = time.time()
    router = Router(registry("a", "b", "c", expired=("a", "b")), "fill_first", 60)
    assert router.route(None, now).account.name == "c"  # a usable account serves without waiting
    router.registry.health.disable("c", "manual", now)
    assert router.route(None, now) == AwaitRefresh(("a", "b"))
    assert router.route("k", now, exclude=frozenset({"a"})) == AwaitRefresh(("b",))
    gave_up = router.route(None, now, may_wait=False)  # the refresh did not land in time
    assert isinstance(gave_up, NoRoute) and gave_up.status == 503 and gave_up.retry_after == REFRESH_RETRY_SECONDS
    assert "a refreshing its access token" in gave_up.message and "fresh login" not in gave_up.message
    assert router.has_alternative(now, frozenset({"a"}))  # failover may count on b's refresh
    assert not router.has_alternative(now, frozenset({"a", "b"}))


def test_a_conversation_waits_for_its_own_account_to_be_refreshed():
    """#11.5: an account that only needs a refresh keeps its conversations."""
    reg = registry("a", "b")
    router = Router(reg, "fill_first", 3600)
    now = time.time()
    assert router.route("k", now).account.name == "a"
    reg.accounts["a"] = registry("a", expired=("a",)).accounts["a"]  # its access token ran out
    assert router.route("k", now + 1) == AwaitRefresh(("a",))  # although b could serve at once
    assert router.route("other", now + 1).account.name == "b"  # a new conversation does not wait
    standin = router.route("k", now + 2, may_wait=False)  # the refresh is late: b stands in, a keeps the pin
    assert (standin.account.name, standin.reason, standin.pinned_to) == ("b", "standin", "a")
    reg.accounts["a"] = registry("a").accounts["a"]  # refreshed
    back = router.route("k", now + 3)
    assert (back.account.name, back.reason) == ("a", "sticky")


def test_retry_after_is_the_first_moment_any_account_can_serve():
    """#11.8: a limited account that resets before a cooling one ends counts too."""
    reg = registry("a", "b")
    now = time.time()
    reg.health.apply("a", Verdict("cooldown", "server_error_503", retry_after=30), now)
    reg.health.apply("b", Verdict("limited", "usage_limit_reached", until=now + 2), now)
    answer = Router(reg, "fill_first", 60).route("k", now)
    assert answer.status == 503 and answer.retry_after == 2 and "b should be back in 2s" in answer.message


def test_pin_wins_while_usable_without_taking_conversations_over():
    router = Router(registry("a", "b"), "fill_first", 60)
    now = time.time()
    assert router.route("k", now).account.name == "a"
    router.pinned = "b"
    pinned = router.route("k", now + 1)
    assert (pinned.account.name, pinned.reason, pinned.pinned_to) == ("b", "pinned", "a")
    assert router.route("new", now + 2).account.name == "b"
    router.pinned = None
    assert router.route("k", now + 3).account.name == "a"  # back to its own account
    assert router.route("new", now + 4).account.name == "b"  # born under the pin: stays there


from codex_pool.core.outcome import Verdict

COOL = Verdict("cooldown", "server_error_503")


def test_brief_outage_is_served_by_a_standin_and_the_pin_stays():
    reg = registry("a", "b")
    router = Router(reg, "fill_first", 3600, repin_after=600)
    now = time.time()
    assert router.route("k", now).account.name == "a"
    reg.health.apply("a", COOL, now)  # 5 s cooldown
    standin = router.route("k", now + 1)
    assert (standin.account.name, standin.reason, standin.pinned_to) == ("b", "standin", "a")
    back = router.route("k", now + 10)
    assert (back.account.name, back.reason) == ("a", "sticky")  # home again, warm cache


def test_long_outage_or_disable_moves_the_pin():
    reg = registry("a", "b")
    router = Router(reg, "fill_first", 86400, repin_after=600)
    now = time.time()
    router.route("k", now)
    reg.health.apply("a", Verdict("limited", "usage_limit_reached", until=now + 7200), now)
    moved = router.route("k", now + 1)
    assert (moved.account.name, moved.reason, moved.pinned_to) == ("b", "repinned", None)
    reg.health.tick(now + 7201)
    assert router.route("k", now + 7202).account.name == "b"  # stays on its new account
    router2 = Router(registry("a", "b"), "fill_first", 3600)
    router2.route("j", now)
    router2.registry.health.disable("a", "manual", now)
    assert router2.route("j", now + 1).reason == "repinned"


def test_exclusions_skip_tried_accounts():
    router = Router(registry("a", "b", "c"), "fill_first", 3600)
    now = time.time()
    assert router.route("k", now, exclude=frozenset({"a"})).account.name == "b"
    assert router.route(None, now, exclude=frozenset({"a", "b"})).account.name == "c"
    none = router.route(None, now, exclude=frozenset({"a", "b", "c"}))
    assert isinstance(none, NoRoute) and none.status == 503 and none.retry_after == 1


def test_every_account_limited_gives_429_with_the_earliest_reset():
    reg = registry("a", "b", "c")
    now = time.time()
    reg.health.apply("a", Verdict("limited", "usage_limit_reached", until=now + 5000), now)
    reg.health.apply("b", Verdict("limited", "usage_limit_reached", until=now + 900), now)
    reg.health.disable("c", "manual", now)
    answer = Router(reg, "fill_first", 60).route("k", now)
    assert (answer.status, answer.type, answer.code) == (429, "usage_limit_reached", "usage_limit_reached")
    assert answer.extra["resets_at"] == int(now + 900) + (0 if (now + 900).is_integer() else 1)
    assert "b at" in answer.message


def test_cooling_accounts_give_503_with_retry_after():
    reg = registry("a", "b")
    now = time.time()
    reg.health.apply("a", COOL, now)
    reg.health.apply("b", Verdict("limited", "usage_limit_reached", until=now + 900), now)
    answer = Router(reg, "fill_first", 60).route("k", now)
    assert answer.status == 503 and answer.type == "no_accounts" and 1 <= answer.retry_after <= 5
    assert "a cooling down until" in answer.message and "b limited until" in answer.message


def test_all_disabled_says_why_and_what_to_do():
    reg = registry("a")
    now = time.time()
    reg.health.apply("a", Verdict("auth", "unauthorized", disable_as="reauth_required"), now)
    answer = Router(reg, "fill_first", 60).route(None, now)
    assert answer.status == 503 and "disabled (reauth_required)" in answer.message and "replace a.json" in answer.message


def test_is_usable_agrees_with_unusable_reason_in_every_state():
    from codex_pool.core.health import COOLING, DISABLED, LIMITED

    reg = registry("ok", "old", "cool", "cooled", "lim", "off", expired=("old",))
    assert reg.state("old", time.time()) == "refreshing" and "refreshing it" in reg.unusable_reason("old", time.time())
    now = time.time()
    for name, state, until in (("cool", COOLING, now + 60), ("cooled", COOLING, now - 1), ("lim", LIMITED, now + 60),
                               ("off", DISABLED, None)):
        h = reg.health.get(name)
        h.state, h.until, h.reason = state, until, "manual" if state == DISABLED else "test"
    seen = {}
    for name in ("ok", "old", "cool", "cooled", "lim", "off", "missing"):
        assert reg.is_usable(name, now) == (reg.unusable_reason(name, now) is None), name
        seen[name] = reg.is_usable(name, now)
    assert seen == {"ok": True, "old": False, "cool": False, "cooled": True, "lim": False, "off": False, "missing": False}
    assert reg.usable_names(now) == ["cooled", "ok"]


def test_a_conversation_keeps_one_stand_in_for_the_whole_outage():
    """#11.9: each turn of a conversation whose account was briefly out went to the next stand-in
    in turn, so no stand-in's prompt cache warmed up."""
    reg = registry("a", "b", "c", "d")
    router = Router(reg, "round_robin", 3600)
    now = time.time()
    assert router.route("k", now).account.name == "a"
    reg.health.apply("a", Verdict("cooldown", "server_error_503", retry_after=60), now)
    stand_ins = []
    for i in range(6):
        router.route(f"other-{i}", now + 1 + i)  # other new conversations move the policy's cursor meanwhile
        r = router.route("k", now + 1 + i)
        stand_ins.append(r.account.name)
        assert (r.reason, r.pinned_to) == ("standin", "a")
    assert len(set(stand_ins)) == 1
    reg.health.apply(stand_ins[0], Verdict("cooldown", "server_error_503", retry_after=60), now + 10)
    second = router.route("k", now + 10)  # the stand-in itself went out: another one, kept from then on
    assert second.account.name not in ("a", stand_ins[0]) and router.route("k", now + 11).account.name == second.account.name
    back = router.route("k", now + 100)  # a's cooldown is over: home again
    assert (back.account.name, back.reason) == ("a", "sticky")


def test_a_new_conversation_whose_first_try_failed_is_pinned_where_it_was_served():
    """#11.9: a brand-new conversation stayed pinned to the account whose first attempt failed."""
    from codex_pool.core.failover import Chains

    reg = registry("a", "b")
    router = Router(reg, "fill_first", 3600)
    now = time.time()
    first = router.route("new", now)
    assert (first.account.name, first.reason) == ("a", "fill_first")
    reg.health.apply("a", Verdict("cooldown", "server_error_503", retry_after=5), now)
    chain = Chains().start("a", "new", now, fresh=True)
    retry = router.route("new", now, exclude=frozenset(chain.tried), fresh=chain.fresh)
    assert retry.account.name == "b" and retry.pinned_to is None
    later = router.route("new", now + 60)  # a is back: the conversation stays where its cache is
    assert (later.account.name, later.reason) == ("b", "sticky")


def test_a_conversation_whose_account_is_lost_for_good_moves_to_its_stand_in():
    """Found by the soak: a conversation served by a stand-in whose own account was then disabled
    was placed anew by the policy, away from the stand-in that had its prompt cache."""
    reg = registry("a", "b", "c", "d")
    router = Router(reg, "round_robin", 3600)
    now = time.time()
    assert router.route("k", now).account.name == "a"
    reg.health.apply("a", Verdict("cooldown", "server_error_503", retry_after=60), now)
    standin = router.route("k", now + 1)
    assert standin.reason == "standin"
    for i in range(3):
        router.route(f"other-{i}", now + 2 + i)  # the policy's cursor moves on meanwhile
    reg.health.disable("a", "manual", now + 5)  # a is out for good
    moved = router.route("k", now + 6)
    assert (moved.account.name, moved.reason, moved.pinned_to) == (standin.account.name, "repinned", None)
    assert router.route("k", now + 7).reason == "sticky"
