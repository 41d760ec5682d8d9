"""Putting rotated tokens back into a pool file safely, and keeping processes out of each other's way.

Refresh tokens are single-use and one pool file may be shared by several proxy processes, so a refresh
must run as: take `FileLock(path)` (`pool/.alice.json.lock`), re-read the file (another process may
already have refreshed), refresh if still needed, `write_tokens(path, ...)`, release. `write_tokens`
does not lock by itself: flock conflicts between two open files even inside one process, so locking
there would deadlock a caller that already holds the lock.

Writes are atomic (`files.write_atomic`): a kill at any moment leaves either the old or the new
complete file (plus, at worst, a stale temp file, which the pool folder's scan clears). Every key we
do not own is kept, in order, and token keys keep the snake_case / camelCase form the file already
uses.

Blocking file I/O only; async callers go through `asyncio.to_thread`.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from codex_pool.core.auth_file import MAX_AUTH_FILE_BYTES, TOKEN_KEY_NAMES, Account, detect_key_style, parse_auth
from codex_pool.storage.files import NEW_FILE_MODE, FileLock, lock_path, write_atomic

# The auth tokens a refresh may replace (the TokenSet fields) - not the ledger's usage token counts.
_AUTH_TOKENS = ("access_token", "id_token", "refresh_token")
_LAST_REFRESH = {"snake": "last_refresh", "camel": "lastRefresh"}


@dataclass(frozen=True)
class TokenSet:
    """Tokens from, or for, one pool file. `None` means "not given" (leave the file's value alone)."""

    access_token: str = field(repr=False)
    id_token: str | None = field(repr=False)
    refresh_token: str | None = field(repr=False)


class TokenFileError(ValueError):
    """A pool file that cannot be read or safely rewritten; the message names the file and the problem."""


# --- reading ---------------------------------------------------------------------------------------


def _load(path: Path) -> tuple[dict[str, Any], dict[str, Any], os.stat_result]:
    """The document and its tokens object, plus the stat of what was read. Raises TokenFileError."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            data = f.read(MAX_AUTH_FILE_BYTES + 1)
        if len(data) > MAX_AUTH_FILE_BYTES:
            raise TokenFileError(f"{path}: over {MAX_AUTH_FILE_BYTES} bytes; not an auth.json")
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


def read_account(path: Path, as_path: Path | None = None) -> Account:
    """The account in the pool file at `path` (parsed as if it were `as_path`), reading at most
    MAX_AUTH_FILE_BYTES + 1 bytes (parse_auth refuses more). Raises OSError or AuthFileError."""
    with open(path, "rb") as f:
        return parse_auth(f.read(MAX_AUTH_FILE_BYTES + 1), as_path or path)


# --- writing ---------------------------------------------------------------------------------------


def format_time(now: datetime) -> str:
    """RFC 3339 UTC with Z, whole seconds: 2026-11-21T09:45:36Z. A naive datetime is refused."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware (e.g. datetime.now(timezone.utc))")
    return now.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _set_token(tokens: dict[str, Any], style: str, name: str, value: str) -> None:
    keys = [TOKEN_KEY_NAMES[s][name] for s in ("snake", "camel")]
    present = [k for k in keys if k in tokens]
    for key in present or [TOKEN_KEY_NAMES[style][name]]:  # both forms present: update both, leave nothing stale
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
    style = detect_key_style(tok)
    for name in _AUTH_TOKENS:
        value = getattr(tokens, name)
        if value is not None:
            _set_token(tok, style, name, value)
    _set_last_refresh(doc, style, stamp)
    data = (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode("utf-8")

    mode = stat.S_IMODE(st.st_mode) or NEW_FILE_MODE  # the original's exact bits
    write_atomic(target, data, mode=mode, owner=(st.st_uid, st.st_gid))


__all__ = ["FileLock", "TokenFileError", "TokenSet", "format_time", "lock_path", "read_account", "write_tokens"]
