"""Refresh policy, the refresher (single flight, lock, adopt-on-disk, never twice) and the keeper.
The token endpoint is an httpx.MockTransport here; end-to-end tests use the simulated backend."""

import asyncio
import json
import time
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from codex_pool.core import refresh_policy
from codex_pool.core.auth_file import parse_auth
from codex_pool.upstream.refresher import ADOPTED, PERMANENT, REFRESHED, TRANSIENT, Refresher
from codex_pool.storage.token_file import FileLock
from codex_pool.upstream.token_keeper import TokenKeeper
from tests.support.tokens import make_auth, make_jwt, write_auth

NOW = time.time()


def account(tmp_path, name="alice", **kw):
    doc = make_auth(f"acct-{name}", **kw)
    doc["unknown_key"] = {"kept": True}
    path = write_auth(tmp_path, name, doc)
    return parse_auth(path.read_bytes(), path)


@pytest.mark.parametrize(
    "exp_in,last_refresh_days,has_refresh,expected",
    [
        (7200, None, True, None),
        (1800, None, True, "proactive_expiry"),
        (-10, None, True, "proactive_expiry"),
        (None, 9, True, "stale_last_refresh"),
        (None, 1, True, None),
        (1800, None, False, None),  # nothing to refresh with
    ],
)
def test_refresh_due(tmp_path, exp_in, last_refresh_days, has_refresh, expected):
    a = account(tmp_path, exp=NOW + exp_in if exp_in is not None else NOW + 10, iat=NOW - 10 * 86400)
    from dataclasses import replace

    if exp_in is None:
        a = replace(a, access_expires_at=None,
                    last_refresh=datetime.now(timezone.utc) - timedelta(days=last_refresh_days))
    if not has_refresh:
        a = replace(a, refresh_token=None)
    assert refresh_policy.refresh_due(a, NOW, margin=3600) == expected


@pytest.mark.parametrize(
    "status,body,expected",
    [
        (401, b'{"error": {"code": "whatever"}}', ("permanent", "whatever")),
        (400, b'{"error": {"code": "refresh_token_reused", "message": "x"}}', ("permanent", "refresh_token_reused")),
        (400, b'{"error": "invalid_grant", "error_description": "x"}', ("permanent", "invalid_grant")),
        (400, b'{"code": "refresh_token_expired"}', ("permanent", "refresh_token_expired")),
        (400, b'{"error": {"code": "refresh_token_invalidated"}}', ("permanent", "refresh_token_invalidated")),
        (500, b"oops", ("transient", "http_500")),
        (503, b'{"error": {"code": "temporarily_unavailable"}}', ("transient", "temporarily_unavailable")),
        (None, None, ("transient", "network_error")),
    ],
)
def test_failure_classification(status, body, expected):
    assert refresh_policy.classify_failure(status, body) == expected


class TokenServer:
    """A token endpoint that rotates and rejects reuse, counting calls."""

    def __init__(self, status=200, delay=0.0, lifetime=None, clock=None):
        self.calls = []
        self.status = status
        self.delay = delay
        self.used = set()
        self.lifetime = lifetime  # access tokens issued at clock() for this long; None: ten days from NOW
        self.clock = clock or time.time

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.calls.append(body)
        await asyncio.sleep(self.delay)
        if self.status != 200:
            return httpx.Response(self.status, json={"error": {"code": "server_error"}})
        if body["refresh_token"] in self.used:
            return httpx.Response(401, json={"error": {"code": "refresh_token_reused"}})
        self.used.add(body["refresh_token"])
        n = len(self.calls)
        return httpx.Response(200, json={
            "access_token": make_jwt({"exp": int(NOW) + 864000, "n": n} if self.lifetime is None else
                                     {"iat": int(self.clock()), "exp": int(self.clock() + self.lifetime), "n": n}),
            "id_token": make_jwt({"email": "a@example.com", "https://api.openai.com/auth": {"chatgpt_account_id": "acct-alice"}}),
            "refresh_token": f"rt_rotated_{n}_xxxxxxxx",
        })


def refresher_for(server):
    client = httpx.AsyncClient(transport=httpx.MockTransport(server))
    return Refresher(client, "https://auth.example.test/oauth/token")


async def test_concurrent_needs_share_one_refresh_and_write_back_keeps_unknown_keys(tmp_path):
    a = account(tmp_path)
    server = TokenServer(delay=0.05)
    r = refresher_for(server)
    results = await asyncio.gather(*(r.refresh(a, "unauthorized_recovery") for _ in range(5)))
    assert len(server.calls) == 1 and {x.outcome for x in results} == {REFRESHED}
    assert server.calls[0]["grant_type"] == "refresh_token" and server.calls[0]["client_id"] == refresh_policy.CODEX_CLIENT_ID
    doc = json.loads(a.path.read_text())
    assert doc["unknown_key"] == {"kept": True} and doc["tokens"]["refresh_token"] == "rt_rotated_1_xxxxxxxx"
    assert results[0].account.refresh_token == "rt_rotated_1_xxxxxxxx"
    assert oct(a.path.stat().st_mode & 0o777) == "0o600"


async def test_a_caller_that_gives_up_cancels_nothing_others_wait_on(tmp_path):
    a = account(tmp_path)
    server = TokenServer(delay=0.2)
    r = refresher_for(server)
    impatient = asyncio.ensure_future(asyncio.wait_for(r.refresh(a, "unauthorized_recovery"), 0.05))
    patient = asyncio.ensure_future(r.refresh(a, "proactive_expiry"))
    with pytest.raises(asyncio.TimeoutError):
        await impatient
    result = await asyncio.wait_for(patient, 5)
    assert result.outcome == REFRESHED and len(server.calls) == 1  # finished and written back, once
    assert json.loads(a.path.read_text())["tokens"]["refresh_token"] == "rt_rotated_1_xxxxxxxx"
    later = await r.refresh(parse_auth(a.path.read_bytes(), a.path), "proactive_expiry")
    assert later.outcome == REFRESHED and len(server.calls) == 2  # the rotated token works: nothing lost


async def test_tokens_changed_on_disk_are_adopted_without_a_call(tmp_path):
    a = account(tmp_path)
    newer = make_auth("acct-alice", refresh_token="rt_someone_else_rotated")
    write_auth(tmp_path, "alice", newer)
    server = TokenServer()
    result = await refresher_for(server).refresh(a, "proactive_expiry")
    assert result.outcome == ADOPTED and server.calls == []
    assert result.account.refresh_token == "rt_someone_else_rotated"


async def test_a_refresh_token_whose_answer_was_lost_is_never_presented_again(tmp_path):
    a = account(tmp_path)
    calls = []

    def lost(request):
        calls.append(1)
        raise httpx.ReadTimeout("answer lost")

    r = Refresher(httpx.AsyncClient(transport=httpx.MockTransport(lost)), "https://x.test/token")
    first = await r.refresh(a, "proactive_expiry")
    assert first.outcome == TRANSIENT and first.code == "answer_lost" and len(calls) == 1
    second = await r.refresh(a, "proactive_expiry")  # file unchanged, token maybe spent
    assert second.outcome == TRANSIENT and second.code == "already_presented" and len(calls) == 1


async def test_spent_and_refused_refresh_tokens_are_never_presented_again_by_any_proxy(tmp_path):
    """#11.14 and the soak: a refresh token whose answer was lost was presented again after every
    restart (then refused as reused, which disabled the account); one refused for good was presented
    once more by the other proxy on the pool folder. The mark beside the pool file stops both: a new
    Refresher stands for a restarted or a second proxy."""
    a = account(tmp_path)
    calls = []

    def lost(request):
        calls.append(1)
        raise httpx.ReadTimeout("answer lost")

    first = Refresher(httpx.AsyncClient(transport=httpx.MockTransport(lost)), "https://x.test/token")
    assert (await first.refresh(a, "p")).code == "answer_lost"
    server = TokenServer()
    other = refresher_for(server)
    again = await other.refresh(a, "p")
    assert again.code == "already_presented" and server.calls == [] and len(calls) == 1
    mark = (tmp_path / ".alice.json.spent").read_text()
    assert a.refresh_token not in mark and oct((tmp_path / ".alice.json.spent").stat().st_mode & 0o777) == "0o600"

    b = account(tmp_path, "bob", refresh_token="rt_bob_refused")
    refusing = Refresher(httpx.AsyncClient(transport=httpx.MockTransport(
        lambda req: httpx.Response(400, json={"error": {"code": "refresh_token_invalidated"}}))), "https://x.test/token")
    assert (await refusing.refresh(b, "p")).outcome == PERMANENT
    later = refresher_for(server)
    result = await later.refresh(b, "p")
    assert (result.outcome, result.code) == (PERMANENT, "refresh_token_invalidated") and server.calls == []

    c = account(tmp_path, "carol", refresh_token="rt_carol")
    assert (await refresher_for(TokenServer(status=503)).refresh(c, "p")).outcome == TRANSIENT
    assert not (tmp_path / ".carol.json.spent").exists()  # a 5xx left it valid: no mark
    assert (await refresher_for(TokenServer()).refresh(c, "p")).outcome == REFRESHED
    assert not (tmp_path / ".carol.json.spent").exists()  # the file holds the new token: no mark either


async def test_a_successful_refresh_token_is_not_presented_again(tmp_path):
    a = account(tmp_path)
    server = TokenServer()
    r = refresher_for(server)
    assert (await r.refresh(a, "p")).outcome == REFRESHED
    again = await r.refresh(a, "p")  # a stale caller still holding the old tokens: adopts the new ones
    assert again.outcome == ADOPTED and len(server.calls) == 1


async def test_a_5xx_answer_may_be_retried_with_the_same_token(tmp_path):
    a = account(tmp_path)
    server = TokenServer(status=503)
    r = refresher_for(server)
    assert (await r.refresh(a, "p")).outcome == TRANSIENT
    server.status = 200
    assert (await r.refresh(a, "p")).outcome == REFRESHED and len(server.calls) == 2


async def test_connect_errors_may_present_again(tmp_path):
    a = account(tmp_path)
    attempts = []

    def refuse(request):
        attempts.append(1)
        raise httpx.ConnectError("refused")

    r = Refresher(httpx.AsyncClient(transport=httpx.MockTransport(refuse)), "https://x.test/token")
    assert (await r.refresh(a, "p")).code == "network_error"
    assert (await r.refresh(a, "p")).code == "network_error"
    assert len(attempts) == 2


async def test_permanent_failure(tmp_path):
    a = account(tmp_path)

    def reused(request):
        return httpx.Response(400, json={"error": {"code": "refresh_token_reused"}})

    r = Refresher(httpx.AsyncClient(transport=httpx.MockTransport(reused)), "https://x.test/token")
    result = await r.refresh(a, "p")
    assert (result.outcome, result.code) == (PERMANENT, "refresh_token_reused")
    assert json.loads(a.path.read_text())["tokens"]["refresh_token"] == a.refresh_token  # file untouched


async def test_lock_held_elsewhere_times_out_as_transient(tmp_path):
    a = account(tmp_path)
    server = TokenServer()
    r = refresher_for(server)
    r.lock_timeout = 0.2
    with FileLock(a.path):
        result = await r.refresh(a, "p")
    assert result.code == "lock_timeout" and server.calls == []


def test_a_short_lived_token_is_refreshed_at_half_its_lifetime_and_paced_below_it(tmp_path):
    """#11.5: with a 2-minute token and a 60-minute margin, the margin alone would refresh it at
    once and again; the old 5-minute pacing let it run out. Half its lifetime is left when it is
    refreshed, and the next refresh may come a quarter of a lifetime later."""
    short = account(tmp_path, exp=NOW + 120, iat=NOW)
    assert short.token_lifetime() == 120
    assert refresh_policy.lead_time(short, 3600) == 60 and refresh_policy.pace(short) == 30
    assert refresh_policy.refresh_due(short, NOW + 59, margin=3600) is None
    assert refresh_policy.refresh_due(short, NOW + 61, margin=3600) == "proactive_expiry"
    long = account(tmp_path, "bob", exp=NOW + 10 * 86400, iat=NOW)
    assert refresh_policy.lead_time(long, 3600) == 3600 and refresh_policy.pace(long) == refresh_policy.MIN_INTERVAL
    unknown = account(tmp_path, "carol", exp=NOW + 100, iat=NOW + 200)  # no sensible lifetime: the margin
    assert unknown.token_lifetime() is None and refresh_policy.lead_time(unknown, 3600) == 3600


async def test_keeper_keeps_a_short_lived_token_from_running_out(tmp_path):
    a = account(tmp_path, exp=NOW + 120, iat=NOW)
    t = NOW
    server = TokenServer(lifetime=120, clock=lambda: t)
    keeper = TokenKeeper(refresher_for(server), margin=3600)
    current = a
    for _ in range(5):  # the keeper's loop, every 5 s, for five token lifetimes
        while not keeper.due({"alice": current}, t):
            t += 5
            assert not current.expired(t), "the token ran out before the keeper refreshed it"
        result = await keeper.refresh(current, "proactive_expiry", t)
        assert result.ok
        current = result.account
    assert len(server.calls) == 5


async def test_keeper_backs_off_after_transient_failures(tmp_path):
    a = account(tmp_path, exp=NOW + 60, iat=NOW - 86400)  # a day-long token about to run out
    server = TokenServer(status=503)
    keeper = TokenKeeper(refresher_for(server), margin=3600)
    assert keeper.due({"alice": a}, NOW) == [(a, "proactive_expiry")]
    await keeper.refresh(a, "proactive_expiry", NOW)
    assert keeper.due({"alice": a}, NOW + 1) == []  # backing off
    assert keeper.due({"alice": a}, NOW + 6) != []  # 5 s later it may try again
    await keeper.refresh(a, "proactive_expiry", NOW + 6)  # a second failure in a row: the wait doubles
    assert keeper.due({"alice": a}, NOW + 15) == []
    assert keeper.due({"alice": a}, NOW + 16) != []


async def test_keeper_does_not_refresh_again_right_after_a_success(tmp_path):
    a = account(tmp_path, exp=NOW + 60, iat=NOW - 86400)  # a day-long token about to run out
    keeper = TokenKeeper(refresher_for(TokenServer()), margin=3600)
    result = await keeper.refresh(a, "proactive_expiry", NOW)
    fresh = result.account
    from dataclasses import replace

    soon = replace(fresh, access_expires_at=NOW + 600, access_issued_at=NOW - 86400)  # a day-long token, inside the margin
    assert keeper.due({"alice": soon}, NOW + 10) == []
    assert keeper.due({"alice": soon}, NOW + 301) != []
    expired = replace(fresh, access_expires_at=NOW + 5)
    assert keeper.due({"alice": expired}, NOW + 10) != []  # expired: no waiting


async def test_an_account_that_leaves_the_pool_leaves_no_retry_state(tmp_path):
    from codex_pool.core.pool import Pool
    from codex_pool.core.pool_scan import PoolScan
    from codex_pool.upstream.tokens import TokenService

    a = account(tmp_path, exp=NOW + 60, iat=NOW - 86400)  # a day-long token about to run out
    pool = Pool(clock=lambda: NOW)
    pool.registry.apply_scan(PoolScan(accounts={"alice": a}), NOW)
    tokens = TokenService(pool)
    tokens.keeper = TokenKeeper(refresher_for(TokenServer(status=503)), margin=3600)
    await tokens.refresh_account("alice", "proactive_expiry")
    assert tokens.due(NOW + 1) == []  # backing off after the failure
    tokens.forget("alice")  # what the lifecycle does for every removed pool file
    assert "alice" not in tokens.keeper._retry
    assert tokens.due(NOW + 1) == [("alice", "proactive_expiry")]  # a file put back starts afresh


async def test_an_account_removed_during_its_refresh_is_not_counted_or_judged(tmp_path):
    """`scripts/remove-account` waits for a refresh under way; what that refresh comes to is nothing
    to the pool any more: no failed-refresh count (the alert would fire for a gone account), no state."""
    from codex_pool.core.pool import Pool
    from codex_pool.core.pool_scan import PoolScan
    from codex_pool.upstream.tokens import TokenService

    a = account(tmp_path, exp=NOW + 60, iat=NOW - 86400)
    pool = Pool(clock=lambda: NOW)
    pool.registry.apply_scan(PoolScan(accounts={"alice": a}), NOW)

    class RemovedMeanwhile(TokenServer):
        async def __call__(self, request):
            pool.registry.apply_scan(PoolScan(accounts={}), NOW)  # the folder watcher saw the file go
            return await super().__call__(request)

    tokens = TokenService(pool)
    tokens.keeper = TokenKeeper(refresher_for(RemovedMeanwhile(status=503)), margin=3600)
    await tokens.refresh_account("alice", "proactive_expiry")
    assert "alice" not in pool.registry.accounts
    assert not [k for k in pool.metrics.refreshes.values if k[0] == "alice"]
    assert "alice" not in pool.registry.health._health
