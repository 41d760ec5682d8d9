"""Usage records: what each request that reached upstream cost, queued on the request path and
written in batches by a background task (never by a hook).

`request_kind` and `build_record` are pure; `LedgerWriter` owns the queue and the flush loop and
hands batches to a `LedgerStore` in a worker thread.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import re
from collections.abc import Mapping
from typing import Any

from codex_pool.core.paths import bare

log = logging.getLogger("codex_pool")

TOKEN_FIELDS = ("input_tokens", "cached_input_tokens", "output_tokens", "reasoning_tokens", "total_tokens")
_MODEL = re.compile(rb'"model"\s*:\s*"([^"\\]{1,100})"')


def request_kind(method: str, path: str, headers: Mapping[str, str]) -> str:
    """sse_turn | ws_turn | compaction | models | usage | other."""
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


def model_from_body(body: bytes | None) -> str | None:
    """The request's `model` (first occurrence, the top-level key in Codex's bodies)."""
    if not body:
        return None
    m = _MODEL.search(body[:65536])
    return m.group(1).decode("utf-8", "replace") if m else None


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
    return record


class LedgerWriter:
    """The in-memory queue and its flush loop. `record()` is all a hook ever calls."""

    def __init__(self, store, max_queue: int = 200_000):
        self.store = store
        self._queue: collections.deque[dict] = collections.deque()
        self.max_queue = max_queue
        self.dropped = 0
        self.flushed = 0
        self._lock = asyncio.Lock()

    def record(self, record: dict) -> None:
        if len(self._queue) >= self.max_queue:
            self.dropped += 1  # the disk has been failing for a long time; keep memory bounded
            return
        self._queue.append(record)

    def pending(self) -> int:
        return len(self._queue)

    def _take(self) -> list[dict]:
        batch = list(self._queue)
        self._queue.clear()
        return batch

    async def flush(self) -> int:
        """Write what is queued, in a worker thread. On failure the batch goes back to the queue."""
        async with self._lock:
            batch = self._take()
            if not batch:
                return 0
            try:
                await asyncio.to_thread(self.store.append, batch)
            except Exception as e:
                # put back exactly what was not written (a store may have written part of it)
                remaining = list(getattr(e, "remaining", batch))
                self._queue.extendleft(reversed(remaining))
                log.warning("codex-pool: could not write %d usage record(s) to %s (%s); will retry",
                            len(remaining), getattr(self.store, "folder", "the ledger"), e)
                self.flushed += len(batch) - len(remaining)
                return len(batch) - len(remaining)
            finally:
                for warning in getattr(self.store, "take_warnings", lambda: [])():
                    log.warning("codex-pool: %s", warning)
            self.flushed += len(batch)
            return len(batch)

    def flush_sync(self) -> int:
        """At shutdown: write what is left, blocking."""
        batch = self._take()
        if batch:
            try:
                self.store.append(batch)
                self.flushed += len(batch)
            except Exception as e:
                log.warning("codex-pool: could not write %d usage record(s) at shutdown (%s)", len(batch), e)
        return len(batch)

    async def run(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await self.flush()
