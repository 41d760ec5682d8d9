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
    conversation: str | None = None  # a WebSocket reconnect of this conversation continues the chain
    fresh: bool = False  # the conversation had not been served before its first try: it moves with the chain

    @property
    def attempt(self) -> int:
        """The attempt number of the request being served now (1 = the first)."""
        return len(self.tried) + len(self.refreshed) + 1

    def marker(self) -> str:
        return f"{self.id}.{self.attempt}"


class Chains:
    """Failover chains by id, bounded in number and age. A chain exists only once a request has
    failed over; a first try has none (nothing is allocated on the normal path)."""

    def __init__(self) -> None:
        self._chains: collections.OrderedDict[str, Chain] = collections.OrderedDict()
        self._by_conversation: dict[str, str] = {}  # WebSocket reconnects carry no marker

    def find(self, marker: str | None, conversation: str | None, now: float) -> Chain | None:
        """The chain a re-sent request continues: by its marker, else (a WebSocket reconnect) by its
        conversation; None when there is none or it is stale."""
        self._expire(now)
        chain_id = marker.split(".", 1)[0] if marker else self._by_conversation.get(conversation or "")
        return self._chains.get(chain_id) if chain_id else None

    def start(self, first_account: str, conversation: str | None, now: float, fresh: bool = False) -> Chain:
        """A new chain for a request that failed on `first_account` and goes to another one.
        `fresh`: the failed try was the conversation's first placement (no prompt cache to keep)."""
        chain = Chain(secrets.token_hex(8), [first_account], now, conversation=conversation, fresh=fresh)
        self._chains[chain.id] = chain
        if conversation:
            self._drop(self._by_conversation.get(conversation))  # one chain per conversation
            self._by_conversation[conversation] = chain.id
        while len(self._chains) > MAX_CHAINS:
            self._drop(next(iter(self._chains)))
        return chain

    def get(self, chain_id: str | None) -> Chain | None:
        return self._chains.get(chain_id) if chain_id else None

    def end(self, chain_id: str | None) -> None:
        """The chain's request was served: a later request of its conversation starts afresh."""
        if chain_id and chain_id in self._chains:
            self._drop(chain_id)

    def __len__(self) -> int:
        return len(self._chains)

    def _drop(self, chain_id: str | None) -> None:
        chain = self._chains.pop(chain_id, None) if chain_id else None
        if chain is not None and chain.conversation and self._by_conversation.get(chain.conversation) == chain_id:
            del self._by_conversation[chain.conversation]

    def _expire(self, now: float) -> None:
        while self._chains:
            oldest = next(iter(self._chains.values()))
            if now - oldest.created <= CHAIN_TTL:
                break
            self._drop(oldest.id)


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
