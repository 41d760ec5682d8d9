"""The pool-day soak (issue #11 point 13): `scripts/soak --minutes 2` as CI runs it, one check per
test, and the simulated backend's additions it relies on (timed actions, timed limits, refresh-only
revocation, re-login into the pool folder, refresh-token presentation counts, usage in the request
log, the issued-token list for leak scans).

The soak takes about 2.5 minutes: it runs once per module (a subprocess, as a user runs it) and
every check of its table is a test of its own, so a failure names the check and shows its figure.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from fake_chatgpt import FakeChatGPT

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "soak"


# --------------------------------------------------------------------------- the soak itself


@pytest.fixture(scope="module")
def soak(tmp_path_factory):
    out = tmp_path_factory.mktemp("soak") / "soak.json"
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--minutes", "2", "--json", str(out)],
                          capture_output=True, text=True, timeout=420, env=env, cwd=ROOT)
    assert proc.returncode in (0, 1), f"the soak could not run (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
    doc = json.loads(out.read_text())
    return {"exit": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr, "doc": doc,
            "rows": {row["key"]: row for row in doc["rows"]}}


def check(soak, key: str) -> None:
    row = soak["rows"][key]
    assert row["pass"], f"{row['check']}: {row['figure']} (goal {row['goal']})\n\n{soak['stdout']}"


def test_the_day_happened(soak):
    """Turns over SSE and WebSocket, refreshes, faults, limits, the revocation seen by both proxies,
    the re-login picked up by both, failover redirects followed: else the other checks prove nothing."""
    check(soak, "day")
    assert "| check | figure | goal | |" in soak["stdout"]


def test_no_client_visible_failure_while_an_account_could_serve(soak):
    check(soak, "failures")


def test_no_account_asks_for_a_relogin_it_does_not_need(soak):
    check(soak, "relogins")


def test_no_refresh_token_is_presented_twice(soak):
    check(soak, "refresh_twice")


def test_turns_stay_on_their_conversations_account(soak):
    check(soak, "stickiness")


def test_prompt_cache_share_close_to_one_account(soak):
    check(soak, "cache")


def test_ledger_equals_backend_tokens_per_account(soak):
    check(soak, "ledger")


def test_no_secret_in_any_output(soak):
    check(soak, "secrets")


def test_every_account_outage_has_an_upstream_cause(soak):
    check(soak, "outages")


def test_the_proxy_watchdog_acts_before_a_client_times_out(soak):
    check(soak, "idle_timeouts")


def test_proxy_memory_and_event_loop(soak):
    for key in ("rss_0", "rss_1", "lag_0", "lag_1"):
        check(soak, key)


def test_exit_status_says_every_goal_was_met(soak):
    missed = [f"{r['check']}: {r['figure']}" for r in soak["rows"].values() if not r["pass"]]
    assert soak["exit"] == (1 if missed else 0)
    assert soak["exit"] == 0, "goals missed:\n" + "\n".join(missed)


# --------------------------------------------------------------------------- backend additions


async def _fake(tmp_path):
    fake = FakeChatGPT(pool_dir=str(tmp_path / "pool"))
    await fake.start()
    return fake


async def test_schedule_runs_timed_actions_and_limits_reset(tmp_path):
    fake = await _fake(tmp_path)
    try:
        fake.add_account("alice")
        fake.add_account("bob")
        async with httpx.AsyncClient(base_url=fake.url, trust_env=False) as c:
            r = await c.post("/_fake/schedule", json={"actions": [
                {"at": 0.3, "do": "login", "account": "bob"},
                {"at": 0.0, "do": "limit", "account": "alice", "seconds": 2},
                {"at": 0.1, "do": "fault", "fault": {"kind": "status", "status": 503, "account": "bob"}},
            ]})
            assert r.status_code == 201 and len(r.json()["pending"]) == 3
            bad = await c.post("/_fake/schedule", json={"at": 1, "do": "explode"})
            assert bad.status_code == 400 and "unknown scheduled action" in bad.json()["error"]
            for _ in range(100):
                view = (await c.get("/_fake/schedule")).json()
                if not view["pending"]:
                    break
                await asyncio.sleep(0.05)
            assert [a["do"] for a in view["done"]] == ["limit", "fault", "login"] and all(a["ok"] for a in view["done"])
            assert view["done"][2]["result"] == {"path": str(tmp_path / "pool" / "bob.json")}
            on_disk = json.loads((tmp_path / "pool" / "bob.json").read_text())
            assert on_disk == fake.state.accounts["bob"].current_auth
            alice = (await c.get("/_fake/accounts/alice")).json()
            assert alice["limit_reached"] and alice["primary_used_percent"] == 100
            assert [f["kind"] for f in (await c.get("/_fake/faults")).json()["faults"]] == ["status"]
            for _ in range(80):  # the limit ends by itself (whole seconds), and the window starts afresh
                alice = (await c.get("/_fake/accounts/alice")).json()
                if not alice["limit_reached"]:
                    break
                await asyncio.sleep(0.05)
            assert not alice["limit_reached"] and alice["primary_used_percent"] == 0
    finally:
        await fake.stop()


async def test_refresh_only_revocation_and_presentation_counts(tmp_path):
    fake = await _fake(tmp_path)
    try:
        auth = fake.add_account("alice", access_ttl_seconds=60)
        t = auth["tokens"]
        async with httpx.AsyncClient(base_url=fake.url, trust_env=False) as c:
            async def refresh(token):
                return await c.post("/oauth/token", json={"grant_type": "refresh_token", "refresh_token": token,
                                                          "client_id": "x"})

            first = await refresh(t["refresh_token"])
            assert first.status_code == 200
            again = await refresh(t["refresh_token"])  # rotated: reused
            assert again.json()["error"]["code"] == "refresh_token_reused"
            await c.post("/_fake/faults", json={"kind": "refresh_error", "status": 500, "account": "alice"})
            newest = first.json()["refresh_token"]
            assert (await refresh(newest)).status_code == 500  # transient: not consumed, may be presented again
            await c.post("/_fake/accounts/alice/revoke", json={"refresh_only": True})
            assert (await refresh(newest)).json()["error"]["code"] == "refresh_token_invalidated"
            assert (await refresh(newest)).json()["error"]["code"] == "refresh_token_invalidated"
            acct = (await c.get("/_fake/accounts/alice")).json()
            assert (acct["refresh_reused"], acct["refresh_after_refusal"]) == (1, 1)
            assert acct["revoked"] and acct["revoke_scope"] == "refresh"
            # the access tokens already issued still serve a turn
            h = {"authorization": "Bearer " + first.json()["access_token"], "chatgpt-account-id": t["account_id"]}
            body = {"model": "gpt-5.1-codex", "instructions": "Be brief.", "store": False, "stream": True,
                    "input": [{"type": "message", "role": "user", "content": "hi"}], "prompt_cache_key": "conv-1"}
            turn = await c.post("/backend-api/codex/responses", json=body, headers=h)
            assert turn.status_code == 200 and "response.completed" in turn.text
            logged = [e for e in (await c.get("/_fake/requests")).json()["requests"] if e["path"].endswith("/responses")]
            assert logged[-1]["completed"] is True and logged[-1]["usage"]["input_tokens"] > 0
            issued = (await c.get("/_fake/tokens")).json()
            assert t["refresh_token"] in issued["refresh_tokens"] and t["access_token"] in issued["access_tokens"]
            login = await c.post("/_fake/accounts/alice/login", json={"write": True})
            assert login.json()["path"] == str(tmp_path / "pool" / "alice.json")
            assert (await c.get("/_fake/accounts/alice")).json()["revoked"] is False
    finally:
        await fake.stop()


def test_backend_help_documents_the_additions():
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "fake-chatgpt"), "--help"], capture_output=True,
                         text=True, timeout=30).stdout
    for needle in ("--access-ttls", "--initial-access-ages", "--schedule", "limit", "revoke", "refresh_only",
                   "login", "GET  tokens", "refresh_reused"):
        assert needle in out, needle
