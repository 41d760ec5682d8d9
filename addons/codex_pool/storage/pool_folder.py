"""The pool folder: every `*.json` in it is one account, named by its file stem.

`PoolFolder.scan()` does blocking file I/O (call it from a worker thread); it re-reads only files
whose (mtime, size, inode) changed, so a scan of an unchanged folder costs one `stat` per file.
A bad file is skipped and reported once per version of the file; it is never modified or deleted.
Two files for the same account id: the one whose access token expires last is served (then the
first by name), the others are listed as duplicates. The only files a scan deletes are the temp
files of a token write-back killed mid-write (`.<name>.json.tmp-<hex>`, older than a minute).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from codex_pool.core.auth_file import Account, AuthFileError, parse_auth
from codex_pool.core.pool_scan import PoolScan, Problem
from codex_pool.storage.files import TEMP_NAME, remove_stale_temp_files

MAX_FILE_BYTES = 1 << 20  # an auth.json is a few KB; anything this large is not one


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
                st = entry.stat()
                signature = (st.st_mtime_ns, st.st_size, st.st_ino)
            except OSError as e:
                signature = (-1, -1, -1)
                st = None
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
                parsed = self._read(name, path, st)
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

    def _read(self, name: str, path: Path, st: os.stat_result | None) -> Account | Problem:
        if st is not None and not stat.S_ISREG(st.st_mode):
            return Problem(name, path, "is not a regular file; put the auth.json itself here")
        if st is not None and st.st_size > MAX_FILE_BYTES:
            return Problem(name, path, f"is {st.st_size} bytes, too large for an auth.json; remove it from the pool folder")
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_FILE_BYTES + 1)
        except OSError as e:
            return Problem(name, path, f"cannot be read ({e.strerror or e}); make it readable by the proxy's user")
        try:
            return parse_auth(data, path)
        except AuthFileError as e:
            return Problem(name, path, str(e))

