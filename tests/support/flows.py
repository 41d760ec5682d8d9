"""What an e2e test sends through the proxy as a client, and how it reads the answers back."""

from __future__ import annotations

import json
from typing import Any

import httpx
from websockets.sync.client import connect

from tests.support.procs import FakeBackend, Proxy

CLIENT_TOKEN = "client-own-token-must-never-reach-upstream"
RESPONSES = "/backend-api/codex/responses"
# Codex names itself on every request (its body then passes the proxy byte-for-byte, and the
# backend does not ask it for `instructions`: Codex 0.169.0 sends none)
CODEX_HEADERS = {"originator": "codex_exec", "user-agent": "codex_exec/0.169.0 (Debian 12.0.0; x86_64) xterm"}


def turn_body(key: str | None = "conv-1", text: str = "hello") -> dict:
    body: dict[str, Any] = {
        "model": "gpt-5.1-codex",
        "stream": True,
        "store": False,
        "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}],
    }
    if key:
        body["prompt_cache_key"] = key
    return body


def turn(proxy: Proxy, key: str | None, *, headers: dict | None = None, body: bytes | None = None) -> httpx.Response:
    """One SSE turn as Codex sends it (client token, session-id = key); redirects not followed."""
    h = {"authorization": f"Bearer {CLIENT_TOKEN}", "accept": "text/event-stream", "content-type": "application/json",
         **CODEX_HEADERS}
    if key:
        h["session-id"] = key
    h.update(headers or {})
    data = body if body is not None else json.dumps(turn_body(key)).encode()
    return proxy.http.post(RESPONSES, content=data, headers=h)


def redirecting_client(proxy: Proxy) -> httpx.Client:
    """A client that follows the proxy's failover redirects, as Codex and the openai SDK do."""
    return httpx.Client(base_url=proxy.url, follow_redirects=True, timeout=30, trust_env=False)


def completed_event(text: str) -> dict:
    for block in text.split("\n\n"):
        for line in block.splitlines():
            if line.startswith("data:") and '"response.completed"' in line:
                return json.loads(line[5:])
    raise AssertionError(f"no response.completed in {text[:500]!r}")


def ws_turns(proxy: Proxy, key: str, n: int = 1, headers: dict | None = None) -> list[list[dict]]:
    """`n` turns on one WebSocket; each turn's frames up to response.completed, response.failed or
    error (after which no further turn is sent)."""
    h = {"authorization": f"Bearer {CLIENT_TOKEN}", "session-id": key, **CODEX_HEADERS, **(headers or {})}
    turns: list[list[dict]] = []
    with connect(f"ws://127.0.0.1:{proxy.port}{RESPONSES}", additional_headers=h, open_timeout=10) as ws:
        for i in range(n):
            ws.send(json.dumps({"type": "response.create", **turn_body(key, f"turn {i}")}))
            frames: list[dict] = []
            while not frames or frames[-1].get("type") not in ("response.completed", "error", "response.failed"):
                frames.append(json.loads(ws.recv(timeout=10)))
            turns.append(frames)
            if frames[-1]["type"] != "response.completed":
                break
    return turns


def served_by(backend: FakeBackend) -> list[str | None]:
    """The account of every model turn upstream saw, in order."""
    return [r["account"] for r in backend.requests() if r["path"].startswith(RESPONSES)]


def admin_accounts(proxy: Proxy) -> dict[str, dict]:
    """/admin/accounts rows by account name."""
    return {a["name"]: a for a in proxy.http.get("/admin/accounts").json()["accounts"]}


def usage_by_account(proxy: Proxy) -> dict[str, dict]:
    """/admin/usage rows by account: the ledger, records not yet flushed included."""
    return {row["account"]: row for row in proxy.http.get("/admin/usage", params={"group": "account"}).json()["rows"]}
