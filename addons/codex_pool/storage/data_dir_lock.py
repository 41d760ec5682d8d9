"""One proxy per data_dir.

Two proxies may share a pool folder (token refreshes take a lock per account file), but each needs
a data_dir of its own: the ledger's segments, state.json and events.jsonl are each written by one
process, and two writers would overwrite each other's records. A proxy holds an exclusive lock on
`data_dir/.codex-pool.lock` (with its pid inside, for the message) from start-up to shutdown; the
lock goes with the process, so a killed proxy leaves nothing to clean up.
"""

from __future__ import annotations

import os
from pathlib import Path

from codex_pool.storage.files import FileLock

LOCK_NAME = ".codex-pool.lock"


class DataDirInUse(Exception):
    """Another process holds this data_dir; the message says which and what to do."""


def claim_data_dir(data_dir: Path) -> FileLock:
    """Lock `data_dir` for this process (creating it 0700), or raise DataDirInUse."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock = FileLock(data_dir, data_dir / LOCK_NAME, timeout=0)
    try:
        lock.acquire(0)
    except TimeoutError:
        holder = _holder(data_dir / LOCK_NAME)
        raise DataDirInUse(
            f"data_dir {data_dir} is in use by another codex-pool proxy{f' (pid {holder})' if holder else ''}. "
            "Give each proxy a data_dir of its own (they may share pool_dir), or stop the other one."
        ) from None
    lock.note(f"{os.getpid()}\n")
    return lock


def _holder(path: Path) -> str | None:
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return None
    return text if text.isdigit() else None
