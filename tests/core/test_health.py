import pytest

from codex_pool.core.health import HealthBook, HealthPolicy
from codex_pool.core.outcome import OK, Verdict

T = 1_000_000.0
COOL = Verdict("cooldown", "server_error_503", "upstream said no")
LIMIT = Verdict("limited", "usage_limit_reached", "limit", until=T + 3600)


def book():
    return HealthBook(HealthPolicy(cooldown_base=5, cooldown_max=40, limit_default=600))


def test_cooldown_backs_off_exponentially_and_success_resets():
    b = book()
    waits = []
    for i in range(5):
        [e] = b.apply("a", COOL, T)
        waits.append(e.fields["seconds"])
    assert waits == [5, 10, 20, 40, 40]  # capped
    assert not b.usable("a", T + 39) and b.usable("a", T + 41)
    b.apply("a", OK, T + 50)
    assert b.peek("a").failures == 0 and b.peek("a").state == "usable"
    [e] = b.apply("a", COOL, T + 60)
    assert e.fields["seconds"] == 5


def test_retry_after_wins_when_longer():
    b = book()
    [e] = b.apply("a", Verdict("cooldown", "rate_limited", retry_after=30), T)
    assert e.fields["seconds"] == 30 and b.peek("a").until == T + 30


def test_limited_until_reset_or_default():
    b = book()
    [e] = b.apply("a", LIMIT, T)
    assert e.event == "account.limited" and b.peek("a").until == T + 3600
    b.apply("b", Verdict("limited", "usage_limit_reached"), T)
    assert b.peek("b").until == T + 600


@pytest.mark.parametrize("state, started, turn, back", [
    ("limited", T + 5, True, True),     # a turn placed after the limit was served: the limit is gone
    ("limited", T + 5, False, False),   # a side request (models, plugins) is served by a limited account too
    ("limited", T - 5, True, False),    # a turn under way before the limit says nothing of after it
    ("limited", None, True, True),      # no start known: as before
    ("limited", T, True, True),         # started the moment it went out
    ("cooling", T + 5, False, True),    # any request placed after a transient failure proves it back
    ("cooling", T - 5, True, False),    # but not one that started before it
])
def test_a_success_brings_an_account_back_only_when_it_proves_it_serves_again(state, started, turn, back):
    b = book()
    b.apply("a", LIMIT if state == "limited" else COOL, T)
    events = b.apply("a", OK, T + 10, started=started, turn=turn)
    assert (b.peek("a").state == "usable") is back
    assert [e.event for e in events] == (["account.recovered"] if back else [])


def test_a_later_limit_is_not_lifted_by_a_turn_that_started_while_cooling():
    b = book()
    b.apply("a", COOL, T)
    b.apply("a", LIMIT, T + 2)
    assert b.apply("a", OK, T + 3, started=T + 1) == [] and b.peek("a").state == "limited"


def test_cooldown_does_not_shorten_a_limit():
    b = book()
    b.apply("a", LIMIT, T)
    assert b.apply("a", COOL, T + 1) == [] and b.peek("a").state == "limited"


def test_tick_recovers_expired_states_once():
    b = book()
    b.apply("a", COOL, T)
    assert b.tick(T + 1) == []
    [e] = b.tick(T + 6)
    assert e.event == "account.recovered" and e.fields["was"] == "cooling"
    assert b.tick(T + 7) == []


def test_auth_disables_until_file_replaced_manual_until_enabled():
    b = book()
    [e] = b.apply("a", Verdict("auth", "unauthorized", disable_as="reauth_required"), T)
    assert e.event == "account.disabled" and not b.usable("a", T + 10**6)
    assert b.apply("a", COOL, T + 1) == []  # disabled stays disabled
    [r] = b.file_replaced("a", T + 2)
    assert r.event == "account.recovered" and b.usable("a", T + 2)
    b.disable("a", "manual", T + 3)
    assert b.file_replaced("a", T + 4) == [] and not b.usable("a", T + 4)
    b.enable("a", T + 5)
    assert b.usable("a", T + 5)


def test_enable_keeps_a_usage_limit():
    b = book()
    b.apply("a", LIMIT, T)
    assert b.enable("a", T + 1) == [] and not b.usable("a", T + 1)


def test_out_for_counts_past_and_future_outage():
    b = book()
    assert b.out_for("a", T) == 0
    b.apply("a", LIMIT, T)
    assert b.out_for("a", T) == 3600
    b.disable("b", "manual", T)
    assert b.out_for("b", T) == float("inf")
    for i in range(3):
        b.apply("c", COOL, T + i * 100)
    assert b.out_for("c", T + 200) == 200  # out since T, even though the current cooldown is short
