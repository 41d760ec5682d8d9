"""Waiting for something observable to happen, instead of sleeping for a guessed duration.

    wait_for(lambda: accounts(proxy)["alice"]["usable"], 10, "alice's cooldown to end")

polls the predicate every `interval` seconds until it returns something truthy (which is returned)
and fails after `timeout` seconds naming what was awaited and the last value seen. The short poll
interval is not a guess at how long the event takes: the wait ends as soon as it happened.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """The first truthy value of `predicate()`; AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; last value: {_short(value)}")
        time.sleep(interval)


async def wait_for_async(predicate: Callable[[], Awaitable[T]], timeout: float, what: str,
                         interval: float = 0.02) -> T:
    """`wait_for` for coroutines: awaits `predicate()` until it is truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; last value: {_short(value)}")
        await asyncio.sleep(interval)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 500 else text[:500] + "…"
