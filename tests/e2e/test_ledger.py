"""The usage ledger and saved serving state, end to end through real mitmdump."""

import json
import os
import signal
import subprocess

import pytest

from codex_pool.storage.ledger_store import LedgerStore
from tests.support.flows import CLIENT_TOKEN, RESPONSES, redirecting_client as client, turn_body, usage_by_account, ws_turns
from tests.support.procs import ROOT, FakeBackend, Proxy
from tests.support.wait import wait_for

pytestmark = pytest.mark.e2e

TOKENS = ("input_tokens", "cached_input_tokens", "output_tokens", "reasoning_tokens", "total_tokens")


@pytest.fixture
def world(tmp_path):
    pool = tmp_path / "pool"
    pool.mkdir()
    backend = FakeBackend(["alice", "bob", "carol"], pool)
    started = []

    def proxy(extra_config="", **kw):
        p = Proxy(backend.url, tmp_path / "proxy",
                  f"pool_dir: {pool}\ndata_dir: data\npolicy: round_robin\nledger_flush_seconds: 0.5\n"
                  f"token_url: {backend.url}/oauth/token\nusage_poll_seconds: 0\n{extra_config}", **kw)
        started.append(p)
        return p

    yield backend, proxy, tmp_path / "proxy" / "data"
    for p in started:
        p.stop()
    backend.stop()


def sse_turn(c, key):
    r = c.post(RESPONSES, json=turn_body(key), headers={"authorization": f"Bearer {CLIENT_TOKEN}", "session-id": key})
    assert r.status_code == 200, r.text
    return r


def ledger_records(data_dir):
    return list(LedgerStore(data_dir / "ledger").query(None, None))


def test_ledger_totals_equal_what_the_backend_sent(world):
    backend, start_proxy, data = world
    proxy = start_proxy()
    with client(proxy) as c:
        for key in ("a", "b", "a", "c"):
            sse_turn(c, f"conv-{key}")
        backend.fault(kind="usage_limit", account="alice", resets_in_seconds=3600)
        sse_turn(c, "conv-a")  # alice is limited: fails over
    assert [t[-1]["type"] for t in ws_turns(proxy, "ws-conv", 2)] == ["response.completed"] * 2
    backend.control("POST", "config", {"stream_delay": 0.3, "deltas": 10})
    with proxy.http.stream("POST", RESPONSES, json=turn_body("gone"), headers={"session-id": "gone"}) as r:
        assert r.status_code == 200
        next(r.iter_raw())  # the client hangs up mid-stream
    wait_for(lambda: sum(row["cancelled"] for row in usage_by_account(proxy).values()) == 1, 10,
             "the proxy to record the turn the client hung up on")
    backend.control("POST", "config", {"stream_delay": 0.0, "deltas": 3})
    live = proxy.http.get("/admin/usage", params={"group": "account"}).json()
    proxy.stop()

    records = ledger_records(data)
    kinds = sorted(r["kind"] for r in records)
    assert kinds.count("ws_turn") == 2 and kinds.count("sse_turn") >= 7
    outcomes = [r["outcome"] for r in records]
    assert outcomes.count("failed_over") == 1 and outcomes.count("client_cancelled") == 1
    failed = next(r for r in records if r["outcome"] == "failed_over")
    assert failed["account"] == "alice" and failed["status"] == 429 and failed["total_tokens"] == 0
    retried = [r for r in records if r["attempt"] == 2]
    assert len(retried) == 1 and retried[0]["outcome"] == "ok"
    for r in records:
        assert r["conversation"] is None or (len(r["conversation"]) == 16 and "conv" not in r["conversation"])
        assert r["model"] in (None, "gpt-5.1-codex")
    sent = backend.state()["accounts"]
    for name, acct in sent.items():
        mine = [r for r in records if r["account"] == name]
        totals = {f: sum(r[f] for r in mine) for f in TOKENS}
        theirs = acct["usage_totals"]
        assert totals == {"input_tokens": theirs["input_tokens"], "cached_input_tokens": theirs["cached_tokens"],
                          "output_tokens": theirs["output_tokens"], "reasoning_tokens": theirs["reasoning_tokens"],
                          "total_tokens": theirs["total_tokens"]}, name
    rows = {row["account"]: row for row in live["rows"]}
    for name in sent:
        assert rows.get(name, {}).get("total_tokens", 0) == sent[name]["usage_totals"]["total_tokens"]


def test_restart_keeps_stickiness_cooldowns_and_pins(world):
    backend, start_proxy, data = world
    proxy = start_proxy()
    with client(proxy) as c:
        sse_turn(c, "c1")  # alice
        sse_turn(c, "c2")  # bob
        backend.fault(kind="usage_limit", account="bob", resets_in_seconds=3 * 3600)
        sse_turn(c, "c2")  # bob limited for hours: c2 moves to carol
    proxy.http.post("/admin/accounts/alice/pin")
    proxy.stop()
    backend.clear_requests()

    again = start_proxy()
    assert "restored" in again.output()
    rows = {a["name"]: a for a in again.http.get("/admin/accounts").json()["accounts"]}
    assert rows["bob"]["state"] == "limited"
    assert again.http.get("/admin/accounts").json()["pinned"] == "alice"
    with client(again) as c:
        sse_turn(c, "c2")  # pinned: alice
        again.http.post("/admin/accounts/alice/unpin")
        sse_turn(c, "c1")
        sse_turn(c, "c2")
        sse_turn(c, "c-new")
    served = [r["account"] for r in backend.requests() if r["path"].startswith(RESPONSES)]
    assert served[:3] == ["alice", "alice", "carol"]  # pin, then each conversation on its own account
    assert served[3] != "bob"  # a new conversation never lands on the limited account


def test_kill_minus_nine_keeps_everything_flushed_before(world):
    backend, start_proxy, data = world
    proxy = start_proxy()
    with client(proxy) as c:
        for i in range(12):
            sse_turn(c, f"k{i}")
    wait_for(lambda: len(ledger_records(data)) == 12, 10, "the 12 turns to be flushed to the ledger")
    os.killpg(proxy.proc.pid, signal.SIGKILL)
    proxy.proc.wait(10)
    assert len(ledger_records(data)) == 12  # readable, complete
    again = start_proxy()
    assert "could not be read" not in again.output() and "moved" not in again.output()
    with client(again) as c:
        sse_turn(c, "after")
    again.stop()
    assert len(ledger_records(data)) == 13


def test_a_limited_account_is_on_disk_within_seconds_even_if_the_proxy_is_killed(world):
    """Health decides where traffic may go: it is saved within one 5 s tick of changing, not at the
    minute cadence of sticky conversations and quota figures."""
    backend, start_proxy, data = world
    proxy = start_proxy()
    with client(proxy) as c:
        sse_turn(c, "c1")
        backend.fault(kind="usage_limit", account="alice", resets_in_seconds=3 * 3600)
        sse_turn(c, "c1")  # alice limited: failed over

    def saved_state():
        try:
            return json.loads((data / "state.json").read_text())["state"]["1"]
        except (OSError, ValueError, KeyError):
            return {}
    wait_for(lambda: saved_state().get("health", {}).get("alice", {}).get("state") == "limited", 15,
             "alice's limit to reach state.json")
    os.killpg(proxy.proc.pid, signal.SIGKILL)
    proxy.proc.wait(10)
    again = start_proxy()
    rows = {a["name"]: a for a in again.http.get("/admin/accounts").json()["accounts"]}
    assert rows["alice"]["state"] == "limited"


def test_corrupt_files_at_start_are_moved_aside_with_a_warning(world):
    backend, start_proxy, data = world
    proxy = start_proxy()
    with client(proxy) as c:
        sse_turn(c, "x")
    proxy.stop()
    [segment] = list((data / "ledger").rglob("*.json"))
    segment.write_text('{"_default": {"1": {"ts": ')  # torn
    (data / "state.json").write_text("not json at all")
    again = start_proxy()
    out = again.output()
    assert str(segment) in out and "corrupt" in out
    assert str(data / "state.json") in out and "moved it to" in out
    assert list((data / "ledger").rglob("*.corrupt-*")) and list(data.glob("state.json.corrupt-*"))
    with client(again) as c:
        sse_turn(c, "y")
    again.stop()
    assert [r["conversation"] is not None for r in ledger_records(data)] == [True]


def test_admin_usage_matches_the_report_script(world, tmp_path):
    backend, start_proxy, data = world
    proxy = start_proxy('prices:\n  gpt-5.1-codex: {input: 1.25, cached_input: 0.125, output: 10}\n')
    with client(proxy) as c:
        for key in ("a", "b", "a"):
            sse_turn(c, key)
    wait_for(lambda: len(ledger_records(data)) == 3, 10, "the 3 turns to be flushed to the ledger")  # what the script reads
    api = proxy.http.get("/admin/usage", params={"group": "account,model"}).json()
    assert proxy.http.get("/admin/usage", params={"since": "yesterday-ish"}).status_code == 400
    script = subprocess.run([str(ROOT / "scripts" / "usage-report"), "--config", str(proxy.config_path),
                             "--group", "account,model", "--json"], capture_output=True, text=True, timeout=120)
    assert script.returncode == 0, script.stderr
    cli = json.loads(script.stdout)
    assert api["rows"] and api["rows"] == cli["rows"] and api["totals"] == cli["totals"]
    assert all(row["cost_usd"] is not None and row["cost_usd"] > 0 for row in api["rows"])
