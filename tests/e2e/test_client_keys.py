"""Client keys end to end (#13), through real mitmdump against the simulated backend: who may use the
pool, each key's limits answered locally, per-key accounting, and no key anywhere but the client."""

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from codex_pool.core.client_keys import ClientKey, KeyFile, key_digest
from codex_pool.storage.keys_file import new_key, new_salt, save_keys, update_keys
from tests.support.procs import BIN, ROOT, FakeBackend, Proxy
from tests.support.wait import wait_for

pytestmark = pytest.mark.e2e

MODEL = "gpt-5.1-codex"
CHAT = "/v1/chat/completions"


class Team:
    """A pool of two accounts behind real mitmdump with client keys on; `keys[name]` is each key."""

    def __init__(self, root: Path, limits: dict[str, dict], extra_settings: str = ""):
        self.root = root
        pool = root / "pool"
        pool.mkdir(parents=True)
        self.keys_path = root / "proxy" / "keys.json"
        self.keys_path.parent.mkdir(parents=True)
        salt, now = new_salt(), time.time()
        self.keys = {name: new_key() for name in limits}
        entries = [ClientKey(name=name, digest=key_digest(salt, self.keys[name]), created=now, **spec)
                   for name, spec in limits.items()]
        save_keys(self.keys_path, KeyFile(salt, entries))
        self.backend = FakeBackend(["alice", "bob"], pool)
        self.backend.control("POST", "config", {"log_bodies": True})
        self.settings = (f"pool_dir: {pool}\ndata_dir: data\npolicy: round_robin\nusage_poll_seconds: 0\n"
                         f"ledger_flush_seconds: 0.2\nclient_keys: keys.json\n"
                         f"prices: {{{MODEL}: {{input: 1000, output: 1000}}}}\n{extra_settings}")
        self.proxy = Proxy(self.backend.url, root / "proxy", self.settings)

    def restart(self):
        self.proxy.stop()
        self.proxy = Proxy(self.backend.url, self.root / "proxy", None)

    def chat(self, key: str | None, text="hi", **headers):
        h = {"authorization": f"Bearer {key}"} if key else {}
        return self.proxy.http.post(CHAT, json={"model": MODEL, "messages": [{"role": "user", "content": text}]},
                                    headers={**h, **headers})

    def turns(self):
        return [r for r in self.backend.requests() if r["path"].startswith("/backend-api/codex/responses")]

    def stop(self):
        self.proxy.stop()
        self.backend.stop()


@pytest.fixture
def team(tmp_path):
    made = []

    def make(limits, extra=""):
        t = Team(tmp_path / f"team{len(made)}", limits, extra)
        made.append(t)
        return t
    yield make
    for t in made:
        t.stop()


def test_without_a_valid_key_nothing_is_forwarded(team):
    t = team({"ana": {}, "ben": {"revoked": time.time() - 5}, "cid": {"expires": time.time() - 5}})
    cases = {"missing": t.chat(None), "unknown": t.chat("cp-" + "x" * 43), "revoked": t.chat(t.keys["ben"]),
             "expired": t.chat(t.keys["cid"]), "not bearer": t.chat(None, authorization=f"Basic {t.keys['ana']}")}
    for what, r in cases.items():
        assert r.status_code == 401, what
        error = r.json()["error"]
        assert error["code"] == "invalid_api_key" and error["type"] == "invalid_request_error" and "param" in error
    assert t.turns() == []  # the simulated backend saw nothing
    # Codex's own paths too (403 there: Codex takes a 401 for its own token expiring), the quota view included
    r = t.proxy.http.post("/backend-api/codex/responses", json={}, headers={"originator": "codex_exec"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "invalid_api_key"
    assert t.proxy.http.get("/backend-api/wham/usage").status_code == 403
    assert t.proxy.http.get("/healthz").status_code == 200  # needs no key
    metrics = t.proxy.http.get("/metrics").text
    assert re.search(r'codex_pool_client_refusals_total\{reason="missing"\} [2-9]', metrics)
    assert 'codex_pool_client_refusals_total{reason="revoked"} 1.0' in metrics


def test_a_valid_key_is_served_and_never_goes_upstream(team):
    t = team({"ana": {}})
    key = t.keys["ana"]
    for header in ("authorization", "api-key", "x-api-key"):
        value = f"Bearer {key}" if header == "authorization" else key
        r = t.proxy.http.post(CHAT, json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
                              headers={header: value})
        assert r.status_code == 200, (header, r.text)
    assert key not in json.dumps(t.backend.requests())
    usage = t.proxy.http.get("/v1/usage", headers={"authorization": f"Bearer {key}"}).json()
    assert usage["key"] == "ana" and "alice" not in json.dumps(usage) and "bob" not in json.dumps(usage)


def test_each_limit_is_answered_locally_while_another_key_is_served(team):
    t = team({"rpm": {"limits": {"requests_per_minute": 2}}, "tok": {"limits": {"tokens_per_day": 1}},
              "usd": {"limits": {"usd_per_day": 0.001}}, "mini": {"models": ["gpt-5.1-codex-mini"]}, "free": {}})
    assert [t.chat(t.keys["rpm"]).status_code for _ in range(3)] == [200, 200, 429]
    limited = t.chat(t.keys["rpm"])
    error = limited.json()["error"]
    assert error["type"] == "usage_limit_reached" and 0 < error["resets_at"] - time.time() <= 61
    assert 0 < int(limited.headers["retry-after"]) <= 61
    # tokens and cost count when a turn finishes: the first turn goes through, the next is refused
    for name in ("tok", "usd"):
        assert t.chat(t.keys[name]).status_code == 200
        r = wait_for(lambda: (r := t.chat(t.keys[name])).status_code == 429 and r, 10, f"{name}'s limit")
        resets = r.json()["error"]["resets_at"]
        assert 86400 - 120 < resets - time.time() <= 86400 + 60  # the rolling day, to the minute
        # side requests cost no tokens: a key over its limit still lists models (Codex asks at start-up)
        assert t.proxy.http.get("/v1/models", headers={"authorization": f"Bearer {t.keys[name]}"}).status_code == 200
    r = t.chat(t.keys["mini"])
    assert r.status_code == 403 and r.json()["error"]["param"] == "model"
    assert t.chat(t.keys["free"]).status_code == 200  # the others go on


def test_per_key_accounting_and_limits_survive_a_restart(team):
    t = team({"ana": {"limits": {"tokens_per_week": 1}}, "ben": {}})
    assert t.chat(t.keys["ana"]).status_code == 200
    assert t.chat(t.keys["ben"]).status_code == 200
    rows = wait_for(lambda: {r["key"]: r for r in t.proxy.http.get("/admin/usage", params={"group": "key"}).json()["rows"]
                             if r["requests"]} or None, 10, "both keys in the ledger")
    ana_turn, ben_turn = t.turns()  # ana's chat went first
    assert set(rows) >= {"ana", "ben"} and rows["ana"]["turns"] == rows["ben"]["turns"] == 1
    for name, sent in (("ana", ana_turn), ("ben", ben_turn)):  # the ledger's figures are what upstream reported
        assert rows[name]["input_tokens"] == sent["usage"]["input_tokens"]
        assert rows[name]["output_tokens"] == sent["usage"]["output_tokens"]
    keys = {k["name"]: k for k in t.proxy.http.get("/admin/keys").json()["keys"]}
    assert keys["ana"]["usage"]["tokens_per_week"]["used"] > 1 and keys["ana"]["state"] == "active"
    metrics = t.proxy.http.get("/metrics").text
    ana_input = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                    if line.startswith("codex_pool_tokens_total{") and 'client="ana"' in line and 'type="input"' in line)
    assert ana_input == ana_turn["usage"]["input_tokens"] and 'client="ben"' in metrics
    t.restart()  # the ledger is the source of truth: ana is still over her weekly tokens
    r = wait_for(lambda: (r := t.chat(t.keys["ana"])).status_code == 429 and r, 10, "ana's limit after a restart")
    assert r.json()["error"]["type"] == "usage_limit_reached"
    everything = "".join(p.read_text(errors="replace") for p in (t.root / "proxy").rglob("*") if p.is_file()
                         and p.name != "keys.json" and p.stat().st_size < 50_000_000)
    for key in t.keys.values():
        assert key not in everything and key not in t.proxy.output() and key not in metrics


def test_a_revocation_in_the_file_takes_effect_within_seconds(team):
    t = team({"ana": {}})
    assert t.chat(t.keys["ana"]).status_code == 200

    def revoke(kf: KeyFile) -> KeyFile:
        return KeyFile(kf.salt, [ClientKey(**{**k.__dict__, "revoked": time.time()}) for k in kf.keys])
    update_keys(t.keys_path, revoke)
    wait_for(lambda: t.chat(t.keys["ana"]).status_code == 401, 10, "the revocation to be picked up")
    t.keys_path.write_text("{not json")  # a bad edit keeps the keys in force (ana stays revoked)
    t.proxy.sync_log()
    wait_for(lambda: "keys in force stay" in t.proxy.output(), 10, "the bad edit to be logged")
    assert t.chat(t.keys["ana"]).status_code == 401


def test_the_same_session_id_from_two_keys_never_shares_a_pin(team):
    t = team({"ana": {}, "ben": {}})
    for key in ("ana", "ben", "ana", "ben"):
        assert t.chat(t.keys[key], **{"x-session-id": "same-id"}).status_code == 200
    served = [x["account"] for x in t.turns()]
    assert served[0] == served[2] and served[1] == served[3] and served[0] != served[1]


def test_listening_beyond_loopback_without_keys_and_admin_token_is_refused(tmp_path):
    (tmp_path / "pool").mkdir()
    (tmp_path / "mitm.yaml").write_text("pool_dir: pool\ndata_dir: data\n")
    argv = [str(BIN / "mitmdump"), "-s", str(ROOT / "addons" / "pool.py"), "--mode", "reverse:http://127.0.0.1:9@0.0.0.0:0",
            "--set", f"confdir={tmp_path / 'confdir'}", "--set", f"pool_config={tmp_path / 'mitm.yaml'}"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    out = done.stdout + done.stderr
    assert done.returncode != 0 and "client_keys: keys.json" in out and "admin_token" in out, out[-2000:]


def test_websocket_turns_count_against_the_key(team):
    """Each response.create counts (the upgrade does not); over the limit the frame is not forwarded
    and the client gets the error frame Codex prints as a usage limit."""
    from tests.support.flows import ws_turns
    t = team({"ana": {"limits": {"requests_per_minute": 2}}})
    turns = ws_turns(t.proxy, "ws-key", 3, headers={"authorization": f"Bearer {t.keys['ana']}"})
    assert [frames[-1]["type"] for frames in turns] == ["response.completed", "response.completed", "error"]
    error = turns[-1][-1]
    assert error["status"] == 429 and error["error"]["code"] == "usage_limit_reached" and error["error"]["resets_at"]
    assert len([r for r in t.backend.requests() if r.get("kind") == "ws-msg"]) == 2  # the third never went upstream


def test_a_key_over_its_limit_still_opens_a_socket_and_its_turn_gets_the_error_frame(team):
    """The upgrade is not a turn: a 429 with Retry-After there makes Codex wait that long, silently.
    The socket opens; its first turn gets the usage-limit error frame, which Codex prints at once."""
    from tests.support.flows import RESPONSES, turn_body, ws_turns
    t = team({"ana": {"limits": {"requests_per_minute": 1}}})
    auth = {"authorization": f"Bearer {t.keys['ana']}"}
    assert t.proxy.http.post(RESPONSES, json=turn_body("http-first"), headers=auth).status_code == 200
    over = t.proxy.http.post(RESPONSES, json=turn_body("http-second"), headers=auth)
    assert over.status_code == 429 and over.headers.get("retry-after")  # over HTTP: the limit, with Retry-After
    turns = ws_turns(t.proxy, "ws-over", 1, headers=auth)
    error = turns[0][-1]
    assert error["type"] == "error" and error["status"] == 429 and error["error"]["code"] == "usage_limit_reached"
    assert not [r for r in t.backend.requests() if r.get("kind") == "ws-msg"]


def test_listening_beyond_loopback_starts_with_keys_and_an_admin_token(tmp_path):
    (tmp_path / "pool").mkdir()
    (tmp_path / "mitm.yaml").write_text("pool_dir: pool\ndata_dir: data\nclient_keys: keys.json\n"
                                        "admin_token: a-long-enough-admin-token\n")
    argv = [str(BIN / "mitmdump"), "-s", str(ROOT / "addons" / "pool.py"), "--mode", "reverse:http://127.0.0.1:9@0.0.0.0:0",
            "--set", f"confdir={tmp_path / 'confdir'}", "--set", f"pool_config={tmp_path / 'mitm.yaml'}"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    try:
        line = ""
        deadline = time.monotonic() + 30
        while "listening at" not in line and time.monotonic() < deadline and proc.poll() is None:
            line = proc.stdout.readline()
        assert re.search(r"listening at (\*|0\.0\.0\.0):\d+", line), line  # every interface
    finally:
        proc.terminate()
        proc.wait(10)


def test_the_readme_teammate_setups_work_with_a_key_over_https(team, tmp_path):
    """The openai package and OpenCode, as the README's 'Sharing the pool' shows them: the https side
    of the port, the proxy's CA, a key."""
    from tests.support.opencode import OpenCodeHome, opencode_bin
    t = team({"ana": {}})
    ca = t.proxy.workdir / "confdir" / "mitmproxy-ca-cert.pem"
    origin = f"https://127.0.0.1:{t.proxy.port}"
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Sharing the pool"):]
    start = section.index("```python\n") + 10
    code = (section[start:section.index("```", start)].replace("https://pool.example:8989", origin)
            .replace("cp-…", t.keys["ana"]).replace("mitmproxy-ca-cert.pem", str(ca)))
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    done = scope["client"].chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert done.choices[0].message.content.startswith("Answer from fake account")
    binary, reason = opencode_bin()
    if binary is None:
        print(f"SKIP (OpenCode part): {reason}")
        pytest.skip(reason)
    start = section.index("```json\n") + 8
    provider = json.loads(section[start:section.index("```", start)])["provider"]
    provider["codex-pool"]["options"].update(baseURL=f"{origin}/v1", apiKey=t.keys["ana"])
    oc = OpenCodeHome(tmp_path / "oc", t.proxy.url, "compatible", binary=binary, extra_config={"provider": provider},
                      extra_env={"NODE_EXTRA_CA_CERTS": str(ca)})
    out = oc.run("say hi", title="with a key")
    assert out.returncode == 0 and "Answer from fake account" in out.stdout, out.stderr[-2000:]
    assert t.keys["ana"] not in json.dumps(t.backend.requests())


def test_no_spelling_of_a_turn_or_a_model_slips_past_the_key(team):
    """Limits and allowed models are checked on what upstream will read: an escaped frame type, a
    duplicate or nested `model`, a model past the first 64 KB; a key revoked while its socket is open."""
    from websockets.sync.client import connect

    from tests.support.flows import CODEX_HEADERS, RESPONSES, turn_body
    t = team({"mini": {"models": ["gpt-5.1-codex-mini"]}, "ana": {}})
    h = {"authorization": f"Bearer {t.keys['mini']}", "content-type": "application/json"}
    tricks = [b'{"model":"gpt-5.1-codex-mini","model":"gpt-5.1-codex","messages":[{"role":"user","content":"x"}]}',
              b'{"metadata":{"model":"gpt-5.1-codex-mini"},"model":"gpt-5.1-codex","messages":[{"role":"user","content":"x"}]}',
              b'{"messages":[{"role":"user","content":"' + b"x" * 70_000 + b'"}],"model":"gpt-5.1-codex"}',
              b'{"messages":[{"role":"user","content":"x"}]}']
    for body in tricks:
        r = t.proxy.http.post(CHAT, content=body, headers=h)
        assert r.status_code == 403 and r.json()["error"]["param"] == "model", body[:80]
    assert t.turns() == []
    url = f"ws://127.0.0.1:{t.proxy.port}{RESPONSES}"
    with connect(url, additional_headers={"authorization": f"Bearer {t.keys['ana']}", **CODEX_HEADERS}) as ws:
        frame = json.dumps({"type": "response.create", **turn_body("esc", "hi")}).replace(
            '"response.create"', '"response\\u002ecreate"')
        update_keys(t.keys_path, lambda kf: KeyFile(kf.salt, [ClientKey(**{**k.__dict__, "revoked": time.time()})
                                                               if k.name == "ana" else k for k in kf.keys]))
        wait_for(lambda: any(k["state"] == "revoked" for k in t.proxy.http.get("/admin/keys").json()["keys"]), 10,
                 "the revocation")
        ws.send(frame)  # an escaped spelling of a turn, on a socket whose key was revoked since
        answer = json.loads(ws.recv(timeout=10))
    assert answer["type"] == "error" and answer["status"] == 403 and answer["error"]["code"] == "invalid_api_key"
    assert not [r for r in t.backend.requests() if r.get("kind") == "ws-msg"]


def test_no_key_stays_on_a_saved_flow(tmp_path):
    """Answered locally (a refusal, the quota view, a limit) or forwarded: the flows file has no key."""
    pool = tmp_path / "pool"
    pool.mkdir()
    salt = new_salt()
    key = new_key()
    save_keys(tmp_path / "proxy" / "keys.json", KeyFile(salt, [ClientKey(name="ana", digest=key_digest(salt, key),
                                                                        created=time.time(),
                                                                        limits={"requests_per_minute": 1})]))
    backend = FakeBackend(["alice"], pool)
    flows = tmp_path / "flows.mitm"
    proxy = Proxy(backend.url, tmp_path / "proxy", f"pool_dir: {pool}\ndata_dir: data\nclient_keys: keys.json\n"
                                                   "usage_poll_seconds: 0\n", extra=["-w", str(flows)])
    try:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
        assert proxy.http.post(CHAT, json=body, headers={"x-api-key": key}).status_code == 200
        assert proxy.http.post(CHAT, json=body, headers={"api-key": key}).status_code == 429  # over its minute
        assert proxy.http.get("/backend-api/wham/usage", headers={"authorization": f"Bearer {key}x"}).status_code == 403
        assert proxy.http.get("/v1/usage", headers={"authorization": f"Bearer {key}"}).status_code == 200
        assert proxy.http.get("/v1/models", headers={"authorization": "Bearer " + key}).status_code == 200  # no turn
        # a client's own refresh: nothing to hand out with keys on (an answer would carry the key)
        refused = proxy.http.post("/oauth/token", json={"grant_type": "refresh_token", "refresh_token": key})
        assert refused.status_code == 401 and "codex-setup --key" in refused.json()["error"]["message"]
    finally:
        proxy.stop()
        backend.stop()
    assert flows.stat().st_size > 0 and key.encode() not in flows.read_bytes()
