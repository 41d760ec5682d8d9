"""Failover and account health end to end: a scenario table run through real mitmdump and the
simulated backend. Each row: the pool's state and what upstream answers → what the client gets,
which accounts upstream saw, and the resulting account states."""

import json
import time
from datetime import datetime
from dataclasses import dataclass, field

import httpx
import pytest
from websockets.sync.client import connect

from tests.e2e.test_proxy import CLIENT_TOKEN, turn_body

pytestmark = pytest.mark.e2e

BASE = "pool_dir: pool\ndata_dir: data\npolicy: fill_first\n"
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


def states(proxy):
    return {a["name"]: a for a in proxy.http.get("/admin/accounts").json()["accounts"]}


def model_turns(backend):
    return [r["account"] for r in backend.requests() if r["path"].startswith("/backend-api/codex/responses")]


@pytest.mark.parametrize("row", ROWS, ids=[r.label for r in ROWS])
def test_scenario(start, row):
    backend, proxy = start(list(row.names), config=BASE + row.config)
    for f in row.faults:
        backend.fault(**f)
    client = httpx.Client(base_url=proxy.url, follow_redirects=True, timeout=20, trust_env=False)
    headers = {"authorization": f"Bearer {CLIENT_TOKEN}", "session-id": "conv-row", "accept": "text/event-stream"}
    try:
        r = client.post("/backend-api/codex/responses", json=turn_body("conv-row"), headers=headers)
        status = r.status_code
        text = r.text
    except httpx.HTTPError as e:  # a cut stream may surface as a transport error
        status, text = None, str(e)
    finally:
        client.close()
    if row.status is not None:
        assert status == row.status, text[:500]
    assert status != 401 and "redirect" not in text.lower()[:100]
    assert model_turns(backend) == row.seen
    got = states(proxy)
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


def test_client_disconnect_costs_the_account_nothing(start):
    backend, proxy = start(["alice", "bob"], config=BASE)
    backend.control("POST", "config", {"stream_delay": 0.3, "deltas": 10})
    h = {"authorization": f"Bearer {CLIENT_TOKEN}", "session-id": "gone"}
    with proxy.http.stream("POST", "/backend-api/codex/responses", json=turn_body("gone"), headers=h) as r:
        next(r.iter_raw())  # first bytes, then hang up
    time.sleep(1.0)
    assert states(proxy)["alice"]["state"] == "usable"


def test_stickiness_survives_a_brief_outage_and_returns(start):
    backend, proxy = start(["alice", "bob"], config=BASE + "cooldown_base_seconds: 1\n")
    client = httpx.Client(base_url=proxy.url, follow_redirects=True, timeout=20, trust_env=False)
    h = {"authorization": f"Bearer {CLIENT_TOKEN}", "session-id": "sticky-conv"}
    assert client.post("/backend-api/codex/responses", json=turn_body("sticky-conv"), headers=h).status_code == 200
    backend.fault(kind="status", account="alice", status=503)
    assert client.post("/backend-api/codex/responses", json=turn_body("sticky-conv"), headers=h).status_code == 200
    time.sleep(1.5)  # alice's 1 s cooldown ends
    assert client.post("/backend-api/codex/responses", json=turn_body("sticky-conv"), headers=h).status_code == 200
    assert model_turns(backend) == ["alice", "alice", "bob", "alice"]
    state = backend.state()["accounts"]
    assert state["alice"]["cache_hits"] >= 1  # came back to its warm cache


def test_long_limit_moves_the_conversation(start):
    backend, proxy = start(["alice", "bob"], config=BASE + "repin_after_minutes: 10\n")
    client = httpx.Client(base_url=proxy.url, follow_redirects=True, timeout=20, trust_env=False)
    h = {"authorization": f"Bearer {CLIENT_TOKEN}", "session-id": "moving"}
    client.post("/backend-api/codex/responses", json=turn_body("moving"), headers=h)
    backend.fault(kind="usage_limit", account="alice", resets_in_seconds=3 * 3600)
    for _ in range(2):
        assert client.post("/backend-api/codex/responses", json=turn_body("moving"), headers=h).status_code == 200
    proxy.http.post("/admin/accounts/alice/enable")  # a usage limit is upstream's fact: enable keeps it
    assert client.post("/backend-api/codex/responses", json=turn_body("moving"), headers=h).status_code == 200
    assert model_turns(backend) == ["alice", "alice", "bob", "bob", "bob"]


def test_admin_pin_disable_enable(start):
    backend, proxy = start(["alice", "bob"], config=BASE)
    r = proxy.http.post("/admin/accounts/bob/pin")
    assert r.status_code == 200 and r.json()["pinned"] == "bob"
    h = {"authorization": f"Bearer {CLIENT_TOKEN}"}
    proxy.http.post("/backend-api/codex/responses", json=turn_body(None), headers=h)
    proxy.http.post("/admin/accounts/bob/disable")
    assert states(proxy)["bob"]["state"] == "disabled" and "enable" in states(proxy)["bob"]["reason"]
    proxy.http.post("/backend-api/codex/responses", json=turn_body(None), headers=h)
    proxy.http.post("/admin/accounts/bob/enable")
    proxy.http.post("/backend-api/codex/responses", json=turn_body(None), headers=h)
    proxy.http.post("/admin/accounts/bob/unpin")
    proxy.http.post("/backend-api/codex/responses", json=turn_body(None), headers=h)
    assert model_turns(backend) == ["bob", "alice", "bob", "alice"]
    assert proxy.http.post("/admin/accounts/nobody/pin").status_code == 404
    assert proxy.http.get("/admin/accounts/bob/pin").status_code == 405


def test_replacing_the_file_brings_a_disabled_account_back(start, tmp_path):
    backend, proxy = start(["alice"], config=BASE)
    backend.fault(kind="unauthorized", account="alice", count=2)  # the refreshed tokens are refused too
    client = httpx.Client(base_url=proxy.url, follow_redirects=True, timeout=20, trust_env=False)
    r = client.post("/backend-api/codex/responses", json=turn_body("x"), headers={"session-id": "x"})
    assert r.status_code == 503 and states(proxy)["alice"]["state"] == "disabled"
    fresh = backend.control("POST", "accounts/alice/login")
    (tmp_path / "pool" / "alice.json").write_text(json.dumps(fresh.get("auth", fresh)))
    proxy.http.post("/admin/reload")
    assert states(proxy)["alice"]["state"] == "usable"
    assert proxy.http.post("/backend-api/codex/responses", json=turn_body("x"), headers={"session-id": "x"}).status_code == 200


WS_LIMIT = {"type": "usage_limit_reached", "message": USAGE_MSG, "resets_in_seconds": 3600}


def test_websocket_usage_limit_frame_becomes_retryable_when_another_account_can_serve(start):
    backend, proxy = start(["alice", "bob"], config=BASE)
    backend.fault(kind="ws_error", account="alice", status=429, error=WS_LIMIT)
    frames = ws_turn(proxy, "ws-limit")
    [err] = [f for f in frames if f.get("type") == "error"]
    assert err["status"] == 503 and err["error"]["code"] == "account_switch"
    assert states(proxy)["alice"]["state"] == "limited"
    # Codex opens a new socket; it lands on bob (stand-in or repin) and completes
    frames = ws_turn(proxy, "ws-limit")
    assert frames[-1]["type"] == "response.completed"
    assert [r["account"] for r in backend.requests() if r["kind"] == "ws-upgrade"] == ["alice", "bob"]


def test_websocket_usage_limit_with_nobody_else_is_the_pools_honest_429(start):
    backend, proxy = start(["alice"], config=BASE)
    backend.fault(kind="ws_error", account="alice", status=429, error=WS_LIMIT)
    [err] = [f for f in ws_turn(proxy, "ws-only") if f.get("type") == "error"]
    assert err["status"] == 429 and err["error"]["type"] == "usage_limit_reached"
    assert abs(err["error"]["resets_at"] - (time.time() + 3600)) < 15


def test_websocket_401_frame_never_reaches_the_client(start):
    backend, proxy = start(["alice"], config=BASE)
    backend.fault(kind="ws_error", account="alice", status=401)
    [err] = [f for f in ws_turn(proxy, "ws-401") if f.get("type") == "error"]
    assert err["status"] == 503 and err["error"]["code"] == "account_switch"  # retryable: tokens were refreshed
    assert states(proxy)["alice"]["state"] == "usable"
    assert ws_turn(proxy, "ws-401")[-1]["type"] == "response.completed"  # the new socket works
    backend.fault(kind="ws_error", account="alice", status=401, count=-1)
    # fresh tokens rejected too, within a minute: a real auth problem
    [err] = [f for f in ws_turn(proxy, "ws-401") if f.get("type") == "error"]
    assert err["status"] == 503 and err["error"]["type"] == "no_accounts"
    assert states(proxy)["alice"]["state"] == "disabled"
    assert backend.state()["accounts"]["alice"]["refresh_count"] == 1


def test_event_log_records_the_story_without_secrets(start, tmp_path):
    backend, proxy = start(["alice", "bob"], config=BASE)
    backend.fault(kind="usage_limit", account="alice", resets_in_seconds=3600)
    client = httpx.Client(base_url=proxy.url, follow_redirects=True, timeout=20, trust_env=False)
    client.post("/backend-api/codex/responses", json=turn_body("ev"), headers={"session-id": "ev"})
    proxy.stop()  # flushes the log
    text = (tmp_path / "data" / "events.jsonl").read_text()
    events = [json.loads(line) for line in text.splitlines()]
    names = [e["event"] for e in events]
    assert names.count("request.account_selected") == 2
    assert "request.failover" in names and "account.limited" in names
    limited = next(e for e in events if e["event"] == "account.limited")
    assert limited["account"] == "alice" and limited["until"].endswith("Z")
    for p in (tmp_path / "pool").glob("*.json"):
        for tok in json.loads(p.read_text())["tokens"].values():
            assert tok not in text


def ws_turn(proxy, key):
    headers = {"authorization": f"Bearer {CLIENT_TOKEN}", "session-id": key}
    frames = []
    with connect(f"ws://127.0.0.1:{proxy.port}/backend-api/codex/responses", additional_headers=headers,
                 open_timeout=10) as ws:
        ws.send(json.dumps({"type": "response.create", **turn_body(key)}))
        while True:
            frame = json.loads(ws.recv(timeout=10))
            frames.append(frame)
            if frame.get("type") in ("response.completed", "error", "response.failed"):
                return frames
