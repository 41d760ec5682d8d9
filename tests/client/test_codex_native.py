"""The real Codex CLI 0.169.0 in native mode (built-in provider over https: workspace routing,
WebSocket turns, zstd bodies) through real mitmdump + our addon, against the simulated backend."""

import json
from pathlib import Path

import pytest

pytestmark = [pytest.mark.client, pytest.mark.e2e]


@pytest.fixture
def native(codex_world):
    w = codex_world("native", "policy: round_robin\nledger_flush_seconds: 0.5\n")
    assert w.ca.exists()
    return w.backend, w.proxy, w.codex, w.tmp_path


def pool_tokens(pool: Path):
    out = {}
    for p in pool.glob("*.json"):
        t = json.loads(p.read_text())["tokens"]
        out[p.stem] = t
    return out


def test_native_mode_turns_over_websocket_through_the_pool(native):
    backend, proxy, codex, tmp_path = native
    first = codex("say hi")
    assert "Answer from fake account" in first.stdout
    log = backend.requests()
    upgrades = [r for r in log if r["kind"] == "ws-upgrade"]
    frames = [r for r in log if r["kind"] == "ws-msg"]
    assert upgrades and frames, [(r["kind"], r["path"]) for r in log]
    tokens = pool_tokens(tmp_path / "pool")
    pool_auth = {f"Bearer {t['access_token']}" for t in tokens.values()}
    for r in upgrades:
        h = dict((k.lower(), v) for k, v in r["headers"])
        assert h["authorization"] in pool_auth and r["account"] in tokens
    assert {r["account"] for r in frames} <= {upgrades[0]["account"]}
    assert not [r for r in log if r["path"].startswith("/backend-api/wham/accounts/check")]  # answered by the proxy
    assert not [r for r in log if r["path"].startswith("/oauth/token")]
    # a tool-call round trip on the same socket and account
    tool = codex("resume", "--last", "RUN_TOOL please")
    assert "tool-ok" in tool.stdout
    log = backend.requests()
    turns = [r for r in log if r["kind"] == "ws-msg" and r.get("status") == 200]
    conv_accounts = {r["account"] for r in turns if r.get("session_id") == upgrades[0].get("session_id")}
    assert len(conv_accounts) == 1
    # a second conversation lands on the other account (round_robin)
    codex("another conversation")
    later = [r for r in backend.requests() if r["kind"] == "ws-upgrade"]
    assert later[-1]["account"] != upgrades[0]["account"]
    # usage from WebSocket turns is recorded like SSE turns
    proxy.stop()
    from codex_pool.storage.ledger_store import LedgerStore

    records = list(LedgerStore(tmp_path / "proxy" / "data" / "ledger").query(None, None))
    ws = [r for r in records if r["kind"] == "ws_turn"]
    assert ws and sum(r["total_tokens"] for r in ws) == sum(a["usage_totals"]["total_tokens"]
                                                             for a in backend.state()["accounts"].values())


def test_native_mode_falls_back_to_https_when_websocket_is_refused(native):
    backend, proxy, codex, tmp_path = native
    backend.control("POST", "config", {"websocket": False})
    done = codex("say hi")
    assert "Answer from fake account" in done.stdout
    log = backend.requests()
    posts = [r for r in log if r["kind"] == "http" and r["path"].startswith("/backend-api/codex/responses")]
    assert posts and all(r["status"] == 200 for r in posts) and all(r["account"] in ("alice", "bob") for r in posts)


def test_an_upgrade_refused_by_one_account_is_served_by_another(native):
    backend, proxy, codex, tmp_path = native
    backend.fault(kind="usage_limit", account="alice", match="ws-upgrade", resets_in_seconds=3600)
    done = codex("say hi")
    assert "Answer from fake account bob" in done.stdout
    upgrades = [(r["account"], r["status"]) for r in backend.requests() if r["kind"] == "ws-upgrade"]
    assert upgrades[0] == ("alice", 429) and ("bob", 101) in upgrades


def test_websocket_usage_limit_frame_moves_codex_to_another_account(native):
    backend, proxy, codex, tmp_path = native
    backend.fault(kind="ws_error", account="alice", status=429,
                  error={"type": "usage_limit_reached", "message": "limit", "resets_in_seconds": 3600})
    done = codex("say hi")
    assert "Answer from fake account bob" in done.stdout, done.stdout + done.stderr[-2000:]
