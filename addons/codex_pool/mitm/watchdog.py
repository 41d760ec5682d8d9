"""The stream watchdog: an upstream that accepts a request and then sends nothing, or goes silent
in the middle of a stream, must not hang the client (core/watchdog.py decides when).

Once a second it looks at every exchange in flight. An overdue one is marked (`Exchange.stalled`)
and its upstream connection is closed, so mitmproxy ends the exchange the way it ends one whose
upstream went away: before the answer began, the client gets a 502 (Codex retries it, and the
retry goes to another account, because this one now cools down); after, the stream is cut (Codex
retries that too). The `error` hook (mitm/verdicts.py) then cools the account down for the
watchdog's reason and the ledger records the outcome.

Closing one upstream connection uses mitmproxy's proxyserver (its live connection handlers by
client connection id); mitmproxy offers no per-request upstream timeout of its own.
"""

from __future__ import annotations

import asyncio
import logging

from mitmproxy import ctx, http

from codex_pool.core import watchdog
from codex_pool.core.pool import Pool
from codex_pool.core.sse import SSETap
from codex_pool.mitm.flows import CLIENT, describe_error

log = logging.getLogger("codex_pool")

TICK_SECONDS = 0.5


class StreamWatchdog:
    def __init__(self, pool: Pool):
        self.pool = pool
        self._flows: dict[str, http.HTTPFlow] = {}  # routed flows by id, dropped once their exchange closes
        self._progress: dict[str, tuple[int, float]] = {}  # flow id -> (stream bytes seen, when that changed)
        self._task: asyncio.Task | None = None

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is None and flow.id in self.pool.exchanges:
            self._flows[flow.id] = flow

    def running(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch())

    def done(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(TICK_SECONDS)
            try:
                self.check(self.pool.now())
            except Exception as e:  # never let the watchdog die
                log.error("codex-pool: stream watchdog failed: %s", describe_error(e))

    def check(self, now: float) -> list[str]:
        """Cut every overdue exchange; returns the flow ids cut."""
        config = self.pool.config
        first_byte = config.first_byte_timeout_seconds if config else 0.0
        idle = config.stream_idle_timeout_seconds if config else 0.0
        cut = []
        for flow_id, flow in list(self._flows.items()):
            exchange = self.pool.exchanges.get(flow_id)
            if exchange is None or flow.websocket is not None:  # over, or a WebSocket (its turns have their own clock)
                self._forget(flow_id)
                continue
            tap = flow.response.stream if flow.response is not None and isinstance(flow.response.stream, SSETap) else None
            seen = tap.bytes_seen if tap is not None else 0
            previous = self._progress.get(flow_id)
            if previous is None or previous[0] != seen:
                self._progress[flow_id] = previous = (seen, now)
            # an answer buffered for a client that asked for one object (mitm/openai_compat.py) shows no
            # progress: it gets the idle timeout for all of it, counted from its headers
            buffered = (tap is None and exchange.first_byte_at is not None and flow.response is not None
                        and flow.response.stream is False and CLIENT in flow.metadata)
            why = watchdog.overdue(opened_at=exchange.opened_at, first_byte_at=exchange.first_byte_at,
                                   streaming=(tap is not None and not tap.ended) or buffered,
                                   last_progress_at=exchange.first_byte_at if buffered else previous[1],
                                   now=now, first_byte=first_byte, idle=idle)
            if why is None:
                continue
            exchange.stalled = why
            log.warning("codex-pool: %s %s on %s: nothing from upstream for %.0f s (%s); cutting it so the client "
                        "retries elsewhere", flow.request.method, flow.request.path, exchange.account,
                        first_byte if why == watchdog.FIRST_BYTE else idle, why)
            self._forget(flow_id)
            _close_upstream(flow)
            cut.append(flow_id)
        return cut

    def _forget(self, flow_id: str) -> None:
        self._flows.pop(flow_id, None)
        self._progress.pop(flow_id, None)


def _close_upstream(flow: http.HTTPFlow) -> None:
    """Close the flow's upstream connection (mitmproxy then ends the exchange as if upstream had).
    A connection mitmproxy no longer holds has ended already: nothing to cut."""
    proxyserver = ctx.master.addons.get("proxyserver")
    handler = getattr(proxyserver, "connections", {}).get(flow.client_conn.id) if proxyserver else None
    if handler is not None and flow.server_conn in getattr(handler, "transports", {}):
        handler.close_connection(flow.server_conn)
