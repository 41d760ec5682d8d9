"""Usage records: what each request that reached upstream cost (one record per request, one per
WebSocket turn). Pure; storage.ledger_writer queues them and storage.ledger_store keeps them."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from codex_pool.core.paths import bare

TOKEN_FIELDS = ("input_tokens", "cached_input_tokens", "output_tokens", "reasoning_tokens", "total_tokens")
_MODEL = re.compile(rb'"model"\s*:\s*"([^"\\]{1,100})"')


KIND_HEADERS = ("upgrade", "x-codex-turn-metadata")  # what request_kind reads (lower-case names)
TURN_KINDS = frozenset({"sse_turn", "ws_turn", "compaction"})  # the kinds that are model turns


def request_kind(method: str, path: str, headers: Mapping[str, str]) -> str:
    """sse_turn | ws_turn | compaction | models | usage | other. `headers` by lower-case name
    (at least KIND_HEADERS)."""
    p = bare(path).rstrip("/")
    if p == "/backend-api/codex/responses/compact":
        return "compaction"
    if p == "/backend-api/codex/responses":
        if headers.get("upgrade", "").lower() == "websocket":
            return "ws_turn"
        meta = headers.get("x-codex-turn-metadata")
        if meta and '"compaction"' in meta:
            try:
                if json.loads(meta).get("request_kind") == "compaction":
                    return "compaction"
            except (ValueError, AttributeError):
                pass
        return "sse_turn"
    if p == "/backend-api/codex/models":
        return "models"
    if p == "/backend-api/wham/usage":
        return "usage"
    return "other"


# how far into a request body `model` is looked for: Codex and the SDKs write it first, so the
# lookup (and the decoding of a compressed body for it) never needs more than this much
MODEL_SCAN_BYTES = 65536


def model_from_body(body: bytes | None) -> str | None:
    """The request's `model` (first occurrence in the first MODEL_SCAN_BYTES, the top-level key in
    Codex's bodies)."""
    if not body:
        return None
    m = _MODEL.search(body[:MODEL_SCAN_BYTES])
    return m.group(1).decode("utf-8", "replace") if m else None


def record_outcome(outcome: str, turn: Mapping[str, Any] | None) -> str:
    """The `outcome` a record gets: the exchange's (`Exchange.ledger_outcome()`), except `unparsed`
    for an answer that passed as ok although the proxy never saw how it ended, because it could not
    read the whole stream (`TurnObserver.summary()["unparsed"]`): its tokens are unknown, not zero,
    and a report must not count it as a free, successful turn."""
    if outcome == "ok" and turn and turn.get("unparsed") and not turn.get("terminal"):
        return "unparsed"
    return outcome


def build_record(
    *,
    ts: float,
    account: str,
    kind: str,
    path: str,
    status: int | None,
    outcome: str,
    usage: Mapping[str, Any] | None,
    model: str | None,
    ttfb_ms: float | None,
    duration_ms: float | None,
    attempt: int,
    conversation: str | None,
    key: str | None = None,
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "ts": round(ts, 3),
        "account": account,
        "model": model,
        "kind": kind,
        "status": status,
        "outcome": outcome,
    }
    for field in TOKEN_FIELDS:
        value = (usage or {}).get(field, 0)
        record[field] = value if isinstance(value, int) and not isinstance(value, bool) else 0
    record.update({
        "ttfb_ms": ttfb_ms,
        "duration_ms": None if duration_ms is None else round(duration_ms, 1),
        "attempt": attempt,
        "conversation": conversation,
        "path": bare(path)[:200],
    })
    if key is not None:
        record["key"] = key  # the client key's name (never the key)
    return record
