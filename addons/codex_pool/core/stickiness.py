"""Conversation → account map with an idle time-to-live.

Keys are already-hashed conversation keys (see conversation.py); the raw ids never live here.
An entry expires when it has not been used for `ttl` seconds. The map is bounded: past
`max_entries` the least recently used entry is dropped.
"""

from __future__ import annotations

from collections import Counter, OrderedDict


class StickyMap:
    def __init__(self, ttl: float, max_entries: int = 200_000):
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[str, float]] = OrderedDict()  # key -> (account, last_seen)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str, now: float) -> str | None:
        """The account this conversation is on, or None (unknown or idle past the TTL)."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        account, last_seen = entry
        if now - last_seen > self.ttl:
            del self._entries[key]
            return None
        return account

    def put(self, key: str, account: str, now: float) -> None:
        """Stick the conversation to the account and refresh its idle timer."""
        self._entries[key] = (account, now)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def forget(self, key: str, account: str) -> bool:
        """Drop the conversation's pin if it is (still) on `account`; True when dropped."""
        entry = self._entries.get(key)
        if entry is None or entry[0] != account:
            return False
        del self._entries[key]
        return True

    def prune(self, now: float) -> int:
        """Drop idle entries; returns how many were dropped."""
        expired = [k for k, (_, seen) in self._entries.items() if now - seen > self.ttl]
        for k in expired:
            del self._entries[k]
        return len(expired)

    def counts(self, now: float) -> Counter[str]:
        """Live conversations per account."""
        return Counter(a for a, seen in self._entries.values() if now - seen <= self.ttl)

    def export(self, now: float) -> list[list]:
        """Live entries as [key, account, last_seen in whole seconds], oldest first (for saving;
        whole seconds make the saved document a third as costly to encode as floats)."""
        return [[k, a, int(seen)] for k, (a, seen) in self._entries.items() if now - seen <= self.ttl]

    def import_(self, entries: list, now: float) -> int:
        """Take saved entries back (skipping malformed or expired ones); returns how many."""
        n = 0
        for entry in entries:
            if (isinstance(entry, (list, tuple)) and len(entry) == 3 and isinstance(entry[0], str)
                    and isinstance(entry[1], str) and isinstance(entry[2], (int, float)) and now - entry[2] <= self.ttl):
                self.put(entry[0], entry[1], entry[2])
                n += 1
        return n
