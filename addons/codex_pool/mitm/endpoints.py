"""Endpoints the proxy answers itself on its listener; they are never forwarded upstream.

| method | path | answer |
|---|---|---|
| GET | /healthz | 200 with counts while at least one account is usable, else 503 with the reason |
| GET | /backend-api/wham/accounts/check | Codex's workspace routing, pointing at this proxy |
| GET | /backend-api/wham/usage | the pool's quota as one account's (Codex's /status; core/pool_quota.py) |
| POST | /oauth/token | a client's own token refresh, answered with placeholder tokens |
| GET | /metrics | Prometheus text format (admin access) |
| GET | /admin/accounts | every pool file with its state; never a token |
| POST | /admin/reload | re-read the pool folder now |
| GET | /admin/usage?since=…&until=…&group=account,day,model,key | the usage ledger, as scripts/usage-report --json |
| GET | /admin/keys | client keys: name, state, limits, usage per window; never a key or a hash |
| POST | /admin/accounts/<name>/pin, unpin, disable, enable | steer one account |
| POST | /admin/accounts/<name>/remove | take it out of the pool now (its file moves to pool/.removed/) |

Admin endpoints (and /metrics) answer loopback clients only, unless `admin_token` is set in
mitm.yaml; then they require `Authorization: Bearer <admin_token>` from everyone.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from mitmproxy import http

from codex_pool.core import paths
from codex_pool.core.addresses import is_loopback
from codex_pool.core.bodies import json_body
from codex_pool.core.client_home import PLACEHOLDER_ACCOUNT_ID, placeholder_client_auth
from codex_pool.core.metrics import CONTENT_TYPE
from codex_pool.core.pool import STEER_ACTIONS, Pool
from codex_pool.mitm.flows import answer, answer_error, describe_error
from codex_pool.mitm.lifecycle import Lifecycle
from codex_pool.storage.pool_accounts import AccountFileError

log = logging.getLogger("codex_pool")

Handler = Callable[["LocalEndpoints", http.HTTPFlow], Awaitable[None] | None]


@dataclass(frozen=True)
class Endpoint:
    methods: tuple[str, ...]
    handler: Handler
    admin: bool  # needs admin access (loopback, or admin_token)


class LocalEndpoints:
    def __init__(self, pool: Pool, lifecycle: Lifecycle):
        self.pool = pool
        self.lifecycle = lifecycle

    def request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """Sync; the slow endpoints (a rescan, a ledger report) return a coroutine that mitmproxy
        awaits before the answer goes out (an async hook would cost every flow a coroutine)."""
        if flow.response is not None or flow.error is not None or not paths.is_local(flow.request.path):
            return None
        try:
            pending = self.answer(flow)
            if pending is not None:
                return self._finish(flow, pending)
        except Exception as e:
            self._failed(flow, e)
        return None

    async def _finish(self, flow: http.HTTPFlow, pending: Awaitable[None]) -> None:
        try:
            await pending
        except Exception as e:
            self._failed(flow, e)

    @staticmethod
    def _failed(flow: http.HTTPFlow, e: Exception) -> None:
        log.error("codex-pool: local endpoint %s failed: %s", flow.request.path, describe_error(e))
        answer_error(flow, 500, "internal_error", "proxy_internal_error",
                     f"codex-pool failed while answering {paths.bare(flow.request.path)} ({type(e).__name__}); see the proxy log")

    def answer(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """Answer a local path; returns what is still to be awaited for the slow endpoints."""
        path, method = paths.bare(flow.request.path), flow.request.method.upper()
        given_auth = flow.request.headers.get("authorization", "")
        for name in ("authorization", "cookie"):  # keep client and admin secrets out of stored flows
            if name in flow.request.headers:
                flow.request.headers[name] = "[redacted]"
        endpoint, action = find_endpoint(path)
        if endpoint is None:
            return answer_error(flow, 404, "not_found", "not_found", f"no local endpoint {method} {path}; see README")
        if method not in endpoint.methods and not (method == "HEAD" and "GET" in endpoint.methods):
            return answer_error(flow, 405, "method_not_allowed", "method_not_allowed", f"use {endpoint.methods[0]} {path}")
        if endpoint.admin:
            refused = admin_refusal(flow.client_conn.peername, self.pool.config.admin_token if self.pool.config else None,
                                    given_auth)
            if refused:
                return answer_error(flow, 403, "forbidden", "admin_forbidden", refused)
        if action is not None:
            if action[1] == "remove":
                return self._remove(flow, action[0])
            return self._steer(flow, action[0], action[1])
        return endpoint.handler(self, flow)

    # ---- handlers --------------------------------------------------------------------------

    def _health(self, flow: http.HTTPFlow) -> None:
        pool, now = self.pool, self.pool.now()
        registry = pool.registry
        usable = registry.usable_names(now)
        counts = {
            "accounts": len(registry.accounts),
            "usable": len(usable),
            "invalid_files": len(registry.problems),
            "duplicates": len(registry.duplicates),
            "sticky_conversations": len(pool.router.sticky),
        }
        if usable:
            return answer(flow, 200, json_body({"status": "ok", **counts}))
        answer(flow, 503, json_body({"status": "unavailable", "reason": pool.router.unavailable(now).message, **counts}))

    def _accounts_check(self, flow: http.HTTPFlow) -> None:
        answer(flow, 200, json_body(workspace_routing(flow)))

    def _client_usage(self, flow: http.HTTPFlow) -> None:
        now = self.pool.now()
        answer(flow, 200, json_body(self.pool.client_quota(now).usage_payload(now)))

    def _client_token(self, flow: http.HTTPFlow) -> None:
        """A client's own token refresh, answered with placeholder tokens. With client keys on there is
        nothing to hand out: a refresh answer would have to carry the client's key (which would then
        sit in stored flows), so it is refused, saying how to set the key again (the placeholder that
        `scripts/codex-setup --key` writes is never due for a refresh)."""
        now = self.pool.now()
        keys = self.pool.keys
        if not (keys.on or keys.file_error):
            return answer(flow, 200, json_body(client_refresh_answer(now)))
        flow.request.content = b"[redacted]"  # a refresh token is a secret too
        answer_error(flow, 401, "invalid_grant", "refresh_token_invalidated",
                     "this codex-pool uses client keys, which are not refreshed: run scripts/codex-setup --key <your key> "
                     "again (ask the pool's admin for a key)")

    def _metrics(self, flow: http.HTTPFlow) -> None:
        flow.response = http.Response.make(200, self.pool.metrics.render(), {"content-type": CONTENT_TYPE})

    def _accounts(self, flow: http.HTTPFlow) -> None:
        pool, now = self.pool, self.pool.now()
        rows = pool.registry.describe(now, pool.router.sticky.counts(now))
        answer(flow, 200, json_body({"policy": pool.router.policy, "pinned": pool.router.pinned, "accounts": rows}))

    def _keys(self, flow: http.HTTPFlow) -> None:
        keys = self.pool.keys
        answer(flow, 200, json_body({"on": keys.on, "file_error": keys.file_error,
                                     "keys": keys.describe(self.pool.now())}))

    async def _reload(self, flow: http.HTTPFlow) -> None:
        scan = await self.lifecycle.rescan()
        registry = self.pool.registry
        answer(flow, 200, json_body({
            "accounts": len(registry.accounts),
            "usable": len(registry.usable_names(self.pool.now())),
            "added": scan.added,
            "updated": scan.updated,
            "removed": scan.removed,
            "invalid": {p.path.name: p.reason for p in registry.problems.values()},
        }))

    async def _usage(self, flow: http.HTTPFlow) -> None:
        q = flow.request.query
        try:
            report = await self.lifecycle.usage_report(q.get("since"), q.get("until"), q.get("group", "account"))
        except ValueError as e:
            return answer_error(flow, 400, "invalid_request", "bad_parameter", str(e))
        answer(flow, 200, json_body(report))

    async def _remove(self, flow: http.HTTPFlow, name: str) -> None:
        try:
            moved = await self.lifecycle.remove_account(name)
        except AccountFileError as e:
            return answer_error(flow, 404, "not_found", "unknown_account", str(e))
        answer(flow, 200, json_body({"action": "remove", "account": name, "moved_to": str(moved),
                                     "accounts": len(self.pool.registry.accounts)}))

    def _steer(self, flow: http.HTTPFlow, name: str, action: str) -> None:
        refused = self.pool.steer(name, action)
        if refused:
            return answer_error(flow, 404, "not_found", "unknown_account", refused)
        log.info("codex-pool: admin %s %s", action, name)
        answer(flow, 200, json_body({"action": action, "pinned": self.pool.router.pinned,
                                     "account": self.pool.describe_account(name)}))


ROUTES: dict[str, Endpoint] = {
    paths.HEALTH: Endpoint(("GET",), LocalEndpoints._health, admin=False),
    paths.ACCOUNTS_CHECK: Endpoint(("GET",), LocalEndpoints._accounts_check, admin=False),
    paths.TOKEN: Endpoint(("POST",), LocalEndpoints._client_token, admin=False),
    paths.USAGE: Endpoint(("GET",), LocalEndpoints._client_usage, admin=False),
    paths.METRICS: Endpoint(("GET",), LocalEndpoints._metrics, admin=True),
    "/admin/accounts": Endpoint(("GET",), LocalEndpoints._accounts, admin=True),
    "/admin/reload": Endpoint(("POST",), LocalEndpoints._reload, admin=True),
    "/admin/usage": Endpoint(("GET",), LocalEndpoints._usage, admin=True),
    "/admin/keys": Endpoint(("GET",), LocalEndpoints._keys, admin=True),
}
STEER = Endpoint(("POST",), LocalEndpoints._steer, admin=True)


def find_endpoint(path: str) -> tuple[Endpoint | None, tuple[str, str] | None]:
    """The endpoint for a local path, and (account, action) for /admin/accounts/<name>/<action>."""
    endpoint = ROUTES.get(path)
    if endpoint is not None:
        return endpoint, None
    parts = path.strip("/").split("/")
    if len(parts) == 4 and parts[:2] == ["admin", "accounts"] and (parts[3] in STEER_ACTIONS or parts[3] == "remove"):
        return STEER, (parts[2], parts[3])
    return None, None


def admin_refusal(peername, admin_token: str | None, given: str) -> str | None:
    """None when admin access is allowed, else the reason to refuse. `given` is the request's
    Authorization value; compared in constant time."""
    if admin_token:
        if hmac.compare_digest(given.encode(), f"Bearer {admin_token}".encode()):
            return None
        return "admin endpoints need 'Authorization: Bearer <admin_token>' (admin_token in mitm.yaml)"
    host = peername[0] if isinstance(peername, tuple) and peername else None
    if is_loopback(host):
        return None
    return "admin endpoints answer loopback clients only; set admin_token in mitm.yaml to allow others"


def proxy_origin(flow: http.HTTPFlow) -> str:
    """This listener's own origin, from the socket the client connected to (never from a header the
    client controls, so no request can steer Codex to another origin). Always https: Codex 0.169.0
    refuses a workspace origin that is not ("workspace backend must use an HTTPS origin without
    credentials", and the interactive TUI then exits even with a custom provider, whose model
    traffic ignores the origin); the listener speaks TLS on the same port, so a client that follows
    it still reaches this proxy."""
    host, port = flow.client_conn.sockname[:2]
    host = f"[{host}]" if ":" in host else host
    return f"https://{host}:{port}"


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


def client_refresh_answer(now: float) -> dict:
    """A client's own token refresh: new placeholder tokens (far-future expiry). Pool tokens are
    never involved and nothing goes to the real auth server."""
    tokens = placeholder_client_auth(now)["tokens"]
    return {"access_token": tokens["access_token"], "id_token": tokens["id_token"],
            "refresh_token": tokens["refresh_token"], "token_type": "Bearer", "expires_in": 10 * 365 * 86400}
