"""File-system primitives shared by everything that rewrites a file other processes may read:
one atomic writer, one cross-process lock and one sweep of the temp files a killed writer leaves.

- `write_atomic` writes a hidden temp file beside the target (`.<name>.tmp-<16 hex>`), fsyncs it,
  renames it over the target and fsyncs the folder: a kill at any moment leaves the old or the new
  complete file, plus at worst a stale temp file.
- `FileLock` is an exclusive `fcntl.flock` on a lock file (created 0600, never deleted), with a
  timeout; it excludes other processes and other `FileLock`s in this process alike.
- `remove_stale_temp_files` deletes only names `write_atomic` makes, and only once they are older
  than a write could take (60 s by default): a young one may belong to a write in progress.

Blocking file I/O only; async callers go through `asyncio.to_thread`.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import secrets
import stat
import time
from pathlib import Path

NEW_FILE_MODE = 0o600
TMP_MARK = ".tmp-"
STALE_TEMP_SECONDS = 60.0
# `.<name>.json.tmp-<hex>` and `.<name>.json.spent.tmp-<hex>` (spent_tokens.py's marks): 16 hex digits
# from write_atomic, 12 from the ledger's earlier writer
TEMP_NAME = re.compile(r"^\..+\.json(\.spent)?\.tmp-[0-9a-f]{12,16}$")


def fsync_dir(folder: Path) -> None:
    """Make a rename inside `folder` durable (no-op on filesystems that cannot sync a directory)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def mtime_ns(path: Path) -> int | None:
    """The file's modification time, or None when it cannot be read."""
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


# --- the atomic writer -------------------------------------------------------------------------------


def write_atomic(path: Path, data: bytes, *, mode: int = NEW_FILE_MODE,
                 owner: tuple[int, int] | None = None) -> os.stat_result:
    """Replace `path` with `data` atomically; the folder must exist.

    The file gets exactly `mode` whatever the umask (pass the old file's bits to keep them); with
    `owner` (uid, gid) and running as root, it also keeps that owner. Returns the stat of the new
    file, taken before the rename (its inode keeps it). On failure the temp file is removed and
    `path` is as it was. A failed fsync of the folder after the rename is not raised: the new file
    is in place and was fsynced, only the rename's durability is at stake.
    """
    path = Path(path)
    folder = path.parent
    tmp = folder / f".{path.name}{TMP_MARK}{secrets.token_hex(8)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, NEW_FILE_MODE)
    try:
        try:
            os.fchmod(fd, mode)  # exact bits, whatever the umask
            if owner is not None and os.geteuid() == 0 and owner != (os.geteuid(), os.getegid()):
                os.fchown(fd, *owner)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
            st = os.fstat(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:
        fsync_dir(folder)
    except OSError:
        pass
    return st


def remove_stale_temp_files(folder: Path, older_than_seconds: float = STALE_TEMP_SECONDS,
                            now: float | None = None) -> list[Path]:
    """Delete the temp files of killed writers (names matching `TEMP_NAME`, regular files last
    modified at least `older_than_seconds` before `now`) in `folder`; returns what was removed.
    A missing or unreadable folder removes nothing."""
    removed: list[Path] = []
    cutoff = (time.time() if now is None else now) - older_than_seconds
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if not TEMP_NAME.match(entry.name):
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


def sweep_temp_files(data_dir: Path) -> list[Path]:
    """Every temp file of a killed writer in `data_dir` and its ledger folders, whatever its age.
    Only for the process holding data_dir's lock (storage/data_dir_lock.py): then no other writer
    can be at work there."""
    removed = remove_stale_temp_files(data_dir, older_than_seconds=0)
    ledger = data_dir / "ledger"
    try:
        months = [e.path for e in os.scandir(ledger) if e.is_dir(follow_symlinks=False)]
    except OSError:
        months = []
    for month in months:
        removed += remove_stale_temp_files(Path(month), older_than_seconds=0)
    return removed


# --- the lock ----------------------------------------------------------------------------------------


def lock_path(path: Path) -> Path:
    """The default lock file for `path`: beside it, hidden and not ending in .json
    (pool/alice.json -> pool/.alice.json.lock)."""
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


class FileLock:
    """Exclusive cross-process lock on what is at `path`: `fcntl.flock` LOCK_EX on `lock_file`
    (default `lock_path(path)`), created 0600 and never deleted (deleting flock files races with
    waiters).

    Also excludes other `FileLock`s on the same lock file inside this process (each has its own
    open file). Not re-entrant. `with` waits at most `timeout` seconds (None: as long as it takes).
    """

    DEFAULT_TIMEOUT = 30.0
    _POLL_MIN = 0.005
    _POLL_MAX = 0.05

    def __init__(self, path: Path, lock_file: Path | None = None, *, timeout: float | None = DEFAULT_TIMEOUT):
        self.subject = Path(path)
        self.path = Path(lock_file) if lock_file is not None else lock_path(self.subject)
        self.timeout = timeout
        self._fd: int | None = None

    @property
    def locked(self) -> bool:
        return self._fd is not None

    def acquire(self, timeout: float | None) -> None:
        """Take the lock, waiting at most `timeout` seconds (None: no limit); TimeoutError names
        the locked path on failure."""
        if self._fd is not None:
            raise RuntimeError(f"{self.path}: lock already held by this FileLock")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, NEW_FILE_MODE)
        try:
            if timeout is None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            else:
                self._poll(fd, timeout)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def _poll(self, fd: int, timeout: float) -> None:
        deadline = time.monotonic() + max(0.0, timeout)
        delay = self._POLL_MIN
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EINTR):
                    raise
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    f"{self.subject}: could not lock within {timeout:g} s "
                    f"(another process holds {self.path.name})"
                )
            time.sleep(min(delay, left))
            delay = min(delay * 2, self._POLL_MAX)

    def note(self, text: str) -> None:
        """Replace the lock file's content while holding it (e.g. the holder's pid, for messages)."""
        if self._fd is None:
            raise RuntimeError(f"{self.path}: not held")
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, text.encode(), 0)

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
        self.acquire(self.timeout)
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:
            pass
