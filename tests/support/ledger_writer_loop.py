"""Test helper: append batches to a ledger in a loop until killed.

    python ledger_writer_loop.py <folder> <run-id> [segment_records] [batch_size]

Prints "ready" (after `open()`, with its warnings as "warning: ..." lines before it), then after
each `append` returns, "flushed <n>" for batch n (1, 2, ...). Batch n of run R holds `batch_size`
records with path "/run/<R>/batch/<n>" and attempt 0..batch_size-1; their `ts` span a few days so
batches cross day (and sometimes segment) boundaries.
"""

from __future__ import annotations

import sys
from pathlib import Path

from codex_pool.storage.ledger_store import LedgerStore

BASE_TS = 1_790_000_000.0  # 2026-09-21


def batch(run: str, n: int, size: int) -> list[dict]:
    return [
        {
            "ts": BASE_TS + (n * size + i) * 97.0,  # ~1 day every 890 records
            "account": f"acct{i % 3}", "model": "gpt-test", "kind": "sse_turn", "status": 200,
            "outcome": "ok", "input_tokens": 1000 + i, "cached_input_tokens": 10, "output_tokens": 50,
            "reasoning_tokens": 5, "total_tokens": 1050 + i, "ttfb_ms": 12.5, "duration_ms": 400.0,
            "attempt": i, "conversation": "0123456789abcdef", "path": f"/run/{run}/batch/{n}",
            "padding": "x" * 200,  # bigger files: more write syscalls for a kill to land in
        }
        for i in range(size)
    ]


def main() -> None:
    folder, run = Path(sys.argv[1]), sys.argv[2]
    segment_records = int(sys.argv[3]) if len(sys.argv) > 3 else 300
    size = int(sys.argv[4]) if len(sys.argv) > 4 else 40
    store = LedgerStore(folder, segment_records=segment_records)
    for w in store.open(now=BASE_TS):
        print(f"warning: {w}", flush=True)
    print("ready", flush=True)
    n = 0
    while True:
        n += 1
        store.append(batch(run, n, size))
        print(f"flushed {n}", flush=True)


if __name__ == "__main__":
    main()
