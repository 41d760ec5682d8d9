import asyncio
import json
import os

import pytest

from codex_pool.storage.event_log import EventLog
from tests.support.tokens import make_jwt


def test_lines_are_json_redacted_and_private(tmp_path):
    log = EventLog(tmp_path / "d" / "events.jsonl")
    token = make_jwt({"sub": "x"})
    log.emit("account.cooldown", account="alice", reason="server_error_503", until=1_800_000_000.0,
             detail=f"Bearer {token}", skipped=None)
    assert log.flush() == 1
    path = tmp_path / "d" / "events.jsonl"
    [line] = path.read_text().splitlines()
    entry = json.loads(line)
    assert entry["event"] == "account.cooldown" and entry["account"] == "alice"
    assert entry["until"].endswith("Z") and "skipped" not in entry and token not in line
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"


def test_rotation_by_size_keeps_backups(tmp_path):
    path = tmp_path / "events.jsonl"
    log = EventLog(path, max_bytes=300, backups=2)
    for i in range(40):
        log.emit("request.account_selected", account="a", attempt=i)
        log.flush()
    assert path.exists() and (tmp_path / "events.jsonl.1").exists() and (tmp_path / "events.jsonl.2").exists()
    assert not (tmp_path / "events.jsonl.3").exists()
    assert path.stat().st_size <= 300


def test_queue_is_bounded_and_unwritable_path_does_not_raise(tmp_path):
    (tmp_path / "file").write_text("x")
    log = EventLog(tmp_path / "file" / "events.jsonl", max_queue=3)
    for i in range(5):
        log.emit("e", i=i)
    assert log.dropped == 2
    assert log.flush() == 0 and log.dropped == 5


async def test_run_flushes_on_cancel(tmp_path):
    log = EventLog(tmp_path / "events.jsonl")
    task = asyncio.create_task(log.run(interval=60))
    await asyncio.sleep(0)
    log.emit("x")
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    assert "x" in (tmp_path / "events.jsonl").read_text()


def test_event_times_are_formatted_exactly_as_datetime_does():
    import random
    from datetime import datetime, timezone

    from codex_pool.storage.event_log import _iso

    rng = random.Random(7)
    times = [rng.uniform(0, 4e9) for _ in range(20000)] + [0.0, 1.9999996, 5.0, 1e9 + 0.0005, 1e9 + 0.9995]
    times += [1_800_000_000 + i / 7 for i in range(100)]  # many in one second: the cached part
    for ts in times:
        want = datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        assert _iso(ts) == want, ts


def test_a_line_torn_by_a_killed_writer_is_cut_before_new_lines(tmp_path):
    from codex_pool.storage.event_log import EventLog

    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"ts":"2026-12-01T00:00:00Z","event":"a"}\n{"ts":"2026-12-01T00:00:01Z","ev')
    log = EventLog(path)
    log.put("account.cooldown", {"account": "alice"})
    log.put("account.recovered", {"account": "alice"})
    assert log.flush() == 2
    lines = path.read_text().splitlines()
    assert [json.loads(line)["event"] for line in lines] == ["a", "account.cooldown", "account.recovered"]


@pytest.mark.parametrize("content, kept", [
    (b'{"ev', b""),                                   # the whole file is one torn line
    (b"x" * 200_000, b""),                            # longer than one read back
    (b'{"a":1}\n' + b"y" * 100_000, b'{"a":1}\n'),   # the newline is more than one read back
    (b'{"a":1}\n', b'{"a":1}\n'),                     # whole: untouched
    (b"", b""),
    (b'{"a":1}\n{"b":2}', b'{"a":1}\n{"b":2}\n'),  # a whole event that lost only its newline keeps its place
])
def test_the_torn_tail_is_cut_back_to_the_last_newline(tmp_path, content, kept):
    from codex_pool.storage.event_log import _cut_torn_tail

    path = tmp_path / "events.jsonl"
    path.write_bytes(content)
    _cut_torn_tail(path)
    assert path.read_bytes() == kept


def test_a_torn_tail_is_cut_before_the_log_is_rotated(tmp_path):
    from codex_pool.storage.event_log import EventLog

    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"event":"old"}\n' * 10 + b'{"torn')
    log = EventLog(path, max_bytes=200)
    log.put("new", {"pad": "z" * 100})
    log.flush()
    rotated = path.with_name("events.jsonl.1").read_bytes()
    assert rotated == b'{"event":"old"}\n' * 10
    assert json.loads(path.read_text())["event"] == "new"
