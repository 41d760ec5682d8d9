"""The real OpenCode (npm `opencode-ai` 1.18.33, offline, isolated home) through real mitmdump and our
addon, against the strict simulated backend, with the README's provider configs: Chat Completions
at `/v1` (@ai-sdk/openai-compatible) and the Responses API at `/backend-api/codex` (@ai-sdk/openai)."""

import json
from pathlib import Path

import pytest

from tests.support.opencode import OpenCodeHome, opencode_bin
from tests.support.procs import FakeBackend, Proxy

pytestmark = [pytest.mark.client, pytest.mark.e2e]

README = Path(__file__).resolve().parents[2] / "README.md"
KINDS = ("compatible", "openai")


@pytest.fixture(scope="module")
def binary():
    path, reason = opencode_bin()
    if path is None:
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    return path


def readme_provider(kind: str, origin: str) -> dict:
    """The README's OpenCode provider block, as a user copies it (the Responses variant as the README
    describes it: the other npm package and base URL)."""
    text = README.read_text()
    section = text[text.index("### OpenCode"):]
    start = section.index("```json\n") + 8
    config = json.loads(section[start:section.index("```", start)])
    provider = config["provider"]["codex-pool"]
    if kind == "openai":
        assert '"npm": "@ai-sdk/openai"' in section and "/backend-api/codex" in section
        provider["npm"] = "@ai-sdk/openai"
        provider["options"]["baseURL"] = "http://127.0.0.1:8989/backend-api/codex"
    provider["options"]["baseURL"] = provider["options"]["baseURL"].replace("http://127.0.0.1:8989", origin)
    return config["provider"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("opencode")
    pool = tmp / "pool"
    pool.mkdir()
    backend = FakeBackend(["alice", "bob"], pool)
    backend.control("POST", "config", {"log_bodies": True})
    proxy = Proxy(backend.url, tmp / "proxy", f"pool_dir: {pool}\ndata_dir: data\npolicy: round_robin\n"
                                              "usage_poll_seconds: 0\n")
    yield backend, proxy
    proxy.stop()
    backend.stop()


def home(tmp_path, world, binary, kind):
    _, proxy = world
    return OpenCodeHome(tmp_path / kind, proxy.url, kind, binary=binary,
                        extra_config={"provider": readme_provider(kind, proxy.url)})


def turns(backend, since=0):
    return [r for r in backend.requests()[since:] if r["path"].startswith("/backend-api/codex/responses")]


def ok(done):
    assert done.returncode == 0, f"opencode failed ({done.returncode}):\n{done.stdout}\n{done.stderr[-3000:]}"
    return done


@pytest.mark.parametrize("kind", KINDS)
def test_a_turn_and_a_continued_turn_stay_on_one_account(world, binary, tmp_path, kind):
    backend, _ = world
    oc = home(tmp_path, world, binary, kind)
    since = len(backend.requests())
    first = ok(oc.run("say hi"))
    assert "Answer from fake account" in first.stdout
    seen = turns(backend, since)
    assert len(seen) == 2 and all(r["status"] == 200 for r in seen)  # the title request and the turn
    assert len({r["account"] for r in seen}) == 1  # x-session-id keeps the title request with its turn
    body = max(seen, key=lambda r: len(json.dumps(r["body"])))["body"]
    assert body["instructions"].startswith("You are OpenCode") and body["store"] is False
    assert "max_output_tokens" not in body and "max_tokens" not in body
    again = ok(oc.run("and again", continue_=True))
    assert "Answer from fake account" in again.stdout
    later = turns(backend, since)[2:]
    assert len(later) == 1 and later[0]["account"] == seen[0]["account"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_tool_round_trip(world, binary, tmp_path, kind):
    backend, _ = world
    oc = home(tmp_path, world, binary, kind)
    since = len(backend.requests())
    # `opencode run` wraps a prompt with spaces in double quotes: the final `#` makes the closing
    # quote a shell comment in the command the simulated backend asks for
    done = ok(oc.run("RUN_TOOL:bash echo tool-ok-$((6*7)) #", title="tool test"))
    assert "Tool output: tool-ok-42" in done.stdout
    call, follow_up = turns(backend, since)
    offered = [t["name"] for t in call["body"]["tools"]]
    assert "bash" in offered  # the simulated backend called a tool the request offered
    outputs = [i for i in follow_up["body"]["input"] if i.get("type") == "function_call_output"]
    assert outputs and "tool-ok-42" in outputs[-1]["output"]
    assert call["account"] == follow_up["account"]


def test_failover_is_followed_by_opencode(world, binary, tmp_path):
    """OpenCode's fetch follows the proxy's 307 with the body; the turn is served by the other account."""
    backend, _ = world
    oc = home(tmp_path, world, binary, "compatible")
    since = len(backend.requests())
    backend.fault(kind="usage_limit", count=1, resets_in_seconds=60)
    done = ok(oc.run("after a failover", title="failover test"))
    served = [(r["account"], r["status"]) for r in turns(backend, since)]
    assert [s for _, s in served] == [429, 200] and served[0][0] != served[1][0]
    assert f"Answer from fake account {served[1][0]}." in done.stdout
