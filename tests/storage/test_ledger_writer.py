import asyncio

from codex_pool.storage.ledger_writer import LedgerWriter


class MemoryStore:
    def __init__(self, fail=0):
        self.records, self.fail = [], fail

    def append(self, batch):
        if self.fail:
            self.fail -= 1
            raise OSError("disk full")
        self.records.extend(batch)


async def test_writer_batches_and_keeps_records_when_a_write_fails():
    store = MemoryStore(fail=1)
    w = LedgerWriter(store)
    for i in range(3):
        w.record({"ts": i})
    assert await w.flush() == 0 and w.pending() == 3  # put back, in order
    w.record({"ts": 3})
    assert await w.flush() == 4 and [r["ts"] for r in store.records] == [0, 1, 2, 3]
    w.record({"ts": 4})
    assert w.flush_sync() == 1 and store.records[-1] == {"ts": 4}


async def test_writer_queue_is_bounded():
    w = LedgerWriter(MemoryStore(), max_queue=2)
    for i in range(5):
        w.record({"ts": i})
    assert w.pending() == 2 and w.dropped == 3


async def test_run_flushes_periodically():
    store = MemoryStore()
    w = LedgerWriter(store)
    task = asyncio.create_task(w.run(0.05))
    w.record({"ts": 1})
    await asyncio.sleep(0.2)
    task.cancel()
    assert store.records == [{"ts": 1}]


class PartialStore(MemoryStore):
    def append(self, batch):
        if self.fail:
            self.fail -= 1
            self.records.extend(batch[:2])
            err = OSError("disk full half way")
            err.remaining = batch[2:]
            raise err
        self.records.extend(batch)


async def test_a_partial_write_is_neither_lost_nor_duplicated():
    store = PartialStore(fail=1)
    w = LedgerWriter(store)
    for i in range(5):
        w.record({"ts": i})
    assert await w.flush() == 2 and w.pending() == 3
    assert await w.flush() == 3
    assert [r["ts"] for r in store.records] == [0, 1, 2, 3, 4]
