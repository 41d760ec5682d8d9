"""Upstream answers: stream SSE live through a tap, classify every answer for its account, send the
client to another account or give the pool's honest answer (through `Pool.settle`), and account
for the finished exchange (ledger, metrics, flow comment)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable

from mitmproxy import http

from codex_pool.core import body_decode, failover, ledger, quota
from codex_pool.core.exchange import Exchange
from codex_pool.core.outcome import Verdict, classify_http, classify_transport_error, stream_verdict
from codex_pool.core.pool import Pool, Settlement
from codex_pool.core.pool_quota import PoolQuota, RateLimitEventRewriter
from codex_pool.core.sse import SSETap
from codex_pool.core.turn import TurnObserver
from codex_pool.mitm.flows import CLIENT, KEY, META, answer_error, answer_headers, describe_error, redact_pool_token
from codex_pool.mitm.routing import answer_no_route
from codex_pool.upstream.tokens import TokenService

log = logging.getLogger("codex_pool")

QUOTA_HEADER_PREFIXES = (b"x-codex-primary-", b"x-codex-secondary-", b"x-codex-credits-")
ERROR_BODY_BYTES = 1 << 20  # an upstream error body is read (to classify it) this far decoded, never further


class Verdicts:
    def __init__(self, pool: Pool, tokens: TokenService):
        self.pool = pool
        self.tokens = tokens

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        exchange = self.pool.exchanges.get(flow.id)
        if exchange is None or flow.response is None:
            return
        try:
            redact_pool_token(flow, exchange.account)
            response = flow.response
            now = exchange.first_byte_at = self.pool.now()
            content_type, codex = answer_headers(response.headers)
            config = self.pool.config
            show_pool = config is None or config.client_quota == "pool"
            limits = quota.from_headers(codex, now)
            if limits is not None:  # the account's own figures first, then the client is shown the pool's
                self.pool.registry.record_rate_limits(exchange.account, limits)
                if show_pool:
                    show_pool_quota(response.headers, self.pool.client_quota(now), now)
            if content_type.startswith("text/event-stream"):
                encoding = response.headers.get("content-encoding")
                tap = response.stream = SSETap(encoding, TurnObserver(), clock=self.pool.clock,
                                               keep_bytes=(config.inspect_body_limit_kb if config else 0) * 1024)
                if show_pool and (not encoding or encoding.lower() == "identity"):  # (a compressed stream keeps its events)
                    tap.transform = RateLimitEventRewriter(self._pool_event)
                    response.headers.pop("content-length", None)  # the rewritten event may differ in length
        except Exception as e:
            log.error("codex-pool: responseheaders failed on %s: %s", flow.request.path, describe_error(e))

    def _pool_event(self, event: dict) -> dict:
        now = self.pool.now()
        return self.pool.client_quota(now).event(now, event)

    def response(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """Sync for every answer but a 401: that one returns the refresh-then-settle coroutine, which
        mitmproxy awaits before the answer goes on (an async hook would cost every flow a coroutine)."""
        exchange = self.pool.exchanges.get(flow.id)
        if exchange is None or flow.response is None or exchange.judged:
            return
        try:
            response = flow.response
            exchange.status = response.status_code
            now = self.pool.now()
            tap = response.stream if isinstance(response.stream, SSETap) else None
            streamed = tap is not None
            if tap is None and CLIENT in flow.metadata and response.status_code == 200 and answer_headers(
                    response.headers)[0].startswith("text/event-stream"):  # buffered for a client that wants one object
                tap = buffered_tap(response, self.pool)
            if tap is not None:
                self._absorb(flow, exchange, tap)
                verdict = stream_verdict(tap.observer, now, self.pool.latest_limits(exchange.account))
                if streamed and tap.kept:  # nothing is re-sent: the answer already streamed; this is for mitmweb
                    response.raw_content = bytes(tap.kept)
                    if tap.bytes_seen > len(tap.kept):
                        flow.comment += f" · body shown: first {len(tap.kept) // 1024} KB of {tap.bytes_seen // 1024} KB"
            else:
                if response.timestamp_start and flow.request.timestamp_end:
                    exchange.ttfb_ms = round((response.timestamp_start - flow.request.timestamp_end) * 1000, 1)
                body = body_decode.decode_body(response.raw_content, response.headers.get("content-encoding"),
                                               ERROR_BODY_BYTES).data if response.status_code >= 400 else None
                verdict = classify_http(response.status_code, response.headers, body, now,
                                        self.pool.latest_limits(exchange.account))
            if self.tokens.may_recover(verdict):  # a 401: refresh first, then judge
                return self._recover_then_settle(flow, exchange, verdict, tap, streamed)
            self._settle(flow, exchange, verdict, tap, now, streamed)
        except Exception as e:
            self._fail_safe(flow, exchange, tap if streamed else None, e)
        return None

    async def _recover_then_settle(self, flow: http.HTTPFlow, exchange: Exchange, verdict: Verdict,
                                   tap: SSETap | None, streamed: bool) -> None:
        try:
            verdict = await self.tokens.recover_unauthorized(exchange, verdict)
            self._settle(flow, exchange, verdict, tap, self.pool.now(), streamed)  # the clock after the wait
        except Exception as e:
            self._fail_safe(flow, exchange, tap if streamed else None, e)

    def _settle(self, flow: http.HTTPFlow, exchange: Exchange, verdict: Verdict, tap: SSETap | None, now: float,
                streamed: bool) -> None:
        upstream_status = flow.response.status_code
        settlement = self.pool.settle(exchange, verdict, now, answer_sent=streamed, status=upstream_status,
                                      served=not exchange.upgrade)
        self._deliver(flow, exchange, settlement, upstream_status)
        if flow.websocket is None:
            self._close(flow, exchange, tap.observer if tap is not None else None)

    def _fail_safe(self, flow: http.HTTPFlow, exchange: Exchange, tap: SSETap | None, e: Exception) -> None:
        """Our own code failed on an answer: an account's failure never reaches the client as is
        (answered 503 unless it already streamed), and the exchange is closed all the same."""
        log.error("codex-pool: response hook failed on %s: %s", flow.request.path, describe_error(e))
        try:
            if tap is None and flow.response is not None and flow.response.status_code >= 400:
                answer_error(flow, 503, "internal_error", "proxy_internal_error",
                             f"codex-pool failed while judging the upstream answer ({type(e).__name__}); retry")
                flow.response.headers["retry-after"] = "1"
        finally:
            if flow.websocket is None:
                self.pool.close_exchange(flow.id)

    def error(self, flow: http.HTTPFlow) -> None:
        exchange = self.pool.exchanges.get(flow.id)
        if exchange is None:
            return
        try:
            redact_pool_token(flow, exchange.account)
            exchange.error = flow.error.msg if flow.error else "unknown"
            tap = flow.response.stream if flow.response is not None and isinstance(flow.response.stream, SSETap) else None
            if tap is not None:
                self._absorb(flow, exchange, tap)
            if not exchange.judged:  # the exchange broke before an answer could be judged
                if exchange.stalled is not None:  # the watchdog cut it: the upstream went silent
                    verdict = Verdict("cooldown", exchange.stalled, f"upstream sent nothing ({exchange.stalled})")
                else:
                    verdict = classify_transport_error(exchange.error)
                flow.comment += f" · {exchange.stalled or exchange.error}"
                exchange.judged = True
                if verdict.kind == "neutral":
                    exchange.outcome = "client_cancelled"
                else:
                    flow.marked = ":x:"
                    exchange.outcome, exchange.outcome_reason = verdict.kind, verdict.reason
                    self.pool.note(self.pool.registry.health.apply(exchange.account, verdict, self.pool.now()))
                    self.pool.release_fresh_pin(exchange)  # the client's retry is placed anew
            if flow.websocket is None:
                self._close(flow, exchange, tap.observer if tap is not None else None)
        except Exception as e:
            log.error("codex-pool: error hook failed on %s: %s", flow.request.path, describe_error(e))

    # ---- helpers ---------------------------------------------------------------------------

    def _deliver(self, flow: http.HTTPFlow, exchange: Exchange, settlement: Settlement, upstream_status: int) -> None:
        """Let the answer through, send the client to another account, or answer for the pool."""
        if settlement.action == failover.PASS:
            return
        if settlement.action == failover.RETRY:
            if exchange.upgrade:  # WebSocket clients don't follow redirects; Codex reconnects on 503
                answer_error(flow, 503, "server_error", "account_switch",
                             f"pool account {exchange.account} failed ({settlement.reason}); reconnect to be served by another",
                             retry_after=0)
            else:
                client = flow.metadata.get(CLIENT)  # a translated request goes back to the client's own path
                flow.response = http.Response.make(307, b"", {
                    "location": failover.retry_location(client["path"] if client else flow.request.path, settlement.chain),
                    "cache-control": "no-store",
                    "x-codex-pool-failover": settlement.reason,
                })
            flow.comment += f" · failed over ({settlement.reason} {upstream_status})"
        else:
            no_route = settlement.no_route
            status = answer_no_route(flow, no_route)
            flow.comment += f" · {settlement.reason} {upstream_status} → {status} {no_route.code}"
        flow.marked = ":warning:"

    def _absorb(self, flow: http.HTTPFlow, exchange: Exchange, tap: SSETap) -> None:
        """Fold what a tap saw of one turn into the exchange and the account's quota."""
        tap.drain()  # a stream cut short still has queued chunks
        observer = tap.observer
        if observer is None or exchange.turn is not None:
            return
        exchange.turn = observer.summary()
        if tap.first_byte_at is not None and flow.request.timestamp_end:
            exchange.ttfb_ms = round((tap.first_byte_at - flow.request.timestamp_end) * 1000, 1)
        absorb_rate_limits(self.pool, exchange.account, observer)
        usage = exchange.turn.get("usage")
        if usage:
            flow.comment += f" · {usage['total_tokens']} tokens"

    def _close(self, flow: http.HTTPFlow, exchange: Exchange, observer: TurnObserver | None) -> None:
        """The HTTP exchange is over: one ledger record, the in-flight count, a copy for saved flows."""
        self.pool.close_exchange(flow.id)
        flow.metadata[META] = exchange.to_dict()
        if exchange.recorded:
            return
        exchange.recorded = True
        request = flow.request
        end = (flow.response.timestamp_end if flow.response is not None and flow.response.timestamp_end else None) \
            or self.pool.now()
        start = request.timestamp_start
        model = observer.model if observer is not None else None
        if model is None and exchange.kind != "models" and request.raw_content:
            model = ledger.model_from_body(body_decode.decode_body(
                request.raw_content, request.headers.get("content-encoding"), ledger.MODEL_SCAN_BYTES).data)
        client = flow.metadata.get(CLIENT)
        self.pool.account_for(ledger.build_record(
            ts=start, account=exchange.account, kind=exchange.kind, path=client["path"] if client else request.path,
            status=exchange.status,
            outcome=ledger.record_outcome(exchange.ledger_outcome(), exchange.turn),
            usage=(exchange.turn or {}).get("usage"), model=model,
            ttfb_ms=exchange.ttfb_ms, duration_ms=(end - start) * 1000 if start else None,
            attempt=exchange.attempt, conversation=exchange.conversation, key=flow.metadata.get(KEY),
        ))


def show_pool_quota(headers: http.Headers, pool_quota: PoolQuota, now: float) -> None:
    """Replace an answer's `x-codex-*` quota figures by the pool's (core/pool_quota.py): every window
    and credits header of the account's goes, the pool's come instead."""
    fields = headers.fields
    kept = tuple(f for f in fields if not f[0].lower().startswith(QUOTA_HEADER_PREFIXES))
    headers.fields = kept + tuple((k.encode(), v.encode()) for k, v in pool_quota.headers(now).items())


def buffered_tap(response: http.Response, pool: Pool) -> SSETap:
    """A tap run over a whole buffered SSE answer, as if it had streamed (nothing has been sent)."""
    tap = SSETap(response.headers.get("content-encoding"), TurnObserver(), clock=pool.clock)
    tap.first_byte_at = response.timestamp_start
    tap(response.raw_content or b"")
    tap(b"")
    return tap


def absorb_rate_limits(pool: Pool, account: str, observer: TurnObserver) -> None:
    """The latest rate-limit event of a turn, as the account's quota."""
    for event in observer.rate_limits[-1:]:
        limits = quota.from_event(event, pool.now())
        if limits is not None:
            pool.registry.record_rate_limits(account, limits)
