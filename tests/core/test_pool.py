"""The Pool's one decision path for failed answers (HTTP and WebSocket alike), steering, and the
per-flow exchange record."""

import json
from pathlib import Path

import pytest

from codex_pool.core import failover
from codex_pool.core.auth_file import parse_auth
from codex_pool.core.config import parse_config
from codex_pool.core.exchange import Exchange, outcome_label
from codex_pool.core.outcome import OK, Verdict
from codex_pool.core.pool import Pool
from codex_pool.core.pool_scan import PoolScan
from tests.support.tokens import make_auth

NOW = 1_800_000_000.0
LIMITED = Verdict("limited", "usage_limit_reached", until=NOW + 3600)
REFRESHED = Verdict("retry", "token_refreshed")


class Events:
    def __init__(self):
        self.seen = []

    def emit(self, event, **fields):
        self.seen.append((event, fields))


def make_pool(*names, max_attempts=3):
    pool = Pool(clock=lambda: NOW)
    pool.apply_config(parse_config({"max_attempts": max_attempts, "policy": "round_robin"}, Path("/base")))
    exp = int(NOW) + 86400
    accounts = {n: parse_auth(json.dumps(make_auth(f"acct-{n}", exp=exp)).encode(), Path(f"/pool/{n}.json")) for n in names}
    pool.registry.apply_scan(PoolScan(accounts=accounts), NOW)
    pool.events = Events()
    return pool


def serve(pool, flow_id, conversation=None, marker=None):
    chain = pool.chains.find(marker, conversation, NOW)
    route = pool.router.route(conversation, NOW, exclude=frozenset(chain.tried) if chain else frozenset(),
                              fresh=chain is not None and chain.fresh)  # as mitm/routing.py does
    return pool.open_exchange(flow_id, route, chain, "sse_turn", "fp")


def test_a_failed_answer_goes_to_another_account_until_max_attempts_then_the_honest_answer():
    pool = make_pool("a", "b", "c", max_attempts=2)
    first = serve(pool, "f1")
    assert first.chain is None and not pool.chains  # the normal path allocates nothing
    s1 = pool.settle(first, LIMITED, NOW, answer_sent=False, status=429)
    assert s1.action == failover.RETRY and s1.chain.tried == [first.account] and first.failover == "usage_limit_reached"
    second = serve(pool, "f2", marker=s1.chain.marker())
    assert second.account != first.account and second.attempt == 2 and second.tried == (first.account,)
    s2 = pool.settle(second, LIMITED, NOW, answer_sent=False, status=429)
    assert s2.action == failover.ANSWER  # max_attempts reached although "c" could serve
    assert s2.no_route.status == 503 and "already failed" in s2.no_route.message
    assert [e for e, _ in pool.events.seen].count("request.failover") == 1


def test_a_new_conversation_failing_over_is_pinned_to_the_account_that_serves_it():
    """#11.9: the chain remembers that the failed try was the conversation's first placement."""
    pool = make_pool("a", "b", "c")
    first = serve(pool, "f1", conversation="new")
    s = pool.settle(first, Verdict("cooldown", "server_error"), NOW, answer_sent=False, status=500)
    assert s.chain.fresh
    second = serve(pool, "f2", conversation="new", marker=s.chain.marker())
    assert second.account != first.account and second.pinned_to is None and second.reason != "standin"
    assert pool.router.sticky.get("new", NOW) == second.account
    pool.settle(second, OK, NOW, answer_sent=False)
    known = serve(pool, "f3", conversation="new")  # a conversation that was served: its failover keeps the pin
    s = pool.settle(known, Verdict("cooldown", "server_error"), NOW, answer_sent=False, status=500)
    assert not s.chain.fresh
    standin = serve(pool, "f4", conversation="new", marker=s.chain.marker())
    assert (standin.reason, standin.pinned_to) == ("standin", second.account)


def test_every_account_limited_answers_429_with_the_earliest_reset():
    pool = make_pool("a")
    ex = serve(pool, "f1")
    s = pool.settle(ex, LIMITED, NOW, answer_sent=False)
    assert s.action == failover.ANSWER and s.no_route.status == 429
    assert s.no_route.extra["resets_at"] == int(NOW + 3600)


def test_a_streamed_answer_is_never_taken_back_but_still_counts_against_its_account():
    pool = make_pool("a", "b")
    ex = serve(pool, "f1")
    assert pool.settle(ex, LIMITED, NOW, answer_sent=True).action == failover.PASS
    assert pool.registry.health.peek(ex.account).state == "limited" and ex.outcome == "limited"


def test_fresh_tokens_serve_again_on_the_same_account_without_using_up_an_attempt():
    pool = make_pool("a", "b", max_attempts=2)
    ex = serve(pool, "f1", conversation="conv")
    s = pool.settle(ex, REFRESHED, NOW, answer_sent=False)
    assert s.action == failover.RETRY and s.chain.tried == [] and ex.account in s.chain.refreshed
    again = serve(pool, "f2", conversation="conv", marker=s.chain.marker())
    assert again.account == ex.account  # sticky, and not excluded
    assert pool.settle(again, LIMITED, NOW, answer_sent=False).action == failover.RETRY  # still one try left


def test_a_websocket_upgrade_that_succeeds_keeps_the_chain_so_max_attempts_holds():
    pool = make_pool("a", "b", "c", max_attempts=2)
    first = serve(pool, "ws1", conversation="conv")
    assert pool.settle(first, LIMITED, NOW, answer_sent=False, transport="websocket").action == failover.RETRY
    second = serve(pool, "ws2", conversation="conv")
    assert pool.settle(second, OK, NOW, answer_sent=False, served=False).action == failover.PASS  # the 101
    assert second.attempt == 2 and pool.chains.get(second.chain) is not None
    assert pool.settle(second, LIMITED, NOW, answer_sent=False, transport="websocket").action == failover.ANSWER


def test_a_websocket_reconnect_continues_its_conversation_chain_and_success_ends_it():
    pool = make_pool("a", "b", "c", max_attempts=3)
    ex = serve(pool, "ws1", conversation="conv")
    s = pool.settle(ex, LIMITED, NOW, answer_sent=False, transport="websocket")
    assert s.action == failover.RETRY
    reconnect = serve(pool, "ws2", conversation="conv")  # no marker: found by conversation
    assert reconnect.chain == s.chain.id and reconnect.account != ex.account and reconnect.attempt == 2
    assert pool.settle(reconnect, OK, NOW, answer_sent=False).action == failover.PASS
    assert pool.chains.find(None, "conv", NOW) is None and len(pool.chains) == 0


def test_open_and_close_count_requests_in_flight_once():
    pool = make_pool("a")
    ex = serve(pool, "f1")
    assert pool.registry.runtime["a"].in_flight == 1
    assert pool.close_exchange("f1") is ex and pool.close_exchange("f1") is None
    assert pool.registry.runtime["a"].in_flight == 0 and not ex.in_flight


@pytest.mark.parametrize("name,action,ok", [("a", "pin", True), ("a", "disable", True), ("zz", "pin", False),
                                            ("a", "explode", False)])
def test_steer_answers_what_went_wrong(name, action, ok):
    pool = make_pool("a", "b")
    refused = pool.steer(name, action)
    assert (refused is None) == ok
    if ok:
        assert ("admin." + action) in [e for e, _ in pool.events.seen]


@pytest.mark.parametrize("failed_over,cancelled,reason,label", [
    (True, True, "x", "failed_over"), (False, True, "x", "client_cancelled"), (False, False, "server_error", "server_error"),
    (False, False, None, "ok"),
])
def test_one_outcome_label_for_exchanges_and_turns(failed_over, cancelled, reason, label):
    assert outcome_label(failed_over=failed_over, cancelled=cancelled, reason=reason) == label


def test_the_saved_copy_of_an_exchange_is_json_and_has_no_live_turn():
    ex = Exchange(account="a", reason="sticky", conversation="c", pinned_to=None, kind="ws_turn", token="fp",
                  tried=("b",), turn={"usage": {"total_tokens": 3}})
    ex.ws_turn = object()
    saved = json.loads(json.dumps(ex.to_dict()))
    assert saved["tried"] == ["b"] and saved["turn"]["usage"]["total_tokens"] == 3 and "ws_turn" not in saved
    assert "pinned_to" not in saved  # None values are left out


def test_the_clock_is_the_pools():
    pool = Pool(clock=lambda: 42.0)
    assert pool.now() == 42.0 and pool.live_snapshot(pool.now()) == {"accounts": [], "sticky": 0}


def test_a_first_placement_cut_on_the_connection_lets_the_clients_retry_pin_where_it_is_served():
    """Found by the soak: a conversation whose first request broke on the connection (a drop, or
    the watchdog before the first byte: the client gets a 502, no 307) stayed pinned to the account
    that never served it, and went back there from its stand-in once that account recovered."""
    pool = make_pool("a", "b", "c")
    first = serve(pool, "f1", conversation="new")
    pool.registry.health.apply(first.account, Verdict("cooldown", "first_byte_timeout"), NOW)
    pool.release_fresh_pin(first)  # what the error hook does
    retry = serve(pool, "f2", conversation="new")  # Codex's own retry: no marker
    assert retry.account != first.account and retry.reason != "standin" and retry.pinned_to is None
    assert pool.router.sticky.get("new", NOW + 600) == retry.account  # and it stays there


def test_a_websocket_that_served_turns_keeps_its_conversation_through_an_error():
    """Found by the soak: a WebSocket placed by the policy was re-pinned for good by any later error
    frame, however many turns it had served."""
    pool = make_pool("a", "b", "c")
    ws = serve(pool, "ws", conversation="conv")
    assert ws.placed_fresh()
    ws.ws_turns = 3
    assert not ws.placed_fresh()
    s = pool.settle(ws, LIMITED, NOW, answer_sent=False, transport="websocket")
    assert not s.chain.fresh and pool.router.sticky.get("conv", NOW) == ws.account


@pytest.mark.parametrize("kind, served, started, back", [
    ("sse_turn", True, NOW + 5, True),    # a turn placed after the limit: served, so the limit is gone
    ("other", True, NOW + 5, False),      # a side request (plugins, settings) is answered by a limited account too
    ("models", True, NOW + 5, False),
    ("ws_turn", False, NOW + 5, False),   # a WebSocket upgrade's 101 is not a turn
    ("ws_turn", True, NOW + 5, True),     # a turn on the socket is
    ("sse_turn", True, NOW - 5, False),   # a turn under way before the limit says nothing of after it
])
def test_only_a_turn_placed_after_a_usage_limit_lifts_it(kind, served, started, back):
    pool = make_pool("a")
    ex = pool.open_exchange("f", pool.router.route(None, NOW), None, kind, "fp", upgrade=not served)
    ex.opened_at = started  # when it was routed
    pool.registry.health.apply("a", LIMITED, NOW)
    pool.settle(ex, OK, NOW + 10, answer_sent=False, served=served)
    assert (pool.registry.health.peek("a").state == "usable") is back


def test_a_websocket_turn_is_judged_by_its_own_start_not_the_sockets():
    pool = make_pool("a")
    ex = pool.open_exchange("ws", pool.router.route("conv", NOW), None, "ws_turn", "fp", upgrade=True)
    ex.opened_at = NOW - 60  # the socket opened a minute before the limit
    pool.registry.health.apply("a", LIMITED, NOW)
    pool.settle(ex, OK, NOW + 10, answer_sent=True, transport="websocket", started=NOW - 30)
    assert pool.registry.health.peek("a").state == "limited"  # that turn began before the limit
    pool.settle(ex, OK, NOW + 20, answer_sent=True, transport="websocket", started=NOW + 15)
    assert pool.registry.health.peek("a").state == "usable"
