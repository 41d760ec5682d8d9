"""Which account serves a request: a pure function of the usable accounts and what we know.

Order of precedence: a pinned account (while usable), then the conversation's sticky account
(while usable), then the policy for new conversations and requests without a key:
- `usage_balanced`: the most quota headroom (from rate-limit data), in 10-point bands so that
  near-equal accounts are taken in least-recently-used order; LRU alone while nothing is known.
  An account with no data yet counts as good as the best known one (and at least half full), so
  it is tried, and its quota learned, instead of new conversations piling onto the first account
  that reported.
- `round_robin`: the next account by name after the one the policy chose last.
- `fill_first`: the first account by name, until it stops being usable.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

HEADROOM_BAND = 10.0
UNKNOWN_FLOOR = 50.0


class Candidate(NamedTuple):
    """A usable account as selection sees it (a tuple: one is built per account per request)."""

    name: str
    last_used: float = 0.0  # unix seconds; 0 = never
    headroom: float | None = None  # percent left in the tightest known window


class Choice(NamedTuple):
    name: str
    reason: str  # "pinned" | "sticky" | the policy name


def choose(
    candidates: Sequence[Candidate],
    *,
    policy: str,
    sticky: str | None = None,
    pinned: str | None = None,
    last_policy_choice: str | None = None,
) -> Choice | None:
    """Pick an account among `candidates` (usable accounts only); None when there are none."""
    if not candidates:
        return None
    if pinned is not None or sticky is not None:
        names = {c.name for c in candidates}
        if pinned is not None and pinned in names:
            return Choice(pinned, "pinned")
        if sticky is not None and sticky in names:
            return Choice(sticky, "sticky")
    if policy == "usage_balanced":  # one pass; the key ends with the name, so order does not matter
        known = [c.headroom for c in candidates if c.headroom is not None]
        unknown_as = max(known) if known and max(known) > UNKNOWN_FLOOR else UNKNOWN_FLOOR
        return Choice(min(candidates, key=lambda c: _balanced_key(c, unknown_as)).name, policy)
    ordered = sorted(candidates)  # by name: names are unique and come first in the tuple
    if policy == "round_robin":
        after = [c for c in ordered if last_policy_choice is None or c.name > last_policy_choice]
        return Choice((after or ordered)[0].name, policy)
    if policy == "fill_first":
        return Choice(ordered[0].name, policy)
    raise ValueError(f"unknown policy {policy!r}")


def _balanced_key(c: Candidate, unknown_as: float) -> tuple[float, float, str]:
    headroom = unknown_as if c.headroom is None else c.headroom
    band = (min(max(headroom, 0.0), 100.0) // HEADROOM_BAND)
    return (-band, c.last_used, c.name)
