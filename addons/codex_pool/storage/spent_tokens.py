"""Refresh tokens no proxy may present again, remembered beside the pool file.

Refresh tokens are single-use. A token is marked *before* it is sent to the token endpoint (so a
kill right after sending still knows) and unmarked when the call provably did not consume it (the
connection failed, or the server answered without rotating it). What stays marked:

- a token whose answer was lost in transit (the server may have consumed it): presenting it again
  could only earn `refresh_token_reused`, which disables the account — the account waits for its
  file to change instead;
- a token refused for good (`refresh_token_invalidated`, `…_reused`, `invalid_grant`, …), with the
  code: the account is reported `reauth_required` at once, without asking the server again.

The mark lives beside the pool file (`pool/.alice.json.spent`, 0600, written atomically, like the
lock file `pool/.alice.json.lock`), so every proxy sharing the pool folder sees it, and so does the
same proxy after a restart. It names the token only by its SHA-256 (refresh tokens are long random
strings: the digest reveals nothing) and holds one token, the file's current one: a new token in
the file makes the mark stale, and a successful refresh removes it. Callers hold the account's lock.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

from codex_pool.storage.files import write_atomic

log = logging.getLogger("codex_pool")

SENT = "sent"  # presented; whether it was consumed is unknown
MAX_MARK_BYTES = 4096


def mark_path(pool_file: Path) -> Path:
    return pool_file.with_name(f".{pool_file.name}.spent")


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class SpentTokens:
    """Reads and writes the marks (blocking file I/O: async callers go through a thread)."""

    def status(self, pool_file: Path, token: str) -> str | None:
        """`SENT`, a refusal code, or None when this token is not marked."""
        try:
            with open(mark_path(pool_file), "rb") as f:
                doc = json.loads(f.read(MAX_MARK_BYTES))
        except (OSError, ValueError):
            return None
        if isinstance(doc, dict) and doc.get("sha256") == _digest(token) and isinstance(doc.get("status"), str):
            return doc["status"]
        return None

    def refusal(self, pool_file: Path, token: str) -> str | None:
        status = self.status(pool_file, token)
        return status if status not in (None, SENT) else None

    def sent(self, pool_file: Path, token: str) -> None:
        self._write(pool_file, token, SENT)

    def refused(self, pool_file: Path, token: str, code: str) -> None:
        self._write(pool_file, token, code or "refused")

    def clear(self, pool_file: Path) -> None:
        """The call left the token valid (it may be presented again), or replaced it."""
        try:
            mark_path(pool_file).unlink()
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("codex-pool: cannot remove %s (%s)", mark_path(pool_file), e)

    def _write(self, pool_file: Path, token: str, status: str) -> None:
        data = json.dumps({"sha256": _digest(token), "status": status, "at": int(time.time())}).encode()
        try:
            write_atomic(mark_path(pool_file), data)
        except OSError as e:  # the lock and this process's own flow still protect the token for now
            log.warning("codex-pool: cannot write %s (%s); a spent refresh token is not remembered across restarts",
                        mark_path(pool_file), e)
