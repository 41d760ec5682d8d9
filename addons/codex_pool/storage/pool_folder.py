"""The pool folder: every `*.json` in it is one account, named by its file stem.

`PoolFolder.scan()` does blocking file I/O (call it from a worker thread); it re-reads only files
whose (mtime, size, inode) changed, so a scan of an unchanged folder costs one `stat` per file.
A bad file is skipped and reported once per version of the file; it is never modified or deleted.
Two files for the same account id: the one whose access token expires last is served (then the
first by name), the others are listed as duplicates. The only files a scan deletes are the temp
files of a token write-back killed mid-write (`.<name>.json.tmp-<hex>`, older than a minute).

Whatever is in the folder, a scan ends and costs little: a file is read only up to
`MAX_AUTH_FILE_BYTES` (larger ones are refused by their size, unread), never through a FIFO or a
device (a swapped-in FIFO would block the read), and read again when it changed while being read
(a writer that rewrites in place, not through a rename) so a half-written version is never taken
for the file. A symlink is followed only when it leads to a file inside the folder: see `_outside`.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from codex_pool.core.auth_file import MAX_AUTH_FILE_BYTES, Account, AuthFileError, parse_auth
from codex_pool.core.pool_scan import PoolScan, Problem
from codex_pool.storage.files import TEMP_NAME, remove_stale_temp_files

MAX_FILE_BYTES = MAX_AUTH_FILE_BYTES  # the name this module's callers and tests know
READ_ATTEMPTS = 3  # reads of a file that keeps changing while it is read, before it waits for the next scan


_Signature = tuple[int, int, int]


class PoolFolder:
    def __init__(self, path: Path):
        self.path = path
        self._seen: dict[str, tuple[_Signature, Account | Problem]] = {}
        self._reported_duplicates: set[tuple[str, str]] = set()
        self._last_folder_error: str | None = None

    def scan(self) -> PoolScan:
        result = PoolScan()
        try:
            listed = list(os.scandir(self.path))
            entries = sorted(
                (e for e in listed if e.name.endswith(".json") and not e.name.startswith(".")),
                key=lambda e: e.name,
            )
            if any(TEMP_NAME.match(e.name) for e in listed):
                remove_stale_temp_files(self.path)
        except FileNotFoundError:
            entries = []
            result.folder_error = f"{self.path} does not exist; create it and drop Codex auth.json files there"
        except OSError as e:
            entries = []
            result.folder_error = f"{self.path} cannot be listed ({e.strerror or e}); check its permissions"
        if result.folder_error != self._last_folder_error:
            result.changed = True
            self._last_folder_error = result.folder_error

        current: dict[str, tuple[_Signature, Account | Problem]] = {}
        for entry in entries:
            name = entry.name[: -len(".json")]
            path = Path(entry.path)
            try:
                signature = _signature(entry.stat())
            except OSError as e:
                signature = (-1, -1, -1)
                err: str | None = f"cannot be read ({e.strerror or e}); check the file"
            else:
                err = None
            previous = self._seen.get(name)
            if previous is not None and previous[0] == signature and signature != (-1, -1, -1):
                current[name] = previous
                continue
            parsed: Account | Problem
            if err is not None:
                parsed = Problem(name, path, err)
            else:
                signature, parsed = self._read(name, path, signature)
            current[name] = (signature, parsed)
            if previous is None:
                result.added.append(name)
            else:
                result.updated.append(name)
            if isinstance(parsed, Problem) and not (
                previous is not None and isinstance(previous[1], Problem) and previous[1].reason == parsed.reason
            ):
                result.new_problems.append(parsed)
        result.removed = sorted(set(self._seen) - set(current))
        self._seen = current
        if result.added or result.updated or result.removed:
            result.changed = True

        by_account_id: dict[str, list[Account]] = {}
        for name, (_, parsed) in current.items():
            if isinstance(parsed, Problem):
                result.problems[name] = parsed
            else:
                by_account_id.setdefault(parsed.account_id, []).append(parsed)
        for same in by_account_id.values():
            same.sort(key=lambda a: (-(a.access_expires_at or 0.0), a.name))
            served = same[0]
            result.accounts[served.name] = served
            for other in same[1:]:
                result.duplicates[other.name] = served.name
                result.shadowed[other.name] = other
                pair = (other.name, served.name)
                if pair not in self._reported_duplicates:
                    result.new_duplicates.append(pair)
        self._reported_duplicates = {(a, b) for a, b in result.duplicates.items()}
        return result

    def _read(self, name: str, path: Path, signature: _Signature) -> tuple[_Signature, Account | Problem]:
        """The file parsed, with the signature of the version read (a file rewritten after the scan's
        `stat` is then not read twice; one that could not be read whole is read again next scan)."""
        outside = self._outside(path)
        if outside is not None:
            return signature, Problem(name, path, outside)
        real = os.path.realpath(path)
        for _ in range(READ_ATTEMPTS):
            try:
                # O_NOFOLLOW: `real` was just resolved, so a link there now was swapped in since;
                # O_NONBLOCK: opening a FIFO does not wait for a writer (it is refused below)
                fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError as e:
                return signature, Problem(name, path,
                                          f"cannot be read ({e.strerror or e}); make it readable by the proxy's user")
            try:
                before = os.fstat(fd)
                if not stat.S_ISREG(before.st_mode):
                    return signature, Problem(name, path, "is not a regular file; put the auth.json itself here")
                if before.st_size > MAX_AUTH_FILE_BYTES:
                    return _signature(before), Problem(
                        name, path, f"is {before.st_size} bytes, too large for an auth.json (at most "
                                    f"{MAX_AUTH_FILE_BYTES} bytes); remove it from the pool folder")
                data = _read_at_most(fd, MAX_AUTH_FILE_BYTES + 1)
                after = os.fstat(fd)
            except OSError as e:
                return signature, Problem(name, path, f"cannot be read ({e.strerror or e}); check the file")
            finally:
                os.close(fd)
            if _signature(before) == _signature(after) and len(data) == after.st_size:
                break  # one version, read whole
        else:
            return (-1, -1, -1), Problem(name, path, "kept changing while it was read; it is read again at the next scan")
        try:
            return _signature(after), parse_auth(data, path)
        except AuthFileError as e:
            return _signature(after), Problem(name, path, str(e))

    def _outside(self, path: Path) -> str | None:
        """Why a symlink in the pool folder is not followed: it leads outside the folder. The proxy
        rewrites a pool file when it refreshes the account's tokens, and refresh tokens are single-use:
        through a link it would rewrite a file it does not own — typically the auth.json Codex itself
        keeps using and refreshing, so one of the two would soon hold a spent token and be signed out.
        None for a regular file, or a link that stays inside the folder."""
        if not os.path.islink(path):
            return None
        target = os.path.realpath(path)
        folder = os.path.realpath(self.path)
        if os.path.commonpath([folder, target]) == folder:
            return None
        return (f"is a symlink to {target}, outside the pool folder; the proxy rewrites a pool file when it "
                f"refreshes its tokens and would rewrite that file (and spend the refresh token its owner, e.g. "
                f"Codex, still holds): copy the auth.json into {folder} instead of linking it (then `codex login` "
                f"again where it came from, so the two do not share one refresh token)")


def _signature(st: os.stat_result) -> _Signature:
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _read_at_most(fd: int, limit: int) -> bytes:
    """Up to `limit` bytes from `fd` (several reads: one read may return less than asked)."""
    parts: list[bytes] = []
    left = limit
    while left > 0:
        part = os.read(fd, left)
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)
