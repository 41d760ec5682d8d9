import pytest

from codex_pool.core import failover
from codex_pool.core.failover import ANSWER, PASS, RETRY, Chains, decide, retry_location
from codex_pool.core.outcome import OK, Verdict

FAIL = Verdict("limited", "usage_limit_reached")


@pytest.mark.parametrize(
    "verdict,attempt,max_attempts,alt,sent,expected",
    [
        (OK, 1, 3, True, False, PASS),
        (Verdict("neutral", "client_error_400"), 1, 3, True, False, PASS),
        (FAIL, 1, 3, True, False, RETRY),
        (FAIL, 2, 3, True, False, RETRY),
        (FAIL, 3, 3, True, False, ANSWER),  # bounded
        (FAIL, 1, 3, False, False, ANSWER),  # nobody else can serve
        (FAIL, 1, 3, True, True, PASS),  # bytes already reached the client
        (Verdict("auth", "unauthorized"), 1, 1, True, False, ANSWER),
    ],
)
def test_decide(verdict, attempt, max_attempts, alt, sent, expected):
    assert decide(verdict, attempt=attempt, max_attempts=max_attempts, has_alternative=alt, answer_sent=sent) == expected


def test_chain_is_found_again_by_marker_and_expires():
    chains = Chains()
    assert chains.find(None, None, 100.0) is None and len(chains) == 0  # a first try allocates nothing
    c = chains.start("alice", None, 100.0)
    assert c.tried == ["alice"] and c.attempt == 2 and c.marker() == f"{c.id}.2"
    assert chains.find(c.marker(), None, 101.0) is c
    assert chains.find("forged.2", None, 101.0) is None  # unknown marker: no chain
    assert chains.find(c.marker(), None, 100.0 + failover.CHAIN_TTL + 1) is None
    assert len(chains) == 0


def test_a_websocket_reconnect_finds_its_chain_by_conversation_until_it_ends():
    chains = Chains()
    c = chains.start("alice", "conv-1", 100.0)
    assert chains.find(None, "conv-1", 101.0) is c
    assert chains.find(None, "conv-2", 101.0) is None
    chains.end(c.id)
    assert chains.find(None, "conv-1", 102.0) is None and chains.get(c.id) is None


def test_retry_location_replaces_an_old_marker_and_keeps_the_query():
    c = failover.Chain("abc", ["alice"])
    assert retry_location("/backend-api/codex/responses", c) == "/backend-api/codex/responses?codex-pool-retry=abc.2"
    c.tried.append("bob")
    assert retry_location("/x?a=1&codex-pool-retry=abc.2&b=2", c) == "/x?a=1&b=2&codex-pool-retry=abc.3"
