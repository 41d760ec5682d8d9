"""Tokens a killed refresh left behind.

A refresh writes the rotated tokens to a temp file beside the pool file and renames it into place
(files.write_atomic). A kill between the write and the rename leaves a complete temp file holding
the only valid refresh token (the old one was spent by the refresh): deleting it as debris would
lose the account. So before the pool folder is read (and so before any refresh is tried), each temp
file of a pool account is, under that account's lock (nobody is writing it then):

- adopted — renamed into place — when it is a complete auth file of the same account with newer
  tokens than the file (or the file itself is unreadable);
- removed otherwise (incomplete, another account, or older).

A temp file whose account is locked belongs to a write in progress and is left alone.
"""

from __future__ import annotations

import os
from pathlib import Path

from codex_pool.core.auth_file import Account, AuthFileError
from codex_pool.storage.files import TEMP_NAME, TMP_MARK, FileLock, fsync_dir
from codex_pool.storage.token_file import read_account


def recover_temp_files(folder: Path) -> list[tuple[str, str]]:
    """Adopt or remove the temp files killed writers left in the pool folder; returns what was done
    as (file name, "adopted" | "removed"). Never raises."""
    done: list[tuple[str, str]] = []
    try:
        names = [e.name for e in os.scandir(folder) if TEMP_NAME.match(e.name) and e.is_file(follow_symlinks=False)]
    except OSError:
        return done
    for name in names:
        target = folder / name[1:name.index(TMP_MARK)]  # .alice.json.tmp-<hex> -> alice.json
        if target.name.startswith(".") or target.suffix != ".json":
            continue  # not a pool file's (e.g. a spent mark's): the folder scan sweeps it once stale
        lock = FileLock(target, timeout=0)
        try:
            lock.acquire(0)
        except (TimeoutError, OSError):
            continue  # a write is in progress
        try:
            outcome = _settle(folder / name, target)
        except OSError:
            continue
        finally:
            lock.release()
        if outcome:
            done.append((name, outcome))
    return done


def _settle(tmp: Path, target: Path) -> str | None:
    left = _read(tmp, target)
    if left is not None:
        current = _read(target, target)
        if current is None or (left.account_id == current.account_id and _newer(left, current)):
            os.replace(tmp, target)
            fsync_dir(target.parent)
            return "adopted"
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        return None
    return "removed"


def _read(path: Path, as_path: Path) -> Account | None:
    try:
        return read_account(path, as_path)
    except (OSError, AuthFileError):
        return None


def _newer(a: Account, b: Account) -> bool:
    if (a.access_token, a.refresh_token) == (b.access_token, b.refresh_token):
        return False
    return ((a.access_issued_at or 0.0), (a.access_expires_at or 0.0)) > ((b.access_issued_at or 0.0), (b.access_expires_at or 0.0))
