"""Accounts in and out without copying files (#14.1), through the real scripts and a running proxy:
scripts/import-account validates and copies a Codex login, scripts/remove-account and
POST /admin/accounts/<name>/remove take one out (its file to pool/.removed/), and a conversation
of a removed account moves to another."""

import json
import subprocess
import sys

import pytest

from tests.support.flows import turn
from tests.support.procs import ROOT, FakeBackend, Proxy
from tests.support.wait import wait_for

pytestmark = pytest.mark.e2e


def script(name, *args, env=None):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / name), *args], capture_output=True, text=True,
                          timeout=60, env=env)


@pytest.fixture
def world(tmp_path):
    pool = tmp_path / "pool"
    pool.mkdir()
    backend = FakeBackend(["alice", "bob"], pool)
    cfg = tmp_path / "mitm.yaml"
    cfg.write_text(f"pool_dir: {pool}\ndata_dir: data\npool_scan_seconds: 0.2\nusage_poll_seconds: 0\n")
    proxy = Proxy(backend.url, tmp_path / "proxy", cfg.read_text())
    yield backend, proxy, pool, cfg, tmp_path
    proxy.stop()
    backend.stop()


def accounts(proxy):
    return {a["name"]: a for a in proxy.http.get("/admin/accounts").json()["accounts"]}


def test_import_a_login_then_remove_it_while_the_proxy_runs(world):
    backend, proxy, pool, cfg, tmp = world
    home = tmp / "codex-home"
    home.mkdir()
    (home / "auth.json").write_text(json.dumps(backend.add_account("carol")))  # a Codex login
    done = script("import-account", "carol", "--from", str(home), "--config", str(cfg))
    assert done.returncode == 0, done.stderr
    assert "imported carol.json: carol@example.com, plan plus, access token expires" in done.stdout
    wait_for(lambda: accounts(proxy).get("carol", {}).get("usable"), 10, "carol to be served")
    carol = accounts(proxy)["carol"]
    assert carol["access_expires_at"] and carol["last_refresh"]  # token expiry and last refresh, for admins
    status = subprocess.run([str(ROOT / "scripts" / "status"), "--config", str(cfg), "--url", proxy.url],
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 0 and "token expires" in status.stdout and "refreshed" in status.stdout, status.stderr
    again = script("import-account", "carol-too", "--from", str(home), "--config", str(cfg))
    assert again.returncode == 2 and "already in the pool as carol.json" in again.stderr
    gone = script("remove-account", "carol", "--config", str(cfg))
    assert gone.returncode == 0 and (pool / ".removed").is_dir() and not (pool / "carol.json").exists()
    wait_for(lambda: "carol" not in accounts(proxy), 10, "carol to leave the pool")


def test_remove_through_the_admin_endpoint_moves_its_conversations_at_once(world):
    backend, proxy, pool, cfg, tmp = world
    assert turn(proxy, "conv-1").status_code == 200
    first = [r["account"] for r in backend.requests() if r["path"].startswith("/backend-api/codex/responses")][0]
    r = proxy.http.post(f"/admin/accounts/{first}/remove")
    assert r.status_code == 200 and r.json()["moved_to"].startswith(str(pool / ".removed"))
    assert first not in accounts(proxy)  # at once, not at the next folder scan
    assert turn(proxy, "conv-1").status_code == 200
    second = [r["account"] for r in backend.requests() if r["path"].startswith("/backend-api/codex/responses")][-1]
    assert second != first
    assert proxy.http.post("/admin/accounts/nobody/remove").status_code == 404
