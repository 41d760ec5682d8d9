"""The usage ledger on disk: per-day, size-bounded TinyDB segments written atomically.

Layout (under `data_dir/ledger`)::

    2026-11/2026-11-21.0001.json     one TinyDB database (default table), at most
    2026-11/2026-11-21.0002.json     `segment_records` records each; a day's records go to
    2026-12/2026-12-01.0001.json     its newest segment, then the next number

A record lands in the segment of the UTC day of its `ts`. An append rewrites at most the current
segment of each day in the batch — never more than `segment_records` records — so the cost of a
flush does not grow with the history, and a report over a range opens only the day files whose
names overlap it.

Every write goes through `files.write_atomic` (a hidden temp file in the same folder, fsynced and
renamed over the segment, then the folder fsynced): a kill at any moment leaves the previous or the
new complete file.
Files are 0600, folders 0700. A segment that cannot be read is never overwritten or deleted: it is
renamed to `<name>.corrupt-<UTC timestamp>` and a warning names both paths.

Everything here is blocking file I/O; the proxy runs it in a worker thread. No mitmproxy imports.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

from tinydb import TinyDB
from tinydb.storages import Storage

from codex_pool.storage.files import FileLock, fsync_dir, remove_stale_temp_files, write_atomic

DIR_MODE = 0o700
LOCK_NAME = ".lock"
DEFAULT_TABLE = "_default"
CORRUPT_MARK = ".corrupt-"
MAX_WARNINGS = 200
# Records per segment. A flush rewrites the current segment, so this bounds what one flush costs
# at low request rates (measured: 500 costs about a third of 2,000 per record at 50 requests/s).
SEGMENT_RECORDS = 500
DAY_SECONDS = 86400.0

_SEGMENT_RE = re.compile(r"^(\d{4}-\d{2}-\d{2})\.(\d{4,})\.json$")
_CORRUPT_RE = re.compile(r"^(\d{4}-\d{2}-\d{2})\.(\d{4,})\.json\.corrupt-")
_MONTH_RE = re.compile(r"^(\d{4})-(\d{2})$")
_TS_MIN, _TS_MAX = 0.0, 253402300799.0  # 1970-01-01 .. 9999-12-31T23:59:59Z


class LedgerFileError(Exception):
    """A ledger file exists but cannot be used: unreadable, not JSON, or not a TinyDB database."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: unreadable ledger file ({reason})")
        self.path = Path(path)
        self.reason = reason


class LedgerAppendError(OSError):
    """Writing a batch failed part-way. `remaining` holds the records that were NOT written (in
    their original order), so a retry of exactly those neither loses nor duplicates a record."""

    def __init__(self, message: str, remaining: list[dict[str, Any]]):
        super().__init__(message)
        self.remaining = remaining


# --- storage -----------------------------------------------------------------------------------


def _make_dir(folder: Path) -> None:
    """Create `folder` (and missing parents) as 0700; an existing folder is left as it is."""
    if folder.is_dir():
        return
    _make_dir(folder.parent)
    try:
        os.mkdir(folder, DIR_MODE)
    except FileExistsError:
        return
    os.chmod(folder, DIR_MODE)  # exact bits, whatever the umask


def _signature(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _validate(path: Path, data: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(data, dict):
        raise LedgerFileError(path, f"expected a JSON object of tables, got {type(data).__name__}")
    for name, table in data.items():
        if not isinstance(table, dict):
            raise LedgerFileError(path, f"table {name!r} is not a JSON object")
        for doc_id, doc in table.items():
            if not isinstance(doc, dict):
                raise LedgerFileError(path, f"record {doc_id!r} in table {name!r} is not a JSON object")
    return data


class AtomicJSONStorage(Storage):
    """TinyDB storage: a JSON file replaced atomically on every write (temp file in the same
    folder, fsync, rename, fsync of the folder), mode 0600, folders created 0700.

    The last data read or written is kept in memory, so a write (TinyDB reads before each write)
    does not re-read the file; a cheap `stat` detects a file changed behind our back (another
    process, a manual edit), which is then read again. `read()` returns None for a missing or empty
    file and raises `LedgerFileError` for one that cannot be used.
    """

    def __init__(self, path: str | os.PathLike[str]):
        super().__init__()
        self.path = Path(path)
        self._data: dict[str, dict[str, Any]] | None = None
        self._sig: tuple[int, int, int, int] | None = None
        self._known = False  # _data/_sig describe the file as it was last read or written

    def _stat(self) -> tuple[int, int, int, int] | None:
        try:
            return _signature(os.stat(self.path))
        except FileNotFoundError:
            return None
        except OSError as e:
            raise LedgerFileError(self.path, f"{e.__class__.__name__}: {e.strerror or e}") from e

    def changed_on_disk(self) -> bool:
        """True when the file is not (or no longer known to be) what we last read or wrote."""
        try:
            return not self._known or self._stat() != self._sig
        except LedgerFileError:
            return True  # can't even stat it: the next read will say why

    def read(self) -> dict[str, dict[str, Any]] | None:
        sig = self._stat()
        if not (self._known and sig == self._sig):
            self._data, self._sig = self._load(sig), sig
            self._known = True
        # A shallow copy: TinyDB replaces tables in the dict it gets, so a failed write leaves the
        # cached data as it was on disk.
        return None if self._data is None else dict(self._data)

    def _load(self, sig: tuple[int, int, int, int] | None) -> dict[str, dict[str, Any]] | None:
        if sig is None:
            return None
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise LedgerFileError(self.path, f"{e.__class__.__name__}: {e.strerror or e}") from e
        if not raw.strip():
            return None
        try:
            data = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise LedgerFileError(self.path, f"not UTF-8 text: {e.reason} at byte {e.start}") from e
        except json.JSONDecodeError as e:
            raise LedgerFileError(self.path, f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from e
        return _validate(self.path, data)

    def write(self, data: dict[str, dict[str, Any]]) -> None:
        payload = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        _make_dir(self.path.parent)
        try:
            st = write_atomic(self.path, payload)  # 0600 whatever the file had
        except BaseException:
            self._known = False  # whatever happened, believe the disk next time
            raise
        self._data, self._sig, self._known = data, _signature(st), True

    def close(self) -> None:
        self._data, self._sig, self._known = None, None, False

    def starts_absent(self) -> None:
        """A file about to be created: known not to exist yet, so asking whether it changed does not
        read it (it has changed if someone else created it meanwhile)."""
        self._data, self._sig, self._known = None, None, True


# --- names -------------------------------------------------------------------------------------


def day_of(ts: float) -> str:
    """The UTC day of a unix time, `YYYY-MM-DD`."""
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d")


def _day_start(day: str) -> float:
    """Midnight UTC of a `YYYY-MM-DD` day (not strptime: its first call imports _strptime on the
    writer's first rollover, and each call parses a format)."""
    return datetime(int(day[:4]), int(day[5:7]), int(day[8:10]), tzinfo=timezone.utc).timestamp()


def _valid_day(day: str) -> bool:
    try:
        date.fromisoformat(day)
        return True
    except ValueError:
        return False


def _month_bounds(name: str) -> tuple[float, float] | None:
    m = _MONTH_RE.match(name)
    if not m:
        return None
    year, month = int(m.group(1)), int(m.group(2))
    if not 1 <= month <= 12 or year < 1:
        return None
    start = datetime(year, month, 1, tzinfo=timezone.utc)
    end = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=timezone.utc) if year < 9999 or month < 12 \
        else datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone.utc)
    return start.timestamp(), end.timestamp()


def _segment_name(day: str, number: int) -> str:
    return f"{day}.{number:04d}.json"


def _utc_stamp(now: float) -> str:
    return datetime.fromtimestamp(now, timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def _is_ts(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class _Segment:
    day: str
    number: int
    path: Path
    db: TinyDB

    @property
    def storage(self) -> AtomicJSONStorage:
        return self.db.storage  # type: ignore[return-value]

    def __len__(self) -> int:
        return len(self.db)


# --- the store -----------------------------------------------------------------------------------


class LedgerStore:
    """Per-day, size-bounded segments of usage records under `folder`.

    Thread-safe within a process (appends and retention are serialized); appends and retention of
    several processes sharing the folder are serialized by a `flock` on `folder/.lock`. Queries are
    read-only and take no lock.
    """

    def __init__(self, folder: Path, segment_records: int = SEGMENT_RECORDS, *, open_days: int = 3):
        if segment_records < 1:
            raise ValueError("segment_records must be at least 1")
        self.folder = Path(folder)
        self.segment_records = segment_records
        self.warnings: list[str] = []
        self._open_days = max(1, open_days)
        self._segments: OrderedDict[str, _Segment] = OrderedDict()  # day -> current segment, LRU
        self._lock = threading.Lock()

    # -- warnings --

    def _warn(self, message: str) -> str:
        self.warnings.append(message)
        if len(self.warnings) > MAX_WARNINGS:
            del self.warnings[: len(self.warnings) - MAX_WARNINGS]
        return message

    def take_warnings(self) -> list[str]:
        """The warnings recorded since the last call (appends and queries), oldest first."""
        out, self.warnings[:] = list(self.warnings), []
        return out

    # -- paths --

    def _month_dir(self, day: str) -> Path:
        return self.folder / day[:7]

    def _numbers(self, day: str) -> tuple[list[int], int]:
        """(numbers of the day's readable-looking segments ascending, highest number in use
        including segments moved aside)."""
        month = self._month_dir(day)
        valid: list[int] = []
        highest = 0
        try:
            names = os.listdir(month)
        except FileNotFoundError:
            return [], 0
        for name in names:
            m = _SEGMENT_RE.match(name) or _CORRUPT_RE.match(name)
            if not m or m.group(1) != day:
                continue
            n = int(m.group(2))
            highest = max(highest, n)
            if _SEGMENT_RE.match(name):
                valid.append(n)
        return sorted(valid), highest

    def _segment(self, day: str, number: int) -> _Segment:
        path = self._month_dir(day) / _segment_name(day, number)
        return _Segment(day, number, path, TinyDB(path, storage=AtomicJSONStorage))

    def _move_aside(self, path: Path, now: float | None = None) -> Path:
        stamp = _utc_stamp(time.time() if now is None else now)
        target = path.with_name(f"{path.name}{CORRUPT_MARK}{stamp}")
        i = 1
        while target.exists():
            target = path.with_name(f"{path.name}{CORRUPT_MARK}{stamp}-{i}")
            i += 1
        os.rename(path, target)
        fsync_dir(path.parent)
        return target

    # -- opening segments --

    def _open_latest(self, day: str, full: int | None = None) -> tuple[_Segment, str | None]:
        """The day's newest segment, checked readable; an unreadable one is moved aside and a fresh
        segment started (the warning is returned). A full newest segment is left for a new one;
        `full` names one the caller just filled, which is then not read again."""
        valid, highest = self._numbers(day)
        warning = None
        if valid and valid[-1] == highest and highest != full:  # (a newer one moved aside as corrupt: start afresh)
            seg = self._segment(day, highest)
            try:
                if len(seg) < self.segment_records:
                    return seg, None
            except LedgerFileError as e:
                warning = self._set_aside(seg, e, highest + 1)
        fresh = self._segment(day, highest + 1)
        fresh.storage.starts_absent()
        return fresh, warning

    def _set_aside(self, seg: _Segment, error: LedgerFileError, next_number: int) -> str:
        self._forget(seg.day)
        aside = self._move_aside(seg.path)
        nxt = self._month_dir(seg.day) / _segment_name(seg.day, next_number)
        return (f"ledger file {seg.path} cannot be read ({error.reason}); moved it aside to {aside} "
                f"(kept, not deleted) and continuing in {nxt}")

    def _forget(self, day: str) -> None:
        seg = self._segments.pop(day, None)
        if seg is not None:
            seg.db.close()

    def _current(self, day: str) -> _Segment:
        seg = self._segments.get(day)
        if seg is not None and seg.storage.changed_on_disk():
            self._forget(day)  # another process or hand touched it: start again from the disk
            seg = None
        if seg is None:
            seg, warning = self._open_latest(day)
            if warning:
                self._warn(warning)
            self._segments[day] = seg
            while len(self._segments) > self._open_days:
                self._forget(next(iter(self._segments)))
        self._segments.move_to_end(day)
        return seg

    # -- locking --

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """The store's thread lock plus an exclusive flock on `folder/.lock` (other processes),
        waited for as long as it takes."""
        with self._lock:
            _make_dir(self.folder)
            with FileLock(self.folder, self.folder / LOCK_NAME, timeout=None):
                yield

    # -- public API --

    def open(self, now: float | None = None) -> list[str]:
        """Prepare the folder (0700) and check the newest segment of today and yesterday (UTC) —
        the days appends will go to. An unreadable one is moved aside; returns the warnings (one
        per file, naming both paths) for the caller to log. Also removes our own temp files left
        by a killed writer (older than a minute) from the current and previous month."""
        now = time.time() if now is None else now
        messages: list[str] = []
        with self._locked():
            for day in (day_of(now - DAY_SECONDS), day_of(now)):
                self._forget(day)
                seg, warning = self._open_latest(day)
                if warning:
                    messages.append(warning)
                self._segments[day] = seg
            for month in {day_of(now)[:7], day_of(now - 31 * DAY_SECONDS)[:7]}:
                remove_stale_temp_files(self.folder / month, now=now)
        return messages

    def append(self, records: list[dict[str, Any]]) -> None:
        """Write `records` (each with a numeric unix `ts`) to the segments of their UTC days.

        Raises ValueError (nothing written) for a record without a usable `ts`, and
        `LedgerAppendError` (an OSError) with `.remaining` — the records not written — when the
        disk fails part-way. A segment found unreadable is moved aside, a warning goes to
        `self.warnings`, and the records go to a fresh segment.
        """
        by_day: dict[str, list[dict[str, Any]]] = {}
        day, day_start, day_end, same_day = "", 0.0, -1.0, None  # the last record's day and its bounds
        for i, rec in enumerate(records):
            if not isinstance(rec, dict):
                raise ValueError(f"record {i}: expected a dict, got {type(rec).__name__}")
            ts = rec.get("ts")
            if not _is_ts(ts) or not _TS_MIN <= ts <= _TS_MAX:
                raise ValueError(f"record {i}: 'ts' must be a unix time in seconds, got {ts!r}")
            if not day_start <= ts < day_end:  # a batch is mostly one day: name it once
                day = day_of(ts)
                day_start = _day_start(day)
                day_end = day_start + DAY_SECONDS
                same_day = by_day.setdefault(day, [])
            same_day.append(rec)
        if not by_day:
            return
        days = sorted(by_day)
        with self._locked():
            for di, day in enumerate(days):
                pending = by_day[day]
                try:
                    while pending:
                        seg = self._current(day)
                        try:
                            free = self.segment_records - len(seg)
                            if free <= 0:
                                self._forget(day)
                                seg, warning = self._open_latest(day, full=seg.number)
                                if warning:
                                    self._warn(warning)
                                self._segments[day] = seg
                                continue
                            chunk = pending[:free]
                            seg.db.insert_multiple(chunk)
                        except LedgerFileError as e:
                            _, highest = self._numbers(day)
                            self._warn(self._set_aside(seg, e, highest + 1))
                            continue
                        pending = pending[len(chunk):]
                except OSError as e:
                    self._forget(day)
                    remaining = list(pending) + [r for d in days[di + 1:] for r in by_day[d]]
                    raise LedgerAppendError(
                        f"ledger: writing to {self._month_dir(day)} failed ({e.__class__.__name__}: {e}); "
                        f"{len(remaining)} record(s) not written", remaining) from e

    def query(self, since: float | None = None, until: float | None = None) -> Iterator[dict[str, Any]]:
        """Records with since <= ts < until (either bound may be None), day by day, segment by
        segment. Opens only the day files whose names overlap the range; skips an unreadable file
        with a warning in `self.warnings`. Never writes."""
        for path in self._files(since, until):
            try:
                data = AtomicJSONStorage(path).read()
            except LedgerFileError as e:
                self._warn(f"ledger file {path} skipped: cannot be read ({e.reason})")
                continue
            if not data:
                continue
            for doc in data.get(DEFAULT_TABLE, {}).values():
                ts = doc.get("ts")
                if not _is_ts(ts):
                    continue
                if (since is None or ts >= since) and (until is None or ts < until):
                    yield doc

    def _files(self, since: float | None, until: float | None) -> list[Path]:
        try:
            months = os.listdir(self.folder)
        except (FileNotFoundError, NotADirectoryError):
            return []
        found: list[tuple[str, int, Path]] = []
        for month in months:
            bounds = _month_bounds(month)
            if bounds is None or (since is not None and bounds[1] <= since) or (until is not None and bounds[0] >= until):
                continue
            try:
                names = os.listdir(self.folder / month)
            except (FileNotFoundError, NotADirectoryError):
                continue
            for name in names:
                m = _SEGMENT_RE.match(name)
                if not m or not m.group(1).startswith(month + "-") or not _valid_day(m.group(1)):
                    continue
                start = _day_start(m.group(1))
                if (since is not None and start + DAY_SECONDS <= since) or (until is not None and start >= until):
                    continue
                found.append((m.group(1), int(m.group(2)), self.folder / month / name))
        found.sort()
        return [p for _, _, p in found]

    def count(self) -> int:
        """Records in every readable segment (reads them all: for tests and tools)."""
        total = 0
        for path in self._files(None, None):
            try:
                data = AtomicJSONStorage(path).read()
            except LedgerFileError as e:
                self._warn(f"ledger file {path} skipped: cannot be read ({e.reason})")
                continue
            total += len((data or {}).get(DEFAULT_TABLE, {}))
        return total

    def segments(self) -> list[Path]:
        """Every segment file, oldest day first."""
        return self._files(None, None)

    def drop_older_than(self, days: float, now: float | None = None) -> list[Path]:
        """Delete the segments of every UTC day that ended at least `days` days before `now`
        (by the day in the file name); removes month folders left empty. Files moved aside as
        corrupt are kept. Returns the deleted segment paths."""
        now = time.time() if now is None else now
        cutoff = now - days * DAY_SECONDS
        removed: list[Path] = []
        with self._locked():
            try:
                months = sorted(os.listdir(self.folder))
            except FileNotFoundError:
                return []
            for month in months:
                bounds = _month_bounds(month)
                if bounds is None or bounds[0] + DAY_SECONDS > cutoff:
                    continue  # not a month folder, or not even its first day is old enough
                mdir = self.folder / month
                try:
                    names = os.listdir(mdir)
                except (FileNotFoundError, NotADirectoryError):
                    continue
                for name in sorted(names):
                    m = _SEGMENT_RE.match(name)
                    if not m or not _valid_day(m.group(1)):
                        continue
                    if _day_start(m.group(1)) + DAY_SECONDS <= cutoff:
                        self._forget(m.group(1))
                        try:
                            os.unlink(mdir / name)
                        except FileNotFoundError:
                            continue
                        removed.append(mdir / name)
                remove_stale_temp_files(mdir, now=now)
                try:
                    os.rmdir(mdir)  # only succeeds when empty
                except OSError:
                    pass
        return removed

    def close(self) -> None:
        with self._lock:
            for day in list(self._segments):
                self._forget(day)


__all__ = [
    "AtomicJSONStorage", "LedgerAppendError", "LedgerFileError", "LedgerStore", "day_of",
]
