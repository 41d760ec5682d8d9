"""The pool proxy end to end: real mitmdump + addons/pool.py in front of the simulated backend.

Tests that need no settings of their own share one mitmdump, each on accounts of its own
(tests.support.proxy_world); the others start their own."""

import hashlib
import json
import subprocess
import time
from pathlib import Path

import pytest
from codex_pool.core import zstd

from tests.support.flows import CLIENT_TOKEN, completed_event, served_by, turn, turn_body
from tests.support.procs import BIN, ROOT, FakeBackend, Proxy
from tests.support.proxy_world import ProxyWorld, write_pool_file
from tests.support.wait import wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    # quick scans: files dropped into the pool folder are picked up within 0.2 s
    # client_quota: account — answers pass byte-for-byte (the pool's figures are tested in test_pool_quota_shown)
    world = ProxyWorld(tmp_path_factory.mktemp("proxy"), "policy: round_robin\npool_scan_seconds: 0.2\n"
                                                          "client_quota: account\n")
    yield world
    world.stop()


def test_upstream_sees_pool_credentials_never_the_clients(shared):
    w = shared.fresh(["alice", "bob"])
    backend, proxy = w.backend, w.proxy
    r = turn(proxy, "conv-cred", headers={
        "ChatGPT-Account-ID": "client-account",
        "chatgpt_account_id": "client-account-underscore",
        "CHATGPT-ACCOUNT-ID": "client-account-upper",
        "Cookie": "session=client-cookie",
        "x-custom-header": "kept",
    })
    assert r.status_code == 200, r.text
    assert completed_event(r.text)["response"]["usage"]["total_tokens"] > 0
    pool = {json.loads(p.read_text())["tokens"]["access_token"]: json.loads(p.read_text())["tokens"]["account_id"]
            for p in w.pool_dir.glob("*.json")}
    [seen] = [r for r in backend.requests() if r["path"].startswith("/backend-api/codex/responses")]
    headers = [(k.lower(), v) for k, v in seen["headers"]]
    auth = [v for k, v in headers if k == "authorization"]
    account_ids = [v for k, v in headers if k.replace("_", "-") == "chatgpt-account-id"]
    assert len(auth) == 1 and auth[0].startswith("Bearer ") and auth[0][7:] in pool
    assert account_ids == [pool[auth[0][7:]]]
    assert w.short(seen["account"]) in ("alice", "bob")
    flat = json.dumps(seen["headers"])
    for secret in (CLIENT_TOKEN, "client-account", "client-cookie"):
        assert secret not in flat
    assert ("x-custom-header", "kept") in headers and ("session-id", "conv-cred") in headers


def test_zstd_body_passes_unchanged_and_its_prompt_cache_key_routes(shared):
    w = shared.fresh(["alice", "bob", "carol"])
    backend, proxy = w.backend, w.proxy
    raw = json.dumps(turn_body("zstd-conv", "compressed " * 200)).encode()
    packed = zstd.compress(raw)
    for _ in range(3):
        r = turn(proxy, None, headers={"content-encoding": "zstd"}, body=packed)
        assert r.status_code == 200, r.text
    seen = [r for r in backend.requests() if r["path"].startswith("/backend-api/codex/responses")]
    assert [s.get("prompt_cache_key") for s in seen] == ["zstd-conv"] * 3  # the backend could decode it
    assert len({s["account"] for s in seen}) == 1  # body key kept the conversation on one account
    assert [s["body_sha256"] for s in seen] == [hashlib.sha256(packed).hexdigest()] * 3  # byte for byte


def test_stickiness_across_turns_and_spreading_of_new_conversations(shared):
    w = shared.fresh(["alice", "bob", "carol"])
    for key in ["a", "a", "b", "a", "c", "b", "c"]:
        assert turn(w.proxy, f"conv-{key}").status_code == 200
    accounts = w.served()
    by_conv = {}
    for key, acct in zip(["a", "a", "b", "a", "c", "b", "c"], accounts):
        by_conv.setdefault(key, set()).add(acct)
    assert all(len(v) == 1 for v in by_conv.values()), by_conv  # sticky
    assert len({next(iter(v)) for v in by_conv.values()}) == 3  # three conversations, three accounts
    # each later turn of a conversation hit its account's prompt cache: 7 turns, 3 conversations
    assert sum(a["cache_hits"] for a in w.sent().values()) == 4


def test_usage_balanced_spreads_new_conversations(own_world):
    w = own_world("policy: usage_balanced\n").fresh(["alice", "bob"])
    for i in range(4):
        assert turn(w.proxy, f"conv-{i}").status_code == 200
    accounts = w.served()
    assert sorted(accounts) == ["alice", "alice", "bob", "bob"], accounts


def test_sse_reaches_client_live_and_byte_identical(shared):
    w = shared.fresh(["alice"])
    backend, proxy = w.backend, w.proxy
    backend.control("POST", "config", {"stream_delay": 0.25, "deltas": 6})
    h = {"authorization": f"Bearer {CLIENT_TOKEN}", "accept": "text/event-stream", "session-id": "live",
         "content-type": "application/json"}
    arrivals: list[tuple[float, bytes]] = []
    t0 = time.monotonic()
    with proxy.http.stream("POST", "/backend-api/codex/responses", content=json.dumps(turn_body("live")), headers=h) as r:
        assert r.status_code == 200
        for chunk in r.iter_raw():
            arrivals.append((time.monotonic() - t0, chunk))
    body = b"".join(c for _, c in arrivals)
    total = arrivals[-1][0]
    first_event_at = next(t for t, c in arrivals if b"response.created" in c)
    assert total > 1.5  # the backend paced ~10 events 0.25 s apart
    assert first_event_at < total - 1.0, (first_event_at, total)  # not buffered until the end
    [seen] = [x for x in backend.requests() if x["path"].startswith("/backend-api/codex/responses")]
    assert seen["response_sha256"] == hashlib.sha256(body).hexdigest()  # byte-identical to what was sent


def test_pool_file_added_while_running_is_served(shared):
    w = shared.fresh(["alice"])
    write_pool_file(w.pool_dir, w["dave"], w.add("dave"))  # no reload: the folder watcher finds it
    wait_for(lambda: w.states().get("dave", {}).get("usable"), 5, "the watcher to serve a file added while running")
    for i in range(2):
        assert turn(w.proxy, f"conv-{i}").status_code == 200
    assert "dave" in w.served()


def test_reload_picks_up_at_once_and_removed_files_stop_serving(own_world):
    # slow scans: only the reload can have picked the file up
    w = own_world("pool_scan_seconds: 5\npolicy: round_robin\n").fresh(["alice"])
    write_pool_file(w.pool_dir, w["erin"], w.add("erin"))
    r = w.reload()
    assert r["added"] == [w["erin"]] and r["usable"] == 2
    w.file("alice").unlink()
    assert w.reload()["removed"] == [w["alice"]]
    for i in range(3):
        assert turn(w.proxy, f"c{i}").status_code == 200
    assert set(w.served()) == {"erin"}


def test_bad_file_is_reported_once_and_left_untouched(shared):
    w = shared.fresh(["alice"])
    proxy = w.proxy
    bad = w.file("broken")
    bad.write_text('{"tokens": {"access_token": "x"')
    before = (bad.read_bytes(), bad.stat().st_mtime_ns, bad.stat().st_mode)
    proxy.wait_for(rf"skipping pool file .*{bad.name}: not valid JSON", 6)  # found by the folder watcher
    for _ in range(2):  # more scans of the folder, now rather than after a guessed wait
        assert w.reload()["invalid"].keys() == {bad.name}
    proxy.sync_log()
    assert sum(bad.name in line and "skipping" in line for line in proxy.lines) == 1
    assert (bad.read_bytes(), bad.stat().st_mtime_ns, bad.stat().st_mode) == before
    assert turn(proxy, "still-serving").status_code == 200
    listed = w.states()
    assert listed["broken"]["state"] == "invalid" and "not valid JSON" in listed["broken"]["reason"]


def test_duplicate_account_files_serve_one_and_list_both(shared):
    w = shared.fresh(["alice"])
    write_pool_file(w.pool_dir, w["alice-copy"], json.loads(w.file("alice").read_text()))
    w.reload()
    a, copy = w["alice"], w["alice-copy"]
    w.proxy.wait_for(rf"{copy}\.json and {a}\.json hold the same account; serving {a}\.json", 5)
    rows = w.states()
    assert rows["alice"]["usable"] and rows["alice-copy"]["state"] == "duplicate"


def test_admin_accounts_never_shows_a_token(shared):
    w = shared.fresh(["alice", "bob"])
    proxy = w.proxy
    assert turn(proxy, "x").status_code == 200
    text = proxy.http.get("/admin/accounts").text
    for p in w.pool_dir.glob("*.json"):
        tokens = json.loads(p.read_text())["tokens"]
        for k in ("access_token", "refresh_token", "id_token"):
            assert tokens[k] not in text
    rows = json.loads(text)["accounts"]
    assert {r["name"] for r in rows} == {w["alice"], w["bob"]}
    alice = next(r for r in rows if r["name"] == w["alice"])
    assert alice["email"] and alice["account_id"] and alice["plan"] == "plus"


def test_empty_pool_answers_503_locally(shared):
    w = shared.fresh([])
    backend, proxy = w.backend, w.proxy
    r = turn(proxy, "c")
    assert r.status_code == 503
    err = r.json()["error"]
    assert err["type"] == "no_accounts" and "drop a Codex auth.json there" in err["message"]
    assert backend.requests() == []
    h = proxy.http.get("/healthz")
    assert h.status_code == 503 and "no usable account" in h.json()["reason"]


def test_internal_failure_answers_503_and_nothing_goes_upstream(start):
    inject = Path(__file__).with_name("inject_failure.py")
    backend, proxy = start(["alice"], scripts=[inject])
    r = turn(proxy, "c")
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "proxy_internal_error"
    assert backend.requests() == []
    assert CLIENT_TOKEN not in proxy.output()


def test_healthz_works_with_upstream_down(tmp_path):
    pool = tmp_path / "pool"
    pool.mkdir()
    backend = FakeBackend(["alice"], pool)
    backend.stop()  # the upstream is gone; its accounts stay in the pool folder
    proxy = Proxy(backend.url, tmp_path, "pool_dir: pool\ndata_dir: data\n")
    try:
        r = proxy.http.get("/healthz")
        assert r.status_code == 200 and r.json()["usable"] == 1
        assert proxy.http.get("/admin/accounts").status_code == 200
    finally:
        proxy.stop()


def test_bad_config_fails_at_start_with_the_key_named(tmp_path):
    (tmp_path / "pool").mkdir()
    (tmp_path / "mitm.yaml").write_text("pool_dir: pool\npolicy: fastest\n")
    argv = [str(BIN / "mitmdump"), "-s", str(ROOT / "addons" / "pool.py"), "--mode", "reverse:http://127.0.0.1:9@127.0.0.1:0",
            "--set", "connection_strategy=lazy", "--set", f"confdir={tmp_path / 'conf'}",
            "--set", f"pool_config={tmp_path / 'mitm.yaml'}"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode != 0
    assert "policy: 'fastest' is not a policy; allowed: usage_balanced, round_robin, fill_first" in done.stdout + done.stderr


def test_bad_config_edit_keeps_previous_settings(start, tmp_path):
    base = "pool_dir: pool\ndata_dir: data\npool_scan_seconds: 0.2\n"  # the settings file is checked at each scan
    backend, proxy = start(["alice", "bob"], config=base + "policy: fill_first\n")
    mark = len(proxy.lines)
    (tmp_path / "mitm.yaml").write_text(base + "policy: fill_first\nsticky_ttl_minutes: -1\n")
    proxy.wait_for(r"sticky_ttl_minutes: -1 is out of range.*keeping the previous settings", 6, start=mark)
    for i in range(3):
        assert turn(proxy, f"c{i}").status_code == 200
    assert set(served_by(backend)) == {"alice"}  # still fill_first
    (tmp_path / "mitm.yaml").write_text(base + "policy: round_robin\n")
    proxy.wait_for(r"reloaded .*mitm\.yaml", 6, start=mark)
    backend.clear_requests()
    for i in range(3, 7):
        assert turn(proxy, f"c{i}").status_code == 200
    assert set(served_by(backend)) == {"alice", "bob"}


def test_a_data_dir_edit_is_refused_while_running_and_the_rest_applies(start, tmp_path):
    """#11.4: a new data_dir used to move the event log and the conversation key while the ledger
    and state stayed behind. Now the running proxy keeps its data_dir, says so, applies the rest."""
    base = "pool_dir: pool\npool_scan_seconds: 0.2\nledger_flush_seconds: 0.2\n"
    backend, proxy = start(["alice", "bob"], config=base + "data_dir: data\npolicy: fill_first\n")
    assert turn(proxy, "kept").status_code == 200
    mark = len(proxy.lines)
    (tmp_path / "mitm.yaml").write_text(base + "data_dir: elsewhere\npolicy: round_robin\n")
    proxy.wait_for(r"data_dir changed in .*mitm\.yaml .*keeps using .*data until it is restarted", 6, start=mark)
    proxy.wait_for(r"reloaded .*mitm\.yaml", 6, start=mark)
    backend.clear_requests()
    for i in range(4):
        assert turn(proxy, f"d{i}").status_code == 200
    assert set(served_by(backend)) == {"alice", "bob"}  # round_robin: the rest of the edit applies
    assert turn(proxy, "kept").status_code == 200 and served_by(backend)[-1] == "alice"  # the conversation kept its account
    wait_for(lambda: sum(1 for _ in (tmp_path / "data" / "ledger").rglob("*.json")), 10, "the ledger in the old data_dir")
    assert not (tmp_path / "elsewhere").exists()


def test_a_second_proxy_on_the_same_data_dir_is_refused_at_start(start, tmp_path):
    """#11.12: two proxies may share a pool folder, never a data_dir (the ledger, state and event
    log each have one writer). The second says which process holds it and what to do."""
    backend, proxy = start(["alice"])
    argv = [str(BIN / "mitmdump"), "-s", str(ROOT / "addons" / "pool.py"), "--mode", f"reverse:{backend.url}@127.0.0.1:0",
            "--set", "connection_strategy=lazy", "--set", f"confdir={tmp_path / 'conf2'}",
            "--set", f"pool_config={tmp_path / 'mitm.yaml'}"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    out = done.stdout + done.stderr
    assert done.returncode != 0
    assert f"data_dir {tmp_path / 'data'} is in use by another codex-pool proxy (pid {proxy.proc.pid})" in out, out[-2000:]
    assert "Give each proxy a data_dir of its own (they may share pool_dir)" in out
    assert turn(proxy, "still-serving").status_code == 200
    proxy.proc.kill()  # even a killed proxy frees its data_dir (the lock goes with the process)
    proxy.proc.wait(10)
    again = Proxy(backend.url, tmp_path / "again", (tmp_path / "mitm.yaml").read_text()
                  .replace("pool_dir: pool", f"pool_dir: {tmp_path / 'pool'}")
                  .replace("data_dir: data", f"data_dir: {tmp_path / 'data'}"))
    try:
        assert turn(again, "after").status_code == 200
    finally:
        again.stop()


def test_admin_endpoints_require_the_admin_token_when_set(start):
    backend, proxy = start(["alice"], config="pool_dir: pool\ndata_dir: data\nadmin_token: a-long-admin-secret-value\n")
    assert proxy.http.get("/admin/accounts").status_code == 403
    ok = proxy.http.get("/admin/accounts", headers={"authorization": "Bearer a-long-admin-secret-value"})
    assert ok.status_code == 200
    assert proxy.http.get("/healthz").status_code == 200  # health stays open
    assert proxy.http.get("/admin/nope", headers={"authorization": "Bearer a-long-admin-secret-value"}).status_code == 404
    assert backend.requests() == []  # none of it was forwarded


def test_only_the_backend_api_is_forwarded(shared):
    w = shared.fresh(["alice"])  # the only test here that asks the shared proxy for models (cached)
    backend, proxy = w.backend, w.proxy
    for path in ("/", "/auth/login", "/backend-apix"):
        r = proxy.http.get(path, headers={"authorization": f"Bearer {CLIENT_TOKEN}"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_forwarded", path
    assert proxy.http.get("/backend-api/codex/models?client_version=0.169.0").status_code == 200
    assert [r["path"].split("?")[0] for r in backend.requests()] == ["/backend-api/codex/models"]


def test_stream_large_bodies_is_refused_at_start(tmp_path):
    """Streamed request bodies would reach upstream before routing; codex-pool refuses the option."""
    (tmp_path / "pool").mkdir()
    (tmp_path / "mitm.yaml").write_text("pool_dir: pool\n")
    argv = [str(BIN / "mitmdump"), "-s", str(ROOT / "addons" / "pool.py"), "--mode", "reverse:http://127.0.0.1:9@127.0.0.1:0",
            "--set", "connection_strategy=lazy", "--set", f"confdir={tmp_path / 'conf'}",
            "--set", f"pool_config={tmp_path / 'mitm.yaml'}", "--set", "stream_large_bodies=1"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode != 0 and "stream_large_bodies: codex-pool must see a whole request" in done.stdout + done.stderr


def test_workspace_routing_and_client_refresh_are_answered_locally(shared):
    w = shared.fresh(["alice"])
    backend, proxy = w.backend, w.proxy
    r = proxy.http.get("/backend-api/wham/accounts/check",
                       headers={"chatgpt-account-id": "client-acct", "host": "evil.example", "x-forwarded-host": "evil.example",
                                "authorization": f"Bearer {CLIENT_TOKEN}"})
    [entry] = r.json()["accounts"]
    assert entry["id"] == "client-acct" and entry["account_routing_override"] == "NO_CONSTRAINT"
    # this listener, whatever the headers say; https even when asked over http (Codex refuses other
    # origins, and the listener speaks TLS on the same port)
    assert entry["workspace_backend_origin"] == f"https://127.0.0.1:{proxy.port}"
    t = proxy.http.post("/oauth/token", json={"grant_type": "refresh_token", "refresh_token": "rt_client_own"})
    assert t.status_code == 200 and t.json()["access_token"].count(".") == 2
    assert backend.requests() == []  # neither went upstream


def test_models_are_cached_briefly_and_compaction_follows_the_conversation(start):
    backend, proxy = start(["alice", "bob"])
    for _ in range(3):
        r = proxy.http.get("/backend-api/codex/models?client_version=0.169.0")
        assert r.status_code == 200 and r.json()
    assert len([x for x in backend.requests() if x["path"].startswith("/backend-api/codex/models")]) == 1
    assert turn(proxy, "compact-conv").status_code == 200
    home = served_by(backend)[-1]
    body = {"model": "gpt-5.1-codex", "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "x"}]}],
            "instructions": "summarise"}
    c = proxy.http.post("/backend-api/codex/responses/compact", json=body,
                        headers={"session-id": "compact-conv", "authorization": f"Bearer {CLIENT_TOKEN}"})
    assert c.status_code == 200
    [compact] = [x for x in backend.requests() if x["path"].startswith("/backend-api/codex/responses/compact")]
    assert compact["account"] == home
