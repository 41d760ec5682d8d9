import asyncio
import json

import pytest

from codex_pool.core.ledger import LedgerWriter, build_record, model_from_body, request_kind


@pytest.mark.parametrize(
    "method,path,headers,kind",
    [
        ("POST", "/backend-api/codex/responses", {}, "sse_turn"),
        ("POST", "/backend-api/codex/responses?codex-pool-retry=x.2", {}, "sse_turn"),
        ("GET", "/backend-api/codex/responses", {"upgrade": "websocket"}, "ws_turn"),
        ("POST", "/backend-api/codex/responses/compact", {}, "compaction"),
        ("POST", "/backend-api/codex/responses", {"x-codex-turn-metadata": json.dumps({"request_kind": "compaction"})}, "compaction"),
        ("POST", "/backend-api/codex/responses", {"x-codex-turn-metadata": '{"request_kind":"turn"}'}, "sse_turn"),
        ("POST", "/backend-api/codex/responses", {"x-codex-turn-metadata": '{"compaction" broken'}, "sse_turn"),
        ("GET", "/backend-api/codex/models?client_version=0.169.0", {}, "models"),
        ("GET", "/backend-api/wham/usage", {}, "usage"),
        ("GET", "/backend-api/wham/accounts/check", {}, "other"),
    ],
)
def test_request_kind(method, path, headers, kind):
    assert request_kind(method, path, headers) == kind


def test_model_from_body():
    assert model_from_body(b'{"model":"gpt-5.1-codex","input":[]}') == "gpt-5.1-codex"
    assert model_from_body(b'{"input":"x"}') is None and model_from_body(None) is None


def test_build_record_is_flat_and_safe():
    r = build_record(ts=1.23456, account="alice", kind="sse_turn", path="/backend-api/codex/responses?a=1", status=200,
                     outcome="ok", usage={"input_tokens": 10, "total_tokens": 12, "output_tokens": True},
                     model="m", ttfb_ms=3.0, duration_ms=10.04, attempt=1, conversation="0123456789abcdef")
    assert r["ts"] == 1.235 and r["path"] == "/backend-api/codex/responses"
    assert (r["input_tokens"], r["output_tokens"], r["cached_input_tokens"], r["total_tokens"]) == (10, 0, 0, 12)
    assert r["duration_ms"] == 10.0 and all(not isinstance(v, (dict, list)) for v in r.values())


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
