"""Putting rotated tokens back into a pool file safely, and keeping processes out of each other's way.

Refresh tokens are single-use and one pool file may be shared by several proxy processes, so a refresh
must run as: take `FileLock(path)`, re-read the file (another process may already have refreshed),
refresh if still needed, `write_tokens(path, ...)`, release. `write_tokens` does not lock by itself:
flock conflicts between two open files even inside one process, so locking there would deadlock a
caller that already holds the lock.

Writes are atomic: a temp file beside the original is written, fsynced and renamed over it, so a
kill at any moment leaves either the old or the new complete file (plus, at worst, a stale temp
file that `remove_stale_temp_files` clears). Every key we do not own is kept, in order, and token
keys keep the snake_case / camelCase form the file already uses.

Blocking file I/O only; async callers go through `asyncio.to_thread`.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import secrets
import stat
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from codex_pool.core.auth_file import _KEYS, _detect_style
from codex_pool.storage.files import fsync_dir

_TOKEN_FIELDS = ("access_token", "id_token", "refresh_token")
_LAST_REFRESH = {"snake": "last_refresh", "camel": "lastRefresh"}
_NEW_FILE_MODE = 0o600
_TMP_MARK = ".tmp-"
_TMP_RE = re.compile(r"^\..+\.json\.tmp-[0-9a-f]{16}$")


@dataclass(frozen=True)
class TokenSet:
    """Tokens from, or for, one pool file. `None` means "not given" (leave the file's value alone)."""

    access_token: str = field(repr=False)
    id_token: str | None = field(repr=False)
    refresh_token: str | None = field(repr=False)


class TokenFileError(ValueError):
    """A pool file that cannot be read or safely rewritten; the message names the file and the problem."""


def lock_path(auth_path: Path) -> Path:
    """The lock file for a pool file: beside it, hidden and not ending in .json (pool/.alice.json.lock)."""
    auth_path = Path(auth_path)
    return auth_path.with_name(f".{auth_path.name}.lock")


class FileLock:
    """Exclusive cross-process lock (fcntl.flock LOCK_EX on the lock file, created 0600).

    Also excludes other `FileLock`s on the same file inside this process (each has its own open file).
    Not re-entrant. The lock file is never deleted (deleting flock files races with waiters).
    """

    DEFAULT_TIMEOUT = 30.0
    _POLL_MIN = 0.005
    _POLL_MAX = 0.05

    def __init__(self, auth_path: Path):
        self.auth_path = Path(auth_path)
        self.path = lock_path(self.auth_path)
        self._fd: int | None = None

    @property
    def locked(self) -> bool:
        return self._fd is not None

    def acquire(self, timeout: float) -> None:
        """Take the lock, waiting at most `timeout` seconds; TimeoutError names the file on failure."""
        if self._fd is not None:
            raise RuntimeError(f"{self.path}: lock already held by this FileLock")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, _NEW_FILE_MODE)
        try:
            deadline = time.monotonic() + max(0.0, timeout)
            delay = self._POLL_MIN
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    pass
                except OSError as e:
                    if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EINTR):
                        raise
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"{self.auth_path}: could not lock within {timeout:g} s "
                        f"(another process holds {self.path.name})"
                    )
                time.sleep(min(delay, left))
                delay = min(delay * 2, self._POLL_MAX)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        """Drop the lock and close the file; does nothing when not held."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)  # closing alone would release it too

    def __enter__(self) -> FileLock:
        self.acquire(self.DEFAULT_TIMEOUT)
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:
            pass


# --- reading ---------------------------------------------------------------------------------------


def _load(path: Path) -> tuple[dict[str, Any], dict[str, Any], os.stat_result]:
    """The document and its tokens object, plus the stat of what was read. Raises TokenFileError."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            data = f.read()
    except OSError as e:
        raise TokenFileError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        doc = json.loads(data)
    except UnicodeDecodeError:
        raise TokenFileError(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise TokenFileError(f"{path}: not valid JSON (line {e.lineno} column {e.colno}: {e.msg})") from None
    if not isinstance(doc, dict):
        raise TokenFileError(f"{path}: not a JSON object")
    tokens = doc.get("tokens")
    if tokens is None:
        raise TokenFileError(f'{path}: no "tokens" object')
    if not isinstance(tokens, dict):
        raise TokenFileError(f'{path}: "tokens" is not an object')
    return doc, tokens, st


# --- writing ---------------------------------------------------------------------------------------


def format_time(now: datetime) -> str:
    """RFC 3339 UTC with Z, whole seconds: 2026-11-21T09:45:36Z. A naive datetime is refused."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware (e.g. datetime.now(timezone.utc))")
    return now.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _set_token(tokens: dict[str, Any], style: str, name: str, value: str) -> None:
    present = [_KEYS[s][name] for s in ("snake", "camel") if _KEYS[s][name] in tokens]
    for key in present or [_KEYS[style][name]]:  # both forms present: update both, leave nothing stale
        tokens[key] = value


def _set_last_refresh(doc: dict[str, Any], style: str, stamp: str) -> None:
    present = [k for k in _LAST_REFRESH.values() if k in doc]
    for key in present or [_LAST_REFRESH[style]]:
        doc[key] = stamp




def write_tokens(path: Path, tokens: TokenSet, now: datetime) -> None:
    """Put `tokens` into the pool file at `path` atomically, keeping everything else in it.

    The file is re-read first and must be a JSON object with a "tokens" object (TokenFileError
    otherwise; the file is then left untouched). Token keys keep their snake/camel form; `None`
    fields leave the file's value; `last_refresh` (or `lastRefresh`) becomes `now`. The caller
    should hold `FileLock(path)`. A symlinked pool file is updated at its target.
    """
    if not isinstance(tokens.access_token, str) or not tokens.access_token:
        raise ValueError("TokenSet.access_token must be a non-empty string")
    for name in ("id_token", "refresh_token"):
        value = getattr(tokens, name)
        if value is not None and (not isinstance(value, str) or not value):
            raise ValueError(f"TokenSet.{name} must be a non-empty string or None")
    stamp = format_time(now)

    path = Path(path)
    target = Path(os.path.realpath(path))  # write through a symlink rather than replacing it
    doc, tok, st = _load(target)
    if not stat.S_ISREG(st.st_mode):
        raise TokenFileError(f"{path}: not a regular file")
    style = _detect_style(tok)
    for name in _TOKEN_FIELDS:
        value = getattr(tokens, name)
        if value is not None:
            _set_token(tok, style, name, value)
    _set_last_refresh(doc, style, stamp)
    data = (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode("utf-8")

    mode = stat.S_IMODE(st.st_mode) or _NEW_FILE_MODE
    folder = target.parent
    tmp = folder / f".{target.name}{_TMP_MARK}{secrets.token_hex(8)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, _NEW_FILE_MODE)
    try:
        try:
            os.fchmod(fd, mode)  # exact bits of the original, whatever the umask
            if os.geteuid() == 0 and (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
                os.fchown(fd, st.st_uid, st.st_gid)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(folder)


def remove_stale_temp_files(folder: Path, older_than_seconds: float = 60) -> list[Path]:
    """Delete our own `.<name>.json.tmp-<hex>` leftovers (from a killed writer) older than the
    given age; returns what was removed. Young ones may belong to a write in progress."""
    removed: list[Path] = []
    cutoff = time.time() - older_than_seconds
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if not _TMP_RE.match(entry.name):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode) or st.st_mtime > cutoff:
                continue
            os.unlink(entry.path)
        except OSError:  # gone already, or not ours to delete
            continue
        removed.append(Path(entry.path))
    return removed
