"""What the pool decided and saw for one forwarded request: an HTTP exchange, or a WebSocket with
its turns. One typed record per flow, created when the request is routed and read by every hook
after that; `to_dict()` is the JSON-friendly copy left on the flow for saved flows and mitmweb."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from codex_pool.core.turn import TurnObserver


KEPT_PLACEMENTS = frozenset({"sticky", "standin", "pinned"})  # Route reasons that kept a conversation's account


@dataclass
class WsTurn:
    """One WebSocket turn in progress (response.create → a terminal event)."""

    observer: TurnObserver
    started: float
    model: str | None
    first_at: float | None = None
    judged: bool = False  # its error frame (or terminal event) has been folded into the account's health


@dataclass
class Exchange:
    account: str
    reason: str  # why this account: "sticky", "pinned", "standin", a policy name, ...
    conversation: str | None  # hashed conversation key
    pinned_to: str | None  # the conversation's own account when a stand-in serves
    kind: str  # ledger kind: sse_turn | ws_turn | compaction | models | usage | other
    token: str  # fingerprint of the access token the request went out with
    attempt: int = 1  # 1 = first try; a failover chain counts up
    chain: str | None = None  # the failover chain this request belongs to, once there is one
    tried: tuple[str, ...] = ()  # accounts the chain had already tried before this one
    upgrade: bool = False  # a WebSocket upgrade request
    in_flight: bool = True
    judged: bool = False  # the upstream answer has been classified and folded into health
    recorded: bool = False  # the ledger record has been written
    status: int | None = None
    outcome: str = "ok"  # ok | limited | cooldown | auth | retry | client_cancelled
    outcome_reason: str | None = None
    failover: str | None = None  # why the client was sent to another account
    error: str | None = None  # transport error message
    ttfb_ms: float | None = None
    opened_at: float = 0.0  # when the request was routed (about when it went upstream)
    first_byte_at: float | None = None  # when upstream's answer began (its headers)
    stalled: str | None = None  # the watchdog cut it: first_byte_timeout | stream_idle_timeout
    turn: dict[str, Any] | None = None  # TurnObserver.summary() of the (last) turn
    ws_turns: int = 0
    ws_turn: WsTurn | None = field(default=None, repr=False)  # the WebSocket turn in progress

    def placed_fresh(self) -> bool:
        """This try placed its conversation anew (a policy choice or a move), rather than on the
        account already serving it, and nothing was served on it yet (a WebSocket that carried
        turns has): nothing of the conversation is cached on that account."""
        return self.conversation is not None and self.reason not in KEPT_PLACEMENTS and self.ws_turns == 0

    def ledger_outcome(self) -> str:
        return outcome_label(failed_over=self.failover is not None, cancelled=self.outcome == "client_cancelled",
                             reason=self.outcome_reason)

    def to_dict(self) -> dict[str, Any]:
        """A shallow JSON-friendly copy (once per flow, on the request path: no deep copy)."""
        d = {name: value for name, value in self.__dict__.items() if value is not None and name != "ws_turn"}
        d["tried"] = list(self.tried)
        return d


def outcome_label(*, failed_over: bool, cancelled: bool, reason: str | None) -> str:
    """The ledger's `outcome` for an exchange or a WebSocket turn: the one rule for both."""
    if failed_over:
        return "failed_over"
    if cancelled:
        return "client_cancelled"
    return reason or "ok"

