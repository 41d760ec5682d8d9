"""A mitmdump addon the soak loads next to addons/pool.py: it measures the proxy's event-loop lag.

Every PERIOD seconds it sleeps on the proxy's own event loop and records how late it woke up (the
time every hook, stream chunk and background task of the proxy had to wait at that moment). The
figures go to the JSON file named by $SOAK_LAG_FILE every few seconds and at shutdown:
count, p50, p99, max (milliseconds) and the worst few with their times. It touches no flow.
"""

from __future__ import annotations

import asyncio
import json
import os
import time

PERIOD = 0.05
WRITE_EVERY = 2.0


class LagProbe:
    def __init__(self) -> None:
        self.path = os.environ.get("SOAK_LAG_FILE")
        self.samples: list[float] = []  # ms late, per wake-up
        self.worst: list[tuple[float, float]] = []  # (ms, unix time)
        self._task: asyncio.Task | None = None

    def running(self) -> None:
        if self.path and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        last_write = loop.time()
        while True:
            start = loop.time()
            await asyncio.sleep(PERIOD)
            late = (loop.time() - start - PERIOD) * 1000.0
            self.samples.append(late)
            if late > 20:
                self.worst.append((round(late, 1), time.time()))
                self.worst = sorted(self.worst, reverse=True)[:10]
            if loop.time() - last_write >= WRITE_EVERY:
                last_write = loop.time()
                await asyncio.to_thread(self.write)

    def write(self) -> None:
        if not self.path:
            return
        data = sorted(self.samples)
        n = len(data)
        doc = {
            "count": n,
            "p50_ms": round(data[n // 2], 2) if n else None,
            "p99_ms": round(data[min(n - 1, int(n * 0.99))], 2) if n else None,
            "max_ms": round(data[-1], 2) if n else None,
            "worst": self.worst,
            "written_at": time.time(),
        }
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f)
        os.replace(tmp, self.path)

    def done(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.write()


addons = [LagProbe()]
