"""The simulated ChatGPT backend (scripts/fake_chatgpt): HTTP/SSE, WebSocket, tokens, faults,
control API, CLI, and (when the binary is installed) the real Codex CLI 0.169.0 against it.

WebSocket is exercised with a tiny client built on wsproto (installed with mitmproxy).
"""

from __future__ import annotations

import asyncio
import glob
import gzip
import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.extensions import PerMessageDeflate

from fake_chatgpt import FakeChatGPT, decode_unverified
from tests.support.wait import wait_for_async

REPO = Path(__file__).resolve().parents[2]
CLI = REPO / "scripts" / "fake-chatgpt"
CODEX_GLOB = os.path.expanduser(
    "~/.cache/codex-pool/codex-0.169.0/node_modules/@openai/codex-linux-x64/vendor/*/bin/codex"
)

RESPONSES = "/backend-api/codex/responses"
EXEC_TOOL = {
    "type": "function",
    "name": "exec_command",
    "description": "Runs a command",
    "strict": False,
    "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}, "required": ["cmd"]},
}


# --------------------------------------------------------------------------- helpers


@pytest.fixture
async def fake():
    server = FakeChatGPT()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def client(fake):
    async with httpx.AsyncClient(base_url=fake.url, timeout=10) as c:
        yield c


def auth_headers(auth: dict) -> dict:
    return {
        "authorization": f"Bearer {auth['tokens']['access_token']}",
        "chatgpt-account-id": auth["tokens"]["account_id"],
    }


def user_msg(text: str) -> dict:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def turn_body(text: str = "say hi", key: str | None = "thread-1", extra_input=(), tools=(EXEC_TOOL,)) -> dict:
    body = {
        "model": "gpt-5.1-codex",
        "instructions": "You are a helpful assistant.",
        "input": [
            {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "be brief"}]},
            user_msg(text),
            *extra_input,
        ],
        "tools": list(tools),
        "tool_choice": "auto",
        "parallel_tool_calls": True,
        "store": False,
        "stream": True,
        "include": ["reasoning.encrypted_content"],
    }
    if key is not None:
        body["prompt_cache_key"] = key
    return body


def parse_sse(raw: bytes) -> list[dict]:
    events = []
    for block in raw.decode().split("\n\n"):
        lines = block.strip().splitlines()
        if not lines:
            continue
        name = next(line[7:] for line in lines if line.startswith("event: "))
        data = json.loads("".join(line[6:] for line in lines if line.startswith("data: ")))
        assert data["type"] == name
        events.append(data)
    return events


async def post_turn(client, auth, body=None, headers=None, content: bytes | None = None):
    """POST a turn; returns (response, events). Reads the stream as far as the server sends it."""
    h = {**auth_headers(auth), "accept": "text/event-stream", "content-type": "application/json", **(headers or {})}
    raw = b""
    async with client.stream(
        "POST", RESPONSES, headers=h, content=content if content is not None else json.dumps(body or turn_body())
    ) as resp:
        async for chunk in resp.aiter_bytes():
            raw += chunk
    return resp, parse_sse(raw) if resp.status_code == 200 else json.loads(raw)


async def set_faults(client, *faults):
    r = await client.post("/_fake/faults", json=list(faults))
    assert r.status_code == 201, r.text
    return r.json()


async def state(client) -> dict:
    return (await client.get("/_fake/state")).json()


# --------------------------------------------------------------------------- minimal WebSocket client


class WS:
    """Just enough of a WebSocket client (wsproto over asyncio streams) for these tests."""

    def __init__(self, reader, writer, conn: WSConnection):
        self.reader, self.writer, self.conn = reader, writer, conn
        self.pending: list = []

    @classmethod
    async def connect(cls, url: str, headers: dict, deflate: bool = True):
        host, port = url.split("://")[1].split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        conn = WSConnection(ConnectionType.CLIENT)
        writer.write(
            conn.send(
                Request(
                    host=f"{host}:{port}",
                    target=RESPONSES,
                    extra_headers=[(k.encode(), v.encode()) for k, v in headers.items()],
                    extensions=[PerMessageDeflate()] if deflate else [],
                )
            )
        )
        await writer.drain()
        ws = cls(reader, writer, conn)
        status, body = None, b""
        while True:
            for ev in await ws._events():
                if isinstance(ev, AcceptConnection):
                    return ws, 101, dict(ev.extra_headers)
                if isinstance(ev, RejectConnection):
                    status = ev.status_code
                    if not ev.has_body:
                        writer.close()
                        return None, status, None
                elif isinstance(ev, RejectData):
                    body += ev.data
                    if ev.body_finished:
                        writer.close()
                        return None, status, json.loads(body) if body else None

    async def _events(self) -> list:
        while True:
            evs = list(self.conn.events())
            if evs:
                return evs
            data = await asyncio.wait_for(self.reader.read(65536), 5)
            self.conn.receive_data(data or None)
            if not data:
                return list(self.conn.events()) or [CloseConnection(code=1006)]

    async def send(self, obj: dict) -> None:
        self.writer.write(self.conn.send(TextMessage(data=json.dumps(obj))))
        await self.writer.drain()

    async def recv(self):
        """Next JSON frame, or None when the connection closed."""
        text = ""
        while True:
            if not self.pending:
                self.pending = await self._events()
            ev = self.pending.pop(0)
            if isinstance(ev, TextMessage):
                text += ev.data
                if ev.message_finished:
                    return json.loads(text)
            elif isinstance(ev, CloseConnection):
                return None

    async def recv_response(self) -> list[dict]:
        """Frames up to a terminal one (response.completed / response.failed / error) or close."""
        frames = []
        while True:
            frame = await self.recv()
            if frame is None:
                return frames
            frames.append(frame)
            if frame["type"] in ("response.completed", "response.failed", "error"):
                return frames

    async def close(self) -> None:
        try:
            self.writer.write(self.conn.send(CloseConnection(code=1000)))
            await self.writer.drain()
        except Exception:
            pass
        self.writer.close()


def ws_headers(auth: dict) -> dict:
    return {
        **auth_headers(auth),
        "openai-beta": "responses_websockets=2026-02-06",
        "session-id": "thread-ws",
        "originator": "codex_exec",
    }


# --------------------------------------------------------------------------- accounts and tokens


async def test_account_creation_returns_codex_auth_json(client):
    r = await client.post("/_fake/accounts", json={"name": "alice", "email": "a@x.test", "plan": "pro"})
    assert r.status_code == 201
    auth = r.json()
    assert set(auth) == {"auth_mode", "OPENAI_API_KEY", "tokens", "last_refresh"}
    assert auth["auth_mode"] == "chatgpt" and auth["OPENAI_API_KEY"] is None
    assert auth["last_refresh"].endswith("Z")
    t = auth["tokens"]
    assert t["account_id"].startswith("acct-alice-")
    assert t["refresh_token"].startswith("rt_")
    for jwt_ in (t["id_token"], t["access_token"]):
        assert len(jwt_.split(".")) == 3 and all(jwt_.split("."))
    idc = decode_unverified(t["id_token"])
    assert idc["email"] == "a@x.test"
    assert idc["https://api.openai.com/profile"]["email"] == "a@x.test"
    a = idc["https://api.openai.com/auth"]
    assert a["chatgpt_account_id"] == t["account_id"] and a["chatgpt_plan_type"] == "pro"
    assert a["chatgpt_user_id"] == a["user_id"]
    acc = decode_unverified(t["access_token"])
    assert 10 * 86400 - 5 <= acc["exp"] - time.time() <= 10 * 86400 + 5
    assert (await client.post("/_fake/accounts", json={"name": "alice"})).status_code == 409


async def test_auth_accept_and_reject(fake, client):
    alice = fake.add_account("alice")
    bob = fake.add_account("bob")
    old = fake.add_account("old", initial_access_ttl_seconds=-5)

    resp, _ = await post_turn(client, alice)
    assert resp.status_code == 200

    cases = [
        ({}, "missing_authorization"),
        ({"authorization": "Bearer nope", "chatgpt-account-id": alice["tokens"]["account_id"]}, "invalid_token"),
        (  # alice's token with bob's account header
            {**auth_headers(alice), "chatgpt-account-id": bob["tokens"]["account_id"]},
            "invalid_token",
        ),
        (auth_headers(old), "token_expired"),
    ]
    for headers, code in cases:
        r = await client.post(RESPONSES, headers=headers, json=turn_body())
        assert r.status_code == 401, headers
        err = r.json()["error"]
        assert err["code"] == code and err["type"] == "invalid_request_error" and err["message"]

    await client.post("/_fake/accounts/bob/revoke")
    r = await client.post(RESPONSES, headers=auth_headers(bob), json=turn_body())
    assert r.status_code == 401 and r.json()["error"]["code"] == "token_invalidated"
    # other endpoints authenticate too
    assert (await client.get("/backend-api/wham/usage")).status_code == 401


async def test_refresh_rotation_and_reuse(fake, client):
    alice = fake.add_account("alice")
    rt0 = alice["tokens"]["refresh_token"]
    body = {"client_id": "app_EMoamEEZ73f0CkXaXp7hrann", "grant_type": "refresh_token", "refresh_token": rt0}
    r = await client.post("/oauth/token", json={**body, "refresh_reason": "unauthorized_recovery"})
    assert r.status_code == 200
    new = r.json()
    assert set(new) >= {"access_token", "id_token", "refresh_token"}
    assert new["refresh_token"] != rt0 and new["access_token"] != alice["tokens"]["access_token"]
    assert decode_unverified(new["id_token"])["https://api.openai.com/auth"]["chatgpt_account_id"] == (
        alice["tokens"]["account_id"]
    )
    # both the old and the new access token work until they expire
    for at in (alice["tokens"]["access_token"], new["access_token"]):
        h = {"authorization": f"Bearer {at}", "chatgpt-account-id": alice["tokens"]["account_id"]}
        assert (await client.get("/backend-api/wham/usage", headers=h)).status_code == 200

    r = await client.post("/oauth/token", json=body)  # rt0 again
    assert r.status_code == 401 and r.json()["error"]["code"] == "refresh_token_reused"
    r = await client.post("/oauth/token", json={**body, "refresh_token": "rt_unknown"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_grant"
    r = await client.post("/oauth/token", json={**body, "refresh_token": new["refresh_token"]})
    assert r.status_code == 200  # the rotated one is good once

    acct = (await state(client))["accounts"]["alice"]
    assert acct["token_calls"] == 3 and acct["refresh_count"] == 2 and acct["refresh_failures"] == 1
    log = (await client.get("/_fake/requests", params={"path": "/oauth/token"})).json()["requests"]
    assert [e["status"] for e in log] == [200, 401, 401, 200]
    assert log[0]["refresh_reason"] == "unauthorized_recovery" and log[0]["account"] == "alice"
    assert log[2]["account"] is None


async def test_refresh_error_fault(fake, client):
    alice = fake.add_account("alice")
    await set_faults(client, {"account": "alice", "kind": "refresh_error", "status": 500, "code": "server_error"})
    body = {"grant_type": "refresh_token", "refresh_token": alice["tokens"]["refresh_token"], "client_id": "x"}
    r = await client.post("/oauth/token", json=body)
    assert r.status_code == 500 and r.json()["error"]["code"] == "server_error"
    r = await client.post("/oauth/token", json=body)  # fault used up; the token was not consumed
    assert r.status_code == 200


# --------------------------------------------------------------------------- model turns over HTTP


async def test_sse_event_order_headers_and_usage(fake, client):
    alice = fake.add_account("alice")
    body = turn_body("say hi", key=None)
    resp, events = await post_turn(client, alice, body)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    for name in (
        "x-codex-primary-used-percent",
        "x-codex-primary-window-minutes",
        "x-codex-primary-reset-at",
        "x-codex-secondary-used-percent",
        "x-codex-secondary-window-minutes",
        "x-codex-secondary-reset-at",
        "x-codex-credits-has-credits",
        "x-codex-credits-unlimited",
        "x-codex-credits-balance",
    ):
        assert name in resp.headers, name
    assert resp.headers["x-codex-primary-window-minutes"] == "300"
    assert resp.headers["x-codex-primary-used-percent"] == "1"  # raised by this turn
    assert resp.headers["x-codex-turn-state"]

    types = [e["type"] for e in events]
    assert types[0] == "response.created" and events[0]["response"]["id"].startswith("resp_")
    assert types[-1] == "response.completed" and types[-2] == "codex.rate_limits"
    assert types.index("response.output_item.added") < types.index("response.output_text.delta")
    assert types.count("response.output_text.delta") == 3
    assert types.index("response.output_item.done") < types.index("codex.rate_limits")
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text == "Answer from fake account alice."
    done = next(e for e in events if e["type"] == "response.output_item.done")["item"]
    assert done["type"] == "message" and done["role"] == "assistant"
    assert done["content"] == [{"type": "output_text", "text": text, "annotations": []}]
    rl = events[-2]
    assert rl["rate_limits"]["primary"]["window_minutes"] == 300
    assert rl["rate_limits"]["secondary"]["window_minutes"] == 10080

    usage = events[-1]["response"]["usage"]
    raw_len = len(json.dumps(body).encode())
    assert usage == {
        "input_tokens": -(-raw_len // 4),
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": -(-len(text) // 4) + 8,
        "output_tokens_details": {"reasoning_tokens": 8},
        "total_tokens": usage["input_tokens"] + usage["output_tokens"],
    }
    acct = (await state(client))["accounts"]["alice"]
    assert acct["turns"] == 1
    assert acct["usage_totals"] == {
        "input_tokens": usage["input_tokens"],
        "cached_tokens": 0,
        "output_tokens": usage["output_tokens"],
        "reasoning_tokens": 8,
        "total_tokens": usage["total_tokens"],
    }


async def test_prompt_cache_is_per_account(fake, client):
    alice, bob = fake.add_account("alice"), fake.add_account("bob")
    body = turn_body("hello", key="thread-42")

    def cached(events):
        return events[-1]["response"]["usage"]["input_tokens_details"]["cached_tokens"]

    _, e1 = await post_turn(client, alice, body)
    _, e2 = await post_turn(client, alice, body)
    _, e3 = await post_turn(client, bob, body)  # same conversation, other account: cold cache
    _, e4 = await post_turn(client, alice, turn_body("hello", key="other-thread"))
    assert cached(e1) == 0
    assert cached(e2) == e2[-1]["response"]["usage"]["input_tokens"] > 0
    assert cached(e3) == 0 and cached(e4) == 0
    st = (await state(client))["accounts"]
    assert st["alice"]["cache_hits"] == 1 and st["bob"]["cache_hits"] == 0
    assert st["alice"]["usage_totals"]["cached_tokens"] == cached(e2)


async def test_compressed_request_bodies(fake, client):
    from codex_pool.core import zstd

    alice = fake.add_account("alice")
    raw = json.dumps(turn_body()).encode()
    for enc, data in (("zstd", zstd.compress(raw)), ("gzip", gzip.compress(raw))):
        resp, events = await post_turn(client, alice, headers={"content-encoding": enc}, content=data)
        assert resp.status_code == 200 and events[-1]["type"] == "response.completed"
    log = (await client.get("/_fake/requests", params={"path": RESPONSES})).json()["requests"]
    assert [e["decoded_body_len"] for e in log] == [len(raw), len(raw)]
    assert log[0]["prompt_cache_key"] == "thread-1"


async def test_tool_call_round_trip(fake, client):
    alice = fake.add_account("alice")
    _, events = await post_turn(client, alice, turn_body("please RUN_TOOL"))
    call = next(e for e in events if e["type"] == "response.output_item.done")["item"]
    assert call["type"] == "function_call" and call["name"] == "exec_command"
    assert json.loads(call["arguments"]) == {"cmd": "echo tool-ok"}
    assert events[-1]["response"]["output"] == [call]

    output = {"type": "function_call_output", "call_id": call["call_id"], "output": "Process exited with code 0\ntool-ok"}
    follow = turn_body("please RUN_TOOL", extra_input=[call, output])
    _, events = await post_turn(client, alice, follow)
    msg = next(e for e in events if e["type"] == "response.output_item.done")["item"]
    assert msg["type"] == "message"
    assert "tool-ok" in msg["content"][0]["text"] and "alice" in msg["content"][0]["text"]

    # other shell tool shapes, and a custom command
    shell_tool = {
        **EXEC_TOOL,
        "name": "shell",
        "parameters": {
            "type": "object",
            "properties": {"command": {"type": "array", "items": {"type": "string"}}, "workdir": {"type": "string"}},
            "required": ["command"],
        },
    }
    _, events = await post_turn(client, alice, turn_body("RUN_TOOL: ls -l", tools=[shell_tool]))
    call = next(e for e in events if e["type"] == "response.output_item.done")["item"]
    assert call["name"] == "shell" and json.loads(call["arguments"]) == {"command": ["bash", "-lc", "ls -l"]}


async def test_compact_endpoint(fake, client):
    alice = fake.add_account("alice")
    r = await client.post(RESPONSES + "/compact", headers=auth_headers(alice), json=turn_body("remember me"))
    assert r.status_code == 200
    out = r.json()["output"]
    assert out[-1]["type"] == "compaction" and out[-1]["encrypted_content"]
    assert out[0]["role"] == "user"


async def test_usage_limit_enforced_from_figures(fake, client):
    alice = fake.add_account("alice")
    r = await client.patch("/_fake/accounts/alice", json={"primary_used_percent": 99.5})
    assert r.json()["primary_used_percent"] == 99.5
    resp, _ = await post_turn(client, alice)  # 99.5 -> 100.5
    assert resp.status_code == 200
    resp, body = await post_turn(client, alice)
    assert resp.status_code == 429
    err = body["error"]
    assert err["type"] == "usage_limit_reached" and err["plan_type"] == "plus"
    assert abs(err["resets_at"] - (time.time() + err["resets_in_seconds"])) < 3
    usage = (await client.get("/backend-api/wham/usage", headers=auth_headers(alice))).json()
    assert usage["rate_limit"]["limit_reached"] is True and usage["rate_limit"]["allowed"] is False


# --------------------------------------------------------------------------- faults


async def test_fault_error_answers(fake, client):
    alice = fake.add_account("alice")
    await set_faults(
        client,
        {"account": "alice", "kind": "usage_limit", "resets_in_seconds": 600},
        {"account": "alice", "kind": "usage_not_included"},
        {"account": "alice", "kind": "status", "status": 502, "retry_after": 2, "code": "bad_gateway"},
        {"account": "alice", "kind": "unauthorized"},
    )
    resp, body = await post_turn(client, alice)
    assert resp.status_code == 429
    assert body["error"]["type"] == "usage_limit_reached" and body["error"]["resets_in_seconds"] == 600
    assert resp.headers["x-codex-primary-used-percent"] == "0"
    resp, body = await post_turn(client, alice)
    assert resp.status_code == 429 and body["error"]["type"] == "usage_not_included"
    resp, body = await post_turn(client, alice)
    assert resp.status_code == 502 and resp.headers["retry-after"] == "2"
    assert body["error"] == {"message": "Simulated error 502.", "type": "server_error", "param": None, "code": "bad_gateway"}
    resp, body = await post_turn(client, alice)
    assert resp.status_code == 401 and body["error"]["code"] == "token_invalidated"
    resp, _ = await post_turn(client, alice)  # queue drained
    assert resp.status_code == 200
    log = (await client.get("/_fake/requests", params={"path": RESPONSES})).json()["requests"]
    assert [e["fault"] for e in log] == ["usage_limit", "usage_not_included", "status", "unauthorized", None]
    assert [e["status"] for e in log] == [429, 429, 502, 401, 200]


async def test_fault_stream_kinds(fake, client):
    alice = fake.add_account("alice")
    # failed: a 200 stream ending in response.failed
    await set_faults(client, {"account": "alice", "kind": "failed", "code": "server_error", "message": "boom"})
    resp, events = await post_turn(client, alice)
    assert resp.status_code == 200
    assert [e["type"] for e in events] == ["response.created", "response.failed"]
    assert events[-1]["response"]["error"] == {"code": "server_error", "message": "boom"}

    # cut: K events, then the connection closes without response.completed
    await set_faults(client, {"account": "alice", "kind": "cut", "after": 3})
    got = b""
    with pytest.raises(httpx.RemoteProtocolError):
        async with client.stream("POST", RESPONSES, headers=auth_headers(alice), json=turn_body()) as resp:
            assert resp.status_code == 200
            async for chunk in resp.aiter_bytes():
                got += chunk
    assert [e["type"] for e in parse_sse(got)] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
    ]

    # drop: the connection closes without any answer
    await set_faults(client, {"account": "alice", "kind": "drop"})
    with pytest.raises(httpx.RemoteProtocolError):
        await client.post(RESPONSES, headers=auth_headers(alice), json=turn_body())

    # slow: N seconds between events
    fake.config.update({"deltas": 2})
    await set_faults(client, {"account": "alice", "kind": "slow", "seconds": 0.05})
    t0 = time.monotonic()
    resp, events = await post_turn(client, alice)
    assert time.monotonic() - t0 >= 0.05 * (len(events) - 1) * 0.9
    assert events[-1]["type"] == "response.completed"

    # the cut and failed answers did not count as sent usage
    acct = (await state(client))["accounts"]["alice"]
    assert acct["completed_responses"] == 1 and acct["turns"] == 1
    assert acct["faults_applied"] == 4


async def test_fault_queue_semantics(fake, client):
    alice, bob = fake.add_account("alice"), fake.add_account("bob")
    await set_faults(client, {"kind": "status", "status": 500, "count": -1, "account": "bob"})
    await set_faults(client, {"kind": "status", "status": 503})  # global: the next turn of anyone
    assert (await post_turn(client, alice))[0].status_code == 503
    assert (await post_turn(client, alice))[0].status_code == 200
    for _ in range(3):
        assert (await post_turn(client, bob))[0].status_code == 500
    faults = (await client.get("/_fake/faults")).json()["faults"]
    assert [(f["account"], f["count"]) for f in faults] == [("bob", -1)]
    assert (await client.delete("/_fake/faults")).json() == {"cleared": 1}
    assert (await post_turn(client, bob))[0].status_code == 200
    # ws-only faults are skipped by HTTP turns; unknown kinds are refused
    await set_faults(client, {"kind": "ws_error", "status": 503, "account": "alice"})
    assert (await post_turn(client, alice))[0].status_code == 200
    assert (await client.post("/_fake/faults", json={"kind": "nope"})).status_code == 400


async def test_down_switch_and_config(fake, client):
    alice = fake.add_account("alice")
    cfg = (await client.post("/_fake/config", json={"down": True, "down_retry_after": 1})).json()
    assert cfg["down"] is True
    r = await client.post(RESPONSES, headers=auth_headers(alice), json=turn_body())
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert (await client.post("/oauth/token", json={})).status_code == 503
    assert (await client.get("/_fake/state")).status_code == 200  # control API stays up
    await client.post("/_fake/config", json={"down": False, "deltas": 5})
    _, events = await post_turn(client, alice)
    assert [e["type"] for e in events].count("response.output_text.delta") == 5
    assert (await client.post("/_fake/config", json={"bogus": 1})).status_code == 400


# --------------------------------------------------------------------------- other endpoints


async def test_models_usage_accounts_check_and_404s(fake, client):
    alice = fake.add_account("alice")
    h = auth_headers(alice)
    models = (await client.get("/backend-api/codex/models", params={"client_version": "0.169.0"}, headers=h)).json()
    slugs = [m["slug"] for m in models["models"]]
    assert "gpt-5.1-codex" in slugs
    required = {
        "slug", "display_name", "description", "supported_reasoning_levels", "shell_type", "visibility",
        "supported_in_api", "priority", "upgrade", "base_instructions", "supports_reasoning_summaries",
        "support_verbosity", "default_verbosity", "apply_patch_tool_type", "truncation_policy",
        "supports_parallel_tool_calls", "experimental_supported_tools",
    }  # fmt: skip
    assert all(required <= set(m) for m in models["models"])

    usage = (await client.get("/backend-api/wham/usage", headers=h)).json()
    assert usage["plan_type"] == "plus"
    assert usage["rate_limit"]["primary_window"]["limit_window_seconds"] == 18000
    assert usage["rate_limit"]["secondary_window"]["limit_window_seconds"] == 604800
    assert usage["credits"]["has_credits"] is False

    check = (await client.get("/backend-api/wham/accounts/check", headers=h)).json()
    entry = check["accounts"][0]
    assert entry["id"] == alice["tokens"]["account_id"]
    assert entry["workspace_backend_origin"] == fake.url
    assert entry["account_routing_override"] == "NO_CONSTRAINT"

    for method, path in (
        ("GET", "/backend-api/ps/nothing-here"),
        ("POST", "/backend-api/wham/settings/user"),
        ("GET", "/backend-api/codex/unknown"),
    ):
        r = await client.request(method, path, headers=h)
        assert r.status_code == 404 and r.headers["content-type"] == "application/json"
        assert r.json() == {"detail": "Not Found"}


async def test_request_log(fake, client):
    alice = fake.add_account("alice")
    await client.delete("/_fake/requests")
    headers = {**auth_headers(alice), "Session-Id": "thread-9", "X-Custom": "Kept-As-Sent"}
    raw = json.dumps(turn_body(key="thread-9")).encode()
    answer = await client.post(RESPONSES, headers=headers, content=raw)
    await client.get("/backend-api/ps/unknown?limit=200")
    log = (await client.get("/_fake/requests")).json()["requests"]
    assert [e["kind"] for e in log] == ["http", "http"]
    e = log[0]
    assert e["method"] == "POST" and e["path"] == RESPONSES and e["query"] == ""
    assert ["Session-Id", "thread-9"] in e["headers"] and ["X-Custom", "Kept-As-Sent"] in e["headers"]
    assert e["account"] == "alice" and e["status"] == 200
    assert e["session_id"] == "thread-9" and e["prompt_cache_key"] == "thread-9"
    assert e["seq"] < log[1]["seq"] and e["ts"] <= log[1]["ts"]
    assert e["body_len"] == len(raw) and e["body_sha256"] == hashlib.sha256(raw).hexdigest()
    assert e["response_sha256"] == hashlib.sha256(answer.content).hexdigest()
    assert log[1]["query"] == "limit=200" and log[1]["account"] is None and log[1]["status"] == 404
    since = (await client.get("/_fake/requests", params={"since": e["seq"]})).json()["requests"]
    assert len(since) == 1
    assert (await client.delete("/_fake/requests")).json() == {"cleared": 2}
    assert (await client.get("/_fake/requests")).json()["requests"] == []


# --------------------------------------------------------------------------- WebSocket


async def test_websocket_turns(fake, client):
    alice = fake.add_account("alice")
    ws, status, headers = await WS.connect(fake.url, ws_headers(alice))
    assert status == 101
    assert "x-codex-primary-used-percent" in {k.decode().lower() for k in headers}
    try:
        prewarm = {**turn_body(), "type": "response.create", "generate": False}
        await ws.send(prewarm)
        frames = await ws.recv_response()
        assert [f["type"] for f in frames] == ["response.created", "response.in_progress", "codex.rate_limits", "response.completed"]
        assert frames[-1]["response"]["output"] == []
        assert frames[-1]["response"]["usage"]["output_tokens"] == 0
        prewarm_id = frames[-1]["response"]["id"]

        await ws.send({**turn_body("RUN_TOOL"), "type": "response.create", "previous_response_id": prewarm_id})
        frames = await ws.recv_response()
        call = next(f for f in frames if f["type"] == "response.output_item.done")["item"]
        assert call["type"] == "function_call"
        assert frames[-1]["response"]["usage"]["input_tokens_details"]["cached_tokens"] > 0  # prewarm primed it
        tool_resp_id = frames[-1]["response"]["id"]

        output = {"type": "function_call_output", "call_id": call["call_id"], "output": "tool-ok"}
        await ws.send(
            {**turn_body(), "type": "response.create", "previous_response_id": tool_resp_id, "input": [output]}
        )
        frames = await ws.recv_response()
        assert frames[-1]["type"] == "response.completed"
        assert "tool-ok" in frames[-1]["response"]["output"][0]["content"][0]["text"]

        # a previous_response_id this socket never produced
        await ws.send({**turn_body(), "type": "response.create", "previous_response_id": "resp_elsewhere"})
        frames = await ws.recv_response()
        assert frames[-1]["type"] == "error" and frames[-1]["status"] == 400
        assert frames[-1]["error"]["code"] == "previous_response_not_found"

        # a scripted error frame, then the socket still serves
        await set_faults(client, {"account": "alice", "kind": "ws_error", "status": 503})
        await ws.send({**turn_body(), "type": "response.create"})
        frames = await ws.recv_response()
        assert frames == [frames[0]] and frames[0]["type"] == "error" and frames[0]["status"] == 503
        await set_faults(client, {"account": "alice", "kind": "usage_limit"})
        await ws.send({**turn_body(), "type": "response.create"})
        err = (await ws.recv_response())[-1]
        assert err["status"] == 429 and err["error"]["type"] == "usage_limit_reached"
        assert err["headers"]["x-codex-plan-type"] == "plus"
    finally:
        await ws.close()

    async def logged_with_close():
        entries = (await client.get("/_fake/requests", params={"path": RESPONSES})).json()["requests"]
        return entries if entries and entries[-1]["kind"] == "ws-close" else None

    log = await wait_for_async(logged_with_close, 5, "the server to log the closed socket")
    kinds = [e["kind"] for e in log]
    assert kinds[0] == "ws-upgrade" and kinds.count("ws-msg") == 6 and kinds[-1] == "ws-close"
    upgrade = log[0]
    assert upgrade["status"] == 101 and upgrade["account"] == "alice" and upgrade["session_id"] == "thread-ws"
    msgs = [e for e in log if e["kind"] == "ws-msg"]
    assert msgs[0]["generate"] is False and msgs[1]["previous_response_id"] == prewarm_id
    assert [m["status"] for m in msgs] == [200, 200, 200, 400, 503, 429]
    acct = (await state(client))["accounts"]["alice"]
    assert acct["prewarms"] == 1 and acct["turns"] == 2


async def test_websocket_upgrade_rejections(fake, client):
    alice = fake.add_account("alice")
    _, status, body = await WS.connect(fake.url, {"authorization": "Bearer bad", "chatgpt-account-id": "x"})
    assert status == 401 and body["error"]["code"] == "invalid_token"
    await client.post("/_fake/config", json={"websocket": False})
    _, status, _ = await WS.connect(fake.url, ws_headers(alice))
    assert status == 426
    await client.post("/_fake/config", json={"websocket": True})
    await set_faults(client, {"account": "alice", "kind": "usage_limit", "match": "ws-upgrade"})
    _, status, body = await WS.connect(fake.url, ws_headers(alice))
    assert status == 429 and body["error"]["type"] == "usage_limit_reached"
    ws, status, _ = await WS.connect(fake.url, ws_headers(alice), deflate=False)
    assert status == 101
    await set_faults(client, {"account": "alice", "kind": "cut", "after": 2})
    await ws.send({**turn_body(), "type": "response.create"})
    frames = await ws.recv_response()
    assert [f["type"] for f in frames] == ["response.created", "response.in_progress"]  # then closed
    await ws.close()


# --------------------------------------------------------------------------- CLI


def test_cli_pool_dir_and_sigterm(tmp_path):
    pool = tmp_path / "pool"
    proc = subprocess.Popen(
        [sys.executable, str(CLI), "--names", "alice,bob", "--pool-dir", str(pool), "--plan", "team"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = []
        while True:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            lines.append(line)
            if "listening at" in line:
                break
        url = line.strip().rsplit(" ", 1)[1]
        assert line.startswith("fake-chatgpt listening at http://127.0.0.1:")
        assert stat.S_IMODE(pool.stat().st_mode) == 0o700
        for name in ("alice", "bob"):
            f = pool / f"{name}.json"
            assert stat.S_IMODE(f.stat().st_mode) == 0o600
            auth = json.loads(f.read_text())
            assert auth["tokens"]["access_token"] not in "".join(lines)  # never printed
        st = httpx.get(url + "/_fake/state").json()
        assert set(st["accounts"]) == {"alice", "bob"} and st["accounts"]["bob"]["plan"] == "team"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)
    assert proc.returncode == 0


# --------------------------------------------------------------------------- the real Codex CLI


def _codex_binary() -> str | None:
    found = sorted(glob.glob(CODEX_GLOB))
    return found[0] if found else None


@pytest.mark.client
@pytest.mark.skipif(_codex_binary() is None, reason="Codex CLI 0.169.0 not installed")
async def test_real_codex_cli_turn_resume_and_tool(fake, client, tmp_path):
    """Custom-provider mode (plain http) against the fake: a turn, a resume, a tool round trip."""
    auth = fake.add_account("alice")
    home = tmp_path / "codex-home"
    home.mkdir()
    (home / "auth.json").write_text(json.dumps(auth))
    os.chmod(home / "auth.json", 0o600)
    (home / "config.toml").write_text(
        f'model = "gpt-5.1-codex"\n'
        f'model_provider = "fake"\n'
        f'chatgpt_base_url = "{fake.url}/backend-api/"\n'
        f"[model_providers.fake]\n"
        f'name = "fake"\n'
        f'base_url = "{fake.url}/backend-api/codex"\n'
        f'wire_api = "responses"\n'
        f"requires_openai_auth = true\n"
    )
    work = tmp_path / "work"
    work.mkdir()
    env = {
        **os.environ,
        "CODEX_HOME": str(home),
        "CODEX_REFRESH_TOKEN_URL_OVERRIDE": f"{fake.url}/oauth/token",
    }
    env.pop("OPENAI_API_KEY", None)

    async def codex(*args: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            _codex_binary(), "exec", "--skip-git-repo-check", *args,
            cwd=work, env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()[-3000:]
        return out.decode()

    assert (await codex("say hi")).strip() == "Answer from fake account alice."
    assert (await codex("resume", "--last", "again")).strip() == "Answer from fake account alice."
    out = await codex("RUN_TOOL please")
    assert out.startswith("Answer from fake account alice. Tool output:") and "tool-ok" in out

    turns = [
        e
        for e in (await client.get("/_fake/requests", params={"path": RESPONSES})).json()["requests"]
        if e["method"] == "POST"
    ]
    assert len(turns) == 4 and all(e["status"] == 200 and e["account"] == "alice" for e in turns)
    # resume keeps the thread id; the tool follow-up echoes x-codex-turn-state
    assert turns[0]["prompt_cache_key"] == turns[1]["prompt_cache_key"] == turns[0]["session_id"]
    assert any(h[0] == "x-codex-turn-state" for h in turns[3]["headers"])
    acct = (await state(client))["accounts"]["alice"]
    assert acct["turns"] == 4 and acct["cache_hits"] >= 2


# --------------------------------------------------------------------------- backend rules (rules.py)

# requests recorded from the real Codex CLI 0.169.0 (a copy of the workplace's shared fixtures, so a
# clean clone has them)
FIXTURES = REPO / "tests" / "fixtures" / "codex-0.169.0"


def _recorded_model_requests() -> list[tuple[str, str, dict, dict]]:
    """(file, transport, body, headers) of every model request recorded from the real Codex 0.169.0."""
    out = []
    for path in sorted(FIXTURES.glob("*.jsonl")):
        upgrade_headers: dict = {}
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            headers = {k.lower(): v for k, v in rec.get("headers") or []}
            if rec["kind"] == "ws-upgrade":
                upgrade_headers = headers
            body = rec.get("body")
            if not isinstance(body, dict) or "input" not in body:
                continue
            if rec["kind"] == "http" and rec["path"].split("?")[0] == RESPONSES and rec["method"] == "POST":
                out.append((path.name, "http", body, headers))
            elif rec["kind"] == "ws-msg" and body.get("type") == "response.create":
                out.append((path.name, "ws", body, upgrade_headers))
    return out


def test_rules_pass_every_recorded_codex_request():
    """Codex's own requests (HTTP turns, WebSocket prewarm `generate:false`, chained turns with
    previous_response_id) must pass every rule: by body alone, and with the headers they came with."""
    from fake_chatgpt import models, rules

    recorded = _recorded_model_requests()
    assert len(recorded) >= 10 and {t for _, t, _, _ in recorded} == {"http", "ws"}
    assert any(b.get("generate") is False for _, _, b, _ in recorded)  # the prewarm frame is among them
    for name, transport, body, headers in recorded:
        for h in (None, headers):
            v = rules.check(body, transport=transport, headers=h, known_models=models.slugs())
            assert v is None, f"{name} ({transport}) refused: {v}"


async def test_recorded_codex_http_bodies_are_served(fake, client):
    alice = fake.add_account("alice")
    bodies = [b for _, t, b, _ in _recorded_model_requests() if t == "http"]
    for body in bodies:  # as recorded: no originator header here, the body alone must pass
        resp, events = await post_turn(client, alice, body)
        assert resp.status_code == 200 and events[-1]["type"] == "response.completed"


def _bare(**changes) -> dict:
    """A third-party client's body (no Codex metadata), valid until `changes` break it; None deletes."""
    body = turn_body()
    for k, v in changes.items():
        if v is None:
            body.pop(k, None)
        else:
            body[k] = v
    return body


CHAT_TOOL = {"type": "function", "function": {"name": "bash", "parameters": {"type": "object", "properties": {}}}}

RULE_CASES = [
    # (id, body, status, HTTP answer)
    ("instructions-missing", _bare(instructions=None), 400, {"detail": "Instructions are required"}),
    ("store-true", _bare(store=True), 400, {"detail": "Store must be set to false"}),
    ("store-missing", _bare(store=None), 400, {"detail": "Store must be set to false"}),
    ("stream-false", _bare(stream=False), 400, {"detail": "Stream must be set to true"}),
    ("stream-missing", _bare(stream=None), 400, {"detail": "Stream must be set to true"}),
    *[
        (f"param-{p}", _bare(**{p: v}), 400, {"detail": f"Unsupported parameter: {p}"})
        for p, v in [
            ("max_output_tokens", 1024), ("max_tokens", 10), ("max_completion_tokens", 10), ("temperature", 0.2),
            ("top_p", 0.9), ("top_logprobs", 2), ("max_tool_calls", 3), ("truncation", "auto"),
            ("metadata", {"a": "b"}), ("user", "u-1"), ("safety_identifier", "s"),
            ("prompt_cache_retention", "24h"), ("background", False), ("previous_response_id", "resp_1"),
        ]
    ],
    ("service_tier-flex", _bare(service_tier="flex"), 400,
     {"error": {"message": "Unsupported service_tier: flex", "type": "invalid_request_error"}}),
    ("model-unknown", _bare(model="gpt-4o"), 400,
     {"detail": "The 'gpt-4o' model is not supported when using Codex with a ChatGPT account."}),
    ("system-message", _bare(input=[{"type": "message", "role": "system", "content": "x"}, user_msg("hi")]), 400,
     {"detail": "System messages are not allowed"}),
    ("chat-style-tool", _bare(tools=[EXEC_TOOL, CHAT_TOOL]), 400,
     {"error": {"message": "Missing required parameter: 'tools[1].name'.", "type": "invalid_request_error",
                "param": "tools[1].name", "code": "missing_required_parameter"}}),
]  # fmt: skip


@pytest.mark.parametrize("case", RULE_CASES, ids=[c[0] for c in RULE_CASES])
async def test_rule_strict_then_lenient(fake, client, case):
    _, body, status, answer = case
    alice = fake.add_account("alice")
    resp, got = await post_turn(client, alice, body)
    assert (resp.status_code, got) == (status, answer)
    log = (await client.get("/_fake/requests", params={"path": RESPONSES})).json()["requests"]
    assert log[-1]["status"] == status and log[-1]["rule"]
    st = (await state(client))["accounts"]["alice"]
    assert st["turns"] == 0 and st["primary_used_percent"] == 0  # nothing generated, nothing counted
    assert (await client.post("/_fake/config", json={"lenient": True})).json()["lenient"] is True
    resp, events = await post_turn(client, alice, body)
    assert resp.status_code == 200 and events[-1]["type"] == "response.completed"


async def test_rules_accept_what_the_reports_accept(fake, client):
    alice = fake.add_account("alice")
    for body in (
        _bare(instructions=""),  # empty instructions pass (icebear0828/codex-proxy#112)
        _bare(service_tier="priority"),  # Codex's Fast mode
        _bare(input="just a string"),
        _bare(text={"verbosity": "low"}, include=["reasoning.encrypted_content"]),
        _bare(instructions=None, client_metadata={"x-codex-installation-id": "i-1"}),  # Codex's own
    ):
        resp, events = await post_turn(client, alice, body)
        assert resp.status_code == 200, (body, events)
    resp, _ = await post_turn(client, alice, _bare(instructions=None), headers={"originator": "codex_cli_rs"})
    assert resp.status_code == 200


async def test_rules_come_after_auth_and_before_faults(fake, client):
    alice = fake.add_account("alice")
    bad = {**auth_headers(alice), "authorization": "Bearer nope"}
    r = await client.post(RESPONSES, headers=bad, json=_bare(store=True))
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_token"
    await set_faults(client, {"account": "alice", "kind": "status", "status": 503})
    resp, got = await post_turn(client, alice, _bare(temperature=1))
    assert resp.status_code == 400 and got == {"detail": "Unsupported parameter: temperature"}
    assert len((await client.get("/_fake/faults")).json()["faults"]) == 1  # the fault is still queued
    resp, _ = await post_turn(client, alice)
    assert resp.status_code == 503


async def test_rules_over_websocket(fake, client):
    alice = fake.add_account("alice")
    headers = {k: v for k, v in ws_headers(alice).items() if k != "originator"}  # a third-party client
    ws, status, _ = await WS.connect(fake.url, headers)
    assert status == 101
    try:
        await ws.send({**_bare(instructions=None), "type": "response.create", "generate": False})
        frames = await ws.recv_response()
        assert frames == [{"type": "error", "status": 400,
                           "error": {"type": "invalid_request_error", "message": "Instructions are required"}}]
        await ws.send({**_bare(service_tier="fast"), "type": "response.create"})
        assert (await ws.recv_response())[-1]["error"] == {
            "message": "Unsupported service_tier: fast", "type": "invalid_request_error"}
        await ws.send({**_bare(tools=[CHAT_TOOL]), "type": "response.create"})
        assert (await ws.recv_response())[-1]["error"]["param"] == "tools[0].name"
        # the socket still serves; previous_response_id is WebSocket chaining, not refused here
        await ws.send({**_bare(), "type": "response.create"})
        frames = await ws.recv_response()
        assert frames[-1]["type"] == "response.completed"
        prev = frames[-1]["response"]["id"]
        await ws.send({**_bare(), "type": "response.create", "previous_response_id": prev})
        assert (await ws.recv_response())[-1]["type"] == "response.completed"
        await client.post("/_fake/config", json={"lenient": True})
        await ws.send({**_bare(instructions=None, store=True), "type": "response.create"})
        assert (await ws.recv_response())[-1]["type"] == "response.completed"
    finally:
        await ws.close()
    msgs = [e for e in (await client.get("/_fake/requests", params={"kind": "ws-msg"})).json()["requests"]]
    assert [m.get("rule") for m in msgs][:3] == ["instructions", "service_tier", "tool_shape"]
    # Codex itself (originator codex_*) needs no instructions over WebSocket either
    ws, _, _ = await WS.connect(fake.url, ws_headers(alice))
    try:
        await client.post("/_fake/config", json={"lenient": False})
        await ws.send({**_bare(instructions=None), "type": "response.create"})
        assert (await ws.recv_response())[-1]["type"] == "response.completed"
    finally:
        await ws.close()


# --------------------------------------------------------------------------- side requests (side.py)


async def test_side_endpoints(fake, client):
    alice = fake.add_account("alice")
    h = auth_headers(alice)
    expected = {
        ("GET", "/backend-api/ps/plugins/installed?limit=200"): {"plugins": [], "pagination": {"limit": 200, "next_page_token": None}},
        ("GET", "/backend-api/ps/plugins/installed?limit=200&includeDownloadUrls=true"): {"plugins": [], "pagination": {"limit": 200, "next_page_token": None}},
        ("GET", "/backend-api/ps/plugins/list?scope=GLOBAL&limit=50"): {"plugins": [], "pagination": {"limit": 50, "next_page_token": None}},
        ("GET", "/backend-api/ps/plugins/suggested/codex?scope=GLOBAL"): {"enabled": True, "plugins": []},
        ("GET", "/backend-api/plugins/featured?platform=codex"): [],
        ("GET", "/backend-api/wham/settings/user"): {"commit_attribution_enabled": False},
        ("GET", "/backend-api/wham/security-setup"): {"notice": None},
        ("GET", "/backend-api/wham/workspace-messages"): {"messages": []},
        ("POST", "/backend-api/codex/analytics-events/events"): {"status": "ok"},
    }  # fmt: skip
    for (method, path), answer in expected.items():
        r = await client.request(method, path, headers=h, json={"events": []} if method == "POST" else None)
        assert (r.status_code, r.json()) == (200, answer), path
        r = await client.request(method, path)  # these want the account's token like the rest
        assert r.status_code == 401, path

    # the apps MCP server: answered without a token (Codex sends none off chatgpt.com)
    mcp = "/backend-api/ps/mcp"
    init = {"jsonrpc": "2.0", "id": 0, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}  # fmt: skip
    r = await client.post(mcp, json=init)
    assert r.status_code == 200
    result = r.json()["result"]
    assert r.json()["id"] == 0 and result["protocolVersion"] == "2025-06-18" and "tools" in result["capabilities"]
    r = await client.post(mcp, json={"jsonrpc": "2.0", "method": "notifications/initialized"})
    assert r.status_code == 202 and r.content == b""
    r = await client.post(mcp, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    assert r.json() == {"jsonrpc": "2.0", "id": 1, "result": {"tools": [], "nextCursor": None}}
    r = await client.post(mcp, json={"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {}})
    assert r.json()["error"]["code"] == -32601
    r = await client.post(mcp, json=[{"jsonrpc": "2.0", "id": 3, "method": "ping"},
                                     {"jsonrpc": "2.0", "method": "notifications/x"}])  # fmt: skip
    assert r.json() == [{"jsonrpc": "2.0", "id": 3, "result": {}}]
    r = await client.post(mcp, content=b"{not json")
    assert r.status_code == 400 and r.json()["error"]["code"] == -32700

    r = await client.get("/backend-api/ps/plugins/someplugin", headers=h)  # unknown paths stay 404
    assert r.status_code == 404 and r.json() == {"detail": "Not Found"}
    log = (await client.get("/_fake/requests", params={"path": mcp})).json()["requests"]
    assert log and all(e["side"] for e in log)


# --------------------------------------------------------------------------- tool calls and structured output


OPENCODE_TOOLS = [
    {"type": "function", "name": "read", "strict": False, "parameters": {
        "type": "object", "additionalProperties": False, "required": ["filePath"],
        "properties": {"filePath": {"type": "string"}, "offset": {"type": "number"}, "limit": {"type": "number"}}}},
    {"type": "function", "name": "bash", "strict": False, "parameters": {
        "type": "object", "additionalProperties": False, "required": ["command", "description"],
        "properties": {"command": {"type": "string"}, "timeout": {"type": "number"},
                       "description": {"type": "string"}}}},
    {"type": "function", "name": "todowrite", "strict": True, "parameters": {
        "type": "object", "additionalProperties": False, "required": ["todos", "mode", "count", "done"],
        "properties": {
            "todos": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/todo"}},
            "mode": {"type": "string", "enum": ["replace", "append"]},
            "count": {"type": "integer", "minimum": 2},
            "done": {"type": "boolean"}},
        "$defs": {"todo": {"type": "object", "required": ["content", "priority"], "additionalProperties": False,
                           "properties": {"content": {"type": "string"},
                                          "priority": {"anyOf": [{"type": "null"}, {"enum": ["high", "low"]}]}}}}}},
]  # fmt: skip


async def _call(client, auth, text, tools) -> dict:
    resp, events = await post_turn(client, auth, turn_body(text, tools=tools))
    assert resp.status_code == 200, events
    return next(e for e in events if e["type"] == "response.output_item.done")["item"]


async def test_tool_calls_for_any_client(fake, client):
    from fake_chatgpt import schemas

    alice = fake.add_account("alice")
    by_name = {t["name"]: t for t in OPENCODE_TOOLS}

    def valid(call):
        args = json.loads(call["arguments"])
        assert schemas.errors(args, by_name[call["name"]]["parameters"]) == [], (call["name"], args)
        return args

    call = await _call(client, alice, "RUN_TOOL", OPENCODE_TOOLS)  # no Codex shell tool: the shell-like one
    assert call["name"] == "bash" and valid(call)["command"] == "echo tool-ok"
    call = await _call(client, alice, "RUN_TOOL: ls -la", OPENCODE_TOOLS)
    assert call["name"] == "bash" and valid(call)["command"] == "ls -la"
    call = await _call(client, alice, "RUN_TOOL:bash pwd", OPENCODE_TOOLS)
    assert call["name"] == "bash" and valid(call)["command"] == "pwd"
    call = await _call(client, alice, "RUN_TOOL:read", OPENCODE_TOOLS)
    assert call["name"] == "read" and valid(call) == {"filePath": "tool-ok"}
    call = await _call(client, alice, "RUN_TOOL:todowrite", OPENCODE_TOOLS)
    args = valid(call)
    assert args == {"todos": [{"content": "tool-ok", "priority": "high"}], "mode": "replace", "count": 2, "done": True}
    call = await _call(client, alice, "RUN_TOOL", [by_name["read"], by_name["todowrite"]])  # nothing shell-like
    assert call["name"] == "read" and valid(call)
    call = await _call(client, alice, "RUN_TOOL", [by_name["bash"], EXEC_TOOL])  # Codex's own shell tool first
    assert call["name"] == "exec_command" and json.loads(call["arguments"]) == {"cmd": "echo tool-ok"}
    call = await _call(client, alice, "RUN_TOOL", [{"type": "local_shell"}])
    assert call["type"] == "local_shell_call" and call["action"]["command"] == ["bash", "-lc", "echo tool-ok"]
    call = await _call(client, alice, "RUN_TOOL", [])  # none offered: Codex 0.169.0's default name
    assert call["name"] == "exec_command"


async def test_structured_output(fake, client):
    from fake_chatgpt import schemas

    alice = fake.add_account("alice")
    schema = {
        "type": "object", "additionalProperties": False, "required": ["answer", "score", "tags", "nested", "kind"],
        "properties": {
            "answer": {"type": "string"}, "score": {"type": "number"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "nested": {"type": "object", "required": ["ok"], "properties": {"ok": {"type": "boolean"}}},
            "kind": {"type": "string", "enum": ["a", "b"]}},
    }  # fmt: skip
    fmt = {"type": "json_schema", "name": "out", "schema": schema, "strict": True}
    _, events = await post_turn(client, alice, _bare(text={"format": fmt}))
    text = events[-1]["response"]["output"][0]["content"][0]["text"]
    value = json.loads(text)
    assert schemas.errors(value, schema) == []
    assert value == {"answer": "fake", "score": 1, "tags": ["fake"], "nested": {"ok": True}, "kind": "a"}
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert deltas == text

    _, events = await post_turn(client, alice, _bare(text={"format": {"type": "json_object"}}))
    value = json.loads(events[-1]["response"]["output"][0]["content"][0]["text"])
    assert value == {"message": "Answer from fake account alice."}
    _, events = await post_turn(client, alice, _bare(text={"format": {"type": "text"}}))
    assert events[-1]["response"]["output"][0]["content"][0]["text"] == "Answer from fake account alice."


def test_cli_lenient_switch_and_rules_in_help(tmp_path):
    helped = subprocess.run([sys.executable, str(CLI), "--help"], check=False, capture_output=True, text=True, timeout=30)
    assert helped.returncode == 0
    for needle in ("--lenient", "Instructions are required", "Store must be set to false", "langwatch/langwatch#7507",
                   "Unsupported parameter: <name>", "/backend-api/ps/mcp", "RUN_TOOL:<name>"):
        assert needle in helped.stdout, needle
    proc = subprocess.Popen(
        [sys.executable, str(CLI), "--names", "alice", "--lenient"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = ""
        while "listening at" not in line:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
        url = line.strip().rsplit(" ", 1)[1]
        assert httpx.get(url + "/_fake/config").json()["lenient"] is True
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)
