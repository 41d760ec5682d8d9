import time
from pathlib import Path

from codex_pool.accounts import AccountRegistry
from codex_pool.auth_file import parse_auth
from codex_pool.pool_folder import PoolScan
from codex_pool.router import NoRoute, Router
import json

from tests.support.tokens import make_auth


def registry(*names, expired=()):
    now = int(time.time())
    accounts = {}
    for n in names:
        doc = make_auth(f"acct-{n}", exp=now - 10 if n in expired else None)
        accounts[n] = parse_auth(json.dumps(doc).encode(), Path(f"/pool/{n}.json"))
    reg = AccountRegistry()
    reg.apply_scan(PoolScan(accounts=accounts))
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
    reg.apply_scan(PoolScan(accounts={"b": reg.accounts["b"]}))
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
    all_expired = Router(registry("a", expired=("a",)), "fill_first", 60).route(None, time.time())
    assert isinstance(all_expired, NoRoute) and "access token expired" in all_expired.message


def test_pin_wins_while_usable():
    router = Router(registry("a", "b"), "fill_first", 60)
    router.pinned = "b"
    assert router.route("k", time.time()).account.name == "b"
