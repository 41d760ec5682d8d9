"""What the addon captures on each flow (usage, failures, rate limits, time to first byte), read
back from a flows file written by real mitmdump with -w — and that no pool token stays in it."""

import json

import pytest
from mitmproxy import io

from tests.support.flows import CLIENT_TOKEN, RESPONSES, completed_event, turn, ws_turns

pytestmark = pytest.mark.e2e


def read_flows(path):
    with open(path, "rb") as f:
        return list(io.FlowReader(f).stream())


def pool_tokens(pool_dir):
    out = []
    for p in pool_dir.glob("*.json"):
        t = json.loads(p.read_text())["tokens"]
        out += [t["access_token"], t["refresh_token"], t["id_token"]]
    assert out, f"no pool files in {pool_dir}"
    return out


def test_sse_usage_rate_limits_and_ttfb_are_captured(start, tmp_path):
    flows_file = tmp_path / "flows.mitm"
    backend, proxy = start(["alice"], extra=["-w", str(flows_file)])
    r = turn(proxy, "cap-1")
    assert r.status_code == 200, r.text
    sent_usage = completed_event(r.text)["response"]["usage"]
    used_after_first = backend.state()["accounts"]["alice"]["primary_used_percent"]  # what the turn reported
    backend.fault(account="alice", kind="failed", code="rate_limit_exceeded", message="Rate limit reached. Try again in 5s.")
    failed = turn(proxy, "cap-1")
    assert failed.status_code == 200 and "response.failed" in failed.text
    proxy.stop()
    flows = [f for f in read_flows(flows_file) if f.request.path.startswith(RESPONSES)]
    assert len(flows) == 2
    meta = flows[0].metadata["codex_pool"]
    assert meta["account"] == "alice" and meta["status"] == 200
    usage = meta["turn"]["usage"]
    assert usage == {
        "input_tokens": sent_usage["input_tokens"],
        "cached_input_tokens": sent_usage["input_tokens_details"]["cached_tokens"],
        "output_tokens": sent_usage["output_tokens"],
        "reasoning_tokens": sent_usage["output_tokens_details"]["reasoning_tokens"],
        "total_tokens": sent_usage["total_tokens"],
    }
    assert meta["turn"]["completed"] is True
    assert meta["turn"]["rate_limits"]["rate_limits"]["primary"]["used_percent"] == used_after_first > 0
    assert 0 <= meta["ttfb_ms"] < 5000
    assert "alice" in flows[0].comment and str(sent_usage["total_tokens"]) in flows[0].comment
    failed_meta = flows[1].metadata["codex_pool"]
    assert failed_meta["turn"]["completed"] is False
    assert failed_meta["turn"]["failed"]["code"] == "rate_limit_exceeded"
    stored = flows_file.read_bytes()
    for secret in pool_tokens(tmp_path / "pool"):
        assert secret.encode() not in stored
    assert b"redacted: pool account alice" in stored


def test_rate_limit_headers_reach_the_admin_view(start):
    backend, proxy = start(["alice"])
    assert turn(proxy, "rl").status_code == 200
    [alice] = proxy.http.get("/admin/accounts").json()["accounts"]
    fake = backend.state()["accounts"]["alice"]
    primary = alice["rate_limits"]["primary"]
    assert primary["window_minutes"] == 300 and primary["used_percent"] == fake["primary_used_percent"] > 0
    assert alice["last_used"] is not None and alice["requests"] == 1


def test_websocket_turn_usage_is_captured_and_upgrade_carries_pool_credentials(start, tmp_path):
    flows_file = tmp_path / "flows.mitm"
    backend, proxy = start(["alice", "bob"], extra=["-w", str(flows_file)])
    turns = ws_turns(proxy, "ws-conv", 2, headers={"chatgpt-account-id": "client-account",
                                                   "openai-beta": "responses_websockets=2026-02-06"})
    assert [t[-1]["type"] for t in turns] == ["response.completed"] * 2
    completed = [t[-1]["response"]["usage"] for t in turns]
    proxy.stop()
    upgrades = [r for r in backend.requests() if r["kind"] == "ws-upgrade"]
    assert len(upgrades) == 1 and upgrades[0]["account"] in ("alice", "bob")
    flat = json.dumps(upgrades[0]["headers"])
    assert CLIENT_TOKEN not in flat and "client-account" not in flat
    [flow] = [f for f in read_flows(flows_file) if f.websocket is not None]
    meta = flow.metadata["codex_pool"]
    assert meta["ws_turns"] == 2
    assert meta["turn"]["usage"]["total_tokens"] == completed[-1]["total_tokens"]
    for secret in pool_tokens(tmp_path / "pool"):
        assert secret.encode() not in flows_file.read_bytes()
