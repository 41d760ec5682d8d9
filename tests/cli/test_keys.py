"""scripts/keys as a user runs it: a subprocess (re-executing itself into .venv when started by a
python without the project), with a tmp mitm.yaml that turns client keys on."""

import json
import os
import stat
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from codex_pool.core.client_keys import (
    EXPIRED,
    REVOKED,
    identify,
    key_digest,
    looks_like_key,
)
from codex_pool.core.config import ConfigError, parse_config
from codex_pool.storage.keys_file import load_keys
from codex_pool.storage.ledger_store import LedgerStore

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "keys"

CONFIG = """\
data_dir: data
pool_dir: pool
client_keys: keys.json
prices:
  gpt-a: {input: 2, output: 10}
"""


def _config_takes_client_keys() -> str | None:
    try:
        parse_config({"client_keys": "keys.json"}, ROOT)
    except ConfigError as e:
        return f"core/config.py does not accept client_keys yet ({e})"
    return None


pytestmark = pytest.mark.skipif(_config_takes_client_keys() is not None, reason=str(_config_takes_client_keys()))


@pytest.fixture
def project(tmp_path):
    (tmp_path / "mitm.yaml").write_text(CONFIG)
    return tmp_path


def run(project, *args, config=True):
    argv = [str(SCRIPT), *args, *(["--config", str(project / "mitm.yaml")] if config else [])]
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "KEYS_REEXEC")}
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=project, env=env, check=False)


def create(project, name, *flags):
    r = run(project, "create", name, *flags)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_create_prints_a_key_once_that_verifies_against_the_stored_hash(project):
    r = run(project, "create", "alice", "--tokens-per-day", "100000", "--usd-per-month", "2.5",
            "--models", "gpt-a, gpt-b,gpt-a", "--expires", "2099-01-01")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 1 and looks_like_key(lines[0]) and len(lines[0]) >= 43
    key = lines[0]
    assert "only time the key is shown" in r.stderr and key not in r.stderr
    path = project / "keys.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and key not in path.read_text()
    kf = load_keys(path)
    (alice,) = kf.keys
    assert alice.digest == key_digest(kf.salt, key)
    assert alice.limits == {"tokens_per_day": 100000.0, "usd_per_month": 2.5}
    assert alice.models == ("gpt-a", "gpt-b") and alice.expires == datetime(2099, 1, 1, tzinfo=UTC).timestamp()
    assert abs(alice.created - time.time()) < 60
    now = time.time()
    assert identify(kf.keys, key, kf.salt, now).key == alice and identify(kf.keys, key, kf.salt, now).refusal is None
    assert identify(kf.keys, key[:-1] + ("A" if key[-1] != "A" else "B"), kf.salt, now).key is None
    second = create(project, "bob")
    assert second != key and load_keys(path).salt == kf.salt  # one salt per file


def test_list_shows_limits_and_ledger_usage_but_never_a_secret(project):
    key = create(project, "alice", "--tokens-per-5h", "1000", "--requests-per-minute", "10")
    other = create(project, "bob")
    kf = load_keys(project / "keys.json")
    now = time.time()
    store = LedgerStore(project / "data" / "ledger")
    assert store.open(now=now) == []
    base = {"account": "pool-a", "model": "gpt-a", "kind": "sse_turn", "status": 200, "outcome": "ok",
            "cached_input_tokens": 0, "reasoning_tokens": 0, "duration_ms": 1500.0, "attempt": 1}
    store.append([
        {**base, "ts": now - 20, "key": "alice", "input_tokens": 700, "output_tokens": 400, "total_tokens": 1100},
        {**base, "ts": now - 7200, "key": "alice", "input_tokens": 100_000, "output_tokens": 0, "total_tokens": 100_000},
        {**base, "ts": now - 30, "key": "bob", "input_tokens": 5, "output_tokens": 5, "total_tokens": 10},
        {**base, "ts": now - 30, "input_tokens": 9999, "output_tokens": 9999, "total_tokens": 19998},  # no key
    ])
    store.close()
    text, js = run(project, "list"), run(project, "list", "--json")
    assert text.returncode == 0 and js.returncode == 0, text.stderr + js.stderr
    for out in (text.stdout + text.stderr, js.stdout + js.stderr):
        for secret in (key, other, kf.salt.hex(), *(k.digest for k in kf.keys)):
            assert secret not in out
    doc = json.loads(js.stdout)
    alice, bob = doc["keys"]
    assert (alice["name"], alice["state"], bob["name"]) == ("alice", "active", "bob")
    assert alice["usage"]["requests_per_minute"]["used"] == 1 and alice["usage"]["requests_per_minute"]["limit"] == 10
    assert alice["usage"]["tokens_per_5h"]["used"] == 101_100
    assert alice["usage"]["tokens_per_5h"]["remaining"] == 0
    assert alice["usage"]["tokens_per_5h"]["resets_at"] is not None  # over the limit: says when it frees up
    assert alice["usage"]["usd_per_day"]["used"] == pytest.approx((100_700 * 2 + 400 * 10) / 1e6)
    assert bob["usage"]["tokens_per_day"] == {"used": 10, "limit": None, "remaining": None, "resets_at": None}
    assert "alice  active" in text.stdout and "REACHED, frees up at" in text.stdout and "101,100" in text.stdout


def test_revoke_keeps_the_entry_and_the_name(project):
    key = create(project, "alice")
    r = run(project, "revoke", "alice")
    assert r.returncode == 0 and "revoked" in r.stdout
    kf = load_keys(project / "keys.json")
    assert identify(kf.keys, key, kf.salt, time.time()).refusal == REVOKED
    again = run(project, "revoke", "alice")
    assert again.returncode == 0 and "already" in again.stdout
    assert load_keys(project / "keys.json") == kf  # revoked time unchanged
    reuse = run(project, "create", "alice")
    assert reuse.returncode == 2 and "not reused" in reuse.stderr and reuse.stdout == ""
    assert json.loads(run(project, "list", "--json").stdout)["keys"][0]["state"] == REVOKED


def test_edit_sets_and_clears_limits_models_and_expiry(project):
    key = create(project, "alice", "--tokens-per-day", "1000", "--usd-per-day", "3", "--models", "gpt-a")
    r = run(project, "edit", "alice", "--no-tokens-per-day", "--requests-per-minute", "20", "--usd-per-day", "4.5",
            "--models", "", "--expires", "2099-12-31T12:00:00+02:00")
    assert r.returncode == 0, r.stderr
    (alice,) = load_keys(project / "keys.json").keys
    assert alice.limits == {"usd_per_day": 4.5, "requests_per_minute": 20.0}
    assert alice.models is None and alice.expires == datetime(2099, 12, 31, 10, tzinfo=UTC).timestamp()
    assert run(project, "edit", "alice", "--expires", "never", "--models", "x,y").returncode == 0
    (alice,) = load_keys(project / "keys.json").keys
    assert alice.expires is None and alice.models == ("x", "y")
    kf = load_keys(project / "keys.json")
    assert identify(kf.keys, key, kf.salt, time.time()).key == alice  # the key itself is unchanged


def test_an_expired_key_is_listed_as_expired(project):
    create(project, "alice", "--expires", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 2)))
    time.sleep(2.1)
    assert json.loads(run(project, "list", "--json").stdout)["keys"][0]["state"] == EXPIRED


def test_a_fresh_project_lists_no_keys(project):
    r = run(project, "list")
    assert r.returncode == 0 and "scripts/keys create NAME" in r.stdout
    assert json.loads(run(project, "list", "--json").stdout)["keys"] == []


BAD = [
    (["create", "alice"], "exists already", "edit alice"),
    (["create", "al ice"], "a key name is 1-64", None),
    (["create", "bob", "--tokens-per-day", "0"], "must be above 0", "--no-tokens-per-day"),
    (["create", "bob", "--tokens-per-day", "1.5"], "not a whole number", None),
    (["create", "bob", "--usd-per-day", "-1"], "must be above 0", None),
    (["create", "bob", "--expires", "next week"], "is not a date", "YYYY-MM-DD"),
    (["create", "bob", "--expires", "2001-01-01"], "not in the future", "revoke"),
    (["revoke", "nobody"], "no key named 'nobody'", "scripts/keys list"),
    (["edit", "nobody", "--tokens-per-day", "5"], "no key named 'nobody'", None),
    (["edit", "alice"], "nothing to change", "--no-LIMIT"),
    (["edit", "alice", "--tokens-per-day", "5", "--no-tokens-per-day"], "not allowed with", None),
    (["frobnicate"], "invalid choice", None),
]


@pytest.mark.parametrize("argv,message,fix", BAD, ids=[" ".join(b[0]) for b in BAD])
def test_bad_input_exits_2_saying_what_to_do(project, argv, message, fix):
    create(project, "alice", "--tokens-per-day", "7")
    before = (project / "keys.json").read_bytes()
    r = run(project, *argv)
    assert r.returncode == 2 and message in r.stderr and r.stdout == ""
    if fix:
        assert fix in r.stderr
    assert (project / "keys.json").read_bytes() == before


def test_keys_off_in_the_config_says_which_line_to_add(project):
    (project / "mitm.yaml").write_text("data_dir: data\n")
    r = run(project, "create", "alice")
    assert r.returncode == 2 and "client_keys: keys.json" in r.stderr and str(project / "mitm.yaml") in r.stderr
    assert r.stdout == "" and not (project / "keys.json").exists()


def test_a_bad_config_or_keys_file_exits_2_naming_it(project):
    (project / "keys.json").write_text('{"salt": "00", "keys": [}')
    r = run(project, "create", "alice")
    assert r.returncode == 2 and str(project / "keys.json") in r.stderr and "not valid JSON" in r.stderr
    assert r.stdout == "" and (project / "keys.json").read_text() == '{"salt": "00", "keys": [}'
    assert run(project, "list").returncode == 2
    (project / "mitm.yaml").write_text("client_keys: [1, 2]\n")
    r = run(project, "list")
    assert r.returncode == 2 and "mitm.yaml" in r.stderr and "client_keys" in r.stderr


def test_the_keys_path_is_relative_to_the_settings_file(project, tmp_path):
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    argv = [str(SCRIPT), "create", "alice", "--config", str(project / "mitm.yaml")]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=elsewhere, check=False)
    assert r.returncode == 0, r.stderr
    assert (project / "keys.json").exists() and not (elsewhere / "keys.json").exists()


def test_concurrent_creates_lose_no_key(project):
    procs = [subprocess.Popen([str(SCRIPT), "create", f"k{i}", "--config", str(project / "mitm.yaml")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(6)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, [e for _, e in outs]
    kf = load_keys(project / "keys.json")
    by_name = {k.name: k for k in kf.keys}
    assert sorted(by_name) == [f"k{i}" for i in range(6)]
    for i, (out, _) in enumerate(outs):
        assert by_name[f"k{i}"].digest == key_digest(kf.salt, out.strip())
