"""The ledger's in-memory queue: hooks only append; a background task writes batches to a
`LedgerStore` in a worker thread (never from a hook)."""

from __future__ import annotations

import asyncio
import collections
import logging

log = logging.getLogger("codex_pool")


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

    def queued(self) -> list[dict]:
        """A copy of what is waiting to be written (for reports that must include it)."""
        return list(self._queue)

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
