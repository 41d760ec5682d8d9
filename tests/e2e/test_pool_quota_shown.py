"""Clients are shown the pool's quota, not one account's: `GET /backend-api/wham/usage`, the
`x-codex-*` headers of a turn and its `codex.rate_limits` events (SSE and WebSocket), through real
mitmdump, with one exhausted account out of four."""

import hashlib
import json

import pytest

from tests.support.flows import CLIENT_TOKEN, RESPONSES, turn, turn_body, ws_turns

pytestmark = pytest.mark.e2e

NAMES = ("alice", "bob", "carol", "dave")


def sse_events(text):
    out = []
    for block in text.split("\n\n"):
        for line in block.splitlines():
            if line.startswith("data:"):
                out.append(json.loads(line[5:]))
    return out


def expected_pool_percent(proxy):
    """The formula over what the proxy itself recorded of each account (core/pool_quota.py): alice
    (limited) counts 100, the others their own last figures."""
    rows = proxy.http.get("/admin/accounts").json()["accounts"]
    own = {r["name"]: (100.0 if r["state"] == "limited" else r["rate_limits"]["primary"]["used_percent"]) for r in rows}
    assert own["alice"] == 100.0 and all(own[n] < 50 for n in NAMES[1:])
    return round(sum(own.values()) / len(own), 1)


@pytest.fixture
def pool_with_one_exhausted(start):
    backend, proxy = start(NAMES, config="pool_dir: pool\ndata_dir: data\npolicy: round_robin\nusage_poll_seconds: 0\n")
    for i in range(len(NAMES)):  # every account serves once: the proxy knows each one's figures
        assert turn(proxy, f"warm-{i}").status_code == 200
    backend.fault(kind="usage_limit", account="alice", resets_in_seconds=3600)
    assert turn(proxy, "to-alice").status_code == 307  # alice's turn: limited, the client is sent on
    return backend, proxy


def test_usage_endpoint_headers_and_events_show_the_pool(pool_with_one_exhausted):
    backend, proxy = pool_with_one_exhausted
    r = turn(proxy, "after")
    assert r.status_code == 200
    expected = expected_pool_percent(proxy)
    assert float(r.headers["x-codex-primary-used-percent"]) == pytest.approx(expected, abs=0.6)
    [event] = [e for e in sse_events(r.text) if e.get("type") == "codex.rate_limits"]
    assert event["rate_limits"]["primary"]["used_percent"] == pytest.approx(expected, abs=0.6)
    assert event["rate_limits"]["limit_reached"] is False
    usage = proxy.http.get("/backend-api/wham/usage", headers={"authorization": f"Bearer {CLIENT_TOKEN}"}).json()
    assert usage["rate_limit"]["primary_window"]["used_percent"] == pytest.approx(expected, abs=0.6)
    assert usage["rate_limit"]["allowed"] is True and usage["plan_type"] == "plus"
    assert not any(r["path"] == "/backend-api/wham/usage" for r in backend.requests())  # answered by the proxy
    # the pool keeps each account's own figures for itself
    accounts = {a["name"]: a for a in proxy.http.get("/admin/accounts").json()["accounts"]}
    assert accounts["alice"]["state"] == "limited"


def test_websocket_rate_limit_frames_show_the_pool(pool_with_one_exhausted):
    backend, proxy = pool_with_one_exhausted
    [frames] = ws_turns(proxy, "ws-quota", 1, headers={"originator": "codex_cli_rs"})
    [event] = [f for f in frames if f.get("type") == "codex.rate_limits"]
    expected = expected_pool_percent(proxy)
    assert event["rate_limits"]["primary"]["used_percent"] == pytest.approx(expected, abs=0.6)


def test_when_every_account_is_limited_the_client_is_told_so(start):
    backend, proxy = start(("alice", "bob"), config="pool_dir: pool\ndata_dir: data\nusage_poll_seconds: 0\n")
    backend.fault(kind="usage_limit", count=2, resets_in_seconds=3600)
    for key in ("a", "b"):
        turn(proxy, key)
    usage = proxy.http.get("/backend-api/wham/usage").json()
    assert usage["rate_limit"]["limit_reached"] is True and usage["rate_limit"]["allowed"] is False
    assert usage["rate_limit"]["primary_window"]["used_percent"] == 100.0


def test_client_quota_account_passes_the_serving_accounts_figures_byte_for_byte(start):
    backend, proxy = start(("alice", "bob"), config="pool_dir: pool\ndata_dir: data\nusage_poll_seconds: 0\n"
                                                    "client_quota: account\n")
    backend.fault(kind="usage_limit", account="alice", resets_in_seconds=3600)
    turn(proxy, "to-limit")  # one of them is limited now
    r = turn(proxy, "served")
    assert r.status_code == 200
    [seen] = [x for x in backend.requests() if x["path"].startswith(RESPONSES) and x["status"] == 200]
    assert seen["response_sha256"] == hashlib.sha256(r.content).hexdigest()
