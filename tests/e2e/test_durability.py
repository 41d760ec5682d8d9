"""kill -9 in the middle of writes, measured (#11.14): a proxy under traffic, its accounts' access
tokens living 4 s (so refreshes and token write-backs never stop), killed with SIGKILL at a random
moment and restarted, 100 times (CODEX_POOL_KILLS to change). After every kill no file is
unreadable; after the last restart no temp file is left, every account serves, no refresh token
was presented twice, and the ledger lost at most what was unflushed at each kill.

Before: leftover `.tmp-*` files in the data folder, a complete pool temp file with the only valid
refresh token swept away (the account lost), and a refresh token whose answer was lost presented
again at every restart (`refresh_token_reused`)."""

import json
import os
import random
import threading
from pathlib import Path

import httpx
import pytest

from codex_pool.core.auth_file import parse_auth
from tests.support.flows import RESPONSES, admin_accounts, redirecting_client, turn_body
from tests.support.procs import FakeBackend, Proxy
from tests.support.proxy_world import write_pool_file
from tests.support.wait import wait_for

pytestmark = pytest.mark.e2e

KILLS = int(os.environ.get("CODEX_POOL_KILLS", "100"))
NAMES = ["alice", "bob", "carol", "dave"]
FLUSH_SECONDS = 0.2


def unreadable(data: Path, pool: Path) -> list[str]:
    bad = []
    for f in pool.glob("*.json"):
        try:
            parse_auth(f.read_bytes(), f)
        except Exception as e:  # noqa: BLE001 - any failure is the finding
            bad.append(f"{f.name}: {e}")
    for f in [data / "state.json", *pool.glob(".*.spent"), *(data / "ledger").rglob("*.json")]:
        if f.exists():
            try:
                json.loads(f.read_bytes())
            except ValueError as e:
                bad.append(f"{f.relative_to(data)}: {e}")
    return bad


def torn_event_lines(data: Path) -> int:
    torn = 0
    path = data / "events.jsonl"
    for line in (path.read_text().splitlines() if path.exists() else []):
        try:
            json.loads(line)
        except ValueError:
            torn += 1
    return torn


def temp_files(*folders: Path) -> list[Path]:
    return [p for folder in folders for p in folder.rglob(".*.tmp-*")]


def ledger_count(data: Path) -> int:
    n = 0
    for f in (data / "ledger").rglob("*.json"):
        n += sum(len(table) for table in json.loads(f.read_bytes() or b"{}").values())
    return n


def test_a_hundred_kills_mid_write_leave_every_file_readable_and_lose_at_most_a_batch(tmp_path):
    pool, data = tmp_path / "pool", tmp_path / "data"
    pool.mkdir()
    backend = FakeBackend([], pool)
    backend.control("POST", "config", {"enforce_limits": False})  # hundreds of turns: no usage limit in the way
    for name in NAMES:
        write_pool_file(pool, name, backend.add_account(name, access_ttl_seconds=4))
    config = (f"pool_dir: {pool}\ndata_dir: {data}\npolicy: round_robin\ntoken_url: {backend.url}/oauth/token\n"
              f"ledger_flush_seconds: {FLUSH_SECONDS}\npool_scan_seconds: 0.2\nusage_poll_seconds: 0\n")
    rng = random.Random(11)
    stop = threading.Event()
    current: dict[str, str] = {}
    answered = [0]
    alive = [0.0]  # seconds the proxies ran under traffic

    def client(n: int) -> None:
        with httpx.Client(timeout=10, trust_env=False) as c:
            i = 0
            while not stop.is_set():
                url = current.get("url")
                i += 1
                try:
                    r = c.post(f"{url}{RESPONSES}", json=turn_body(f"k{n}-{i % 3}"), headers={"session-id": f"k{n}-{i % 3}"})
                    answered[0] += r.status_code == 200
                except (httpx.HTTPError, TypeError):
                    stop.wait(0.05)  # the proxy is down between a kill and its restart

    found_temp: list[str] = []
    findings: list[str] = []
    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(2)]
    try:
        for kill in range(KILLS):
            proxy = Proxy(backend.url, tmp_path / "proxy", config)
            current["url"] = proxy.url
            if kill == 0:
                for t in threads:
                    t.start()
            life = rng.uniform(0.2, 1.2)  # a random moment in its life under traffic
            alive[0] += life
            stop.wait(life)
            proxy.proc.kill()
            proxy.proc.wait(10)
            proxy.http.close()
            current.pop("url", None)
            found_temp += [p.name for p in temp_files(pool, data)]
            findings += [f"after kill {kill + 1}: {b}" for b in unreadable(data, pool)]
        stop.set()
        for t in threads:
            t.join(15)
        before_final = temp_files(pool, data)
        final = Proxy(backend.url, tmp_path / "proxy", config)
        try:
            wait_for(lambda: all(a["state"] in ("usable", "refreshing") for a in admin_accounts(final).values()), 20,
                     "every account back after the kills")
            with redirecting_client(final) as c:  # as Codex: a 307 (e.g. after a refresh) is followed
                r = c.post(RESPONSES, json=turn_body("after"), headers={"session-id": "after"})
            assert r.status_code == 200, r.text
            swept = [p for p in before_final if not p.exists()]  # the start-up settled what the last kill left
        finally:
            final.stop()
        leftovers = temp_files(pool, data)
        served = sum(1 for e in backend.requests() if e["path"].startswith(RESPONSES) and e.get("status") == 200)
        sent = backend.state()["accounts"]
    finally:
        stop.set()
        backend.stop()
    reused = sum(a["refresh_failures"] for a in sent.values())
    recorded = ledger_count(data)
    lost = served - recorded
    print(f"\nkill -9 durability: {KILLS} kills; unreadable files {len(findings)}; torn event lines "
          f"{torn_event_lines(data)}; temp files seen right after kills {len(found_temp)} "
          f"({sum('.json.tmp-' in n and not n.startswith('.2') for n in found_temp)} pool/state, rest ledger); "
          f"left after restart {len(leftovers)}; refreshes {sum(a['refresh_count'] for a in sent.values())}, "
          f"refused as reused/invalid {reused}; turns served upstream {served}, in the ledger {recorded}, "
          f"lost {lost} ({lost / KILLS:.2f} per kill; one batch is {served / alive[0] * FLUSH_SECONDS:.0f} turns)")
    assert findings == []
    assert torn_event_lines(data) == 0
    assert leftovers == [] and swept == before_final
    assert reused == 0
    per_batch = served / alive[0] * (FLUSH_SECONDS + 0.1)  # turns per flush interval (+ the write's own time)
    assert 0 <= lost <= KILLS * (per_batch + 2)  # per kill: one unflushed batch plus the two turns in flight
