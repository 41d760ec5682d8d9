"""The addon's WebSocket hooks: one socket stays on one account; each turn is observed, recorded
and, on an upstream error frame, judged like an HTTP answer. A mixin of `CodexPool`."""

from __future__ import annotations

import json
import logging
import time

from mitmproxy import http

from codex_pool.core import ledger
from codex_pool.core import quota
from codex_pool.mitm.flowtools import META, WS_KEEP_MESSAGES, WsTurn, describe
from codex_pool.core.outcome import classify_ws_error
from codex_pool.core.turn import TurnObserver

log = logging.getLogger("codex_pool")


class WebSocketHooks:
    async def websocket_message(self, flow: http.HTTPFlow) -> None:
        meta = flow.metadata.get(META)
        if not isinstance(meta, dict) or flow.websocket is None:
            return
        try:
            message = flow.websocket.messages[-1]
            if len(flow.websocket.messages) > 2 * WS_KEEP_MESSAGES:  # a long socket must not grow without bound
                del flow.websocket.messages[:-WS_KEEP_MESSAGES]
            if message.from_client:
                if message.is_text and b'"response.create"' in message.content:
                    self._ws_turns[flow.id] = WsTurn(TurnObserver(), time.time(), ledger.model_from_body(message.content))
                return
            turn = self._ws_turns.get(flow.id)
            if turn is None or not message.is_text:
                return
            observer = turn.observer
            if turn.first_at is None:
                turn.first_at = time.time()
            seen_limits = len(observer.rate_limits)
            observer.observe_json(message.content)
            if observer.error is not None:
                await self._judge_ws_error(flow, meta, message, observer.error)
            if observer.terminal:
                self._absorb_turn(flow, meta, observer, None)
                meta["ws_turns"] = meta.get("ws_turns", 0) + 1
                del self._ws_turns[flow.id]
                self._record_ws_turn(meta, turn, None)
            elif len(observer.rate_limits) != seen_limits:
                limits = quota.from_event(observer.rate_limits[-1], time.time())
                if limits is not None:
                    self.registry.record_rate_limits(meta["account"], limits)
        except Exception as e:
            log.error("codex-pool: websocket_message failed on %s: %s", flow.request.path, describe(e))

    async def _judge_ws_error(self, flow: http.HTTPFlow, meta: dict, message, frame: dict) -> None:
        """An error frame from upstream: mark the account, then rewrite the frame the way `_judge`
        rewrites an HTTP answer. While another account can serve, the client gets a retryable 503
        frame (its new socket lands elsewhere); otherwise the pool's honest answer (429 with the
        earliest reset when every account is limited, 503 saying why) — never an account's 401."""
        now = time.time()
        account = meta["account"]
        verdict = classify_ws_error(frame, now, self._latest_limits(account))
        verdict = await self._recover_unauthorized(meta, verdict)
        self._health_events(self.registry.health.apply(account, verdict, now))
        if not verdict.failed:
            return
        meta["outcome"], meta["outcome_reason"] = verdict.kind, verdict.reason
        if verdict.kind == "retry" or self.router.has_alternative(now, frozenset({account})):
            status, err = 503, {"type": "server_error", "code": "account_switch",
                                "message": f"pool account {account} failed ({verdict.reason}); reconnect to continue on another account"}
            meta["failover"] = verdict.reason
            self.metrics.failover(verdict.reason)
            self._emit("request.failover", account=account, reason=verdict.reason, status=frame.get("status"),
                       conversation=meta.get("conversation"), transport="websocket")
            flow.comment = f"{flow.comment} · failed over ({verdict.reason})"
        else:
            no_route = self.router.unavailable(now, frozenset({account}))
            status, err = no_route.status, {"type": no_route.type, "code": no_route.code, "message": no_route.message,
                                            **no_route.extra}
            flow.comment = f"{flow.comment} · {verdict.reason} → {status} {no_route.code}"
        message.content = json.dumps({"type": "error", "status": status, "error": err}).encode()
        flow.marked = ":warning:"

    def _record_ws_turn(self, meta: dict, turn: WsTurn, cut: str | None) -> None:
        """One ledger record per WebSocket turn (response.create → terminal event, or the socket's end)."""
        observer = turn.observer
        outcome = cut or ("failed_over" if meta.get("failover") and observer.error is not None else None)
        if outcome is None:
            outcome = meta.get("outcome_reason") if observer.error is not None or observer.failed is not None else "ok"
        now = time.time()
        usage = observer.usage.to_dict() if observer.usage else None
        self._account_for(ledger.build_record(
            ts=turn.started, account=meta["account"], kind="ws_turn", path="/backend-api/codex/responses",
            status=(observer.error or {}).get("status", 200) if observer.error else 200, outcome=outcome or "ok",
            usage=usage, model=observer.model or turn.model,
            ttfb_ms=round((turn.first_at - turn.started) * 1000, 1) if turn.first_at else None,
            duration_ms=(now - turn.started) * 1000, attempt=meta.get("attempt", 1),
            conversation=meta.get("conversation"),
        ))

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        turn = self._ws_turns.pop(flow.id, None)
        try:
            meta = flow.metadata.get(META)
            if turn is not None and isinstance(meta, dict):  # the socket ended in the middle of a turn
                by_client = flow.websocket is not None and flow.websocket.closed_by_client
                self._record_ws_turn(meta, turn, "client_cancelled" if by_client else "connection_error")
            self._finish(flow)
        except Exception as e:
            log.error("codex-pool: websocket_end failed: %s", describe(e))


# ---- helpers -----------------------------------------------------------------------------------


