"""When an upstream answer is overdue. Pure: the stream watchdog (mitm/watchdog.py) asks once a
second about every exchange in flight.

- Nothing from upstream (no response headers) `first_byte` seconds after the request went out:
  `first_byte_timeout`. Nothing has reached the client yet, so it can be served elsewhere.
- A streamed answer that started but has sent no byte for `idle` seconds: `stream_idle_timeout`.
  It is ended like a cut stream (Codex retries it).

Defaults (mitm.yaml `first_byte_timeout_seconds` 120, `stream_idle_timeout_seconds` 240) sit below
what Codex 0.169.0 tolerates itself (`stream_idle_timeout_ms` 300000: a stream silent for five
minutes is dropped and retried; ../shared/reference/codex-protocol.md), so the proxy acts first and
marks the account; 0 turns either off. A compaction answer (not streamed) arrives only when it is
done: keep `first_byte_timeout_seconds` above your longest compaction.
"""

from __future__ import annotations

FIRST_BYTE = "first_byte_timeout"
STREAM_IDLE = "stream_idle_timeout"


def overdue(*, opened_at: float, first_byte_at: float | None, streaming: bool, last_progress_at: float,
            now: float, first_byte: float, idle: float) -> str | None:
    """Which deadline an exchange missed, or None. `last_progress_at`: when its stream last grew."""
    if first_byte_at is None:
        return FIRST_BYTE if first_byte > 0 and now - opened_at >= first_byte else None
    if streaming and idle > 0 and now - max(last_progress_at, first_byte_at) >= idle:
        return STREAM_IDLE
    return None
