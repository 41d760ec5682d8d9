"""Routing one request: conversation → account, with stickiness and the selection policy.

Pure (no mitmproxy, no I/O): the addon hands in the hashed conversation key and the clock.
"""

from __future__ import annotations

from dataclasses import dataclass

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


class Router:
    def __init__(self, registry: AccountRegistry, policy: str, sticky_ttl: float):
        self.registry = registry
        self.policy = policy
        self.sticky = StickyMap(sticky_ttl)
        self.pinned: str | None = None
        self._last_policy_choice: str | None = None

    def reconfigure(self, policy: str, sticky_ttl: float) -> None:
        self.policy = policy
        self.sticky.ttl = sticky_ttl

    def route(self, conversation: str | None, now: float) -> Route | NoRoute:
        candidates = self.registry.candidates(now)
        sticky = self.sticky.get(conversation, now) if conversation else None
        choice = choose(
            candidates,
            policy=self.policy,
            sticky=sticky,
            pinned=self.pinned,
            last_policy_choice=self._last_policy_choice,
        )
        if choice is None:
            return NoRoute(503, "no_accounts", "no_accounts", self.registry.why_none_usable(now))
        if choice.reason == self.policy:
            self._last_policy_choice = choice.name
        if conversation:
            self.sticky.put(conversation, choice.name, now)
        rt = self.registry.rt(choice.name)
        rt.last_used = now
        rt.requests += 1
        return Route(self.registry.accounts[choice.name], choice.reason, conversation)
