import json
import os
import random
import signal
import stat
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from tinydb import TinyDB

from codex_pool.storage.ledger_store import (
    AtomicJSONStorage,
    LedgerAppendError,
    LedgerFileError,
    LedgerStore,
    day_of,
)

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


NOW = ts("2026-11-21T12:00:00")


def rec(t: float, n: int = 0, **kw) -> dict:
    r = {"ts": t, "account": "alice", "model": "gpt-5.1-codex", "kind": "sse_turn", "status": 200,
         "outcome": "ok", "input_tokens": 100, "cached_input_tokens": 0, "output_tokens": 10,
         "reasoning_tokens": 0, "total_tokens": 110, "ttfb_ms": 1.0, "duration_ms": 2.0,
         "attempt": n, "conversation": None, "path": "/backend-api/codex/responses"}
    r.update(kw)
    return r


def names(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != ".lock")


def load(path: Path) -> dict:
    return json.loads(path.read_text())["_default"]


# --- AtomicJSONStorage ------------------------------------------------------------------------------


def test_storage_roundtrip_modes_and_no_reread(tmp_path, monkeypatch):
    path = tmp_path / "sub" / "db.json"
    s = AtomicJSONStorage(path)
    assert s.read() is None  # new file
    s.write({"_default": {"1": {"a": 1}}})
    assert json.loads(path.read_text()) == {"_default": {"1": {"a": 1}}}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert [p.name for p in path.parent.iterdir()] == ["db.json"]  # no temp file left

    def no_read(*a, **k):
        raise AssertionError("re-read the file")
    monkeypatch.setattr(Path, "read_bytes", no_read)
    assert s.read() == {"_default": {"1": {"a": 1}}}  # from memory
    db = TinyDB(path, storage=AtomicJSONStorage)
    monkeypatch.undo()
    db.insert({"b": 2})  # first read of a new instance reads the file...
    monkeypatch.setattr(Path, "read_bytes", no_read)
    db.insert_multiple([{"c": 3}, {"d": 4}])  # ...later writes don't
    assert len(db) == 4


def test_storage_notices_a_file_changed_behind_its_back(tmp_path):
    path = tmp_path / "db.json"
    s = AtomicJSONStorage(path)
    s.write({"_default": {"1": {"a": 1}}})
    AtomicJSONStorage(path).write({"_default": {"1": {"a": 1}, "2": {"b": 2}}})  # another writer
    assert s.changed_on_disk()
    assert s.read() == {"_default": {"1": {"a": 1}, "2": {"b": 2}}}


@pytest.mark.parametrize("content,reason", [
    (b"{not json", "not valid JSON"),
    (b"\xff\xfe\x00", "not UTF-8"),
    (b"[1, 2]", "expected a JSON object"),
    (b'{"_default": {"1": 5}}', "is not a JSON object"),
    (b'{"_default": []}', "is not a JSON object"),
])
def test_storage_raises_a_clear_error_for_an_unusable_file(tmp_path, content, reason):
    path = tmp_path / "db.json"
    path.write_bytes(content)
    with pytest.raises(LedgerFileError) as e:
        AtomicJSONStorage(path).read()
    assert str(path) in str(e.value) and reason in str(e.value)


def test_empty_file_reads_as_new(tmp_path):
    (tmp_path / "db.json").write_bytes(b"")
    assert AtomicJSONStorage(tmp_path / "db.json").read() is None


# --- layout, segments, days ---------------------------------------------------------------------------


def test_segment_rollover(tmp_path):
    store = LedgerStore(tmp_path, segment_records=5)
    assert store.open(now=NOW) == []
    t = ts("2026-11-21T01:00:00")
    store.append([rec(t + i, i) for i in range(3)])
    store.append([rec(t + 10 + i, 10 + i) for i in range(4)])  # 2 fill the first, 2 open the next
    store.append([rec(t + 20 + i, 20 + i) for i in range(9)])
    assert names(tmp_path) == ["2026-11/2026-11-21.0001.json", "2026-11/2026-11-21.0002.json",
                               "2026-11/2026-11-21.0003.json", "2026-11/2026-11-21.0004.json"]
    sizes = [len(load(tmp_path / n)) for n in names(tmp_path)]
    assert sizes == [5, 5, 5, 1]
    assert store.count() == 16
    assert [r["attempt"] for r in store.query(None, None)] == [*range(3), *range(10, 14), *range(20, 29)]


def test_rolling_over_reads_no_segment_back(tmp_path, monkeypatch):
    """A flush that fills a segment and starts the next reads nothing from disk: the full one is
    known to be full, the new one known not to exist yet (re-reading cost a JSON parse of a whole
    segment per rollover)."""
    store = LedgerStore(tmp_path, segment_records=5)
    assert store.open(now=NOW) == []
    t = ts("2026-11-21T01:00:00")
    store.append([rec(t + i, i) for i in range(3)])

    def no_read(*a, **k):
        raise AssertionError("read a segment back")
    monkeypatch.setattr(Path, "read_bytes", no_read)
    store.append([rec(t + 10 + i, 10 + i) for i in range(14)])  # fills 0001, writes 0002 and 0003, starts 0004
    store.append([rec(t + 30, 30)])
    monkeypatch.undo()
    assert [len(load(tmp_path / n)) for n in names(tmp_path)] == [5, 5, 5, 3]


def test_a_new_store_continues_the_newest_segment(tmp_path):
    t = ts("2026-11-21T01:00:00")
    a = LedgerStore(tmp_path, segment_records=4)
    a.open(now=NOW)
    a.append([rec(t + i) for i in range(6)])
    b = LedgerStore(tmp_path, segment_records=4)
    assert b.open(now=NOW) == []
    b.append([rec(t + 10 + i) for i in range(3)])
    assert [len(load(tmp_path / n)) for n in names(tmp_path)] == [4, 4, 1]


def test_records_are_grouped_by_utc_day_across_midnight_and_months(tmp_path):
    store = LedgerStore(tmp_path)
    store.open(now=NOW)
    batch = [
        rec(ts("2026-10-31T23:59:59.5"), 1),
        rec(ts("2026-11-01T00:00:00"), 2),
        rec(ts("2026-10-31T23:00:00"), 3),
        rec(ts("2026-11-01T23:59:59"), 4),
    ]
    store.append(batch)
    assert names(tmp_path) == ["2026-10/2026-10-31.0001.json", "2026-11/2026-11-01.0001.json"]
    assert sorted(r["attempt"] for r in load(tmp_path / "2026-10/2026-10-31.0001.json").values()) == [1, 3]
    assert sorted(r["attempt"] for r in load(tmp_path / "2026-11/2026-11-01.0001.json").values()) == [2, 4]
    assert day_of(ts("2026-10-31T23:59:59.999")) == "2026-10-31"


def test_files_are_0600_and_folders_0700_whatever_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        store = LedgerStore(tmp_path / "data" / "ledger")
        store.open(now=NOW)
        store.append([rec(NOW)])
    finally:
        os.umask(old)
    ledger = tmp_path / "data" / "ledger"
    assert stat.S_IMODE(ledger.stat().st_mode) == 0o700
    assert stat.S_IMODE((ledger / "2026-11").stat().st_mode) == 0o700
    seg = ledger / "2026-11" / "2026-11-21.0001.json"
    assert stat.S_IMODE(seg.stat().st_mode) == 0o600


def test_records_are_stored_as_given(tmp_path):
    store = LedgerStore(tmp_path)
    r = rec(NOW, model=None, status=None, ttfb_ms=None, conversation="0123456789abcdef", outcome="usage_limit_reached")
    store.append([r])
    assert list(store.query(None, None)) == [r]


@pytest.mark.parametrize("bad", [None, "2026-11-21", float("nan"), float("inf"), -5.0, True, 1e13])
def test_a_record_without_a_usable_ts_is_refused_and_nothing_written(tmp_path, bad):
    store = LedgerStore(tmp_path)
    with pytest.raises(ValueError, match="'ts' must be a unix time"):
        store.append([rec(NOW), rec(NOW, ts=bad)])
    assert store.count() == 0


def test_append_of_nothing_writes_nothing(tmp_path):
    store = LedgerStore(tmp_path / "ledger")
    store.append([])
    assert not (tmp_path / "ledger").exists()


# --- query ---------------------------------------------------------------------------------------


@pytest.fixture
def week(tmp_path):
    """One record every 6 hours from 2026-10-30 00:00 to 2026-11-02 18:00 (16 records)."""
    store = LedgerStore(tmp_path, segment_records=3)
    store.open(now=NOW)
    start = ts("2026-10-30T00:00:00")
    store.append([rec(start + i * 6 * 3600, i) for i in range(16)])
    return store


@pytest.mark.parametrize("since,until,expected", [
    (None, None, list(range(16))),
    ("2026-11-01T00:00:00", None, list(range(8, 16))),
    (None, "2026-10-31T00:00:00", list(range(0, 4))),
    ("2026-10-31T06:00:00", "2026-10-31T18:00:00", [5, 6]),  # since inclusive, until exclusive
    ("2026-10-31T06:00:01", "2026-10-31T18:00:01", [6, 7]),
    ("2026-11-05T00:00:00", None, []),
    ("2026-10-01T00:00:00", "2026-10-30T00:00:00", []),
])
def test_query_ranges(week, since, until, expected):
    got = [r["attempt"] for r in week.query(since and ts(since), until and ts(until))]
    assert got == expected


def test_query_opens_only_the_day_files_in_range(week, monkeypatch):
    opened = []
    real = AtomicJSONStorage._load

    def spy(self, sig):
        opened.append(self.path.name)
        return real(self, sig)
    monkeypatch.setattr(AtomicJSONStorage, "_load", spy)
    list(week.query(ts("2026-10-31T06:00:00"), ts("2026-10-31T18:00:00")))
    assert opened and all(n.startswith("2026-10-31.") for n in opened)


def test_query_is_read_only(week, tmp_path):
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.json")}
    list(LedgerStore(tmp_path).query(None, None))
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.json")} == before
    assert list(LedgerStore(tmp_path / "nothing-here").query(None, None)) == []
    assert not (tmp_path / "nothing-here").exists()


def test_a_corrupt_file_during_query_is_skipped_with_a_warning(week, tmp_path):
    bad = tmp_path / "2026-10" / "2026-10-31.0001.json"
    bad.write_text('{"_default": {"1": ')
    reader = LedgerStore(tmp_path)
    got = [r["attempt"] for r in reader.query(None, None)]
    assert 4 not in got and len(got) == 16 - 3  # the three records in that segment are skipped
    assert len(reader.warnings) == 1 and str(bad) in reader.warnings[0] and "not valid JSON" in reader.warnings[0]
    assert bad.read_text() == '{"_default": {"1": '  # untouched
    assert reader.take_warnings() and reader.warnings == []


# --- corrupt segments at open / append ------------------------------------------------------------


def test_a_corrupt_segment_at_open_is_moved_aside_and_appending_continues_in_a_fresh_one(tmp_path):
    store = LedgerStore(tmp_path, segment_records=10)
    store.open(now=NOW)
    store.append([rec(NOW, 1), rec(NOW, 2)])
    seg = tmp_path / "2026-11" / "2026-11-21.0001.json"
    seg.write_text(seg.read_text()[:-7])  # truncated

    again = LedgerStore(tmp_path, segment_records=10)
    messages = again.open(now=NOW)
    assert len(messages) == 1
    aside = [p for p in (tmp_path / "2026-11").iterdir() if ".corrupt-" in p.name]
    assert len(aside) == 1 and aside[0].name.startswith("2026-11-21.0001.json.corrupt-")
    assert str(seg) in messages[0] and str(aside[0]) in messages[0]  # names both paths
    assert "2026-11-21.0002.json" in messages[0]
    assert not seg.exists()

    again.append([rec(NOW, 3)])
    assert names(tmp_path) == ["2026-11/2026-11-21.0001.json.corrupt-" + aside[0].name.split(".corrupt-")[1],
                               "2026-11/2026-11-21.0002.json"]
    assert [r["attempt"] for r in again.query(None, None)] == [3]
    assert LedgerStore(tmp_path).open(now=NOW) == []  # the fresh segment is fine; nothing else moved


def test_open_checks_yesterday_too(tmp_path):
    (tmp_path / "2026-11").mkdir()
    bad = tmp_path / "2026-11" / "2026-11-20.0003.json"
    bad.write_text("garbage")
    messages = LedgerStore(tmp_path).open(now=NOW)
    assert len(messages) == 1 and str(bad) in messages[0]
    assert not bad.exists()


def test_a_segment_corrupted_after_open_is_moved_aside_at_append_time(tmp_path):
    store = LedgerStore(tmp_path, segment_records=10)
    store.open(now=NOW)
    store.append([rec(NOW, 1)])
    seg = tmp_path / "2026-11" / "2026-11-21.0001.json"
    seg.write_text("not json")
    store.append([rec(NOW, 2), rec(NOW, 3)])
    assert len(store.warnings) == 1 and str(seg) in store.warnings[0] and ".corrupt-" in store.warnings[0]
    assert [r["attempt"] for r in store.query(None, None)] == [2, 3]
    aside = [p for p in (tmp_path / "2026-11").iterdir() if ".corrupt-" in p.name]
    assert len(aside) == 1 and aside[0].read_text() == "not json"  # kept as it was


def test_a_failed_write_reports_exactly_the_records_not_written(tmp_path, monkeypatch):
    store = LedgerStore(tmp_path, segment_records=3)
    store.open(now=NOW)
    day1, day2 = ts("2026-11-20T10:00:00"), NOW
    batch = [rec(day1 + i, i) for i in range(5)] + [rec(day2 + i, 10 + i) for i in range(2)]
    real = AtomicJSONStorage.write
    calls = []

    def flaky(self, data):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(self, data)
    monkeypatch.setattr(AtomicJSONStorage, "write", flaky)
    with pytest.raises(LedgerAppendError) as e:
        store.append(batch)
    assert isinstance(e.value, OSError)
    assert [r["attempt"] for r in e.value.remaining] == [3, 4, 10, 11]
    monkeypatch.undo()
    store.append(e.value.remaining)
    assert sorted(r["attempt"] for r in store.query(None, None)) == [0, 1, 2, 3, 4, 10, 11]
    assert not [p for p in tmp_path.rglob(".*tmp-*")]


def test_two_stores_on_one_folder_lose_nothing(tmp_path):
    a, b = LedgerStore(tmp_path, segment_records=7), LedgerStore(tmp_path, segment_records=7)
    a.open(now=NOW)
    b.open(now=NOW)

    def writer(store, tag):
        for i in range(30):
            store.append([rec(NOW + i, i, account=tag), rec(NOW + i, i, account=tag)])
    threads = [threading.Thread(target=writer, args=(a, "a")), threading.Thread(target=writer, args=(b, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = list(a.query(None, None))
    assert len(got) == 120
    assert all(len(load(p)) <= 7 for p in a.segments())


# --- retention -------------------------------------------------------------------------------------


def test_retention_drops_whole_old_days_and_empty_month_folders(tmp_path):
    store = LedgerStore(tmp_path, segment_records=2)
    store.open(now=NOW)
    days = ["2026-09-30", "2026-10-01", "2026-10-31", "2026-11-01", "2026-11-20", "2026-11-21"]
    store.append([rec(ts(f"{d}T05:00:00") + i, i) for d in days for i in range(3)])
    (tmp_path / "2026-10" / "2026-10-01.0009.json.corrupt-20261001T000000Z").write_text("x")
    # now = 2026-11-21 12:00; 20.5 days → cutoff 2026-10-31 24:00: days up to 10-31 are entirely older
    removed = store.drop_older_than(20.5, now=NOW)
    assert sorted(p.name for p in removed) == [
        "2026-09-30.0001.json", "2026-09-30.0002.json", "2026-10-01.0001.json", "2026-10-01.0002.json",
        "2026-10-31.0001.json", "2026-10-31.0002.json"]
    assert not (tmp_path / "2026-09").exists()
    assert names(tmp_path) == [
        "2026-10/2026-10-01.0009.json.corrupt-20261001T000000Z",  # corrupt files are never deleted
        "2026-11/2026-11-01.0001.json", "2026-11/2026-11-01.0002.json",
        "2026-11/2026-11-20.0001.json", "2026-11/2026-11-20.0002.json",
        "2026-11/2026-11-21.0001.json", "2026-11/2026-11-21.0002.json"]
    assert store.drop_older_than(20.4, now=NOW) == []  # 2026-11-01 ended 20.5 days ago: kept
    assert store.count() == 9
    store.append([rec(NOW, 99)])  # still appends fine after retention


# --- kill test -------------------------------------------------------------------------------------


def test_sigkill_at_random_moments_loses_no_flushed_batch(tmp_path):
    folder = tmp_path / "ledger"
    helper = ROOT / "tests" / "support" / "ledger_writer_loop.py"
    rng = random.Random(20261121)
    rounds, size = 30, 40
    flushed: dict[str, int] = {}
    t0 = time.monotonic()
    for r in range(rounds):
        run = f"r{r}"
        p = subprocess.Popen([PYTHON, str(helper), str(folder), run, "300", str(size)],
                             stdout=subprocess.PIPE, text=True)
        try:
            assert p.stdout is not None
            line = p.stdout.readline().strip()
            assert line == "ready", line  # no warnings: the previous kill left every segment readable
            time.sleep(rng.uniform(0.0, 0.08))
        finally:
            p.send_signal(signal.SIGKILL)
            p.wait(5)
        out = p.stdout.read().split()
        p.stdout.close()
        done = [int(n) for k, n in zip(out[::2], out[1::2]) if k == "flushed"]
        flushed[run] = max(done, default=0)

        # every segment parses, is 0600, holds at most 300 records; nothing was moved aside
        by_batch: dict[tuple[str, int], list[int]] = {}
        for seg in sorted(folder.rglob("*.json")):
            docs = load(seg)
            assert len(docs) <= 300
            assert stat.S_IMODE(seg.stat().st_mode) == 0o600
            for d in docs.values():
                _, _, rr, _, n = d["path"].split("/")
                by_batch.setdefault((rr, int(n)), []).append(d["attempt"])
        assert not list(folder.rglob("*.corrupt-*"))
        for rr, last in flushed.items():
            for n in range(1, last + 1):
                assert sorted(by_batch.get((rr, n), [])) == list(range(size)), (rr, n)
        for attempts in by_batch.values():
            assert len(attempts) == len(set(attempts))  # no duplicates
    elapsed = time.monotonic() - t0
    assert elapsed < 15, elapsed
    assert sum(flushed.values()) > rounds  # batches were actually written between kills
    assert len({n for n in flushed.values()}) > 3  # kills landed at different points
    # temp files left behind: kills landed inside a write (between temp file and rename) — the
    # moment that matters; about one kill in five does here
    assert list(folder.rglob(".*.json.tmp-*")), "no kill landed inside a write; the test proved nothing"
