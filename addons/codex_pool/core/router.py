"""Routing one request: conversation → account, with stickiness, failover exclusions and the policy.

Pure (no mitmproxy, no I/O): the addon hands in the hashed conversation key and the clock.

A conversation whose account is briefly out (cooling, or limited for less than
`repin_after`) is served by a stand-in and keeps its pin, so it returns to its warm prompt
cache afterwards; an account out for longer, disabled or gone loses the conversation for good.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field

from codex_pool.core.accounts import AccountRegistry, iso
from codex_pool.core.auth_file import Account
from codex_pool.core.health import COOLING, DISABLED, LIMITED
from codex_pool.core.selection import choose
from codex_pool.core.stickiness import StickyMap


MAX_STANDINS = 10_000  # conversations remembered with their stand-in (outages are short; not saved)
REFRESH_RETRY_SECONDS = 5  # Retry-After while an account waits for a token refresh that did not land in time


@dataclass(slots=True)
class Route:
    account: Account
    reason: str  # "pinned" | "sticky" | "standin" | "repinned" | policy name
    conversation: str | None  # hashed key
    pinned_to: str | None = None  # the conversation's own account when a stand-in or the admin pin serves


@dataclass(frozen=True)
class NoRoute:
    """No account can serve: the honest local answer to give instead."""

    status: int
    type: str
    code: str
    message: str
    retry_after: int | None = None
    extra: dict = field(default_factory=dict)  # more error fields, e.g. resets_at


@dataclass(frozen=True, slots=True)
class AwaitRefresh:
    """The request's account needs only a token refresh: wait for one of `accounts` to be
    refreshed (bounded), then route again without waiting. The conversation's own account when it
    has one (its prompt cache is there), else every account a refresh would bring back."""

    accounts: tuple[str, ...]


@dataclass
class _Lane:
    """Policy memory for one kind of placement: the round-robin cursor and LRU times."""

    last_choice: str | None = None
    last_picked: dict[str, float] = field(default_factory=dict)


class Router:
    """Places requests on accounts. New conversations and keyless requests (model lists, plugin
    look-ups, ...) are spread in separate lanes, so the chatter of keyless requests between two
    conversations does not decide where the next conversation lands."""

    def __init__(self, registry: AccountRegistry, policy: str, sticky_ttl: float, repin_after: float = 600.0):
        self.registry = registry
        self.policy = policy
        self.repin_after = repin_after
        self.sticky = StickyMap(sticky_ttl)
        self.pinned: str | None = None
        self._standins: OrderedDict[str, str] = OrderedDict()  # conversation -> its stand-in while its account is out
        self._lanes = {"conversation": _Lane(), "keyless": _Lane()}

    def reconfigure(self, policy: str, sticky_ttl: float, repin_after: float | None = None) -> None:
        self.policy = policy
        self.sticky.ttl = sticky_ttl
        if repin_after is not None:
            self.repin_after = repin_after

    def keeps_pin(self, name: str, now: float) -> bool:
        """Whether a conversation pinned to `name` keeps that pin while someone else stands in."""
        account = self.registry.accounts.get(name)
        if account is None or (account.expired(now) and not self.registry.needs_refresh(name, now)):
            return False
        h = self.registry.health.peek(name)
        if h.state == DISABLED:
            return False
        return self.registry.health.out_for(name, now) <= self.repin_after

    def route(self, conversation: str | None, now: float, exclude: frozenset[str] = frozenset(),
              may_wait: bool = True, fresh: bool = False) -> Route | NoRoute | AwaitRefresh:
        """Where this request goes. `may_wait`: an account that needs only a token refresh is waited
        for (AwaitRefresh) rather than left — the conversation's own account, or any when no other
        can serve; the caller routes again with `may_wait=False` once the refresh is done or given up.
        `fresh`: a failover of the conversation's first placement — the account that failed it is not
        its own yet, so it is placed again (and pinned to whichever account serves it)."""
        pin_of_conversation = self.sticky.get(conversation, now) if conversation else None
        if fresh and pin_of_conversation in exclude:
            pin_of_conversation = None
        if pin_of_conversation is not None and self.pinned is None and pin_of_conversation not in exclude:
            if self.registry.is_usable(pin_of_conversation, now):
                if self._standins:
                    self._standins.pop(conversation, None)  # back on its own account: the outage is over
                return self._serve(pin_of_conversation, "sticky", conversation, None, now)  # the common case, cheaply
            if may_wait and self.registry.needs_refresh(pin_of_conversation, now):
                return AwaitRefresh((pin_of_conversation,))
        lane = self._lanes["conversation" if conversation else "keyless"]
        candidates = self.registry.candidates(now, lane.last_picked)
        if exclude:
            candidates = [c for c in candidates if c.name not in exclude]
        usable = {c.name for c in candidates} if pin_of_conversation is not None or self.pinned is not None else ()
        standin_for = None
        if pin_of_conversation is not None and pin_of_conversation not in usable:
            if self.keeps_pin(pin_of_conversation, now):
                standin_for = pin_of_conversation
        pinned = self.pinned if self.pinned in usable else None
        standin = self._standins.get(conversation) if pin_of_conversation is not None and pinned is None else None
        if standin is not None and standin in usable and standin not in exclude:
            if standin_for is not None:
                # one stand-in for the whole outage, so its prompt cache warms up (not the next account in turn)
                return self._serve(standin, "standin", conversation, standin_for, now)
            # the conversation's account is gone for good: its stand-in, where its cache now is, takes it over
            self._standins.pop(conversation, None)
            return self._serve(standin, "repinned", conversation, None, now)
        choice = choose(
            candidates,
            policy=self.policy,
            sticky=pin_of_conversation if pin_of_conversation in usable else None,
            pinned=pinned,
            last_policy_choice=lane.last_choice,
        )
        if choice is None:
            refreshable = tuple(n for n in self.registry.refreshable_names(now) if n not in exclude)
            if may_wait and refreshable:
                return AwaitRefresh(refreshable)
            return self.unavailable(now, exclude)
        reason = choice.reason
        if choice.reason == self.policy:
            lane.last_choice = choice.name
            lane.last_picked[choice.name] = now
            if standin_for is not None:
                reason = "standin"
                self._remember_standin(conversation, choice.name)
            elif pin_of_conversation is not None:
                reason = "repinned"
                self._standins.pop(conversation, None)
        if choice.reason == "pinned" and pin_of_conversation is not None and (
                pin_of_conversation in usable or self.keeps_pin(pin_of_conversation, now)):
            standin_for = pin_of_conversation if pin_of_conversation != choice.name else None
        return self._serve(choice.name, reason, conversation, standin_for, now)

    def _remember_standin(self, conversation: str, name: str) -> None:
        self._standins[conversation] = name
        self._standins.move_to_end(conversation)
        while len(self._standins) > MAX_STANDINS:
            self._standins.popitem(last=False)

    def _serve(self, name: str, reason: str, conversation: str | None, standin_for: str | None, now: float) -> Route:
        if conversation:
            # an admin pin or a stand-in serves the conversation without taking it over
            self.sticky.put(conversation, standin_for or name, now)
        rt = self.registry.rt(name)
        rt.last_used = now
        rt.requests += 1
        return Route(self.registry.accounts[name], reason, conversation, standin_for)

    def has_alternative(self, now: float, exclude: frozenset[str]) -> bool:
        """Another account could serve: usable now, or once a token refresh lands."""
        return any(name not in exclude for name in self.registry.usable_names(now)) or any(
            name not in exclude for name in self.registry.refreshable_names(now))

    def unavailable(self, now: float, exclude: frozenset[str] = frozenset()) -> NoRoute:
        """Why nothing can serve, as the answer a client can act on.

        Every account limited → 429 `usage_limit_reached` with the earliest reset in the pool (Codex
        prints that time). Some cooling down or waiting for a token refresh → 503 with Retry-After
        until the first can serve again (a cooldown ending, a limit resetting, a refresh landing).
        Otherwise 503 `no_accounts` saying why (pool empty, files invalid, all disabled)."""
        reg = self.registry
        label = reg.pool_label
        if reg.folder_error:
            return NoRoute(503, "no_accounts", "no_accounts", f"the pool folder is unusable: {reg.folder_error}")
        if not reg.accounts:
            if reg.problems:
                names = ", ".join(p.path.name for p in list(reg.problems.values())[:5])
                msg = f"{label} has no usable account: every file is invalid ({names}); see the proxy log, fix or replace them"
            else:
                msg = f"{label} has no usable account — drop a Codex auth.json there (or POST /admin/reload after adding one)"
            return NoRoute(503, "no_accounts", "no_accounts", msg)
        usable = reg.usable_names(now)
        if usable:  # usable accounts exist, but this request already tried them
            return NoRoute(503, "no_accounts", "no_accounts",
                           f"every usable pool account already failed this request ({', '.join(sorted(exclude))}); retry",
                           retry_after=1)
        limited, cooling, refreshing, out = [], [], [], []
        for name in sorted(reg.accounts):
            h = reg.health.peek(name)
            if h.state == LIMITED and h.until:
                limited.append((h.until, name))
            elif h.state == COOLING and h.until:
                cooling.append((h.until, name))
            elif reg.needs_refresh(name, now):
                refreshing.append(name)
            else:
                out.append(f"{name}: {reg.unusable_reason(name, now)}")
        if cooling or refreshing:
            # the earliest moment any account can serve: a cooldown ending, a limit resetting, or a
            # token refresh (retried every few seconds) landing
            first_back, who = min(cooling + limited) if cooling or limited else (math.inf, "")
            wait = max(1, math.ceil(first_back - now)) if first_back != math.inf else REFRESH_RETRY_SECONDS
            if refreshing and wait > REFRESH_RETRY_SECONDS:
                wait, who = REFRESH_RETRY_SECONDS, refreshing[0]
            parts = ([f"{n} refreshing its access token" for n in refreshing]
                     + [f"{n} cooling down until {iso(u)}" for u, n in cooling]
                     + [f"{n} limited until {iso(u)}" for u, n in limited] + out)
            return NoRoute(503, "no_accounts", "no_accounts",
                           f"no pool account can serve right now; {who} should be back in {wait}s ({'; '.join(parts)})",
                           retry_after=wait)
        if limited:
            resets_at, who = min(limited)
            return NoRoute(
                429, "usage_limit_reached", "usage_limit_reached",
                f"Every pool account has hit its usage limit; the first to reset is {who} at {iso(resets_at)}.",
                extra={"resets_at": int(math.ceil(resets_at)), "resets_in_seconds": max(0, int(math.ceil(resets_at - now)))},
            )
        return NoRoute(503, "no_accounts", "no_accounts", "no pool account is usable: " + "; ".join(out[:10]))
