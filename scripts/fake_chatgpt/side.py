"""Side requests Codex 0.169.0 makes besides model turns (plugins, apps MCP, settings, analytics),
answered plausibly instead of 404. Pure: each answer is (status, JSON body or None).

Shapes, and where they are known from:
- `GET /ps/plugins/installed|list|workspace/created|workspace/shared` → `{"plugins": [],
  "pagination": {"limit": N, "next_page_token": null}}`: openai/codex
  codex-rs/core-plugins/src/remote.rs (`RemotePluginInstalledResponse` / `RemotePluginListResponse`:
  `plugins` + `pagination.next_page_token`); `limit` echoes the query (as another peer's stub does).
- `GET /ps/plugins/suggested/codex` → `{"enabled": true, "plugins": []}`: openai/codex's own test
  stub for that path (`enabled` + `plugins`).
- `GET /plugins/featured` → `[]` (empty plugin list; a peer's stub, shape otherwise unknown).
- `POST /ps/mcp` (Codex's hosted apps MCP server, JSON-RPC over streamable HTTP, protocol
  2025-06-18): `initialize` → `{protocolVersion (echoed), capabilities: {tools: {listChanged:
  false}}, serverInfo}`, `notifications/*` → 202 without body, `tools/list` → `{tools: [],
  nextCursor: null}`, `resources/list`, `resources/templates/list`, `prompts/list` → empty lists,
  `ping` → `{}`, anything else → JSON-RPC error -32601; a batch (list) gets a list. As openai/codex's
  `AppsTestServer` (core/tests/common) answers, with no tools. Codex sends no Authorization to it
  when the base URL is not chatgpt.com (recorded fixtures), so it is answered without auth.
- `GET /wham/settings/user` → `{"commit_attribution_enabled": false}`: openai/codex cli tests.
- `GET /wham/security-setup` → `{"notice": null}` (no reminder): openai/codex
  tui/src/security_setup.rs reads an optional `notice`. (Codex only asks chatgpt.com for it.)
- `GET /wham/workspace-messages` → `{"messages": []}` (`messages?: CodexWorkspaceMessage[]`).
- `POST /codex/analytics-events/events` → `{"status": "ok"}`: openai/codex app-server tests.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs

BACKEND = "/backend-api"
MCP_PATH = BACKEND + "/ps/mcp"

PLUGIN_PAGES = {
    BACKEND + "/ps/plugins/installed",
    BACKEND + "/ps/plugins/list",
    BACKEND + "/ps/plugins/workspace/created",
    BACKEND + "/ps/plugins/workspace/shared",
}

MCP_SERVER_INFO = {"name": "fake-chatgpt-apps", "version": "0.169.0-fake"}
MCP_PROTOCOL = "2025-06-18"

# (path, method) -> what the answer is, for the README and the tests
ROUTES: dict[tuple[str, str], str] = {
    **{(p, "GET"): '{"plugins":[],"pagination":{"limit":N,"next_page_token":null}}' for p in sorted(PLUGIN_PAGES)},
    (BACKEND + "/ps/plugins/suggested/codex", "GET"): '{"enabled":true,"plugins":[]}',
    (BACKEND + "/plugins/featured", "GET"): "[]",
    (MCP_PATH, "POST"): "JSON-RPC: initialize, tools/list (empty), notifications → 202",
    (BACKEND + "/wham/settings/user", "GET"): '{"commit_attribution_enabled":false}',
    (BACKEND + "/wham/security-setup", "GET"): '{"notice":null}',
    (BACKEND + "/wham/workspace-messages", "GET"): '{"messages":[]}',
    (BACKEND + "/codex/analytics-events/events", "POST"): '{"status":"ok"}',
}


def is_side(path: str, method: str) -> bool:
    return (path, method) in ROUTES


def needs_auth(path: str) -> bool:
    return path != MCP_PATH


def answer(path: str, method: str, query: str, body: bytes) -> tuple[int, Any]:
    """(status, JSON body; None = no body) of one side request."""
    if path in PLUGIN_PAGES:
        q = parse_qs(query)
        try:
            limit = int(q.get("limit", ["200"])[-1])
        except ValueError:
            limit = 200
        return 200, {"plugins": [], "pagination": {"limit": limit, "next_page_token": None}}
    if path == BACKEND + "/ps/plugins/suggested/codex":
        return 200, {"enabled": True, "plugins": []}
    if path == BACKEND + "/plugins/featured":
        return 200, []
    if path == MCP_PATH:
        return mcp(body)
    if path == BACKEND + "/wham/settings/user":
        return 200, {"commit_attribution_enabled": False}
    if path == BACKEND + "/wham/security-setup":
        return 200, {"notice": None}
    if path == BACKEND + "/wham/workspace-messages":
        return 200, {"messages": []}
    if path == BACKEND + "/codex/analytics-events/events":
        return 200, {"status": "ok"}
    return 404, {"detail": "Not Found"}


def _rpc(message: Any) -> dict | None:
    """The answer to one JSON-RPC message; None for a notification (no answer)."""
    if not isinstance(message, dict) or not isinstance(message.get("method"), str):
        return {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "Invalid Request"}}
    method, mid = message["method"], message.get("id")
    if "id" not in message or method.startswith("notifications/"):
        return None
    params = message.get("params") if isinstance(message.get("params"), dict) else {}
    if method == "initialize":
        version = params.get("protocolVersion") if isinstance(params.get("protocolVersion"), str) else MCP_PROTOCOL
        result: dict = {
            "protocolVersion": version,
            "capabilities": {"tools": {"listChanged": False}},
            "serverInfo": MCP_SERVER_INFO,
        }
    elif method == "tools/list":
        result = {"tools": [], "nextCursor": None}
    elif method == "resources/list":
        result = {"resources": [], "nextCursor": None}
    elif method == "resources/templates/list":
        result = {"resourceTemplates": [], "nextCursor": None}
    elif method == "prompts/list":
        result = {"prompts": [], "nextCursor": None}
    elif method == "ping":
        result = {}
    else:
        return {"jsonrpc": "2.0", "id": mid, "error": {"code": -32601, "message": f"method not found: {method}"}}
    return {"jsonrpc": "2.0", "id": mid, "result": result}


def mcp(body: bytes) -> tuple[int, Any]:
    try:
        message = json.loads(body) if body else None
    except ValueError:
        return 400, {"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "Parse error"}}
    if isinstance(message, list):
        answers = [a for a in (_rpc(m) for m in message) if a is not None]
        return (200, answers) if answers else (202, None)
    reply = _rpc(message)
    return (202, None) if reply is None else (200, reply)
