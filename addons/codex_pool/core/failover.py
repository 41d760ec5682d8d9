"""Serving a failed request again on another account, without mitmproxy being able to re-send it.

Mechanism (chosen by experiment with Codex CLI 0.169.0 and the openai package, both of which
follow a 307 and re-send the body): the proxy answers `307` to the same path with a marker
query parameter naming a *chain*; the client re-sends the request; the addon strips the marker,
looks up which accounts the chain already tried and routes to another one. The retried answer
streams live, like any other. Bounded: `max_attempts` per chain, never the same account twice.

A WebSocket upgrade is not redirected (WebSocket clients don't follow redirects): it is answered
503 with a short Retry-After, which Codex retries on a new connection that lands elsewhere.
"""

from __future__ import annotations

import collections
import secrets
from dataclasses import dataclass, field
from urllib.parse import quote

from codex_pool.core.outcome import Verdict

MARKER = "codex-pool-retry"
CHAIN_TTL = 300.0
MAX_CHAINS = 10_000

PASS = "pass"  # let the answer through (nothing to fix, or it can't be taken back)
RETRY = "retry"  # send the client to try again on another account
ANSWER = "answer"  # replace with the pool's own honest answer (429 all limited / 503 why)


@dataclass
class Chain:
    id: str
    tried: list[str] = field(default_factory=list)
    created: float = 0.0
    refreshed: set[str] = field(default_factory=set)  # accounts given a second try after a token refresh

    @property
    def attempt(self) -> int:
        """The attempt number of the request being served now (1 = the first)."""
        return len(self.tried) + len(self.refreshed) + 1

    def marker(self) -> str:
        return f"{self.id}.{self.attempt}"


class Chains:
    """Failover chains by id, bounded in number and age."""

    def __init__(self) -> None:
        self._chains: collections.OrderedDict[str, Chain] = collections.OrderedDict()

    def resolve(self, marker: str | None, now: float) -> Chain:
        """The chain a (re-sent) request belongs to; a new one when the marker is absent, unknown or stale."""
        self._expire(now)
        if marker:
            chain_id = marker.split(".", 1)[0]
            chain = self._chains.get(chain_id)
            if chain is not None:
                return chain
        chain = Chain(secrets.token_hex(8), [], now)
        self._chains[chain.id] = chain
        while len(self._chains) > MAX_CHAINS:
            self._chains.popitem(last=False)
        return chain

    def __len__(self) -> int:
        return len(self._chains)

    def _expire(self, now: float) -> None:
        while self._chains:
            oldest = next(iter(self._chains.values()))
            if now - oldest.created <= CHAIN_TTL:
                break
            self._chains.popitem(last=False)


def decide(verdict: Verdict, *, attempt: int, max_attempts: int, has_alternative: bool, answer_sent: bool) -> str:
    """What to do with an answer from upstream for attempt `attempt` of a chain."""
    if not verdict.failed or answer_sent:
        return PASS
    if has_alternative and attempt < max_attempts:
        return RETRY
    return ANSWER


def retry_location(path: str, chain: Chain) -> str:
    """The same path and query with the chain's marker set (any old marker replaced)."""
    base, _, query = path.partition("?")
    params = [p for p in query.split("&") if p and not p.startswith(f"{MARKER}=")]
    params.append(f"{MARKER}={quote(chain.marker())}")
    return f"{base}?{'&'.join(params)}"
