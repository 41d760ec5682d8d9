"""Endpoints the proxy answers itself on its listener; they are never forwarded upstream.

- `GET /healthz`: 200 with counts while at least one account is usable, else 503 with the reason.
- `GET /admin/accounts`: every pool file with its state; never a token.
- `POST /admin/reload`: re-read the pool folder now.
- `POST /admin/accounts/<name>/pin|unpin|disable|enable`: steer one account.
- `GET /metrics`: Prometheus text format (same access rule as /admin/*).
- `GET /admin/usage?since=…&until=…&group=account|day|model`: the usage ledger, as scripts/usage-report --json.

Admin endpoints answer loopback clients only, unless `admin_token` is set in mitm.yaml; then
they require `Authorization: Bearer <admin_token>` from everyone.
"""

from __future__ import annotations

import hmac
import ipaddress
import time
from typing import TYPE_CHECKING

from mitmproxy import http

from codex_pool.core.client_home import PLACEHOLDER_ACCOUNT_ID, placeholder_client_auth
from codex_pool.core.bodies import error_body, json_body
from codex_pool.core.metrics import CONTENT_TYPE
from codex_pool.core.paths import ACCOUNTS_CHECK, HEALTH, METRICS, TOKEN, bare

if TYPE_CHECKING:
    from codex_pool.mitm.addon import CodexPool

def _reply(flow: http.HTTPFlow, status: int, body: bytes) -> None:
    flow.response = http.Response.make(status, body, {"content-type": "application/json", "cache-control": "no-store"})


def _is_loopback(flow: http.HTTPFlow) -> bool:
    try:
        ip = ipaddress.ip_address(flow.client_conn.peername[0])
    except (TypeError, ValueError, IndexError):
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def admin_allowed(flow: http.HTTPFlow, admin_token: str | None, given: str = "") -> str | None:
    """None when allowed, else the reason to refuse. `given` is the request's Authorization value."""
    if admin_token:
        expected = f"Bearer {admin_token}"
        if hmac.compare_digest(given.encode(), expected.encode()):
            return None
        return "admin endpoints need 'Authorization: Bearer <admin_token>' (admin_token in mitm.yaml)"
    if _is_loopback(flow):
        return None
    return "admin endpoints answer loopback clients only; set admin_token in mitm.yaml to allow others"


async def answer(addon: CodexPool, flow: http.HTTPFlow) -> None:
    path = bare(flow.request.path)
    method = flow.request.method.upper()
    given_auth = flow.request.headers.get("authorization", "")
    for name in ("authorization", "cookie"):  # keep client and admin secrets out of stored flows
        if name in flow.request.headers:
            flow.request.headers[name] = "[redacted]"
    now = time.time()
    registry = addon.registry
    if path == HEALTH:
        if method not in ("GET", "HEAD"):
            return _reply(flow, 405, error_body("method_not_allowed", "method_not_allowed", "use GET /healthz"))
        usable = registry.usable_names(now)
        counts = {
            "accounts": len(registry.accounts),
            "usable": len(usable),
            "invalid_files": len(registry.problems),
            "duplicates": len(registry.duplicates),
            "sticky_conversations": len(addon.router.sticky),
        }
        if usable:
            return _reply(flow, 200, json_body({"status": "ok", **counts}))
        return _reply(flow, 503, json_body({"status": "unavailable", "reason": addon.router.unavailable(now).message, **counts}))

    if path == ACCOUNTS_CHECK:
        return _reply(flow, 200, json_body(workspace_routing(flow)))
    if path == TOKEN:
        if method != "POST":
            return _reply(flow, 405, error_body("method_not_allowed", "method_not_allowed", "use POST /oauth/token"))
        return _reply(flow, 200, json_body(client_refresh_answer()))
    refused = admin_allowed(flow, addon.config.admin_token if addon.config else None, given_auth)
    if refused:
        return _reply(flow, 403, error_body("forbidden", "admin_forbidden", refused))
    if path == METRICS:
        if method not in ("GET", "HEAD"):
            return _reply(flow, 405, error_body("method_not_allowed", "method_not_allowed", "use GET /metrics"))
        flow.response = http.Response.make(200, addon.metrics.render(), {"content-type": CONTENT_TYPE})
        return
    if path == "/admin/accounts":
        if method != "GET":
            return _reply(flow, 405, error_body("method_not_allowed", "method_not_allowed", "use GET /admin/accounts"))
        rows = registry.describe(now, addon.router.sticky.counts(now))
        return _reply(flow, 200, json_body({"policy": addon.router.policy, "pinned": addon.router.pinned, "accounts": rows}))
    if path == "/admin/reload":
        if method != "POST":
            return _reply(flow, 405, error_body("method_not_allowed", "method_not_allowed", "use POST /admin/reload"))
        scan = await addon.rescan()
        return _reply(
            flow,
            200,
            json_body(
                {
                    "accounts": len(registry.accounts),
                    "usable": len(registry.usable_names(time.time())),
                    "added": scan.added,
                    "updated": scan.updated,
                    "removed": scan.removed,
                    "invalid": {p.path.name: p.reason for p in registry.problems.values()},
                }
            ),
        )
    if path == "/admin/usage":
        if method != "GET":
            return _reply(flow, 405, error_body("method_not_allowed", "method_not_allowed", "use GET /admin/usage"))
        try:
            report = await addon.usage_report(
                flow.request.query.get("since"), flow.request.query.get("until"), flow.request.query.get("group", "account"))
        except ValueError as e:
            return _reply(flow, 400, error_body("invalid_request", "bad_parameter", str(e)))
        return _reply(flow, 200, json_body(report))
    parts = path.strip("/").split("/")
    if len(parts) == 4 and parts[:2] == ["admin", "accounts"] and parts[3] in ACCOUNT_ACTIONS:
        if method != "POST":
            return _reply(flow, 405, error_body("method_not_allowed", "method_not_allowed", f"use POST {path}"))
        name, action = parts[2], parts[3]
        if name not in registry.accounts:
            known = ", ".join(sorted(registry.accounts)) or "none"
            return _reply(flow, 404, error_body("not_found", "unknown_account", f"no pool account {name!r}; accounts: {known}"))
        addon.account_action(name, action)
        row = next(r for r in registry.describe(time.time(), addon.router.sticky.counts(time.time())) if r["name"] == name)
        return _reply(flow, 200, json_body({"action": action, "pinned": addon.router.pinned, "account": row}))
    return _reply(flow, 404, error_body("not_found", "not_found", f"no local endpoint {method} {path}; see README"))


ACCOUNT_ACTIONS = ("pin", "unpin", "disable", "enable")


def proxy_origin(flow: http.HTTPFlow) -> str:
    """This listener's own origin, from the socket the client connected to (never from a header the
    client controls, so no request can steer Codex to another origin)."""
    host, port = flow.client_conn.sockname[:2]
    scheme = "https" if flow.client_conn.tls_established else "http"
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}:{port}"


def workspace_routing(flow: http.HTTPFlow) -> dict:
    """Codex's `GET /wham/accounts/check`: the account the client believes it is maps to this proxy
    with no routing constraint. Passed through, the real answer names chatgpt.com, and Codex would
    then send model traffic there directly with its own token, bypassing the pool."""
    client_account = flow.request.headers.get("chatgpt-account-id") or PLACEHOLDER_ACCOUNT_ID
    return {
        "accounts": [{
            "id": client_account,
            "name": "codex-pool",
            "structure": "personal",
            "plan_type": "pro",
            "profile_picture_url": None,
            "is_deactivated": False,
            "can_access_with_session": True,
            "sso_connection_name": None,
            "is_fedramp_compliant_workspace": False,
            "workspace_backend_origin": proxy_origin(flow),
            "account_routing_override": "NO_CONSTRAINT",
        }],
        "account_ordering": [client_account],
    }


def client_refresh_answer() -> dict:
    """A client's own token refresh: new placeholder tokens (far-future expiry). Pool tokens are
    never involved and nothing goes to the real auth server."""
    tokens = placeholder_client_auth()["tokens"]
    return {"access_token": tokens["access_token"], "id_token": tokens["id_token"],
            "refresh_token": tokens["refresh_token"], "token_type": "Bearer", "expires_in": 10 * 365 * 86400}
