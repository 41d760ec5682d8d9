"""Token lifecycle and quota signals end to end: real mitmdump processes, the simulated backend's
OAuth endpoint (which rotates refresh tokens and rejects reuse, so any double use fails here)."""

import json
import threading
import time

import httpx
import pytest

from tests.e2e.test_proxy import CLIENT_TOKEN, turn_body
from tests.support.procs import FakeBackend, Proxy

pytestmark = pytest.mark.e2e


def write_pool_file(pool, name, auth, extra=None):
    doc = dict(auth)
    doc.update(extra or {})
    path = pool / f"{name}.json"
    path.write_text(json.dumps(doc, indent=2))
    path.chmod(0o600)
    return path


def accounts(proxy):
    return {a["name"]: a for a in proxy.http.get("/admin/accounts").json()["accounts"]}


def wait_until(check, timeout=15.0, every=0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("condition not reached in time")


def config(backend, extra=""):
    return f"pool_dir: pool\ndata_dir: data\npolicy: fill_first\ntoken_url: {backend.url}/oauth/token\n{extra}"


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
            wait_until(lambda: accounts(p)["alice"]["usable"])
        for p in proxies:
            r = p.http.post("/backend-api/codex/responses", json=turn_body("two"), headers={"session-id": "two"})
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


def test_concurrent_401s_on_one_account_make_one_token_call(tmp_path, backend):
    write_pool_file(tmp_path / "pool", "alice", backend.add_account("alice"))
    proxy = Proxy(backend.url, tmp_path / "proxy", config(backend).replace("pool_dir: pool", f"pool_dir: {tmp_path / 'pool'}"))
    try:
        backend.control("POST", "accounts/alice/expire")  # upstream now refuses alice's access token
        statuses = []

        def one(i):
            with httpx.Client(base_url=proxy.url, follow_redirects=True, timeout=30, trust_env=False) as c:
                statuses.append(c.post("/backend-api/codex/responses", json=turn_body(f"c{i}"),
                                       headers={"session-id": f"c{i}"}).status_code)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert statuses == [200] * 4
        assert backend.state()["accounts"]["alice"]["token_calls"] == 1
        assert accounts(proxy)["alice"]["state"] == "usable"
    finally:
        proxy.stop()


def test_tokens_expiring_soon_are_refreshed_in_the_background(tmp_path, backend):
    pool = tmp_path / "pool"
    auth = backend.add_account("alice", access_ttl_seconds=900)
    write_pool_file(pool, "alice", auth, {"extra": 1})
    proxy = Proxy(backend.url, tmp_path / "proxy", config(backend).replace("pool_dir: pool", f"pool_dir: {pool}"))
    try:
        wait_until(lambda: backend.state()["accounts"]["alice"]["refresh_count"] == 1)
        on_disk = wait_until(lambda: (d := json.loads((pool / "alice.json").read_text()))["tokens"]["access_token"]
                             != auth["tokens"]["access_token"] and d)
        assert on_disk["extra"] == 1 and on_disk["last_refresh"] != auth["last_refresh"]
        time.sleep(6)  # more keeper rounds: the new token (900 s) is inside the margin too, yet no storm
        assert backend.state()["accounts"]["alice"]["refresh_count"] == 1
        r = proxy.http.post("/backend-api/codex/responses", json=turn_body("bg"), headers={"session-id": "bg"})
        assert r.status_code == 200
    finally:
        proxy.stop()
    assert backend.state()["accounts"]["alice"]["refresh_failures"] == 0  # never a reused token


PERMANENT = [
    (400, "refresh_token_expired"),
    (401, "refresh_token_reused"),
    (400, "refresh_token_invalidated"),
    (400, "invalid_grant"),
    (401, "some_other_code"),
]


@pytest.mark.parametrize("status,code", PERMANENT, ids=[c for _, c in PERMANENT])
def test_permanent_refresh_failure_disables_until_the_file_is_replaced(tmp_path, backend, status, code):
    pool = tmp_path / "pool"
    path = write_pool_file(pool, "alice", backend.add_account("alice", access_ttl_seconds=600))
    before = path.read_bytes()
    backend.fault(kind="refresh_error", account="alice", status=status, code=code)
    proxy = Proxy(backend.url, tmp_path / "proxy", config(backend).replace("pool_dir: pool", f"pool_dir: {pool}"))
    try:
        row = wait_until(lambda: (a := accounts(proxy)["alice"])["state"] == "disabled" and a)
        assert "reauth_required" in row["reason"] and "alice.json" in row["reason"]
        assert code in (row["last_error"] or "")
        assert path.read_bytes() == before  # the file is not touched
        r = proxy.http.post("/backend-api/codex/responses", json=turn_body("p"), headers={"session-id": "p"})
        assert r.status_code == 503 and "alice.json" in r.json()["error"]["message"]
        fresh = backend.control("POST", "accounts/alice/login")
        write_pool_file(pool, "alice", fresh.get("auth", fresh))
        wait_until(lambda: accounts(proxy)["alice"]["state"] == "usable")
    finally:
        proxy.stop()


def test_transient_refresh_failure_retries_and_the_account_keeps_serving(tmp_path, backend):
    pool = tmp_path / "pool"
    write_pool_file(pool, "alice", backend.add_account("alice", access_ttl_seconds=600))
    backend.fault(kind="refresh_error", account="alice", status=503, code="temporarily_unavailable")
    proxy = Proxy(backend.url, tmp_path / "proxy", config(backend).replace("pool_dir: pool", f"pool_dir: {pool}"))
    try:
        wait_until(lambda: backend.state()["accounts"]["alice"]["token_calls"] >= 1)
        assert accounts(proxy)["alice"]["usable"]  # its access token is still valid
        r = proxy.http.post("/backend-api/codex/responses", json=turn_body("t"), headers={"session-id": "t"})
        assert r.status_code == 200
        wait_until(lambda: backend.state()["accounts"]["alice"]["refresh_count"] == 1, timeout=20)
    finally:
        proxy.stop()
    state = backend.state()["accounts"]["alice"]
    assert state["token_calls"] == 2  # the failed try (not consumed) and the retry after backoff


def test_usage_polling_feeds_the_account_view(tmp_path, backend):
    pool = tmp_path / "pool"
    write_pool_file(pool, "alice", backend.add_account("alice", primary_used_percent=37))
    proxy = Proxy(backend.url, tmp_path / "proxy",
                  config(backend, "usage_poll_seconds: 1\n").replace("pool_dir: pool", f"pool_dir: {pool}"))
    try:
        limits = wait_until(lambda: accounts(proxy)["alice"]["rate_limits"])
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
        first = [proxy.http.post("/backend-api/codex/responses", json=turn_body(f"n{i}"),
                                 headers={**h, "session-id": f"n{i}"}) for i in range(2)]
        assert all(r.status_code == 200 for r in first)
        # both accounts have now reported their headers: alice is nearly spent
        for i in range(2, 6):
            proxy.http.post("/backend-api/codex/responses", json=turn_body(f"n{i}"), headers={**h, "session-id": f"n{i}"})
    finally:
        proxy.stop()
    served = [r["account"] for r in backend.requests() if r["path"].startswith("/backend-api/codex/responses")]
    assert served[:2] == ["alice", "bob"] and served[2:] == ["bob"] * 4, served


def test_usage_poll_401_triggers_a_refresh(tmp_path, backend):
    pool = tmp_path / "pool"
    write_pool_file(pool, "alice", backend.add_account("alice"))
    proxy = Proxy(backend.url, tmp_path / "proxy",
                  config(backend, "usage_poll_seconds: 1\n").replace("pool_dir: pool", f"pool_dir: {pool}"))
    try:
        wait_until(lambda: accounts(proxy)["alice"]["rate_limits"])
        backend.control("POST", "accounts/alice/revoke")  # every token of alice stops working
        row = wait_until(lambda: (a := accounts(proxy)["alice"])["state"] == "disabled" and a)
        assert "refresh_token_invalidated" in row["last_error"]
    finally:
        proxy.stop()
    state = backend.state()["accounts"]["alice"]
    assert state["token_calls"] == 1  # the 401 on /wham/usage led to exactly one refresh attempt
