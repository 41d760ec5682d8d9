"""Failover with the real Codex CLI 0.169.0 (custom provider over http) and the openai package."""

import re
import time

import pytest
from openai import OpenAI

pytestmark = [pytest.mark.client, pytest.mark.e2e]


@pytest.fixture
def world(codex_world):
    w = codex_world("custom", "policy: fill_first\ncooldown_base_seconds: 1\n")
    return w.backend, w.proxy, w.codex


def turns(backend):
    return [r for r in backend.requests() if r["path"].startswith("/backend-api/codex/responses")]


def test_turn_completes_when_the_first_account_hits_its_usage_limit(world):
    backend, proxy, codex = world
    backend.fault(kind="usage_limit", account="alice", resets_in_seconds=3600)
    done = codex("say hi")
    assert "Answer from fake account bob" in done.stdout
    assert [t["account"] for t in turns(backend)] == ["alice", "bob"]
    assert "usage limit" not in (done.stdout + done.stderr).lower()


def test_every_account_limited_prints_the_earliest_reset(world):
    backend, proxy, codex = world
    backend.fault(kind="usage_limit", account="alice", resets_in_seconds=5 * 3600, count=-1)
    backend.fault(kind="usage_limit", account="bob", resets_in_seconds=2 * 3600, count=-1)
    done = codex("say hi", ok=False)
    out = done.stdout + done.stderr
    assert done.returncode != 0 and "usage limit" in out.lower(), out
    said = re.search(r"[Tt]ry again at (\d{1,2}):(\d{2})", out)
    assert said, out[-800:]
    shown = int(said.group(1)) % 12 * 60 + int(said.group(2))
    expected = time.localtime(time.time() + 2 * 3600)  # bob's, the earliest in the pool
    minutes = expected.tm_hour % 12 * 60 + expected.tm_min
    assert min(abs(shown - minutes), 720 - abs(shown - minutes)) <= 1, (said.group(0), expected)


def test_a_pool_accounts_401_never_makes_codex_refresh(world):
    backend, proxy, codex = world
    backend.fault(kind="unauthorized", account="alice")
    done = codex("say hi")
    assert "Answer from fake account alice" in done.stdout  # the proxy refreshed alice and served the turn on her
    assert [t["account"] for t in turns(backend)] == ["alice", "alice"]
    state = backend.state()
    assert state["accounts"]["alice"]["refresh_count"] == 1  # the proxy's own refresh of the pool account
    assert state["token_calls_unknown"] == 0  # Codex never presented its own (placeholder) refresh token
    assert sum(a["token_calls"] for a in state["accounts"].values()) == 1


def test_conversation_returns_to_its_account_after_a_short_cooldown(world):
    backend, proxy, codex = world
    codex("first turn")
    backend.fault(kind="status", account="alice", status=503)
    codex("resume", "--last", "second turn")
    time.sleep(1.5)  # alice's 1 s cooldown ends
    codex("resume", "--last", "third turn")
    accounts = [t["account"] for t in turns(backend) if t["status"] == 200]
    assert accounts == ["alice", "bob", "alice"], [(t["account"], t["status"]) for t in turns(backend)]
    assert len({t["session_id"] for t in turns(backend)}) == 1


def test_openai_package_fails_over(world):
    backend, proxy, _ = world
    backend.fault(kind="usage_limit", account="alice", resets_in_seconds=3600)
    client = OpenAI(base_url=f"{proxy.url}/backend-api/codex", api_key="unused", max_retries=0)
    with client.responses.stream(model="gpt-5.1-codex", instructions="terse", input="hi", store=False,
                                 extra_headers={"session-id": "sdk-failover"}) as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
    assert text == "Answer from fake account bob."
    assert [t["account"] for t in turns(backend)] == ["alice", "bob"]
