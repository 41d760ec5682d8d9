"""Test helper: rewrite one pool file's tokens in a tight loop until killed.

    python token_writer_loop.py <auth.json> [--hold-lock]

Version n writes access-<n>, id-<n>, refresh-<n>. Prints "started" once the first write is done.
"""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from pathlib import Path

from codex_pool.storage.token_file import FileLock, TokenSet, write_tokens


def main() -> None:
    path = Path(sys.argv[1])
    hold_lock = "--hold-lock" in sys.argv[2:]
    lock = FileLock(path)
    if hold_lock:
        lock.acquire(10)
    n = 0
    while True:
        n += 1
        write_tokens(path, TokenSet(f"access-{n}", f"id-{n}", f"refresh-{n}"), datetime.now(timezone.utc))
        if n == 1:
            print("started", flush=True)


if __name__ == "__main__":
    main()
