"""When an answer is overdue: before its first byte, and while its stream is silent."""

import pytest

from codex_pool.core.watchdog import FIRST_BYTE, STREAM_IDLE, overdue


@pytest.mark.parametrize("first_byte_at,streaming,progress,now,expected", [
    (None, False, 0, 119, None),  # still waiting for the answer
    (None, False, 0, 120, FIRST_BYTE),
    (5, True, 5, 244, None),  # headers at 5 s, then silence: not yet 240 s of it
    (5, True, 5, 245, STREAM_IDLE),
    (5, True, 200, 300, None),  # bytes kept coming until 200 s
    (5, False, 5, 10_000, None),  # a finished or non-streamed answer is not idle
])
def test_overdue(first_byte_at, streaming, progress, now, expected):
    assert overdue(opened_at=0, first_byte_at=first_byte_at, streaming=streaming, last_progress_at=progress, now=now,
                   first_byte=120, idle=240) == expected


def test_zero_turns_a_deadline_off():
    assert overdue(opened_at=0, first_byte_at=None, streaming=False, last_progress_at=0, now=1e9, first_byte=0, idle=0) is None
    assert overdue(opened_at=0, first_byte_at=1, streaming=True, last_progress_at=1, now=1e9, first_byte=0, idle=0) is None
