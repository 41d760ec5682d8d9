"""Routing and credentials: every forwardable request gets an account from the pool (sticky by
conversation, failover chains honoured) and that account's credentials, or an honest local
answer when none can serve. A request whose account needs only a token refresh waits for it
(bounded). A failure of our own answers 503 locally: nothing ever goes upstream with the
client's own credentials."""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import NamedTuple

from mitmproxy import http

from codex_pool.core import body_decode, conversation, failover, ledger, paths
from codex_pool.core.exchange import Exchange
from codex_pool.core.pool import Pool
from codex_pool.core.redact import fingerprint
from codex_pool.core.router import AwaitRefresh, NoRoute
from codex_pool.mitm.flows import (KEY, answer_error, describe_error, drop_client_credentials, is_upgrade,
                                   lower_headers)
from codex_pool.upstream.tokens import TokenService

log = logging.getLogger("codex_pool")

# the request headers routing reads: the conversation's, and what the ledger's kind needs
ROUTING_HEADERS = frozenset(name.encode() for name in (*conversation.HEADER_KEYS, *ledger.KIND_HEADERS))


class _Wanted(NamedTuple):
    """What routing read from one request."""

    path: str  # without our failover marker
    headers: dict[str, str]  # ROUTING_HEADERS by lower-case name
    marker: str | None  # the failover chain marker the request came back with
    conversation: str | None  # hashed conversation key
    upgrade: bool  # a WebSocket upgrade


class Routing:
    def __init__(self, pool: Pool, tokens: TokenService):
        self.pool = pool
        self.tokens = tokens
        self._fingerprints: dict[str, str] = {}  # access token -> its tag, so each token is hashed once

    def _fingerprint(self, token: str) -> str:
        tag = self._fingerprints.get(token)
        if tag is None:
            if len(self._fingerprints) >= 256:  # tokens rotate; never let this grow
                self._fingerprints.clear()
            tag = self._fingerprints[token] = fingerprint(token)
        return tag

    def request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """Sync for every request but one whose account needs a token refresh first: that one
        returns the wait-then-route coroutine, which mitmproxy awaits before anything goes upstream."""
        if flow.response is not None or flow.error is not None or paths.is_local(flow.request.path):
            return None
        try:
            if not paths.is_forwardable(flow.request.path):
                answer_error(flow, 404, "not_found", "not_forwarded",
                             f"codex-pool forwards only {paths.FORWARD_PREFIX}… to the ChatGPT backend and serves /v1/…; "
                             f"point Codex at http://<proxy>{paths.FORWARD_PREFIX}codex, "
                             "OpenAI-style clients at http://<proxy>/v1")
                return None
            keys = self.pool.keys
            if (keys.on or keys.file_error) and KEY not in flow.metadata:  # the key check did not run: fail closed
                answer_error(flow, 403, "invalid_request_error", "invalid_api_key",
                             "codex-pool could not check this request's client key; it was not forwarded")
                return None
            wanted = self._read(flow)
            return self._place(flow, wanted, may_wait=True)
        except Exception as e:
            self._fail_closed(flow, e)
        return None

    def _read(self, flow: http.HTTPFlow) -> _Wanted:
        """What routing needs from the request, read once (the failover marker is removed here)."""
        pool, request = self.pool, flow.request
        path = request.path
        headers = lower_headers(request.headers, ROUTING_HEADERS)
        marker = request.query.get(failover.MARKER) if failover.MARKER in path else None
        if marker is not None:
            del request.query[failover.MARKER]  # ours; upstream never sees it
            path = request.path
        body: body_decode.DecodedBody | None = None

        def decoded_body() -> bytes | None:  # only when the headers name no conversation; with a cap
            nonlocal body
            body = body_decode.decode_body(request.raw_content, request.headers.get("content-encoding"))
            return body.data if body.complete else None
        key = conversation.conversation_key(headers, decoded_body)
        if body is not None and not body.complete:  # forwarded untouched all the same (core/body_decode.py)
            log.warning("codex-pool: %s %s: the request body %s; forwarded without a conversation key",
                        request.method, path, body.detail)
        client = flow.metadata.get(KEY)  # conversations are scoped by client key: two people's equal ids never share a pin
        hashed = conversation.hash_key(pool.secret, f"{client}\x00{key}" if client else key) if key else None
        return _Wanted(path, headers, marker, hashed, is_upgrade(flow))

    def _place(self, flow: http.HTTPFlow, wanted: _Wanted, may_wait: bool) -> Awaitable[None] | None:
        pool, request = self.pool, flow.request
        now = pool.now()
        chain = pool.chains.find(wanted.marker, wanted.conversation if wanted.upgrade else None, now)
        route = pool.router.route(wanted.conversation, now, exclude=frozenset(chain.tried) if chain else frozenset(),
                                  may_wait=may_wait, fresh=chain is not None and chain.fresh)
        if isinstance(route, AwaitRefresh):
            return self._after_refresh(flow, wanted, route)
        if isinstance(route, NoRoute):
            status = answer_no_route(flow, route)
            log.warning("codex-pool: %s %s answered %d: %s", request.method, wanted.path, status, route.message)
            return None
        account = route.account
        drop_client_credentials(request.headers, add=(
            (b"Authorization", b"Bearer " + account.access_token.encode()),
            (b"ChatGPT-Account-ID", account.account_id.encode()),
        ))
        exchange = pool.open_exchange(flow.id, route, chain, ledger.request_kind(request.method, wanted.path, wanted.headers),
                                      self._fingerprint(account.access_token), upgrade=wanted.upgrade)
        flow.comment = comment(exchange)
        pool.events.emit("request.account_selected", account=account.name, reason=route.reason,
                         conversation=route.conversation, attempt=exchange.attempt, pinned_to=route.pinned_to,
                         path=paths.bare(wanted.path))
        return None

    async def _after_refresh(self, flow: http.HTTPFlow, wanted: _Wanted, wait: AwaitRefresh) -> None:
        """The request's account only needs fresh tokens: wait (bounded) for the refresh, shared
        with every other request waiting for it and with another proxy on the pool folder (its lock),
        then route again — on the fresh tokens, or elsewhere, or with the honest answer."""
        try:
            refreshed = await self.tokens.refresh_for_request(wait.accounts)
            if flow.response is not None or flow.error is not None:
                return  # the client went away while it waited
            if not refreshed:
                log.warning("codex-pool: %s %s waited for a token refresh of %s that did not land",
                            flow.request.method, wanted.path, ", ".join(wait.accounts))
            self._place(flow, wanted, may_wait=False)
        except Exception as e:
            self._fail_closed(flow, e)

    def _fail_closed(self, flow: http.HTTPFlow, e: BaseException) -> None:
        """Our own code failed: answer locally so nothing goes upstream with the client's credentials."""
        log.error("codex-pool: internal error on %s %s, answered 503 locally: %s",
                  flow.request.method, flow.request.path, describe_error(e))
        self.pool.close_exchange(flow.id)
        answer_error(flow, 503, "internal_error", "proxy_internal_error",
                     f"codex-pool failed while handling this request ({type(e).__name__}); it was not forwarded. "
                     "See the proxy log; if it persists, report it with that log.")


def answer_no_route(flow: http.HTTPFlow, route: NoRoute) -> int:
    """The honest answer when no account can serve; returns the status sent. On a WebSocket upgrade,
    every account limited becomes 426: Codex 0.169.0 prints a 429 on the upgrade only as "exceeded
    retry limit, last status: 429", without the reset (seen with the real binary), while after a 426
    it falls back to HTTPS at once and its POST gets the 429 below, which it prints as the usage
    limit with its reset time (tests/client/test_codex_native.py)."""
    if route.status == 429 and is_upgrade(flow):
        answer_error(flow, 426, "invalid_request_error", "websocket_fallback",
                     f"{route.message}; send the turn over HTTPS to be told when the pool resets", **route.extra)
        return 426
    answer_error(flow, route.status, route.type, route.code, route.message, retry_after=route.retry_after, **route.extra)
    return route.status


def comment(exchange: Exchange) -> str:
    """The flow's comment in mitmweb: which account and why."""
    conv = f" · conv {exchange.conversation[:8]}" if exchange.conversation else ""
    standin = f" standing in for {exchange.pinned_to}" if exchange.pinned_to else ""
    retry = f" · attempt {exchange.attempt}" if exchange.attempt > 1 else ""
    return f"account {exchange.account} ({exchange.reason}{standin}){conv}{retry}"
