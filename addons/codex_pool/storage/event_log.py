"""The event log: JSON lines under data_dir (`events.jsonl`), rotated by size.

`emit()` only appends to a bounded in-memory queue (it is called from hooks); `flush()` does the
file I/O and is run in a worker thread by `run()`. String values are passed through `redact()`
as a last line of defence: nothing that looks like a token is ever written.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from codex_pool.core.redact import redact

log = logging.getLogger("codex_pool")


class EventLog:
    def __init__(self, path: Path, max_bytes: int = 5 << 20, backups: int = 3, max_queue: int = 10_000):
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._queue: collections.deque[dict[str, Any]] = collections.deque(maxlen=max_queue)
        self.dropped = 0
        self._warned = False

    def emit(self, event: str, **fields: Any) -> None:
        """Queue one event; never blocks, never raises."""
        try:
            if len(self._queue) == self._queue.maxlen:
                self.dropped += 1
            entry = {"ts": _iso(time.time()), "event": event}
            entry.update({k: _clean(v) for k, v in fields.items() if v is not None})
            self._queue.append(entry)
        except Exception:  # a log line is never worth a failed request
            self.dropped += 1

    def flush(self) -> int:
        """Write what is queued (blocking: call from a worker thread). Returns lines written."""
        lines = []
        while self._queue:
            lines.append(json.dumps(self._queue.popleft(), ensure_ascii=False, separators=(",", ":")))
        if not lines:
            return 0
        data = ("\n".join(lines) + "\n").encode()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._rotate_if_needed(len(data))
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            with os.fdopen(fd, "ab") as f:
                f.write(data)
        except OSError as e:
            if not self._warned:
                log.warning("codex-pool: cannot write the event log %s (%s); events are dropped until it can", self.path, e)
                self._warned = True
            self.dropped += len(lines)
            return 0
        self._warned = False
        return len(lines)

    def _rotate_if_needed(self, incoming: int) -> None:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return
        if size + incoming <= self.max_bytes:
            return
        for i in range(self.backups, 0, -1):
            src = self.path if i == 1 else self.path.with_name(f"{self.path.name}.{i - 1}")
            if src.exists():
                os.replace(src, self.path.with_name(f"{self.path.name}.{i}"))

    async def run(self, interval: float = 1.0) -> None:
        """Flush every `interval` seconds until cancelled; flushes once more on the way out."""
        try:
            while True:
                await asyncio.sleep(interval)
                await asyncio.to_thread(self.flush)
        finally:
            self.flush()


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)[:500]
    if isinstance(value, float) and value > 1e9:  # a unix time
        return _iso(value)
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return value
