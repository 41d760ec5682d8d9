"""The real Codex CLI 0.169.0 through real mitmdump + our addon, custom-provider mode over http."""

import json

import pytest

from codex_pool.client_home import placeholder_client_auth
from codex_pool.launcher import codex_config_toml
from tests.client.conftest import run_codex
from tests.support.procs import FakeBackend, Proxy

pytestmark = [pytest.mark.client, pytest.mark.e2e]


@pytest.fixture
def setup(tmp_path, codex_bin):
    pool = tmp_path / "pool"
    pool.mkdir()
    backend = FakeBackend(["alice", "bob"], pool)
    proxy = Proxy(backend.url, tmp_path / "proxy", f"pool_dir: {pool}\ndata_dir: data\npolicy: round_robin\n")
    home = tmp_path / "user" / "codex-home"
    home.mkdir(parents=True)
    (home / "config.toml").write_text(codex_config_toml(proxy.url))
    (home / "auth.json").write_text(json.dumps(placeholder_client_auth()))
    (home / "auth.json").chmod(0o600)

    def codex(*args):
        done = run_codex(codex_bin, home, tmp_path / "work", f"{backend.url}/oauth/token", *args)
        assert done.returncode == 0, f"codex failed ({done.returncode}):\n{done.stdout}\n{done.stderr}\n--- proxy:\n{proxy.output()[-3000:]}"
        return done

    yield backend, proxy, codex
    proxy.stop()
    backend.stop()


def turns(backend):
    return [r for r in backend.requests() if r["path"].startswith("/backend-api/codex/responses")]


def test_codex_exec_resume_and_a_second_conversation(setup, tmp_path):
    backend, proxy, codex = setup

    first = codex("say hi")
    assert "Answer from fake account" in first.stdout
    [t1] = turns(backend)
    assert t1["status"] == 200 and t1["account"] in ("alice", "bob")
    assert t1["session_id"]  # Codex's thread id, the conversation key
    placeholder = placeholder_client_auth()["tokens"]["account_id"]
    assert placeholder not in json.dumps([r["headers"] for r in backend.requests()])  # only pool credentials upstream

    resumed = codex("resume", "--last", "and again")
    assert "Answer from fake account" in resumed.stdout
    t2 = turns(backend)[-1]
    assert t2["session_id"] == t1["session_id"]  # the same conversation...
    assert t2["account"] == t1["account"]  # ...stays on its account

    codex("a brand new conversation")
    t3 = turns(backend)[-1]
    assert t3["session_id"] != t1["session_id"]
    assert t3["account"] != t1["account"]  # round_robin places it on the other account

    state = backend.state()
    assert state["token_calls_unknown"] == 0 and all(a["token_calls"] == 0 for a in state["accounts"].values())
    assert not [r for r in backend.requests() if r["path"].startswith("/oauth/token")]  # Codex never refreshed
    assert state["accounts"][t1["account"]]["cache_hits"] >= 1  # the resumed turn hit its account's prompt cache
