"""Accounts into and out of the pool folder, without copying files by hand (scripts/import-account,
scripts/remove-account, `POST /admin/accounts/<name>/remove`).

- `import_account` validates a Codex `auth.json` as a pool file first, refuses an account id the
  pool already holds (naming the file) unless `replace`, and writes `<name>.json` atomically, 0600.
  A replaced file of another name moves to `.removed/`, so its refresh token is never used again.
- `remove_account` moves `<name>.json` to `.removed/<name>-<UTC time>.json` (0700 folder; nothing
  is deleted). The folder watcher of a running proxy then drops the account.
- Each file is changed under its `FileLock`, the lock a proxy's token refresh holds from reading
  the refresh token to writing the rotated one back: a refresh under way finishes first, so a moved
  file holds the newest tokens, and a replaced file never gets the old login's tokens written into it.

Blocking file I/O only.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from codex_pool.core.auth_file import MAX_AUTH_FILE_BYTES, Account, AuthFileError, parse_auth
from codex_pool.storage.files import FileLock, fsync_dir, write_atomic

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
REMOVED = ".removed"
LOCK_SECONDS = 60.0  # longer than a token refresh may take (its request's own timeout is 30 s)


class AccountFileError(ValueError):
    """Why an account cannot be imported or removed; the message says what to do."""


@dataclass(frozen=True)
class Imported:
    account: Account
    path: Path
    replaced: Path | None  # the pool file that held this account before (moved to .removed/), if any


def check_name(name: str) -> str:
    if not NAME.match(name) or name.endswith(".json"):
        raise AccountFileError(f"{name!r} is not an account name: use letters, digits, '.', '_' or '-' "
                               "(the pool file is <name>.json)")
    return name


def _read(path: Path, as_path: Path) -> tuple[bytes, Account]:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_AUTH_FILE_BYTES + 1)
    except FileNotFoundError:
        raise AccountFileError(f"{path} does not exist; log in with `codex login` first (or give --from "
                               "the CODEX_HOME that holds auth.json)") from None
    except OSError as e:
        raise AccountFileError(f"{path} cannot be read ({e.strerror or e})") from None
    try:
        return data, parse_auth(data, as_path)
    except AuthFileError as e:
        raise AccountFileError(f"{path}: {e}") from None


def pool_accounts(pool_dir: Path) -> dict[str, Account]:
    """The readable accounts of the pool folder by file name (unreadable files are skipped)."""
    out = {}
    for path in sorted(pool_dir.glob("*.json")) if pool_dir.is_dir() else ():
        if path.name.startswith(".") or not path.is_file():
            continue
        try:
            _, account = _read(path, path)
        except AccountFileError:
            continue
        out[path.name] = account
    return out


def import_account(pool_dir: Path, name: str, source: Path, *, replace: bool = False) -> Imported:
    check_name(name)
    target = pool_dir / f"{name}.json"
    data, account = _read(source, target)
    holders = {file: a for file, a in pool_accounts(pool_dir).items() if a.account_id == account.account_id}
    others = [file for file in holders if file != target.name]
    if others and not replace:
        raise AccountFileError(f"account {account.account_id} ({account.email or 'no email'}) is already in the pool as "
                               f"{others[0]}; use --replace to replace that file with this login")
    if target.exists() and target.name not in holders and not replace:
        raise AccountFileError(f"{target} holds another account; choose another name, or --replace it "
                               f"(scripts/remove-account {name} keeps the old file in {REMOVED}/)")
    pool_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    replaced = None
    for file in others:  # the same account under another name: out of the pool, its refresh token with it
        replaced = move_to_removed(pool_dir, pool_dir / file)
    with _locked(target):
        write_atomic(target, data, mode=0o600)
    return Imported(account, target, replaced)


def move_to_removed(pool_dir: Path, path: Path) -> Path:
    removed = pool_dir / REMOVED
    removed.mkdir(mode=0o700, exist_ok=True)
    with _locked(path):  # a refresh under way writes its rotated token first
        if not path.is_file():
            raise AccountFileError(f"{path} was moved away meanwhile; `scripts/status` lists the pool's accounts")
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())  # named after the wait: nothing is overwritten
        dest = removed / f"{path.stem}-{stamp}.json"
        n = 1
        while dest.exists():
            n += 1
            dest = removed / f"{path.stem}-{stamp}-{n}.json"
        os.replace(path, dest)
    fsync_dir(pool_dir)
    return dest


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold `path`'s lock; one held too long (a refresh stuck) is an AccountFileError saying so."""
    lock = FileLock(path)
    try:
        lock.acquire(LOCK_SECONDS)
    except TimeoutError:
        raise AccountFileError(f"{path.name} stayed locked for {LOCK_SECONDS:g} s (a token refresh of it is under "
                               "way, or stuck); try again in a minute") from None
    try:
        yield
    finally:
        lock.release()


def remove_account(pool_dir: Path, name: str) -> Path:
    """Move `<name>.json` out of the pool (to `.removed/`); returns where it went."""
    check_name(name)
    path = pool_dir / f"{name}.json"
    if not path.is_file():
        raise AccountFileError(f"there is no {path}; `scripts/status` lists the pool's accounts")
    return move_to_removed(pool_dir, path)
