"""Refresh tokens this proxy must never present again, remembered across restarts.

Refresh tokens are single-use. A token is written here *before* it is sent to the token endpoint
(so a kill right after sending still remembers it) and taken off again when the call provably
did not consume it (the connection failed, or the server answered without rotating it). What stays:

- tokens whose answer was lost in transit (the server may have consumed them): presenting one
  again could only earn `refresh_token_reused`, which disables the account — the account waits for
  its file to change instead;
- tokens refused for good (`refresh_token_invalidated`, `…_reused`, `invalid_grant`, …), with the
  code: the account is reported `reauth_required` at once, without asking the server again.

No token is stored: only its HMAC-SHA256 under the data_dir's own key (the conversation-hash key),
in `data_dir/spent-refresh-tokens.json` (0600, written atomically). Bounded: the newest
`MAX_ENTRIES` are kept.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from pathlib import Path

from codex_pool.storage.files import write_atomic

log = logging.getLogger("codex_pool")

NAME = "spent-refresh-tokens.json"
MAX_ENTRIES = 2000
SENT = "sent"  # presented; whether it was consumed is unknown


class SpentTokens:
    def __init__(self, path: Path | None, key: bytes):
        self.path = path  # None: in memory only
        self._key = key
        self._entries: dict[str, list] = {}  # digest -> [status ("sent" or a refusal code), unix time]

    @classmethod
    def open(cls, data_dir: Path, key: bytes) -> SpentTokens:
        """The store of `data_dir`; an unreadable file is logged and started afresh."""
        store = cls(data_dir / NAME, key)
        try:
            doc = json.loads(store.path.read_bytes())
            entries = doc.get("tokens") if isinstance(doc, dict) else None
            if isinstance(entries, dict):
                store._entries = {d: e for d, e in entries.items()
                                  if isinstance(d, str) and isinstance(e, list) and len(e) == 2 and isinstance(e[0], str)}
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as e:
            log.warning("codex-pool: %s is unreadable (%s); starting without it", store.path, e)
        return store

    def _digest(self, token: str) -> str:
        return hmac.new(self._key, token.encode(), hashlib.sha256).hexdigest()

    def __contains__(self, token: str) -> bool:
        return self._digest(token) in self._entries

    def refusal(self, token: str) -> str | None:
        """The code the token endpoint refused this token with, if it did."""
        entry = self._entries.get(self._digest(token))
        return entry[0] if entry is not None and entry[0] != SENT else None

    def sent(self, token: str) -> None:
        self._entries[self._digest(token)] = [SENT, int(time.time())]
        self._trim()
        self.save()

    def refused(self, token: str, code: str) -> None:
        self._entries[self._digest(token)] = [code or "refused", int(time.time())]
        self._trim()
        self.save()

    def not_consumed(self, token: str) -> None:
        """The call provably left the token valid: it may be presented again."""
        if self._entries.pop(self._digest(token), None) is not None:
            self.save()

    def _trim(self) -> None:
        if len(self._entries) > MAX_ENTRIES:
            newest = sorted(self._entries.items(), key=lambda kv: kv[1][1])[-MAX_ENTRIES:]
            self._entries = dict(newest)

    def save(self) -> None:
        """Write the file (blocking: callers on the event loop go through a thread). A failure is
        logged: the memory copy still protects this process."""
        if self.path is None:
            return
        try:
            write_atomic(self.path, json.dumps({"tokens": self._entries}, separators=(",", ":")).encode())
        except OSError as e:
            log.warning("codex-pool: cannot write %s (%s); spent refresh tokens are remembered until restart only",
                        self.path, e)
