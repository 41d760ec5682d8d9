"""Failover with the real Codex CLI 0.169.0 (custom provider over http) and the openai package."""

import re
import time

import pytest
from openai import OpenAI

from tests.support.codex_world import shared_codex_world
from tests.support.wait import wait_for

pytestmark = [pytest.mark.client, pytest.mark.e2e]


@pytest.fixture(scope="module")
def shared(tmp_path_factory, codex_bin):
    """One mitmdump and Codex home for the module; each test on accounts of its own."""
    yield from shared_codex_world(tmp_path_factory, codex_bin, "custom", "policy: fill_first\ncooldown_base_seconds: 1\n")


@pytest.fixture
def world(shared):
    shared.fresh()
    return shared


def test_turn_completes_when_the_first_account_hits_its_usage_limit(world):
    world.accounts.fault("usage_limit", "alice", resets_in_seconds=3600)
    done = world.codex("say hi")
    assert world.answer_from("bob") in done.stdout
    assert [t["account"] for t in world.turns()] == ["alice", "bob"]
    assert "usage limit" not in (done.stdout + done.stderr).lower()


def test_every_account_limited_prints_the_earliest_reset(world):
    world.accounts.fault("usage_limit", "alice", resets_in_seconds=5 * 3600, count=-1)
    world.accounts.fault("usage_limit", "bob", resets_in_seconds=2 * 3600, count=-1)
    done = world.codex("say hi", ok=False)
    out = done.stdout + done.stderr
    assert done.returncode != 0 and "usage limit" in out.lower(), out
    said = re.search(r"[Tt]ry again at (\d{1,2}):(\d{2})", out)
    assert said, out[-800:]
    shown = int(said.group(1)) % 12 * 60 + int(said.group(2))
    expected = time.localtime(time.time() + 2 * 3600)  # bob's, the earliest in the pool
    minutes = expected.tm_hour % 12 * 60 + expected.tm_min
    assert min(abs(shown - minutes), 720 - abs(shown - minutes)) <= 1, (said.group(0), expected)


def test_a_pool_accounts_401_never_makes_codex_refresh(world):
    world.accounts.fault("unauthorized", "alice")
    done = world.codex("say hi")
    assert world.answer_from("alice") in done.stdout  # the proxy refreshed alice and served the turn on her
    assert [t["account"] for t in world.turns()] == ["alice", "alice"]
    sent = world.accounts.sent()
    assert sent["alice"]["refresh_count"] == 1  # the proxy's own refresh of the pool account
    assert world.unknown_token_calls() == 0  # Codex never presented its own (placeholder) refresh token
    assert sum(a["token_calls"] for a in sent.values()) == 1


def test_conversation_returns_to_its_account_after_a_short_cooldown(world):
    world.codex("first turn")
    world.accounts.fault("status", "alice", status=503)
    world.codex("resume", "--last", "second turn")
    wait_for(lambda: world.accounts.states()["alice"]["usable"], 10, "alice's 1 s cooldown to end")
    world.codex("resume", "--last", "third turn")
    turns = world.turns()
    accounts = [t["account"] for t in turns if t["status"] == 200]
    assert accounts == ["alice", "bob", "alice"], [(t["account"], t["status"]) for t in turns]
    assert len({t["session_id"] for t in turns}) == 1


def test_openai_package_fails_over(world):
    world.accounts.fault("usage_limit", "alice", resets_in_seconds=3600)
    client = OpenAI(base_url=f"{world.proxy.url}/backend-api/codex", api_key="unused", max_retries=0)
    with client.responses.stream(model="gpt-5.1-codex", instructions="terse", input="hi", store=False,
                                 extra_headers={"session-id": "sdk-failover"}) as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
    assert text == world.answer_from("bob")
    assert [t["account"] for t in world.turns()] == ["alice", "bob"]
