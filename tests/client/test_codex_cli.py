"""The real Codex CLI 0.169.0 through real mitmdump + our addon, custom-provider mode over http
(the Codex home written by scripts/codex-setup --mode custom)."""

import json
import time

import pytest
from codex_pool.core.client_home import placeholder_client_auth

from tests.support.wait import wait_for

pytestmark = [pytest.mark.client, pytest.mark.e2e]


def test_codex_exec_resume_and_a_second_conversation(codex_world):
    w = codex_world("custom", "policy: round_robin\nledger_flush_seconds: 0.2\n")

    first = w.codex("say hi")
    assert "Answer from fake account" in first.stdout
    [t1] = w.turns()
    assert t1["status"] == 200 and t1["account"] in ("alice", "bob")
    assert t1["session_id"]  # Codex's thread id, the conversation key
    placeholder = placeholder_client_auth(time.time())["tokens"]["account_id"]
    assert placeholder not in json.dumps([r["headers"] for r in w.backend.requests()])  # only pool credentials upstream

    resumed = w.codex("resume", "--last", "and again")
    assert "Answer from fake account" in resumed.stdout
    t2 = w.turns()[-1]
    assert t2["session_id"] == t1["session_id"]  # the same conversation...
    assert t2["account"] == t1["account"]  # ...stays on its account

    w.codex("a brand new conversation")
    t3 = w.turns()[-1]
    assert t3["session_id"] != t1["session_id"]
    assert t3["account"] != t1["account"]  # round_robin places it on the other account

    assert w.client_refreshes() == 0  # Codex never refreshed its own token
    assert w.accounts.sent()[t1["account"]]["cache_hits"] >= 1  # the resumed turn hit its account's cache

    # an ordinary session shows no errors: Codex's side requests (plugins, MCP, settings, analytics)
    # are answered, and a client's 4xx on one would be counted apart from failed turns (side_4xx)
    def report():
        r = w.proxy.http.get("/admin/usage", params={"group": "account"}).json()
        return r["totals"] if r["totals"]["turns"] >= 3 else None
    totals = wait_for(report, 10, "the three turns in the ledger")
    assert totals["errors"] == 0 and totals["requests"] > totals["turns"], totals
