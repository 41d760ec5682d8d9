"""WebSocket turns: one socket stays on one account; each turn (response.create → a terminal
event) is observed, recorded and judged. An upstream error frame goes through the same decision
as an HTTP answer (`Pool.settle`: chains, `max_attempts`, never the same account twice) and is
rewritten before the client sees it: a retryable 503 frame while another account can serve (the
client's new socket lands elsewhere), else the pool's honest answer — never an account's 401."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Awaitable

from mitmproxy import ctx, http

from codex_pool.core import failover, ledger
from codex_pool.core.client_keys import model_of
from codex_pool.core.exchange import Exchange, WsTurn, outcome_label
from codex_pool.core.outcome import classify_ws_error, stream_verdict
from codex_pool.core.pool import Pool
from codex_pool.core.turn import TurnObserver
from codex_pool.mitm.flows import KEY, META, describe_error
from codex_pool.mitm.verdicts import absorb_rate_limits
from codex_pool.upstream.tokens import TokenService

log = logging.getLogger("codex_pool")

WS_KEEP_MESSAGES = 200  # frames kept on a WebSocket flow (for mitmweb); older ones are dropped
TURN_PATH = "/backend-api/codex/responses"
ABNORMAL_CLOSURE = 1006


class WebSocketTurns:
    def __init__(self, pool: Pool, tokens: TokenService):
        self.pool = pool
        self.tokens = tokens

    def websocket_message(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """Sync for every frame but an upstream error frame: that one returns the judge-and-rewrite
        coroutine (it may need a token refresh), which mitmproxy awaits before forwarding the frame."""
        exchange = self.pool.exchanges.get(flow.id)
        if exchange is None or flow.websocket is None:
            return
        try:
            messages = flow.websocket.messages
            message = messages[-1]
            if len(messages) > 2 * WS_KEEP_MESSAGES:  # a long socket must not grow without bound
                del messages[:-WS_KEEP_MESSAGES]
            if message.from_client:
                keys = self.pool.keys
                if keys.on or keys.file_error:  # every client frame is read as upstream will read it
                    turn_starts = self._keyed_frame(flow, message)
                else:
                    turn_starts = message.is_text and b'"response.create"' in message.content
                if turn_starts:
                    exchange.ws_turn = WsTurn(TurnObserver(), self.pool.now(), ledger.model_from_body(message.content))
                return
            turn = exchange.ws_turn
            if turn is None or not message.is_text:
                return
            observer = turn.observer
            if turn.first_at is None:
                turn.first_at = self.pool.now()
            seen_limits = len(observer.rate_limits)
            newest = observer.latest_rate_limits
            observer.observe_json(message.content)
            if observer.error is not None and not turn.judged:
                return self._judge_error_frame(flow, exchange, turn, message)
            self._after_frame(flow, exchange, turn, seen_limits)
            config = self.pool.config
            event = observer.latest_rate_limits
            if event is not None and event is not newest and (config is None or config.client_quota == "pool"):
                # recorded for the account above; the client is shown the pool's
                now = self.pool.now()
                message.content = json.dumps(self.pool.client_quota(now).event(now, event),
                                             separators=(",", ":")).encode()
        except Exception as e:
            log.error("codex-pool: websocket_message failed on %s: %s", flow.request.path, describe_error(e))
        return None

    def _keyed_frame(self, flow: http.HTTPFlow, message) -> bool:
        """With client keys on, a turn on a socket counts against its key like a request, and the key
        must still be valid (revoked or expired since the upgrade: refused). A refused frame is not
        forwarded; the client gets the error frame Codex prints (429 usage_limit_reached with its
        reset, 403 for a model or a key no longer valid). Fails closed: on any error the frame is
        dropped. True when the frame starts a turn and goes upstream."""
        try:
            if not message.is_text:  # nothing a key can be checked on goes upstream
                return self._refuse_frame(flow, message, 403, "invalid_request_error",
                                          "codex-pool forwards only text frames on a keyed socket")
            now = self.pool.now()
            kind = frame_type(message.content)
            if kind != "response.create":
                return False  # not a turn: forwarded
            check = self.pool.keys.check(flow.metadata.get(KEY), now)
            if check.refusal is not None:
                self.pool.metrics.refusal(check.refusal)
                return self._refuse_frame(flow, message, 403, "invalid_api_key",
                                          f"the client key is {check.refusal}; ask the pool's admin for a new one")
            key = check.key
            readable, model = model_of(message.content)
            if key.models is not None and (not readable or model is None):
                self.pool.metrics.refusal("limit_model")
                return self._refuse_frame(flow, message, 403, "model_not_allowed", f"the key {key.name!r} may use only "
                                          f"{', '.join(key.models) or 'no model'}; this turn names none")
            refusal = self.pool.keys.refusal(key, model, now)
            if refusal is None:
                self.pool.keys.admit(key.name, now)
                return True
            self.pool.metrics.refusal(f"limit_{refusal.limit}")
            if refusal.limit == "model":
                return self._refuse_frame(flow, message, 403, "model_not_allowed", refusal.message)
            return self._refuse_frame(flow, message, 429, "usage_limit_reached", refusal.message,
                                      resets_at=math.ceil(refusal.resets_at) if refusal.resets_at is not None else None)
        except Exception as e:
            log.error("codex-pool: checking a frame's client key failed on %s: %s", flow.request.path, describe_error(e))
            message.drop()
            return False

    @staticmethod
    def _refuse_frame(flow: http.HTTPFlow, message, status: int, code: str, text: str, resets_at: int | None = None) -> bool:
        """Not forwarded; the client gets an error frame instead. False: no turn starts."""
        message.drop()
        error = {"type": code, "code": code, "message": text}
        if resets_at is not None:
            error["resets_at"] = resets_at
        frame = {"type": "error", "status": status, "error": error}
        ctx.master.commands.call("inject.websocket", flow, True, json.dumps(frame).encode(), True)
        return False

    def _after_frame(self, flow: http.HTTPFlow, exchange: Exchange, turn: WsTurn, seen_limits: int) -> None:
        observer = turn.observer
        if observer.terminal:
            self._end_turn(flow, exchange, turn, cut=None)
        elif len(observer.rate_limits) != seen_limits:
            absorb_rate_limits(self.pool, exchange.account, observer)

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        exchange = self.pool.exchanges.get(flow.id)
        if exchange is None:
            return
        try:
            if exchange.ws_turn is not None:  # the socket ended in the middle of a turn
                ws = flow.websocket
                # 1006 = no close frame: an idle timeout (tcp_timeout) or a dropped connection, not the client's choice
                by_client = ws is not None and ws.closed_by_client and ws.close_code != ABNORMAL_CLOSURE
                self._end_turn(flow, exchange, exchange.ws_turn, cut="client_cancelled" if by_client else "connection_error")
        except Exception as e:
            log.error("codex-pool: websocket_end failed: %s", describe_error(e))
        finally:
            self.pool.close_exchange(flow.id)
            flow.metadata[META] = exchange.to_dict()

    async def _judge_error_frame(self, flow: http.HTTPFlow, exchange: Exchange, turn: WsTurn, message) -> None:
        try:
            await self._rewrite_error_frame(flow, exchange, turn, message)
        except Exception as e:
            log.error("codex-pool: judging an error frame failed on %s: %s", flow.request.path, describe_error(e))
        self._after_frame(flow, exchange, turn, len(turn.observer.rate_limits))

    async def _rewrite_error_frame(self, flow: http.HTTPFlow, exchange: Exchange, turn: WsTurn, message) -> None:
        now = self.pool.now()
        frame = turn.observer.error
        turn.judged = True
        verdict = classify_ws_error(frame, now, self.pool.latest_limits(exchange.account))
        if self.tokens.may_recover(verdict):
            verdict = await self.tokens.recover_unauthorized(exchange, verdict)
            now = self.pool.now()  # the clock after the wait
        settlement = self.pool.settle(exchange, verdict, now, answer_sent=False, transport="websocket",
                                      status=frame.get("status"), started=turn.started)
        if settlement.action == failover.PASS:
            return
        if settlement.action == failover.RETRY:
            status, err = 503, {"type": "server_error", "code": "account_switch",
                                "message": f"pool account {exchange.account} failed ({settlement.reason}); "
                                           "reconnect to continue on another account"}
            flow.comment += f" · failed over ({settlement.reason})"
        else:
            no_route = settlement.no_route
            status, err = no_route.status, {"type": no_route.type, "code": no_route.code, "message": no_route.message,
                                            **no_route.extra}
            flow.comment += f" · {settlement.reason} → {status} {no_route.code}"
        message.content = json.dumps({"type": "error", "status": status, "error": err}).encode()
        flow.marked = ":warning:"

    def _end_turn(self, flow: http.HTTPFlow, exchange: Exchange, turn: WsTurn, cut: str | None) -> None:
        """One ledger record per turn; a turn that ended badly counts against its account."""
        exchange.ws_turn = None
        observer, now = turn.observer, self.pool.now()
        exchange.turn = observer.summary()
        if cut is None:
            exchange.ws_turns += 1
            absorb_rate_limits(self.pool, exchange.account, observer)
            usage = exchange.turn.get("usage")
            if usage:
                flow.comment += f" · {usage['total_tokens']} tokens"
            if not turn.judged:  # e.g. response.failed: health only, the frames already went out
                turn.judged = True
                self.pool.settle(exchange, stream_verdict(observer, now, self.pool.latest_limits(exchange.account)), now,
                                 answer_sent=True, transport="websocket", started=turn.started)
        failed = observer.error is not None or observer.failed is not None
        outcome = cut or outcome_label(failed_over=failed and exchange.failover is not None, cancelled=False,
                                       reason=exchange.outcome_reason if failed else None)
        usage = observer.usage.to_dict() if observer.usage else None
        self.pool.account_for(ledger.build_record(
            ts=turn.started, account=exchange.account, kind="ws_turn", path=TURN_PATH,
            status=(observer.error or {}).get("status", 200) if observer.error else 200, outcome=outcome,
            usage=usage, model=observer.model or turn.model,
            ttfb_ms=round((turn.first_at - turn.started) * 1000, 1) if turn.first_at else None,
            duration_ms=(now - turn.started) * 1000, attempt=exchange.attempt, conversation=exchange.conversation,
            key=flow.metadata.get(KEY),
        ))


def frame_type(content: bytes) -> str | None:
    """A client frame's `type` as upstream reads it (a parse: an escaped spelling counts the same)."""
    try:
        doc = json.loads(content)
    except (ValueError, RecursionError):
        return None
    value = doc.get("type") if isinstance(doc, dict) else None
    return value if isinstance(value, str) else None
