"""Token lifecycle and quota signals end to end: real mitmdump processes, the simulated backend's
OAuth endpoint (which rotates refresh tokens and rejects reuse, so any double use fails here).

Tests that need nothing but fresh accounts share one mitmdump (tests.support.proxy_world) whose
token keeper runs on a fast, observable clock (fast_clock.py); the others start their own."""

import json
import threading
from pathlib import Path

import httpx
import pytest

from tests.support.flows import CLIENT_TOKEN, RESPONSES, admin_accounts as accounts, redirecting_client, turn_body
from tests.support.procs import FakeBackend, Proxy
from tests.support.proxy_world import ProxyWorld, write_pool_file
from tests.support.wait import wait_for

pytestmark = pytest.mark.e2e

FAST_CLOCK = Path(__file__).with_name("fast_clock.py")


def config(backend, extra=""):
    return f"pool_dir: pool\ndata_dir: data\npolicy: fill_first\ntoken_url: {backend.url}/oauth/token\n{extra}"


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    world = ProxyWorld(tmp_path_factory.mktemp("tokens"), "policy: fill_first\npool_scan_seconds: 0.2\nusage_poll_seconds: 0\n",
                       scripts=[FAST_CLOCK])
    yield world
    world.stop()


@pytest.fixture
def backend(tmp_path):
    (tmp_path / "pool").mkdir()
    b = FakeBackend([], tmp_path / "pool")
    yield b
    b.stop()


def test_two_proxies_on_one_pool_refresh_an_expired_account_exactly_once(tmp_path, backend):
    pool = tmp_path / "pool"
    auth = backend.add_account("alice", initial_access_ttl_seconds=0)  # issued already expired
    write_pool_file(pool, "alice", auth, {"agent_identity": {"keep": "me"}})
    proxies = []
    try:
        for i in range(2):
            proxies.append(Proxy(backend.url, tmp_path / f"proxy{i}",
                                 f"pool_dir: {pool}\ndata_dir: data\ntoken_url: {backend.url}/oauth/token\n"))
        for p in proxies:
            wait_for(lambda p=p: accounts(p)["alice"]["usable"], 15, "alice to be refreshed and usable")
        for p in proxies:
            r = p.http.post(RESPONSES, json=turn_body("two"), headers={"session-id": "two"})
            assert r.status_code == 200, r.text
    finally:
        for p in proxies:
            p.stop()
    state = backend.state()["accounts"]["alice"]
    assert state["token_calls"] == 1 and state["refresh_count"] == 1 and state["refresh_failures"] == 0
    on_disk = json.loads((pool / "alice.json").read_text())
    newest = backend.control("GET", "accounts/alice/auth")
    newest = newest.get("auth", newest)
    assert on_disk["tokens"]["access_token"] == newest["tokens"]["access_token"]
    assert on_disk["tokens"]["refresh_token"] == newest["tokens"]["refresh_token"]
    assert on_disk["agent_identity"] == {"keep": "me"}
    assert oct((pool / "alice.json").stat().st_mode & 0o777) == "0o600"
    used = {dict((k.lower(), v) for k, v in r["headers"])["authorization"]
            for r in backend.requests() if r["path"].startswith("/backend-api/codex/responses")}
    assert used == {f"Bearer {newest['tokens']['access_token']}"}  # both served with the new token


def test_expired_tokens_are_refreshed_on_demand_and_every_waiting_turn_is_served(tmp_path, backend):
    """#11.1: a pool whose access tokens ran out while the proxies were down (refresh tokens still
    good), two proxies on it, ten new conversations on each at once, a slow token endpoint. Before:
    every turn got 503 "access token expired …; replace alice.json" until the keeper's refresh
    landed (0 of 20 served). Now each turn waits for a refresh and is served on the fresh token;
    each account's refresh token is presented exactly once across both proxies."""
    pool = tmp_path / "pool"
    names = ["alice", "bob", "carol", "dave"]
    for name in names:
        write_pool_file(pool, name, backend.add_account(name, initial_access_ttl_seconds=0))
        backend.fault(kind="refresh_slow", account=name, seconds=1.5, count=1)
    proxies = []
    try:
        for i in range(2):
            proxies.append(Proxy(backend.url, tmp_path / f"proxy{i}", config(backend).replace("pool_dir: pool", f"pool_dir: {pool}")))
        results = []

        def turn(p, i):
            with httpx.Client(base_url=p.url, timeout=60, trust_env=False) as c:
                r = c.post(RESPONSES, json=turn_body(f"{p.port}-{i}"), headers={"session-id": f"{p.port}-{i}"})
                results.append((r.status_code, r.text[:300]))

        threads = [threading.Thread(target=turn, args=(p, i)) for p in proxies for i in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        logs = "\n".join("\n".join(p.lines) for p in proxies)
    finally:
        for p in proxies:
            p.stop()
    assert [status for status, _ in results] == [200] * 20, results
    sent = backend.state()["accounts"]
    assert {n: (sent[n]["token_calls"], sent[n]["refresh_failures"]) for n in names} == {n: (1, 0) for n in names}
    assert "fresh login" not in logs and "replace alice.json" not in logs  # no re-login advice while a refresh works


def test_concurrent_401s_on_one_account_make_one_token_call(shared):
    w = shared.fresh(["alice"])
    w.backend.control("POST", f"accounts/{w['alice']}/expire")  # upstream now refuses alice's access token
    statuses = []

    def one(i):
        with redirecting_client(w.proxy) as c:
            statuses.append(c.post(RESPONSES, json=turn_body(f"c{i}"), headers={"session-id": f"c{i}"}).status_code)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200] * 4
    assert w.sent()["alice"]["token_calls"] == 1
    assert w.states()["alice"]["state"] == "usable"


def test_a_revoked_account_fails_over_and_its_401_never_reaches_the_client(shared):
    """#11.6: a 401 → refresh → refresh_token_invalidated used to pass the pool's 401 through, so
    Codex tried to refresh its own token. Now the turn goes on to another account."""
    w = shared.fresh(["alice", "bob"])  # fill_first: alice serves first
    w.backend.control("POST", f"accounts/{w['alice']}/revoke")  # every alice token dies, the refresh one too
    with redirecting_client(w.proxy) as c:
        r = c.post(RESPONSES, json=turn_body("revoked"), headers={"session-id": "revoked"})
    assert r.status_code == 200, r.text
    assert w.served()[-1] == "bob"
    row = w.states()["alice"]
    assert row["state"] == "disabled" and "reauth_required" in row["reason"] and "alice" in row["reason"]


def test_tokens_expiring_soon_are_refreshed_in_the_background(shared):
    w = shared.fresh([])
    auth = w.add("alice", access_ttl_seconds=900, initial_access_age_seconds=600)  # 5 of its 15 minutes left
    path = w.install("alice", auth, {"extra": 1})
    w.reload()
    wait_for(lambda: w.sent()["alice"]["refresh_count"] == 1, 15, "the keeper to refresh alice")
    on_disk = wait_for(lambda: (d := json.loads(path.read_text()))["tokens"]["access_token"]
                       != auth["tokens"]["access_token"] and d, 15, "the refreshed tokens on disk")
    assert on_disk["extra"] == 1 and on_disk["last_refresh"] != auth["last_refresh"]
    # more keeper checks: the new token (900 s) is inside the margin too, yet no storm
    n = int(w.proxy.wait_for(r"codex-pool-test: token check (\d+)$", 10, start=len(w.proxy.lines)).group(1))
    w.proxy.wait_for(rf"codex-pool-test: token check {n + 3}$", 10)
    assert w.sent()["alice"]["refresh_count"] == 1
    r = w.proxy.http.post(RESPONSES, json=turn_body("bg"), headers={"session-id": "bg"})
    assert r.status_code == 200
    assert w.sent()["alice"]["refresh_failures"] == 0  # never a reused token


PERMANENT = [
    (400, "refresh_token_expired"),
    (401, "refresh_token_reused"),
    (400, "refresh_token_invalidated"),
    (400, "invalid_grant"),
    (401, "some_other_code"),
]


@pytest.mark.parametrize("status,code", PERMANENT, ids=[c for _, c in PERMANENT])
def test_permanent_refresh_failure_disables_until_the_file_is_replaced(shared, status, code):
    w = shared.fresh([])
    auth = w.add("alice", access_ttl_seconds=600, initial_access_age_seconds=400)  # inside its refresh lead
    w.fault("refresh_error", "alice", status=status, code=code)
    path = w.install("alice", auth)
    before = path.read_bytes()
    w.reload()
    row = wait_for(lambda: (a := w.states()["alice"])["state"] == "disabled" and a, 15, "the failed refresh to disable alice")
    assert "reauth_required" in row["reason"] and path.name in row["reason"]
    assert code in (row["last_error"] or "")
    assert path.read_bytes() == before  # the file is not touched
    r = w.proxy.http.post(RESPONSES, json=turn_body("p"), headers={"session-id": "p"})
    assert r.status_code == 503 and path.name in r.json()["error"]["message"]
    fresh = w.backend.control("POST", f"accounts/{w['alice']}/login")
    w.install("alice", fresh.get("auth", fresh))  # no reload: the folder watcher finds it
    wait_for(lambda: w.states()["alice"]["state"] == "usable", 15, "the replaced file to bring alice back")


def test_transient_refresh_failure_retries_and_the_account_keeps_serving(shared):
    w = shared.fresh([])
    auth = w.add("alice", access_ttl_seconds=600, initial_access_age_seconds=400)  # inside its refresh lead
    w.fault("refresh_error", "alice", status=503, code="temporarily_unavailable")
    w.install("alice", auth)
    w.reload()
    wait_for(lambda: w.sent()["alice"]["token_calls"] >= 1, 15, "the keeper's first refresh try")
    assert w.states()["alice"]["usable"]  # its access token is still valid
    r = w.proxy.http.post(RESPONSES, json=turn_body("t"), headers={"session-id": "t"})
    assert r.status_code == 200
    wait_for(lambda: w.sent()["alice"]["refresh_count"] == 1, 20, "the retry after backoff to refresh alice")
    assert w.sent()["alice"]["token_calls"] == 2  # the failed try (not consumed) and the retry after backoff


def test_usage_polling_feeds_the_account_view(tmp_path, backend):
    pool = tmp_path / "pool"
    write_pool_file(pool, "alice", backend.add_account("alice", primary_used_percent=37))
    proxy = Proxy(backend.url, tmp_path / "proxy",
                  config(backend, "usage_poll_seconds: 1\n").replace("pool_dir: pool", f"pool_dir: {pool}"),
                  scripts=[FAST_CLOCK])
    try:
        limits = wait_for(lambda: accounts(proxy)["alice"]["rate_limits"], 15, "a usage poll of alice")
        assert limits["source"] == "usage" and limits["primary"]["used_percent"] == 37
        assert limits["plan"] == "plus"
    finally:
        proxy.stop()
    polls = [r for r in backend.requests() if r["path"] == "/backend-api/wham/usage"]
    assert polls and all(r["account"] == "alice" for r in polls)


def test_rate_limit_signals_steer_new_conversations_away(tmp_path, backend):
    pool = tmp_path / "pool"
    for name in ("alice", "bob"):
        write_pool_file(pool, name, backend.add_account(name))
    backend.control("PATCH", "accounts/alice", {"primary_used_percent": 96})
    proxy = Proxy(backend.url, tmp_path / "proxy",
                  config(backend, "usage_poll_seconds: 0\n").replace("policy: fill_first", "policy: usage_balanced")
                  .replace("pool_dir: pool", f"pool_dir: {pool}"))
    try:
        h = {"authorization": f"Bearer {CLIENT_TOKEN}"}
        first = [proxy.http.post(RESPONSES, json=turn_body(f"n{i}"),
                                 headers={**h, "session-id": f"n{i}"}) for i in range(2)]
        assert all(r.status_code == 200 for r in first)
        # both accounts have now reported their headers: alice is nearly spent
        for i in range(2, 6):
            r = proxy.http.post(RESPONSES, json=turn_body(f"n{i}"), headers={**h, "session-id": f"n{i}"})
            assert r.status_code == 200, r.text
    finally:
        proxy.stop()
    served = [r["account"] for r in backend.requests() if r["path"].startswith("/backend-api/codex/responses")]
    assert served[:2] == ["alice", "bob"] and served[2:] == ["bob"] * 4, served


def test_usage_poll_401_triggers_a_refresh(tmp_path, backend):
    pool = tmp_path / "pool"
    write_pool_file(pool, "alice", backend.add_account("alice"))
    proxy = Proxy(backend.url, tmp_path / "proxy",
                  config(backend, "usage_poll_seconds: 1\n").replace("pool_dir: pool", f"pool_dir: {pool}"),
                  scripts=[FAST_CLOCK])
    try:
        wait_for(lambda: accounts(proxy)["alice"]["rate_limits"], 15, "a usage poll of alice")
        backend.control("POST", "accounts/alice/revoke")  # every token of alice stops working
        row = wait_for(lambda: (a := accounts(proxy)["alice"])["state"] == "disabled" and a, 15,
                       "the next poll's 401 and the failed refresh to disable alice")
        assert "refresh_token_invalidated" in row["last_error"]
    finally:
        proxy.stop()
    state = backend.state()["accounts"]["alice"]
    assert state["token_calls"] == 1  # the 401 on /wham/usage led to exactly one refresh attempt
