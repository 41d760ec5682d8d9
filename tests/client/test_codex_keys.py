"""The real Codex CLI 0.169.0 on a shared pool with client keys, in both wirings: the key is the
access token of the placeholder auth.json (`scripts/codex-setup --key`), so Codex sends it on every
request, the WebSocket upgrade included; it never goes upstream; and a Codex without a valid key is
refused without anything being forwarded."""

import json
import time

import pytest

from codex_pool.cli import codex_setup
from codex_pool.core.client_keys import ClientKey, KeyFile, key_digest
from codex_pool.storage.keys_file import new_key, new_salt, save_keys, update_keys
from tests.support.wait import wait_for

pytestmark = [pytest.mark.client, pytest.mark.e2e]


def with_keys(world, names=("ana",)):
    salt = new_salt()
    keys = {name: new_key() for name in names}
    save_keys(world.proxy.config_path.parent / "keys.json",
              KeyFile(salt, [ClientKey(name=n, digest=key_digest(salt, k), created=time.time()) for n, k in keys.items()]))
    wait_for(lambda: world.proxy.http.get("/admin/keys").json()["on"], 10, "the keys file to be read")
    return keys


@pytest.mark.parametrize("mode", ["custom", "native"])
def test_codex_with_a_key_in_both_wirings(codex_world, mode):
    w = codex_world(mode, "client_keys: keys.json\nledger_flush_seconds: 0.2\n")
    keys = with_keys(w)
    origin = f"{'https' if mode == 'native' else 'http'}://127.0.0.1:{w.proxy.port}"
    assert codex_setup.main(["--mode", mode, "--home", str(w.home), "--proxy", origin, "--key", keys["ana"],
                             "--config", str(w.proxy.config_path), "--yes"]) == 0
    done = w.codex("say hi")
    assert "Answer from fake account" in done.stdout
    seen = w.backend.requests()
    assert w.turns() and keys["ana"] not in json.dumps(seen)
    # Codex's ChatGPT apps are off with a key (it sends no key there, so the TUI warned on every start)
    assert "codex_apps" not in done.stderr and "403" not in done.stderr, done.stderr[-2000:]
    metrics = w.proxy.http.get("/metrics").text
    assert 'codex_pool_client_refusals_total{reason="missing"}' not in metrics, metrics  # nothing came without the key
    if mode == "native":
        assert any(r["kind"] == "ws-upgrade" for r in seen)  # the WebSocket came with the key too
    rows = wait_for(lambda: [r for r in w.proxy.http.get("/admin/usage", params={"group": "key"}).json()["rows"]
                             if r["key"] == "ana" and r["turns"]], 10, "ana's turn in the ledger")
    assert rows and w.client_refreshes() == 0


def test_codex_without_a_valid_key_is_refused_and_nothing_is_forwarded(codex_world):
    w = codex_world("custom", "client_keys: keys.json\n")
    with_keys(w)  # the home keeps its keyless placeholder
    done = w.codex("say hi", ok=False)
    assert done.returncode != 0
    assert w.turns() == []
    # a 403 (a 401 would make Codex refresh its own token over the key and ask for a new login):
    # Codex retries it, then prints the proxy's message
    assert "403 Forbidden: the client key is not known" in done.stderr, done.stderr[-2000:]
    assert "could not be refreshed" not in done.stderr and w.client_refreshes() == 0


@pytest.mark.parametrize("mode", ["custom", "native"])
def test_codex_over_a_key_limit_prints_the_usage_limit_with_its_reset(codex_world, mode):
    """Custom wiring: the 429 answer to the POST. Native: the socket still opens (a 429 with
    Retry-After on the upgrade made Codex 0.169.0 wait a day, silently) and the turn's error frame
    is printed as the usage limit."""
    w = codex_world(mode, "client_keys: keys.json\nledger_flush_seconds: 0.2\n")
    salt = new_salt()
    key = new_key()
    save_keys(w.proxy.config_path.parent / "keys.json",
              KeyFile(salt, [ClientKey(name="ana", digest=key_digest(salt, key), created=time.time())]))
    wait_for(lambda: w.proxy.http.get("/admin/keys").json()["on"], 10, "the keys file to be read")
    origin = f"{'https' if mode == 'native' else 'http'}://127.0.0.1:{w.proxy.port}"
    assert codex_setup.main(["--mode", mode, "--home", str(w.home), "--proxy", origin, "--key", key,
                             "--config", str(w.proxy.config_path), "--yes"]) == 0
    w.codex("say hi")  # served; then the admin lowers ana's daily tokens below what she used
    update_keys(w.proxy.config_path.parent / "keys.json", lambda kf: KeyFile(kf.salt, [
        ClientKey(**{**k.__dict__, "limits": {"tokens_per_day": 1}}) for k in kf.keys]))
    wait_for(lambda: w.proxy.http.get("/admin/keys").json()["keys"][0]["limits"] == {"tokens_per_day": 1}, 10,
             "the new limit to be read")
    def served_turns():  # POSTs and WebSocket turns; a socket opening is not one
        return [r for r in w.turns() if r.get("kind") not in ("ws-upgrade", "ws-close")]

    served = len(served_turns())
    started = time.monotonic()
    done = w.codex("and again", ok=False)
    took = time.monotonic() - started
    print("Codex 0.169.0 says:", done.stderr[-800:])
    assert done.returncode != 0 and "usage limit" in done.stderr.lower(), done.stderr[-2000:]
    assert took < 30  # printed at once, not retried for the day
    assert len(served_turns()) == served  # nothing of the second run reached upstream
