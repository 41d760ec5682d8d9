"""The stream watchdog end to end (#11.10): an upstream that accepts a turn and then sends nothing,
or stalls in the middle of a stream, does not hang the client; the account cools down for it and
the ledger records why. Timeouts of 1 s here (the defaults are 120 s and 240 s)."""

import json
import time

import httpx
import pytest

from tests.support.flows import RESPONSES, admin_accounts, served_by, turn_body
from tests.support.wait import wait_for

pytestmark = pytest.mark.e2e

CONFIG = ("pool_dir: pool\ndata_dir: data\npolicy: fill_first\nledger_flush_seconds: 0.2\n"
          "first_byte_timeout_seconds: 1\nstream_idle_timeout_seconds: 1\n")


def ledger_records(tmp_path):
    records = []
    for path in (tmp_path / "data" / "ledger").rglob("*.json"):
        doc = json.loads(path.read_text() or "{}")
        for table in doc.values():
            records += table.values()
    return records


def test_an_upstream_that_never_answers_is_cut_and_the_retry_is_served_elsewhere(start, tmp_path):
    backend, proxy = start(["alice", "bob"], config=CONFIG)
    backend.fault(kind="hang", account="alice", seconds=60, count=1)
    t0 = time.monotonic()
    r = proxy.http.post(RESPONSES, json=turn_body("hung"), headers={"session-id": "hung"})
    waited = time.monotonic() - t0
    assert r.status_code == 502 and waited < 10, (r.status_code, waited)  # Codex retries a 502
    row = admin_accounts(proxy)["alice"]
    assert row["state"] == "cooling" and "first_byte_timeout" in row["reason"]
    again = proxy.http.post(RESPONSES, json=turn_body("hung"), headers={"session-id": "hung"})  # Codex's retry
    assert again.status_code == 200 and served_by(backend)[-1] == "bob"
    cut = wait_for(lambda: [x for x in ledger_records(tmp_path) if x.get("outcome") == "first_byte_timeout"], 10,
                   "the ledger record of the cut turn")
    assert cut[0]["account"] == "alice"


def test_a_stream_that_stalls_midway_is_ended_like_a_cut_stream(start, tmp_path):
    backend, proxy = start(["alice", "bob"], config=CONFIG)
    backend.fault(kind="slow", account="alice", seconds=60, count=1)  # the first event, then a minute of silence
    t0 = time.monotonic()
    got = b""
    with pytest.raises(httpx.HTTPError):  # the connection ends without the rest of the stream
        with proxy.http.stream("POST", RESPONSES, json=turn_body("stall"), headers={"session-id": "stall"}) as r:
            assert r.status_code == 200
            for chunk in r.iter_raw():
                got += chunk
    assert time.monotonic() - t0 < 10 and b"response.completed" not in got
    row = admin_accounts(proxy)["alice"]
    assert row["state"] == "cooling" and "stream_idle_timeout" in row["reason"]
    cut = wait_for(lambda: [x for x in ledger_records(tmp_path) if x.get("outcome") == "stream_idle_timeout"], 10,
                   "the ledger record of the stalled turn")
    assert cut[0]["account"] == "alice"
    assert proxy.http.post(RESPONSES, json=turn_body("stall"), headers={"session-id": "stall"}).status_code == 200


def test_a_slow_but_steady_stream_is_left_alone(start):
    backend, proxy = start(["alice"], config=CONFIG)
    backend.control("POST", "config", {"stream_delay": 0.4})  # events 0.4 s apart: never 1 s of silence
    r = proxy.http.post(RESPONSES, json=turn_body("steady"), headers={"session-id": "steady"})
    assert r.status_code == 200 and b"response.completed" in r.content
    assert admin_accounts(proxy)["alice"]["state"] == "usable"
