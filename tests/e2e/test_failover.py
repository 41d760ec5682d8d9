"""Failover and account health end to end: a scenario table run through real mitmdump and the
simulated backend. Each row: the pool's state and what upstream answers → what the client gets,
which accounts upstream saw, and the resulting account states.

One mitmdump serves the module; each test gets accounts of its own (tests.support.proxy_world)."""

import json
import time
from datetime import datetime
from dataclasses import dataclass, field

import httpx
import pytest

from tests.support.flows import CLIENT_TOKEN, RESPONSES, redirecting_client, turn_body, usage_by_account, ws_turns
from tests.support.proxy_world import ProxyWorld, write_pool_file
from tests.support.wait import wait_for

pytestmark = pytest.mark.e2e

BASE = "policy: fill_first\n"
USAGE_MSG = "You've reached your usage limit."


@dataclass
class Row:
    label: str
    faults: list[dict]
    status: int  # what the client gets (after following redirects, as Codex and the openai SDK do)
    seen: list[str]  # accounts upstream saw for the turn, in order
    states: dict[str, str]  # resulting account states
    names: tuple = ("alice", "bob")
    config: str = ""
    check: dict = field(default_factory=dict)  # extra assertions on the client's JSON error


def fault(kind, account="alice", **kw):
    return {"kind": kind, "account": account, **kw}


ROWS = [
    Row("success", [], 200, ["alice"], {"alice": "usable", "bob": "usable"}),
    Row("usage_limit_reached fails over", [fault("usage_limit", resets_in_seconds=3600)], 200, ["alice", "bob"],
        {"alice": "limited", "bob": "usable"}),
    Row("usage_not_included fails over", [fault("usage_not_included")], 200, ["alice", "bob"], {"alice": "limited"}),
    Row("403 with usage-limit wording is a limit", [fault("status", status=403, message=USAGE_MSG)], 200, ["alice", "bob"],
        {"alice": "limited"}),
    Row("other 403 is an auth problem", [fault("status", status=403, message="Forbidden", code="forbidden")], 200,
        ["alice", "bob"], {"alice": "disabled"}),
    Row("401 refreshes the account and serves the request on it", [fault("unauthorized")], 200, ["alice", "alice"],
        {"alice": "usable", "bob": "usable"}),
    Row("401 that survives a refresh disables the account, another serves", [fault("unauthorized", count=-1)], 200,
        ["alice", "alice", "bob"], {"alice": "disabled", "bob": "usable"}),
    Row("plain 429 cools down, honouring Retry-After", [fault("status", status=429, retry_after=30, message="slow down")],
        200, ["alice", "bob"], {"alice": "cooling"}, check={"cooling_at_least": 25}),
    Row("5xx cools down", [fault("status", status=502)], 200, ["alice", "bob"], {"alice": "cooling"}),
    Row("server_is_overloaded cools down", [fault("status", status=503, code="server_is_overloaded")], 200, ["alice", "bob"],
        {"alice": "cooling"}),
    Row("client error passes through, account fine", [fault("status", status=400, code="invalid_request", message="bad")],
        400, ["alice"], {"alice": "usable", "bob": "usable"}),
    Row("response.failed rate limit inside a 200 stream", [fault("failed", code="rate_limit_exceeded",
        message="Rate limit reached. Please try again in 20s.")], 200, ["alice"], {"alice": "cooling"}),
    Row("response.failed quota inside a 200 stream", [fault("failed", code="insufficient_quota", message="quota")], 200,
        ["alice"], {"alice": "limited"}),
    Row("stream cut before completed", [fault("cut", after=3)], None, ["alice"], {"alice": "cooling"}),
    Row("dropped connection", [fault("drop")], 502, ["alice"], {"alice": "cooling"}),
    Row("every account limited → 429 with the earliest reset",
        [fault("usage_limit", resets_in_seconds=7200), fault("usage_limit", account="bob", resets_in_seconds=1800)],
        429, ["alice", "bob"], {"alice": "limited", "bob": "limited"},
        check={"type": "usage_limit_reached", "code": "usage_limit_reached", "resets_in": 1800}),
    Row("every account failing transiently → 503 with Retry-After",
        [fault("status", status=503), fault("status", account="bob", status=500)], 503, ["alice", "bob"],
        {"alice": "cooling", "bob": "cooling"}, check={"type": "no_accounts", "retry_after": True}),
    Row("every account 401 → 503 saying why, never 401",
        [fault("unauthorized", count=-1), fault("unauthorized", account="bob", count=-1)], 503, ["alice", "alice", "bob", "bob"],
        {"alice": "disabled", "bob": "disabled"}, check={"type": "no_accounts", "message": "reauth_required"}),
    Row("limit on one, other cooling → 503, not the account's usage limit",
        [fault("usage_limit", resets_in_seconds=3600), fault("status", account="bob", status=503)], 503, ["alice", "bob"],
        {"alice": "limited", "bob": "cooling"}, check={"type": "no_accounts", "retry_after": True}),
    Row("bounded by max_attempts", [fault("status", status=503), fault("status", account="bob", status=503)], 503,
        ["alice", "bob"], {"alice": "cooling", "bob": "cooling", "carol": "usable"}, names=("alice", "bob", "carol"),
        config="max_attempts: 2\n", check={"retry_after": True}),
    Row("third account serves when two fail", [fault("usage_limit"), fault("status", account="bob", status=500)], 200,
        ["alice", "bob", "carol"], {"alice": "limited", "bob": "cooling", "carol": "usable"}, names=("alice", "bob", "carol")),
]


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    # repin_after_minutes is the default, written out for test_long_limit_moves_the_conversation
    world = ProxyWorld(tmp_path_factory.mktemp("failover"), BASE + "repin_after_minutes: 10\n")
    yield world
    world.stop()


@pytest.mark.parametrize("row", ROWS, ids=[r.label for r in ROWS])
def test_scenario(shared, own_world, row):
    w = (own_world(BASE + row.config) if row.config else shared).fresh(row.names)
    for f in row.faults:
        w.fault(**f)
    headers = {"authorization": f"Bearer {CLIENT_TOKEN}", "session-id": "conv-row", "accept": "text/event-stream"}
    with redirecting_client(w.proxy) as client:
        try:
            r = client.post(RESPONSES, json=turn_body("conv-row"), headers=headers)
            status = r.status_code
            text = r.text
        except httpx.HTTPError as e:  # a cut stream may surface as a transport error
            status, text = None, str(e)
    if row.status is not None:
        assert status == row.status, text[:500]
    assert status != 401 and "redirect" not in text.lower()[:100]
    assert w.served() == row.seen
    got = w.states()
    for name, state in row.states.items():
        assert got[name]["state"] == state, (name, got[name])
    if "cooling_at_least" in row.check:
        until = datetime.fromisoformat(got["alice"]["until"].replace("Z", "+00:00")).timestamp()
        assert until - time.time() >= row.check["cooling_at_least"]
    if row.status and row.status >= 400 and row.check:
        err = json.loads(text)["error"]
        if "type" in row.check:
            assert err["type"] == row.check["type"]
        if "code" in row.check:
            assert err["code"] == row.check["code"]
        if "resets_in" in row.check:
            assert abs(err["resets_at"] - (time.time() + row.check["resets_in"])) < 15
        if "message" in row.check:
            assert row.check["message"] in err["message"]
        if row.check.get("retry_after"):
            assert int(r.headers["retry-after"]) >= 1


def test_client_disconnect_costs_the_account_nothing(shared):
    w = shared.fresh(["alice", "bob"])
    w.backend.control("POST", "config", {"stream_delay": 0.3, "deltas": 10})
    h = {"authorization": f"Bearer {CLIENT_TOKEN}", "session-id": "gone"}
    with w.proxy.http.stream("POST", RESPONSES, json=turn_body("gone"), headers=h) as r:
        assert r.status_code == 200
        next(r.iter_raw())  # first bytes, then hang up
    # the proxy has handled the hang-up once the turn is in the ledger (written after any health change)
    wait_for(lambda: usage_by_account(w.proxy).get(w["alice"], {}).get("cancelled") == 1, 10,
             "the proxy to record alice's turn as cancelled by the client")
    assert w.states()["alice"]["state"] == "usable"


def test_stickiness_survives_a_brief_outage_and_returns(own_world):
    w = own_world(BASE + "cooldown_base_seconds: 1\n").fresh(["alice", "bob"])
    h = {"authorization": f"Bearer {CLIENT_TOKEN}", "session-id": "sticky-conv"}
    with redirecting_client(w.proxy) as client:
        assert client.post(RESPONSES, json=turn_body("sticky-conv"), headers=h).status_code == 200
        w.fault("status", "alice", status=503)
        assert client.post(RESPONSES, json=turn_body("sticky-conv"), headers=h).status_code == 200
        wait_for(lambda: w.states()["alice"]["usable"], 10, "alice's 1 s cooldown to end")
        assert client.post(RESPONSES, json=turn_body("sticky-conv"), headers=h).status_code == 200
    assert w.served() == ["alice", "alice", "bob", "alice"]
    assert w.sent()["alice"]["cache_hits"] >= 1  # came back to its warm cache


def test_long_limit_moves_the_conversation(shared):
    w = shared.fresh(["alice", "bob"])  # repin_after_minutes: 10, shorter than the 3 h limit
    h = {"authorization": f"Bearer {CLIENT_TOKEN}", "session-id": "moving"}
    with redirecting_client(w.proxy) as client:
        assert client.post(RESPONSES, json=turn_body("moving"), headers=h).status_code == 200
        w.fault("usage_limit", "alice", resets_in_seconds=3 * 3600)
        for _ in range(2):
            assert client.post(RESPONSES, json=turn_body("moving"), headers=h).status_code == 200
        r = w.proxy.http.post(f"/admin/accounts/{w['alice']}/enable")  # a usage limit is upstream's fact: enable keeps it
        assert r.status_code == 200 and w.states()["alice"]["state"] == "limited"
        assert client.post(RESPONSES, json=turn_body("moving"), headers=h).status_code == 200
    assert w.served() == ["alice", "alice", "bob", "bob", "bob"]


def test_admin_pin_disable_enable(shared):
    w = shared.fresh(["alice", "bob"])
    proxy = w.proxy

    def steer(action):
        r = proxy.http.post(f"/admin/accounts/{w['bob']}/{action}")
        assert r.status_code == 200, r.text
        return r.json()

    def new_request():
        r = proxy.http.post(RESPONSES, json=turn_body(None), headers={"authorization": f"Bearer {CLIENT_TOKEN}"})
        assert r.status_code == 200, r.text

    assert steer("pin")["pinned"] == w["bob"]
    new_request()
    steer("disable")
    assert w.states()["bob"]["state"] == "disabled" and "enable" in w.states()["bob"]["reason"]
    new_request()
    steer("enable")
    new_request()
    assert steer("unpin")["pinned"] is None
    new_request()
    assert w.served() == ["bob", "alice", "bob", "alice"]
    assert proxy.http.post("/admin/accounts/nobody/pin").status_code == 404
    assert proxy.http.get(f"/admin/accounts/{w['bob']}/pin").status_code == 405


def test_replacing_the_file_brings_a_disabled_account_back(shared):
    w = shared.fresh(["alice"])
    w.fault("unauthorized", "alice", count=2)  # the refreshed tokens are refused too
    with redirecting_client(w.proxy) as client:
        r = client.post(RESPONSES, json=turn_body("x"), headers={"session-id": "x"})
    assert r.status_code == 503 and w.states()["alice"]["state"] == "disabled"
    fresh = w.backend.control("POST", f"accounts/{w['alice']}/login")
    write_pool_file(w.pool_dir, w["alice"], fresh.get("auth", fresh))
    w.reload()
    assert w.states()["alice"]["state"] == "usable"
    assert w.proxy.http.post(RESPONSES, json=turn_body("x"), headers={"session-id": "x"}).status_code == 200


WS_LIMIT = {"type": "usage_limit_reached", "message": USAGE_MSG, "resets_in_seconds": 3600}


def ws_turn(w, key):
    [frames] = ws_turns(w.proxy, key)
    return frames


def test_websocket_usage_limit_frame_becomes_retryable_when_another_account_can_serve(shared):
    w = shared.fresh(["alice", "bob"])
    w.fault("ws_error", "alice", status=429, error=WS_LIMIT)
    [err] = [f for f in ws_turn(w, "ws-limit") if f.get("type") == "error"]
    assert err["status"] == 503 and err["error"]["code"] == "account_switch"
    assert w.states()["alice"]["state"] == "limited"
    # Codex opens a new socket; it lands on bob (stand-in or repin) and completes
    assert ws_turn(w, "ws-limit")[-1]["type"] == "response.completed"
    assert [w.short(r["account"]) for r in w.backend.requests() if r["kind"] == "ws-upgrade"] == ["alice", "bob"]


def test_websocket_usage_limit_with_nobody_else_is_the_pools_honest_429(shared):
    w = shared.fresh(["alice"])
    w.fault("ws_error", "alice", status=429, error=WS_LIMIT)
    [err] = [f for f in ws_turn(w, "ws-only") if f.get("type") == "error"]
    assert err["status"] == 429 and err["error"]["type"] == "usage_limit_reached"
    assert abs(err["error"]["resets_at"] - (time.time() + 3600)) < 15


def test_every_account_known_limited_a_websocket_upgrade_gets_426_and_the_https_turn_the_429(shared):
    """Codex prints a 429 on an upgrade only as "exceeded retry limit"; after a 426 it falls back to
    HTTPS, where the 429 tells it when the pool resets (tests/client/test_codex_native.py)."""
    w = shared.fresh(["alice", "bob"])
    w.fault("usage_limit", "alice", resets_in_seconds=7200)
    w.fault("usage_limit", "bob", resets_in_seconds=1800)
    with redirecting_client(w.proxy) as c:  # as Codex follows the 307 from alice to bob
        assert c.post(RESPONSES, json=turn_body("learn"), headers={"session-id": "learn"}).status_code == 429
    asked = len(w.backend.requests())
    upgrade = w.proxy.http.get(RESPONSES, headers={"upgrade": "websocket", "connection": "Upgrade", "sec-websocket-version": "13",
                                                   "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==", "session-id": "ws"})
    assert upgrade.status_code == 426 and upgrade.json()["error"]["code"] == "websocket_fallback"
    assert abs(upgrade.json()["error"]["resets_at"] - (time.time() + 1800)) < 15  # bob's, the earliest
    over_https = w.proxy.http.post(RESPONSES, json=turn_body("ws"), headers={"session-id": "ws"})
    assert over_https.status_code == 429 and over_https.json()["error"]["type"] == "usage_limit_reached"
    assert len(w.backend.requests()) == asked  # both answered by the proxy


def test_websocket_401_frame_never_reaches_the_client(shared):
    w = shared.fresh(["alice"])
    w.fault("ws_error", "alice", status=401)
    [err] = [f for f in ws_turn(w, "ws-401") if f.get("type") == "error"]
    assert err["status"] == 503 and err["error"]["code"] == "account_switch"  # retryable: tokens were refreshed
    assert w.states()["alice"]["state"] == "usable"
    assert ws_turn(w, "ws-401")[-1]["type"] == "response.completed"  # the new socket works
    w.fault("ws_error", "alice", status=401, count=-1)
    # fresh tokens rejected too, within a minute: a real auth problem
    [err] = [f for f in ws_turn(w, "ws-401") if f.get("type") == "error"]
    assert err["status"] == 503 and err["error"]["type"] == "no_accounts"
    assert w.states()["alice"]["state"] == "disabled"
    assert w.sent()["alice"]["refresh_count"] == 1


def test_event_log_records_the_story_without_secrets(own_world):
    world = own_world(BASE)  # stopped below to flush its event log
    w = world.fresh(["alice", "bob"])
    w.fault("usage_limit", "alice", resets_in_seconds=3600)
    with redirecting_client(w.proxy) as client:
        assert client.post(RESPONSES, json=turn_body("ev"), headers={"session-id": "ev"}).status_code == 200
    w.proxy.stop()  # flushes the log
    text = (world.data_dir / "events.jsonl").read_text()
    events = [json.loads(line) for line in text.splitlines()]
    names = [e["event"] for e in events]
    assert names.count("request.account_selected") == 2
    assert "request.failover" in names and "account.limited" in names
    limited = next(e for e in events if e["event"] == "account.limited")
    assert limited["account"] == w["alice"] and limited["until"].endswith("Z")
    tokens = [tok for p in w.pool_dir.glob("*.json") for tok in json.loads(p.read_text())["tokens"].values()]
    assert tokens and not [tok for tok in tokens if tok in text]
