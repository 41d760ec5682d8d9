"""A hot reload of addons/pool.py that fails closes the proxy, and a fixed file opens it again
(#11.2). Before, mitmproxy dropped the broken script and forwarded every request unchanged:
/healthz went upstream, and a turn reached the upstream with the client's own Authorization.

The proxy runs a copy of the entry file (the repository's own is never edited by a test)."""

import os
import time

import pytest

from tests.support.flows import CLIENT_TOKEN, RESPONSES, turn_body
from tests.support.procs import ROOT, FakeBackend, Proxy
from tests.support.proxy_world import write_pool_file
from tests.support.wait import wait_for

pytestmark = pytest.mark.e2e


def rewrite(path, text):
    """Write `text` with an mtime mitmproxy's watcher (1 s polls, mtime compare) surely sees as newer."""
    before = path.stat().st_mtime
    path.write_text(text)
    os.utime(path, (time.time(), max(time.time(), before + 2)))


def turn(proxy, key):
    return proxy.http.post(RESPONSES, json=turn_body(key), headers={"session-id": key,
                                                                    "authorization": f"Bearer {CLIENT_TOKEN}"})


@pytest.mark.parametrize("breakage,named", [
    ("\nthis is not python (\n", "SyntaxError"),
    ("\nimport codex_pool_no_such_module\n", "ModuleNotFoundError: No module named 'codex_pool_no_such_module'"),
], ids=["syntax-error", "import-error"])
def test_a_broken_reload_answers_503_and_forwards_nothing_until_the_file_is_fixed(tmp_path, breakage, named):
    (tmp_path / "pool").mkdir()
    backend = FakeBackend([], tmp_path / "pool")
    entry = tmp_path / "pool_entry.py"
    good = (ROOT / "addons" / "pool.py").read_text()
    entry.write_text(good)
    write_pool_file(tmp_path / "pool", "alice", backend.add_account("alice"))
    proxy = Proxy(backend.url, tmp_path / "proxy", f"pool_dir: {tmp_path / 'pool'}\ndata_dir: data\n", entry=entry)
    try:
        assert turn(proxy, "before").status_code == 200
        rewrite(entry, good + breakage)
        answer = wait_for(lambda: (r := turn(proxy, "broken")).status_code == 503 and r, 15, "the broken reload")
        error = answer.json()["error"]
        assert error["code"] == "codex_pool_not_loaded" and answer.headers["retry-after"] == "5"
        assert str(entry) in error["message"] and named in error["message"], error["message"]
        health = proxy.http.get("/healthz")
        assert health.status_code == 503 and health.json()["error"]["code"] == "codex_pool_not_loaded"
        backend.clear_requests()
        for i in range(3):
            assert turn(proxy, f"still-broken-{i}").status_code == 503
        assert backend.requests() == [], "a request reached the upstream while codex-pool was not loaded"
        rewrite(entry, good)
        wait_for(lambda: turn(proxy, "fixed").status_code == 200, 15, "serving to resume after the fix")
        seen = [dict((k.lower(), v) for k, v in r["headers"]).get("authorization", "") for r in backend.requests()]
        assert seen and all(CLIENT_TOKEN not in a for a in seen)
    finally:
        proxy.stop()
        backend.stop()


def test_a_broken_entry_at_start_up_ends_mitmdump_with_an_error(tmp_path):
    import subprocess

    from tests.support.procs import BIN

    entry = tmp_path / "pool_entry.py"
    entry.write_text((ROOT / "addons" / "pool.py").read_text() + "\nthis is not python (\n")
    done = subprocess.run([str(BIN / "mitmdump"), "-s", str(entry), "--mode", "reverse:http://127.0.0.1:9@127.0.0.1:0",
                           "--set", f"confdir={tmp_path / 'confdir'}"], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path)
    assert done.returncode != 0
    assert "SyntaxError" in done.stdout + done.stderr and "exiting" in done.stdout + done.stderr
