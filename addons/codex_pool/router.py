"""Routing one request: conversation → account, with stickiness and the selection policy.

Pure (no mitmproxy, no I/O): the addon hands in the hashed conversation key and the clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .accounts import AccountRegistry
from .auth_file import Account
from .selection import choose
from .stickiness import StickyMap


@dataclass(frozen=True)
class Route:
    account: Account
    reason: str  # "pinned" | "sticky" | policy name
    conversation: str | None  # hashed key


@dataclass(frozen=True)
class NoRoute:
    """No account can serve: the local answer to give instead."""

    status: int
    type: str
    code: str
    message: str


@dataclass
class _Lane:
    """Policy memory for one kind of placement: the round-robin cursor and LRU times."""

    last_choice: str | None = None
    last_picked: dict[str, float] = field(default_factory=dict)


class Router:
    """Places requests on accounts. New conversations and keyless requests (model lists, plugin
    look-ups, ...) are spread in separate lanes, so the chatter of keyless requests between two
    conversations does not decide where the next conversation lands."""

    def __init__(self, registry: AccountRegistry, policy: str, sticky_ttl: float):
        self.registry = registry
        self.policy = policy
        self.sticky = StickyMap(sticky_ttl)
        self.pinned: str | None = None
        self._lanes = {"conversation": _Lane(), "keyless": _Lane()}

    def reconfigure(self, policy: str, sticky_ttl: float) -> None:
        self.policy = policy
        self.sticky.ttl = sticky_ttl

    def route(self, conversation: str | None, now: float) -> Route | NoRoute:
        lane = self._lanes["conversation" if conversation else "keyless"]
        candidates = self.registry.candidates(now, lane.last_picked)
        sticky = self.sticky.get(conversation, now) if conversation else None
        choice = choose(
            candidates,
            policy=self.policy,
            sticky=sticky,
            pinned=self.pinned,
            last_policy_choice=lane.last_choice,
        )
        if choice is None:
            return NoRoute(503, "no_accounts", "no_accounts", self.registry.why_none_usable(now))
        if choice.reason == self.policy:
            lane.last_choice = choice.name
            lane.last_picked[choice.name] = now
        if conversation:
            self.sticky.put(conversation, choice.name, now)
        rt = self.registry.rt(choice.name)
        rt.last_used = now
        rt.requests += 1
        return Route(self.registry.accounts[choice.name], choice.reason, conversation)
