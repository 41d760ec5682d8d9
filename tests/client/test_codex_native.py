"""The real Codex CLI 0.169.0 in native mode (built-in provider over https: workspace routing,
WebSocket turns, zstd bodies) through real mitmdump + our addon, against the simulated backend."""

import json

import pytest

from codex_pool.storage.ledger_store import LedgerStore
from tests.support.codex_world import shared_codex_world
from tests.support.wait import wait_for

pytestmark = [pytest.mark.client, pytest.mark.e2e]


@pytest.fixture(scope="module")
def shared(tmp_path_factory, codex_bin):
    """One mitmdump and Codex home for the module; each test on accounts of its own."""
    yield from shared_codex_world(tmp_path_factory, codex_bin, "native", "policy: round_robin\nledger_flush_seconds: 0.5\n")


@pytest.fixture
def native(shared):
    shared.fresh()
    assert shared.ca.exists()
    return shared


def pool_tokens(w):
    """This test's pool tokens by short account name."""
    return {w.accounts.short(p.stem): json.loads(p.read_text())["tokens"] for p in w.pool_dir.glob("*.json")}


def test_native_mode_turns_over_websocket_through_the_pool(native):
    w = native
    first = w.codex("say hi")
    assert "Answer from fake account" in first.stdout
    log = w.requests()
    upgrades = [r for r in log if r["kind"] == "ws-upgrade"]
    frames = [r for r in log if r["kind"] == "ws-msg"]
    assert upgrades and frames, [(r["kind"], r["path"]) for r in log]
    tokens = pool_tokens(w)
    pool_auth = {f"Bearer {t['access_token']}" for t in tokens.values()}
    for r in upgrades:
        h = dict((k.lower(), v) for k, v in r["headers"])
        assert h["authorization"] in pool_auth and r["account"] in tokens
    assert {r["account"] for r in frames} <= {upgrades[0]["account"]}
    assert not [r for r in log if r["path"].startswith("/backend-api/wham/accounts/check")]  # answered by the proxy
    assert not [r for r in log if r["path"].startswith("/oauth/token")]
    # a tool-call round trip on the same socket and account
    tool = w.codex("resume", "--last", "RUN_TOOL please")
    assert "tool-ok" in tool.stdout
    log = w.requests()
    turns = [r for r in log if r["kind"] == "ws-msg" and r.get("status") == 200]
    conv_accounts = {r["account"] for r in turns if r.get("session_id") == upgrades[0].get("session_id")}
    assert len(conv_accounts) == 1
    # a second conversation lands on the other account (round_robin)
    w.codex("another conversation")
    later = [r for r in w.requests() if r["kind"] == "ws-upgrade"]
    assert later[-1]["account"] != upgrades[0]["account"]
    # usage from WebSocket turns is recorded like SSE turns, and flushed to the ledger on disk
    sent = sum(a["usage_totals"]["total_tokens"] for a in w.accounts.sent().values())
    mine = {w.accounts["alice"], w.accounts["bob"]}

    def ws_records():
        records = LedgerStore(w.world.data_dir / "ledger").query(None, None)
        return [r for r in records if r["kind"] == "ws_turn" and r["account"] in mine]

    wait_for(lambda: sum(r["total_tokens"] for r in ws_records()) == sent, 10,
             f"the ledger on disk to hold this test's WebSocket turns ({sent} tokens)")
    assert ws_records()


def test_native_mode_falls_back_to_https_when_websocket_is_refused(native):
    w = native
    w.backend.control("POST", "config", {"websocket": False})
    done = w.codex("say hi")
    assert "Answer from fake account" in done.stdout
    log = w.requests()
    posts = [r for r in log if r["kind"] == "http" and r["path"].startswith("/backend-api/codex/responses")]
    assert posts and all(r["status"] == 200 for r in posts) and all(r["account"] in ("alice", "bob") for r in posts)


def test_an_upgrade_refused_by_one_account_is_served_by_another(native):
    w = native
    w.accounts.fault("usage_limit", "alice", match="ws-upgrade", resets_in_seconds=3600)
    done = w.codex("say hi")
    assert w.answer_from("bob") in done.stdout
    upgrades = [(r["account"], r["status"]) for r in w.requests() if r["kind"] == "ws-upgrade"]
    assert upgrades[0] == ("alice", 429) and ("bob", 101) in upgrades


def test_websocket_usage_limit_frame_moves_codex_to_another_account(native):
    w = native
    w.accounts.fault("ws_error", "alice", status=429,
                     error={"type": "usage_limit_reached", "message": "limit", "resets_in_seconds": 3600})
    done = w.codex("say hi")
    assert w.answer_from("bob") in done.stdout, done.stdout + done.stderr[-2000:]



@pytest.mark.parametrize("where", ["ws-msg", "ws-upgrade"])
def test_every_account_limited_over_websocket_prints_the_usage_limit_at_once(native, where):
    """Every account answers its turn's frame (or its upgrade) with a usage limit: Codex prints it at
    once (a Retry-After would make it wait until the reset), and again when the pool already knows."""
    import time
    w = native
    for name, hours in (("alice", 5), ("bob", 2)):
        if where == "ws-msg":
            w.accounts.fault("ws_error", name, count=-1, status=429, error={
                "type": "usage_limit_reached", "message": "limit", "resets_in_seconds": hours * 3600})
        else:
            w.accounts.fault("usage_limit", name, match="ws-upgrade", count=-1, resets_in_seconds=hours * 3600)
    started = time.monotonic()
    done = w.codex("say hi", ok=False)
    took = time.monotonic() - started
    out = done.stdout + done.stderr
    assert done.returncode != 0 and "usage limit" in out.lower() and "try again at" in out.lower(), out[-2000:] + w.proxy.output()[-6000:]
    assert took < 60, took
    asked = len(w.requests())
    again = w.codex("say hi", ok=False)  # now the pool knows: answered without asking upstream
    assert again.returncode != 0 and "usage limit" in (again.stdout + again.stderr).lower()
    assert not [r for r in w.requests()[asked:] if r["kind"] in ("ws-upgrade", "ws-msg") or r["method"] == "POST"]
