"""The event log: JSON lines under data_dir (`events.jsonl`), rotated by size.

`emit()` only appends to a bounded in-memory queue (it is called from hooks, so it neither encodes
nor writes); `flush()` cleans, encodes and writes, and is run in a worker thread by `run()`. String
values are passed through `redact()` as a last line of defence: nothing that looks like a token is
ever written. Account state changes are also logged (`Events`).
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
        self._queue: collections.deque[tuple[float, str, dict[str, Any]]] = collections.deque(maxlen=max_queue)
        self.dropped = 0
        self._warned = False
        self._checked_tail = False  # the file's last line was checked for a tear (once per process)

    def emit(self, event: str, **fields: Any) -> None:
        """Queue one event; never blocks, never raises."""
        self.put(event, fields)

    def put(self, event: str, fields: dict[str, Any]) -> None:
        """`emit` with the fields as one dict (kept as given, not copied)."""
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
        self._queue.append((time.time(), event, fields))

    def flush(self) -> int:
        """Write what is queued (blocking: call from a worker thread). Returns lines written."""
        lines = []
        while self._queue:
            ts, event, fields = self._queue.popleft()
            try:
                entry = {"ts": _iso(ts), "event": event}
                entry.update({k: _clean(v) for k, v in fields.items() if v is not None})
                lines.append(json.dumps(entry, ensure_ascii=False, separators=(",", ":"), default=str))
            except Exception:  # a log line is never worth more than itself
                self.dropped += 1
        if not lines:
            return 0
        data = ("\n".join(lines) + "\n").encode()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not self._checked_tail:  # once per process, before a rotation could move the tear away
                self._checked_tail = True
                _cut_torn_tail(self.path)
            self._rotate_if_needed(len(data))
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
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
                if self._queue:  # an idle proxy costs no thread hop
                    await asyncio.to_thread(self.flush)
        finally:
            self.flush()


def _cut_torn_tail(path: Path) -> None:
    """Mend a last line that a killed writer left unfinished. Linux stops a write(2) to a regular
    file at a page boundary when SIGKILL arrives (`generic_perform_write` checks
    `fatal_signal_pending`), so a kill -9 mid-batch can leave half a line: that half is no event and
    is cut, so every line of the file stays JSON. A whole event that lost only its newline (the
    boundary fell just before it) keeps its place and gets the newline."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND)
    except FileNotFoundError:
        return
    try:
        size = end = os.fstat(fd).st_size
        if not size or os.pread(fd, 1, size - 1) == b"\n":
            return
        keep = 0
        while end > 0:  # back to the last newline, 64 KiB at a time
            start = max(0, end - (64 << 10))
            at = os.pread(fd, end - start, start).rfind(b"\n")
            if at >= 0:
                keep = start + at + 1
                break
            end = start
        try:
            json.loads(os.pread(fd, size - keep, keep))
            whole = True
        except ValueError:
            whole = False
        if whole:
            os.write(fd, b"\n")
            return
        os.ftruncate(fd, keep)
        log.warning("codex-pool: the event log %s ended in a line cut short by a killed process; its %d bytes were removed",
                    path, size - keep)
    finally:
        os.close(fd)


_last_second: tuple[int, str] = (-1, "")  # the last whole second formatted: events come many per second


def _iso(ts: float) -> str:
    """`2026-12-01T04:21:12.345Z` (UTC, milliseconds, truncated like isoformat)."""
    global _last_second
    whole = int(ts // 1)
    micros = round((ts - whole) * 1e6)  # as datetime rounds it, then truncated to milliseconds
    if micros >= 1_000_000:
        whole, micros = whole + 1, micros - 1_000_000
    cached = _last_second  # one read of one tuple: flushes in other threads cannot tear it
    if cached[0] != whole:
        cached = _last_second = (whole, datetime.fromtimestamp(whole, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"))
    return f"{cached[1]}.{micros // 1000:03d}Z"


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


class Events:
    """The pool's event sink: every event into the current event log (which can be swapped when
    data_dir changes), and account state changes into the proxy's log as well."""

    def __init__(self) -> None:
        self.log: EventLog | None = None

    def emit(self, event: str, **fields: Any) -> None:
        if self.log is not None:
            self.log.put(event, fields)
        if event.startswith("account.") and event not in ("account.refreshed", "account.refresh_failed"):
            level = logging.INFO if event == "account.recovered" else logging.WARNING
            log.log(level, "codex-pool: %s %s %s", event, fields.get("account"),
                    " ".join(f"{k}={v}" for k, v in fields.items() if v is not None and k not in ("detail", "account")))
